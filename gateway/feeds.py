"""Build feeds: one JetStream consumer per build per gateway process, fanned out to every WebSocket.

A `BuildFeed` holds an ordered consumer on `builds.<org>.<build>.*` that replays the build's whole history
and then follows it live. Each event is encoded into its WebSocket frame once, kept in the feed's
in-memory history, and shared by every socket: a socket is only a cursor into that history (its queue is
the part of the history it has not sent yet), so fan-out costs one wake-up per socket and no per-socket
JSON work. A new socket snapshots its starting point and registers in the same event-loop step in which
events are appended, so it sees every event with `seq > after` exactly once.

A socket ends with its build: once it has sent a `deployed` or `failed` event, the pump stops with `BuildEnded`
and the socket is closed normally (see gateway.builds.CLOSE_BUILD_ENDED).

A socket that falls more than `max_lag` live events behind is failed with `SocketLagging` (the client
resumes with `after=`), so a slow client never holds the others back. When the last socket of a build
leaves, its feed lives on for a grace period (a reconnect reuses it) and then deletes its consumer.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope
from litestar.types import Send as ASGISend
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from bus_schemas.builds import BuildKind
from bus_schemas.registry import BUILD_EVENTS, BUILDS, build_kind_of

log = logging.getLogger("bmms.gateway.feeds")

Send = Callable[[Any], Awaitable[None]]
"""An ASGI `send`."""


MAX_SEQUENCE = 2**63 - 1
"""The largest stream sequence a client may resume after (JetStream counts in 64 bits; its consumers take
signed ones): beyond it, `after=` is refused with 400 rather than handed to the bus."""
RAW_SEND = "bmms.raw_send"
"""Scope key of the server's own ASGI `send` for a WebSocket, before any framework wrapper."""


def with_raw_websocket_send(app: ASGIApp) -> ASGIApp:
    """Remember the server's `send` of each WebSocket in its scope. Event frames are the gateway's hot
    path: sent straight through it they skip Litestar's two per-message send wrappers (state tracking
    that frames do not need), which were a quarter of the cost of fanning a frame out."""

    async def asgi(scope: Scope, receive: Receive, send: ASGISend) -> None:
        if scope["type"] == ScopeType.WEBSOCKET:
            scope[RAW_SEND] = send  # type: ignore[literal-required]  # Litestar's Scope TypedDict has no extra keys
        await app(scope, receive, send)

    return asgi


class WireFrame(msgspec.Struct, kw_only=True):
    """What a WebSocket client receives for each build event."""

    seq: int
    """The event's BUILDS stream sequence; reconnect with `after=<seq>` to resume after it."""
    subject: str
    kind: BuildKind
    """The last token of the subject: requested, step, log, planned, generated, checked, deployed, failed."""
    event: msgspec.Raw
    """The event exactly as it travelled on the bus."""


def wire_frame(msg: Msg, seq: int) -> WireFrame | None:
    """The frame of one build event, or None (logged) when it is not JSON or its subject names no kind."""
    kind = build_kind_of(msg.subject)
    if kind is None:
        log.warning("skipped an event of no known kind on %s (seq %d)", msg.subject, seq)
        return None
    try:
        event = msgspec.Raw(_check_json(msg.data))
    except msgspec.DecodeError:
        log.warning("skipped an event that is not JSON on %s (seq %d)", msg.subject, seq)
        return None
    return WireFrame(seq=seq, subject=msg.subject, kind=kind, event=event)


_encode_frame = msgspec.json.Encoder().encode
_check_json = msgspec.json.Decoder(msgspec.Raw).decode


