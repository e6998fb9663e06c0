"""The platform on a real 3-node JetStream cluster (issue 17, point 1): `bmms migrate` gives every stream, bucket
and object store the replicas the settings ask for (existing ones too, or a clear refusal naming the setting),
and with three replicas the pipeline rides the loss of the server leading BUILDS, twice: every build completes
exactly once and a WebSocket reader of a build's events resumes without a gap."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets
from nats.aio.client import Client
from websockets.exceptions import ConnectionClosed

from actors.catalog import create_actor
from actors.runtime.bus import call, connect, provision
from bus_schemas.builds import BuildAccepted, BuildDeployed, SubmitBuild
from bus_schemas.identity import ApiKeyCreated
from bus_schemas.registry import (
    BUILDS,
    CONSUMERS,
    GET_SERVER,
    KV_BUCKETS,
    OBJECT_BUCKETS,
    STREAMS,
    SUBMIT_BUILD,
)
from bus_schemas.servers import GetServer, ServerReply
from gateway.config import GatewayConfig
from ops.cluster import ClusterMember, NatsCluster, running_cluster
from ops.infra import NATS_ROLES, new_nats_password
from ops.migrate import migrate
from ops.operator import OperatorError
from tests.actors.test_pipeline import CALCULATOR, pipeline
from tests.conftest import Stack, eventually, running
from tests.gateway.conftest import Gateway, bearer, gateway_settings, new_api_key, serving
from tests.support.builds import build_events

EVERY_STREAM = (
    *(s.name for s in STREAMS), *(f"OBJ_{b.name}" for b in OBJECT_BUCKETS), *(f"KV_{b.name}" for b in KV_BUCKETS)
)
"""The streams behind every declared stream, object store and key-value bucket."""

BUILDS_PER_WAVE = 3
MAX_RECONNECTS = 50
"""A reader gives up after this many reconnects (a gateway that refuses every one)."""


@pytest.fixture(scope="module")
def cluster(stack_root: Path) -> Iterator[NatsCluster]:
    passwords = {role: new_nats_password() for role in NATS_ROLES}
    with running_cluster(stack_root / f"cluster-{secrets.token_hex(4)}", passwords) as started:
        yield started


@pytest.fixture(scope="module")
async def cluster_stack(cluster: NatsCluster, database_url: str, stack_root: Path) -> Stack:
    """The test stack on the cluster (every client is given all three URLs), provisioned as a platform set up
    before replication was a setting: one replica of everything."""
    # a cluster has the `url` (all three) and `passwords` a Stack uses of its server
    stack = Stack(cluster, database_url, stack_root)  # type: ignore[arg-type]
    nc = await connect(stack.settings("admin"), "test-cluster-provision")
    try:
        await provision(nc.jetstream())
    finally:
        await nc.close()
    return stack


@pytest.fixture
async def cluster_admin(cluster_stack: Stack) -> AsyncIterator[Client]:
    nc = await connect(cluster_stack.settings("admin"), "test-cluster-admin")
    yield nc
    await nc.close()


async def replica_counts(nc: Client) -> dict[str, tuple[int, int]]:
    """Each stream's and durable consumer's configured replicas and how many servers hold it, caught up."""
    js = nc.jetstream()
    counts: dict[str, tuple[int, int]] = {}
    for name in EVERY_STREAM:
        info = await js.stream_info(name)
        peers = (info.cluster.replicas if info.cluster else None) or []
        counts[name] = (info.config.num_replicas or 1, 1 + sum(1 for p in peers if p.current))
    for consumer in CONSUMERS:
        cinfo = await js.consumer_info(consumer.stream.name, consumer.durable)
        peers = (cinfo.cluster.replicas if cinfo.cluster else None) or []
        counts[f"{consumer.stream.name}/{consumer.durable}"] = (
            cinfo.config.num_replicas or (await js.stream_info(consumer.stream.name)).config.num_replicas or 1,
            1 + sum(1 for p in peers if p.current),
        )
    return counts


async def test_migrate_gives_existing_streams_buckets_object_stores_and_consumers_the_replicas_set(
    cluster_stack: Stack, cluster_admin: Client
) -> None:
    before = await replica_counts(cluster_admin)
    assert set(before.values()) == {(1, 1)}, before

    await migrate(cluster_stack.settings("admin", nats_replicas=3), cluster_stack.database_url)

    after = await replica_counts(cluster_admin)
    assert set(after.values()) == {(3, 3)}, after
    assert set(after) == set(before)


async def test_more_replicas_than_cluster_members_are_refused_naming_the_setting(
    cluster_stack: Stack, cluster_admin: Client
) -> None:
    before = (await cluster_admin.jetstream().stream_info(BUILDS.name)).config.num_replicas
    with pytest.raises(OperatorError, match="BMMS_NATS_REPLICAS=5") as refused:
        await migrate(cluster_stack.settings("admin", nats_replicas=5), cluster_stack.database_url)
    assert "at most the number of JetStream servers" in str(refused.value)
    assert (await cluster_admin.jetstream().stream_info(BUILDS.name)).config.num_replicas == before


async def test_replicas_on_a_single_server_are_refused_naming_the_setting(stack: Stack, admin_nc: Client) -> None:
    with pytest.raises(OperatorError, match=r"BMMS_NATS_REPLICAS=3.*not supported in non-clustered mode"):
        await migrate(stack.settings("admin", nats_replicas=3), stack.database_url)
    assert (await admin_nc.jetstream().stream_info(BUILDS.name)).config.num_replicas == 1


# --- the pipeline through the loss of the server leading BUILDS ---


@dataclass
class Reader:
    """A WebSocket reader of one build's events, as a browser would be: it reconnects with `?after=<last seq>`
    whenever its socket ends before the build did."""

    build_id: str
    frames: list[dict[str, Any]] = field(default_factory=list)
    reconnects: int = 0
    end: tuple[int, str] | None = None

    async def read(self, gateway: Gateway, key: ApiKeyCreated) -> None:
        while self.end is None:
            after = f"?after={self.frames[-1]['seq']}" if self.frames else ""
            url = f"{gateway.ws_url}/v1/builds/{self.build_id}/stream{after}"
            try:
                async with websockets.connect(url, additional_headers=bearer(key), open_timeout=10) as ws:
                    async for raw in ws:
                        self.frames.append(json.loads(raw))
                    assert ws.close_code is not None
                    if ws.close_code == 1000:
                        self.end = (ws.close_code, ws.close_reason)
            except (ConnectionClosed, OSError, TimeoutError):
                pass  # the gateway lost its stream for a moment: connect again, from the last event seen
            if self.end is None:
                self.reconnects += 1
                assert self.reconnects <= MAX_RECONNECTS, f"the stream of {self.build_id} never resumed"


async def submit(nc: Client, org_id: str, name: str) -> str:
    accepted = await call(nc, SUBMIT_BUILD, SubmitBuild(org_id=org_id, requested_by="test", name=name,
                                                        source=CALCULATOR), timeout=10)
    assert isinstance(accepted, BuildAccepted), accepted
    return accepted.build_id


async def builds_leader(nc: Client) -> str:
    """The server leading the BUILDS stream (`$JS.API.STREAM.INFO.BUILDS` -> cluster.leader)."""

    async def leader() -> str | None:
        with contextlib.suppress(Exception):  # no leader while one is elected
            info = await nc.jetstream().stream_info(BUILDS.name)
            return info.cluster.leader if info.cluster else None
        return None

    named = await eventually(leader, timeout=30, interval=0.1)
    assert isinstance(named, str)
    return named


def under_way(readers: list[Reader]) -> bool:
    """Whether some build has moved past its request and not finished yet: the moment to pull a server."""
    return any(len(r.frames) > 2 and r.end is None and r.frames[-1]["kind"] not in ("deployed", "failed")
               for r in readers)


async def kill_builds_leader_mid_build(cluster: NatsCluster, nc: Client, readers: list[Reader]) -> ClusterMember:
    """SIGKILL the server leading BUILDS while a build of `readers` is under way."""

    async def ready() -> bool:
        return under_way(readers)

    await eventually(ready, timeout=60, interval=0.02)
    victim = cluster.member(await builds_leader(nc))
    cluster.kill(victim)
    return victim


async def ended(readers: list[Reader], tasks: list[asyncio.Task[None]], timeout: float = 120) -> None:
    """Wait until every reader's socket closed normally, its build finished (a bounded wait)."""
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    for task in done:
        task.result()
    assert not pending, [(r.build_id, r.reconnects, [f["kind"] for f in r.frames][-3:]) for r in readers]


