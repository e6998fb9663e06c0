"""Preparing the platform: JetStream streams and consumers, and every actor's tables. Safe to run again."""

from __future__ import annotations

import asyncpg

from actors.catalog import ACTORS, create_actor
from actors.runtime.bus import provision
from actors.runtime.settings import Settings
from actors.runtime.storage import apply_migrations
from ops.operator import connect_as


async def migrate(admin: Settings, database_url: str) -> dict[str, list[str]]:
    """Provision JetStream (as the admin role) and apply each actor's pending migrations, owned by the
    actor's name; returns the migrations applied now, per actor (empty lists when all were applied)."""
    nc = await connect_as(admin, "bmms-migrate")
    try:
        await provision(nc.jetstream())
    finally:
        await nc.close()
    applied: dict[str, list[str]] = {}
    conn = await asyncpg.connect(database_url)
    try:
        for name in ACTORS:
            migrations = create_actor(name).migrations
            if migrations is not None:
                applied[name] = await apply_migrations(conn, name, migrations)
    finally:
        await conn.close()
    return applied