def websocket_text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame (RFC 6455 section 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65_536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


def direct_transport(send: Send) -> WebSocketsSansIOProtocol | None:
    """The uvicorn sans-I/O WebSocket protocol behind a raw ASGI `send`, if that is what serves it.

    Fanning one event out to many sockets is the gateway's hot path. Through ASGI each frame costs a task
    wake-up and a per-socket frame encoding; written straight to a caught-up socket's transport, the
    frame encoded once per event costs one `write`. Anything else (another server, a test transport)
    gets None and the ordinary ASGI path, which remains the fallback whenever a socket is not idle."""
    owner = getattr(send, "__self__", None)
    return owner if isinstance(owner, WebSocketsSansIOProtocol) else None


END_KINDS: frozenset[BuildKind] = frozenset({"deployed", "failed"})
"""Event kinds that end a build's history: a socket closes after sending one."""


class Frame:
    """One event, ready to send: its stream sequence, the ASGI message and the encoded WebSocket frame,
    both shared by every socket; `ends`: the kind, when it ends the build."""

    __slots__ = ("ends", "message", "seq", "wire")

    def __init__(self, seq: int, text: bytes, kind: BuildKind | None = None) -> None:
        self.seq = seq
        self.ends = kind if kind in END_KINDS else None
        self.message = {"type": "websocket.send", "text": text.decode()}
        self.wire = websocket_text_frame(text)


class SocketLagging(Exception):
    """The socket fell too far behind the live events and must resume with `after=`."""

    def __init__(self, last_seq: int, lag: int) -> None:
        super().__init__(f"fell {lag} events behind; reconnect with after={last_seq}")
        self.last_seq = last_seq


class FeedClosed(Exception):
    """The feed stopped (the gateway is shutting down)."""


class BuildEnded(Exception):
    """The socket sent the event that ends its build (`kind`: deployed or failed); nothing more will come."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Watcher:
    """One WebSocket's position in a build feed."""

    __slots__ = ("_waiter", "cursor", "direct", "direct_frames", "error", "feed", "last_seq", "live_from", "task")

    def __init__(self, feed: BuildFeed, after: int) -> None:
        self.feed = feed
        self.last_seq = after
        """The last sequence this socket sent (or `after`); anything at or below it is skipped."""
        self.cursor = bisect.bisect_right(feed.seqs, after)
        """Index in the feed's history of the next frame to send."""
        self.live_from = len(feed.history)
        """History that existed when the socket joined does not count against its lag limit."""
        self.error: Exception | None = None
        self.task: asyncio.Task[None] | None = None
        """The task running `pump`, cancelled when the socket fails while stuck in a send."""
        self.direct: WebSocketsSansIOProtocol | None = None
        """The socket's server protocol when frames may be written straight to it (`direct_transport`)."""
        self.direct_frames = 0
        """How many frames went out through `write_direct` rather than the pump."""
        self._waiter: asyncio.Future[None] | None = None

    def write_direct(self, frame: Frame) -> bool:
        """Write the socket's next frame straight to its transport; False when that is not possible
        now (no direct transport, closing, or the client's buffer is full: the pump then takes over)."""
        if frame.seq <= self.last_seq:
            self.cursor += 1  # replayed history the socket already has (it asked for after=)
            return True
        protocol = self.direct
        # the build's last event goes through the pump, which then closes the socket
        if protocol is None or frame.ends or protocol.close_sent or not protocol.writable.is_set():
            return False
        transport = protocol.transport
        if transport.is_closing():
            return False
        transport.write(frame.wire)
        self.direct_frames += 1
        self.cursor += 1
        self.last_seq = frame.seq
        return True

    def lag(self, history_length: int) -> int:
        """Live events appended since this socket last took a batch."""
        return history_length - max(self.cursor, self.live_from)

    def wake(self) -> None:
        """Resume the pump if it waits for events."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: Exception) -> None:
        """Stop the pump with `error`: at its next step, or at once if a full TCP buffer holds it in a
        send (that client is not reading, waiting for it helps nobody)."""
        self.error = error
        if self._waiter is not None:
            self.wake()
        elif self.task is not None:
            self.task.cancel()

    @property
    def waiting(self) -> bool:
        """True while the pump sleeps until the next event."""
        return self._waiter is not None

    async def pump(self, send: Send) -> None:
        """Send frames to the socket until its build's last event or until failed; raises BuildEnded (after
        sending that event), SocketLagging or FeedClosed, or the send's own error when the client went away."""
        history = self.feed.history
        loop = asyncio.get_running_loop()
        while True:
            if self.error is not None:
                raise self.error
            end = len(history)
            if self.cursor >= end:
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                continue
            batch = history[self.cursor:end]
            self.cursor = end
            for frame in batch:
                if frame.seq > self.last_seq:
                    # Under uvicorn's websockets-sansio protocol this completes without suspending
                    # unless the client's TCP buffer is full, so a batch usually goes out in one step.
                    await send(frame.message)
                    self.last_seq = frame.seq
                    if frame.ends:
                        self.error = BuildEnded(frame.ends)
                        raise self.error


