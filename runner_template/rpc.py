"""Typed RPC calls on the bus, for every process that makes them (the gateway, the actors, the runners):
`call(nc, rpc, request)` answers what the endpoint's `Rpc[Req, Rep]` says it answers, or `Failed`; a missing
or silent actor is a `Failed(unavailable)` value, not an exception."""

from __future__ import annotations

import contextvars
from typing import Any, Protocol, TypeVar

import nats.errors
from nats.aio.client import Client

from bus_schemas.base import Failed, FailureCode, Message
from bus_schemas.registry import TRACE_HEADER, Rpc
from runner_template.codec import decode, encode
from runner_template.logs import trace_id_var

Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep")

traceparent_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("traceparent", default=None)
"""The W3C `traceparent` of the span doing this task's work, when traces are recorded
(`actors.runtime.observability`): sent on with the trace id, so the next span is its child."""


class Answer(Protocol):
    """What a request gets back: nats-py's `Msg`, or a `Reply`."""

    @property
    def data(self) -> bytes: ...

    @property
    def headers(self) -> dict[str, str] | None: ...


class Requests(Protocol):
    """What can send a request and wait for its reply: a NATS `Client`, or a `Requester`."""

    async def request(
        self, subject: str, payload: bytes = b"", timeout: float = 0.5, old_style: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> Answer: ...


async def subscriptions_live(nc: Client, timeout: float = 10.0) -> None:
    """Return once every subscription made on `nc` so far is known to the server, so a request sent right
    after (from any connection) finds its responder.

    `Client.flush()` alone does not promise that: nats-py writes its PING straight to the socket, ahead of
    SUB commands still queued for its flusher task, so the PONG can come back before the server has seen
    them (8 of 300 fresh subscribers missed their first request in one run on this machine kind). Waiting
    for the flusher first puts the PING behind them.
    """
    await nc._flush_pending(force_flush=True)  # the flusher's own wait; no public equivalent
    await nc.flush(timeout=timeout)  # type: ignore[arg-type]  # a float works


def trace_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Headers that carry the current trace id onward."""
    headers = dict(extra or {})
    trace = trace_id_var.get()
    if trace:
        headers[TRACE_HEADER] = trace
    parent = traceparent_var.get()
    if parent:
        headers["traceparent"] = parent
    return headers


async def call(nc: Requests, rpc: Rpc[Req, Rep], request: Req, timeout: float) -> Rep | Failed:
    """Call an RPC endpoint through a NATS connection or a `Requester`; transport failures come back as
    `Failed(unavailable)` values."""
    try:
        reply = await nc.request(rpc.subject, encode(request), timeout=timeout, headers=trace_headers())
    except nats.errors.NoRespondersError:
        return Failed(code=FailureCode.UNAVAILABLE, detail=f"no {rpc.service} actor is running")
    except (nats.errors.TimeoutError, TimeoutError):
        return Failed(code=FailureCode.UNAVAILABLE, detail=f"the {rpc.service} actor did not answer in time")
    if reply.headers and reply.headers.get("Nats-Service-Error-Code"):
        detail = reply.headers.get("Nats-Service-Error", "")
        return Failed(code=FailureCode.INTERNAL, detail=f"{rpc.service} failed: {detail}")
    result: Rep | Failed = decode(rpc.reply, reply.data)
    return result
