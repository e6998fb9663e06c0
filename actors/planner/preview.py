"""Plan previews (PREVIEW_PLAN, `POST /v1/plans`): a source planned as a build would plan it, nothing built.

The preview runs the plan step's own code (`planning.plan_request`, then `finish_plan` with the same token
budget), so the tools, schemas, flags and token estimate it answers are those a build of the same source gets.
It differs from the plan step only in what it leaves out: no build quota is checked or used, no plan is stored,
no build event is published. A URL source is fetched under the same egress rules (inside `plan_request`).

Previews are rate-bounded per organisation, on each planner copy (`PreviewLimiter`): a few at once, and a number
per minute. A preview is cheap for an OpenAPI document but not free (a large one takes seconds of CPU), and plain
words cost Claude tokens that no build meters.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from actors.planner.handlers import PlannerState
from actors.planner.planning import finish_plan, plan_request, tool_list
from actors.planner.problems import PlanNotes, PlanProblem
from actors.runtime.actor import Context, TransientError, utc_now
from actors.runtime.codec import encode
from actors.runtime.settings import Settings
from bus_schemas.base import Failed, FailureCode
from bus_schemas.builds import BuildRequested
from bus_schemas.plans import ToolPlan
from bus_schemas.previews import PlanNote, PlanPreview, PlanPreviewed, PreviewPlan

PREVIEW_BUILD_ID = "preview"
"""The build id of the `requested` event a preview plans from: it is never published and names no build."""

PREVIEWS_PER_MINUTE = 30
"""Previews one organisation may start per minute on one planner copy."""
PREVIEWS_IN_FLIGHT_PER_ORG = 2
"""Previews of one organisation planning at once on one planner copy."""
PREVIEWS_IN_FLIGHT = 8
"""Previews of all organisations planning at once on one planner copy."""
WINDOW_SECONDS = 60.0


@dataclass
class PreviewLimiter:
    """How many previews each organisation may start (a sliding minute) and run at once, on this planner copy."""

    per_minute: int = PREVIEWS_PER_MINUTE
    in_flight_per_org: int = PREVIEWS_IN_FLIGHT_PER_ORG
    in_flight_total: int = PREVIEWS_IN_FLIGHT
    clock: Callable[[], float] = time.monotonic
    _started: dict[str, deque[float]] = field(default_factory=dict)
    _running: dict[str, int] = field(default_factory=dict)

    def take(self, org_id: str) -> Failed | None:
        """Count one preview of `org_id` as started and running, or the `rate_limited` answer when it may not."""
        now = self.clock()
        started = self._started.setdefault(org_id, deque())
        while started and started[0] <= now - WINDOW_SECONDS:
            started.popleft()
        if len(started) >= self.per_minute:
            retry = max(1, math.ceil(started[0] + WINDOW_SECONDS - now))
            return Failed(code=FailureCode.RATE_LIMITED, retry_after_seconds=retry,
                          detail=f"over {self.per_minute} plan previews a minute for this organisation; "
                                 f"try again in {retry} s")
        if self._running.get(org_id, 0) >= self.in_flight_per_org:
            return Failed(code=FailureCode.RATE_LIMITED, retry_after_seconds=1,
                          detail=f"this organisation already has {self.in_flight_per_org} plan previews running; "
                                 "wait for one to finish")
        if sum(self._running.values()) >= self.in_flight_total:
            return Failed(code=FailureCode.RATE_LIMITED, retry_after_seconds=1,
                          detail="the planner is busy with other previews; try again in a moment")
        started.append(now)
        self._running[org_id] = self._running.get(org_id, 0) + 1
        self._forget_idle(now)
        return None

    def give_back(self, org_id: str) -> None:
        """A preview of `org_id` finished."""
        left = self._running.get(org_id, 1) - 1
        if left:
            self._running[org_id] = left
        else:
            self._running.pop(org_id, None)

    def _forget_idle(self, now: float) -> None:
        # Organisations with no start in the window hold no memory (checked now and then, not on every take).
        if len(self._started) > 1024:
            for org_id in [o for o, s in self._started.items() if not s or s[-1] <= now - WINDOW_SECONDS]:
                del self._started[org_id]


@dataclass
class PreviewState:
    """What the preview endpoint needs besides its message: the plan step's state (its settings) and the limits."""

    planner: PlannerState
    limiter: PreviewLimiter = field(default_factory=PreviewLimiter)
    max_reply_bytes: int | None = None
    """The largest reply sent; None: the most one NATS message carries (the server's `max_payload`)."""


