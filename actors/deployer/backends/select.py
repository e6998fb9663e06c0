"""Which backend the deployer uses: `BMMS_DEPLOY_BACKEND` (docker, swarm, process, or auto)."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

from actors.deployer.backends.base import Backend
from actors.runtime.settings import Settings

DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"


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
    """The backend to use: the configured one, or for `auto` docker when its socket answers, else process."""
    name = settings.deploy_backend
    if name == "auto":
        return "docker" if docker_answers(settings) else "process"
    if name not in ("docker", "swarm", "process"):
        raise ValueError(f"BMMS_DEPLOY_BACKEND must be docker, swarm, process or auto, not {name!r}")
    return name


def create_backend(settings: Settings) -> Backend:
    """The backend the settings ask for."""
    name = backend_name(settings)
    if name == "process":
        from actors.deployer.backends.process import ProcessBackend

        return ProcessBackend(Path(settings.data_dir) / "runners")
    if name == "swarm":
        from actors.deployer.backends.swarm import SwarmBackend

        return SwarmBackend.from_settings(settings)
    from actors.deployer.backends.docker import DockerBackend

    return DockerBackend.from_settings(settings)
