"""The deployer actor: turns each checked build into a running, health-checked server at a stable URL.

It owns servers and their versions (its tables are the desired state) and makes the backend match them:
- a `checked` build becomes a new server, or a new version of the server its request names;
- the runner is started through the backend, asked for its tools over MCP with a real service token
  (audience = the server's public URL), and only then routed (ROUTES bucket) and announced
  (`deployed` with the URL and install snippets; `servers.<org>.<server>.changed`);
- stop, start, roll back, delete and logs are RPCs; every change of a server holds a Postgres advisory
  lock on it, so copies of the deployer never act on one server at once;
- at start and then periodically it reconciles: runners of servers that should not run are stopped or
  removed (no orphans), servers that should run but do not are started again (no duplicates: a backend
  runs at most one runner per server).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path

import asyncpg
from nats.js import JetStreamContext

from actors.deployer import server_secrets, storage
from actors.deployer.backends.base import Backend, BackendError, RunnerSpec, RunningRunner
from actors.deployer.backends.select import create_backend
from actors.deployer.health import Unhealthy, wait_healthy
from actors.deployer.install import install_snippets
from actors.runtime.actor import Actor, Context, utc_now
from actors.runtime.build_events import emit, fail_step, fail_step_when_parked, start_step
from actors.runtime.bus import call
from actors.runtime.codec import decode, encode
from actors.runtime.objects import ObjectUnusable, load_verified
from actors.runtime.settings import Settings
from bus_schemas.base import Failed, FailureCode
from bus_schemas.builds import AnyBuildEvent, BuildChecked, BuildDeployed, BuildRequested, LogLine, StepChanged
from bus_schemas.oauth import MintServiceToken, TokenIssued
from bus_schemas.plans import Artifact, canonical_artifact_bytes
from bus_schemas.registry import (
    ARTIFACTS,
    BUILDS,
    CHECK_QUOTA,
    CONTROL_SERVER,
    DELETE_SERVER_SECRET,
    DEPLOYER_CHECKED,
    GET_SERVER,
    GET_SERVER_LOGS,
    LIST_SERVER_SECRETS,
    LIST_SERVERS,
    OAUTH_MINT_SERVICE_TOKEN,
    RESOLVE_SERVER,
    ROUTES,
    SERVER_EVENTS,
    SET_SERVER_SECRET,
    STAGE_BUILD_SECRETS,
    build_subject,
)
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
    Isolation,
    ListServers,
    ListServerSecrets,
    ListServerSecretsReply,
    ListServersReply,
    ResolveServer,
    ResolveServerReply,
    ServerChanged,
    ServerList,
    ServerLogs,
    ServerOwner,
    ServerReply,
    ServerRoute,
    ServerSecretDeleted,
    ServerSecretInfo,
    ServerSecrets,
    ServerSecretSet,
    ServerState,
    SetServerSecret,
    SetServerSecretReply,
    StageBuildSecrets,
    StageBuildSecretsReply,
    server_url,
)
from bus_schemas.usage import CheckQuota

RECONCILE_EVERY_SECONDS = 30.0


class DeployRefused(Exception):
    """A deploy or lifecycle action cannot go ahead; `code` and `detail` say why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def new_server_id(build_id: str) -> str:
    """The id of the server a build creates: derived from the build, so a redelivered build finds it."""
    return f"s{build_id}"


