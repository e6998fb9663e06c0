"""Metrics and traces for operators, for the gateway and every actor: Prometheus metrics and OpenTelemetry spans,
each recorded only when configured.

- Metrics (`prometheus-client`, the process's default registry): on with `BMMS_METRICS=true` (the gateway serves
  them at `/metrics`) or `BMMS_METRICS_PORT` (an actor serves them on that port, with its consumers' lag read
  from JetStream when scraped). HTTP requests, RPC and consumer handling times, dead letters, build steps.
- Traces: on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (spans go there over OTLP/HTTP; the SDK reads its other
  `OTEL_*` variables itself), or with `trace_with(provider)`. A span's trace id is the platform's trace id (the
  one in logs, `X-Trace-Id` and the `Bmms-Trace-Id` header), and its context crosses the bus in a W3C
  `traceparent` NATS header (`runner_template.rpc.trace_headers`), so one build is one trace from
  `POST /v1/builds` through each step's handling to `deployed`.
- Off (the default): nothing is exported, and each hook costs one check (`handling` answers a shared no-op).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from actors.runtime.faults import dependency_of
from actors.runtime.logs import trace_id_var
from actors.runtime.settings import Settings
from bus_schemas.base import Failed
from runner_template.rpc import traceparent_var

log = logging.getLogger("bmms.observability")

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The media type of `metrics_text()`."""

HTTP_REQUESTS = Counter("bmms_http_requests_total", "HTTP requests answered by the gateway",
                        ["route", "method", "status"])
HTTP_DURATION = Histogram("bmms_http_request_duration_seconds", "Time to answer an HTTP request (to its last byte)",
                          ["route", "method"])
RPC_DURATION = Histogram("bmms_rpc_duration_seconds", "Time an actor took to answer an RPC on the bus",
                         ["actor", "subject", "outcome"])
CONSUMER_DURATION = Histogram("bmms_consumer_handling_seconds", "Time an actor took to handle a consumed message "
                              "(or a batch), retries in place included", ["actor", "consumer", "outcome"])
DEAD_LETTERS = Counter("bmms_dead_letters_total", "Messages parked in the dead-letter stream", ["stream", "consumer"])
CONSUMER_PENDING = Gauge("bmms_consumer_pending_messages", "Messages of a durable consumer not yet delivered (lag)",
                         ["stream", "consumer"])
CONSUMER_ACK_PENDING = Gauge("bmms_consumer_ack_pending_messages", "Messages delivered but not yet acknowledged",
                             ["stream", "consumer"])
CONSUMER_REDELIVERED = Gauge("bmms_consumer_redelivered_messages", "Messages delivered more than once and not yet "
                             "acknowledged", ["stream", "consumer"])
BUILD_STEP_DURATION = Histogram("bmms_build_step_duration_seconds", "Time a build's step took, from its `started` to "
                                "its handing-on event", ["step", "outcome"],
                                buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))


@dataclass
class _Switches:
    metrics: bool = False
    tracer: trace.Tracer | None = None


_on = _Switches()
_propagator = TraceContextTextMapPropagator()


class _PlatformTraceIds(RandomIdGenerator):
    """A new trace takes the platform's trace id of the work (logs, `X-Trace-Id`), so both name the same trace."""

    def generate_trace_id(self) -> int:
        current = trace_id_var.get()
        if current:
            with contextlib.suppress(ValueError):
                return int(current, 16)
        return super().generate_trace_id()


def configure(settings: Settings, service: str, environ: Mapping[str, str] | None = None) -> None:
    """Switch on what this process's settings ask for: metrics with `metrics` or `metrics_port`, traces over OTLP
    when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (once per process; a provider already in use is kept)."""
    if settings.metrics or settings.metrics_port is not None:
        _on.metrics = True
    env = os.environ if environ is None else environ
    if _on.tracer is None and env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # only when asked

        provider = new_tracer_provider(service)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace_with(provider)


