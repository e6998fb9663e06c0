"""Publishing a build's events, shared by every pipeline actor."""

from __future__ import annotations

from actors.runtime.actor import Context, ParkHook, utc_now
from actors.runtime.codec import decode
from bus_schemas.base import FailureCode
from bus_schemas.builds import (
    AnyBuildEvent,
    BuildEvent,
    BuildFailed,
    BuildFailureCode,
    BuildKind,
    BuildStep,
    LogLine,
    StepChanged,
)
from bus_schemas.registry import build_subject

Step = BuildStep


async def emit(ctx: Context, event: BuildEvent, kind: BuildKind, key: str) -> int:
    """Publish one event of a build; `key` names it within the build, so a redelivered handler that
    emits the same key again is de-duplicated by JetStream instead of doubling the history."""
    return await ctx.publish(build_subject(event.org_id, event.build_id, kind), event, msg_id=f"{event.build_id}:{key}")


async def fail_step(ctx: Context, build: BuildEvent, step: Step, code: BuildFailureCode, detail: str) -> None:
    """Record in the build's history that `step` failed and why: an error log line and `failed`."""
    ids = {"build_id": build.build_id, "org_id": build.org_id}
    await emit(ctx, LogLine(**ids, at=utc_now(), step=step, level="error", message=detail), "log", f"{step}:error")
    await emit(ctx, BuildFailed(**ids, at=utc_now(), step=step, code=code, detail=detail), "failed", f"{step}:failed")


async def start_step(ctx: Context, build: BuildEvent, step: Step) -> None:
    """Record that `step` started."""
    event = StepChanged(build_id=build.build_id, org_id=build.org_id, at=utc_now(), step=step, state="started")
    await emit(ctx, event, "step", f"{step}:started")


def fail_step_when_parked(step: Step, doing: str) -> ParkHook:
    """A consumer's park hook: the person watching the build learns that `step` stopped, and why."""

    async def parked(payload: bytes, reason: str, ctx: Context) -> None:
        event = decode(AnyBuildEvent, payload)
        await fail_step(ctx, event, step, FailureCode.INTERNAL, f"{doing} stopped: {reason}")

    return parked
