"""The actor: typed RPC endpoints (nats.micro in a queue group) and durable pull consumers.

Delivery rules for consumers, the same for every actor:
- the handler's effect must be durable before the ack, and safe to apply twice;
- a message that cannot be decoded is poison: parked in the dead-letter stream at once;
- a handler exception naks with backoff; after `max_deliveries` the message is parked with the reason;
- a handler that fails because a dependency did not answer (`actors.runtime.faults`: the bus, another actor, the
  database) is run again in place with the consumer's backoff (at most `TRANSIENT_BACKOFF_MAX_SECONDS` apart),
  the message kept in progress, so an outage costs no delivery; `transient_retry_deadline` after the first such
  failure it is parked naming the dependency (a build fails saying which). A stopping actor naks it at once;
- an RPC handler that fails because a dependency did not answer answers `unavailable` (503 with `Retry-After`
  at the edge), any other exception `internal`;
- a message delivered more than `max_deliveries` times without an answer (its holder crashed every
  time) is parked before the handler runs again, so a crash loop ends;
- on stop, no new messages are fetched, in-flight ones get `drain_timeout` to finish, and anything
  unfinished is simply not acked, so JetStream redelivers it to another copy.

A batch consumer (`Actor.batch_consumer`) follows the same rules for a whole fetched batch at once: its
handler applies every message in one go (one database transaction) and may mark single messages to be
retried later or parked; the others are acked together after the handler returned. When the handler
raises, the batch is handed over again one message at a time, so one bad message retries or parks alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
from nats import micro
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore
from nats.micro.request import Request as MicroRequest
from nats.micro.service import Service

from actors.runtime.bus import connect, publish_event, subscriptions_live
from actors.runtime.codec import decode, encode
from actors.runtime.faults import TransientError as TransientError  # where handlers have always found it
from actors.runtime.faults import dependency_of, unavailable_reply
from actors.runtime.logs import new_trace_id, trace_id_var
from actors.runtime.observability import (
    MetricsListener,
    configure,
    consumer_handling,
    dead_letter_parked,
    rpc_handling,
    serve_metrics,
)
from actors.runtime.settings import Settings
from actors.runtime.storage import open_pool
from bus_schemas.base import Failed, FailureCode, Message
from bus_schemas.ops import DeadLetter
from bus_schemas.registry import DEAD_LETTERS, TRACE_HEADER, Consumer, ObjectBucket, Rpc

Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep")
M = TypeVar("M")
T = TypeVar("T")

LINGER_PROBE_SECONDS = 0.01
"""After a batch's linger, how long a pull waits for a first new message when none arrived."""


TRANSIENT_BACKOFF_MAX_SECONDS = 2.0
"""The longest wait between two runs of a handler whose dependency did not answer: a consumer's long backoff is
for a handler that fails, not for a dependency that comes back (it must carry on within seconds). A run that
finds the dependency still away costs one refused connection. At 5 s, the builds under way took up to 10.9 s to
move again after PostgreSQL came back (bench_faults)."""


NATS_REFUSALS = 3
"""Refusals of its credentials in a row after which an actor gives up connecting (an outage never refuses)."""

NATS_DRAIN_FLOOR_SECONDS = 1.0
"""The least time a stopping actor gives its connection to flush what it published, even past its drain timeout."""


class DependencyAway(Exception):
    """A handler's dependency did not answer for the whole `transient_retry_deadline`; the message is parked."""


class NatsRefused(Exception):
    """NATS refused this actor's credentials every time it tried: a configuration error, not an outage."""

    def __init__(self, user: str | None, role: str) -> None:
        super().__init__(f"NATS refused the credentials for user {user or '(none set)'}: set "
                         f"BMMS_NATS_USER/BMMS_NATS_PASSWORD or BMMS_NATS_PASS_{role.upper()}")


class _Stopping(Exception):
    """The actor stops while a handler waits for a dependency; the message is left to another copy."""


@dataclass(frozen=True)
class Delivery:
    """Where a consumed message came from and how often it has been delivered."""

    subject: str
    stream_seq: int
    deliveries: int
    stored_at_us: int
    """When the stream stored the message (µs since the epoch); with the sequence it names the message
    uniquely even across a stream that was recreated."""


