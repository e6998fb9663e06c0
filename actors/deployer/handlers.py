"""The deployer actor: turns each checked build into a running, health-checked server at a stable URL.

It owns servers and their versions (its tables are the desired state) and makes the backend match them:
- a `checked` build becomes a new server, or a new version of the server its request names;
- the runner is started through the backend, asked for its tools over MCP with a real service token
  (audience = the server's public URL), and only then routed (ROUTES bucket) and announced
  (`deployed` with the URL, install snippets and what its tool list changed against the version serving
  before, breaking changes marked: `tool_diff`; `servers.<org>.<server>.changed`);
- stop, start, roll back, delete and logs are RPCs; every change of a server holds a Postgres advisory
  lock on it, so copies of the deployer never act on one server at once;
- at start and then periodically it reconciles: runners of servers that should not run are stopped or
  removed (no orphans), servers that should run but do not are started again (no duplicates: a backend
  runs at most one runner per server).

The handlers below answer the bus; deploying is in `deploy`, the lifecycle in `control`, reconciling in
`reconcile`, running one version in `runners`, secrets in `server_secrets` and all SQL in `storage`.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from actors.deployer import server_secrets, storage
from actors.deployer.backends.base import BackendError
from actors.deployer.control import control, restart_for_secrets
from actors.deployer.deploy import ISOLATION_LOG, deploy_build, warn_missing_secrets
from actors.deployer.install import install_snippets
from actors.deployer.refusals import DeployRefused
from actors.deployer.state import DeployerState
from actors.deployer.tool_diff import breaking_summary
from actors.runtime.actor import Context, utc_now
from actors.runtime.build_events import StepFailed, StepRun, pipeline_step
from actors.runtime.objects import ObjectUnusable
from bus_schemas.base import Failed, FailureCode
from bus_schemas.builds import BuildChecked, BuildDeployed
from bus_schemas.servers import (
    BuildSecretsStaged,
    ControlServer,
    ControlServerReply,
    DeleteServerSecret,
    DeleteServerSecretReply,
    GetServer,
    GetServerLogs,
    GetServerLogsReply,
    GetServerReply,
    ListServers,
    ListServerSecrets,
    ListServerSecretsReply,
    ListServersReply,
    ResolveServer,
    ResolveServerReply,
    ServerList,
    ServerLogs,
    ServerOwner,
    ServerReply,
    ServerSecretDeleted,
    ServerSecretInfo,
    ServerSecrets,
    ServerSecretSet,
    SetServerSecret,
    SetServerSecretReply,
    StageBuildSecrets,
    StageBuildSecretsReply,
)


@pipeline_step("deploy", after=BuildChecked, doing="deploying")
async def deploy(event: BuildChecked, run: StepRun[BuildChecked], state: DeployerState) -> BuildDeployed:
    """The deploy step of a `checked` build: run it health-checked; the build ends `deployed`."""
    backend = state.backend
    await run.log("isolation", ISOLATION_LOG[backend.isolation],
                  "warning" if backend.isolation == "process" else "info")
    try:
        async with run.ctx.heartbeat():
            deployed = await deploy_build(run.ctx, state, event)
    except DeployRefused as refused:
        raise StepFailed(refused.code, refused.detail) from None
    server, version = deployed.server, deployed.version
    await warn_missing_secrets(run, server)
    await run.log("healthy", f"version {version} answers an authenticated tools/list at {server.url}")
    if deployed.tool_changes is not None and deployed.tool_changes.breaking:
        await run.log("breaking", breaking_summary(deployed.tool_changes), "warning")
    return BuildDeployed(
        build_id=event.build_id, org_id=event.org_id, at=utc_now(), url=server.url, server_id=server.server_id,
        version=version, backend=backend.name, isolation=backend.isolation,
        install=install_snippets(server.name, server.url), tool_changes=deployed.tool_changes,
    )


def _no_server(server_id: str) -> Failed:
    return Failed(code=FailureCode.NOT_FOUND, detail=f"no server {server_id} in this organisation")


async def _reply(conn: asyncpg.Connection, state: DeployerState, server: storage.Server) -> ServerReply:
    return ServerReply(server=storage.server_info(server, await storage.versions(conn, server.server_id),
                                                  state.backend.isolation))


async def list_servers(request: ListServers, ctx: Context, state: DeployerState) -> ListServersReply:
    """An organisation's servers."""
    async with ctx.pool.acquire() as conn:
        servers = await storage.list_servers(conn, request.org_id)
        return ServerList(servers=tuple([(await _reply(conn, state, s)).server for s in servers]))


