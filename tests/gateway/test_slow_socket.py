"""A socket that stops reading is dropped once it falls too far behind; the others keep up."""

from __future__ import annotations

import asyncio
import json

import websockets
from nats.aio.client import Client

from bus_schemas.identity import ApiKeyCreated
from gateway.config import GatewayConfig
from tests.conftest import Stack, eventually
from tests.gateway.conftest import bearer, gateway_settings, new_api_key, serving_with_client
from tests.gateway.test_stream import publish_log, unfinished_build


async def test_a_socket_that_stops_reading_is_dropped_and_others_get_every_frame(
    stack: Stack, auth_actor: None, planner_actor: None, module_admin: Client
) -> None:
    key: ApiKeyCreated = await new_api_key(module_admin, "gateway-tests-slow")
    async with serving_with_client(
        gateway_settings(stack), GatewayConfig(max_socket_lag=30, feed_grace_seconds=0.1)
    ) as (gw, http):
        build_id = await unfinished_build(http, key, module_admin)
        url = f"{gw.ws_url}/v1/builds/{build_id}/stream"
        # max_queue=1: the client library stops reading after one frame, so TCP pushes back.
        async with (
            websockets.connect(url, additional_headers=bearer(key), max_queue=1, max_size=None) as stalled,
            websockets.connect(url, additional_headers=bearer(key), max_size=None) as healthy,
        ):
            await stalled.recv()
            big = "x" * 60_000
            seqs: list[int] = []
            feed = gw.services.feeds.get(key.org_id, build_id)
            assert feed is not None

            async def stalled_socket_dropped() -> bool:
                return len(feed.watchers) == 1

            async def both_sockets_watching() -> bool:
                return len(feed.watchers) == 2

            # A socket joins its feed after the handshake: wait until the healthy one has joined too.
            await eventually(both_sockets_watching)

            async with asyncio.timeout(60):
                # In rounds the healthy client keeps up with, until the stalled one is dropped
                # (the kernel buffers between the ends hold a few MB before TCP pushes back).
                while len(feed.watchers) == 2:
                    last = 0
                    for i in range(20):
                        last = await publish_log(module_admin, key, build_id, f"{i} {big}")
                    while not seqs or seqs[-1] < last:
                        seqs.append(json.loads(await healthy.recv())["seq"])
            await eventually(stalled_socket_dropped)
            assert seqs == sorted(set(seqs)) and len(seqs) >= 24
            assert [s for s in seqs if s <= seqs[3]] == seqs[:4]  # the history came first, in order
