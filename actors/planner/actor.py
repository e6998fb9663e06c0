"""Wires the planner actor: the plan step (`handlers`), plan previews (`preview`) and the build registry
(`build_registry`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from actors.planner import build_registry, handlers, preview
from actors.planner.build_registry import BuildRegistryState
from actors.planner.handlers import PlannerState
from actors.runtime.actor import Actor, Context, bind
from actors.runtime.settings import Settings
from bus_schemas.registry import BUILD_STATUS, GET_BUILD, PLANNER_REQUESTED, PREVIEW_PLAN, SUBMIT_BUILD


class PlannerActor(Actor):
    """The planner; it hands the settings it serves with (Claude, fetch policy) to the plan step."""

    def __init__(self, state: PlannerState) -> None:
        super().__init__("planner", migrations=Path(__file__).parent / "migrations")
        self.state = state

    async def serve(self, settings: Settings, stop: asyncio.Event) -> None:
        """Serve with `settings` at hand for the plan step."""
        self.state.settings = settings
        await super().serve(settings, stop)


def create_actor() -> Actor:
    """The planner: the build registry's endpoints, status projection and summary flush, the plan step, and plan
    previews (the plan step's planning, with its settings, for a source no build was asked for)."""
    planner = PlannerState()
    registry = BuildRegistryState()
    actor = PlannerActor(planner)

    actor.rpc(SUBMIT_BUILD)(bind(build_registry.submit_build, registry))
    actor.rpc(GET_BUILD)(build_registry.get_build)
    actor.batch_consumer(
        BUILD_STATUS, max_batch=build_registry.PROJECTION_BATCH, linger=build_registry.PROJECTION_LINGER_SECONDS
    )(bind(build_registry.project_build_status, registry))

    @actor.every(build_registry.SUMMARY_FLUSH_SECONDS)
    async def flush_summaries(ctx: Context) -> None:
        await build_registry.flush_summaries(ctx, registry)

    actor.rpc(PREVIEW_PLAN)(bind(preview.preview_plan, preview.PreviewState(planner)))

    step = handlers.plan_build
    actor.consumer(PLANNER_REQUESTED, on_park=step.on_park)(bind(step, planner))
    return actor
