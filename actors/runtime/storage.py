"""PostgreSQL access for actors: a pool per actor and its versioned SQL migrations."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import asyncpg

log = logging.getLogger("bmms.storage")

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    owner      text        NOT NULL,
    version    text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, version)
)
"""


def migration_files(directory: Path) -> list[Path]:
    """An actor's migrations in the order they apply: `NNN_name.sql`, sorted by name."""
    return sorted(p for p in directory.glob("*.sql") if p.name[:3].isdigit())


async def apply_migrations(conn: asyncpg.Connection, owner: str, directory: Path) -> list[str]:
    """Apply the not yet applied migrations of one actor, each in its own transaction.

    An advisory lock keyed by the owner makes concurrent copies of an actor take turns; a migration
    whose file changed after it was applied is refused rather than silently skipped.
    """
    applied: list[str] = []
    lock_key = int.from_bytes(hashlib.sha256(owner.encode()).digest()[:8], "big", signed=True)
    await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
    try:
        await conn.execute(_LEDGER)
        done = {
            r["version"]: r["checksum"]
            for r in await conn.fetch("SELECT version, checksum FROM schema_migrations WHERE owner = $1", owner)
        }
        for path in migration_files(directory):
            sql = path.read_text()
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if path.stem in done:
                if done[path.stem] != checksum:
                    raise RuntimeError(f"migration {owner}/{path.name} changed after it was applied")
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (owner, version, checksum) VALUES ($1, $2, $3)",
                    owner,
                    path.stem,
                    checksum,
                )
            log.info("applied migration %s/%s", owner, path.name)
            applied.append(path.stem)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
    return applied


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release hook that skips asyncpg's default `RESET ALL`/`UNLISTEN *` round trip: actors never
    change session state (no SET, LISTEN or advisory locks held across a release), and that round trip
    was a sixth of an RPC handler's time."""


async def open_pool(dsn: str, owner: str, migrations: Path | None, max_size: int) -> asyncpg.Pool:
    """Open an actor's pool, applying its migrations first."""
    pool: asyncpg.Pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, reset=_keep_session)
    if migrations is not None:
        async with pool.acquire() as conn:
            await apply_migrations(conn, owner, migrations)
    return pool