class BuildFeed:
    """One build's events: an ordered JetStream consumer, its history, and the sockets watching it."""

    def __init__(self, org_id: str, build_id: str, max_lag: int) -> None:
        self.key = (org_id, build_id)
        self.subject = BUILD_EVENTS.wildcard(org=org_id, build=build_id)
        self.max_lag = max_lag
        self.history: list[Frame] = []
        self.seqs: list[int] = []
        """Stream sequences of `history`, for finding where `after=` resumes."""
        self.watchers: set[Watcher] = set()
        self.consumer_name: str | None = None
        self.ready: asyncio.Future[None] | None = None
        """Done once the consumer exists (or failed to be created)."""
        self.expiry: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PushSubscription | None = None

    def attach(self, after: int) -> Watcher:
        """Register a socket that wants every event after `after`. Synchronous on purpose: no event can
        be appended between taking the starting point and registering, so none is lost or doubled."""
        watcher = Watcher(self, after)
        self.watchers.add(watcher)
        return watcher

    async def start(self, js: JetStreamContext) -> None:
        """Create the ordered consumer: it replays the whole history, then follows live events."""
        self._sub = await js.subscribe(
            self.subject,
            stream=BUILDS.name,
            cb=self._on_message,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        self.consumer_name = self._sub._consumer

    async def _on_message(self, msg: Msg) -> None:
        # nats-py runs this callback in one task per subscription, in stream order, and it never
        # suspends: appending and fanning out is atomic with respect to `attach`.
        seq = int(msg.metadata.sequence.stream)
        if seq <= (self.seqs[-1] if self.seqs else 0):
            return  # an ordered consumer that was reset may replay what we already hold
        frame_of = wire_frame(msg, seq)
        if frame_of is None:
            return
        text = _encode_frame(frame_of)
        frame = Frame(seq, text, frame_of.kind)
        self.history.append(frame)
        self.seqs.append(seq)
        length = len(self.history)
        for watcher in self.watchers:
            if watcher.waiting:
                # A caught-up socket whose next frame is this one takes it at once, without a wake-up.
                if watcher.cursor == length - 1 and watcher.error is None and watcher.write_direct(frame):
                    continue
                watcher.wake()
            elif watcher.error is None and watcher.lag(length) > self.max_lag:
                watcher.fail(SocketLagging(watcher.last_seq, watcher.lag(length)))

    async def stop(self, js: JetStreamContext) -> None:
        """Stop every watcher, unsubscribe and delete the consumer (it would expire on its own anyway)."""
        for watcher in self.watchers:
            watcher.fail(FeedClosed("the gateway is shutting down"))
        sub, self._sub = self._sub, None
        if sub is None:
            return
        name = sub._consumer  # the current name: an ordered consumer gets a new one on every reset
        try:
            await sub.unsubscribe()
            await js.delete_consumer(BUILDS.name, name)
        except (nats.js.errors.NotFoundError, nats.errors.ConnectionClosedError):
            pass
        except Exception:
            log.warning("could not delete consumer %s of %s", name, self.subject, exc_info=True)


class BuildFeeds:
    """The gateway's registry of build feeds: at most one JetStream consumer per build."""

    def __init__(self, js: JetStreamContext, *, grace_seconds: float, max_lag: int) -> None:
        self.js = js
        self.grace_seconds = grace_seconds
        self.max_lag = max_lag
        self._feeds: dict[tuple[str, str], BuildFeed] = {}

    def get(self, org_id: str, build_id: str) -> BuildFeed | None:
        """The live feed of a build, if this gateway has one."""
        return self._feeds.get((org_id, build_id))

    def __len__(self) -> int:
        return len(self._feeds)

    async def watch(self, org_id: str, build_id: str, after: int) -> Watcher:
        """Join the build's feed (starting it if needed) for every event with sequence > `after`."""
        key = (org_id, build_id)
        feed = self._feeds.get(key)
        if feed is None:
            feed = BuildFeed(org_id, build_id, self.max_lag)
            self._feeds[key] = feed
            feed.ready = asyncio.ensure_future(self._start(feed))
        if feed.expiry is not None:
            feed.expiry.cancel()
            feed.expiry = None
        watcher = feed.attach(after)
        assert feed.ready is not None
        try:
            # Shielded: one socket giving up must not cancel the start the others wait for.
            await asyncio.shield(feed.ready)
        except BaseException:
            self.leave(watcher)
            raise
        return watcher

    async def _start(self, feed: BuildFeed) -> None:
        try:
            await feed.start(self.js)
        except Exception:
            if self._feeds.get(feed.key) is feed:
                del self._feeds[feed.key]
            raise

    def leave(self, watcher: Watcher) -> None:
        """A socket left; the last one out starts the feed's grace period."""
        feed = watcher.feed
        feed.watchers.discard(watcher)
        if not feed.watchers and self._feeds.get(feed.key) is feed and feed.expiry is None:
            feed.expiry = asyncio.create_task(self._expire(feed))

    async def _expire(self, feed: BuildFeed) -> None:
        await asyncio.sleep(self.grace_seconds)
        if feed.watchers or self._feeds.get(feed.key) is not feed:
            return
        # Out of the registry before the first await, so a socket arriving now starts a fresh feed.
        del self._feeds[feed.key]
        await self._stop(feed)

    async def _stop(self, feed: BuildFeed) -> None:
        if feed.ready is not None:
            try:
                await feed.ready
            except Exception:
                return  # never started: nothing to delete
        await feed.stop(self.js)

    async def close(self) -> None:
        """Stop every feed and delete its consumer (gateway shutdown)."""
        feeds = list(self._feeds.values())
        self._feeds.clear()
        for feed in feeds:
            if feed.expiry is not None:
                feed.expiry.cancel()
        await asyncio.gather(*(self._stop(feed) for feed in feeds), return_exceptions=True)