class DeployerActor(Actor):
    """The deployer, with its backend made from the settings when it starts."""

    def __init__(self, backend: Backend | None = None) -> None:
        super().__init__("deployer", migrations=Path(__file__).parent / "migrations")
        self._given_backend = backend
        self.backend: Backend | None = backend
        self.settings: Settings | None = None
        self.secret_box = server_secrets.SecretBox(None)
        """Seals server secrets under BMMS_SECRET_KEY (without one, secrets cannot be set)."""
        self._reconciler: asyncio.Task[None] | None = None

    async def serve(self, settings: Settings, stop: asyncio.Event) -> None:
        self.settings = settings
        self.secret_box = server_secrets.SecretBox(settings.secret_key)
        if self.backend is None:
            self.backend = create_backend(settings)
        try:
            await super().serve(settings, stop)
        finally:
            if self._reconciler is not None:
                self._reconciler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reconciler
            if self.backend is not None and settings.deploy_stop_runners_on_exit:
                for runner in await self.backend.running():
                    with contextlib.suppress(BackendError):
                        await self.backend.stop(runner.server_id)
            if self._given_backend is None and self.backend is not None:
                await self.backend.close()
                self.backend = None

    async def started(self, ctx: Context) -> None:
        self._reconciler = asyncio.create_task(self._reconcile_forever(ctx))

    async def _reconcile_forever(self, ctx: Context) -> None:
        while True:
            try:
                await reconcile(self, ctx)
            except Exception:  # a failed round is logged and retried next round
                ctx.log.exception("reconciling servers failed")
            await asyncio.sleep(RECONCILE_EVERY_SECONDS)

    # --- what every operation needs ---

    @property
    def runner_backend(self) -> Backend:
        assert self.backend is not None, "the deployer is not serving"
        return self.backend

    @property
    def config(self) -> Settings:
        assert self.settings is not None, "the deployer is not serving"
        return self.settings

    @property
    def issuer(self) -> str:
        if not self.config.public_url:
            raise DeployRefused(FailureCode.UNAVAILABLE, "BMMS_PUBLIC_URL is not set: the deployer cannot tell "
                                "servers their public URL or which issuer signs their tokens")
        return self.config.public_url.rstrip("/")

    def url_of(self, server_id: str) -> str:
        return server_url(self.config.servers_url, self.issuer, server_id)

    def runner_env(self, server: storage.Server, secrets: Mapping[str, str] | None = None) -> dict[str, str]:
        """A runner's settings (see runner_template.app): who it is, who signs its tokens, where the bus is,
        and `BMMS_SECRET_<NAME>` for each of `secrets` (the stored ones its artifact declares)."""
        settings = self.config
        origins = [o.strip() for o in settings.runner_allowed_origins.split(",") if o.strip()]
        env = {
            "BMMS_RUNNER_RESOURCE": server.url,
            "BMMS_RUNNER_ISSUER": self.issuer,
            "BMMS_RUNNER_SERVER_ID": server.server_id,
            "BMMS_RUNNER_ORG_ID": server.org_id,
            "BMMS_RUNNER_NAME": server.name,
            "BMMS_RUNNER_ALLOWED_ORIGINS": ",".join(origins),
        }
        if settings.runner_allow_private_upstreams:
            env["BMMS_RUNNER_ALLOW_PRIVATE_UPSTREAMS"] = "1"
        if settings.runner_nats_password:
            env |= {
                "BMMS_RUNNER_NATS_URL": settings.runner_nats_url or settings.nats_url,
                "BMMS_RUNNER_NATS_USER": "runner",
                "BMMS_RUNNER_NATS_PASSWORD": settings.runner_nats_password,
            }
        return env | server_secrets.runner_secret_env(secrets or {})

    async def spec_for(self, ctx: Context, server: storage.Server, version: storage.Version) -> RunnerSpec:
        store = await ctx.js.object_store(ARTIFACTS.name)
        try:
            artifact = await load_verified(store, ARTIFACTS, version.artifact_hash, Artifact,
                                           canonical_artifact_bytes, "artifact")
        except ObjectUnusable as exc:
            raise DeployRefused(FailureCode.INTERNAL, str(exc)) from None
        try:
            async with ctx.pool.acquire() as conn:
                secrets = await server_secrets.values_for(conn, self.secret_box, server.server_id, artifact.secrets)
        except server_secrets.SecretsUnavailable as exc:
            raise DeployRefused(FailureCode.UNAVAILABLE, str(exc)) from None
        return RunnerSpec(
            server_id=server.server_id, org_id=server.org_id, version=version.version,
            artifact_hash=version.artifact_hash, artifact_json=canonical_artifact_bytes(artifact),
            env=self.runner_env(server, secrets),
        )

    async def service_token(self, ctx: Context, server: storage.Server) -> str:
        asked = MintServiceToken(service="deployer", issuer=self.issuer, resource=server.url, org_id=server.org_id)
        reply = await call(ctx.nc, OAUTH_MINT_SERVICE_TOKEN, asked, timeout=10)
        if not isinstance(reply, TokenIssued):
            raise DeployRefused(FailureCode.UNAVAILABLE, f"no token for the health check: {reply.detail}")
        return reply.access_token

    async def check_running_quota(self, ctx: Context, server: storage.Server) -> None:
        """Refuse to start a server over the organisation's running-servers quota (metering decides; a server
        that runs already takes no second slot). Without an answer from metering the server starts, logged."""
        asked = CheckQuota(org_id=server.org_id, quota="running_servers", server_id=server.server_id)
        answer = await call(ctx.nc, CHECK_QUOTA, asked, timeout=3)
        if isinstance(answer, Failed):
            if answer.code == FailureCode.QUOTA_EXCEEDED:
                raise DeployRefused(FailureCode.QUOTA_EXCEEDED, answer.detail)
            ctx.log.warning("server %s: running-servers quota not checked: %s", server.server_id, answer.detail)

    async def start_checked(self, ctx: Context, server: storage.Server, version: storage.Version) -> RunningRunner:
        """Run `version` of `server` (within its organisation's quota), health-check it over MCP with a real
        token, route it."""
        await self.check_running_quota(ctx, server)
        spec = await self.spec_for(ctx, server, version)
        try:
            runner = await self.runner_backend.run(spec)
        except BackendError as exc:
            raise DeployRefused("backend_failed", f"the {self.runner_backend.name} backend could not start the "
                                f"runner: {exc}") from None
        token = await self.service_token(ctx, server)
        try:
            await wait_healthy(f"{runner.upstream}/mcp", token, version.tools,
                               timeout=self.config.deploy_health_timeout)
        except Unhealthy as exc:
            raise DeployRefused("unhealthy", f"version {version.version} failed its health check: {exc}") from None
        await put_route(ctx.js, ServerRoute(server_id=server.server_id, org_id=server.org_id,
                                            upstream=runner.upstream, version=version.version))
        return runner


