"""The metering actor's wiring: its consumers, timer and endpoints, bound to its state."""

from __future__ import annotations

import asyncio
from pathlib import Path

from actors.metering import handlers
from actors.metering.handlers import MeteringState
from actors.runtime.actor import Actor, Context, bind
from actors.runtime.settings import Settings
from bus_schemas.registry import (
    CHECK_QUOTA,
    GET_QUOTA,
    GET_USAGE,
    METERING_BUILDS,
    METERING_SERVERS,
    METERING_USAGE,
)


class MeteringActor(Actor):
    """The metering actor, whose state takes its default plan from the settings when it starts serving."""

    def __init__(self, state: MeteringState) -> None:
        super().__init__("metering", migrations=Path(__file__).parent / "migrations")
        self.state = state

    async def serve(self, settings: Settings, stop: asyncio.Event) -> None:
        """Serve with the default plan from `settings`."""
        self.state.start(settings)
        await super().serve(settings, stop)


def create_actor() -> Actor:
    """The metering actor: usage, server and build consumers, quota and usage endpoints."""
    state = MeteringState()
    actor = MeteringActor(state)

    async def recheck_quotas(ctx: Context) -> None:
        await handlers.recheck_quotas(ctx, state)

    # Calls trickle in one at a time from each runner: waiting a moment for more turns a database transaction
    # per call into one per batch, which is what keeps metering's cost small next to the calls it counts.
    actor.batch_consumer(METERING_USAGE, max_batch=handlers.MAX_BATCH, linger=handlers.LINGER_SECONDS)(
        bind(handlers.meter_tool_calls, state)
    )
    actor.consumer(METERING_SERVERS)(bind(handlers.record_server, state))
    actor.consumer(METERING_BUILDS)(bind(handlers.meter_builds, state))
    actor.every(handlers.QUOTA_RECHECK_SECONDS)(recheck_quotas)
    actor.rpc(CHECK_QUOTA)(bind(handlers.check_quota, state))
    actor.rpc(GET_QUOTA)(bind(handlers.get_quota, state))
    actor.rpc(GET_USAGE)(handlers.get_usage)
    return actor
