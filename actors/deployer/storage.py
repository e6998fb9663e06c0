"""The deployer's tables: servers (desired state) and their versions. Only the deployer reads them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from bus_schemas.servers import BackendName, Isolation, ServerInfo, ServerState, ServerVersion


@dataclass(frozen=True)
class Server:
    """A server row."""

    server_id: str
    org_id: str
    name: str
    url: str
    backend: str
    desired: str
    state: str
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


def _rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _server(row: asyncpg.Record) -> Server:
    return Server(
        server_id=row["server_id"], org_id=row["org_id"], name=row["name"], url=row["url"], backend=row["backend"],
        desired=row["desired"], state=row["state"], version=row["version"], detail=row["detail"],
    )


def _version(row: asyncpg.Record) -> Version:
    return Version(
        server_id=row["server_id"], version=row["version"], build_id=row["build_id"],
        artifact_hash=row["artifact_hash"], tools=tuple(row["tools"]), created_at=row["created_at"],
    )


async def create_server(
    conn: asyncpg.Connection, *, server_id: str, org_id: str, name: str, url: str, backend: str
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


async def list_servers(conn: asyncpg.Connection, org_id: str | None = None) -> list[Server]:
    """An organisation's servers (every organisation's when None), deleted ones left out."""
    rows = await conn.fetch(
        "SELECT * FROM servers WHERE desired <> 'deleted' AND ($1::text IS NULL OR org_id = $1) ORDER BY created_at",
        org_id,
    )
    return [_server(r) for r in rows]


async def add_version(
    conn: asyncpg.Connection, *, server_id: str, build_id: str, artifact_hash: str, tools: tuple[str, ...]
) -> Version:
    """The server's version for `build_id`: a new one numbered after the last, or the one recorded already."""
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM servers WHERE server_id = $1 FOR UPDATE", server_id)
        row = await conn.fetchrow("SELECT * FROM server_versions WHERE build_id = $1", build_id)
        if row is None:
            row = await conn.fetchrow(
                """
                INSERT INTO server_versions (server_id, version, build_id, artifact_hash, tools)
                SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4 FROM server_versions WHERE server_id = $1
                RETURNING *
                """,
                server_id, build_id, artifact_hash, list(tools),
            )
    assert row is not None
    return _version(row)


async def find_version(conn: asyncpg.Connection, server_id: str, version: int) -> Version | None:
    """One version of a server."""
    row = await conn.fetchrow("SELECT * FROM server_versions WHERE server_id = $1 AND version = $2", server_id, version)
    return None if row is None else _version(row)


async def versions(conn: asyncpg.Connection, server_id: str) -> list[Version]:
    """Every version of a server, oldest first."""
    rows = await conn.fetch("SELECT * FROM server_versions WHERE server_id = $1 ORDER BY version", server_id)
    return [_version(r) for r in rows]


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
    """The server as its organisation sees it."""
    state: ServerState = server.state  # type: ignore[assignment]
    backend: BackendName = server.backend  # type: ignore[assignment]
    return ServerInfo(
        server_id=server.server_id, org_id=server.org_id, name=server.name, url=server.url, state=state,
        version=server.version, backend=backend, isolation=isolation, detail=server.detail,
        versions=tuple(
            ServerVersion(version=v.version, build_id=v.build_id, artifact_hash=v.artifact_hash,
                          created_at=_rfc3339(v.created_at))
            for v in all_versions
        ),
    )