async def put_route(js: JetStreamContext, route: ServerRoute) -> None:
    kv = await js.key_value(ROUTES.name)
    await kv.put(route.server_id, encode(route))


async def drop_route(js: JetStreamContext, server_id: str) -> None:
    kv = await js.key_value(ROUTES.name)
    with contextlib.suppress(Exception):  # no route is what we want
        await kv.delete(server_id)


async def announce(ctx: Context, server: storage.Server, state: ServerState, version: int | None,
                   detail: str | None = None) -> None:
    event = ServerChanged(org_id=server.org_id, server_id=server.server_id, state=state, version=version,
                          url=server.url, at=utc_now(), detail=detail)
    await ctx.publish(SERVER_EVENTS.subject(org=server.org_id, server=server.server_id), event,
                      msg_id=uuid.uuid4().hex)


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


@contextlib.asynccontextmanager
async def heartbeat(ctx: Context, every: float = 10.0) -> AsyncIterator[None]:
    """Keep a long handler's message from being redelivered while it works."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)
            await ctx.still_working()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def requested_of(js: JetStreamContext, build: BuildChecked) -> BuildRequested:
    """The build's `requested` event: its name and the server it is a new version of, if any."""
    msg = await js.get_last_msg(BUILDS.name, build_subject(build.org_id, build.build_id, "requested"))
    event = decode(AnyBuildEvent, msg.data or b"")
    if not isinstance(event, BuildRequested):
        raise DeployRefused(FailureCode.INTERNAL, f"build {build.build_id} has no requested event")
    return event