async def get_server(request: GetServer, ctx: Context, state: DeployerState) -> GetServerReply:
    """One server of an organisation, with its versions."""
    async with ctx.pool.acquire() as conn:
        server = await storage.find_live_server(conn, request.server_id, request.org_id)
        if server is None:
            return _no_server(request.server_id)
        return await _reply(conn, state, server)


async def control_server(request: ControlServer, ctx: Context, state: DeployerState) -> ControlServerReply:
    """Stop, start, delete or roll back a server; the server as it is afterwards."""
    try:
        server = await control(ctx, state, request)
    except DeployRefused as refused:
        return refused.failed()
    except BackendError as exc:
        return Failed(code=FailureCode.UNAVAILABLE, detail=f"the {state.backend.name} backend: {exc}")
    ctx.log.info("server %s: %s by %s", request.server_id, request.action, request.requested_by or "-")
    async with ctx.pool.acquire() as conn:
        return await _reply(conn, state, server)


async def server_logs(request: GetServerLogs, ctx: Context, state: DeployerState) -> GetServerLogsReply:
    """The last lines a server's runner wrote."""
    async with ctx.pool.acquire() as conn:
        server = await storage.find_live_server(conn, request.server_id, request.org_id)
    if server is None:
        return _no_server(request.server_id)
    lines = await state.backend.logs(server.server_id, request.tail)
    return ServerLogs(server_id=server.server_id, lines=tuple(lines))


async def resolve_server(request: ResolveServer, ctx: Context) -> ResolveServerReply:
    """Whose a server is, its URL and the tools its current version has (for any organisation)."""
    async with ctx.pool.acquire() as conn:
        server = await storage.find_live_server(conn, request.server_id)
        if server is None:
            return Failed(code=FailureCode.NOT_FOUND, detail=f"no server {request.server_id}")
        current = None if server.version is None else await storage.find_version(
            conn, server.server_id, server.version)
    return ServerOwner(server_id=server.server_id, org_id=server.org_id, url=server.url,
                       tool_names=current.tools if current else ())


# --- server secrets (values come in, never go out: replies, events and log lines carry names) ---


async def _restarted(ctx: Context, state: DeployerState, server_id: str, names: Iterable[str],
                     what: str) -> bool | Failed:
    """Whether the server ran again with its changed secrets, or why `what` happened but it did not."""
    try:
        return await restart_for_secrets(ctx, state, server_id, names)
    except DeployRefused as refused:
        return refused.failed(f"{what}, but server {server_id} did not restart with it: {refused.detail}")
    except BackendError as exc:
        return Failed(code=FailureCode.UNAVAILABLE, detail=f"{what}, but the {state.backend.name} "
                                                           f"backend could not restart server {server_id}: {exc}")


async def set_server_secret(request: SetServerSecret, ctx: Context, state: DeployerState) -> SetServerSecretReply:
    """Store one secret of a server and restart it if its version reads that secret."""
    problem = server_secrets.value_problem(request.value)
    if problem is not None:
        return Failed(code=FailureCode.INVALID, detail=problem, field="value")
    try:
        async with ctx.pool.acquire() as conn:
            server = await storage.find_live_server(conn, request.server_id, request.org_id)
            if server is None:
                return _no_server(request.server_id)
            updated_at = await server_secrets.put_secret(conn, state.secret_box, server_id=server.server_id,
                                                         name=request.name, value=request.value,
                                                         by=request.requested_by)
    except server_secrets.SecretsUnavailable as exc:
        return Failed(code=FailureCode.UNAVAILABLE, detail=str(exc))
    ctx.log.info("server %s: secret %s set by %s", server.server_id, request.name, request.requested_by or "-")
    done = await _restarted(ctx, state, server.server_id, (request.name,), f"secret {request.name} is stored")
    if isinstance(done, Failed):
        return done
    return ServerSecretSet(server_id=server.server_id, name=request.name,
                           updated_at=server_secrets.rfc3339(updated_at), restarted=done)


