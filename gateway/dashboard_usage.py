"""The usage page, `/dashboard/usage`: tool calls per day and per tool as charts, builds this month, and each quota
as a bar against its limit, for the organisation the page acts in (gateway.dashboard.page_principal).

Rendered on the server from the metering actor's answers (the same GET_USAGE and GET_QUOTA as `/v1/usage` and
`/v1/quota`): the charts are SVG drawn by the template from the geometry computed here, no chart library and no
script; each chart has a text alternative and its figures are in a table beside it.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency

from bus_schemas.registry import GET_QUOTA, GET_USAGE
from bus_schemas.usage import DayUsage, GetQuota, GetUsage, QuotaUsage, ToolUsage
from gateway.dashboard import dashboard_page, page_principal, to_sign_in
from gateway.problems import Problem
from gateway.services import EdgeServices
from gateway.usage import current_period

log = logging.getLogger("bmms.gateway.dashboard_usage")

CHART_WIDTH = 640
CHART_HEIGHT = 160
"""The per-day chart's drawing area (SVG user units; it scales to the page's width)."""
BAR_ROW = 28
"""Height of one horizontal bar's row (per tool)."""
LABEL_WIDTH = 200
"""Room for a tool's name left of its bar; its count goes right of it, within CHART_WIDTH."""

QUOTA_NAMES = {
    "tool_calls_per_month": "Tool calls this month",
    "builds_per_month": "Builds this month",
    "running_servers": "Running servers",
}


@dataclass(frozen=True)
class Bar:
    """One bar: where it is drawn, and what it says."""

    label: str
    value: int
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True)
class QuotaBar:
    """One quota against its limit: the filled part's width on a 0..100 scale."""

    name: str
    used: int
    limit: int | None
    exceeded: bool
    filled: float
    title: str


def day_bars(period: str, days: tuple[DayUsage, ...]) -> list[Bar]:
    """One vertical bar per day of the month (empty days too), heights scaled to the busiest day."""
    year, month = (int(part) for part in period.split("-"))
    count = calendar.monthrange(year, month)[1]
    calls = {d.day: d.calls for d in days}
    peak = max([1, *calls.values()])
    slot = CHART_WIDTH / count
    bars = []
    for n in range(1, count + 1):
        day = f"{period}-{n:02d}"
        value = calls.get(day, 0)
        height = CHART_HEIGHT * value / peak
        bars.append(Bar(label=str(n), value=value, x=round((n - 1) * slot + slot * 0.15, 2),
                        y=round(CHART_HEIGHT - height, 2), width=round(slot * 0.7, 2), height=round(height, 2),
                        title=f"{day}: {value} call{'s' if value != 1 else ''}"))
    return bars


def tool_bars(tools: tuple[ToolUsage, ...]) -> list[Bar]:
    """One horizontal bar per tool (most called first) right of its name, widths scaled to the most called."""
    ranked = sorted(tools, key=lambda t: (-t.calls, t.tool))
    peak = max([1, *(t.calls for t in ranked)])
    room = CHART_WIDTH - LABEL_WIDTH - 60  # the count is written after the bar
    return [Bar(label=t.tool if len(t.tool) <= 26 else t.tool[:25] + "…", value=t.calls, x=LABEL_WIDTH,
                y=i * BAR_ROW + BAR_ROW * 0.2, width=round(max(1.0, room * t.calls / peak), 2), height=BAR_ROW * 0.6,
                title=f"{t.tool} ({t.server_id}): {t.calls} calls, {t.errors} errors")
            for i, t in enumerate(ranked)]


def quota_bars(quotas: tuple[QuotaUsage, ...]) -> list[QuotaBar]:
    """Each quota's use against its limit (unlimited: an empty bar saying so)."""
    bars = []
    for quota in quotas:
        name = QUOTA_NAMES.get(quota.quota, quota.quota.replace("_", " "))
        filled = 0.0 if not quota.limit else min(100.0, round(100 * quota.used / quota.limit, 2))
        limit = "unlimited" if quota.limit is None else f"of {quota.limit}"
        bars.append(QuotaBar(name=name, used=quota.used, limit=quota.limit, exceeded=quota.exceeded, filled=filled,
                             title=f"{name}: {quota.used} {limit}" + (" (used up)" if quota.exceeded else "")))
    return bars


class UsagePageController(Controller):
    """The usage page."""

    path = "/dashboard/usage"
    include_in_schema = False

    @get("/", summary="Usage")
    async def page(self, request: Request[Any, Any, Any], services: NamedDependency[EdgeServices]) -> Response[Any]:
        """This month's calls per day and per tool, builds, and the quotas, for the organisation the page acts in."""
        principal = await page_principal(request, services)
        if principal is None:
            return to_sign_in(request)
        period = current_period()
        error = ""
        try:
            usage = await services.bus.ask(GET_USAGE, GetUsage(org_id=principal.org_id, period=period))
            quota = await services.bus.ask(GET_QUOTA, GetQuota(org_id=principal.org_id))
        except Problem as problem:
            log.info("usage page without figures: %s", problem.detail)
            usage, quota, error = None, None, problem.detail
        month = dt.datetime.strptime(period, "%Y-%m").strftime("%B %Y")
        return dashboard_page(
            "usage.html", principal, title="Usage", active="usage", month=month, error=error, usage=usage,
            plan=quota.plan if quota else "", days=day_bars(period, usage.by_day) if usage else [],
            tools=tool_bars(usage.by_tool) if usage else [], quotas=quota_bars(quota.quotas) if quota else [],
            chart_width=CHART_WIDTH, chart_height=CHART_HEIGHT, bar_row=BAR_ROW,
        )