async def test_builds_complete_once_and_streams_resume_while_the_servers_leading_builds_are_killed(
    cluster: NatsCluster, cluster_stack: Stack, database_url: str
) -> None:
    stack = cluster_stack
    await migrate(stack.settings("admin", nats_replicas=3), database_url)
    admin = await connect(stack.settings("admin"), "test-cluster-builds")
    killed: list[str] = []
    try:
        async with contextlib.AsyncExitStack() as platform:
            await platform.enter_async_context(running(create_actor("auth"), stack.settings("auth")))
            await platform.enter_async_context(pipeline(stack))
            gateway = await platform.enter_async_context(
                serving(gateway_settings(stack), GatewayConfig(feed_grace_seconds=0.3)))
            key = await new_api_key(admin, f"cluster-{secrets.token_hex(3)}")
            readers: dict[str, Reader] = {}

            async def wave(n: int) -> tuple[list[Reader], list[asyncio.Task[None]]]:
                ids = [await submit(admin, key.org_id, f"calc-{n}-{i}") for i in range(BUILDS_PER_WAVE)]
                started = [Reader(build_id) for build_id in ids]
                readers.update((r.build_id, r) for r in started)
                return started, [asyncio.create_task(r.read(gateway, key)) for r in started]

            # First wave: the server leading BUILDS dies mid-build; the wave completes on the other two.
            first, reading = await wave(1)
            victim = await kill_builds_leader_mid_build(cluster, admin, first)
            killed.append(victim.name)
            await ended(first, reading)
            # It comes back and catches up; then the server leading BUILDS now dies mid-build of a second wave.
            cluster.start(victim)
            await asyncio.to_thread(cluster.wait_healthy)
            second, reading = await wave(2)
            victim = await kill_builds_leader_mid_build(cluster, admin, second)
            killed.append(victim.name)
            await ended(second, reading)
            cluster.start(victim)
            await asyncio.to_thread(cluster.wait_healthy)

            histories = {b: await build_events(admin.jetstream(), key.org_id, b, until=BuildDeployed) for b in readers}
            for build_id, history in histories.items():
                kinds = [r.kind for r in history]
                deployed = [r.event for r in history if isinstance(r.event, BuildDeployed)]
                assert len(deployed) == 1, (build_id, kinds)
                for once in ("requested", "planned", "generated", "checked", "deployed"):
                    assert kinds.count(once) == 1, (build_id, once, kinds)
                server = await call(admin, GET_SERVER, GetServer(org_id=key.org_id, server_id=deployed[0].server_id),
                                    timeout=10)
                assert isinstance(server, ServerReply), server
                assert [v.version for v in server.server.versions] == [1], server.server.versions
                assert deployed[0].version == 1

                # The reader saw every event of the build once, in order, across its reconnects.
                reader = readers[build_id]
                assert reader.end == (1000, "deployed"), (build_id, reader.end)
                seqs = [f["seq"] for f in reader.frames]
                assert seqs == sorted(set(seqs)) and len(seqs) == len(history), (build_id, seqs, kinds)
                assert [f["kind"] for f in reader.frames] == kinds
    finally:
        await admin.close()
        for member in cluster.members:
            cluster.start(member)
