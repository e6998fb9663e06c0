"""Which backend the deployer uses: `BMMS_DEPLOY_BACKEND` (docker, swarm, process, or auto; the choice itself
is `actors.runtime.sandboxes.backend_name`, which the checker shares)."""

from __future__ import annotations

from pathlib import Path

from actors.deployer.backends.base import Backend
from actors.runtime.sandboxes import backend_name
from actors.runtime.settings import Settings


def create_backend(settings: Settings) -> Backend:
    """The backend the settings ask for."""
    name = backend_name(settings)
    if name == "process":
        from actors.deployer.backends.process import ProcessBackend

        return ProcessBackend(Path(settings.data_dir) / "runners", unsandboxed=settings.allow_unsandboxed_code)
    if name == "swarm":
        from actors.deployer.backends.swarm import SwarmBackend

        return SwarmBackend.from_settings(settings)
    from actors.deployer.backends.docker import DockerBackend

    return DockerBackend.from_settings(settings)
