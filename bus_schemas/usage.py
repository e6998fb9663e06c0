"""Usage events published by runners, consumed by the metering actor."""

from __future__ import annotations

from typing import Literal

import msgspec

from bus_schemas.base import Id, Message


class ToolCalled(Message, frozen=True, kw_only=True, tag="usage.tool_called.v1"):
    """One MCP tool call answered by a runner."""

    event_id: str
    """Unique per call; also the `Nats-Msg-Id`, so a re-published event is stored once."""
    org_id: Id
    """The organisation the runner claims; metering attributes by its own server records and rejects a
    mismatch."""
    server_id: Id
    tool: str
    duration_ms: float
    status: Literal["ok", "error"]
    bytes_out: int = 0
    at: str


QuotaName = Literal["builds_per_month", "tool_calls_per_month", "running_servers"]


class OverQuota(msgspec.Struct, frozen=True, kw_only=True):
    """One exceeded quota of an organisation."""

    quota: QuotaName
    limit: int
    used: int
    period: str
    """e.g. "2026-11" for monthly quotas."""


class QuotaState(msgspec.Struct, frozen=True, kw_only=True):
    """An organisation's quota state: the value under key `<org_id>` in the QUOTAS bucket.

    Written by the metering actor whenever it changes; runners watch the bucket and refuse tool calls
    while `tool_calls_per_month` is exceeded. No key means nothing is exceeded.
    """

    org_id: Id
    exceeded: tuple[OverQuota, ...] = ()
    updated_at: str = ""
