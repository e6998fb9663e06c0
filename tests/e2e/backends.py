"""The backends the end-to-end tests run on, and how each is set up and inspected."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.deployer.backends.base import Backend
from actors.deployer.backends.process import ProcessBackend
from tests.conftest import Stack


@dataclass(frozen=True)
class BackendCase:
    """One backend under test."""

    name: str
    make: Callable[[Stack], contextlib.AbstractAsyncContextManager[Backend]]
    upstream_host: str = "127.0.0.1"
    """Where the test's upstream API listens so the runner can reach it."""

    def backend(self, stack: Stack) -> contextlib.AbstractAsyncContextManager[Backend]:
        return self.make(stack)

    def require(self) -> None:
        """Nothing to check for the process backend; container backends need a Docker Engine."""

    def runner_nats_url(self, stack: Stack) -> str:
        return stack.nats.url

    async def leftovers(self, server_id: str, deployed: tuple[Any, ...]) -> list[str]:
        """What the backend still keeps for a deleted server."""
        del deployed
        return [str(p) for p in (self.root or Path("/nonexistent")).glob(f"*/{server_id}")]

    root: Path | None = None


@contextlib.asynccontextmanager
async def _process(stack: Stack) -> AsyncIterator[Backend]:
    yield ProcessBackend(stack.root / f"e2e-runners-{secrets.token_hex(4)}")


PROCESS = BackendCase(name="process", make=_process, root=None)
BACKENDS = (PROCESS,)
