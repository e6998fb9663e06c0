"""`bmms events`: follow builds' event history the way any outside consumer would, as the `events` role."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, TextIO

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
