"""The build WebSocket: whole history then live, resume without gap or duplicate, one consumer per build, closed
normally (1000, the kind as reason) after the build's last event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from nats.aio.client import Client
from websockets.asyncio.client import ClientConnection

from actors.runtime.actor import utc_now
from actors.runtime.bus import publish_event
from actors.runtime.logs import new_trace_id
from bus_schemas.builds import BuildDeployed, LogLine
from bus_schemas.identity import ApiKeyCreated
from bus_schemas.registry import BUILD_EVENTS, BUILDS, build_subject
from gateway.config import GatewayConfig
from tests.conftest import Stack, eventually
from tests.gateway.conftest import Gateway, bearer, gateway_settings, serving

PLAIN = {"name": "streamed", "source": {"kind": "plain_words", "text": "a server to stream"}}


@pytest.fixture(scope="module", params=[True, False], ids=["fast path", "plain Litestar and nats-py"])
async def gateway(request: pytest.FixtureRequest, stack: Stack, auth_actor: None, planner_actor: None
                  ) -> AsyncIterator[Gateway]:
    """Every test here on both of the gateway's paths: its fast path (raw frames, its own requester) and the
    plain one it falls back to with BMMS_GATEWAY_FAST_PATH=0. A short grace period so the tests can watch an
    idle build's consumer go away."""
    settings = gateway_settings(stack, gateway_fast_path=request.param)
    async with serving(settings, GatewayConfig(feed_grace_seconds=0.3)) as gw:
        yield gw


async def failed_build(http: httpx.AsyncClient, key: ApiKeyCreated) -> str:
    """A build whose history is complete: the foundation planner fails every build at plan."""
    created = await http.post("/v1/builds", json=PLAIN, headers=bearer(key))
    assert created.status_code == 202, created.text
    build_id: str = created.json()["build_id"]

    async def failed() -> bool:
        return bool((await http.get(f"/v1/builds/{build_id}", headers=bearer(key))).json()["status"] == "failed")

    await eventually(failed)
    return build_id


async def unfinished_build(http: httpx.AsyncClient, key: ApiKeyCreated, nc: Client) -> str:
    """A build whose history has not ended: a failed build with its `failed` event purged from the stream, so
    a socket stays open and the tests publish its later events as the actors would."""
    build_id = await failed_build(http, key)
    await nc.jetstream().purge_stream(BUILDS.name, subject=build_subject(key.org_id, build_id, "failed"))
    return build_id


async def closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    """The close code and reason, once the server closed the socket (every frame before it read)."""
    async with asyncio.timeout(15):
        async for _ in ws:
            pass
    return ws.close_code, ws.close_reason


async def history_size(nc: Client, key: ApiKeyCreated, build_id: str) -> int:
    """How many events the build's history holds now (the planner's log lines vary with what it checks)."""
    info = await nc.jetstream().stream_info(BUILDS.name, subjects_filter=BUILD_EVENTS.wildcard(org=key.org_id,
                                                                                                 build=build_id))
    return sum((info.state.subjects or {}).values())


async def publish_log(nc: Client, key: ApiKeyCreated, build_id: str, message: str) -> int:
    """Publish one more event into the build's history, as an actor would; returns its sequence."""
    event = LogLine(build_id=build_id, org_id=key.org_id, at=utc_now(), step="deploy", level="info", message=message)
    return await publish_event(
        nc.jetstream(), build_subject(key.org_id, build_id, "log"), event, msg_id=f"{build_id}:{new_trace_id()}"
    )


def connect(gateway: Gateway, key: ApiKeyCreated, build_id: str, after: int | None = None) -> Any:
    query = f"?after={after}" if after is not None else ""
    return websockets.connect(
        f"{gateway.ws_url}/v1/builds/{build_id}/stream{query}", additional_headers=bearer(key), open_timeout=10
    )


