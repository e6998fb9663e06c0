"""Metering on the real stack: helpers to publish the deployer's server events, runners' usage events and
build events the way their publishers do, and to read what metering recorded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

import actors.metering
from actors.metering.publisher import QuotaPublisher
from actors.metering.quotas import default_plan
from actors.runtime.actor import utc_now
from actors.runtime.bus import call, publish_event
from actors.runtime.codec import encode
from actors.runtime.storage import apply_migrations
from bus_schemas.base import Failed, FailureCode
from bus_schemas.registry import GET_QUOTA, METERING_USAGE, SERVER_EVENTS, TOOL_USAGE
from bus_schemas.servers import ServerChanged, ServerState
from bus_schemas.usage import GetQuota, ToolCalled
from tests.conftest import Stack, eventually


def new_id(prefix: str) -> str:
    """A fresh subject-safe id, so tests sharing the session's stream and tables never meet."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


async def server_changed(js: JetStreamContext, org: str, server: str, state: ServerState = "running") -> None:
    """What the deployer publishes when a server's state changes."""
    event = ServerChanged(org_id=org, server_id=server, state=state, version=1,
                          url=f"http://127.0.0.1/servers/{server}/mcp", at=utc_now())
    await publish_event(js, SERVER_EVENTS.subject(org=org, server=server), event, msg_id=new_id("sc"))


def tool_call(org: str, server: str, n: int, *, tool: str | None = None) -> ToolCalled:
    """The n-th tool call of a server: tools t0..t2, every 7th an error, n % 100 bytes, 1.5 ms."""
    return ToolCalled(event_id=f"{server}-{n}", org_id=org, server_id=server, tool=tool or f"t{n % 3}",
                      duration_ms=1.5, status="error" if n % 7 == 0 else "ok", bytes_out=n % 100, at=utc_now())


@dataclass
class Published:
    stored: int
    duplicates: int
    """Re-publications JetStream itself recognised by `Nats-Msg-Id`."""


async def publish_calls(js: JetStreamContext, calls: Sequence[ToolCalled], *, with_msg_id: bool = True) -> Published:
    """Publish tool calls as a runner does (subject of the server, `Nats-Msg-Id` = event id), all in flight at
    once; `with_msg_id=False` is a re-publication JetStream can no longer recognise (after its window)."""
    futures = []
    for c in calls:
        headers = {"Nats-Msg-Id": c.event_id} if with_msg_id else None
        futures.append(await js.publish_async(TOOL_USAGE.subject(server=c.server_id), encode(c), headers=headers))
    acks = await asyncio.gather(*futures)
    duplicates = sum(1 for a in acks if a.duplicate)
    return Published(stored=len(acks) - duplicates, duplicates=duplicates)


async def counted_calls(db: asyncpg.Connection, org: str) -> int:
    """Tool calls metering counted for an organisation (all days)."""
    return int(await db.fetchval(
        "SELECT COALESCE(sum(calls), 0) FROM metering_tool_usage_daily WHERE org_id = $1", org))


async def usage_drained(nc: Client) -> bool:
    """Metering has consumed every usage event published so far: none waiting, none unacknowledged."""
    info = await nc.jetstream().consumer_info(METERING_USAGE.stream.name, METERING_USAGE.durable)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def wait_for_metering(nc: Client) -> None:
    """Until a metering actor answers (one started as a child process has to apply migrations first)."""

    async def answers() -> bool:
        reply = await call(nc, GET_QUOTA, GetQuota(org_id="nobody"), timeout=2)
        return not (isinstance(reply, Failed) and reply.code == FailureCode.UNAVAILABLE)

    await eventually(answers, timeout=60, interval=0.2)


@pytest.fixture(autouse=True)
async def metering_tables(db: asyncpg.Connection) -> None:
    """Metering's tables, as `bmms migrate` makes them (tests read them before an actor may have started)."""
    await apply_migrations(db, "metering", Path(actors.metering.__file__).parent / "migrations")


@pytest.fixture
async def pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    yield p
    await p.close()


@pytest.fixture
def quotas(stack: Stack) -> QuotaPublisher:
    """A QUOTAS writer like the metering actor's, for changing plans the way billing does."""
    return QuotaPublisher(default_plan(stack.settings("metering")))