async def list_server_secrets(request: ListServerSecrets, ctx: Context) -> ListServerSecretsReply:
    """A server's secrets by name, those its current version reads, and which of those are missing."""
    async with ctx.pool.acquire() as conn:
        server = await storage.find_live_server(conn, request.server_id, request.org_id)
        if server is None:
            return _no_server(request.server_id)
        have = await storage.stored_secrets(conn, server.server_id)
        current = None if server.version is None else await storage.find_version(
            conn, server.server_id, server.version)
    try:
        needed = () if current is None else await server_secrets.artifact_secrets(ctx.js, current.artifact_hash)
    except ObjectUnusable as exc:
        return Failed(code=FailureCode.INTERNAL, detail=str(exc))
    names = {s.name for s in have}
    return ServerSecrets(
        server_id=server.server_id,
        secrets=tuple(ServerSecretInfo(name=s.name, updated_at=server_secrets.rfc3339(s.updated_at),
                                       updated_by=s.updated_by) for s in have),
        needed=tuple(sorted(needed)), missing=tuple(n for n in sorted(needed) if n not in names),
    )


async def delete_server_secret(request: DeleteServerSecret, ctx: Context, state: DeployerState
                               ) -> DeleteServerSecretReply:
    """Forget one secret of a server and restart it if its version reads that secret."""
    async with ctx.pool.acquire() as conn:
        server = await storage.find_live_server(conn, request.server_id, request.org_id)
        if server is None:
            return _no_server(request.server_id)
        if not await storage.delete_secret(conn, server.server_id, request.name):
            return Failed(code=FailureCode.NOT_FOUND, detail=f"server {server.server_id} has no secret "
                                                             f"{request.name}")
    ctx.log.info("server %s: secret %s deleted by %s", server.server_id, request.name,
                 request.requested_by or "-")
    done = await _restarted(ctx, state, server.server_id, (request.name,), f"secret {request.name} is deleted")
    if isinstance(done, Failed):
        return done
    return ServerSecretDeleted(server_id=server.server_id, name=request.name, restarted=done)


async def stage_build_secrets(request: StageBuildSecrets, ctx: Context, state: DeployerState
                              ) -> StageBuildSecretsReply:
    """Keep the secrets given with a build until its server exists (or put them on it, and restart it)."""
    for name, value in sorted(request.secrets.items()):
        problem = server_secrets.value_problem(value)
        if problem is not None:
            return Failed(code=FailureCode.INVALID, detail=f"secret {name}: {problem}", field=f"secrets.{name}")
    try:
        async with ctx.pool.acquire() as conn:
            server_id = await server_secrets.stage_or_put(
                conn, state.secret_box, org_id=request.org_id, build_id=request.build_id,
                values=request.secrets, by=request.requested_by,
            )
    except server_secrets.SecretsUnavailable as exc:
        return Failed(code=FailureCode.UNAVAILABLE, detail=str(exc))
    names = tuple(sorted(request.secrets))
    ctx.log.info("build %s: secret(s) %s %s", request.build_id, ", ".join(names),
                 f"set on server {server_id}" if server_id else "kept until it deploys")
    if server_id is not None:
        done = await _restarted(ctx, state, server_id, names, "the build's secrets are stored")
        if isinstance(done, Failed):
            return done
    return BuildSecretsStaged(build_id=request.build_id, names=names, server_id=server_id)