@dataclass
class Context:
    """What a handler receives besides its typed input."""

    actor: str
    nc: Client
    js: JetStreamContext
    db: asyncpg.Pool | None
    log: logging.Logger
    delivery: Delivery | None = None
    _msg: Msg | None = None
    _ack_wait: float = 30.0
    """The consumer's acknowledgement wait: how long JetStream waits for word from a handler before it gives the
    message to another copy."""

    async def publish(self, subject: str, message: object, msg_id: str) -> int:
        """Publish an event to JetStream, de-duplicated by `msg_id`; returns its stream sequence."""
        return await publish_event(self.js, subject, message, msg_id)

    async def object_store(self, bucket: ObjectBucket) -> ObjectStore:
        """A declared object bucket; TransientError (retried with backoff) while it does not exist yet."""
        try:
            return await self.js.object_store(bucket.name)
        except nats.js.errors.BucketNotFoundError as exc:
            raise TransientError(f"object bucket {bucket.name} missing (run `bmms migrate`): {exc}") from None

    async def still_working(self) -> None:
        """Tell JetStream a long handler is alive, so the message is not redelivered meanwhile."""
        if self._msg is not None:
            await self._msg.in_progress()

    @contextlib.asynccontextmanager
    async def heartbeat(self, every: float | None = None) -> AsyncIterator[None]:
        """Say `still_working` every `every` seconds (default: a third of the consumer's acknowledgement wait)
        while the block runs, however long it takes. A beat the bus does not take (it is away a moment) is
        not the end of the beating: the next one may arrive in time."""
        interval = every if every is not None else self._ack_wait / 3

        async def beat() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.still_working()
                except Exception as exc:  # the bus is away; JetStream redelivers if it stays away
                    self.log.debug("a heartbeat was not taken: %r", exc)

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def pool(self) -> asyncpg.Pool:
        """The actor's database pool; only actors declared with migrations have one."""
        if self.db is None:
            raise RuntimeError(f"actor {self.actor} has no database")
        return self.db


@dataclass
class BatchItem(Generic[M]):
    """One message of a batch and where it came from."""

    message: M
    delivery: Delivery
    trace_id: str | None
    """The publisher's trace id, if it sent one."""
    _msg: Msg
    _verdict: tuple[str, str] | None = None


