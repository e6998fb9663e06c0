"""The metering actor's tables: server ownership, counted tool calls and their aggregates, builds, plans and
the quota state last written to the QUOTAS bucket. Whole batches go in with one statement per table."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from actors.metering.quotas import DEFAULT_PLAN, Plan, Usage
from bus_schemas.usage import DayUsage, ServerUsage, StepUsage, ToolUsage, UsageReport


@dataclass(frozen=True)
class ToolCall:
    """A tool call attributed to the organisation that owns its server (by metering's own record)."""

    event_id: str
    org_id: str
    server_id: str
    tool: str
    day: dt.date
    error: bool
    duration_ms: float
    bytes_out: int


@dataclass(frozen=True)
class Rejection:
    """A usage event whose claimed organisation is not its server's."""

    event_id: str
    server_id: str
    claimed_org: str
    recorded_org: str


# --- servers ---


async def server_owners(conn: asyncpg.Connection, server_ids: Iterable[str]) -> dict[str, str]:
    """The recorded owner of each of these servers that metering knows."""
    rows = await conn.fetch(
        "SELECT server_id, org_id FROM metering_servers WHERE server_id = ANY($1::text[])", list(server_ids)
    )
    return {r["server_id"]: r["org_id"] for r in rows}


async def record_server(
    conn: asyncpg.Connection, server_id: str, org_id: str, state: str, seq: int, changed_at: dt.datetime
) -> str:
    """Record a server's state from its `changed` event (a later event wins; ownership never moves).
    Returns the organisation on record, which differs from `org_id` when the event claims another's server."""
    owner: str | None = await conn.fetchval(
        """
        INSERT INTO metering_servers AS s (server_id, org_id, state, state_seq, changed_at)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (server_id) DO UPDATE
            SET state = EXCLUDED.state, state_seq = EXCLUDED.state_seq, changed_at = EXCLUDED.changed_at
            WHERE s.state_seq < EXCLUDED.state_seq AND s.org_id = EXCLUDED.org_id
        RETURNING org_id
        """,
        server_id, org_id, state, seq, changed_at,
    )
    if owner is None:  # nothing changed: an older event, or another organisation's server
        owner = await conn.fetchval("SELECT org_id FROM metering_servers WHERE server_id = $1", server_id)
    assert owner is not None
    return owner


# --- tool calls ---


async def record_tool_calls(conn: asyncpg.Connection, calls: list[ToolCall]) -> set[str]:
    """Count each call not counted before (by event id) into the daily and monthly aggregates, in the
    caller's transaction; returns the organisations whose counts moved."""
    unique = list({c.event_id: c for c in calls}.values())
    if not unique:
        return set()
    fresh = {
        r["event_id"]
        for r in await conn.fetch(
            """
            INSERT INTO metering_tool_calls_seen (event_id, day)
            SELECT * FROM unnest($1::text[], $2::date[])
            ON CONFLICT (event_id) DO NOTHING
            RETURNING event_id
            """,
            [c.event_id for c in unique], [c.day for c in unique],
        )
    }
    daily: dict[tuple[str, dt.date, str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0, 0])
    monthly: dict[tuple[str, dt.date], int] = defaultdict(int)
    for c in unique:
        if c.event_id not in fresh:
            continue
        row = daily[(c.org_id, c.day, c.server_id, c.tool)]
        row[0] += 1
        row[1] += int(c.error)
        row[2] += c.duration_ms
        row[3] += c.bytes_out
        monthly[(c.org_id, c.day.replace(day=1))] += 1
    if not monthly:
        return set()
    # Sorted, so concurrent batches (of several copies) lock the aggregate rows in one order: no deadlock.
    keys = sorted(daily)
    await conn.execute(
        """
        INSERT INTO metering_tool_usage_daily AS d (org_id, day, server_id, tool, calls, errors, duration_ms, bytes_out)
        SELECT * FROM unnest($1::text[], $2::date[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                             $7::float8[], $8::bigint[])
        ON CONFLICT (org_id, day, server_id, tool) DO UPDATE SET
            calls = d.calls + EXCLUDED.calls,
            errors = d.errors + EXCLUDED.errors,
            duration_ms = d.duration_ms + EXCLUDED.duration_ms,
            bytes_out = d.bytes_out + EXCLUDED.bytes_out
        """,
        [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [k[3] for k in keys],
        [int(daily[k][0]) for k in keys], [int(daily[k][1]) for k in keys], [daily[k][2] for k in keys],
        [int(daily[k][3]) for k in keys],
    )
    months = sorted(monthly)
    await conn.execute(
        """
        INSERT INTO metering_tool_calls_monthly AS m (org_id, month, calls)
        SELECT * FROM unnest($1::text[], $2::date[], $3::bigint[])
        ON CONFLICT (org_id, month) DO UPDATE SET calls = m.calls + EXCLUDED.calls
        """,
        [k[0] for k in months], [k[1] for k in months], [monthly[k] for k in months],
    )
    return {org for org, _ in months}


async def record_rejections(conn: asyncpg.Connection, rejections: list[Rejection]) -> int:
    """Keep rejected events for the operator (each once); returns how many were new."""
    if not rejections:
        return 0
    rows = await conn.fetch(
        """
        INSERT INTO metering_rejected (event_id, server_id, claimed_org, recorded_org)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id
        """,
        [r.event_id for r in rejections], [r.server_id for r in rejections],
        [r.claimed_org for r in rejections], [r.recorded_org for r in rejections],
    )
    return len(rows)


# --- builds ---


async def record_build_requested(conn: asyncpg.Connection, build_id: str, org_id: str, month: dt.date,
                                 seq: int) -> bool:
    """Count a requested build once; True if it was new."""
    inserted = await conn.fetchval(
        """
        INSERT INTO metering_builds (build_id, org_id, month, requested_seq) VALUES ($1, $2, $3, $4)
        ON CONFLICT (build_id) DO NOTHING RETURNING true
        """,
        build_id, org_id, month, seq,
    )
    return bool(inserted)


async def record_build_refused(conn: asyncpg.Connection, build_id: str) -> None:
    """A build the planner refused for the build quota: it stops counting against the quota."""
    await conn.execute("INSERT INTO metering_builds_refused (build_id) VALUES ($1) ON CONFLICT DO NOTHING", build_id)


async def record_step(conn: asyncpg.Connection, build_id: str, org_id: str, step: str, state: str,
                      at: dt.datetime) -> None:
    """When a build's step started or finished (in any order of arrival; the first record of each wins)."""
    started, finished = (at, None) if state == "started" else (None, at)
    await conn.execute(
        """
        INSERT INTO metering_build_steps AS s (build_id, step, org_id, started_at, finished_at)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (build_id, step) DO UPDATE SET
            started_at = COALESCE(s.started_at, EXCLUDED.started_at),
            finished_at = COALESCE(s.finished_at, EXCLUDED.finished_at)
        """,
        build_id, step, org_id, started, finished,
    )


async def record_build_tokens(conn: asyncpg.Connection, build_id: str, org_id: str, month: dt.date,
                              input_tokens: int, output_tokens: int) -> None:
    """The model tokens a build's plan cost (set once: a redelivered event does not add them again)."""
    await conn.execute(
        """
        INSERT INTO metering_build_tokens (build_id, org_id, month, input_tokens, output_tokens)
        VALUES ($1, $2, $3, $4, $5) ON CONFLICT (build_id) DO NOTHING
        """,
        build_id, org_id, month, input_tokens, output_tokens,
    )


_COUNTED_BUILDS = """
    SELECT count(*) FROM metering_builds b
    WHERE b.org_id = $1 AND b.month = $2
      AND NOT EXISTS (SELECT 1 FROM metering_builds_refused r WHERE r.build_id = b.build_id)
"""


async def builds_before(conn: asyncpg.Connection, org_id: str, month: dt.date, build_id: str) -> tuple[int, dt.date]:
    """How many counted builds of the organisation were requested before this one, in its month (a build
    metering has not seen yet comes after every build it has), and that month."""
    row = await conn.fetchrow("SELECT month, requested_seq FROM metering_builds WHERE build_id = $1", build_id)
    if row is None:
        return int(await conn.fetchval(_COUNTED_BUILDS, org_id, month)), month
    before = await conn.fetchval(_COUNTED_BUILDS + " AND b.requested_seq < $3", org_id, row["month"],
                                 row["requested_seq"])
    return int(before), row["month"]


async def running_servers(conn: asyncpg.Connection, org_id: str, leaving_out: str | None) -> int:
    """How many of the organisation's servers run, not counting `leaving_out`."""
    count = await conn.fetchval(
        "SELECT count(*) FROM metering_servers WHERE org_id = $1 AND state = 'running' "
        "AND server_id IS DISTINCT FROM $2",
        org_id, leaving_out,
    )
    return int(count)


# --- plans and quotas ---


def _plan(row: asyncpg.Record, default: Plan) -> Plan:
    if row["plan"] is None:
        return default
    return Plan(name=row["plan"], builds_per_month=row["builds_per_month"],
                tool_calls_per_month=row["tool_calls_per_month"], running_servers=row["running_servers"])


async def usage_of(conn: asyncpg.Connection, org_ids: list[str], month: dt.date, default: Plan) -> dict[str, Usage]:
    """Each organisation's plan and use of every quota, in one statement."""
    rows = await conn.fetch(
        """
        SELECT o.org_id, op.plan, p.builds_per_month, p.tool_calls_per_month, p.running_servers,
               COALESCE(m.calls, 0) AS tool_calls,
               (SELECT count(*) FROM metering_builds b
                 WHERE b.org_id = o.org_id AND b.month = $2
                   AND NOT EXISTS (SELECT 1 FROM metering_builds_refused r WHERE r.build_id = b.build_id)) AS builds,
               (SELECT count(*) FROM metering_servers s
                 WHERE s.org_id = o.org_id AND s.state = 'running') AS running
        FROM unnest($1::text[]) AS o(org_id)
        LEFT JOIN metering_org_plans op ON op.org_id = o.org_id
        LEFT JOIN metering_plans p ON p.plan = op.plan
        LEFT JOIN metering_tool_calls_monthly m ON m.org_id = o.org_id AND m.month = $2
        """,
        org_ids, month,
    )
    return {
        r["org_id"]: Usage(org_id=r["org_id"], plan=_plan(r, default), month=month, builds=int(r["builds"]),
                           tool_calls=int(r["tool_calls"]), running_servers=int(r["running"]))
        for r in rows
    }


async def lock_quota_states(conn: asyncpg.Connection, org_ids: list[str]) -> dict[str, str]:
    """Lock the organisations' quota-state rows (creating missing ones) in one order, for the caller's
    transaction, and return the state each says the QUOTAS bucket holds."""
    ordered = sorted(set(org_ids))
    await conn.execute(
        "INSERT INTO metering_quota_states (org_id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", ordered
    )
    rows = await conn.fetch(
        "SELECT org_id, exceeded FROM metering_quota_states WHERE org_id = ANY($1::text[]) ORDER BY org_id FOR UPDATE",
        ordered,
    )
    return {r["org_id"]: r["exceeded"] for r in rows}


async def save_quota_state(conn: asyncpg.Connection, org_id: str, key: str) -> None:
    """Remember what the QUOTAS bucket now holds for an organisation."""
    await conn.execute(
        "UPDATE metering_quota_states SET exceeded = $2, updated_at = now() WHERE org_id = $1", org_id, key
    )


async def orgs_over_quota(conn: asyncpg.Connection) -> list[str]:
    """Organisations the QUOTAS bucket says are over a quota."""
    return [r["org_id"] for r in await conn.fetch("SELECT org_id FROM metering_quota_states WHERE exceeded <> ''")]


async def define_plan(conn: asyncpg.Connection, plan: Plan) -> None:
    """Create or change a plan's limits (not `default`, which the settings define)."""
    if plan.name == DEFAULT_PLAN:
        raise ValueError("the default plan's limits come from the BMMS_QUOTA_* settings")
    await conn.execute(
        """
        INSERT INTO metering_plans (plan, builds_per_month, tool_calls_per_month, running_servers)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (plan) DO UPDATE SET builds_per_month = EXCLUDED.builds_per_month,
            tool_calls_per_month = EXCLUDED.tool_calls_per_month, running_servers = EXCLUDED.running_servers,
            updated_at = now()
        """,
        plan.name, plan.builds_per_month, plan.tool_calls_per_month, plan.running_servers,
    )


async def assign_plan(conn: asyncpg.Connection, org_id: str, plan: str, source: str) -> None:
    """Put an organisation on a plan (`default` removes its assignment)."""
    if plan == DEFAULT_PLAN:
        await conn.execute("DELETE FROM metering_org_plans WHERE org_id = $1", org_id)
        return
    await conn.execute(
        """
        INSERT INTO metering_org_plans (org_id, plan, source) VALUES ($1, $2, $3)
        ON CONFLICT (org_id) DO UPDATE SET plan = EXCLUDED.plan, source = EXCLUDED.source, assigned_at = now()
        """,
        org_id, plan, source,
    )


# --- reports ---


async def usage_report(conn: asyncpg.Connection, org_id: str, month: dt.date, server_id: str | None,
                       period: str) -> UsageReport:
    """One organisation's usage in one month; every query is bounded to that organisation."""
    following = (month + dt.timedelta(days=32)).replace(day=1)
    tools = await conn.fetch(
        """
        SELECT server_id, tool, sum(calls) AS calls, sum(errors) AS errors, sum(duration_ms) AS duration_ms,
               sum(bytes_out) AS bytes_out
        FROM metering_tool_usage_daily
        WHERE org_id = $1 AND day >= $2 AND day < $3 AND ($4::text IS NULL OR server_id = $4)
        GROUP BY server_id, tool ORDER BY server_id, tool
        """,
        org_id, month, following, server_id,
    )
    days = await conn.fetch(
        """
        SELECT day, sum(calls) AS calls, sum(errors) AS errors FROM metering_tool_usage_daily
        WHERE org_id = $1 AND day >= $2 AND day < $3 AND ($4::text IS NULL OR server_id = $4)
        GROUP BY day ORDER BY day
        """,
        org_id, month, following, server_id,
    )
    today = await conn.fetch(
        """
        SELECT server_id, sum(calls) AS calls FROM metering_tool_usage_daily
        WHERE org_id = $1 AND day = $2 AND ($3::text IS NULL OR server_id = $3) GROUP BY server_id
        """,
        org_id, dt.datetime.now(dt.UTC).date(), server_id,
    )
    calls_today = {r["server_id"]: int(r["calls"]) for r in today}
    builds = await conn.fetchval(_COUNTED_BUILDS, org_id, month)
    tokens = await conn.fetchrow(
        "SELECT COALESCE(sum(input_tokens), 0) AS i, COALESCE(sum(output_tokens), 0) AS o "
        "FROM metering_build_tokens WHERE org_id = $1 AND month = $2",
        org_id, month,
    )
    assert tokens is not None
    steps = await conn.fetch(
        """
        SELECT step, count(*) AS runs, sum(extract(epoch FROM finished_at - started_at) * 1000) AS duration_ms
        FROM metering_build_steps
        WHERE org_id = $1 AND finished_at >= $2 AND finished_at < $3 AND started_at IS NOT NULL
        GROUP BY step ORDER BY step
        """,
        org_id, month, following,
    )
    by_tool = tuple(
        ToolUsage(server_id=r["server_id"], tool=r["tool"], calls=int(r["calls"]), errors=int(r["errors"]),
                  duration_ms=float(r["duration_ms"]), bytes_out=int(r["bytes_out"]))
        for r in tools
    )
    servers: dict[str, list[float]] = {}
    for t in by_tool:
        total = servers.setdefault(t.server_id, [0, 0, 0.0, 0])
        total[0] += t.calls
        total[1] += t.errors
        total[2] += t.duration_ms
        total[3] += t.bytes_out
    by_server = tuple(
        ServerUsage(server_id=s, calls=int(v[0]), errors=int(v[1]), duration_ms=v[2], bytes_out=int(v[3]),
                    calls_today=calls_today.get(s, 0))
        for s, v in servers.items()
    )
    return UsageReport(
        org_id=org_id,
        period=period,
        server_id=server_id,
        tool_calls=sum(t.calls for t in by_tool),
        tool_errors=sum(t.errors for t in by_tool),
        duration_ms=sum(t.duration_ms for t in by_tool),
        bytes_out=sum(t.bytes_out for t in by_tool),
        by_server=by_server,
        by_tool=by_tool,
        by_day=tuple(DayUsage(day=r["day"].isoformat(), calls=int(r["calls"]), errors=int(r["errors"]))
                     for r in days),
        builds=int(builds),
        model_input_tokens=int(tokens["i"]),
        model_output_tokens=int(tokens["o"]),
        build_steps=tuple(StepUsage(step=r["step"], runs=int(r["runs"]), duration_ms=float(r["duration_ms"] or 0))
                          for r in steps),
    )


async def billable_quantities(conn: asyncpg.Connection, month: dt.date) -> list[asyncpg.Record]:
    """Every organisation's billable quantity of each meter in a month, from the tables the quotas count: rows
    of (org_id, meter, quantity), ordered by organisation and meter (billing reads them as `MeteredUsage`)."""
    following = (month + dt.timedelta(days=32)).replace(day=1)
    rows: list[asyncpg.Record] = await conn.fetch(
        """
        SELECT org_id, 'tool_calls' AS meter, sum(calls) AS quantity FROM metering_tool_usage_daily
         WHERE day >= $1 AND day < $2 GROUP BY org_id
        UNION ALL
        SELECT org_id, 'builds', count(*) FROM metering_builds b
         WHERE month = $1 AND NOT EXISTS (SELECT 1 FROM metering_builds_refused r WHERE r.build_id = b.build_id)
         GROUP BY org_id
        UNION ALL
        SELECT org_id, 'model_input_tokens', sum(input_tokens) FROM metering_build_tokens
         WHERE month = $1 GROUP BY org_id
        UNION ALL
        SELECT org_id, 'model_output_tokens', sum(output_tokens) FROM metering_build_tokens
         WHERE month = $1 GROUP BY org_id
        ORDER BY 1, 2
        """,
        month, following,
    )
    return rows
