"""Event consumers over the gateway: `GET /v1/events` streams the caller's organisation's build events as
Server-Sent Events (never another organisation's), resumes after a sequence without gap or duplicate, and
`bmms events --url --api-key` reads it. Events are published into the real BUILDS stream; the gateway,
the auth actor and NATS are real."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from actors.runtime.actor import utc_now
from actors.runtime.bus import publish_event
from bus_schemas.builds import LogLine
from bus_schemas.identity import ApiKeyCreated
from bus_schemas.registry import BUILDS, build_subject
from gateway import events as gateway_events
from ops.events import sse_messages, tail_events_http
from tests.conftest import eventually
from tests.gateway.conftest import Gateway, assert_problem, bearer


def build_id() -> str:
    return "b" + secrets.token_hex(6)


async def publish(nc: Client, org: str, build: str, message: str) -> int:
    """One log event of `build` in the BUILDS stream; its sequence."""
    event = LogLine(build_id=build, org_id=org, at=utc_now(), step="plan", level="info", message=message)
    return await publish_event(nc.jetstream(), build_subject(org, build, "log"), event, secrets.token_hex(8))


async def read(http: httpx.AsyncClient, key: ApiKeyCreated, *, count: int | None = None,
               until_caught_up: bool = False, params: dict[str, str] | None = None,
               headers: dict[str, str] | None = None, after_caught_up: int = 0) -> list[dict[str, Any]]:
    """Open the event stream and collect event frames: `count` of them, or up to the caught-up marker (then
    `after_caught_up` more); each frame gets the SSE id it came with as `_id`."""
    frames: list[dict[str, Any]] = []
    extra_left: int | None = None
    async with asyncio.timeout(15), http.stream(
        "GET", "/v1/events", params=params, headers={**bearer(key), **(headers or {})}
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for message in sse_messages(response.aiter_lines()):
            if message.event == "caught-up":
                assert until_caught_up or count is not None
                if until_caught_up:
                    if not after_caught_up:
                        return frames
                    extra_left = after_caught_up
                continue
            frame = json.loads(message.data)
            assert message.event == frame["kind"] and message.id == str(frame["seq"])
            frames.append(frame)
            if extra_left is not None:
                extra_left -= 1
                if extra_left == 0:
                    return frames
            if count is not None and len(frames) == count:
                return frames
    raise AssertionError("the stream ended")


async def test_an_api_key_streams_only_its_own_organisations_builds(
    http: httpx.AsyncClient, key: ApiKeyCreated, other_key: ApiKeyCreated, module_admin: Client
) -> None:
    mine, theirs = build_id(), build_id()
    for i in range(2):
        await publish(module_admin, key.org_id, mine, f"mine {i}")
        await publish(module_admin, other_key.org_id, theirs, f"theirs {i}")
    history = await read(http, key, until_caught_up=True)
    assert history and all(f["subject"].startswith(f"builds.{key.org_id}.") for f in history)
    assert [f["event"]["message"] for f in history if f["subject"].split(".")[2] == mine] == ["mine 0", "mine 1"]
    assert [f["seq"] for f in history] == sorted({f["seq"] for f in history})
    their_history = await read(http, other_key, until_caught_up=True)
    assert {f["subject"].split(".")[1] for f in their_history} == {other_key.org_id}

    # Live: another organisation's event first, then ours; only ours arrives.
    async def live() -> list[dict[str, Any]]:
        return await read(http, key, until_caught_up=True, after_caught_up=1, params={"build": mine})

    reader = asyncio.create_task(live())
    await eventually(lambda: _consumer_on(module_admin, f"builds.{key.org_id}.{mine}.*"))
    await publish(module_admin, other_key.org_id, theirs, "theirs live")
    seq = await publish(module_admin, key.org_id, mine, "mine live")
    (frame,) = (await reader)[-1:]
    assert frame["seq"] == seq and frame["event"]["message"] == "mine live"


async def test_resuming_after_a_sequence_gives_no_gap_and_no_duplicate(
    http: httpx.AsyncClient, key: ApiKeyCreated, module_admin: Client
) -> None:
    build = build_id()
    seqs = [await publish(module_admin, key.org_id, build, f"line {i}") for i in range(5)]
    first = await read(http, key, count=3, params={"build": build})
    assert [f["seq"] for f in first] == seqs[:3]
    seqs.append(await publish(module_admin, key.org_id, build, "while away"))
    resumed = await read(http, key, until_caught_up=True, params={"build": build, "after": str(first[-1]["seq"])})
    assert [f["seq"] for f in resumed] == seqs[3:]
    assert [f["event"]["message"] for f in resumed] == ["line 3", "line 4", "while away"]
    # the standard SSE way: Last-Event-ID
    by_header = await read(http, key, until_caught_up=True, params={"build": build},
                           headers={"Last-Event-ID": str(seqs[4])})
    assert [f["seq"] for f in by_header] == seqs[5:]
    # live only: nothing of the history
    live_only = await read(http, key, until_caught_up=True, params={"build": build, "live": "true"})
    assert live_only == []


async def test_another_organisations_build_id_streams_nothing(
    http: httpx.AsyncClient, key: ApiKeyCreated, other_key: ApiKeyCreated, module_admin: Client
) -> None:
    theirs = build_id()
    await publish(module_admin, other_key.org_id, theirs, "secret plans")
    assert await read(http, key, until_caught_up=True, params={"build": theirs}) == []
    assert_problem(await http.get("/v1/events", params={"build": "a.b"}, headers=bearer(key)), 404)
    assert_problem(await http.get("/v1/events"), 401)
    assert_problem(await http.get("/v1/events", headers={**bearer(key), "Last-Event-ID": "x"}), 400)


async def test_the_consumer_goes_when_the_client_does(
    http: httpx.AsyncClient, key: ApiKeyCreated, module_admin: Client
) -> None:
    build = build_id()
    await publish(module_admin, key.org_id, build, "one")
    await read(http, key, until_caught_up=True, params={"build": build})
    assert await eventually(lambda: _no_consumer_on(module_admin, f"builds.{key.org_id}.{build}.*"))


async def test_bmms_events_reads_the_stream_over_the_gateway(
    gateway: Gateway, key: ApiKeyCreated, other_key: ApiKeyCreated, module_admin: Client
) -> None:
    build = build_id()
    seqs = [await publish(module_admin, key.org_id, build, f"cli {i}") for i in range(3)]
    await publish(module_admin, other_key.org_id, build, "not yours")  # the same build id in another org
    out = io.StringIO()
    code = await tail_events_http(gateway.base_url, key.secret, build, from_start=True, follow=False,
                                  as_json=True, out=out, stop=asyncio.Event())
    assert code == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["seq"] for line in lines] == seqs
    assert [line["event"]["message"] for line in lines] == ["cli 0", "cli 1", "cli 2"]
    assert {line["subject"] for line in lines} == {f"builds.{key.org_id}.{build}.log"}
    refused = await tail_events_http(gateway.base_url, "bmms_nonsense", None, from_start=True, follow=False,
                                     as_json=False, out=io.StringIO(), stop=asyncio.Event())
    assert refused == 1


async def _consumers(nc: Client) -> AsyncIterator[str]:
    for info in await nc.jetstream().consumers_info(BUILDS.name):
        yield info.config.filter_subject or ""


async def _consumer_on(nc: Client, subject: str) -> bool:
    return subject in [s async for s in _consumers(nc)]


async def _no_consumer_on(nc: Client, subject: str) -> bool:
    return not await _consumer_on(nc, subject)


async def test_keepalives_are_comment_lines_never_events(
    http: httpx.AsyncClient, key: ApiKeyCreated, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_events, "KEEPALIVE_SECONDS", 0.05)
    blocks: list[list[str]] = [[]]
    async with asyncio.timeout(15), http.stream(
        "GET", "/v1/events", params={"build": build_id(), "live": "true"}, headers=bearer(key)
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line:
                blocks[-1].append(line)
            elif blocks[-1]:
                blocks.append([])
            if len(blocks) > 3:  # the caught-up marker and two keepalives
                break
    # every message is the caught-up marker or a bare comment: a `data:` line would be an event to a browser
    messages = [b for b in blocks if b]
    assert messages[0][0] == "event: caught-up"
    assert all(block == [": keepalive"] for block in messages[1:]), messages
