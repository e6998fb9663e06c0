"""Every tool call a runner answers becomes one usage event in the USAGE stream; an organisation over its
tool-call quota (the QUOTAS bucket, written here as the metering NATS user) gets its calls refused within
moments, and a usage event never waits for the bus. Real nats-server, real runner, real mcp client."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from typing import Any

import msgspec
from nats.js.api import DeliverPolicy

from actors.runtime.bus import connect
from bus_schemas.registry import QUOTAS, TOOL_USAGE, USAGE
from bus_schemas.usage import OverQuota, QuotaState, ToolCalled
from ops.infra import free_port
from runner_template.metering import UsageOutbox
from tests.conftest import eventually
from tests.runner_template.conftest import mcp_client, runner, settings_for, token

OVER = OverQuota(quota="tool_calls_per_month", limit=1000, used=1000, period="2026-11")
REFUSAL = ("over quota: tool_calls_per_month 1000/1000 used in 2026-11; "
           "calls resume next period or on a bigger plan")


def server_id() -> str:
    return "m" + uuid.uuid4().hex[:12]


async def usage_events(js: Any, sid: str, count: int) -> list[tuple[ToolCalled, dict[str, str]]]:
    """The first `count` usage events of server `sid` in the USAGE stream, with their headers."""
    sub = await js.subscribe(TOOL_USAGE.subject(server=sid), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        found = []
        for _ in range(count):
            msg = await sub.next_msg(timeout=10)
            found.append((msgspec.json.decode(msg.data, type=ToolCalled), dict(msg.headers or {})))
        return found
    finally:
        await sub.unsubscribe()


async def stored(js: Any, sid: str) -> int:
    """How many usage events of server `sid` the USAGE stream holds."""
    info = await js.stream_info(USAGE.name, subjects_filter=TOOL_USAGE.subject(server=sid))
    return int((info.state.subjects or {}).get(TOOL_USAGE.subject(server=sid), 0))


async def test_each_tool_call_publishes_one_usage_event_deduplicated_by_its_id(
        stack: Any, jwks: Any, admin_nc: Any) -> None:
    sid = server_id()
    js = admin_nc.jetstream()
    async with runner(settings_for(stack, sid)) as running:
        async with mcp_client(running.url, token(running.settings.resource)) as client:
            ok = await client.call_tool("add", {"a": 1, "b": 2})
            failed = await client.call_tool("add", {"a": "one", "b": 2})
            await client.list_tools()  # not a tool call: no event
        assert not ok.is_error and failed.is_error
        events = await usage_events(js, sid, 2)
        assert await eventually(lambda: _equals(stored(js, sid), 2))
        assert running.runtime.bus.published == 2 and len(running.runtime.outbox) == 0
    for (event, headers), status in zip(events, ("ok", "error"), strict=True):
        assert headers["Nats-Msg-Id"] == event.event_id and len(event.event_id) == 32
        assert (event.org_id, event.server_id, event.tool, event.status) == (f"org-{sid}", sid, "add", status)
        assert event.duration_ms >= 0 and event.bytes_out > 0
        assert datetime.fromisoformat(event.at).tzinfo is not None and event.at.endswith("Z")
    assert events[0][0].event_id != events[1][0].event_id
    # the runner may publish an event again (it did not see the ack): JetStream keeps it once
    first, _ = events[0]
    ack = await js.publish(TOOL_USAGE.subject(server=sid), msgspec.json.encode(first),
                           headers={"Nats-Msg-Id": first.event_id})
    assert ack.duplicate and await stored(js, sid) == 2


async def _equals(value: Any, expected: int) -> bool:
    return await value == expected


async def test_over_quota_refuses_tool_calls_quickly_and_clearing_it_allows_them_again(
        stack: Any, jwks: Any, admin_nc: Any) -> None:
    sid = server_id()
    metering = await connect(stack.settings("metering"), "test-metering")
    quotas = await metering.jetstream().key_value(QUOTAS.name)
    answered: list[bool] = []  # is_error of every call made
    try:
        async with runner(settings_for(stack, sid)) as running:
            org = running.settings.org_id
            async with mcp_client(running.url, token(running.settings.resource)) as client:

                async def call() -> Any:
                    result = await client.call_tool("add", {"a": 1, "b": 1})
                    answered.append(result.is_error)
                    return result

                async def refused() -> Any:
                    result = await call()
                    return result if result.is_error else None

                async def allowed() -> bool:
                    return not (await call()).is_error

                assert await allowed()
                written = time.perf_counter()
                await quotas.put(org, msgspec.json.encode(QuotaState(org_id=org, exceeded=(OVER,))))
                result = await eventually(refused, timeout=5)
                lag = time.perf_counter() - written
                assert result.content[0].text == REFUSAL.format(tool="add")
                assert [t.name for t in (await client.list_tools()).tools][:2] == ["get_user", "create_note"]

                other = OverQuota(quota="builds_per_month", limit=10, used=10, period="2026-11")
                await quotas.put(org, msgspec.json.encode(QuotaState(org_id=org, exceeded=(other,))))
                await eventually(allowed, timeout=5)  # another quota's excess does not stop tool calls
                await quotas.put(org, msgspec.json.encode(QuotaState(org_id=org, exceeded=(OVER,))))
                await eventually(refused, timeout=5)
                await quotas.delete(org)
                await eventually(allowed, timeout=5)
            await asyncio.wait_for(running.runtime.outbox.emptied(), timeout=10)
        # refused calls ran nothing and are not metered; every call that ran is
        assert answered.count(True) >= 2 and answered.count(False) >= 3
        assert await stored(admin_nc.jetstream(), sid) == answered.count(False)
    finally:
        await metering.close()
    print(f"quota refusal took effect {lag * 1000:.1f} ms after the QUOTAS write")


async def test_a_quota_written_before_the_runner_starts_applies_from_the_first_call(stack: Any, jwks: Any) -> None:
    sid = server_id()
    settings = settings_for(stack, sid)
    metering = await connect(stack.settings("metering"), "test-metering")
    quotas = await metering.jetstream().key_value(QUOTAS.name)
    await quotas.put(settings.org_id, msgspec.json.encode(QuotaState(org_id=settings.org_id, exceeded=(OVER,))))
    try:
        async with runner(settings) as running:
            await eventually(lambda: _true(running.runtime.quota.refusal() is not None), timeout=5)
            async with mcp_client(running.url, token(running.settings.resource)) as client:
                result = await client.call_tool("list", {"text": "a b"})
        assert result.is_error and result.content[0].text == REFUSAL.format(tool="list")  # type: ignore[union-attr]
    finally:
        await quotas.delete(settings.org_id)
        await metering.close()


async def _true(value: bool) -> bool:
    return value


async def test_tool_calls_do_not_wait_for_a_bus_that_is_down(stack: Any) -> None:
    sid = server_id()
    settings = settings_for(None, sid, insecure_no_auth=True, nats_url=f"nats://127.0.0.1:{free_port()}",
                            nats_password="unused")
    async with runner(settings, wait_for_bus=False) as running:
        async with mcp_client(running.url, None) as client:
            started = time.perf_counter()
            results = [await client.call_tool("add", {"a": i, "b": 1}) for i in range(5)]
            elapsed = time.perf_counter() - started
        assert all(not r.is_error for r in results)
        assert len(running.runtime.outbox) == 5 and running.runtime.bus.published == 0
    assert elapsed < 5  # far below the bus's connect timeout times five: no call waited for it


def test_a_full_outbox_drops_the_oldest_event_and_counts_it() -> None:
    outbox = UsageOutbox(capacity=2)
    events = [ToolCalled(event_id=str(i), org_id="o", server_id="s", tool="t", duration_ms=1.0, status="ok",
                         at="2026-11-01T00:00:00Z") for i in range(3)]
    for event in events:
        outbox.put(event)
    assert outbox.dropped == 1 and len(outbox) == 2
    head = asyncio.run(outbox.head())
    assert head.event_id == "1"
    outbox.done(head)
    assert asyncio.run(outbox.head()).event_id == "2"
