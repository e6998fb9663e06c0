"""Runner images, built on this machine from Debian packages and PyPI wheels, with no container registry.

Three layers, each tagged by a hash of what went into it so it is built once and rebuilt only when that
changes:

1. base  `bmms-runner-base:<inputs>`: `debootstrap --variant=minbase` of Debian bookworm with python3 and
   ca-certificates, the runner's Python dependencies installed by the host's pip into `/opt/bmms/site`
   (bookworm's python3 is 3.11, so pip is told to pick cp311 manylinux wheels for glibc <= 2.36), a
   non-root user 10001, no apt caches or docs; `docker import`ed with PYTHONPATH, USER, WORKDIR and CMD.
   Needs root (debootstrap). `BMMS_RUNNER_BASE_IMAGE` names a ready-made base (e.g. from a registry)
   instead; it must provide the same layout (python3.11, deps in /opt/bmms/site, user 10001).
2. runtime  `bmms-runner:<sources>`: `runner_template/` and `bus_schemas/` copied into `/opt/bmms/app`,
   byte-compiled (the runners' root filesystem is read-only), and every runner module imported once as
   user 10001 so a missing or incompatible wheel fails the build, not a deploy.
3. server  `bmms-server:<artifact hash>`: the runtime plus one Artifact JSON at `/opt/bmms/artifact.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import aiodocker
from aiodocker.exceptions import DockerError

import bus_schemas
import runner_template

log = logging.getLogger("bmms.runner_image")

RUNNER_PORT = 8000
"""The port a runner listens on inside its container (the process backend picks a free one instead)."""
LABEL_PREFIX = "io.bmms."
"""Every label the platform puts on images, containers, services and volumes starts with this."""
LABEL_ARTIFACT = LABEL_PREFIX + "artifact"

BASE_REPOSITORY = "bmms-runner-base"
RUNTIME_REPOSITORY = "bmms-runner"
SERVER_REPOSITORY = "bmms-server"
"""Per-artifact images: `bmms-server:<artifact hash>`."""

RUNNER_UID = 10001
RUNNER_USER = f"{RUNNER_UID}:{RUNNER_UID}"
SITE_DIR = "/opt/bmms/site"
APP_DIR = "/opt/bmms/app"
ARTIFACT_PATH = "/opt/bmms/artifact.json"
RUNNER_COMMAND = ("python3", "-P", "-m", "runner_template")
"""`-P`: the working directory is not put on sys.path."""

DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "ca-certificates")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
PYTHON_VERSION = "3.11"
"""bookworm's python3; the wheels pip picks for the image are for this version."""
GLIBC_MINOR = 36
"""bookworm's glibc is 2.36: wheels tagged for a newer glibc would not load."""

LABEL_BASE_INPUTS = LABEL_PREFIX + "base-inputs"
LABEL_RUNTIME = LABEL_PREFIX + "runtime"

_RECIPE_VERSION = "1"
"""Bump when the way the base image is made changes (it is part of the base tag)."""

_PROJECT_DISTRIBUTION = "build-my-mcp-server"


@dataclass(frozen=True)
class RunnerDependency:
    """A distribution the runner imports directly, and a module that proves it is installed."""

    distribution: str
    module: str


RUNNER_DEPENDENCIES: tuple[RunnerDependency, ...] = (
    # mcp brings httpx2, pydantic, starlette, sse-starlette and anyio, which runner_template imports too.
    RunnerDependency("mcp", "mcp.server"),
    RunnerDependency("joserfc", "joserfc"),
    RunnerDependency("msgspec", "msgspec"),
    RunnerDependency("uvicorn", "uvicorn"),
    RunnerDependency("nats-py", "nats"),
)
"""The one list of what the runner image installs; version ranges come from pyproject.toml."""


class RunnerImageError(Exception):
    """A runner image could not be built; the message says which step failed and why."""


