"""The planner actor's handlers."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from pathlib import Path

from nats.js.kv import KeyValue

from actors.planner import storage
from actors.planner.planning import finish_plan, plan_request, store_plan
from actors.planner.problems import PlanNotes, PlanProblem
from actors.planner.summaries import publish_summary
from actors.runtime.actor import Actor, Batch, Context, utc_now
from actors.runtime.build_events import emit, fail_step, fail_step_when_parked, start_step
from actors.runtime.bus import call
from actors.runtime.codec import encode
from actors.runtime.settings import Settings
from bus_schemas.base import Failed, FailureCode
from bus_schemas.builds import (
    AnyBuildEvent,
    BuildAccepted,
    BuildFailed,
    BuildPlanned,
    BuildRequested,
    GetBuild,
    GetBuildReply,
    LogLine,
    StepChanged,
    SubmitBuild,
    SubmitBuildReply,
)
from bus_schemas.registry import BUILD_STATUS, BUILD_SUMMARIES, CHECK_QUOTA, GET_BUILD, PLANNER_REQUESTED, SUBMIT_BUILD
from bus_schemas.usage import CheckQuota


def new_build_id() -> str:
    """A time-ordered, subject-safe build id."""
    return f"b{int(time.time() * 1000):011x}{secrets.token_hex(6)}"


class PlannerActor(Actor):
    """The planner; it keeps the process settings it serves with (Claude, fetch policy)."""

    def __init__(self) -> None:
        super().__init__("planner", migrations=Path(__file__).parent / "migrations")
        self.settings: Settings | None = None
        self._summaries: KeyValue | None = None
        self._dirty: dict[str, str] = {}
        """Builds whose summary moved by a log or step event only: build id -> org id, written by the
        flusher (a busy build's log lines cost one summary write per interval, not one each)."""
        self._flusher: asyncio.Task[None] | None = None

    async def serve(self, settings: Settings, stop: asyncio.Event) -> None:
        """Serve with `settings` at hand for the plan step."""
        self.settings = settings
        try:
            await super().serve(settings, stop)
        finally:
            if self._flusher is not None:
                self._flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._flusher

    async def started(self, ctx: Context) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(ctx))

    def mark_dirty(self, org_id: str, build_id: str) -> None:
        self._dirty[build_id] = org_id

    async def _flush_forever(self, ctx: Context) -> None:
        while True:
            await asyncio.sleep(SUMMARY_FLUSH_SECONDS)
            dirty, self._dirty = self._dirty, {}
            for build_id, org_id in dirty.items():
                try:
                    await self.write_summary(ctx, org_id, build_id)
                except Exception:  # the next event of the build writes it again
                    ctx.log.warning("summary of build %s not written", build_id, exc_info=True)

    async def write_summary(self, ctx: Context, org_id: str, build_id: str) -> None:
        """Put the build's summary as the projection holds it now into BUILD_SUMMARIES."""
        async with ctx.pool.acquire() as conn:
            summary = await storage.find_build(conn, org_id, build_id)
        if summary is not None:
            await publish_summary(await self.summaries(ctx), summary)

    async def summaries(self, ctx: Context) -> KeyValue:
        """The BUILD_SUMMARIES bucket, looked up once."""
        if self._summaries is None:
            self._summaries = await ctx.js.key_value(BUILD_SUMMARIES.name)
        return self._summaries


async def emit_notes(ctx: Context, build: BuildRequested, notes: PlanNotes) -> None:
    """The plan step's log lines, in order, each keyed by its place so redelivery does not repeat them."""
    for index, (level, message) in enumerate(notes.lines):
        line = LogLine(build_id=build.build_id, org_id=build.org_id, at=utc_now(), step="plan", level=level,
                       message=message)
        await emit(ctx, line, "log", f"plan:log:{index}")


PROJECTION_BATCH = 256
"""At most this many build events are projected in one transaction."""

PROJECTION_LINGER_SECONDS = 0.05
"""How long a batch of build events waits for more after its first: what a status may lag behind its event,
for a fraction of the database commits while builds log quickly."""

SUMMARY_FLUSH_SECONDS = 0.2
"""How often summaries moved only by log and step events are written to BUILD_SUMMARIES."""

QUOTA_CHECK_TIMEOUT = 3.0
"""Seconds the plan step waits for the metering actor's answer about the build quota."""


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


