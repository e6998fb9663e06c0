"""The build registry's SQL: the `builds` table, one row per build, its status projected from the build events."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import get_args

import asyncpg

from bus_schemas.builds import BuildStatus, BuildSummary

MILESTONES: frozenset[str] = frozenset(get_args(BuildStatus))
"""Event kinds that move a build's status; the others (step, log) only advance its last sequence."""


def _rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def insert_build(
    conn: asyncpg.Connection,
    *,
    build_id: str,
    org_id: str,
    name: str,
    requested_by: str,
    source_json: str,
    idempotency_key: str | None,
    accept_by: dt.datetime | None = None,
) -> tuple[str, int | None] | None:
    """Record a build, or find the one already recorded under the same idempotency key or build id (the same
    request sent again).

    Returns the build id and the stream sequence of its `requested` event if that was published; None when
    nothing was recorded before and `accept_by` has passed (the database's clock decides), so nothing is.
    """
    row = await conn.fetchrow(
        """
        INSERT INTO builds (build_id, org_id, name, requested_by, source, idempotency_key)
        SELECT $1, $2, $3, $4, $5::jsonb, $6 WHERE $7::timestamptz IS NULL OR clock_timestamp() < $7
        ON CONFLICT DO NOTHING
        RETURNING build_id, requested_seq
        """,
        build_id, org_id, name, requested_by, source_json, idempotency_key, accept_by,
    )
    if row is None:
        # recorded before (or by a concurrent request, whose transaction this one waited for), or too late
        row = await conn.fetchrow(
            """
            SELECT build_id, requested_seq FROM builds
            WHERE org_id = $2 AND (idempotency_key = $3 OR build_id = $1)
            ORDER BY idempotency_key = $3 DESC NULLS LAST LIMIT 1
            """,
            build_id, org_id, idempotency_key,
        )
    return None if row is None else (str(row["build_id"]), row["requested_seq"])


async def mark_requested(conn: asyncpg.Connection, build_id: str, seq: int) -> None:
    """Remember the sequence of the build's published `requested` event."""
    await conn.execute("UPDATE builds SET requested_seq = $2 WHERE build_id = $1", build_id, seq)


@dataclass(frozen=True)
class Projected:
    """A build event as the registry projects it."""

    build_id: str
    kind: str
    seq: int
    failure: str | None = None
    server_id: str | None = None
    """Of a `deployed` event: the server the build runs as."""
    url: str | None = None
    """Of a `deployed` event: the server's URL."""


def _keep_newest(table: dict[str, Projected], event: Projected) -> None:
    kept = table.get(event.build_id)
    if kept is None or event.seq > kept.seq:
        table[event.build_id] = event


def fold_events(events: Iterable[Projected]) -> list[Projected]:
    """The events of a batch that change the registry, in an order that applies them: per build, its newest
    milestone (it sets the status), then its newest event when that is newer (it only advances `last_seq`).
    Everything older is superseded: applying it too would change nothing."""
    milestone: dict[str, Projected] = {}
    newest: dict[str, Projected] = {}
    for event in events:
        if event.kind in MILESTONES:
            _keep_newest(milestone, event)
        _keep_newest(newest, event)
    folded = list(milestone.values())
    folded += [e for build_id, e in newest.items() if build_id not in milestone or e.seq > milestone[build_id].seq]
    return folded


async def apply_events(conn: asyncpg.Connection, events: Iterable[Projected]) -> None:
    """Project a batch of build events (`fold_events`); safe under redelivery and out-of-order handling,
    each change being guarded by sequence. Run it in a transaction, so a batch commits once."""
    await conn.executemany(_APPLY_EVENT, [(e.build_id, e.kind, e.kind in MILESTONES, e.seq, e.failure,
                                           e.server_id, e.url) for e in fold_events(events)])


_APPLY_EVENT = """
        -- one statement, so a reader never sees the new status with an older `last_seq`
        UPDATE builds SET
            status = CASE WHEN $3 AND status_seq < $4 THEN $2 ELSE status END,
            failure = CASE WHEN $3 AND status_seq < $4 THEN $5 ELSE failure END,
            server_id = CASE WHEN $3 AND status_seq < $4 AND $6::text IS NOT NULL THEN $6 ELSE server_id END,
            url = CASE WHEN $3 AND status_seq < $4 AND $7::text IS NOT NULL THEN $7 ELSE url END,
            status_seq = CASE WHEN $3 AND status_seq < $4 THEN $4 ELSE status_seq END,
            last_seq = GREATEST(last_seq, $4),
            updated_at = now()
        WHERE build_id = $1 AND (last_seq < $4 OR ($3 AND status_seq < $4))
        """


async def find_build(conn: asyncpg.Connection, org_id: str, build_id: str) -> BuildSummary | None:
    """One build of one organisation; None when absent or another organisation's."""
    row = await conn.fetchrow(
        """
        SELECT build_id, org_id, name, status, failure, last_seq, created_at, updated_at, server_id, url
        FROM builds WHERE build_id = $1 AND org_id = $2
        """,
        build_id, org_id,
    )
    if row is None:
        return None
    status: BuildStatus = row["status"]
    return BuildSummary(
        build_id=row["build_id"],
        org_id=row["org_id"],
        name=row["name"],
        status=status,
        created_at=_rfc3339(row["created_at"]),
        updated_at=_rfc3339(row["updated_at"]),
        last_seq=row["last_seq"],
        failure=row["failure"],
        server_id=row["server_id"],
        url=row["url"],
    )