async def frames_until(ws: ClientConnection, last_seq: int) -> list[dict[str, Any]]:
    """Frames up to and including the one with sequence `last_seq`."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(15):
        while not frames or frames[-1]["seq"] < last_seq:
            frames.append(json.loads(await ws.recv()))
    return frames


async def take(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(15):
        return [json.loads(await ws.recv()) for _ in range(count)]


async def build_consumers(nc: Client, org_id: str, build_id: str) -> int:
    """JetStream consumers reading this build's subjects."""
    wanted = BUILD_EVENTS.wildcard(org=org_id, build=build_id)
    infos = await nc.jetstream().consumers_info(BUILDS.name)
    return sum(1 for info in infos if info.config.filter_subject == wanted)


async def test_socket_gets_the_whole_history_in_order_then_live_events(
    gateway: Gateway, http: httpx.AsyncClient, key: ApiKeyCreated, module_admin: Client
) -> None:
    build_id = await unfinished_build(http, key, module_admin)
    size = await history_size(module_admin, key, build_id)
    async with connect(gateway, key, build_id) as ws:
        history = await take(ws, size)
        kinds = [f["kind"] for f in history]
        assert kinds[:2] == ["requested", "step"] and set(kinds[2:]) == {"log"}
        seqs = [f["seq"] for f in history]
        assert seqs == sorted(seqs) and len(set(seqs)) == size
        assert history[0]["subject"] == build_subject(key.org_id, build_id, "requested")
        assert history[0]["event"]["type"] == "build.requested.v1"
        assert history[0]["event"]["source"] == PLAIN["source"]

        # The build goes on: its next events arrive live.
        seq = await publish_log(module_admin, key, build_id, "deploying")
        (live,) = await take(ws, 1)
        assert live["seq"] == seq > seqs[-1]
        assert live["kind"] == "log" and live["event"]["message"] == "deploying"


async def test_socket_of_a_finished_build_sends_its_history_then_closes_normally_with_the_last_kind(
    gateway: Gateway, http: httpx.AsyncClient, key: ApiKeyCreated, module_admin: Client
) -> None:
    build_id = await failed_build(http, key)
    size = await history_size(module_admin, key, build_id)
    async with connect(gateway, key, build_id) as ws:
        history = await take(ws, size)
        assert history[-1]["kind"] == "failed"
        assert await closed(ws) == (1000, "failed")


async def test_live_socket_closes_normally_once_the_build_deploys(
    gateway: Gateway, http: httpx.AsyncClient, key: ApiKeyCreated, module_admin: Client
) -> None:
    build_id = await unfinished_build(http, key, module_admin)
    size = await history_size(module_admin, key, build_id)
    async with connect(gateway, key, build_id) as ws:
        await take(ws, size)
        deployed = BuildDeployed(build_id=build_id, org_id=key.org_id, at=utc_now(), url="http://127.0.0.1:1/mcp",
                                 server_id="s" + build_id[1:], version=1, backend="process", isolation="none")
        seq = await publish_event(module_admin.jetstream(), build_subject(key.org_id, build_id, "deployed"), deployed,
                                  msg_id=f"{build_id}:deployed")
        (last,) = await take(ws, 1)
        assert last["seq"] == seq and last["kind"] == "deployed"
        assert await closed(ws) == (1000, "deployed")


async def test_resumed_socket_gets_every_event_exactly_once(
    gateway: Gateway, http: httpx.AsyncClient, key: ApiKeyCreated, module_admin: Client
) -> None:
    build_id = await unfinished_build(http, key, module_admin)
    size = await history_size(module_admin, key, build_id)
    async with connect(gateway, key, build_id) as reference:
        first = await take(reference, size)
        async with connect(gateway, key, build_id) as ws:
            received = await take(ws, 2)
        # Disconnected mid-history; the build goes on.
        published = [await publish_log(module_admin, key, build_id, f"while away {i}") for i in range(3)]
        async with connect(gateway, key, build_id, after=received[-1]["seq"]) as ws:
            received += await frames_until(ws, published[-1])
            published += [await publish_log(module_admin, key, build_id, f"after resume {i}") for i in range(2)]
            received += await frames_until(ws, published[-1])
        everything = first + await frames_until(reference, published[-1])
    assert [f["seq"] for f in received] == [f["seq"] for f in everything]
    assert received == everything
    assert [f["seq"] for f in everything][size:] == published


