"""The deployer's SQL: servers (desired state), their versions, their secrets, the secrets staged for builds, and
the advisory locks that keep copies of the deployer from acting on one server at once. Only the deployer reads
these tables."""

from __future__ import annotations

import contextlib
import datetime as dt
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg
import msgspec

from actors.deployer.tool_diff import ServedTool, diff_tool_lists
from bus_schemas.servers import BackendName, Isolation, ServerInfo, ServerState, ServerVersion, ToolListDiff


@dataclass(frozen=True)
class Server:
    """A server row."""

    server_id: str
    org_id: str
    name: str
    url: str
    backend: BackendName
    desired: str
    state: ServerState
    version: int | None
    detail: str | None


@dataclass(frozen=True)
class Version:
    """A server version row."""

    server_id: str
    version: int
    build_id: str
    artifact_hash: str
    tools: tuple[str, ...]
    created_at: dt.datetime
    replaces: int | None = None
    """The version that served before it was deployed; None when none did."""
    tool_changes: ToolListDiff | None = None
    """What its tool list changed against `replaces`, known once both passed a health check."""


def _rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _server(row: asyncpg.Record) -> Server:
    return Server(
        server_id=row["server_id"], org_id=row["org_id"], name=row["name"], url=row["url"], backend=row["backend"],
        desired=row["desired"], state=row["state"], version=row["version"], detail=row["detail"],
    )


_tool_list = msgspec.json.Decoder(tuple[ServedTool, ...])
_tool_changes = msgspec.json.Decoder(ToolListDiff)


def _version(row: asyncpg.Record) -> Version:
    """A version row; its (large) tool list is not selected: only recording the next version's changes reads it."""
    changes = row["tool_changes"]
    return Version(
        server_id=row["server_id"], version=row["version"], build_id=row["build_id"],
        artifact_hash=row["artifact_hash"], tools=tuple(row["tools"]), created_at=row["created_at"],
        replaces=row["replaces"], tool_changes=None if changes is None else _tool_changes.decode(changes),
    )


async def create_server(
    conn: asyncpg.Connection, *, server_id: str, org_id: str, name: str, url: str, backend: BackendName
) -> Server:
    """The server, created in state `deploying` unless it exists (a redelivered build finds its own)."""
    await conn.execute(
        """
        INSERT INTO servers (server_id, org_id, name, url, backend, desired, state)
        VALUES ($1, $2, $3, $4, $5, 'running', 'deploying') ON CONFLICT (server_id) DO NOTHING
        """,
        server_id, org_id, name, url, backend,
    )
    found = await find_server(conn, server_id)
    assert found is not None
    return found


async def find_server(conn: asyncpg.Connection, server_id: str, org_id: str | None = None) -> Server | None:
    """A server (of `org_id` when given); deleted ones too."""
    row = await conn.fetchrow(
        "SELECT * FROM servers WHERE server_id = $1 AND ($2::text IS NULL OR org_id = $2)", server_id, org_id
    )
    return None if row is None else _server(row)


async def find_live_server(conn: asyncpg.Connection, server_id: str, org_id: str | None = None) -> Server | None:
    """A server (of `org_id` when given) that is not deleted."""
    server = await find_server(conn, server_id, org_id)
    return None if server is None or server.desired == "deleted" else server


async def list_servers(conn: asyncpg.Connection, org_id: str | None = None) -> list[Server]:
    """An organisation's servers (every organisation's when None), deleted ones left out."""
    rows = await conn.fetch(
        "SELECT * FROM servers WHERE desired <> 'deleted' AND ($1::text IS NULL OR org_id = $1) ORDER BY created_at",
        org_id,
    )
    return [_server(r) for r in rows]


async def add_version(
    conn: asyncpg.Connection, *, server_id: str, build_id: str, artifact_hash: str, tools: tuple[str, ...],
    replaces: int | None = None,
) -> Version:
    """The server's version for `build_id`: a new one numbered after the last (replacing version `replaces`, the
    one serving until now), or the one recorded already."""
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM servers WHERE server_id = $1 FOR UPDATE", server_id)
        row = await conn.fetchrow(
            """
            SELECT server_id, version, build_id, artifact_hash, tools, created_at, replaces, tool_changes
            FROM server_versions WHERE build_id = $1
            """,
            build_id,
        )
        if row is None:
            row = await conn.fetchrow(
                """
                INSERT INTO server_versions (server_id, version, build_id, artifact_hash, tools, replaces)
                SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4, $5 FROM server_versions WHERE server_id = $1
                RETURNING server_id, version, build_id, artifact_hash, tools, created_at, replaces, tool_changes
                """,
                server_id, build_id, artifact_hash, list(tools), replaces,
            )
    assert row is not None
    return _version(row)