@dataclass(frozen=True)
class RunnerImageSettings:
    """How runner images are made, each `BMMS_RUNNER_<FIELD>` in the environment."""

    base_image: str | None = None
    """A ready-made base image (BMMS_RUNNER_BASE_IMAGE; pulled if missing); skips the debootstrap build."""
    debian_mirror: str = DEBIAN_MIRROR
    """Debian mirror for debootstrap (BMMS_RUNNER_DEBIAN_MIRROR)."""
    build_dir: str | None = None
    """Where the base root filesystem is assembled (BMMS_RUNNER_BUILD_DIR; default /var/tmp: needs device
    nodes, so not a nodev tmpfs)."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> RunnerImageSettings:
        """Read the settings from `BMMS_RUNNER_*` variables."""
        return cls(
            base_image=environ.get("BMMS_RUNNER_BASE_IMAGE") or None,
            debian_mirror=environ.get("BMMS_RUNNER_DEBIAN_MIRROR") or DEBIAN_MIRROR,
            build_dir=environ.get("BMMS_RUNNER_BUILD_DIR") or None,
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical_name(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _project_requirements() -> list[str]:
    """The project's dependency lines: pyproject.toml in a checkout, else the installed metadata."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        with pyproject.open("rb") as f:
            return list(tomllib.load(f)["project"]["dependencies"])
    return [r for r in metadata.requires(_PROJECT_DISTRIBUTION) or [] if "extra ==" not in r]


def runner_requirements() -> tuple[str, ...]:
    """pip requirement lines for the image: `RUNNER_DEPENDENCIES` with pyproject.toml's ranges."""
    by_name: dict[str, str] = {}
    for line in _project_requirements():
        name = line.split(";", 1)[0]
        for stop in "[<>=!~ ":
            name = name.split(stop, 1)[0]
        by_name[_canonical_name(name)] = line.split(";", 1)[0].strip()
    missing = [d.distribution for d in RUNNER_DEPENDENCIES if _canonical_name(d.distribution) not in by_name]
    if missing:
        raise RunnerImageError(f"pyproject.toml has no range for runner dependencies {missing}")
    return tuple(by_name[_canonical_name(d.distribution)] for d in RUNNER_DEPENDENCIES)


def _machine() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def wheel_platforms() -> tuple[str, ...]:
    """pip `--platform` tags the image's glibc can load (pip does not expand manylinux_2_x itself)."""
    arch = _machine()
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 16, -1)]
    tags += [f"manylinux2014_{arch}", f"linux_{arch}"]
    return tuple(tags)


def platform_args() -> list[str]:
    """pip's `--platform` options for wheels the image can load."""
    return [arg for tag in wheel_platforms() for arg in ("--platform", tag)]


def base_inputs(settings: RunnerImageSettings) -> dict[str, Any]:
    """Everything that determines the base image (its tag is a hash of this)."""
    return {
        "recipe": _RECIPE_VERSION,
        "suite": DEBIAN_SUITE,
        "packages": list(DEBIAN_PACKAGES),
        "python": PYTHON_VERSION,
        "platforms": list(wheel_platforms()),
        "requirements": list(runner_requirements()),
        "uid": RUNNER_UID,
        "command": list(RUNNER_COMMAND),
    }


def base_image_ref(settings: RunnerImageSettings) -> str:
    """The base image this configuration uses: the configured one, or `bmms-runner-base:<inputs hash>`."""
    if settings.base_image:
        return settings.base_image
    digest = _sha256(json.dumps(base_inputs(settings), sort_keys=True).encode())
    return f"{BASE_REPOSITORY}:{digest[:24]}"


def server_image_ref(artifact_hash: str) -> str:
    """The image that serves one artifact."""
    return f"{SERVER_REPOSITORY}:{artifact_hash}"


async def image_labels(docker: aiodocker.Docker, ref: str) -> dict[str, str] | None:
    """The labels of a local image, or None when there is no such image."""
    try:
        info = await docker.images.inspect(ref)
    except DockerError as exc:
        if exc.status == 404:
            return None
        raise
    labels = (info.get("Config") or {}).get("Labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


# -- base image ---------------------------------------------------------------------------------------


async def run_command(*argv: str, cwd: str | None = None) -> str:
    """Run a command; its output, or RunnerImageError with the tail of it."""
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    text = out.decode(errors="replace")
    if process.returncode != 0:
        raise RunnerImageError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} exited with {process.returncode}:\n"
                               f"{text[-3000:]}")
    return text