def as_build_request(request: PreviewPlan) -> BuildRequested:
    """The `requested` event a build of the same source would be planned from (never published)."""
    return BuildRequested(build_id=PREVIEW_BUILD_ID, org_id=request.org_id, at=utc_now(), name=request.name,
                          requested_by=request.requested_by, source=request.source)


def preview_of(plan: ToolPlan, notes: PlanNotes) -> PlanPreview:
    """A finished plan as a preview: its tool list as served (annotations included), and what planning said."""
    tools = tuple(tool_list(plan))
    return PlanPreview(
        server_name=plan.server_name, planned_from=plan.planned_from, tools=tools,
        tool_list_tokens=plan.tool_list_tokens, flags=plan.flags,
        notes=tuple(PlanNote(level=level, message=message) for level, message in notes.lines),
        upstream_hosts=plan.upstream_hosts, secrets=plan.secrets,
        model_input_tokens=notes.model_input_tokens, model_output_tokens=notes.model_output_tokens,
    )


async def preview_plan(request: PreviewPlan, ctx: Context, state: PreviewState) -> PlanPreviewed | Failed:
    """Plan the request's source as a build of it would be planned; `invalid` names what in the source stops it."""
    settings = state.planner.settings
    assert settings is not None
    refused = state.limiter.take(request.org_id)
    if refused is not None:
        ctx.log.info("refused a plan preview of %s: %s", request.org_id, refused.detail)
        return refused
    try:
        # Planning a large document is seconds of CPU in one call (OpenAI's: ~7 s): in a thread of its own, with
        # its own event loop, the actor's loop keeps answering its other endpoints and consumers meanwhile.
        plan, notes = await asyncio.to_thread(asyncio.run, planned(request, settings))
    except PlanProblem as problem:
        return Failed(code=FailureCode.INVALID, detail=str(problem))
    except TransientError as exc:
        return Failed(code=FailureCode.UNAVAILABLE, detail=f"{exc}; try again", retry_after_seconds=5)
    finally:
        state.limiter.give_back(request.org_id)
    ctx.log.info("previewed a plan of %d tool(s) for %s (%s)", len(plan.tools), request.org_id,
                 request.requested_by[:80])
    previewed = PlanPreviewed(preview=preview_of(plan, notes))
    return too_large(previewed, state.max_reply_bytes or ctx.nc.max_payload) or previewed


async def planned(request: PreviewPlan, settings: Settings) -> tuple[ToolPlan, PlanNotes]:
    """The finished plan of the request's source, as the plan step makes it, and what planning noted."""
    notes = PlanNotes()
    plan = await plan_request(as_build_request(request), settings, notes)
    return finish_plan(plan, notes, settings.planner_token_budget), notes


def too_large(previewed: PlanPreviewed, max_bytes: int) -> Failed | None:
    """The answer for a preview too large for one reply (a plan store has no such limit: a build of the same
    source would still plan), or None. Without it the reply would not be sent at all and the caller wait it out."""
    size = len(encode(previewed))
    if size <= max_bytes:
        return None
    return Failed(code=FailureCode.INVALID,
                  detail=f"the preview of {len(previewed.preview.tools)} tools is {size:,} bytes, more than one reply "
                         f"carries ({max_bytes:,}); choose fewer with `operations` or `tags`")
