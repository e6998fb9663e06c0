"""A build's events, and the pipeline steps that publish them.

A step is declared once with `pipeline_step`: its body takes the event that starts it and returns the event
that hands the build on (or raises `StepFailed`); the runtime publishes the step's `started` and
`finished`, that event on the subject of its kind, or the typed failure, each with its de-duplication key,
so a redelivered event repeats nothing in the build's history. The body logs through its `StepRun`, which
also makes the next event carry what later steps need (the server's name and id) from the one before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from actors.runtime.actor import Context, ParkHook, utc_now
from actors.runtime.codec import decode
from actors.runtime.observability import step_handling
from bus_schemas.base import FailureCode
from bus_schemas.builds import (
    AnyBuildEvent,
    BuildEvent,
    BuildFailed,
    BuildFailureCode,
    BuildKind,
    BuildStep,
    LogLevel,
    LogLine,
    ServerBuildEvent,
    StepChanged,
    build_kind,
)
from bus_schemas.registry import build_subject

E = TypeVar("E", bound=ServerBuildEvent)
N = TypeVar("N", bound=ServerBuildEvent)
S = TypeVar("S")


async def emit(ctx: Context, event: BuildEvent, kind: BuildKind, key: str) -> int:
    """Publish one event of a build; `key` names it within the build, so a redelivered handler that
    emits the same key again is de-duplicated by JetStream instead of doubling the history."""
    return await ctx.publish(build_subject(event.org_id, event.build_id, kind), event, msg_id=f"{event.build_id}:{key}")


async def fail_step(ctx: Context, build: BuildEvent, step: BuildStep, code: BuildFailureCode, detail: str) -> None:
    """Record in the build's history that `step` failed and why: an error log line and `failed`."""
    ids = {"build_id": build.build_id, "org_id": build.org_id}
    await emit(ctx, LogLine(**ids, at=utc_now(), step=step, level="error", message=detail), "log", f"{step}:error")
    await emit(ctx, BuildFailed(**ids, at=utc_now(), step=step, code=code, detail=detail), "failed", f"{step}:failed")


class StepFailed(Exception):
    """Raised by a step's body: the build stops at this step, with `code` and `detail` in its `failed` event."""

    def __init__(self, code: BuildFailureCode, detail: str) -> None:
        super().__init__(detail)
        self.code: BuildFailureCode = code
        self.detail = detail


@dataclass(frozen=True)
class StepRun(Generic[E]):
    """One run of a step for one build: what the body logs, and the event it hands the build on with."""

    ctx: Context
    event: E
    """The event that started the step."""
    step: BuildStep

    async def log(self, key: str, message: str, level: LogLevel = "info") -> None:
        """A line of the build's log; `key` names it within the step, so redelivery does not repeat it."""
        line = LogLine(build_id=self.event.build_id, org_id=self.event.org_id, at=utc_now(), step=self.step,
                       level=level, message=message)
        await emit(self.ctx, line, "log", f"{self.step}:{key}")

    def next(self, event_type: type[N], **fields: Any) -> N:
        """The event that hands the build on: this build's ids and what later steps need, and `fields`."""
        return event_type(build_id=self.event.build_id, org_id=self.event.org_id, at=utc_now(),
                          name=self.event.name, server_id=self.event.server_id, **fields)

    async def changed(self, state: Literal["started", "finished"]) -> None:
        """Record that the step started or finished."""
        event = StepChanged(build_id=self.event.build_id, org_id=self.event.org_id, at=utc_now(), step=self.step,
                            state=state)
        await emit(self.ctx, event, "step", f"{self.step}:{state}")


StepBody = Callable[[E, StepRun[E], S], Awaitable[BuildEvent]]
"""A step's own work: from the event that starts it to the event that hands the build on."""


@dataclass
class PipelineStep(Generic[E, S]):
    """A declared step, a consumer handler of (event, context, state): `actor.py` binds it to its state and to
    its consumer, with `on_park` as the consumer's park hook."""

    step: BuildStep
    after: type[E]
    doing: str
    body: StepBody[E, S]

    async def __call__(self, event: AnyBuildEvent, ctx: Context, state: S) -> None:
        if not isinstance(event, self.after):
            return  # the consumer's filter delivers only `after`; nothing else is this step's
        run: StepRun[E] = StepRun(ctx, event, self.step)
        with step_handling(self.step) as seen:  # the step's time and span (`actors.runtime.observability`)
            await run.changed("started")
            try:
                handed_on = await self.body(event, run, state)
            except StepFailed as failure:
                seen.outcome = "failed"
                await fail_step(ctx, event, self.step, failure.code, failure.detail)
                return
            await run.changed("finished")
            kind = build_kind(handed_on)
            await emit(ctx, handed_on, kind, kind)

    @property
    def on_park(self) -> ParkHook:
        """The park hook: the person watching the build learns that the step stopped, and why."""
        return fail_step_when_parked(self.step, self.doing)


def pipeline_step(step: BuildStep, after: type[E], doing: str) -> Callable[[StepBody[E, S]], PipelineStep[E, S]]:
    """Declare the body below as pipeline step `step`, started by `after` events; `doing` says what it does
    in the build's log if its message is parked ("planning stopped: ...")."""

    def declare(body: StepBody[E, S]) -> PipelineStep[E, S]:
        declared = PipelineStep(step, after, doing, body)
        declared.__doc__ = body.__doc__
        return declared

    return declare


def fail_step_when_parked(step: BuildStep, doing: str) -> ParkHook:
    """A consumer's park hook: the person watching the build learns that `step` stopped, and why."""

    async def parked(payload: bytes, reason: str, ctx: Context) -> None:
        event = decode(AnyBuildEvent, payload)
        await fail_step(ctx, event, step, FailureCode.INTERNAL, f"{doing} stopped: {reason}")

    return parked