async def deploy_build(actor: DeployerActor, ctx: Context, checked: BuildChecked) -> tuple[storage.Server, int]:
    """Make the checked build's artifact the running version of its server; (server, version)."""
    requested = await requested_of(ctx.js, checked)
    store = await ctx.js.object_store(ARTIFACTS.name)
    try:
        artifact = await load_verified(store, ARTIFACTS, checked.artifact_hash, Artifact,
                                       canonical_artifact_bytes, "artifact")
    except ObjectUnusable as exc:
        raise DeployRefused(FailureCode.INTERNAL, str(exc)) from None
    server_id = requested.server_id or new_server_id(checked.build_id)
    async with server_lock(ctx.pool, server_id) as conn:
        if requested.server_id:
            server = await storage.find_server(conn, server_id, checked.org_id)
            if server is None or server.desired == "deleted":
                raise DeployRefused(FailureCode.NOT_FOUND, f"no server {server_id} in this organisation to "
                                    "deploy a new version of")
        else:
            server = await storage.create_server(
                conn, server_id=server_id, org_id=checked.org_id, name=requested.name,
                url=actor.url_of(server_id), backend=actor.runner_backend.name,
            )
        previous = server.version if server.state == "running" else None
        version = await storage.add_version(conn, server_id=server_id, build_id=checked.build_id,
                                            artifact_hash=checked.artifact_hash, tools=artifact.tools)
        await adopt_build_secrets(actor, conn, checked, server_id)
        if server.state == "running" and server.version == version.version:
            return server, version.version  # a redelivered build that was deployed already
        await storage.set_state(conn, server_id, state="deploying", detail=None)
        try:
            await actor.start_checked(ctx, server, version)
        except DeployRefused as refused:
            await keep_previous(actor, ctx, conn, server, previous, refused)
            raise
        await storage.set_state(conn, server_id, state="running", desired="running", version=version.version)
        server = await storage.find_server(conn, server_id) or server
    await announce(ctx, server, "running", version.version)
    return server, version.version


async def keep_previous(actor: DeployerActor, ctx: Context, conn: asyncpg.Connection, server: storage.Server,
                        previous: int | None, refused: DeployRefused) -> None:
    """After a failed deploy: the version that ran before runs again (a redeploy), or nothing runs (new)."""
    if previous is not None:
        old = await storage.find_version(conn, server.server_id, previous)
        if old is not None:
            try:
                await actor.start_checked(ctx, server, old)
            except DeployRefused as again:
                ctx.log.error("server %s: version %s does not come back either: %s", server.server_id, previous,
                              again.detail)
            else:
                await storage.set_state(conn, server.server_id, state="running", version=previous,
                                        detail=f"the new version failed and version {previous} serves again: "
                                               f"{refused.detail}")
                return
    with contextlib.suppress(BackendError):
        await actor.runner_backend.stop(server.server_id)
    await drop_route(ctx.js, server.server_id)
    await storage.set_state(conn, server.server_id, state="failed", detail=refused.detail)
    await announce(ctx, server, "failed", server.version, refused.detail)


async def adopt_build_secrets(actor: DeployerActor, conn: asyncpg.Connection, checked: BuildChecked,
                              server_id: str) -> None:
    """Move the secrets given with the build onto its server, before the build's runner starts."""
    try:
        await server_secrets.adopt_staged(conn, actor.secret_box, org_id=checked.org_id, build_id=checked.build_id,
                                          server_id=server_id)
    except server_secrets.SecretsUnavailable as exc:
        raise DeployRefused(FailureCode.UNAVAILABLE, str(exc)) from None