class Batch(Generic[M]):
    """Messages fetched together for one handler call; every item the handler does not mark is acked."""

    def __init__(self, items: list[BatchItem[M]]) -> None:
        self.items = items

    def __iter__(self) -> Iterator[BatchItem[M]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def retry_later(self, item: BatchItem[M], reason: str) -> None:
        """Not applicable yet (e.g. it refers to something not known yet): nak with the consumer's backoff;
        after `max_deliveries` it is parked with `reason`."""
        item._verdict = ("retry", reason)

    def park(self, item: BatchItem[M], reason: str) -> None:
        """Never applicable: park it in the dead-letter stream with `reason` now."""
        item._verdict = ("park", reason)


S = TypeVar("S")

RpcHandler = Callable[[Req, Context], Awaitable[Rep | Failed]]
ConsumerHandler = Callable[[M, Context], Awaitable[None]]
BatchHandler = Callable[[Batch[M], Context], Awaitable[None]]
TimerHandler = Callable[[Context], Awaitable[None]]
ParkHook = Callable[[bytes, str, Context], Awaitable[None]]


def bind(handler: Callable[[M, Context, S], Awaitable[Rep]], state: S) -> Callable[[M, Context], Awaitable[Rep]]:
    """A handler of (message, context) made of a module-level handler that also takes its actor's own state
    (its settings, caches, clients): handlers stay plain functions of typed input, each actor's `actor.py`
    binds them to its state and to the registry. Works for RPC handlers and consumers alike."""

    @functools.wraps(handler)
    async def bound(message: M, ctx: Context) -> Rep:
        return await handler(message, ctx, state)

    return bound


@dataclass(frozen=True)
class _Endpoint(Generic[Req, Rep]):
    spec: Rpc[Any, Any]
    handler: RpcHandler[Any, Any]


@dataclass(frozen=True)
class _Subscription:
    spec: Consumer[Any]
    handler: Callable[[Any, Context], Awaitable[None]]
    on_park: ParkHook | None
    max_in_flight: int
    max_batch: int | None = None
    """Set for a batch consumer: the most messages one handler call gets."""
    linger: float = 0.0
    """A batch consumer waits this long after a batch's first message for more (fewer, fuller batches when
    messages trickle in: the per-batch cost is paid once for many)."""


def utc_now() -> str:
    """Now as RFC 3339 UTC with milliseconds, the timestamp format of every event."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Actor:
    """One actor: declare its endpoints and consumers with the decorators, then `serve`."""

    def __init__(self, name: str, *, migrations: Path | None = None, version: str = "0.1.0") -> None:
        self.name = name
        self.migrations = migrations
        self.version = version
        self.log = logging.getLogger(f"bmms.{name}")
        self._endpoints: list[_Endpoint[Any, Any]] = []
        self._subscriptions: list[_Subscription] = []
        self._timers: list[tuple[float, TimerHandler]] = []
        self.ready = asyncio.Event()
        """Set once every endpoint and consumer is listening."""
        self.transient_retry_deadline = 300.0
        """Seconds a handler whose dependency does not answer is retried (the setting, when serving)."""
        self._stopping = asyncio.Event()
        self.metrics: MetricsListener | None = None
        """The metrics listener, while serving with `BMMS_METRICS_PORT` set."""

    def rpc(self, spec: Rpc[Req, Rep]) -> Callable[[RpcHandler[Req, Rep]], RpcHandler[Req, Rep]]:
        """Serve `spec` with the decorated handler."""

        def register(handler: RpcHandler[Req, Rep]) -> RpcHandler[Req, Rep]:
            if spec.service != self.name:
                raise ValueError(f"{spec.subject} belongs to {spec.service}, not {self.name}")
            self._endpoints.append(_Endpoint(spec, handler))
            return handler

        return register

    def consumer(
        self, spec: Consumer[M], *, on_park: ParkHook | None = None, max_in_flight: int = 16
    ) -> Callable[[ConsumerHandler[M]], ConsumerHandler[M]]:
        """Handle the messages of durable consumer `spec`; `on_park` runs when a message is parked."""

        def register(handler: ConsumerHandler[M]) -> ConsumerHandler[M]:
            if spec.owner != self.name:
                raise ValueError(f"consumer {spec.durable} belongs to {spec.owner}, not {self.name}")
            self._subscriptions.append(_Subscription(spec, handler, on_park, max_in_flight))
            return handler

        return register

    def batch_consumer(
        self, spec: Consumer[M], *, max_batch: int = 500, linger: float = 0.0, on_park: ParkHook | None = None
    ) -> Callable[[BatchHandler[M]], BatchHandler[M]]:
        """Handle the messages of durable consumer `spec` in batches of up to `max_batch`, for throughput:
        the handler applies a whole batch at once, and its messages are acked together. With `linger`, a
        batch that is not full waits up to that many seconds after its first message for more."""

        def register(handler: BatchHandler[M]) -> BatchHandler[M]:
            if spec.owner != self.name:
                raise ValueError(f"consumer {spec.durable} belongs to {spec.owner}, not {self.name}")
            self._subscriptions.append(_Subscription(spec, handler, on_park, 1, max_batch, linger))
            return handler

        return register

    def every(self, seconds: float) -> Callable[[TimerHandler], TimerHandler]:
        """Run the decorated handler once when serving starts and then every `seconds` until it stops; every
        copy of the actor runs it, so it must be safe to run concurrently (and a failure only logs)."""

        def register(handler: TimerHandler) -> TimerHandler:
            self._timers.append((seconds, handler))
            return handler

        return register

    async def serve(self, settings: Settings, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then drain: finish in-flight work or leave it to redelivery. A `stop` that
        comes while it still connects or starts listening ends it at once; NatsRefused when NATS refuses its
        credentials (`NATS_REFUSALS` times in a row) instead of trying forever."""
        self.transient_retry_deadline = settings.transient_retry_deadline
        configure(settings, self.name)  # metrics and traces, when the settings ask for them
        opened = await _unless_stopped(stop, self._open(settings))
        if opened is None:
            self.log.info("actor %s stopped before it connected", self.name)
            return
        db, nc = opened
        js = nc.jetstream()
        base = Context(actor=self.name, nc=nc, js=js, db=db, log=self.log)
        service = None
        drain_by = None
        try:
            # Every actor answers $SRV.PING/INFO/STATS, those without endpoints (codegen, the checker) too.
            service = await micro.add_service(
                nc, name=self.name, version=self.version, queue_group=self.name,
                description=f"Build My MCP Server {self.name} actor", metadata=self._service_metadata(),
            )
            for endpoint in self._endpoints:
                await service.add_endpoint(
                    name=endpoint.spec.endpoint,
                    subject=endpoint.spec.subject,
                    handler=self._rpc_entry(endpoint, base),
                )
            stopping = self._stopping = asyncio.Event()
            loops = [
                asyncio.create_task(
                    (self._consume if sub.max_batch is None else self._consume_batches)(
                        sub, base, stopping, settings.drain_timeout
                    )
                )
                for sub in self._subscriptions
            ]
            self.metrics = await serve_metrics(settings, js, [(s.spec.stream.name, s.spec.durable)
                                                              for s in self._subscriptions])
            listening = await _unless_stopped(stop, self._listening(nc, js, base, stopping, loops))
            if listening is not None:
                self.log.info("actor %s serving", self.name, extra={"copy_of": self.name})
                await stop.wait()
            self.log.info("actor %s draining", self.name)
            drain_by = asyncio.get_running_loop().time() + settings.drain_timeout
            await service.stop()
            service = None
            stopping.set()
            await asyncio.gather(*loops, return_exceptions=True)
        finally:
            if self.metrics is not None:
                await self.metrics.close()
                self.metrics = None
            await self._close(service, nc, db, drain_by)
            self.log.info("actor %s stopped", self.name)

    async def _open(self, settings: Settings) -> tuple[asyncpg.Pool | None, Client]:
        """The actor's database pool (when it owns tables) and NATS connection; NatsRefused after
        `NATS_REFUSALS` refusals of its credentials in a row."""
        db = None
        if self.migrations is not None:
            if not settings.database_url:
                raise RuntimeError(f"actor {self.name} needs BMMS_DATABASE_URL")
            db = await open_pool(settings.database_url, self.name, self.migrations, settings.db_pool_max)
        refusals = 0
        refused = asyncio.Event()

        async def count_refusals(exc: Exception) -> None:
            nonlocal refusals
            refusals = refusals + 1 if _is_refusal(exc) else 0
            if refusals >= NATS_REFUSALS:
                refused.set()

        try:
            connecting = asyncio.create_task(connect(settings, f"bmms-{self.name}", count_refusals))
            nc = await _unless_stopped(refused, connecting)
            if nc is None:
                raise NatsRefused(settings.nats_user, self.name)
        except BaseException:
            if db is not None:
                await db.close()
            raise
        return db, nc

    async def _listening(self, nc: Client, js: JetStreamContext, base: Context, stopping: asyncio.Event,
                         loops: list[asyncio.Task[None]]) -> bool:
        """Once every consumer is bound and every subscription reached the server: ready, and `started`."""
        await asyncio.gather(*(self._bound(sub, js) for sub in self._subscriptions))
        loops += [asyncio.create_task(self._tick(seconds, handler, base, stopping))
                  for seconds, handler in self._timers]
        # The endpoints' subscriptions must have reached the server before anyone is told we are
        # ready, or a request sent right away finds no responders.
        await subscriptions_live(nc)
        self.ready.set()
        await self.started(base)
        return True

    async def _close(self, service: Service | None, nc: Client, db: asyncpg.Pool | None,
                     drain_by: float | None) -> None:
        """Stop the service, drain the connection until `drain_by` (then close it: a bus that went away does not
        hold a stopping actor past its drain timeout), close the pool."""
        try:
            if service is not None:
                await service.stop()
            left = NATS_DRAIN_FLOOR_SECONDS if drain_by is None else drain_by - asyncio.get_running_loop().time()
            await asyncio.wait_for(nc.drain(), max(left, NATS_DRAIN_FLOOR_SECONDS))
        except Exception:  # already closed, the server went away, or the drain outlived its time
            self.log.debug("drain after stop failed", exc_info=True)
            with contextlib.suppress(Exception):
                await nc.close()
        if db is not None:
            await db.close()

    def _service_metadata(self) -> dict[str, str]:
        """What $SRV.INFO and STATS say besides the endpoints: the durable consumers this actor pulls from."""
        consumers = ",".join(f"{sub.spec.stream.name}/{sub.spec.durable}" for sub in self._subscriptions)
        return {"consumers": consumers} if consumers else {}

    async def started(self, ctx: Context) -> None:
        """Called once every endpoint and consumer listens (e.g. to reconcile state); no-op by default."""

    async def _tick(self, seconds: float, handler: TimerHandler, base: Context, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            token = trace_id_var.set(new_trace_id())
            try:
                await handler(base)
            except Exception:
                self.log.exception("timer %s failed", getattr(handler, "__name__", handler))
            finally:
                trace_id_var.reset(token)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=seconds)

    # --- request/reply ---

    def _rpc_entry(self, endpoint: _Endpoint[Any, Any], base: Context) -> Callable[[MicroRequest], Awaitable[None]]:
        spec = endpoint.spec

        async def entry(request: MicroRequest) -> None:
            headers = request.headers or {}
            token = trace_id_var.set(headers.get(TRACE_HEADER) or new_trace_id())
            try:
                try:
                    message = decode(spec.request, request.data)
                except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                    self.log.warning("rejected %s: %s", spec.subject, exc)
                    result: object = Failed(code=FailureCode.INVALID, detail=f"invalid {spec.request.__name__}: {exc}")
                else:
                    try:
                        with rpc_handling(self.name, spec.subject, headers) as seen:
                            result = await endpoint.handler(message, base)
                            seen.answered(result)
                    except Exception as exc:
                        if dependency_of(exc) is not None:
                            self.log.warning("%s: %s did not answer: %r", spec.subject, dependency_of(exc), exc)
                            result = unavailable_reply(exc)
                            await request.respond(encode(result))
                            return
                        self.log.exception("%s failed", spec.subject)
                        trace = trace_id_var.get()
                        result = Failed(code=FailureCode.INTERNAL, detail=f"internal error, trace id {trace}")
                await request.respond(encode(result))
            finally:
                trace_id_var.reset(token)

        return entry

    # --- pipeline consumers ---

    async def _bound(self, sub: _Subscription, js: JetStreamContext) -> None:
        # Fail fast with a clear message when provisioning has not run.
        try:
            await js.consumer_info(sub.spec.stream.name, sub.spec.durable)
        except nats.js.errors.NotFoundError:
            raise RuntimeError(
                f"consumer {sub.spec.stream.name}/{sub.spec.durable} does not exist: run `bmms migrate`"
            ) from None

    async def _consume(self, sub: _Subscription, base: Context, stopping: asyncio.Event, drain: float) -> None:
        spec = sub.spec
        pull = await base.js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream.name)
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not stopping.is_set():
                if len(in_flight) >= sub.max_in_flight:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await pull.fetch(batch=sub.max_in_flight - len(in_flight), timeout=0.5)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except nats.errors.ConnectionClosedError:
                    break
                except Exception:
                    self.log.warning("fetch from %s failed; retrying", spec.durable, exc_info=True)
                    await asyncio.sleep(0.5)  # the server is restarting; try again shortly
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self._deliver(sub, base, msg))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
            if in_flight:
                _, pending = await asyncio.wait(in_flight, timeout=drain)
                for task in pending:
                    task.cancel()  # not acked: JetStream redelivers it to another copy
                if pending:
                    self.log.warning("left %d unfinished message(s) of %s to redelivery", len(pending), spec.durable)
        finally:
            try:
                await pull.unsubscribe()
            except Exception:
                self.log.debug("unsubscribe after stop failed", exc_info=True)

    async def _deliver(self, sub: _Subscription, base: Context, msg: Msg) -> None:
        spec = sub.spec
        meta = msg.metadata
        deliveries = int(meta.num_delivered)
        trace = (msg.headers or {}).get(TRACE_HEADER) or new_trace_id()
        token = trace_id_var.set(trace)
        delivery = Delivery(
            subject=msg.subject,
            stream_seq=int(meta.sequence.stream),
            deliveries=deliveries,
            stored_at_us=int(meta.timestamp.timestamp() * 1_000_000),
        )
        ctx = Context(actor=self.name, nc=base.nc, js=base.js, db=base.db, log=self.log, delivery=delivery, _msg=msg,
                      _ack_wait=spec.ack_wait_seconds)
        try:
            if deliveries > spec.max_deliveries:
                reason = f"delivered {deliveries - 1} times without an answer (crash or timeout)"
                await self._park(sub, ctx, msg, reason)
                return
            try:
                message = decode(spec.message, msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                await self._park(sub, ctx, msg, f"undecodable message: {exc}")
                return
            try:
                with consumer_handling(self.name, spec.durable, msg.headers):
                    await self._retrying(lambda: sub.handler(message, ctx), [msg], spec)
            except asyncio.CancelledError:
                raise
            except _Stopping:
                with contextlib.suppress(Exception):
                    await msg.nak()  # another copy takes it at once
                return
            except DependencyAway as away:
                await self._park(sub, ctx, msg, str(away))
                return
            except Exception as exc:
                transient = dependency_of(exc) is not None
                if deliveries >= spec.max_deliveries:
                    self.log.error("%s: giving up on %s after %d deliveries", spec.durable, msg.subject, deliveries,
                                   exc_info=True)
                    await self._park(sub, ctx, msg, f"handler failed {deliveries} times; last error: {exc!r}")
                    return
                backoff = spec.backoff_seconds[min(deliveries, len(spec.backoff_seconds)) - 1]
                self.log.warning("%s: %s fault on %s (delivery %d), retry in %.1fs: %r", spec.durable,
                                 "transient" if transient else "handler", msg.subject, deliveries, backoff, exc)
                await msg.nak(delay=backoff)
                return
            await msg.ack_sync()
        finally:
            trace_id_var.reset(token)

    async def _retrying(self, handle: Callable[[], Awaitable[None]], msgs: list[Msg], spec: Consumer[Any]) -> None:
        """Run `handle`; while it fails because a dependency did not answer, run it again after the consumer's
        backoff (capped at TRANSIENT_BACKOFF_MAX_SECONDS, and within its ack wait), telling JetStream that `msgs`
        are still in progress.
        DependencyAway once `transient_retry_deadline` passed since the first such failure, _Stopping when the
        actor stops meanwhile; any other exception as it came."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        attempt = 0
        while True:
            try:
                await handle()
                return
            except Exception as exc:
                dependency = dependency_of(exc)
                if dependency is None:
                    raise
                now = loop.time()
                deadline = now + self.transient_retry_deadline if deadline is None else deadline
                if now >= deadline:
                    raise DependencyAway(f"a dependency did not answer for {self.transient_retry_deadline:g} s "
                                         f"(BMMS_TRANSIENT_RETRY_DEADLINE): {dependency}") from exc
                attempt += 1
                backoff = spec.backoff_seconds
                wait = min(backoff[min(attempt, len(backoff)) - 1] if backoff else 1.0,
                           TRANSIENT_BACKOFF_MAX_SECONDS, spec.ack_wait_seconds / 2, deadline - now)
                self.log.warning("waiting for a dependency (attempt %d), retry in %.1fs: %s (%r)", attempt, wait,
                                 dependency, exc)
            for msg in msgs:
                with contextlib.suppress(Exception):  # the bus may be what is away; redelivery covers a lost one
                    await msg.in_progress()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
            if self._stopping.is_set():
                raise _Stopping

    # --- batch consumers ---

    async def _consume_batches(self, sub: _Subscription, base: Context, stopping: asyncio.Event, drain: float) -> None:
        spec = sub.spec
        assert sub.max_batch is not None
        pull = await base.js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream.name)
        try:
            while not stopping.is_set():
                try:
                    # The first message as soon as it arrives (a pull for more would wait to fill the batch
                    # for the whole timeout), then the rest of the batch: what is pending, or arrives within the
                    # linger.
                    msgs = await pull.fetch(batch=1, timeout=0.5)
                    if sub.max_batch > 1:
                        msgs += await _rest_of_batch(pull, msgs[-1], sub.max_batch - 1, sub.linger, stopping)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except nats.errors.ConnectionClosedError:
                    break
                except Exception:
                    self.log.warning("fetch from %s failed; retrying", spec.durable, exc_info=True)
                    await asyncio.sleep(0.5)  # the server is restarting; try again shortly
                    continue
                handling = asyncio.create_task(self._deliver_batch(sub, base, msgs))
                stop_wait = asyncio.create_task(stopping.wait())
                await asyncio.wait({handling, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                if not handling.done():
                    _, pending = await asyncio.wait({handling}, timeout=drain)
                    if pending:
                        handling.cancel()  # not acked: JetStream redelivers the batch to another copy
                        self.log.warning("left a batch of %d message(s) of %s to redelivery", len(msgs),
                                         spec.durable)
                elif handling.exception() is not None:
                    self.log.error("batch of %s failed", spec.durable, exc_info=handling.exception())
        finally:
            try:
                await pull.unsubscribe()
            except Exception:
                self.log.debug("unsubscribe after stop failed", exc_info=True)

    def _item_context(self, base: Context, item: BatchItem[Any]) -> Context:
        return Context(actor=self.name, nc=base.nc, js=base.js, db=base.db, log=self.log, delivery=item.delivery,
                       _msg=item._msg)

    async def _deliver_batch(self, sub: _Subscription, base: Context, msgs: list[Msg]) -> None:
        spec = sub.spec
        items: list[BatchItem[Any]] = []
        for msg in msgs:
            meta = msg.metadata
            delivery = Delivery(
                subject=msg.subject,
                stream_seq=int(meta.sequence.stream),
                deliveries=int(meta.num_delivered),
                stored_at_us=int(meta.timestamp.timestamp() * 1_000_000),
            )
            trace = (msg.headers or {}).get(TRACE_HEADER)
            try:
                message = decode(spec.message, msg.data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                item = BatchItem(message=None, delivery=delivery, trace_id=trace, _msg=msg)
                await self._park_item(sub, base, item, f"undecodable message: {exc}")
                continue
            item = BatchItem(message=message, delivery=delivery, trace_id=trace, _msg=msg)
            if delivery.deliveries > spec.max_deliveries:
                reason = f"delivered {delivery.deliveries - 1} times without an answer (crash or timeout)"
                await self._park_item(sub, base, item, reason)
                continue
            items.append(item)
        if items:
            await self._handle_batch(sub, base, items)

    async def _handle_batch(self, sub: _Subscription, base: Context, items: list[BatchItem[Any]]) -> None:
        spec = sub.spec
        token = trace_id_var.set((items[0].trace_id if len(items) == 1 else None) or new_trace_id())

        async def handle() -> None:
            for item in items:
                item._verdict = None  # a run the dependency interrupted decided nothing
            await sub.handler(Batch(items), base)

        try:
            with consumer_handling(self.name, spec.durable, items[0]._msg.headers if len(items) == 1 else None):
                await self._retrying(handle, [item._msg for item in items], spec)
        except asyncio.CancelledError:
            raise
        except _Stopping:
            for item in items:
                with contextlib.suppress(Exception):
                    await item._msg.nak()  # another copy takes them at once
            return
        except DependencyAway as away:
            for item in items:
                item._verdict = ("park", str(away))
        except Exception as exc:
            if len(items) > 1:
                self.log.warning("%s: a batch of %d failed (%r); handling its messages one by one", spec.durable,
                                 len(items), exc)
                for item in items:
                    item._verdict = None
                    await self._handle_batch(sub, base, [item])
                return
            self.log.warning("%s: handler fault on %s (delivery %d): %r", spec.durable, items[0].delivery.subject,
                             items[0].delivery.deliveries, exc)
            items[0]._verdict = ("retry", f"handler failed: {exc!r}")
        finally:
            trace_id_var.reset(token)
        for item in items:
            if item._verdict is None:
                await item._msg.ack()  # the effect is committed; a lost ack only means a redelivery
            elif item._verdict[0] == "park":
                await self._park_item(sub, base, item, item._verdict[1])
            elif item.delivery.deliveries >= spec.max_deliveries:
                await self._park_item(sub, base, item,
                                      f"{item._verdict[1]} (still, after {item.delivery.deliveries} deliveries)")
            else:
                backoff = spec.backoff_seconds[min(item.delivery.deliveries, len(spec.backoff_seconds)) - 1]
                await item._msg.nak(delay=backoff)

    async def _park_item(self, sub: _Subscription, base: Context, item: BatchItem[Any], reason: str) -> None:
        token = trace_id_var.set(item.trace_id or new_trace_id())
        try:
            await self._park(sub, self._item_context(base, item), item._msg, reason)
        finally:
            trace_id_var.reset(token)

    async def _park(self, sub: _Subscription, ctx: Context, msg: Msg, reason: str) -> None:
        """Record the message and the reason in the dead-letter stream, then stop its redelivery."""
        spec = sub.spec
        assert ctx.delivery is not None
        letter = DeadLetter(
            stream=spec.stream.name,
            consumer=spec.durable,
            subject=msg.subject,
            stream_seq=ctx.delivery.stream_seq,
            deliveries=ctx.delivery.deliveries,
            reason=reason,
            payload=msg.data,
            headers=dict(msg.headers or {}),
            parked_at=utc_now(),
        )
        subject = DEAD_LETTERS.subject(stream=spec.stream.name, consumer=spec.durable)
        letter_id = f"dl:{spec.stream.name}:{spec.durable}:{ctx.delivery.stream_seq}:{ctx.delivery.stored_at_us}"
        await ctx.publish(subject, letter, msg_id=letter_id)
        dead_letter_parked(spec.stream.name, spec.durable)
        self.log.error("parked %s seq %d from %s: %s", msg.subject, ctx.delivery.stream_seq, spec.durable, reason)
        if sub.on_park is not None:
            try:
                await sub.on_park(msg.data, reason, ctx)
            except Exception:
                self.log.exception("on_park hook of %s failed", spec.durable)
        await msg.term()


async def _pending(pull: JetStreamContext.PullSubscription, last: Msg, room: int) -> list[Msg]:
    """Up to `room` of the messages still pending after `last` (its metadata counts them), without waiting for
    new ones: a pull for more than is there would wait its whole timeout for the batch to fill."""
    pending = int(last.metadata.num_pending or 0)
    if not pending or room < 1:
        return []
    try:
        # They exist, so this answers as soon as they are delivered (or another copy took them: the server's
        # "no messages" ends it).
        return await pull.fetch(batch=min(room, pending), timeout=0.5)
    except (nats.errors.TimeoutError, TimeoutError):
        return []


async def _rest_of_batch(pull: JetStreamContext.PullSubscription, first: Msg, room: int, linger: float,
                         stopping: asyncio.Event) -> list[Msg]:
    """Up to `room` more messages for the batch that `first` started: those pending now, and when that does
    not fill it and the consumer lingers, those that arrived within `linger` seconds, taken when the time is
    up (asking as they arrive costs a request or two per message)."""
    more = await _pending(pull, first, room)
    if not linger or len(more) >= room:
        return more
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), linger)
        return more  # stopping: handle what the batch has
    try:
        arrived = await pull.fetch(batch=1, timeout=LINGER_PROBE_SECONDS)
    except (nats.errors.TimeoutError, TimeoutError):
        return more
    return more + arrived + await _pending(pull, arrived[-1], room - len(more) - len(arrived))


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None when `stop` is set first (then `work` is cancelled and waited for)."""
    working = asyncio.ensure_future(work)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({working, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not working.done():
            working.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await working
    if working.cancelled():
        return None
    return working.result()


def _is_refusal(exc: Exception) -> bool:
    """Whether a NATS connection error is the server refusing the credentials."""
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower()
