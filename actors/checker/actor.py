"""The checker actor's wiring: its consumer bound to its state; the toolchain warmed and the sandbox opened
and closed with serving."""

from __future__ import annotations

import asyncio

from actors.checker import handlers
from actors.checker.dynamic import Sandbox
from actors.checker.state import CheckerState
from actors.checker.toolchain import Toolchain
from actors.runtime.actor import Actor, Context, bind
from actors.runtime.settings import Settings
from bus_schemas.registry import CHECKER_GENERATED
from runner_template.sandbox import Launcher

WARM_UP_BEFORE_READY_SECONDS = 20.0
"""How long the checker waits for its mypy warm-up before it takes builds (a fresh cache takes 3-6 s on two
cores, longer while a whole stack starts; a kept one a fraction of a second)."""


class CheckerActor(Actor):
    """The checker, with the sandbox of its sample runs chosen from the settings when it starts."""

    def __init__(self, state: CheckerState) -> None:
        super().__init__("checker")
        self.state = state

    async def serve(self, settings: Settings, stop: asyncio.Event) -> None:
        async with self.state.type_checks(settings, self.log), self.state.sample_runs(settings):
            # Ready (taking builds) once the first check will find mypy's cache warm, or after a bound: then
            # the first check waits for the rest of the warm-up.
            await self.state.warmed_up(WARM_UP_BEFORE_READY_SECONDS, until=stop)
            await super().serve(settings, stop)

    async def started(self, ctx: Context) -> None:
        self.state.started(ctx.log)


def create_actor(toolchain: Toolchain | None = None, sandbox: Sandbox | None = None,
                 launcher: Launcher | None = None) -> Actor:
    """The checker actor, wired to its durable consumer; its sample runs go to `launcher`, or to the sandbox
    the settings choose; mypy's cache is `toolchain`'s, or the data dir's."""
    # Without a cache dir of its own, the toolchain's mypy cache is the data dir's while serving.
    state = CheckerState(toolchain=toolchain or Toolchain(), sandbox=sandbox or Sandbox(), launcher=launcher)
    actor = CheckerActor(state)
    step = handlers.check_build
    actor.consumer(CHECKER_GENERATED, on_park=step.on_park, max_in_flight=4)(bind(step, state))
    return actor
