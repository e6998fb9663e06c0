"""Reconciling, at start and then periodically: runners of servers that should not run are stopped or removed
(no orphans), servers that should run but do not are started again (no duplicates: a backend runs at most one
runner per server), and secrets staged for builds that never deployed are forgotten."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

from actors.deployer import server_secrets, storage
from actors.deployer.backends.base import BackendError, RunningRunner
from actors.deployer.refusals import DeployRefused
from actors.deployer.runners import announce, drop_route, put_route, start_checked
from actors.deployer.state import DeployerState
from actors.runtime.actor import Context
from bus_schemas.servers import ServerRoute

RECONCILE_EVERY_SECONDS = 30.0


async def reconcile_forever(ctx: Context, state: DeployerState) -> None:
    """Reconcile now and then every RECONCILE_EVERY_SECONDS, until cancelled."""
    while True:
        try:
            await reconcile(ctx, state)
        except Exception:  # a failed round is logged and retried next round
            ctx.log.exception("reconciling servers failed")
        await asyncio.sleep(RECONCILE_EVERY_SECONDS)


async def reconcile(ctx: Context, state: DeployerState) -> None:
    """Make what runs match what should: one round, under a lock only one deployer copy holds at a time."""
    async with ctx.pool.acquire() as conn:
        if not await storage.try_lock(conn, storage.RECONCILE_LOCK):
            return
        try:
            await server_secrets.purge_stale_staged(conn, dt.datetime.now(dt.UTC))
            wanted = {s.server_id: s for s in await storage.list_servers(conn)}
            running = {r.server_id: r for r in await state.backend.running()}
        finally:
            await storage.unlock(conn, storage.RECONCILE_LOCK)
    for server_id, runner in running.items():
        server = wanted.get(server_id)
        if server is None or server.desired != "running":
            await retire(ctx, state, runner)
    for server_id, server in wanted.items():
        if server.desired != "running" or server.version is None or server.state == "deploying":
            continue
        found = running.get(server_id)
        if found is not None and found.version == server.version:
            await put_route(ctx.js, ServerRoute(server_id=server_id, org_id=server.org_id,
                                                upstream=found.upstream, version=server.version))
            continue
        await restore(ctx, state, server_id)


async def retire(ctx: Context, state: DeployerState, runner: RunningRunner) -> None:
    """Remove the runner of a server that is gone or deleted; stop the runner of a stopped one."""
    server_id = runner.server_id
    async with storage.server_lock(ctx.pool, server_id) as conn:
        current = await storage.find_server(conn, server_id)
        if current is None or current.desired == "deleted":
            hashes = () if current is None else tuple(
                v.artifact_hash for v in await storage.versions(conn, server_id))
            ctx.log.warning("removing orphan runner of %s (%s)", server_id, runner.ref)
            await state.backend.remove(server_id, hashes or (runner.artifact_hash,))
        elif current.desired == "stopped":
            ctx.log.warning("stopping runner of stopped server %s", server_id)
            await state.backend.stop(server_id)


async def restore(ctx: Context, state: DeployerState, server_id: str) -> None:
    """Start the version a server should run (if it still should), or record that it fails to."""
    async with storage.server_lock(ctx.pool, server_id) as conn:
        current = await storage.find_server(conn, server_id)
        if current is None or current.desired != "running" or current.version is None:
            return
        version = await storage.find_version(conn, server_id, current.version)
        if version is None:
            return
        ctx.log.warning("server %s should run version %s: starting it", server_id, current.version)
        try:
            await start_checked(ctx, state, current, version)
        except DeployRefused as refused:
            with contextlib.suppress(BackendError):
                await state.backend.stop(server_id)  # a runner that failed its check serves nobody
            await drop_route(ctx.js, server_id)
            await storage.set_state(conn, server_id, state="failed", detail=refused.detail)
            await announce(ctx, current, "failed", current.version, refused.detail)
        else:
            if current.state != "running":
                await storage.set_state(conn, server_id, state="running")
                await announce(ctx, current, "running", current.version)
