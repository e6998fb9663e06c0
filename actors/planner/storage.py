"""The plan step's SQL: the `build_plans` table, the plan each build got (the registry's is `registry_storage`)."""

from __future__ import annotations

import asyncpg


async def find_plan(conn: asyncpg.Connection, build_id: str) -> tuple[str, int] | None:
    """The plan hash and tool count recorded for a build, if it was planned."""
    row = await conn.fetchrow("SELECT plan_hash, tool_count FROM build_plans WHERE build_id = $1", build_id)
    return None if row is None else (str(row["plan_hash"]), int(row["tool_count"]))


async def record_plan(conn: asyncpg.Connection, build_id: str, plan_hash: str, tool_count: int) -> tuple[str, int]:
    """Record a build's plan unless one is recorded already; returns the one that stands (first wins)."""
    await conn.execute(
        "INSERT INTO build_plans (build_id, plan_hash, tool_count) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        build_id, plan_hash, tool_count,
    )
    found = await find_plan(conn, build_id)
    assert found is not None
    return found