async def test_sockets_of_one_build_share_one_consumer_which_goes_after_the_last_leaves(
    gateway: Gateway, http: httpx.AsyncClient, key: ApiKeyCreated, module_admin: Client
) -> None:
    build_id = await unfinished_build(http, key, module_admin)
    size = await history_size(module_admin, key, build_id)
    async with connect(gateway, key, build_id) as one, connect(gateway, key, build_id) as two:
        assert await take(one, size) == await take(two, size)
        feed = gateway.services.feeds.get(key.org_id, build_id)
        assert feed is not None and len(feed.watchers) == 2
        # frames go straight to uvicorn's protocol on the fast path only
        fast = gateway.services.settings.gateway_fast_path
        assert all((watcher.direct is not None) == fast for watcher in feed.watchers)
        assert await build_consumers(module_admin, key.org_id, build_id) == 1
        seq = await publish_log(module_admin, key, build_id, "to both")
        assert await take(one, 1) == await take(two, 1)
        assert feed.history[-1].seq == seq

    async def consumer_gone() -> bool:
        return await build_consumers(module_admin, key.org_id, build_id) == 0

    await eventually(consumer_gone)
    assert gateway.services.feeds.get(key.org_id, build_id) is None


async def test_socket_is_refused_without_a_key_or_for_another_organisations_build(
    gateway: Gateway, http: httpx.AsyncClient, key: ApiKeyCreated, other_key: ApiKeyCreated
) -> None:
    build_id = await failed_build(http, key)
    url = f"{gateway.ws_url}/v1/builds/{build_id}/stream"
    async with websockets.connect(url, open_timeout=10) as ws:
        async with asyncio.timeout(10):
            await ws.wait_closed()
        assert ws.close_code == 4401
    async with connect(gateway, other_key, build_id) as ws:
        async with asyncio.timeout(10):
            await ws.wait_closed()
        assert ws.close_code == 4404


async def test_browser_can_authenticate_with_the_bearer_subprotocol(
    gateway: Gateway, http: httpx.AsyncClient, key: ApiKeyCreated, module_admin: Client
) -> None:
    build_id = await failed_build(http, key)
    size = await history_size(module_admin, key, build_id)
    url = f"{gateway.ws_url}/v1/builds/{build_id}/stream"
    async with websockets.connect(url, subprotocols=["bearer", key.secret], open_timeout=10) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "bearer"
        assert len(await take(ws, size)) == size


async def test_live_frames_to_caught_up_sockets_are_written_straight_to_the_server_transport_on_the_fast_path(
    gateway: Gateway, http: httpx.AsyncClient, key: ApiKeyCreated, module_admin: Client
) -> None:
    build_id = await unfinished_build(http, key, module_admin)
    size = await history_size(module_admin, key, build_id)
    async with connect(gateway, key, build_id) as ws:
        await take(ws, size)
        feed = gateway.services.feeds.get(key.org_id, build_id)
        assert feed is not None
        (watcher,) = feed.watchers
        fast = gateway.services.settings.gateway_fast_path
        # Under uvicorn's sans-I/O protocol the fan-out bypasses ASGI; if an upgrade breaks that, say so. On the
        # plain path every frame goes through Litestar's send.
        assert (watcher.direct is not None) == fast
        before = watcher.direct_frames
        seq = await publish_log(module_admin, key, build_id, "direct")
        (frame,) = await take(ws, 1)
        assert frame["seq"] == seq and frame["event"]["message"] == "direct"
        assert watcher.direct_frames == before + (1 if fast else 0)


async def test_socket_that_opens_a_builds_feed_with_after_gets_only_later_events(
    gateway: Gateway, http: httpx.AsyncClient, key: ApiKeyCreated, module_admin: Client
) -> None:
    build_id = await unfinished_build(http, key, module_admin)
    assert gateway.services.feeds.get(key.org_id, build_id) is None  # this socket starts the feed
    last_seq = await publish_log(module_admin, key, build_id, "last of the history")
    resume_after = last_seq - 1  # everything but the last event of the history
    async with connect(gateway, key, build_id, after=resume_after) as ws:
        (last,) = await take(ws, 1)
        assert last["seq"] == last_seq and last["event"]["message"] == "last of the history"
        seq = await publish_log(module_admin, key, build_id, "next")
        (live,) = await take(ws, 1)
        assert live["seq"] == seq
