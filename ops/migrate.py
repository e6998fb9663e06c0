"""Preparing the platform: JetStream streams and consumers, and every actor's tables. Safe to run again.

Streams, key-value buckets and object stores get the replication the settings ask for (`BMMS_NATS_REPLICAS`,
`BMMS_NATS_PLACEMENT_*`), existing ones included: running it again with another replica count scales them
(and their consumers) in place."""

from __future__ import annotations

import asyncpg

from actors.catalog import ACTORS, create_actor
from actors.runtime.bus import ProvisionError, Replication, provision
from actors.runtime.settings import Settings
from actors.runtime.storage import apply_migrations
from ops.operator import OperatorError, connect_as


async def migrate(admin: Settings, database_url: str) -> dict[str, list[str]]:
    """Provision JetStream (as the admin role) and apply each actor's pending migrations, owned by the
    actor's name; returns the migrations applied now, per actor (empty lists when all were applied).
    OperatorError when JetStream cannot keep the replicas asked for."""
    nc = await connect_as(admin, "bmms-migrate")
    try:
        await provision(nc.jetstream(), Replication.of(admin))
    except ProvisionError as exc:
        raise OperatorError(str(exc)) from None
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