async def find_version(conn: asyncpg.Connection, server_id: str, version: int) -> Version | None:
    """One version of a server."""
    row = await conn.fetchrow(
        """
        SELECT server_id, version, build_id, artifact_hash, tools, created_at, replaces, tool_changes
        FROM server_versions WHERE server_id = $1 AND version = $2
        """,
        server_id, version,
    )
    return None if row is None else _version(row)


async def versions(conn: asyncpg.Connection, server_id: str) -> list[Version]:
    """Every version of a server, oldest first."""
    rows = await conn.fetch(
        """
        SELECT server_id, version, build_id, artifact_hash, tools, created_at, replaces, tool_changes
        FROM server_versions WHERE server_id = $1 ORDER BY version
        """,
        server_id,
    )
    return [_version(r) for r in rows]


async def record_tool_list(conn: asyncpg.Connection, server_id: str, version: int,
                           tool_list: Sequence[ServedTool]) -> None:
    """Keep what a version served in its health check and what that changed against the version it replaced,
    unless it has a list already (the first one stays what it is compared by)."""
    row = await conn.fetchrow(
        """
        SELECT v.tool_list IS NOT NULL AS recorded, v.replaces, before.tool_list AS before
        FROM server_versions v
        LEFT JOIN server_versions before ON before.server_id = v.server_id AND before.version = v.replaces
        WHERE v.server_id = $1 AND v.version = $2
        """,
        server_id, version,
    )
    if row is None or row["recorded"]:
        return
    before = None if row["before"] is None else _tool_list.decode(row["before"])
    changes = tool_changes(tool_list, row["replaces"], before)
    await conn.execute(
        """
        UPDATE server_versions SET tool_list = $3::jsonb, tool_changes = $4::jsonb
        WHERE server_id = $1 AND version = $2 AND tool_list IS NULL
        """,
        server_id, version, msgspec.json.encode(tuple(tool_list)).decode(),
        None if changes is None else msgspec.json.encode(changes).decode(),
    )


def tool_changes(tool_list: Sequence[ServedTool], replaces: int | None, before: Sequence[ServedTool] | None
                 ) -> ToolListDiff | None:
    """What `tool_list` changed against version `replaces` (whose list was `before`): every tool added for a first
    version; None when the replaced version's list is unknown (it ran before lists were recorded)."""
    if replaces is None:
        return diff_tool_lists((), tool_list)
    return None if before is None else diff_tool_lists(before, tool_list, since=replaces)


async def set_state(
    conn: asyncpg.Connection, server_id: str, *, state: ServerState, desired: str | None = None,
    version: int | None = None, detail: str | None = None,
) -> None:
    """Record what the server is now (and, when given, what it should be and which version it runs)."""
    await conn.execute(
        """
        UPDATE servers SET state = $2, desired = COALESCE($3, desired), version = COALESCE($4, version),
                           detail = $5, updated_at = now()
        WHERE server_id = $1
        """,
        server_id, state, desired, version, detail,
    )


def server_info(server: Server, all_versions: list[Version], isolation: Isolation) -> ServerInfo:
    """The server as its organisation sees it: each version with its tool count and its tool changes."""
    return ServerInfo(
        server_id=server.server_id, org_id=server.org_id, name=server.name, url=server.url, state=server.state,
        version=server.version, backend=server.backend, isolation=isolation, detail=server.detail,
        versions=tuple(
            ServerVersion(version=v.version, build_id=v.build_id, artifact_hash=v.artifact_hash,
                          created_at=_rfc3339(v.created_at), tool_count=len(v.tools),
                          tool_changes=v.tool_changes)
            for v in all_versions
        ),
    )


# --- advisory locks (shared by every deployer copy) ---

RECONCILE_LOCK = zlib.crc32(b"deployer:reconcile")
"""The lock one deployer copy holds while it reads what should run and what runs."""


@contextlib.asynccontextmanager
async def server_lock(pool: asyncpg.Pool, server_id: str) -> AsyncIterator[asyncpg.Connection]:
    """Hold the server's advisory lock (shared by every deployer copy) and a connection."""
    key = zlib.crc32(f"deployer:{server_id}".encode())
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", key)
        try:
            yield conn
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", key)


async def try_lock(conn: asyncpg.Connection, key: int) -> bool:
    """Take the session advisory lock `key` if no one holds it; whether it was taken."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))


async def unlock(conn: asyncpg.Connection, key: int) -> None:
    """Release the session advisory lock `key`."""
    await conn.execute("SELECT pg_advisory_unlock($1)", key)


def _build_lock(build_id: str) -> int:
    return zlib.crc32(f"deployer:build-secrets:{build_id}".encode())


async def lock_build_secrets(conn: asyncpg.Connection, build_id: str) -> None:
    """Hold the build's secrets lock until the caller's transaction ends (staging and adopting take it)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _build_lock(build_id))


