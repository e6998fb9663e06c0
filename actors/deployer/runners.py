"""Running one version of a server: its runner's spec and environment, the running-servers quota, the backend,
the health check over MCP with a real service token, and then its route; and how the deployer tells the rest
of the platform (ROUTES bucket, `servers.<org>.<server>.changed`)."""

from __future__ import annotations

import contextlib
import uuid

from nats.js import JetStreamContext

from actors.deployer import server_secrets, storage
from actors.deployer.backends.base import BackendError, RunnerSpec, RunningRunner
from actors.deployer.health import Unhealthy, wait_healthy
from actors.deployer.refusals import DeployRefused
from actors.deployer.state import DeployerState
from actors.runtime.actor import Context, utc_now
from actors.runtime.bus import call
from actors.runtime.codec import encode
from actors.runtime.faults import TransientError, unavailable
from actors.runtime.objects import ObjectUnusable, load_verified
from bus_schemas.base import Failed, FailureCode
from bus_schemas.oauth import MintServiceToken, TokenIssued
from bus_schemas.plans import Artifact, canonical_artifact_bytes
from bus_schemas.registry import ARTIFACTS, CHECK_QUOTA, OAUTH_MINT_SERVICE_TOKEN, ROUTES, SERVER_EVENTS
from bus_schemas.servers import ServerChanged, ServerRoute, ServerState
from bus_schemas.usage import CheckQuota
from runner_template.settings import RunnerSettings


def runner_settings(state: DeployerState, server: storage.Server) -> RunnerSettings:
    """A runner's settings: who it is, who signs its tokens and where the bus is (the backend places the
    artifact, the listen address and the worker)."""
    settings = state.settings
    password = settings.runner_nats_password or ""
    return RunnerSettings(
        artifact="", resource=server.url, issuer=state.issuer, server_id=server.server_id, org_id=server.org_id,
        name=server.name, allowed_origins=tuple(o.strip() for o in settings.runner_allowed_origins.split(",")
                                                if o.strip()),
        allow_private_upstreams=settings.runner_allow_private_upstreams,
        nats_url=(settings.runner_nats_url or settings.nats_url) if password else None,
        nats_user="runner", nats_password=password,
    )


async def load_artifact(ctx: Context, artifact_hash: str) -> Artifact:
    """The artifact with this hash, verified (refused as internal when it cannot be loaded)."""
    store = await ctx.object_store(ARTIFACTS)
    try:
        return await load_verified(store, ARTIFACTS, artifact_hash, Artifact, canonical_artifact_bytes, "artifact")
    except ObjectUnusable as exc:
        raise DeployRefused(FailureCode.INTERNAL, str(exc)) from None


async def spec_for(ctx: Context, state: DeployerState, server: storage.Server, version: storage.Version
                   ) -> RunnerSpec:
    """What the backend runs for `version` of `server`: its artifact and its environment with its secrets."""
    artifact = await load_artifact(ctx, version.artifact_hash)
    try:
        async with ctx.pool.acquire() as conn:
            secrets = await server_secrets.values_for(conn, state.secret_box, server.server_id, artifact.secrets)
    except server_secrets.SecretsUnavailable as exc:
        raise DeployRefused(FailureCode.UNAVAILABLE, str(exc)) from None
    return RunnerSpec(
        server_id=server.server_id, org_id=server.org_id, version=version.version,
        artifact_hash=version.artifact_hash, artifact_json=canonical_artifact_bytes(artifact),
        settings=runner_settings(state, server), secrets=secrets,
    )


async def service_token(ctx: Context, state: DeployerState, server: storage.Server) -> str:
    """A service token for the health check, its audience the server's public URL."""
    asked = MintServiceToken(service="deployer", issuer=state.issuer, resource=server.url, org_id=server.org_id)
    reply = await call(ctx.nc, OAUTH_MINT_SERVICE_TOKEN, asked, timeout=10)
    if isinstance(reply, TokenIssued):
        return reply.access_token
    if (away := unavailable(reply)) is not None:
        # the oauth actor (or the server registry it asks) did not answer: retried, not a failed deploy
        raise TransientError(f"no token for the health check: {away}")
    raise DeployRefused(FailureCode.INTERNAL, f"no token for the health check: {reply.detail}")


async def check_running_quota(ctx: Context, server: storage.Server) -> None:
    """Refuse to start a server over the organisation's running-servers quota (metering decides; a server
    that runs already takes no second slot). Without an answer from metering the server starts, logged."""
    asked = CheckQuota(org_id=server.org_id, quota="running_servers", server_id=server.server_id)
    answer = await call(ctx.nc, CHECK_QUOTA, asked, timeout=3)
    if isinstance(answer, Failed):
        if answer.code == FailureCode.QUOTA_EXCEEDED:
            raise DeployRefused(FailureCode.QUOTA_EXCEEDED, answer.detail)
        ctx.log.warning("server %s: running-servers quota not checked: %s", server.server_id, answer.detail)


async def start_checked(ctx: Context, state: DeployerState, server: storage.Server, version: storage.Version
                        ) -> RunningRunner:
    """Run `version` of `server` (within its organisation's quota), health-check it over MCP with a real
    token (keeping the tool list it serves with the version), route it."""
    await check_running_quota(ctx, server)
    spec = await spec_for(ctx, state, server, version)
    backend = state.backend
    try:
        runner = await backend.run(spec)
    except BackendError as exc:
        raise DeployRefused("backend_failed", f"the {backend.name} backend could not start the "
                            f"runner: {exc}") from None
    token = await service_token(ctx, state, server)
    try:
        served = await wait_healthy(f"{runner.upstream}/mcp", token, version.tools,
                                    timeout=state.settings.deploy_health_timeout)
    except Unhealthy as exc:
        raise DeployRefused("unhealthy", f"version {version.version} failed its health check: {exc}") from None
    async with ctx.pool.acquire() as conn:
        await storage.record_tool_list(conn, server.server_id, version.version, served)
    await put_route(ctx.js, ServerRoute(server_id=server.server_id, org_id=server.org_id,
                                        upstream=runner.upstream, version=version.version))
    return runner


async def put_route(js: JetStreamContext, route: ServerRoute) -> None:
    """Route the server's URL to its runner."""
    kv = await js.key_value(ROUTES.name)
    await kv.put(route.server_id, encode(route))


async def drop_route(js: JetStreamContext, server_id: str) -> None:
    """Route the server's URL nowhere."""
    kv = await js.key_value(ROUTES.name)
    with contextlib.suppress(Exception):  # no route is what we want
        await kv.delete(server_id)


async def announce(ctx: Context, server: storage.Server, state: ServerState, version: int | None,
                   detail: str | None = None) -> None:
    """Tell the platform what the server is now (`servers.<org>.<server>.changed`)."""
    event = ServerChanged(org_id=server.org_id, server_id=server.server_id, state=state, version=version,
                          url=server.url, at=utc_now(), detail=detail)
    await ctx.publish(SERVER_EVENTS.subject(org=server.org_id, server=server.server_id), event,
                      msg_id=uuid.uuid4().hex)
