"""Structured logs: one JSON object a line on stderr, one line per HTTP request and per tool call.

Nothing logged carries a token or a secret: requests log method, path, status and time; tool calls log the
tool, status, duration, size and the caller's client id and subject.
"""

from __future__ import annotations

import logging
import sys
import time

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_json = msgspec.json.Encoder()
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

access_log = logging.getLogger("bmms.runner.http")


class JsonLines(logging.Formatter):
    """time, level, logger, message and every `extra` field, as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool | list | None) else repr(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _json.encode(entry).decode()


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for this process (uvicorn's own access log stays off: `AccessLog` replaces it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx2 logs every upstream request's full URL at INFO: with query-parameter auth that holds a secret
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    # the SDK logs each stateless request's transport set-up and tear-down at INFO; `AccessLog` says enough
    logging.getLogger("mcp").setLevel(logging.WARNING)


class AccessLog:
    """ASGI middleware: one log line per HTTP request (no headers, no query string: they may hold secrets)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
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