async def warn_missing_secrets(ctx: Context, checked: BuildChecked, server: storage.Server) -> None:
    """A warning line in the build log for each secret the new version reads that its server does not have."""
    try:
        needed = await server_secrets.artifact_secrets(ctx.js, checked.artifact_hash)
    except ObjectUnusable:
        return  # the deploy itself just loaded it; nothing to say if it is gone since
    async with ctx.pool.acquire() as conn:
        have = {s.name for s in await server_secrets.stored(conn, server.server_id)}
    for name in sorted(set(needed) - have):
        message = (f"secret {name} is not set: the tools that use it answer a tool error until it is "
                   f"(PUT /v1/servers/{server.server_id}/secrets/{name})")
        await emit(ctx, LogLine(build_id=checked.build_id, org_id=checked.org_id, at=utc_now(), step="deploy",
                                level="warning", message=message), "log", f"deploy:secret-missing:{name}")


async def restart_for_secrets(actor: DeployerActor, ctx: Context, server_id: str, names: Iterable[str]) -> bool:
    """Run a server's current version again with its secrets as stored now (start's and rollback's path,
    under the server's lock), if it should run and its version reads one of `names`; whether it did."""
    async with server_lock(ctx.pool, server_id) as conn:
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
            await actor.start_checked(ctx, server, version)
        except DeployRefused as refused:
            await storage.set_state(conn, server_id, state="failed", detail=refused.detail)
            await announce(ctx, server, "failed", server.version, refused.detail)
            raise
        if server.state != "running":
            await storage.set_state(conn, server_id, state="running")
            await announce(ctx, server, "running", server.version)
    return True


async def control(actor: DeployerActor, ctx: Context, request: ControlServer) -> storage.Server:
    """Stop, start, delete or roll back a server of the request's organisation."""
    backend = actor.runner_backend
    async with server_lock(ctx.pool, request.server_id) as conn:
        server = await storage.find_server(conn, request.server_id, request.org_id)
        if server is None or server.desired == "deleted":
            raise DeployRefused(FailureCode.NOT_FOUND, f"no server {request.server_id} in this organisation")
        if request.action == "stop":
            await drop_route(ctx.js, server.server_id)
            await backend.stop(server.server_id)
            await storage.set_state(conn, server.server_id, state="stopped", desired="stopped")
            state: ServerState = "stopped"
        elif request.action == "delete":
            await drop_route(ctx.js, server.server_id)
            hashes = tuple(v.artifact_hash for v in await storage.versions(conn, server.server_id))
            await backend.remove(server.server_id, hashes)
            await storage.set_state(conn, server.server_id, state="deleted", desired="deleted")
            await server_secrets.forget_server(conn, server.server_id)
            state = "deleted"
        else:
            number = request.version if request.action == "rollback" else server.version
            if number is None:
                raise DeployRefused(FailureCode.INVALID, "say which version to roll back to")
            version = await storage.find_version(conn, server.server_id, number)
            if version is None:
                raise DeployRefused(FailureCode.NOT_FOUND, f"server {server.server_id} has no version {number}")
            await actor.start_checked(ctx, server, version)
            await storage.set_state(conn, server.server_id, state="running", desired="running", version=number)
            state = "running"
        changed = await storage.find_server(conn, server.server_id)
    assert changed is not None
    await announce(ctx, changed, state, changed.version)
    return changed


