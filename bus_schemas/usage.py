"""Usage events published by runners, consumed by the metering actor; its quota and usage messages."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from bus_schemas.base import Failed, Id, Message


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


# --- quotas and usage reports: the metering actor's RPC messages ---

PERIOD_PATTERN = r"^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])$"
"""`YYYY-MM`, from 1970-01 to 2999-12: months a platform of today can have counted (and whose next month
is a date)."""
Period = Annotated[str, msgspec.Meta(pattern=PERIOD_PATTERN)]
"""A calendar month in UTC, `YYYY-MM`: the period every monthly quota and usage report counts in."""


class CheckQuota(Message, frozen=True, kw_only=True, tag="metering.check_quota.v1"):
    """May the organisation add `adding` more of `quota` now? Asked by the planner before a build starts
    and by the deployer before a server starts."""

    org_id: Id
    quota: QuotaName
    adding: Annotated[int, msgspec.Meta(ge=1)] = 1
    build_id: Id | None = None
    """For `builds_per_month`: the build about to start. Builds count in the order they were requested, so
    the answer for one build does not change when builds requested after it are already counted."""
    requested_seq: int | None = None
    """With `build_id`: the BUILDS stream sequence of its `requested` event; metering answers once it has
    counted every build requested up to it (or after a short wait, with what it has counted)."""
    server_id: Id | None = None
    """For `running_servers`: the server about to start; it takes no second slot if it already runs."""


class QuotaAllowed(Message, frozen=True, kw_only=True, tag="metering.quota_allowed.v1"):
    """Within the quota: `used` (before this request) plus `adding` is at most `limit` (None: unlimited)."""

    quota: QuotaName
    limit: int | None
    used: int
    period: str
    """The month the quota counts in, or "now" for `running_servers`."""


class QuotaUsage(msgspec.Struct, frozen=True, kw_only=True):
    """One quota of an organisation's plan and how much of it is used."""

    quota: QuotaName
    limit: int | None
    """None: unlimited."""
    used: int
    exceeded: bool
    """Nothing more may be added: a monthly quota is used up, or more servers run than allowed."""
    period: str


class GetQuota(Message, frozen=True, kw_only=True, tag="metering.get_quota.v1"):
    """The organisation's plan and each quota's use now."""

    org_id: Id


class QuotaStatus(Message, frozen=True, kw_only=True, tag="metering.quota_status.v1"):
    """An organisation's plan and its quotas."""

    org_id: Id
    plan: str
    quotas: tuple[QuotaUsage, ...]


class GetUsage(Message, frozen=True, kw_only=True, tag="metering.get_usage.v1"):
    """One organisation's usage in one month, optionally of one server only."""

    org_id: Id
    period: Period
    server_id: Id | None = None


class ToolUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Calls of one tool of one server."""

    server_id: str
    tool: str
    calls: int
    errors: int
    duration_ms: float
    """Summed over the calls."""
    bytes_out: int


class ServerUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Calls of one server, all tools."""

    server_id: str
    calls: int
    errors: int
    duration_ms: float
    bytes_out: int
    calls_today: int = 0
    """Calls on the current UTC day (0 in a report of another month)."""


class DayUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Tool calls on one UTC day."""

    day: str
    calls: int
    errors: int


class StepUsage(msgspec.Struct, frozen=True, kw_only=True):
    """Finished runs of one pipeline step of the period's builds and the time they took."""

    step: str
    runs: int
    duration_ms: float


class UsageReport(Message, frozen=True, kw_only=True, tag="metering.usage_report.v1"):
    """An organisation's usage in one month: tool calls (in all, per server, per tool, per day) and builds."""

    org_id: Id
    period: str
    server_id: str | None = None
    """The server the tool-call figures are limited to, if one was asked for."""
    tool_calls: int
    tool_errors: int
    duration_ms: float
    bytes_out: int
    by_server: tuple[ServerUsage, ...] = ()
    by_tool: tuple[ToolUsage, ...] = ()
    by_day: tuple[DayUsage, ...] = ()
    builds: int
    """Builds requested in the month (those refused for the build quota do not count)."""
    model_input_tokens: int = 0
    model_output_tokens: int = 0
    build_steps: tuple[StepUsage, ...] = ()


CheckQuotaReply = QuotaAllowed | Failed
GetQuotaReply = QuotaStatus | Failed
GetUsageReply = UsageReport | Failed
