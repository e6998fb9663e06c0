"""`bmms events`: follow builds' event history.

Two ways in: over the gateway (`--url` + `--api-key`: `GET /v1/events`, Server-Sent Events of the key's own
organisation, resumed after the last sequence seen when the connection drops) - what an event consumer
uses; or straight from the BUILDS stream as the `events` NATS role, which can read every organisation's
builds - for operators only.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TextIO

import httpx2
import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from actors.runtime.codec import decode
from actors.runtime.settings import Settings
from bus_schemas.registry import BUILD_EVENTS, BUILDS
from ops.operator import connect_as

_json = msgspec.json.Encoder()


def events_filter(org: str, build: str | None = None) -> str:
    """The subject filter for one organisation's builds, or one build of it (tokens are checked)."""
    return BUILD_EVENTS.wildcard(org=org, build=build) if build else BUILD_EVENTS.wildcard(org=org)


def format_event(msg: Msg, as_json: bool) -> str:
    """One line for one event: `seq subject event-json`, or a JSON object with --json."""
    seq = int(msg.metadata.sequence.stream)
    event: Any
    try:
        event = decode(BUILD_EVENTS.message, msg.data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        # Show what is there rather than stopping the tail on one odd message.
        event = {"undecodable": str(exc), "raw": msg.data.decode(errors="replace")}
    if as_json:
        return _json.encode({"seq": seq, "subject": msg.subject, "event": event}).decode()
    return f"{seq:>8} {msg.subject} {_json.encode(event).decode()}"


async def tail_events(
    settings: Settings,
    org: str,
    build: str | None,
    *,
    from_start: bool,
    follow: bool,
    as_json: bool,
    out: TextIO,
    stop: asyncio.Event,
) -> int:
    """Print the events of `org` (or one build) from the BUILDS stream, oldest first: the whole history
    (`from_start`) or only new ones; keep following until `stop` unless `follow` is false."""
    subject = events_filter(org, build)
    nc = await connect_as(settings, "bmms-events")
    try:
        js = nc.jetstream()
        # An ordered consumer is ephemeral and gap-free; left unnamed so that nats-py can re-create it
        # under a new name after a gap (nats.conf lets `events` create unnamed consumers on BUILDS).
        config = ConsumerConfig(inactive_threshold=60.0)
        sub = await js.subscribe(
            subject,
            stream=BUILDS.name,
            ordered_consumer=True,
            config=config,
            deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW,
        )
        try:
            info = await sub.consumer_info()
            nothing_to_replay = info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq)
            if not follow and (nothing_to_replay or not from_start):
                return 0
            while not stop.is_set():
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue  # checks `stop` twice a second
                print(format_event(msg, as_json), file=out, flush=True)
                # The last message of the history was sent with nothing left pending behind it.
                if not follow and msg.metadata.num_pending == 0:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await js.delete_consumer(BUILDS.name, config.name or "")
    finally:
        await nc.close()
    return 0


# --- over the gateway ---

EVENTS_PATH = "/v1/events"
CAUGHT_UP = "caught-up"
"""The SSE event the gateway sends once the replayed history is out (gateway.events)."""


@dataclass
class SseMessage:
    """One Server-Sent Event."""

    event: str = "message"
    data: str = ""
    id: str | None = None


async def sse_messages(lines: AsyncIterator[str]) -> AsyncIterator[SseMessage]:
    """The events of a `text/event-stream` body, line by line (comments skipped)."""
    message = SseMessage()
    data: list[str] = []
    async for line in lines:
        if not line:
            if data or message.id is not None or message.event != "message":
                message.data = "\n".join(data)
                yield message
            message, data = SseMessage(), []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            message.event = value
        elif name == "id":
            message.id = value


_frame = msgspec.json.Decoder(dict[str, msgspec.Raw])


def format_frame(data: str, as_json: bool) -> tuple[int, str]:
    """(sequence, the line to print) for one event frame from the gateway: the same line as the NATS mode."""
    frame = _frame.decode(data)
    seq = int(msgspec.json.decode(frame["seq"]))
    subject = str(msgspec.json.decode(frame["subject"]))
    event = frame["event"]
    if as_json:
        return seq, _json.encode({"seq": seq, "subject": subject, "event": event}).decode()
    return seq, f"{seq:>8} {subject} {bytes(event).decode()}"


class GatewayRefused(Exception):
    """The gateway answered the event stream request with an error (its problem detail)."""


async def tail_events_http(
    url: str,
    api_key: str,
    build: str | None,
    *,
    from_start: bool,
    follow: bool,
    as_json: bool,
    out: TextIO,
    stop: asyncio.Event,
    retry_seconds: float = 1.0,
) -> int:
    """Print the API key's organisation's events (or one build's) from the gateway's `GET /v1/events`,
    oldest first; a dropped connection resumes after the last sequence printed (no gap, no duplicate)."""
    last: int | None = None
    live = not from_start
    headers = {"Authorization": f"Bearer {api_key}", "Accept": "text/event-stream"}
    async with httpx2.AsyncClient(base_url=url.rstrip("/"), timeout=httpx2.Timeout(10.0, read=None)) as http:

        async def once() -> bool:
            """Follow one connection; True when done (caught up without `follow`)."""
            nonlocal last
            params: dict[str, str] = {}
            if build:
                params["build"] = build
            if last is not None:
                params["after"] = str(last)
            elif live:
                params["live"] = "true"
            async with http.stream("GET", EVENTS_PATH, params=params, headers=headers) as response:
                if response.status_code != 200:
                    body = await response.aread()
                    try:
                        detail = str(msgspec.json.decode(body).get("detail", ""))
                    except (msgspec.DecodeError, AttributeError):
                        detail = body.decode(errors="replace")[:200]
                    raise GatewayRefused(f"{response.status_code}: {detail}")
                async for message in sse_messages(response.aiter_lines()):
                    if message.event == CAUGHT_UP:
                        if not follow:
                            return True
                        continue
                    seq, line = format_frame(message.data, as_json)
                    print(line, file=out, flush=True)
                    last = seq
            return False

        while not stop.is_set():
            attempt = asyncio.ensure_future(once())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({attempt, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await attempt
                break
            try:
                if attempt.result():
                    break
            except GatewayRefused as exc:
                print(f"the gateway refused the event stream: {exc}", file=sys.stderr)
                return 1
            except httpx2.TransportError as exc:
                print(f"event stream interrupted ({type(exc).__name__}); resuming after {last}", file=sys.stderr)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=retry_seconds)
    return 0
