"""`GET /v1/events`: an organisation's build events as Server-Sent Events, for outside event consumers.

The organisation is the caller's (API key or session), never a parameter, so a consumer sees its own
organisation's builds and nothing else; the `events` NATS user, which can read every organisation's, stays
an operator tool. Each connection gets its own ordered JetStream consumer on `builds.<org>.>` (or one
build's subjects with `?build=`), deleted when the client goes away.

Each event is one SSE message: `id: <stream seq>`, `event: <kind>`, `data: {"seq", "subject", "kind",
"event"}` (the frame the build WebSocket sends). Resume with `?after=<seq>` or the standard `Last-Event-ID`
header: every event after it, none twice, none missing. Without either, the whole history is replayed
first (`?live=true`: only new events). Once the replayed history is out, one `event: caught-up` message
(`data: {"seq": <last seq or after>}`) says so; a comment line (`: keepalive`, never an event) after
KEEPALIVE_SECONDS of silence keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
import nats.errors
from litestar import Controller, Request, get
from litestar.di import NamedDependency, Provide
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from bus_schemas.base import SUBJECT_TOKEN_RE, FailureCode
from bus_schemas.identity import Principal
from bus_schemas.registry import BUILD_EVENTS, BUILDS
from gateway.feeds import MAX_SEQUENCE, wire_frame
from gateway.problems import Problem
from gateway.services import EdgeServices, provide_principal

log = logging.getLogger("bmms.gateway.events")

MAX_STREAMS_PER_ORG = 20
"""Event streams one organisation may hold open on one gateway (each is a JetStream consumer)."""
KEEPALIVE_SECONDS = 15.0
"""Seconds of silence after which a comment line is sent."""
CAUGHT_UP = "caught-up"
"""The SSE event type sent once the replayed history is out."""

_check_json = msgspec.json.Decoder(msgspec.Raw).decode
_encode = msgspec.json.Encoder().encode


class CaughtUp(msgspec.Struct, frozen=True, kw_only=True):
    """Sent once: every event up to `seq` has been sent; what follows is live."""

    seq: int


class OpenStreams:
    """How many event streams each organisation holds open on this gateway."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def take(self, org_id: str) -> None:
        """Count one more stream of `org_id`; 429 over the limit."""
        if self._open.get(org_id, 0) >= self.limit:
            log.info("refused event stream of %s: %d already open", org_id, self.limit)
            raise Problem(429, f"this organisation already has {self.limit} event streams open here; close one",
                          code=FailureCode.RATE_LIMITED, headers={"Retry-After": "5"})
        self._open[org_id] = self._open.get(org_id, 0) + 1

    def give_back(self, org_id: str) -> None:
        """A stream of `org_id` ended."""
        left = self._open.get(org_id, 1) - 1
        if left:
            self._open[org_id] = left
        else:
            self._open.pop(org_id, None)


def _resume_point(after: int | None, last_event_id: str | None) -> int | None:
    if after is not None:
        return after
    if last_event_id is None:
        return None
    if not last_event_id.isdigit() or len(last_event_id) > 19 or int(last_event_id) > MAX_SEQUENCE:
        raise Problem(400, "Last-Event-ID must be a stream sequence (a whole number)", code=FailureCode.INVALID)
    return int(last_event_id)


