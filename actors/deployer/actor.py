"""The deployer actor's wiring: its state, reconciling while it serves, and its handlers (see handlers)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from actors.deployer import handlers
from actors.deployer.backends.base import Backend
from actors.deployer.reconcile import reconcile_forever
from actors.deployer.state import DeployerState
from actors.runtime.actor import Actor, Context, bind
from actors.runtime.settings import Settings
from bus_schemas.registry import (
    CONTROL_SERVER,
    DELETE_SERVER_SECRET,
    DEPLOYER_CHECKED,
    GET_SERVER,
    GET_SERVER_LOGS,
    LIST_SERVER_SECRETS,
    LIST_SERVERS,
    RESOLVE_SERVER,
    SET_SERVER_SECRET,
    STAGE_BUILD_SECRETS,
)


class DeployerActor(Actor):
    """The deployer: its state opens when it serves, and it reconciles from the moment it listens."""

    def __init__(self, state: DeployerState) -> None:
        super().__init__("deployer", migrations=Path(__file__).parent / "migrations")
        self.state = state
        self._reconciler: asyncio.Task[None] | None = None

    async def serve(self, settings: Settings, stop: asyncio.Event) -> None:
        self.state.open(settings)
        try:
            await super().serve(settings, stop)
        finally:
            if self._reconciler is not None:
                self._reconciler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reconciler
            await self.state.close()

    async def started(self, ctx: Context) -> None:
        self._reconciler = asyncio.create_task(reconcile_forever(ctx, self.state))


def create_actor(backend: Backend | None = None) -> Actor:
    """The deployer actor (with the backend the settings choose, unless one is given)."""
    state = DeployerState(backend)
    actor = DeployerActor(state)
    actor.consumer(DEPLOYER_CHECKED, on_park=handlers.deploy.on_park)(bind(handlers.deploy, state))
    actor.rpc(LIST_SERVERS)(bind(handlers.list_servers, state))
    actor.rpc(GET_SERVER)(bind(handlers.get_server, state))
    actor.rpc(CONTROL_SERVER)(bind(handlers.control_server, state))
    actor.rpc(GET_SERVER_LOGS)(bind(handlers.server_logs, state))
    actor.rpc(RESOLVE_SERVER)(handlers.resolve_server)
    actor.rpc(SET_SERVER_SECRET)(bind(handlers.set_server_secret, state))
    actor.rpc(LIST_SERVER_SECRETS)(handlers.list_server_secrets)
    actor.rpc(DELETE_SERVER_SECRET)(bind(handlers.delete_server_secret, state))
    actor.rpc(STAGE_BUILD_SECRETS)(bind(handlers.stage_build_secrets, state))
    return actor
