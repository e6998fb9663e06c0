"""The Requester (gateway.requester): request/reply over a NATS connection of its own, with nats-py's
failures, on a real nats-server; the registry's header-less direct get of a KV value through it; and what it
does when the server goes away and comes back."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from actors.runtime.bus import call
from actors.runtime.codec import decode, encode
from bus_schemas.base import Failed
from bus_schemas.builds import BuildSummary, GetBuild
from bus_schemas.registry import BUILD_SUMMARIES, GET_BUILD, build_summary_key
from gateway.requester import Requester, header_block, parse_headers
from ops.infra import NATS_ROLES, new_nats_password, start_nats
from runner_template.rpc import subscriptions_live
from tests.conftest import Stack


@pytest.fixture
async def gateway_requester(stack: Stack) -> AsyncIterator[Requester]:
    """A Requester as the gateway asks: its own NATS user, replies only under `_INBOX_gateway`."""
    requester = await Requester.for_settings(stack.settings("gateway"), "test-requests")
    assert isinstance(requester, Requester)
    yield requester
    await requester.close()


async def echo_on(nc: Client, subject: str) -> None:
    async def echo(msg: Msg) -> None:
        await asyncio.sleep(0.001 * (len(msg.data) % 7))  # answer out of order
        trace = (msg.headers or {}).get("Bmms-Trace-Id", "")
        await nc.publish(msg.reply, b"re:" + msg.data, headers={"Echo-Trace": trace} if trace else None)

    await nc.subscribe(subject, cb=echo)
    await subscriptions_live(nc)


async def test_concurrent_requests_each_get_their_own_reply(admin_nc: Client, gateway_requester: Requester) -> None:
    subject = f"rpc.builds.test_echo.{secrets.token_hex(4)}"  # a subject the gateway user may publish to
    await echo_on(admin_nc, subject)
    replies = await asyncio.gather(
        *(gateway_requester.request(subject, b"x" * i, timeout=5) for i in range(200))
    )
    assert [r.data for r in replies] == [b"re:" + b"x" * i for i in range(200)]
    assert all(r.headers is None for r in replies)
    assert not gateway_requester._waiting  # nothing left behind


async def test_headers_go_out_and_reply_headers_come_back(admin_nc: Client, gateway_requester: Requester) -> None:
    subject = f"rpc.builds.test_echo.{secrets.token_hex(4)}"
    await echo_on(admin_nc, subject)
    reply = await gateway_requester.request(subject, b"hi", timeout=5, headers={"Bmms-Trace-Id": "abc123"})
    assert reply.data == b"re:hi"
    assert reply.headers == {"Echo-Trace": "abc123"}


async def test_large_payloads_arrive_whole_however_the_socket_splits_them(
    admin_nc: Client, gateway_requester: Requester
) -> None:
    subject = f"rpc.builds.test_echo.{secrets.token_hex(4)}"
    await echo_on(admin_nc, subject)
    # protocol-looking bytes inside the payload must not confuse the parser
    payload = (b"\r\nMSG fake 1 9\r\nPING\r\n" + secrets.token_bytes(4000)) * 100
    replies = await asyncio.gather(*(gateway_requester.request(subject, payload + bytes([i]), timeout=10)
                                     for i in range(5)))
    assert [r.data for r in replies] == [b"re:" + payload + bytes([i]) for i in range(5)]


async def test_no_responders_and_timeouts_fail_like_nats_py(admin_nc: Client, gateway_requester: Requester) -> None:
    with pytest.raises(nats.errors.NoRespondersError):
        await gateway_requester.request(f"rpc.builds.test_nobody.{secrets.token_hex(4)}", b"", timeout=5)
    silent = f"rpc.builds.test_silent.{secrets.token_hex(4)}"

    async def ignore(msg: Msg) -> None:
        del msg  # takes the request, never answers

    await admin_nc.subscribe(silent, cb=ignore)
    await subscriptions_live(admin_nc)
    loop = asyncio.get_running_loop()
    started_at = loop.time()
    with pytest.raises(nats.errors.TimeoutError):
        await gateway_requester.request(silent, b"", timeout=0.2)
    assert 0.2 <= loop.time() - started_at < 2
    assert not gateway_requester._waiting
    # through `call`, as the gateway asks: both are transport failures, reported as values
    reply = await call(gateway_requester, GET_BUILD, GetBuild(org_id="org-none", build_id="b1"), timeout=5)
    assert isinstance(reply, Failed) and reply.code == "unavailable" and "no planner actor" in reply.detail


async def test_direct_get_answers_the_value_alone_or_a_404(admin_nc: Client, gateway_requester: Requester) -> None:
    org, build = f"org{secrets.token_hex(3)}", f"b{secrets.token_hex(3)}"
    summary = BuildSummary(build_id=build, org_id=org, name="x", status="requested", created_at="2026-11-25T00:00:00Z",
                           updated_at="2026-11-25T00:00:00Z", last_seq=3)
    kv = await admin_nc.jetstream().key_value(BUILD_SUMMARIES.name)
    await kv.put(build_summary_key(org, build), encode(summary))
    answer = await gateway_requester.request(*BUILD_SUMMARIES.direct_get(build_summary_key(org, build)), timeout=5)
    assert answer.headers is None  # no_hdr: nothing for the reader to parse
    assert decode(BuildSummary, answer.data) == summary
    missing = await gateway_requester.request(*BUILD_SUMMARIES.direct_get(build_summary_key(org, "nope")), timeout=5)
    assert missing.headers is not None and missing.headers.get("Status") == "404" and missing.data == b""


async def test_wrong_password_fails_start_with_the_servers_reason(stack: Stack) -> None:
    settings = stack.settings("gateway", nats_password="not-the-password")
    with pytest.raises(ConnectionError, match="Authorization Violation"):
        await Requester.for_settings(settings, "test-requests")


async def test_a_reply_subscription_the_role_may_not_make_fails_start(stack: Stack) -> None:
    # the gateway user may read replies only under _INBOX_gateway (nats.conf); no reply would ever arrive
    requester = Requester(stack.nats.url, user="gateway", password=stack.nats.passwords["gateway"],
                          inbox_prefix="_INBOX_auth")
    with pytest.raises(ConnectionError, match="Permissions Violation for Subscription"):
        await requester.start()


async def test_pings_are_answered_and_the_connection_stays(admin_nc: Client, stack: Stack) -> None:
    requester = Requester(stack.nats.url, user="gateway", password=stack.nats.passwords["gateway"],
                          inbox_prefix="_INBOX_gateway", ping_interval=0.02, max_outstanding_pings=2)
    await requester.start()
    try:
        subject = f"rpc.builds.test_echo.{secrets.token_hex(4)}"
        await echo_on(admin_nc, subject)
        first = requester._connection
        for _ in range(10):  # spans many ping intervals: a PONG must come back to every PING
            assert (await requester.request(subject, b"p", timeout=5)).data == b"re:p"
            await asyncio.sleep(0.02)
        assert requester.is_connected
        assert requester._connection is first  # never given up as stale and replaced
    finally:
        await requester.close()


async def test_a_restarted_server_is_reconnected_and_in_flight_requests_fail_at_once(tmp_path: Path) -> None:
    passwords = {role: new_nats_password() for role in NATS_ROLES}
    server = start_nats(tmp_path / "nats", passwords)
    admin = await nats.connect(server.url, user="admin", password=passwords["admin"], allow_reconnect=False)
    # the server itself answers direct gets of this stream, before and after its restart (same store)
    await admin.jetstream().add_stream(StreamConfig(name="T", subjects=["t.>"], allow_direct=True))
    await admin.jetstream().publish("t.x", b"kept")
    requester = Requester(server.url, user="admin", password=passwords["admin"], reconnect_wait=0.05)
    await requester.start()
    try:
        async def ignore(msg: Msg) -> None:
            del msg

        await admin.subscribe("test.silent", cb=ignore)
        await subscriptions_live(admin)
        in_flight = asyncio.ensure_future(requester.request("test.silent", b"", timeout=30))
        await asyncio.sleep(0.05)  # on its way
        loop = asyncio.get_running_loop()
        server.stop()
        started_at = loop.time()
        with pytest.raises(nats.errors.ConnectionClosedError):
            await in_flight
        assert loop.time() - started_at < 5  # not left to its 30 s timeout
        assert not requester.is_connected

        # asked while the server is down: waits for the connection within its timeout, then goes through
        asking = asyncio.ensure_future(requester.request("$JS.API.DIRECT.GET.T", b'{"last_by_subj":"t.x"}', timeout=30))
        server = start_nats(tmp_path / "nats", passwords, port=server.port)
        answer = await asking
        assert answer.data == b"kept"
        assert requester.is_connected
    finally:
        await requester.close()
        await admin.close()
        server.stop()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await requester.request("t.x", b"", timeout=1)


def test_header_blocks_round_trip_with_status_lines() -> None:
    assert parse_headers(b"NATS/1.0 503\r\n\r\n") == {"Status": "503"}
    assert parse_headers(b"NATS/1.0 404 Message Not Found\r\n\r\n") == {"Status": "404",
                                                                          "Description": "Message Not Found"}
    block = header_block({"Nats-Service-Error": "bad\r\nthing", "Nats-Service-Error-Code": 500})
    assert block == b"NATS/1.0\r\nNats-Service-Error: bad  thing\r\nNats-Service-Error-Code: 500\r\n\r\n"
    assert parse_headers(block) == {"Nats-Service-Error": "bad  thing", "Nats-Service-Error-Code": "500"}
    with pytest.raises(nats.errors.BadHeaderError):
        header_block({"Bad Name": "x"})