# --- server secrets (sealed values; see server_secrets) ---


@dataclass(frozen=True)
class StoredSecret:
    """A server secret without its value."""

    name: str
    updated_at: dt.datetime
    updated_by: str


@dataclass(frozen=True)
class StagedSecret:
    """A secret staged for a build, sealed."""

    name: str
    sealed: bytes
    staged_by: str


async def put_secret(conn: asyncpg.Connection, *, server_id: str, name: str, sealed: bytes, by: str) -> dt.datetime:
    """Store (or replace) one sealed secret of a server; when it was stored."""
    updated_at: dt.datetime = await conn.fetchval(
        """
        INSERT INTO server_secrets (server_id, name, sealed, updated_by) VALUES ($1, $2, $3, $4)
        ON CONFLICT (server_id, name) DO UPDATE
            SET sealed = EXCLUDED.sealed, updated_by = EXCLUDED.updated_by, updated_at = now()
        RETURNING updated_at
        """,
        server_id, name, sealed, by,
    )
    return updated_at


async def delete_secret(conn: asyncpg.Connection, server_id: str, name: str) -> bool:
    """Forget one secret of a server; whether there was one."""
    return bool(await conn.fetchval(
        "DELETE FROM server_secrets WHERE server_id = $1 AND name = $2 RETURNING true", server_id, name))


async def forget_secrets(conn: asyncpg.Connection, server_id: str) -> None:
    """Forget every secret of a (deleted) server."""
    await conn.execute("DELETE FROM server_secrets WHERE server_id = $1", server_id)


async def stored_secrets(conn: asyncpg.Connection, server_id: str) -> list[StoredSecret]:
    """A server's secrets by name, without values."""
    rows = await conn.fetch(
        "SELECT name, updated_at, updated_by FROM server_secrets WHERE server_id = $1 ORDER BY name", server_id)
    return [StoredSecret(name=r["name"], updated_at=r["updated_at"], updated_by=r["updated_by"]) for r in rows]


async def sealed_secrets(conn: asyncpg.Connection, server_id: str, names: list[str]) -> list[tuple[str, bytes]]:
    """(name, sealed value) of those of `names` the server has."""
    rows = await conn.fetch(
        "SELECT name, sealed FROM server_secrets WHERE server_id = $1 AND name = ANY($2::text[])", server_id, names)
    return [(r["name"], bytes(r["sealed"])) for r in rows]


async def server_of_build(conn: asyncpg.Connection, org_id: str, build_id: str) -> str | None:
    """The server a build of `org_id` became a version of, once it has."""
    server_id: str | None = await conn.fetchval(
        """
        SELECT v.server_id FROM server_versions v JOIN servers s USING (server_id)
        WHERE v.build_id = $1 AND s.org_id = $2 AND s.desired <> 'deleted'
        """,
        build_id, org_id,
    )
    return server_id


async def stage_secret(
    conn: asyncpg.Connection, *, build_id: str, org_id: str, name: str, sealed: bytes, by: str
) -> None:
    """Keep one sealed secret for a build until its server exists (replacing one of the same name)."""
    await conn.execute(
        """
        INSERT INTO build_secrets (build_id, org_id, name, sealed, staged_by) VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (build_id, name) DO UPDATE
            SET sealed = EXCLUDED.sealed, staged_by = EXCLUDED.staged_by, staged_at = now()
            WHERE build_secrets.org_id = EXCLUDED.org_id
        """,
        build_id, org_id, name, sealed, by,
    )


async def staged_secrets(conn: asyncpg.Connection, org_id: str, build_id: str) -> list[StagedSecret]:
    """The secrets staged for a build of `org_id`, by name."""
    rows = await conn.fetch(
        "SELECT name, sealed, staged_by FROM build_secrets WHERE build_id = $1 AND org_id = $2 ORDER BY name",
        build_id, org_id,
    )
    return [StagedSecret(name=r["name"], sealed=bytes(r["sealed"]), staged_by=r["staged_by"]) for r in rows]


async def forget_staged(conn: asyncpg.Connection, build_id: str) -> None:
    """Forget every secret staged for a build."""
    await conn.execute("DELETE FROM build_secrets WHERE build_id = $1", build_id)


async def purge_staged_before(conn: asyncpg.Connection, before: dt.datetime) -> int:
    """Forget secrets staged before `before`; how many."""
    deleted = await conn.fetch("DELETE FROM build_secrets WHERE staged_at < $1 RETURNING 1", before)
    return len(deleted)
