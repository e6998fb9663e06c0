"""The planner actor's handlers."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from actors.planner import storage
from actors.runtime.actor import Actor, Context, utc_now
from actors.runtime.build_events import emit, fail_step, start_step
from actors.runtime.codec import decode, encode
from bus_schemas.base import Failed, FailureCode
from bus_schemas.builds import (
    AnyBuildEvent,
    BuildAccepted,
    BuildFailed,
    BuildRequested,
    GetBuild,
    GetBuildReply,
    SubmitBuild,
    SubmitBuildReply,
)
from bus_schemas.registry import BUILD_STATUS, GET_BUILD, PLANNER_REQUESTED, SUBMIT_BUILD


def new_build_id() -> str:
    """A time-ordered, subject-safe build id."""
    return f"b{int(time.time() * 1000):011x}{secrets.token_hex(6)}"


def create_actor() -> Actor:
    """The planner: build registry endpoints, the status projection and the plan step."""
    actor = Actor("planner", migrations=Path(__file__).parent / "migrations")

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
                )
                seq = await emit(ctx, event, "requested", "requested")
                await storage.mark_requested(conn, build_id, seq)
        return BuildAccepted(build_id=build_id, org_id=request.org_id, status="requested")

    @actor.rpc(GET_BUILD)
    async def get_build(request: GetBuild, ctx: Context) -> GetBuildReply:
        async with ctx.pool.acquire() as conn:
            summary = await storage.find_build(conn, request.org_id, request.build_id)
        if summary is None:
            return Failed(code=FailureCode.NOT_FOUND, detail=f"no build {request.build_id} in this organisation")
        return summary

    @actor.consumer(BUILD_STATUS, max_in_flight=64)
    async def project_build_status(event: AnyBuildEvent, ctx: Context) -> None:
        assert ctx.delivery is not None
        kind = ctx.delivery.subject.rsplit(".", 1)[-1]
        failure = f"{event.step}: {event.detail}" if isinstance(event, BuildFailed) else None
        async with ctx.pool.acquire() as conn:
            await storage.apply_event(conn, event.build_id, kind, ctx.delivery.stream_seq, failure)

    async def plan_step_parked(payload: bytes, reason: str, ctx: Context) -> None:
        # The person watching the build learns that planning stopped, and why.
        event = decode(AnyBuildEvent, payload)
        await fail_step(ctx, event, "plan", FailureCode.INTERNAL, f"planning stopped: {reason}")

    @actor.consumer(PLANNER_REQUESTED, on_park=plan_step_parked)
    async def plan_build(event: AnyBuildEvent, ctx: Context) -> None:
        if not isinstance(event, BuildRequested):
            return
        await start_step(ctx, event, "plan")
        # Planning itself (OpenAPI, tool specs, plain words through Claude) is the pipeline issue's work.
        await fail_step(
            ctx, event, "plan", FailureCode.NOT_IMPLEMENTED,
            "the planner cannot plan servers yet: this platform build only has the foundation (bus, "
            "gateway, build streams); planning arrives with the build pipeline",
        )

    return actor
