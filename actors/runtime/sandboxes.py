"""Where generated code runs on this platform: the decision the checker and the deployer share, and the
worker container both start on Docker.

Generated code always runs in a worker (`runner_template.worker`) inside a sandbox:
- on a docker or swarm platform, a container of the runner image with no network at all, read-only, with no
  capability, as user 10001, no new privileges, pids/memory/CPU limits (`worker_container`); the checker
  reaches its sample run's worker over the container's attached stdio (`ContainerWorker`), a hosted server's
  front over a Unix socket in a volume both mount, or TCP on a network only the two share;
- otherwise a bubblewrap sandbox (`runner_template.sandbox.Bubblewrap`);
- with neither, nowhere: the platform refuses and says how to install bubblewrap, unless
  `BMMS_ALLOW_UNSANDBOXED_CODE` (development only) lets it run as a plain process.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import aiodocker
from aiodocker.exceptions import DockerError

from actors.runtime.settings import Settings
from runner_template.channel import Streams
from runner_template.limits import WorkerLimits
from runner_template.sandbox import INSTALL_HINT, Opened, SandboxUnavailable, bwrap_path

DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"

WORKER_MODULE = ("python3", "-P", "-m", "runner_template.worker")
"""The worker's command in the runner image (the image's PYTHONPATH holds the runner's packages)."""
WORKER_UID = "10001:10001"
TMP_SIZE_BYTES = 16 * 1024 * 1024
"""The size of a runner container's /tmp."""

CodeSandbox = Literal["container", "bwrap", "unsandboxed"]


def docker_socket(settings: Settings) -> str | None:
    """The Docker Engine's Unix socket path, when the engine is reached over one."""
    url = settings.docker_url or f"unix://{DEFAULT_DOCKER_SOCKET}"
    parts = urlsplit(url)
    return parts.path if parts.scheme == "unix" else None


def docker_answers(settings: Settings) -> bool:
    """Whether a Docker Engine listens where the settings say (a Unix socket that accepts a connection)."""
    path = docker_socket(settings)
    if path is None:
        return settings.docker_url is not None  # a TCP engine was configured on purpose
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(path)
    except OSError:
        return False
    return True


def backend_name(settings: Settings) -> str:
    """The deploy backend: the configured one, or for `auto` docker when its socket answers, else process."""
    name = settings.deploy_backend
    if name == "auto":
        return "docker" if docker_answers(settings) else "process"
    if name not in ("docker", "swarm", "process"):
        raise ValueError(f"BMMS_DEPLOY_BACKEND must be docker, swarm, process or auto, not {name!r}")
    return name


def code_sandbox(settings: Settings) -> CodeSandbox:
    """Where this platform runs generated code; SandboxUnavailable (saying how to install one) when nowhere."""
    if backend_name(settings) in ("docker", "swarm"):
        return "container"
    if bwrap_path() is not None:
        return "bwrap"
    if settings.allow_unsandboxed_code:
        return "unsandboxed"
    raise SandboxUnavailable(INSTALL_HINT)


