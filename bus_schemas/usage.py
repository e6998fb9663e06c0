"""Usage events published by runners, consumed by the metering actor."""

from __future__ import annotations

from typing import Literal

from bus_schemas.base import Id, Message


class ToolCalled(Message, frozen=True, kw_only=True, tag="usage.tool_called.v1"):
    """One MCP tool call answered by a runner."""

    event_id: str
    server_id: Id
    tool: str
    duration_ms: float
    status: Literal["ok", "error"]
    bytes_out: int = 0
    at: str
