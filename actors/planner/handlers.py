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
from actors.runtime.actor import Context
from actors.runtime.build_events import StepFailed, StepRun, pipeline_step
from actors.runtime.bus import call
from actors.runtime.settings import Settings
from bus_schemas.base import Failed, FailureCode
from bus_schemas.builds import BuildPlanned, BuildRequested
from bus_schemas.registry import CHECK_QUOTA
from bus_schemas.usage import CheckQuota

QUOTA_CHECK_TIMEOUT = 3.0
"""Seconds the plan step waits for the metering actor's answer about the build quota."""


@dataclass
class PlannerState:
    """What the plan step needs besides its message."""

    settings: Settings | None = None
    """The settings the actor serves with (Claude, fetch policy), set when it starts serving."""


async def emit_notes(run: StepRun[BuildRequested], notes: PlanNotes) -> None:
    """The plan step's log lines, in order, each keyed by its place so redelivery does not repeat them."""
    for index, (level, message) in enumerate(notes.lines):
        await run.log(f"log:{index}", message, level)


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
    run: StepRun[BuildRequested], settings: Settings, notes: PlanNotes
) -> tuple[str, int]:
    """Plan a build not planned before: check its quota, plan, store and record the plan; returns the plan
    hash and tool count that stand (raises `StepFailed` with the notes logged when it cannot)."""
    build = run.event
    refusal = await check_build_quota(run.ctx, build, notes)
    if refusal is not None:
        await emit_notes(run, notes)
        raise StepFailed(FailureCode.QUOTA_EXCEEDED, refusal)
    try:
        plan = await plan_request(build, settings, notes)
    except PlanProblem as problem:
        await emit_notes(run, notes)
        raise StepFailed(FailureCode.INVALID, str(problem)) from None
    plan = finish_plan(plan, notes, settings.planner_token_budget)
    flags = len(plan.flags)
    notes.info(
        f"planned {len(plan.tools)} tool(s); tool list ~{plan.tool_list_tokens:,} tokens "
        f"(estimate: JSON characters / 4){f'; {flags} flag(s) for review' if flags else ''}"
    )
    digest = await store_plan(run.ctx.js, plan)
    notes.info(f"plan stored as {digest}")
    await emit_notes(run, notes)
    async with run.ctx.pool.acquire() as conn:
        return await storage.record_plan(conn, build.build_id, digest, len(plan.tools))


@pipeline_step("plan", after=BuildRequested, doing="planning")
async def plan_build(event: BuildRequested, run: StepRun[BuildRequested], state: PlannerState) -> BuildPlanned:
    """The plan step for a `requested` event: plan the build once; the build goes on `planned`."""
    assert state.settings is not None
    async with run.ctx.pool.acquire() as conn:
        planned = await storage.find_plan(conn, event.build_id)
    notes = PlanNotes()
    if planned is None:  # not planned before (a redelivery after recording reuses the recorded plan)
        planned = await plan_and_record(run, state.settings, notes)
    digest, tool_count = planned
    return run.next(BuildPlanned, plan_hash=digest, tool_count=tool_count,
                    model_input_tokens=notes.model_input_tokens, model_output_tokens=notes.model_output_tokens)
