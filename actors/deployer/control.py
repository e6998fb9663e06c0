"""A server's lifecycle on request: stop, start, delete, roll back, and running its current version again when a
secret it reads changes. Each holds the server's advisory lock, so copies of the deployer never act on one
server at once."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from actors.deployer import server_secrets, storage
from actors.deployer.refusals import DeployRefused
from actors.deployer.runners import announce, drop_route, start_checked
from actors.deployer.state import DeployerState
from actors.runtime.actor import Context
from actors.runtime.objects import ObjectUnusable
from bus_schemas.base import FailureCode
from bus_schemas.servers import ControlServer, ServerState


async def control(ctx: Context, state: DeployerState, request: ControlServer) -> storage.Server:
    """Stop, start, delete or roll back a server of the request's organisation."""
    async with storage.server_lock(ctx.pool, request.server_id) as conn:
        server = await storage.find_live_server(conn, request.server_id, request.org_id)
        if server is None:
            raise DeployRefused(FailureCode.NOT_FOUND, f"no server {request.server_id} in this organisation")
        if request.action == "stop":
            now = await stop(ctx, state, conn, server)
        elif request.action == "delete":
            now = await delete(ctx, state, conn, server)
        else:
            number = request.version if request.action == "rollback" else server.version
            now = await run_version(ctx, state, conn, server, number)
        changed = await storage.find_server(conn, server.server_id)
    assert changed is not None
    await announce(ctx, changed, now, changed.version)
    return changed


async def stop(ctx: Context, state: DeployerState, conn: asyncpg.Connection, server: storage.Server) -> ServerState:
    """Unroute the server and stop its runner; it should stay stopped."""
    await drop_route(ctx.js, server.server_id)
    await state.backend.stop(server.server_id)
    await storage.set_state(conn, server.server_id, state="stopped", desired="stopped")
    return "stopped"


async def delete(ctx: Context, state: DeployerState, conn: asyncpg.Connection, server: storage.Server
                 ) -> ServerState:
    """Unroute the server, remove all the backend keeps for it, and forget its secrets."""
    await drop_route(ctx.js, server.server_id)
    hashes = tuple(v.artifact_hash for v in await storage.versions(conn, server.server_id))
    await state.backend.remove(server.server_id, hashes)
    await storage.set_state(conn, server.server_id, state="deleted", desired="deleted")
    await storage.forget_secrets(conn, server.server_id)
    return "deleted"


async def run_version(ctx: Context, state: DeployerState, conn: asyncpg.Connection, server: storage.Server,
                      number: int | None) -> ServerState:
    """Run version `number` of the server (start: its current one; roll back: the one asked for)."""
    if number is None:
        raise DeployRefused(FailureCode.INVALID, "say which version to roll back to")
    version = await storage.find_version(conn, server.server_id, number)
    if version is None:
        raise DeployRefused(FailureCode.NOT_FOUND, f"server {server.server_id} has no version {number}")
    await start_checked(ctx, state, server, version)
    await storage.set_state(conn, server.server_id, state="running", desired="running", version=number)
    return "running"


async def restart_for_secrets(ctx: Context, state: DeployerState, server_id: str, names: Iterable[str]) -> bool:
    """Run a server's current version again with its secrets as stored now (start's and rollback's path,
    under the server's lock), if it should run and its version reads one of `names`; whether it did."""
    async with storage.server_lock(ctx.pool, server_id) as conn:
        server = await storage.find_server(conn, server_id)
        if server is None or server.desired != "running" or server.version is None:
            return False
        version = await storage.find_version(conn, server_id, server.version)
        if version is None:
            return False
        try:
            needed = await server_secrets.artifact_secrets(ctx.js, version.artifact_hash)
        except ObjectUnusable as exc:
            raise DeployRefused(FailureCode.INTERNAL, str(exc)) from None
        if not set(names) & set(needed):
            return False
        try:
            await start_checked(ctx, state, server, version)
        except DeployRefused as refused:
            await storage.set_state(conn, server_id, state="failed", detail=refused.detail)
            await announce(ctx, server, "failed", server.version, refused.detail)
            raise
        if server.state != "running":
            await storage.set_state(conn, server_id, state="running")
            await announce(ctx, server, "running", server.version)
    return True