def new_tracer_provider(service: str) -> TracerProvider:
    """An SDK tracer provider whose new traces take the platform's trace ids; add a span processor to export."""
    resource = Resource.create({"service.name": f"bmms-{service}"})
    return TracerProvider(resource=resource, id_generator=_PlatformTraceIds())


def trace_with(provider: trace.TracerProvider | None) -> None:
    """Record spans with `provider` from now on (None: stop recording)."""
    _on.tracer = None if provider is None else provider.get_tracer("bmms")


def metrics_on() -> bool:
    """Whether this process records metrics."""
    return _on.metrics


def tracing_on() -> bool:
    """Whether this process records spans."""
    return _on.tracer is not None


def metrics_text() -> bytes:
    """Every metric of this process, in Prometheus' text format."""
    return generate_latest(REGISTRY)


# --- handling hooks ---


class Seen:
    """What a handler's run came to, for its metric and span: `ok` unless told or it raised."""

    __slots__ = ("outcome",)

    def __init__(self) -> None:
        self.outcome = "ok"

    def answered(self, result: object) -> None:
        """The handler answered `result`: a `Failed` value is outcome `failed`."""
        if isinstance(result, Failed):
            self.outcome = "failed"


class _Unobserved:
    """The hook when nothing is recorded: enters and leaves without work."""

    seen = Seen()

    def __enter__(self) -> Seen:
        return self.seen

    def __exit__(self, *exc: object) -> None:
        return None


_UNOBSERVED = _Unobserved()


class _Handling:
    """Times one handler run into `histogram` and runs it in a span whose parent came in `traceparent`."""

    __slots__ = ("_labels", "_name", "_parent", "_seen", "_span", "_started", "_token", "histogram")

    def __init__(self, name: str, traceparent: str | None, histogram: Histogram | None, labels: tuple[str, ...]):
        self._name = name
        self._parent = traceparent
        self.histogram = histogram
        self._labels = labels
        self._seen = Seen()
        self._span: contextlib.AbstractContextManager[trace.Span] | None = None
        self._token: Any = None
        self._started = 0.0

    def __enter__(self) -> Seen:
        self._started = time.perf_counter()
        tracer = _on.tracer
        if tracer is not None:
            parent = _propagator.extract({"traceparent": self._parent}) if self._parent else None
            self._span = tracer.start_as_current_span(self._name, context=parent)
            span = self._span.__enter__()
            self._token = traceparent_var.set(traceparent_of(span))
        return self._seen

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None:
            self._seen.outcome = "unavailable" if isinstance(exc, Exception) and dependency_of(exc) else "error"
        if self.histogram is not None:
            self.histogram.labels(*self._labels, self._seen.outcome).observe(time.perf_counter() - self._started)
        if self._span is not None:
            traceparent_var.reset(self._token)
            trace.get_current_span().set_attribute("bmms.outcome", self._seen.outcome)
            self._span.__exit__(kind, exc, tb)


def handling(span: str, traceparent: str | None = None, histogram: Histogram | None = None,
             *labels: str) -> contextlib.AbstractContextManager[Seen]:
    """The hook around a handler run: span `span` (a child of `traceparent`, else of the current span) and the
    run's time in `histogram` under `labels` plus its outcome; a shared no-op when neither is recorded."""
    if not _on.metrics and _on.tracer is None:
        return _UNOBSERVED
    return _Handling(span, traceparent, histogram if _on.metrics else None, labels)


def rpc_handling(actor: str, subject: str, headers: Mapping[str, str]) -> contextlib.AbstractContextManager[Seen]:
    """The hook around an actor's answer to an RPC (`headers`: the request's)."""
    if not _on.metrics and _on.tracer is None:
        return _UNOBSERVED  # checked first: off, not even the span's name is made
    return handling(f"rpc {subject}", headers.get("traceparent"), RPC_DURATION, actor, subject)


