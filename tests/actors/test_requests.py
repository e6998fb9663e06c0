"""The Requester (actors.runtime.requests): request/reply over one reply subscription, with nats-py's failures,
on a real nats-server; and the registry's header-less direct get of a KV value through it."""

from __future__ import annotations

import asyncio
import secrets

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from actors.runtime.bus import call
from actors.runtime.codec import decode, encode
from actors.runtime.requests import Requester
from bus_schemas.base import Failed
from bus_schemas.builds import BuildSummary, GetBuild
from bus_schemas.registry import BUILD_SUMMARIES, GET_BUILD, build_summary_key


async def started(nc: Client) -> Requester:
    requester = Requester(nc)
    await requester.start()
    return requester


async def test_concurrent_requests_each_get_their_own_reply(admin_nc: Client) -> None:
    subject = f"test.echo.{secrets.token_hex(4)}"

    async def echo(msg: Msg) -> None:
        await asyncio.sleep(0.001 * (int(msg.data) % 7))  # answer out of order
        await msg.respond(b"re:" + msg.data)

    await admin_nc.subscribe(subject, cb=echo)
    requester = await started(admin_nc)
    replies = await asyncio.gather(*(requester.request(subject, str(i).encode(), timeout=5) for i in range(200)))
    assert [r.data for r in replies] == [f"re:{i}".encode() for i in range(200)]
    assert not requester._waiting  # nothing left behind


async def test_no_responders_and_timeouts_fail_like_nats_py(admin_nc: Client) -> None:
    requester = await started(admin_nc)
    with pytest.raises(nats.errors.NoRespondersError):
        await requester.request(f"test.nobody.{secrets.token_hex(4)}", b"", timeout=5)
    silent = f"test.silent.{secrets.token_hex(4)}"

    async def ignore(msg: Msg) -> None:
        del msg  # takes the request, never answers

    await admin_nc.subscribe(silent, cb=ignore)
    loop = asyncio.get_running_loop()
    started_at = loop.time()
    with pytest.raises(nats.errors.TimeoutError):
        await requester.request(silent, b"", timeout=0.2)
    assert 0.2 <= loop.time() - started_at < 2
    assert not requester._waiting
    # through `call`, as the gateway asks: both are transport failures, reported as values
    reply = await call(requester, GET_BUILD, GetBuild(org_id="org-none", build_id="b1"), timeout=5)
    assert isinstance(reply, Failed) and reply.code == "unavailable" and "no planner actor" in reply.detail


async def test_direct_get_answers_the_value_alone_or_a_404(admin_nc: Client) -> None:
    org, build = f"org{secrets.token_hex(3)}", f"b{secrets.token_hex(3)}"
    summary = BuildSummary(build_id=build, org_id=org, name="x", status="requested", created_at="2026-11-25T00:00:00Z",
                           updated_at="2026-11-25T00:00:00Z", last_seq=3)
    kv = await admin_nc.jetstream().key_value(BUILD_SUMMARIES.name)
    await kv.put(build_summary_key(org, build), encode(summary))
    requester = await started(admin_nc)
    answer = await requester.request(*BUILD_SUMMARIES.direct_get(build_summary_key(org, build)), timeout=5)
    assert answer.headers is None  # no_hdr: nothing for the reader to parse
    assert decode(BuildSummary, answer.data) == summary
    missing = await requester.request(*BUILD_SUMMARIES.direct_get(build_summary_key(org, "nope")), timeout=5)
    assert missing.headers is not None and missing.headers.get("Status") == "404" and missing.data == b""
