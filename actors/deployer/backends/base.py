"""The one interface every runner backend implements, and what the deployer hands it.

The deployer owns desired state (servers, versions, running or not) in its tables; a backend only makes
one server's runner match a `RunnerSpec` and reports what it runs, so the deployer can reconcile after a
restart. Every backend labels what it starts with the server id and artifact hash and finds its runners
again by those labels alone (no in-memory bookkeeping survives a restart).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from actors.runtime.runner_images import LABEL_ARTIFACT as LABEL_ARTIFACT  # re-exported for the backends
from actors.runtime.runner_images import LABEL_PREFIX as LABEL_PREFIX
from actors.runtime.runner_images import RUNNER_PORT as RUNNER_PORT
from bus_schemas.servers import BackendName, Isolation
from runner_template.egress import SECRET_ENV_PREFIX
from runner_template.settings import RunnerSettings

LABEL_SERVER = LABEL_PREFIX + "server"
LABEL_ORG = LABEL_PREFIX + "org"
LABEL_VERSION = LABEL_PREFIX + "version"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one runner."""

    memory_bytes: int = 256 * 1024 * 1024
    cpus: float = 0.5
    pids: int = 64


@dataclass(frozen=True)
class RunnerSpec:
    """One server version to run."""

    server_id: str
    org_id: str
    version: int
    artifact_hash: str
    artifact_json: bytes
    """The Artifact (msgspec JSON) to serve; its SHA-256 is `artifact_hash`."""
    settings: RunnerSettings
    """Who the runner is, who signs its tokens, where the bus is; the backend adds where it put the artifact,
    where the runner listens and where its worker runs (`environment`)."""
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Name -> value of the stored secrets its artifact declares."""
    limits: Limits = field(default_factory=Limits)

    def environment(self, **placed: Any) -> dict[str, str]:
        """The runner's environment: `BMMS_RUNNER_*` from its settings with what the backend `placed` (artifact,
        host, port, worker, a reachable nats_url), and `BMMS_SECRET_<NAME>` for each secret."""
        settings = msgspec.structs.replace(self.settings, **placed)
        return settings.to_environment() | {SECRET_ENV_PREFIX + name: value for name, value in self.secrets.items()}


@dataclass(frozen=True)
class RunningRunner:
    """A runner a backend runs."""

    server_id: str
    version: int
    artifact_hash: str
    upstream: str
    """Base URL the platform reaches it at (its MCP endpoint is `<upstream>/mcp`)."""
    ref: str
    """The backend's own handle (container id, service id, pid)."""


class BackendError(Exception):
    """A backend could not do what it was asked; the message says what and why."""


class Backend(Protocol):
    """Runs runners."""

    name: BackendName
    isolation: Isolation

    async def run(self, spec: RunnerSpec) -> RunningRunner:
        """Make `spec` the one runner of its server: start it (building its image if needed) and replace any
        other version that runs for the server. Idempotent: the same spec twice leaves one runner."""
        ...

    async def stop(self, server_id: str) -> None:
        """Stop the server's runner (nothing runs afterwards); its image stays for a later start."""
        ...

    async def remove(self, server_id: str, artifact_hashes: tuple[str, ...]) -> None:
        """Stop the server's runner and remove everything the backend keeps for it (containers, services,
        images of those artifacts that no other server uses)."""
        ...

    async def running(self) -> list[RunningRunner]:
        """Every runner this backend runs now, found by its labels (for reconciling after a restart)."""
        ...

    async def logs(self, server_id: str, tail: int) -> list[str]:
        """The last `tail` lines the server's runner wrote (stdout and stderr)."""
        ...

    async def close(self) -> None:
        """Release connections (the runners keep running)."""
        ...