async def reconcile(actor: DeployerActor, ctx: Context) -> None:
    """Make what runs match what should: one round, under a lock only one deployer copy holds at a time."""
    backend = actor.runner_backend
    async with ctx.pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", zlib.crc32(b"deployer:reconcile")):
            return
        try:
            await server_secrets.purge_stale_staged(conn, dt.datetime.now(dt.UTC))
            wanted = {s.server_id: s for s in await storage.list_servers(conn)}
            running = {r.server_id: r for r in await backend.running()}
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", zlib.crc32(b"deployer:reconcile"))
    for server_id, runner in running.items():
        server = wanted.get(server_id)
        if server is None or server.desired != "running":
            async with server_lock(ctx.pool, server_id) as conn:
                current = await storage.find_server(conn, server_id)
                if current is None or current.desired == "deleted":
                    hashes = () if current is None else tuple(
                        v.artifact_hash for v in await storage.versions(conn, server_id))
                    ctx.log.warning("removing orphan runner of %s (%s)", server_id, runner.ref)
                    await backend.remove(server_id, hashes or (runner.artifact_hash,))
                elif current.desired == "stopped":
                    ctx.log.warning("stopping runner of stopped server %s", server_id)
                    await backend.stop(server_id)
    for server_id, server in wanted.items():
        if server.desired != "running" or server.version is None or server.state == "deploying":
            continue
        found = running.get(server_id)
        if found is not None and found.version == server.version:
            await put_route(ctx.js, ServerRoute(server_id=server_id, org_id=server.org_id,
                                                upstream=found.upstream, version=server.version))
            continue
        async with server_lock(ctx.pool, server_id) as conn:
            current = await storage.find_server(conn, server_id)
            if current is None or current.desired != "running" or current.version is None:
                continue
            version = await storage.find_version(conn, server_id, current.version)
            if version is None:
                continue
            ctx.log.warning("server %s should run version %s: starting it", server_id, current.version)
            try:
                await actor.start_checked(ctx, current, version)
            except DeployRefused as refused:
                with contextlib.suppress(BackendError):
                    await backend.stop(server_id)  # a runner that failed its check serves nobody
                await drop_route(ctx.js, server_id)
                await storage.set_state(conn, server_id, state="failed", detail=refused.detail)
                await announce(ctx, current, "failed", current.version, refused.detail)
            else:
                if current.state != "running":
                    await storage.set_state(conn, server_id, state="running")
                    await announce(ctx, current, "running", current.version)


def _failed(refused: DeployRefused) -> Failed:
    return Failed(code=refused.code, detail=refused.detail)


ISOLATION_LOG: dict[Isolation, str] = {
    "container": "the generated code runs in a container with no network, read-only, unprivileged; "
                 "upstream calls and secrets stay with the runner's front",
    "sandbox": "the generated code runs in a bubblewrap sandbox (a user of its own, no network, read-only root); "
               "upstream calls and secrets stay with the runner's front",
    "process": "this platform runs generated code WITHOUT a sandbox (BMMS_ALLOW_UNSANDBOXED_CODE): "
               "for development only",
}
"""The deploy step's line on where the server's generated code runs."""


