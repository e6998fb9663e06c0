"""The planner actor: the plan step, and the build registry beside it.

The plan step consumes each build's `requested` event (PLANNER_REQUESTED): it checks the organisation's build
quota with the metering actor, turns the build's source (an OpenAPI document, or plain words through Claude)
into a plan of tools (`planning`), stores the plan and emits `planned` with its hash, or fails the step with
the reason. A build is planned once: a redelivered `requested` event reuses the recorded plan.

The same actor process serves the build registry (SUBMIT_BUILD, GET_BUILD, the status projection and the
BUILD_SUMMARIES bucket), which has its own handlers, state and SQL in `build_registry`; the plan step shares
nothing with it but the actor's database.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.planner import storage
from actors.planner.planning import finish_plan, plan_request, store_plan
from actors.planner.problems import PlanNotes, PlanProblem
from actors.runtime.actor import Context, utc_now
from actors.runtime.build_events import emit, fail_step, start_step
from actors.runtime.bus import call
from actors.runtime.settings import Settings
from bus_schemas.base import Failed, FailureCode
from bus_schemas.builds import AnyBuildEvent, BuildPlanned, BuildRequested, LogLine, StepChanged
from bus_schemas.registry import CHECK_QUOTA
from bus_schemas.usage import CheckQuota

QUOTA_CHECK_TIMEOUT = 3.0
"""Seconds the plan step waits for the metering actor's answer about the build quota."""


@dataclass
class PlannerState:
    """What the plan step needs besides its message."""

    settings: Settings | None = None
    """The settings the actor serves with (Claude, fetch policy), set when it starts serving."""


async def emit_notes(ctx: Context, build: BuildRequested, notes: PlanNotes) -> None:
    """The plan step's log lines, in order, each keyed by its place so redelivery does not repeat them."""
    for index, (level, message) in enumerate(notes.lines):
        line = LogLine(build_id=build.build_id, org_id=build.org_id, at=utc_now(), step="plan", level=level,
                       message=message)
        await emit(ctx, line, "log", f"plan:log:{index}")


async def check_build_quota(ctx: Context, build: BuildRequested, notes: PlanNotes) -> str | None:
    """Why the organisation may not start this build (its build quota is used up), or None.

    Without an answer from the metering actor (not running, too slow, failing) the build goes ahead with a
    warning in its log: metering being down must not stop every build, and builds it missed are still
    counted from their `requested` events once it is back."""
    assert ctx.delivery is not None
    request = CheckQuota(org_id=build.org_id, quota="builds_per_month", build_id=build.build_id,
                         requested_seq=ctx.delivery.stream_seq)
    answer = await call(ctx.nc, CHECK_QUOTA, request, timeout=QUOTA_CHECK_TIMEOUT)
    if isinstance(answer, Failed):
        if answer.code == FailureCode.QUOTA_EXCEEDED:
            return answer.detail
        ctx.log.warning("build %s: quota not checked: %s", build.build_id, answer.detail)
        notes.warn(f"the build quota was not checked ({answer.detail}); the build goes ahead")
    return None


async def plan_and_record(
    ctx: Context, build: BuildRequested, settings: Settings, notes: PlanNotes
) -> tuple[str, int] | None:
    """Plan a build not planned before: check its quota, plan, store and record the plan; returns the plan
    hash and tool count that stand, or None when the step failed (its `failed` event is emitted)."""
    refusal = await check_build_quota(ctx, build, notes)
    if refusal is not None:
        await emit_notes(ctx, build, notes)
        await fail_step(ctx, build, "plan", FailureCode.QUOTA_EXCEEDED, refusal)
        return None
    try:
        plan = await plan_request(build, settings, notes)
    except PlanProblem as problem:
        await emit_notes(ctx, build, notes)
        await fail_step(ctx, build, "plan", FailureCode.INVALID, str(problem))
        return None
    plan = finish_plan(plan, notes)
    flags = len(plan.flags)
    notes.info(
        f"planned {len(plan.tools)} tool(s); tool list ~{plan.tool_list_tokens:,} tokens "
        f"(estimate: JSON characters / 4){f'; {flags} flag(s) for review' if flags else ''}"
    )
    digest = await store_plan(ctx.js, plan)
    notes.info(f"plan stored as {digest}")
    await emit_notes(ctx, build, notes)
    async with ctx.pool.acquire() as conn:
        return await storage.record_plan(conn, build.build_id, digest, len(plan.tools))


async def plan_build(event: AnyBuildEvent, ctx: Context, state: PlannerState) -> None:
    """The plan step for a `requested` event: plan the build once, then emit `planned` (or fail the step)."""
    if not isinstance(event, BuildRequested):
        return
    assert state.settings is not None
    await start_step(ctx, event, "plan")
    async with ctx.pool.acquire() as conn:
        planned = await storage.find_plan(conn, event.build_id)
    notes = PlanNotes()
    if planned is None:  # not planned before (a redelivery after recording reuses the recorded plan)
        planned = await plan_and_record(ctx, event, state.settings, notes)
        if planned is None:
            return
    digest, tool_count = planned
    ids = {"build_id": event.build_id, "org_id": event.org_id}
    await emit(ctx, StepChanged(**ids, at=utc_now(), step="plan", state="finished"), "step", "plan:finished")
    planned_event = BuildPlanned(**ids, at=utc_now(), plan_hash=digest, tool_count=tool_count,
                                 model_input_tokens=notes.model_input_tokens,
                                 model_output_tokens=notes.model_output_tokens)
    await emit(ctx, planned_event, "planned", "planned")
