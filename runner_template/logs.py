"""Structured logs, for every process of the platform: one JSON object a line on stderr carrying the current
trace id; for runners, one line per HTTP request and per tool call.

Nothing logged carries a token or a secret: requests log method, path, status and time; tool calls log the
tool, status, duration, size and the caller's client id and subject.
"""

from __future__ import annotations

import contextvars
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

_json = msgspec.json.Encoder()
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

access_log = logging.getLogger("bmms.runner.http")

trace_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)
"""The trace id of the work this task is doing, set from the HTTP edge or the NATS header."""


def new_trace_id() -> str:
    """A fresh W3C-sized trace id (32 hex digits, never all zero). A trace id only has to be unique, not
    secret: the process's PRNG (reseeded in forked children) makes one without a system call per request."""
    return f"{random.getrandbits(128) or 1:032x}"


class JsonLines(logging.Formatter):
    """time, level, logger, message, the trace id and every `extra` field, as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        trace = trace_id_var.get()
        if trace:
            entry["trace_id"] = trace
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool | list | None) else repr(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _json.encode(entry).decode()


class PlainLines(logging.Formatter):
    """Human-readable lines for a terminal, still carrying the trace id."""

    def format(self, record: logging.LogRecord) -> str:
        trace = trace_id_var.get()
        line = f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        if trace:
            line += f" trace={trace}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    """Install the process's one log handler on stderr: JSON lines (or plain ones for a terminal). Every
    process of the platform, runners included, logs this way."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if json_lines else PlainLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx2 logs every upstream request's full URL at INFO: with query-parameter auth that holds a secret
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    # the SDK logs each stateless request's transport set-up and tear-down at INFO; `AccessLog` says enough
    logging.getLogger("mcp").setLevel(logging.WARNING)


class ResponseStatus:
    """An ASGI `send` that passes every message on and notes the status the app answered with (`status` until
    then: what to report when the app fails before answering). The access log and the gateway's metrics use it."""

    def __init__(self, send: Callable[[Any], Awaitable[None]], status: int = 0) -> None:
        self.status = status
        self._send = send

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        await self._send(message)


class AccessLog:
    """ASGI middleware: one log line per HTTP request (no headers, no query string: they may hold secrets)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        watch = ResponseStatus(send)
        try:
            await self.app(scope, receive, watch)
        finally:
            status = watch.status
            access_log.info("%s %s %d", scope["method"], scope["path"], status, extra={
                "event": "http", "method": scope["method"], "path": scope["path"], "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "mcp_method": _header(scope, b"mcp-method"), "protocol": _header(scope, b"mcp-protocol-version"),
            })


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")[:100]
    return None