def create_actor(backend: Backend | None = None) -> Actor:
    """The deployer actor (with the backend the settings choose, unless one is given)."""
    actor = DeployerActor(backend)

    @actor.consumer(DEPLOYER_CHECKED, on_park=fail_step_when_parked("deploy", "deploying"))
    async def deploy(event: AnyBuildEvent, ctx: Context) -> None:
        if not isinstance(event, BuildChecked):
            return
        ids = {"build_id": event.build_id, "org_id": event.org_id}
        await start_step(ctx, event, "deploy")
        backend = actor.runner_backend
        await emit(ctx, LogLine(**ids, at=utc_now(), step="deploy",
                                level="warning" if backend.isolation == "process" else "info",
                                message=ISOLATION_LOG[backend.isolation]), "log", "deploy:isolation")
        try:
            async with heartbeat(ctx):
                server, version = await deploy_build(actor, ctx, event)
        except DeployRefused as refused:
            await fail_step(ctx, event, "deploy", refused.code, refused.detail)
            return
        await warn_missing_secrets(ctx, event, server)
        await emit(ctx, LogLine(**ids, at=utc_now(), step="deploy", level="info",
                                message=f"version {version} answers an authenticated tools/list at {server.url}"),
                   "log", "deploy:healthy")
        await emit(ctx, StepChanged(**ids, at=utc_now(), step="deploy", state="finished"), "step", "deploy:finished")
        await emit(ctx, BuildDeployed(
            **ids, at=utc_now(), url=server.url, server_id=server.server_id, version=version,
            backend=backend.name, isolation=backend.isolation, install=install_snippets(server.name, server.url),
        ), "deployed", "deployed")

    async def info(conn: asyncpg.Connection, server: storage.Server) -> ServerReply:
        return ServerReply(server=storage.server_info(server, await storage.versions(conn, server.server_id),
                                                      actor.runner_backend.isolation))

    @actor.rpc(LIST_SERVERS)
    async def list_servers(request: ListServers, ctx: Context) -> ListServersReply:
        async with ctx.pool.acquire() as conn:
            servers = await storage.list_servers(conn, request.org_id)
            return ServerList(servers=tuple([(await info(conn, s)).server for s in servers]))

    @actor.rpc(GET_SERVER)
    async def get_server(request: GetServer, ctx: Context) -> GetServerReply:
        async with ctx.pool.acquire() as conn:
            server = await storage.find_server(conn, request.server_id, request.org_id)
            if server is None or server.desired == "deleted":
                return Failed(code=FailureCode.NOT_FOUND, detail=f"no server {request.server_id} in this organisation")
            return await info(conn, server)

    @actor.rpc(CONTROL_SERVER)
    async def control_server(request: ControlServer, ctx: Context) -> ControlServerReply:
        try:
            server = await control(actor, ctx, request)
        except DeployRefused as refused:
            return _failed(refused)
        except BackendError as exc:
            return Failed(code=FailureCode.UNAVAILABLE, detail=f"the {actor.runner_backend.name} backend: {exc}")
        ctx.log.info("server %s: %s by %s", request.server_id, request.action, request.requested_by or "-")
        async with ctx.pool.acquire() as conn:
            return await info(conn, server)

    @actor.rpc(GET_SERVER_LOGS)
    async def server_logs(request: GetServerLogs, ctx: Context) -> GetServerLogsReply:
        async with ctx.pool.acquire() as conn:
            server = await storage.find_server(conn, request.server_id, request.org_id)
        if server is None or server.desired == "deleted":
            return Failed(code=FailureCode.NOT_FOUND, detail=f"no server {request.server_id} in this organisation")
        lines = await actor.runner_backend.logs(server.server_id, request.tail)
        return ServerLogs(server_id=server.server_id, lines=tuple(lines))

    @actor.rpc(RESOLVE_SERVER)
    async def resolve_server(request: ResolveServer, ctx: Context) -> ResolveServerReply:
        async with ctx.pool.acquire() as conn:
            server = await storage.find_server(conn, request.server_id)
            if server is None or server.desired == "deleted":
                return Failed(code=FailureCode.NOT_FOUND, detail=f"no server {request.server_id}")
            current = None if server.version is None else await storage.find_version(
                conn, server.server_id, server.version)
        return ServerOwner(server_id=server.server_id, org_id=server.org_id, url=server.url,
                           tool_names=current.tools if current else ())

    # --- server secrets (values come in, never go out: replies, events and log lines carry names) ---

    async def live_server(conn: asyncpg.Connection, org_id: str, server_id: str) -> storage.Server | None:
        server = await storage.find_server(conn, server_id, org_id)
        return None if server is None or server.desired == "deleted" else server

    async def restarted(ctx: Context, server_id: str, names: Iterable[str], what: str) -> bool | Failed:
        try:
            return await restart_for_secrets(actor, ctx, server_id, names)
        except DeployRefused as refused:
            return Failed(code=refused.code, detail=f"{what}, but server {server_id} did not restart with it: "
                                                    f"{refused.detail}")
        except BackendError as exc:
            return Failed(code=FailureCode.UNAVAILABLE, detail=f"{what}, but the {actor.runner_backend.name} "
                                                               f"backend could not restart server {server_id}: {exc}")

    @actor.rpc(SET_SERVER_SECRET)
    async def set_server_secret(request: SetServerSecret, ctx: Context) -> SetServerSecretReply:
        problem = server_secrets.value_problem(request.value)
        if problem is not None:
            return Failed(code=FailureCode.INVALID, detail=problem, field="value")
        try:
            async with ctx.pool.acquire() as conn:
                server = await live_server(conn, request.org_id, request.server_id)
                if server is None:
                    return Failed(code=FailureCode.NOT_FOUND, detail=f"no server {request.server_id} in this "
                                                                     "organisation")
                updated_at = await server_secrets.put_secret(conn, actor.secret_box, server_id=server.server_id,
                                                             name=request.name, value=request.value,
                                                             by=request.requested_by)
        except server_secrets.SecretsUnavailable as exc:
            return Failed(code=FailureCode.UNAVAILABLE, detail=str(exc))
        ctx.log.info("server %s: secret %s set by %s", server.server_id, request.name, request.requested_by or "-")
        done = await restarted(ctx, server.server_id, (request.name,), f"secret {request.name} is stored")
        if isinstance(done, Failed):
            return done
        return ServerSecretSet(server_id=server.server_id, name=request.name,
                               updated_at=server_secrets.rfc3339(updated_at), restarted=done)

    @actor.rpc(LIST_SERVER_SECRETS)
    async def list_server_secrets(request: ListServerSecrets, ctx: Context) -> ListServerSecretsReply:
        async with ctx.pool.acquire() as conn:
            server = await live_server(conn, request.org_id, request.server_id)
            if server is None:
                return Failed(code=FailureCode.NOT_FOUND, detail=f"no server {request.server_id} in this organisation")
            have = await server_secrets.stored(conn, server.server_id)
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

    @actor.rpc(DELETE_SERVER_SECRET)
    async def delete_server_secret(request: DeleteServerSecret, ctx: Context) -> DeleteServerSecretReply:
        async with ctx.pool.acquire() as conn:
            server = await live_server(conn, request.org_id, request.server_id)
            if server is None:
                return Failed(code=FailureCode.NOT_FOUND, detail=f"no server {request.server_id} in this organisation")
            if not await server_secrets.delete_secret(conn, server.server_id, request.name):
                return Failed(code=FailureCode.NOT_FOUND, detail=f"server {server.server_id} has no secret "
                                                                 f"{request.name}")
        ctx.log.info("server %s: secret %s deleted by %s", server.server_id, request.name,
                     request.requested_by or "-")
        done = await restarted(ctx, server.server_id, (request.name,), f"secret {request.name} is deleted")
        if isinstance(done, Failed):
            return done
        return ServerSecretDeleted(server_id=server.server_id, name=request.name, restarted=done)

    @actor.rpc(STAGE_BUILD_SECRETS)
    async def stage_build_secrets(request: StageBuildSecrets, ctx: Context) -> StageBuildSecretsReply:
        for name, value in sorted(request.secrets.items()):
            problem = server_secrets.value_problem(value)
            if problem is not None:
                return Failed(code=FailureCode.INVALID, detail=f"secret {name}: {problem}", field=f"secrets.{name}")
        try:
            async with ctx.pool.acquire() as conn:
                server_id = await server_secrets.stage_or_put(
                    conn, actor.secret_box, org_id=request.org_id, build_id=request.build_id,
                    values=request.secrets, by=request.requested_by,
                )
        except server_secrets.SecretsUnavailable as exc:
            return Failed(code=FailureCode.UNAVAILABLE, detail=str(exc))
        names = tuple(sorted(request.secrets))
        ctx.log.info("build %s: secret(s) %s %s", request.build_id, ", ".join(names),
                     f"set on server {server_id}" if server_id else "kept until it deploys")
        if server_id is not None:
            done = await restarted(ctx, server_id, names, "the build's secrets are stored")
            if isinstance(done, Failed):
                return done
        return BuildSecretsStaged(build_id=request.build_id, names=names, server_id=server_id)

    return actor
