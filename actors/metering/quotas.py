"""Plans, periods and the quota arithmetic: what an organisation may use and whether it has used it up.

Monthly quotas (builds, tool calls) count in UTC calendar months and are exceeded once used up (the next
one would be refused); `running_servers` counts servers running now and is exceeded only when more run
than the plan allows (at the limit, none may be started, but nothing runs that should not).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from actors.runtime.settings import Settings
from bus_schemas.usage import OverQuota, QuotaName, QuotaUsage

DEFAULT_PLAN = "default"
"""Every organisation without another plan is on this one; its limits come from the settings."""

MONTHLY: frozenset[QuotaName] = frozenset({"builds_per_month", "tool_calls_per_month"})
QUOTAS: tuple[QuotaName, ...] = ("builds_per_month", "tool_calls_per_month", "running_servers")
NOW_PERIOD = "now"
"""The period of `running_servers`, which counts what runs at this moment."""


@dataclass(frozen=True)
class Plan:
    """A plan's limits; None is unlimited."""

    name: str
    builds_per_month: int | None
    tool_calls_per_month: int | None
    running_servers: int | None

    def limit(self, quota: QuotaName) -> int | None:
        """The plan's limit of one quota."""
        value: int | None = getattr(self, quota)
        return value


def _limit(value: int) -> int | None:
    return None if value < 0 else value


def default_plan(settings: Settings) -> Plan:
    """The `default` plan, from the BMMS_QUOTA_* settings (negative: unlimited)."""
    return Plan(
        name=DEFAULT_PLAN,
        builds_per_month=_limit(settings.quota_builds_per_month),
        tool_calls_per_month=_limit(settings.quota_tool_calls_per_month),
        running_servers=_limit(settings.quota_running_servers),
    )


def month_of(moment: dt.datetime) -> dt.date:
    """The first day of the UTC month `moment` falls in."""
    return moment.astimezone(dt.UTC).date().replace(day=1)


def period_name(month: dt.date) -> str:
    """`YYYY-MM` of a month."""
    return f"{month.year:04d}-{month.month:02d}"


def parse_period(period: str) -> dt.date:
    """The first day of a `YYYY-MM` period."""
    year, month = period.split("-")
    return dt.date(int(year), int(month), 1)


def seconds_until_next_month(moment: dt.datetime) -> int:
    """Seconds from `moment` until the next UTC month begins (when monthly quotas start over)."""
    month = month_of(moment)
    following = dt.datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=dt.UTC)
    return max(1, int((following - moment).total_seconds()))


@dataclass(frozen=True)
class Usage:
    """What an organisation has used of each quota, in `month` (and now, for running servers)."""

    org_id: str
    plan: Plan
    month: dt.date
    builds: int
    tool_calls: int
    running_servers: int

    def used(self, quota: QuotaName) -> int:
        """The use of one quota."""
        return {"builds_per_month": self.builds, "tool_calls_per_month": self.tool_calls,
                "running_servers": self.running_servers}[quota]

    def period(self, quota: QuotaName) -> str:
        """The period one quota counts in."""
        return period_name(self.month) if quota in MONTHLY else NOW_PERIOD

    def quota(self, quota: QuotaName) -> QuotaUsage:
        """One quota's limit, use and whether it is exceeded."""
        limit, used = self.plan.limit(quota), self.used(quota)
        return QuotaUsage(quota=quota, limit=limit, used=used, exceeded=is_exceeded(quota, limit, used),
                          period=self.period(quota))

    def exceeded(self) -> tuple[OverQuota, ...]:
        """The exceeded quotas, as the QUOTAS bucket carries them."""
        return tuple(
            OverQuota(quota=q.quota, limit=q.limit, used=q.used, period=q.period)
            for q in (self.quota(name) for name in QUOTAS)
            if q.exceeded and q.limit is not None
        )


def is_exceeded(quota: QuotaName, limit: int | None, used: int) -> bool:
    """Monthly quotas: used up. Running servers: more run than allowed."""
    if limit is None:
        return False
    return used >= limit if quota in MONTHLY else used > limit


def state_key(exceeded: tuple[OverQuota, ...]) -> str:
    """What identifies a quota state, leaving out `used` (which keeps moving while it holds): the key
    metering stores to know whether the QUOTAS bucket needs a new value."""
    return " ".join(f"{o.quota}:{o.limit}:{o.period}" for o in exceeded)


def refusal_detail(quota: QuotaName, plan: Plan, used: int, adding: int, period: str) -> str:
    """The sentence that says which quota refused, with its limit, use and period."""
    limit = plan.limit(quota)
    where = f"in {period}" if period != NOW_PERIOD else "now"
    wanted = f"; {adding} more were asked for" if adding != 1 else ""
    return (
        f"quota {quota} exceeded: {used} of {limit} used {where} on plan {plan.name}{wanted}"
        + (" (it starts over next month)" if quota in MONTHLY else "")
    )