def create_actor() -> Actor:
    """The planner: build registry endpoints, the status projection and the plan step."""
    actor = PlannerActor()

    @actor.rpc(SUBMIT_BUILD)
    async def submit_build(request: SubmitBuild, ctx: Context) -> SubmitBuildReply:
        async with ctx.pool.acquire() as conn:
            build_id, requested_seq = await storage.insert_build(
                conn,
                build_id=new_build_id(),
                org_id=request.org_id,
                name=request.name,
                requested_by=request.requested_by,
                source_json=encode(request.source).decode(),
                idempotency_key=request.idempotency_key,
            )
            if requested_seq is None:
                event = BuildRequested(
                    build_id=build_id, org_id=request.org_id, at=utc_now(),
                    name=request.name, requested_by=request.requested_by, source=request.source,
                    server_id=request.server_id,
                )
                seq = await emit(ctx, event, "requested", "requested")
                await storage.mark_requested(conn, build_id, seq)
        await actor.write_summary(ctx, request.org_id, build_id)
        return BuildAccepted(build_id=build_id, org_id=request.org_id, status="requested")

    @actor.rpc(GET_BUILD)
    async def get_build(request: GetBuild, ctx: Context) -> GetBuildReply:
        async with ctx.pool.acquire() as conn:
            summary = await storage.find_build(conn, request.org_id, request.build_id)
        if summary is None:
            return Failed(code=FailureCode.NOT_FOUND, detail=f"no build {request.build_id} in this organisation")
        return summary

    @actor.batch_consumer(BUILD_STATUS, max_batch=PROJECTION_BATCH, linger=PROJECTION_LINGER_SECONDS)
    async def project_build_status(batch: Batch[AnyBuildEvent], ctx: Context) -> None:
        # One transaction per batch: a busy build's log lines cost one commit per batch, not one each.
        events = [
            storage.Projected(
                build_id=item.message.build_id, kind=item.delivery.subject.rsplit(".", 1)[-1],
                seq=item.delivery.stream_seq,
                failure=f"{item.message.step}: {item.message.detail}" if isinstance(item.message, BuildFailed)
                else None,
            )
            for item in batch
        ]
        async with ctx.pool.acquire() as conn, conn.transaction():
            await storage.apply_events(conn, events)
        orgs = {item.message.build_id: item.message.org_id for item in batch}
        moved = {e.build_id for e in events if e.kind in storage.MILESTONES}
        for build_id, org_id in orgs.items():
            if build_id in moved:
                await actor.write_summary(ctx, org_id, build_id)  # before the ack: a status never lags
            else:
                actor.mark_dirty(org_id, build_id)

    @actor.consumer(PLANNER_REQUESTED, on_park=fail_step_when_parked("plan", "planning"))
    async def plan_build(event: AnyBuildEvent, ctx: Context) -> None:
        if not isinstance(event, BuildRequested):
            return
        assert actor.settings is not None
        await start_step(ctx, event, "plan")
        async with ctx.pool.acquire() as conn:
            planned = await storage.find_plan(conn, event.build_id)
        notes = PlanNotes()
        if planned is None:  # not planned before (a redelivery after recording reuses the recorded plan)
            refusal = await check_build_quota(ctx, event, notes)
            if refusal is not None:
                await emit_notes(ctx, event, notes)
                await fail_step(ctx, event, "plan", FailureCode.QUOTA_EXCEEDED, refusal)
                return
            try:
                plan = await plan_request(event, actor.settings, notes)
            except PlanProblem as problem:
                await emit_notes(ctx, event, notes)
                await fail_step(ctx, event, "plan", FailureCode.INVALID, str(problem))
                return
            plan = finish_plan(plan, notes)
            flags = len(plan.flags)
            notes.info(
                f"planned {len(plan.tools)} tool(s); tool list ~{plan.tool_list_tokens:,} tokens "
                f"(estimate: JSON characters / 4){f'; {flags} flag(s) for review' if flags else ''}"
            )
            digest = await store_plan(ctx.js, plan)
            notes.info(f"plan stored as {digest}")
            await emit_notes(ctx, event, notes)
            async with ctx.pool.acquire() as conn:
                planned = await storage.record_plan(conn, event.build_id, digest, len(plan.tools))
        digest, tool_count = planned
        ids = {"build_id": event.build_id, "org_id": event.org_id}
        await emit(ctx, StepChanged(**ids, at=utc_now(), step="plan", state="finished"), "step", "plan:finished")
        planned_event = BuildPlanned(**ids, at=utc_now(), plan_hash=digest, tool_count=tool_count,
                                     model_input_tokens=notes.model_input_tokens,
                                     model_output_tokens=notes.model_output_tokens)
        await emit(ctx, planned_event, "planned", "planned")

    return actor
