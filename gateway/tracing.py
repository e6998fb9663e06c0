"""Trace ids at the edge: taken from an incoming W3C `traceparent` or made fresh, carried to the bus.

The middleware sets `trace_id_var` for the request, so `actors.runtime.bus.call` forwards it in the NATS
header, and answers it in `X-Trace-Id`. The id is also kept in the ASGI scope, so error responses made
outside the middleware (an unknown route) carry the same id.

When traces are recorded (`actors.runtime.observability`), the request also runs in a server span named by its
route template (a child of the incoming `traceparent`, else a new trace with this id), whose context the bus
carries on to every actor that works for it.
"""

from __future__ import annotations

import re
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from actors.runtime.logs import new_trace_id, trace_id_var
from actors.runtime.observability import http_span, tracing_on

TRACE_RESPONSE_HEADER = "X-Trace-Id"
_SCOPE_KEY = "bmms_trace_id"
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_HEADER_BYTES = TRACE_RESPONSE_HEADER.lower().encode()


def trace_id_from_traceparent(value: str | None) -> str | None:
    """The trace-id of a W3C `traceparent` header, or None when it is absent or malformed."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match.group(1) == "0" * 32 or value.startswith("ff"):
        return None  # all-zero trace ids and version ff are invalid per W3C Trace Context
    return match.group(1)


def request_header(scope: Scope | dict[str, Any], name: bytes) -> str | None:
    """The first value of request header `name` (lower case, as ASGI servers give names), read straight from
    the scope: cheaper than building Litestar's `Headers` for the one or two a hot path reads."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def scope_trace_id(scope: Scope | dict[str, Any]) -> str:
    """The trace id of this request: remembered in the scope, else from `traceparent`, else new."""
    found = scope.get(_SCOPE_KEY)
    if isinstance(found, str):
        return found
    trace_id = trace_id_from_traceparent(request_header(scope, b"traceparent")) or new_trace_id()
    scope[_SCOPE_KEY] = trace_id  # type: ignore[literal-required]  # Litestar's Scope TypedDict has no extra keys
    return trace_id


def trace_middleware(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: set the request's trace id for the bus and return it in `X-Trace-Id`."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        trace_id = scope_trace_id(scope)
        header = (_HEADER_BYTES, trace_id.encode())

        async def send_with_trace(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                # The problem handler may already have set it; never send it twice.
                if not any(name.lower() == _HEADER_BYTES for name, _ in headers):
                    headers.append(header)
                    message["headers"] = headers
            await send(message)

        token = trace_id_var.set(trace_id)
        try:
            # WebSocket frames are the hot path: no wrapper around their send.
            sending = send if scope["type"] == ScopeType.WEBSOCKET else send_with_trace
            if tracing_on():
                await _traced(app, scope, receive, sending)
            else:
                await app(scope, receive, sending)
        finally:
            trace_id_var.reset(token)

    return middleware


async def _traced(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run the request in its server span, which records the answer's status."""
    method = str(scope.get("method", "WEBSOCKET"))
    with http_span(method, scope.get("path_template") or scope["path"],
                   request_header(scope, b"traceparent")) as span:

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start" and span is not None:
                span.set_attribute("http.response.status_code", int(message["status"]))
            await send(message)

        await app(scope, receive, send_status)
