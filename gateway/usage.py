"""/v1/usage and /v1/quota: the caller's organisation's usage and quotas, for the dashboard.

The metering actor answers both; the organisation is always the caller's (from the principal), so no
parameter can reach another organisation's figures.

- `GET /v1/usage?period=YYYY-MM&server=<server id>` -> the month's tool calls (in all, per server, per tool,
  per day), builds, model tokens and step timings; `period` defaults to the current UTC month, `server`
  limits the tool-call figures to one server.
- `GET /v1/quota` -> the plan and, per quota, its limit (null: unlimited), use, period and whether it is
  exceeded. Over a quota, refusals elsewhere are `429` problems of type `/problems/quota_exceeded` whose
  detail names the quota, its limit, the use and the period.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter

from bus_schemas.base import SUBJECT_TOKEN
from bus_schemas.identity import Principal
from bus_schemas.registry import GET_QUOTA, GET_USAGE
from bus_schemas.usage import (
    PERIOD_PATTERN,
    DayUsage,
    GetQuota,
    GetUsage,
    QuotaUsage,
    ServerUsage,
    StepUsage,
    ToolUsage,
)
from gateway.services import EdgeServices, provide_principal


class UsageView(msgspec.Struct, frozen=True, kw_only=True):
    """An organisation's usage in one month."""

    period: str
    """The UTC month, `YYYY-MM`."""
    server_id: str | None
    """The server the tool-call figures are limited to, if one was asked for."""
    tool_calls: int
    tool_errors: int
    duration_ms: float
    """Tool-call time, summed."""
    bytes_out: int
    by_server: tuple[ServerUsage, ...]
    by_tool: tuple[ToolUsage, ...]
    by_day: tuple[DayUsage, ...]
    builds: int
    """Builds requested (those refused for the build quota do not count)."""
    model_input_tokens: int
    model_output_tokens: int
    build_steps: tuple[StepUsage, ...]
    """Finished runs of each pipeline step and the time they took."""


class QuotaView(msgspec.Struct, frozen=True, kw_only=True):
    """The organisation's plan and each quota's use."""

    plan: str
    quotas: tuple[QuotaUsage, ...]


def current_period() -> str:
    """This UTC month as `YYYY-MM`."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m")


class UsageController(Controller):
    """Usage and quotas of the caller's organisation."""

    path = "/v1"
    tags = ["usage"]
    dependencies = {"principal": Provide(provide_principal)}

    @get("/usage", summary="Usage in a month")
    async def usage(
        self,
        principal: NamedDependency[Principal],
        services: NamedDependency[EdgeServices],
        period: Annotated[
            str | None, QueryParameter(pattern=PERIOD_PATTERN, description="The UTC month, YYYY-MM (default: now).")
        ] = None,
        server: Annotated[
            str | None, QueryParameter(pattern=SUBJECT_TOKEN, description="Only this server's tool calls.")
        ] = None,
    ) -> UsageView:
        """Tool calls per server, tool and day, builds, model tokens and step timings of one month."""
        request = GetUsage(org_id=principal.org_id, period=period or current_period(), server_id=server)
        report = await services.bus.ask(GET_USAGE, request)
        return UsageView(
            period=report.period, server_id=report.server_id, tool_calls=report.tool_calls,
            tool_errors=report.tool_errors, duration_ms=report.duration_ms, bytes_out=report.bytes_out,
            by_server=report.by_server, by_tool=report.by_tool, by_day=report.by_day, builds=report.builds,
            model_input_tokens=report.model_input_tokens, model_output_tokens=report.model_output_tokens,
            build_steps=report.build_steps,
        )

    @get("/quota", summary="Plan and quotas")
    async def quota(self, principal: NamedDependency[Principal], services: NamedDependency[EdgeServices]) -> QuotaView:
        """The plan and, per quota, its limit, use, period and whether it is exceeded."""
        status = await services.bus.ask(GET_QUOTA, GetQuota(org_id=principal.org_id))
        return QuotaView(plan=status.plan, quotas=status.quotas)