def hardened_host_config(*, memory_bytes: int, pids: int, nano_cpus: int, network_mode: str,
                         mounts: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The Engine's HostConfig every runner container gets (the front's and the worker's): read-only root, a
    small noexec /tmp, every capability dropped, no new privileges, private IPC, pids/memory (no swap)/CPU
    limits, capped logs, no mounts but `mounts` (never a host path)."""
    return {
        "NetworkMode": network_mode,
        "ReadonlyRootfs": True,
        "Tmpfs": {"/tmp": f"rw,noexec,nosuid,nodev,size={TMP_SIZE_BYTES}"},  # noqa: S108 - the tmpfs itself
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges:true"],
        "Privileged": False,
        "IpcMode": "private",
        "PidsLimit": pids,
        "Memory": memory_bytes,
        "MemorySwap": memory_bytes,
        "NanoCpus": nano_cpus,
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "5m", "max-file": "2"}},
        "Mounts": list(mounts),
        "Binds": [],
    }


def worker_container(
    image: str,
    command: Sequence[str],
    *,
    memory_bytes: int,
    pids: int,
    nano_cpus: int,
    labels: Mapping[str, str],
    network_mode: str = "none",
    mounts: Sequence[Mapping[str, Any]] = (),
    env: Mapping[str, str] | None = None,
    stdio: bool = False,
    auto_remove: bool = False,
) -> dict[str, Any]:
    """The Engine's create config of a worker container: no network (unless `network_mode` names one only its
    front shares), `hardened_host_config`, user 10001, and an init as PID 1 (it reaps what the module forks)."""
    host_config = hardened_host_config(memory_bytes=memory_bytes, pids=pids, nano_cpus=nano_cpus,
                                       network_mode=network_mode, mounts=mounts)
    host_config.update({"Init": True, "AutoRemove": auto_remove})
    config: dict[str, Any] = {
        "Image": image,
        "User": WORKER_UID,
        "Cmd": list(command),
        "Env": [f"{k}={v}" for k, v in sorted((env or {}).items())],
        "Labels": dict(labels),
        "NetworkDisabled": network_mode == "none",
        "HostConfig": host_config,
    }
    if stdio:
        config.update({"AttachStdin": True, "AttachStdout": True, "AttachStderr": False, "OpenStdin": True,
                       "StdinOnce": True, "Tty": False})
    return config


@dataclass
class ContainerWorker:
    """A worker in a fresh container with no network, reached over its attached stdin/stdout (the checker's
    sample runs on docker and swarm platforms). The container goes when its channel closes."""

    docker: aiodocker.Docker
    image: Callable[[], Awaitable[str]]
    """The runner runtime image's reference (built if missing)."""
    limits: WorkerLimits = field(default_factory=WorkerLimits)
    memory_bytes: int = 512 * 1024 * 1024
    pids: int = 64
    cpus: float = 1.0
    labels: Mapping[str, str] = field(default_factory=lambda: {"io.bmms.role": "check"})

    @property
    def description(self) -> str:
        return "a container of the runner image with no network"

    async def open(self) -> Opened:
        try:
            image = await self.image()
            config = worker_container(
                image, [*WORKER_MODULE, "--stdio", *self.limits.argv()],
                memory_bytes=self.memory_bytes, pids=self.pids, nano_cpus=int(self.cpus * 1e9), labels=self.labels,
                stdio=True, auto_remove=True,
            )
            container = await self.docker.containers.create(config, name=f"bmms-check-{secrets.token_hex(6)}")
        except DockerError as exc:
            raise OSError(f"cannot create a worker container: {exc.message}") from None
        stream = container.attach(stdin=True, stdout=True, stderr=False)
        try:
            await stream.__aenter__()
            await container.start()
        except DockerError as exc:
            with contextlib.suppress(DockerError):
                await container.delete(force=True)
            raise OSError(f"cannot start a worker container: {exc.message}") from None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        local_reader, local_writer = await asyncio.open_unix_connection(sock=theirs)

        async def inbound() -> None:  # the container's stdout -> our end
            while (message := await stream.read_out()) is not None:
                local_writer.write(message.data)
                await local_writer.drain()
            local_writer.close()

        async def outbound() -> None:  # our end -> the container's stdin
            while data := await local_reader.read(65536):
                await stream.write_in(data)
            await stream.close()

        bridges = [asyncio.create_task(inbound()), asyncio.create_task(outbound())]
        handed: list[bool] = []

        async def connect() -> Streams:
            if handed:
                raise ConnectionRefusedError("a worker on stdio has one channel")
            handed.append(True)
            return reader, writer

        async def stop() -> None:
            writer.close()
            for task in bridges:
                task.cancel()
            await asyncio.gather(*bridges, return_exceptions=True)
            with contextlib.suppress(Exception):
                await stream.close()
            local_writer.close()
            with contextlib.suppress(DockerError):
                await container.delete(force=True)

        return Opened(connect, stop, restartable=False)