_STRIPPED = (
    "var/cache/apt", "var/lib/apt/lists", "var/log", "usr/share/doc", "usr/share/man", "usr/share/info",
    "usr/share/locale", "usr/share/lintian", "var/cache/debconf",
)


def _finish_root(root: Path) -> None:
    """User 10001, app dirs, and no caches: the last steps before the root filesystem is imported."""
    with (root / "etc/passwd").open("a") as f:
        f.write(f"bmms:x:{RUNNER_UID}:{RUNNER_UID}:bmms runner:/nonexistent:/usr/sbin/nologin\n")
    with (root / "etc/group").open("a") as f:
        f.write(f"bmms:x:{RUNNER_UID}:\n")
    (root / APP_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    # pip's console scripts carry the host interpreter's path in their shebang; the runner needs none.
    shutil.rmtree(root / SITE_DIR.lstrip("/") / "bin", ignore_errors=True)
    for relative in _STRIPPED:
        target = root / relative
        if target.is_dir():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()


async def pip_install_for_image(target: Path, requirements: Iterable[str], *, constraints: Path | None = None) -> None:
    """`pip install --target`: wheels the image's Python and glibc load (bookworm's cp311, glibc <= 2.36), picked
    by this machine's pip; `constraints` pins versions (a `pip` constraints file)."""
    pinned = ["--constraint", str(constraints)] if constraints is not None else []
    await run_command(
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-warn-script-location", "--target", str(target),
        "--only-binary=:all:", "--implementation", "cp", "--python-version", PYTHON_VERSION,
        "--abi", "cp" + PYTHON_VERSION.replace(".", ""), *platform_args(), *pinned, *requirements,
    )


def import_check(modules: Iterable[str]) -> str:
    """A Python one-liner that imports `modules` (and fails loudly if one is missing)."""
    return "import importlib\nfor m in %r: importlib.import_module(m)\n" % (tuple(modules),)  # noqa: UP031


@contextlib.asynccontextmanager
async def build_dir(settings: RunnerImageSettings, prefix: str) -> AsyncIterator[Path]:
    """A private directory to assemble an image in, under BMMS_RUNNER_BUILD_DIR (default /var/tmp: it needs
    device nodes, so not a nodev tmpfs), removed afterwards."""
    parent = settings.build_dir or "/var/tmp"  # noqa: S108 - a private mkdtemp below it
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield directory
    finally:
        await asyncio.to_thread(shutil.rmtree, directory, True)


async def build_base_image(settings: RunnerImageSettings, ref: str) -> None:
    """debootstrap + pip --target + docker import, as `ref`."""
    if os.geteuid() != 0:
        raise RunnerImageError(
            "building the runner base image needs root (debootstrap); run `bmms runner-image build` as root, "
            "or set BMMS_RUNNER_BASE_IMAGE to a ready-made base image"
        )
    for tool in ("debootstrap", "docker", "tar"):
        if shutil.which(tool) is None:
            raise RunnerImageError(f"building the runner base image needs `{tool}` on PATH")
    async with build_dir(settings, "bmms-runner-base-") as workdir:
        root = workdir / "root"
        started = time.monotonic()
        log.info("debootstrap %s into %s", DEBIAN_SUITE, root)
        await run_command(
            "debootstrap", "--variant=minbase", "--include=" + ",".join(DEBIAN_PACKAGES),
            DEBIAN_SUITE, str(root), settings.debian_mirror,
        )
        version = (await run_command("chroot", str(root), "python3", "-c",
                              "import sys; print('%d.%d' % sys.version_info[:2])")).strip()
        if version != PYTHON_VERSION:
            raise RunnerImageError(f"{DEBIAN_SUITE}'s python3 is {version}, the image's wheels are for "
                                   f"{PYTHON_VERSION}")
        debootstrapped = time.monotonic()
        log.info("pip install %s", " ".join(runner_requirements()))
        await pip_install_for_image(root / SITE_DIR.lstrip("/"), runner_requirements())
        await run_command("chroot", str(root), "/usr/bin/env", f"PYTHONPATH={SITE_DIR}", "python3", "-c",
                   import_check(d.module for d in RUNNER_DEPENDENCIES))
        await asyncio.to_thread(_finish_root, root)
        installed = time.monotonic()
        await _docker_import(root, ref, settings)
        log.info("built %s: debootstrap %.0f s, pip %.0f s, import %.0f s", ref, debootstrapped - started,
                 installed - debootstrapped, time.monotonic() - installed)


async def _docker_import(root: Path, ref: str, settings: RunnerImageSettings) -> None:
    """`tar | docker import --change ...` of the assembled root filesystem."""
    inputs = _sha256(json.dumps(base_inputs(settings), sort_keys=True).encode())
    changes = [
        f"ENV PYTHONPATH={APP_DIR}:{SITE_DIR}",
        "ENV PYTHONDONTWRITEBYTECODE=1",
        "ENV PYTHONUNBUFFERED=1",
        "ENV LANG=C.UTF-8",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        f"USER {RUNNER_USER}",
        "WORKDIR /opt/bmms",
        "CMD " + json.dumps(list(RUNNER_COMMAND)),
        f"LABEL {LABEL_BASE_INPUTS}={inputs}",
    ]
    read_end, write_end = os.pipe()
    try:
        tar = await asyncio.create_subprocess_exec(
            "tar", "--numeric-owner", "--xattrs", "-C", str(root),
            "--exclude=./proc/*", "--exclude=./sys/*", "--exclude=./dev/*", "-cf", "-", ".",
            stdout=write_end, stderr=asyncio.subprocess.PIPE,
        )
        os.close(write_end)
        write_end = -1
        importer = await asyncio.create_subprocess_exec(
            "docker", "import", *[arg for change in changes for arg in ("--change", change)], "-", ref,
            stdin=read_end, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        os.close(read_end)
        read_end = -1
        (out, _), (_, tar_err) = await asyncio.gather(importer.communicate(), tar.communicate())
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    if tar.returncode != 0:
        raise RunnerImageError(f"tar of the base root filesystem failed: {tar_err.decode(errors='replace')[-2000:]}")
    if importer.returncode != 0:
        raise RunnerImageError(f"docker import failed: {out.decode(errors='replace')[-2000:]}")


# -- runtime and server images ------------------------------------------------------------------------


def package_files(package_dir: Path) -> list[tuple[str, bytes]]:
    """(path relative to the package's parent, bytes) of a package's sources, without caches."""
    files: list[tuple[str, bytes]] = []
    for path in sorted(package_dir.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
            continue
        files.append((str(path.relative_to(package_dir.parent)), path.read_bytes()))
    return files


def packages_sources(*packages: Any) -> list[tuple[str, bytes]]:
    """(path, bytes) of every source file of these packages, paths starting with the package's name."""
    return [file for package in packages for file in package_files(package_dir(package))]


def runtime_sources() -> list[tuple[str, bytes]]:
    """The trusted code every runner image carries: runner_template/ and bus_schemas/."""
    return packages_sources(runner_template, bus_schemas)


def package_dir(package: Any) -> Path:
    return Path(str(package.__file__)).resolve().parent


def _runtime_dockerfile(base: str) -> str:
    modules = ["runner_template.app", "runner_template.server", "runner_template.sdk",
               "runner_template.upstream", "bus_schemas.plans"]
    modules += [f"runner_template.{p.stem}" for p in package_dir(runner_template).glob("*.py")
                if not p.stem.startswith("_") and f"runner_template.{p.stem}" not in modules]
    check = json.dumps(["python3", "-P", "-c", import_check(sorted(modules))])
    return (
        f"FROM {base}\n"
        "USER 0:0\n"
        f"COPY app/ {APP_DIR}/\n"
        f'RUN ["python3", "-m", "compileall", "-q", "{APP_DIR}"]\n'
        f"USER {RUNNER_USER}\n"
        f"RUN {check}\n"
        f"ENV BMMS_RUNNER_HOST=0.0.0.0 BMMS_RUNNER_PORT={RUNNER_PORT}\n"
        f"EXPOSE {RUNNER_PORT}\n"
        f"CMD {json.dumps(list(RUNNER_COMMAND))}\n"
    )


def _context(files: Iterable[tuple[str, bytes]]) -> io.BytesIO:
    """A gzipped tar build context; root-owned, world-readable, fixed mtime."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return io.BytesIO(gzip.compress(raw.getvalue(), compresslevel=1))


async def build_image(docker: aiodocker.Docker, ref: str, files: list[tuple[str, bytes]] | BinaryIO,
                      labels: dict[str, str]) -> None:
    """`docker build` of a context: (path, bytes) pairs, or a file holding a plain tar of it."""
    context, encoding = (_context(files), "gzip") if isinstance(files, list) else (files, "identity")
    try:
        await docker.images.build(fileobj=context, encoding=encoding, tag=ref, labels=labels, rm=True,
                                  forcerm=True)
    except DockerError as exc:
        raise RunnerImageError(f"docker build of {ref} failed: {exc.message}") from exc
    if await image_labels(docker, ref) is None:
        raise RunnerImageError(f"docker build of {ref} reported success but the image is missing")


@dataclass
class RunnerImages:
    """Makes sure the images a runner needs exist; one per process (it serialises builds)."""

    settings: RunnerImageSettings = field(default_factory=RunnerImageSettings)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    async def base_image(self, docker: aiodocker.Docker, *, force: bool = False) -> str:
        """The base image, built (or pulled, when configured) if it is missing."""
        ref = base_image_ref(self.settings)
        if not force and await image_labels(docker, ref) is not None:
            return ref
        if self.settings.base_image:
            log.info("pulling runner base image %s", ref)
            try:
                await docker.images.pull(ref)
            except DockerError as exc:
                raise RunnerImageError(f"base image {ref} is missing and cannot be pulled: {exc.message}") from exc
            return ref
        await build_base_image(self.settings, ref)
        return ref

    async def runtime_image(self, docker: aiodocker.Docker, *, force_base: bool = False) -> str:
        """The runtime image (base + runner_template + bus_schemas), built if missing."""
        async with self._lock:
            base = await self.base_image(docker, force=force_base)
            dockerfile = _runtime_dockerfile(base)
            files = [("Dockerfile", dockerfile.encode())] + [("app/" + n, d) for n, d in runtime_sources()]
            digest = _sha256(json.dumps([[n, _sha256(d)] for n, d in files]).encode())
            ref = f"{RUNTIME_REPOSITORY}:{digest[:24]}"
            if force_base or await image_labels(docker, ref) is None:
                log.info("building runner runtime image %s", ref)
                await build_image(docker, ref, files, {LABEL_RUNTIME: ref})
            return ref

    async def server_image(self, docker: aiodocker.Docker, artifact_hash: str, artifact_json: bytes) -> str:
        """`bmms-server:<artifact hash>` on the current runtime, built if missing or on an older runtime."""
        if _sha256(artifact_json) != artifact_hash:
            raise RunnerImageError(f"artifact bytes do not hash to {artifact_hash}")
        runtime = await self.runtime_image(docker)
        ref = server_image_ref(artifact_hash)
        async with self._lock:
            labels = await image_labels(docker, ref)
            if labels is not None and labels.get(LABEL_RUNTIME) == runtime:
                return ref
            dockerfile = (
                f"FROM {runtime}\n"
                f"COPY artifact.json {ARTIFACT_PATH}\n"
                f"ENV BMMS_RUNNER_ARTIFACT={ARTIFACT_PATH}\n"
            )
            await build_image(docker, ref, [("Dockerfile", dockerfile.encode()), ("artifact.json", artifact_json)],
                         {LABEL_ARTIFACT: artifact_hash, LABEL_RUNTIME: runtime})
            return ref


async def build_runner_images(settings: RunnerImageSettings, *, force: bool = False) -> tuple[str, str]:
    """Build (or find) the base and runtime images; (base ref, runtime ref). For `bmms runner-image build`."""
    images = RunnerImages(settings)
    docker = aiodocker.Docker()
    try:
        runtime = await images.runtime_image(docker, force_base=force)
        return base_image_ref(settings), runtime
    finally:
        with contextlib.suppress(Exception):
            await docker.close()