def consumer_handling(actor: str, consumer: str, headers: Mapping[str, str] | None
                      ) -> contextlib.AbstractContextManager[Seen]:
    """The hook around an actor's handling of a consumed message (`headers`: its headers) or batch (None)."""
    if not _on.metrics and _on.tracer is None:
        return _UNOBSERVED
    return handling(f"consume {consumer}", (headers or {}).get("traceparent"), CONSUMER_DURATION, actor, consumer)


def step_handling(step: str) -> contextlib.AbstractContextManager[Seen]:
    """The hook around a build step's run, a child of the handling of the event that started it."""
    if not _on.metrics and _on.tracer is None:
        return _UNOBSERVED
    return handling(f"build step {step}", None, BUILD_STEP_DURATION, step)


def dead_letter_parked(stream: str, consumer: str) -> None:
    """Count a message parked in the dead-letter stream."""
    if _on.metrics:
        DEAD_LETTERS.labels(stream, consumer).inc()


def traceparent_of(span: trace.Span) -> str:
    """The W3C `traceparent` naming `span` as the parent."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


@contextlib.contextmanager
def http_span(method: str, path: str, traceparent: str | None) -> Iterator[trace.Span | None]:
    """The server span of one HTTP request (None when traces are off); its `traceparent` goes on to the bus."""
    tracer = _on.tracer
    if tracer is None:
        yield None
        return
    parent = _propagator.extract({"traceparent": traceparent}) if traceparent else None
    with tracer.start_as_current_span(f"{method} {path}", context=parent, kind=trace.SpanKind.SERVER) as span:
        span.set_attribute("http.request.method", method)
        token = traceparent_var.set(traceparent_of(span))
        try:
            yield span
        finally:
            traceparent_var.reset(token)


# --- an actor's metrics listener ---


async def sample_consumers(js: JetStreamContext, consumers: Iterable[tuple[str, str]]) -> None:
    """Read each (stream, durable) consumer's lag, unacknowledged and redelivered counts from JetStream."""
    for stream, durable in consumers:
        try:
            info = await js.consumer_info(stream, durable)
        except Exception as exc:  # the bus may be away; the scrape still answers with what else there is
            log.warning("consumer info of %s/%s not read: %r", stream, durable, exc)
            continue
        CONSUMER_PENDING.labels(stream, durable).set(info.num_pending or 0)
        CONSUMER_ACK_PENDING.labels(stream, durable).set(info.num_ack_pending or 0)
        CONSUMER_REDELIVERED.labels(stream, durable).set(info.num_redelivered or 0)


class MetricsListener:
    """A small HTTP listener answering `GET /metrics` (and nothing else) with this process's metrics, after
    sampling its consumers."""

    def __init__(self, js: JetStreamContext, consumers: Iterable[tuple[str, str]]) -> None:
        self._js = js
        self._consumers = tuple(consumers)
        self._server: asyncio.Server | None = None
        self.port = 0
        """The port it listens on (the chosen one when asked for 0)."""

    async def start(self, host: str, port: int) -> MetricsListener:
        """Listen on `host:port`."""
        self._server = await asyncio.start_server(self._answer, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics at http://%s:%d/metrics", host, self.port)
        return self

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, _, rest = head.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method != b"GET" or path != b"/metrics":
                status, body, media = b"404 Not Found", b"not found\n", b"text/plain"
            else:
                await sample_consumers(self._js, self._consumers)
                status, body, media = b"200 OK", metrics_text(), METRICS_CONTENT_TYPE.encode()
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + media + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a client that went away or never asked; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def serve_metrics(settings: Settings, js: JetStreamContext,
                        consumers: Iterable[tuple[str, str]]) -> MetricsListener | None:
    """An actor's metrics listener on `BMMS_METRICS_PORT`, or None when it is not set."""
    if settings.metrics_port is None:
        return None
    return await MetricsListener(js, consumers).start(settings.metrics_host, settings.metrics_port)