class EventsController(Controller):
    """The caller's organisation's build events, as Server-Sent Events."""

    path = "/v1/events"
    tags = ["builds"]
    dependencies = {"principal": Provide(provide_principal)}

    @get("/", summary="Stream the organisation's build events (SSE)")
    async def stream(
        self,
        request: Request[Any, Any, Any],
        principal: NamedDependency[Principal],
        services: NamedDependency[EdgeServices],
        after: Annotated[int | None, QueryParameter(ge=0, le=MAX_SEQUENCE,
                                                    description="Resume after this stream sequence.")] = None,
        build: Annotated[str | None, QueryParameter(min_length=1, max_length=64,
                                                    description="Only this build's events.")] = None,
        live: Annotated[bool, QueryParameter(description="Only events from now on (no history).")] = False,
        last_event_id: Annotated[str | None, HeaderParameter(name="Last-Event-ID", max_length=40,
                                                             description="Resume after this event id.")] = None,
    ) -> ServerSentEvent:
        """Every build event of the caller's organisation (or of one of its builds): the history, then live.
        `id` is the BUILDS stream sequence; reconnect with `after=` (or `Last-Event-ID`) to resume."""
        if build is not None and not SUBJECT_TOKEN_RE.match(build):
            raise Problem(404, f"no build {build[:64]!r} in this organisation", code=FailureCode.NOT_FOUND)
        resume = _resume_point(after, last_event_id)
        subject = (BUILD_EVENTS.wildcard(org=principal.org_id, build=build) if build
                   else BUILD_EVENTS.wildcard(org=principal.org_id))
        streams: OpenStreams = request.app.state.setdefault("event_streams", OpenStreams(MAX_STREAMS_PER_ORG))
        streams.take(principal.org_id)
        try:
            js = services.bus.nc.jetstream()
            if resume is not None:
                policy: dict[str, Any] = {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE,
                                          "config": ConsumerConfig(opt_start_seq=resume + 1, inactive_threshold=60.0)}
            else:
                policy = {"deliver_policy": DeliverPolicy.NEW if live else DeliverPolicy.ALL,
                          "config": ConsumerConfig(inactive_threshold=60.0)}
            sub = await js.subscribe(subject, stream=BUILDS.name, ordered_consumer=True, **policy)
            info = await sub.consumer_info()
        except Problem:
            streams.give_back(principal.org_id)
            raise
        except Exception as exc:
            streams.give_back(principal.org_id)
            log.warning("could not open the event stream of %s: %r", principal.org_id, exc)
            raise Problem(503, "the build event stream is unavailable; retry", code=FailureCode.UNAVAILABLE) from exc
        log.info("event stream opened for %s on %s", principal.subject, subject)
        # Where the history ends. The consumer pushes from the moment it exists, so by now it may have sent
        # some or all of it: then nothing is pending, and the history ends at what it delivered.
        history_end: int | None = None
        if info.num_pending == 0:
            delivered = info.delivered.consumer_seq if info.delivered else 0
            history_end = int(info.delivered.stream_seq) if delivered and info.delivered else 0
        return ServerSentEvent(
            _relay(js, sub, resume or 0, history_end, lambda: streams.give_back(principal.org_id)),
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


async def _relay(js: JetStreamContext, sub: JetStreamContext.PushSubscription, after: int, history_end: int | None,
                 release: Any) -> AsyncIterator[ServerSentEventMessage]:
    """The SSE messages of one connection; the consumer goes when the client does (Litestar cancels us).

    `history_end`: the last sequence of the history to replay, when known (0: none), else None: the history
    ends with the message that leaves nothing pending."""
    last = after
    caught_up = history_end is not None and history_end <= after
    try:
        if caught_up:
            yield ServerSentEventMessage(event=CAUGHT_UP, data=_encode(CaughtUp(seq=last)).decode())
        while True:
            try:
                msg = await sub.next_msg(timeout=KEEPALIVE_SECONDS)
            except (nats.errors.TimeoutError, TimeoutError):
                # data=None: without it Litestar adds an empty `data:` line, and browsers dispatch it as a message
                yield ServerSentEventMessage(comment="keepalive", data=None)
                continue
            seq = int(msg.metadata.sequence.stream)
            if seq <= last:
                continue  # a reset ordered consumer may replay what was sent
            wire = wire_frame(msg, seq)
            if wire is None:
                continue
            yield ServerSentEventMessage(id=seq, event=wire.kind, data=_encode(wire).decode())
            last = seq
            if not caught_up and (seq >= history_end if history_end is not None else msg.metadata.num_pending == 0):
                caught_up = True
                yield ServerSentEventMessage(event=CAUGHT_UP, data=_encode(CaughtUp(seq=last)).decode())
    finally:
        release()
        closing = asyncio.ensure_future(_close(js, sub))
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)
        # The response is usually being cancelled (the client left): the close goes on by itself.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.shield(closing)


_closing: set[asyncio.Future[None]] = set()
"""Consumer deletions still running after their response ended."""


async def _close(js: JetStreamContext, sub: JetStreamContext.PushSubscription) -> None:
    name = sub._consumer  # the current name: an ordered consumer gets a new one on every reset
    try:
        await sub.unsubscribe()
        await js.delete_consumer(BUILDS.name, name)
    except Exception as exc:  # gone already, or the bus is: the server drops it after inactive_threshold
        log.debug("could not delete event consumer %s: %r", name, exc)
