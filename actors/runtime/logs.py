"""Structured logs that carry the current trace id."""

from __future__ import annotations

import contextvars
import logging
import random
import sys
import time

import msgspec

trace_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)
"""The trace id of the work this task is doing, set from the HTTP edge or the NATS header."""

_json = msgspec.json.Encoder()
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def new_trace_id() -> str:
    """A fresh W3C-sized trace id (32 hex digits, never all zero). A trace id only has to be unique, not
    secret: the process's PRNG (reseeded in forked children) makes one without a system call per request."""
    return f"{random.getrandbits(128) or 1:032x}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, trace id and any `extra` fields."""

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
                entry[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _json.encode(entry).decode()


class PlainFormatter(logging.Formatter):
    """Human-readable lines for a terminal, still carrying the trace id."""

    def format(self, record: logging.LogRecord) -> str:
        trace = trace_id_var.get()
        line = f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        if trace:
            line += f" trace={trace}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str, json_lines: bool) -> None:
    """Install the process's one log handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
