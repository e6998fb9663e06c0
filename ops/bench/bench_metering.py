"""Metering benchmark: the metering actor's sustained usage events per second, until the totals are exact.

It starts its own nats-server (nats.conf) and PostgreSQL (embedded) in a temp dir, provisions JetStream,
records a few servers the way the deployer announces them, and runs `bmms actor metering` as its own
process (uvloop, as in production). Then:

1. live: N tool-call events (plus a share of re-published duplicates JetStream cannot recognise, so
   metering's own de-duplication works) are published at full speed while metering consumes; the figure is
   events delivered / seconds from the first publish until the totals in Postgres are exact and the
   consumer is drained.
2. backlog: metering is stopped, N more events are published, metering is started again; the figure is
   events / seconds from its first answer until the totals are exact (consumption alone, no publisher
   competing for the cores).

Every figure comes from one run on this machine. Run: `.venv/bin/python -m ops.bench.bench_metering`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from nats.aio.client import Client

import actors.metering
from actors.runtime.actor import utc_now
from actors.runtime.bus import call, connect, provision, publish_event
from actors.runtime.codec import encode
from actors.runtime.settings import Settings
from actors.runtime.storage import apply_migrations
from bus_schemas.base import Failed, FailureCode
from bus_schemas.registry import GET_QUOTA, METERING_USAGE, SERVER_EVENTS, TOOL_USAGE
from bus_schemas.servers import ServerChanged
from bus_schemas.usage import GetQuota, ToolCalled
from ops.infra import NATS_ROLES, NatsServer, new_nats_password, start_nats, start_postgres

TARGET_EVENTS_PER_SECOND = 5_000
ORGS = 5
SERVERS_PER_ORG = 4
TOOLS = ("search", "fetch", "create", "update", "delete")


@dataclass
class Bench:
    nats: NatsServer
    database_url: str
    nc: Client
    db: asyncpg.Connection
    servers: list[tuple[str, str]]
    """(org, server) pairs metering knows."""

    def settings(self, role: str) -> Settings:
        return Settings(nats_url=self.nats.url, nats_user=role, nats_password=self.nats.passwords[role],
                        database_url=self.database_url)


class MeteringProcess:
    """`bmms actor metering` as its own process."""

    def __init__(self, bench: Bench, log_path: Path) -> None:
        env = {
            **os.environ,
            "BMMS_NATS_URL": bench.nats.url,
            "BMMS_NATS_USER": "metering",
            "BMMS_NATS_PASSWORD": bench.nats.passwords["metering"],
            "BMMS_DATABASE_URL": bench.database_url,
            "BMMS_LOG_LEVEL": "WARNING",
            # The bench measures counting, not quota crossings.
            "BMMS_QUOTA_TOOL_CALLS_PER_MONTH": "-1",
        }
        with log_path.open("ab") as log:  # its log lines, for when a phase does not finish
            self.process = subprocess.Popen([sys.executable, "-m", "ops.cli", "actor", "metering"], env=env,
                                            stdout=log, stderr=subprocess.STDOUT)

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used so far (from /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)


async def until(check: Callable[[], Awaitable[object]], timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {timeout} s")
        await asyncio.sleep(interval)


async def metering_answers(nc: Client) -> bool:
    reply = await call(nc, GET_QUOTA, GetQuota(org_id="bench"), timeout=2)
    return not (isinstance(reply, Failed) and reply.code == FailureCode.UNAVAILABLE)


async def counted(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT COALESCE(sum(calls), 0) FROM metering_tool_usage_daily"))


async def drained(nc: Client) -> bool:
    info = await nc.jetstream().consumer_info(METERING_USAGE.stream.name, METERING_USAGE.durable)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


def events(bench: Bench, first: int, count: int) -> list[ToolCalled]:
    at = utc_now()
    calls = []
    for n in range(first, first + count):
        org, server = bench.servers[n % len(bench.servers)]
        calls.append(ToolCalled(event_id=f"e{n}", org_id=org, server_id=server, tool=TOOLS[n % len(TOOLS)],
                                duration_ms=12.5, status="error" if n % 50 == 0 else "ok", bytes_out=512, at=at))
    return calls


async def publish(nc: Client, calls: list[ToolCalled], duplicates: list[ToolCalled]) -> float:
    """Publish as runners do (Nats-Msg-Id = event id), all in flight at once; then the duplicates without
    the header (as after JetStream's de-duplication window). Returns the seconds it took."""
    js = nc.jetstream()
    started = time.monotonic()
    futures = [
        await js.publish_async(TOOL_USAGE.subject(server=c.server_id), encode(c), headers={"Nats-Msg-Id": c.event_id})
        for c in calls
    ]
    futures += [await js.publish_async(TOOL_USAGE.subject(server=c.server_id), encode(c)) for c in duplicates]
    await asyncio.gather(*futures)
    return time.monotonic() - started


async def exact(bench: Bench, total: int) -> bool:
    now = await counted(bench.db)
    if now > total:
        raise AssertionError(f"counted {now} > {total}: a duplicate was counted")
    return now == total and await drained(bench.nc)


async def run(root: Path, n: int, duplicate_share: float) -> list[str]:
    passwords = {role: new_nats_password() for role in NATS_ROLES}
    nats_server = start_nats(root / "nats", passwords)
    pg = start_postgres(root / "postgres", delete_on_stop=True)
    lines = [f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; metering: one process (uvloop)"]
    try:
        admin = Settings(nats_url=nats_server.url, nats_user="admin", nats_password=passwords["admin"])
        nc = await connect(admin, "bench-metering")
        await provision(nc.jetstream())
        db = await asyncpg.connect(pg.dsn)
        await apply_migrations(db, "metering", Path(actors.metering.__file__).parent / "migrations")
        servers = [(f"org{o}", f"srv{o}x{s}") for o in range(ORGS) for s in range(SERVERS_PER_ORG)]
        bench = Bench(nats_server, pg.dsn, nc, db, servers)
        for org, server in servers:
            changed = ServerChanged(org_id=org, server_id=server, state="running", version=1, url="http://x/mcp",
                                    at=utc_now())
            await publish_event(nc.jetstream(), SERVER_EVENTS.subject(org=org, server=server), changed,
                                msg_id=f"{server}:running")
        rng = random.Random(5)
        dup_count = int(n * duplicate_share)

        # 1. live: publish at full speed while metering consumes.
        metering = MeteringProcess(bench, root / "metering.log")
        try:
            await until(lambda: metering_answers(nc), timeout=60, interval=0.1)
            await until(lambda: exact(bench, 0), timeout=30)  # the servers are recorded, nothing counted yet
            live = events(bench, 0, n)
            cpu_before = metering.cpu_seconds()
            started = time.monotonic()
            publish_seconds = await publish(nc, live, rng.sample(live, dup_count))
            await until(lambda: exact(bench, n), timeout=600, interval=0.02)
            live_seconds = time.monotonic() - started
            live_cpu = metering.cpu_seconds() - cpu_before
        finally:
            metering.stop()
        delivered = n + dup_count
        lines += [
            f"live: {n:,} events + {dup_count:,} re-published duplicates, published in {publish_seconds:.2f} s "
            f"({delivered / publish_seconds:,.0f}/s)",
            f"  exact totals after {live_seconds:.2f} s: {delivered / live_seconds:,.0f} events/s sustained "
            f"({n / live_seconds:,.0f} unique/s); metering used {live_cpu:.2f} CPU s "
            f"({delivered / max(live_cpu, 1e-9):,.0f} events per CPU second)",
        ]

        # 2. backlog: everything published first, then metering starts and works through it.
        backlog = events(bench, n, n)
        await publish(nc, backlog, rng.sample(backlog, dup_count))
        metering = MeteringProcess(bench, root / "metering.log")
        try:
            await until(lambda: metering_answers(nc), timeout=60, interval=0.02)
            cpu_before = metering.cpu_seconds()
            started = time.monotonic()
            await until(lambda: exact(bench, 2 * n), timeout=600, interval=0.02)
            backlog_seconds = time.monotonic() - started
            backlog_cpu = metering.cpu_seconds() - cpu_before
        finally:
            metering.stop()
        lines.append(
            f"backlog: {delivered:,} events consumed to exact totals in {backlog_seconds:.2f} s: "
            f"{delivered / backlog_seconds:,.0f} events/s; metering used {backlog_cpu:.2f} CPU s"
        )
        rows = await db.fetchval("SELECT count(*) FROM metering_tool_calls_seen")
        lines.append(f"totals exact: {await counted(db):,} counted = {2 * n:,} unique events ({rows:,} ids seen)")
        worst = min(delivered / live_seconds, delivered / backlog_seconds)
        met = "met" if worst >= TARGET_EVENTS_PER_SECOND else "MISSED"
        lines.append(f"target >= {TARGET_EVENTS_PER_SECOND:,} events/s with exact totals: {met} "
                     f"(lower of the two: {worst:,.0f}/s)")
        await db.close()
        await nc.close()
    finally:
        pg.stop()
        nats_server.stop()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000, help="unique events per phase (default 50,000)")
    parser.add_argument("--duplicates", type=float, default=0.05, help="share re-published (default 0.05)")
    args = parser.parse_args()
    logging.getLogger("bmms.bus").setLevel(logging.ERROR)  # its connection closing at the end is expected
    with tempfile.TemporaryDirectory(prefix="bmms-bench-metering-") as root:
        try:
            lines = asyncio.run(run(Path(root), args.events, args.duplicates))
        except Exception:
            log = Path(root) / "metering.log"
            if log.exists():
                print(log.read_text()[-4000:], file=sys.stderr)
            raise
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
