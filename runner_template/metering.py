"""Per tool call: the over-quota refusal, one usage event and one log line.

`ToolCallMeter` is an SDK `ServerMiddleware`, so it sees every `tools/call` of both protocol revisions in one
place. While the organisation is over its `tool_calls_per_month` quota, the call is answered with an MCP tool
error (`isError: true`) naming the quota, limit, used and period: a tool error reaches the model, which can
tell the person why, where a JSON-RPC error usually surfaces as an opaque client failure. The refusal is
raised by the tool callable itself (see `refusal_var`), so the SDK shapes the result for each revision.
Refused calls are not metered (they did not run); every call that ran, ok or failing, gives one `ToolCalled`.

Usage events go into `UsageOutbox`, a bounded queue the bus drains: a tool call never waits for the bus, and
when the bus is away long enough to fill the queue the oldest events are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

import msgspec
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from pydantic import BaseModel

from bus_schemas.usage import OverQuota, QuotaState, ToolCalled

log = logging.getLogger("bmms.runner.tools")

TOOL_CALL_QUOTA = "tool_calls_per_month"
"""The quota whose excess stops tool calls."""

refusal_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("bmms_tool_refusal", default=None)
"""Set by `ToolCallMeter` for the duration of a call that must be refused; read by the registered tool
callables (`runner_template.server`), which raise it as a `ToolError` instead of running the tool."""

_encoder = msgspec.json.Encoder()


def over_quota_message(over: OverQuota) -> str:
    """What a refused call says: which quota, its limit, how much is used, in which period."""
    return (f"over quota: {over.quota} {over.used}/{over.limit} used in {over.period}; "
            "calls resume next period or on a bigger plan")


class QuotaGate:
    """The organisation's latest quota state, as the bus delivers it (None: within every quota)."""

    def __init__(self) -> None:
        self._state: QuotaState | None = None
        self.updates = 0
        """How many states were applied (tests wait on it)."""

    def update(self, state: QuotaState | None) -> None:
        """Apply a new state (None: the key was deleted, nothing is exceeded)."""
        self._state = state
        self.updates += 1
        log.info("quota state", extra={"event": "quota_state",
                                       "exceeded": [o.quota for o in state.exceeded] if state else []})

    def refusal(self) -> str | None:
        """Why tool calls are refused now, or None."""
        state = self._state
        if state is None:
            return None
        for over in state.exceeded:
            if over.quota == TOOL_CALL_QUOTA:
                return over_quota_message(over)
        return None


class UsageOutbox:
    """Usage events waiting for the bus: bounded, oldest dropped (and counted) when full."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self.dropped = 0
        """Events dropped because the queue was full."""
        self._events: deque[ToolCalled] = deque()
        self._ready = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._events)

    def put(self, event: ToolCalled) -> None:
        """Queue an event; never blocks."""
        if len(self._events) >= self.capacity:
            self._events.popleft()
            self.dropped += 1
            log.warning("usage event dropped: the bus is behind and the outbox is full",
                        extra={"event": "usage_dropped", "dropped_total": self.dropped, "capacity": self.capacity})
        self._events.append(event)
        self._ready.set()
        self._empty.clear()

    async def head(self) -> ToolCalled:
        """The oldest queued event, waiting for one; it stays queued until `done`."""
        while not self._events:
            self._ready.clear()
            await self._ready.wait()
        return self._events[0]

    def done(self, event: ToolCalled) -> None:
        """`event` is stored on the bus: take it off the queue (unless it was dropped meanwhile)."""
        if self._events and self._events[0] is event:
            self._events.popleft()
        if not self._events:
            self._empty.set()

    async def emptied(self) -> None:
        """Wait until every queued event is stored."""
        await self._empty.wait()


def _principal(ctx: ServerRequestContext[Any, Any]) -> dict[str, str]:
    """Who called (client id and subject of the verified token), for the log line; never the token."""
    scope = getattr(ctx.request, "scope", None)
    user = scope.get("user") if isinstance(scope, dict) else None
    if isinstance(user, AuthenticatedUser):
        return {"client_id": user.access_token.client_id, "subject": user.access_token.subject or ""}
    return {}


def _size(result: HandlerResult) -> int:
    if isinstance(result, BaseModel):
        return len(result.model_dump_json(by_alias=True, exclude_none=True))
    return len(_encoder.encode(result)) if result is not None else 0


class ToolCallMeter:
    """The SDK middleware that refuses tool calls over quota and meters the others."""

    def __init__(self, *, server_id: str, org_id: str, quota: QuotaGate, outbox: UsageOutbox | None) -> None:
        self.server_id = server_id
        self.org_id = org_id
        self.quota = quota
        self.outbox = outbox
        """None: usage is not published (no bus configured); calls are still logged."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        tool = str((ctx.params or {}).get("name", ""))
        refusal = self.quota.refusal()
        if refusal is not None:
            token = refusal_var.set(refusal)
            try:
                return await call_next(ctx)
            finally:
                refusal_var.reset(token)
                log.info("tool call refused: over quota", extra={
                    "event": "tool_call", "tool": tool, "status": "over_quota", **_principal(ctx)})
        started = time.perf_counter()
        status = "error"
        bytes_out = 0
        try:
            result = await call_next(ctx)
            is_error = result.get("isError") if isinstance(result, dict) else getattr(result, "is_error", False)
            status = "error" if is_error else "ok"
            bytes_out = _size(result)
            return result
        finally:
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            log.info("tool call", extra={"event": "tool_call", "tool": tool, "status": status,
                                         "duration_ms": duration_ms, "bytes_out": bytes_out, **_principal(ctx)})
            if self.outbox is not None:
                self.outbox.put(ToolCalled(
                    event_id=uuid.uuid4().hex, org_id=self.org_id, server_id=self.server_id, tool=tool,
                    duration_ms=duration_ms, status="ok" if status == "ok" else "error", bytes_out=bytes_out,
                    at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                ))
