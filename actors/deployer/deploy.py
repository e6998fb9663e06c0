"""Deploying a checked build: its artifact becomes a new server, or the next version of the server its request
names, runs health-checked, and only then is routed and announced. A failed deploy leaves the version that ran
before serving (a redeploy) or nothing running (a new server). What the new version's tool list changed against
the version serving before it is part of the result (`tool_diff`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import asyncpg

from actors.deployer import server_secrets, storage
from actors.deployer.backends.base import BackendError
from actors.deployer.refusals import DeployRefused
from actors.deployer.runners import announce, drop_route, load_artifact, start_checked
from actors.deployer.state import DeployerState
from actors.runtime.actor import Context
from actors.runtime.build_events import StepRun
from actors.runtime.objects import ObjectUnusable
from bus_schemas.base import FailureCode
from bus_schemas.builds import BuildChecked
from bus_schemas.servers import Isolation, ToolListDiff

ISOLATION_LOG: dict[Isolation, str] = {
    "container": "the generated code runs in a container with no network, read-only, unprivileged; "
                 "upstream calls and secrets stay with the runner's front",
    "sandbox": "the generated code runs in a bubblewrap sandbox (a user of its own, no network, read-only root); "
               "upstream calls and secrets stay with the runner's front",
    "process": "this platform runs generated code WITHOUT a sandbox (BMMS_ALLOW_UNSANDBOXED_CODE): "
               "for development only",
}
"""The deploy step's line on where the server's generated code runs."""


def new_server_id(build_id: str) -> str:
    """The id of the server a build creates: derived from the build, so a redelivered build finds it."""
    return f"s{build_id}"


@dataclass(frozen=True)
class Deployed:
    """A build deployed: its server as it is now, the version it became, and that version's tool changes."""

    server: storage.Server
    version: int
    tool_changes: ToolListDiff | None


async def deploy_build(ctx: Context, state: DeployerState, checked: BuildChecked) -> Deployed:
    """Make the checked build's artifact the running version of its server."""
    artifact = await load_artifact(ctx, checked.artifact_hash)
    server_id = checked.server_id or new_server_id(checked.build_id)
    async with storage.server_lock(ctx.pool, server_id) as conn:
        if checked.server_id:
            found = await storage.find_live_server(conn, server_id, checked.org_id)
            if found is None:
                raise DeployRefused(FailureCode.NOT_FOUND, f"no server {server_id} in this organisation to "
                                    "deploy a new version of")
            server = found
        else:
            server = await storage.create_server(
                conn, server_id=server_id, org_id=checked.org_id, name=checked.name,
                url=state.url_of(server_id), backend=state.backend.name,
            )
        previous = server.version if server.state == "running" else None
        version = await storage.add_version(conn, server_id=server_id, build_id=checked.build_id,
                                            artifact_hash=checked.artifact_hash, tools=artifact.tools,
                                            replaces=server.version)
        await adopt_build_secrets(conn, state, checked, server_id)
        if server.state == "running" and server.version == version.version:
            # a redelivered build that was deployed already
            return Deployed(server, version.version, await changes_of(conn, version))
        await storage.set_state(conn, server_id, state="deploying", detail=None)
        try:
            await start_checked(ctx, state, server, version)
        except DeployRefused as refused:
            await keep_previous(ctx, state, conn, server, previous, refused)
            raise
        await storage.set_state(conn, server_id, state="running", desired="running", version=version.version)
        server = await storage.find_server(conn, server_id) or server
        changes = await changes_of(conn, version)
    await announce(ctx, server, "running", version.version)
    return Deployed(server, version.version, changes)


async def changes_of(conn: asyncpg.Connection, version: storage.Version) -> ToolListDiff | None:
    """What `version` changed in its server's tool list against the version it replaced, as recorded by its
    health check."""
    recorded = await storage.find_version(conn, version.server_id, version.version)
    return None if recorded is None else recorded.tool_changes


async def keep_previous(ctx: Context, state: DeployerState, conn: asyncpg.Connection, server: storage.Server,
                        previous: int | None, refused: DeployRefused) -> None:
    """After a failed deploy: the version that ran before runs again (a redeploy), or nothing runs (new)."""
    if previous is not None:
        old = await storage.find_version(conn, server.server_id, previous)
        if old is not None:
            try:
                await start_checked(ctx, state, server, old)
            except DeployRefused as again:
                ctx.log.error("server %s: version %s does not come back either: %s", server.server_id, previous,
                              again.detail)
            else:
                await storage.set_state(conn, server.server_id, state="running", version=previous,
                                        detail=f"the new version failed and version {previous} serves again: "
                                               f"{refused.detail}")
                return
    with contextlib.suppress(BackendError):
        await state.backend.stop(server.server_id)
    await drop_route(ctx.js, server.server_id)
    await storage.set_state(conn, server.server_id, state="failed", detail=refused.detail)
    await announce(ctx, server, "failed", server.version, refused.detail)


async def adopt_build_secrets(conn: asyncpg.Connection, state: DeployerState, checked: BuildChecked,
                              server_id: str) -> None:
    """Move the secrets given with the build onto its server, before the build's runner starts."""
    try:
        await server_secrets.adopt_staged(conn, state.secret_box, org_id=checked.org_id, build_id=checked.build_id,
                                          server_id=server_id)
    except server_secrets.SecretsUnavailable as exc:
        raise DeployRefused(FailureCode.UNAVAILABLE, str(exc)) from None


async def warn_missing_secrets(run: StepRun[BuildChecked], server: storage.Server) -> None:
    """A warning line in the build log for each secret the new version reads that its server does not have."""
    try:
        needed = await server_secrets.artifact_secrets(run.ctx.js, run.event.artifact_hash)
    except ObjectUnusable:
        return  # the deploy itself just loaded it; nothing to say if it is gone since
    async with run.ctx.pool.acquire() as conn:
        have = {s.name for s in await storage.stored_secrets(conn, server.server_id)}
    for name in sorted(set(needed) - have):
        await run.log(f"secret-missing:{name}",
                      f"secret {name} is not set: the tools that use it answer a tool error until it is "
                      f"(PUT /v1/servers/{server.server_id}/secrets/{name})", "warning")
