"""Transient or terminal: the one place that tells a dependency that did not answer from a real refusal.

A dependency that does not answer (the bus, another actor, the database) is transient: the work is retried with
the runtime's backoff until `Settings.transient_retry_deadline`, and an RPC answers `unavailable` (503 at the
edge, with `Retry-After`). Only a refusal (a `Failed` that is not `unavailable`, a step's own `StepFailed`) is
terminal. Handlers raise `TransientError` (or `unavailable(failed)` for an RPC's `Failed(unavailable)` answer);
the classification below also knows the exceptions the bus and database clients raise when they are away.
"""

from __future__ import annotations

import asyncpg
import nats.errors
import nats.js.errors

from bus_schemas.base import Failed, FailureCode

RETRY_AFTER_SECONDS = 2
"""What an RPC answering `unavailable` because a dependency is away tells its caller to wait (`Retry-After`)."""


class TransientError(Exception):
    """A fault worth retrying later (a dependency is down); the message is retried with backoff."""


_BUS_ERRORS = (
    nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError, nats.errors.StaleConnectionError, nats.errors.OutboundBufferLimitError,
    nats.errors.FlushTimeoutError, nats.js.errors.ServiceUnavailableError, nats.js.errors.NoStreamResponseError,
)
_DATABASE_ERRORS = (
    asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError, asyncpg.InterfaceError,
)


def dependency_of(exc: BaseException) -> str | None:
    """Which dependency did not answer when `exc` was raised ("the message bus", "the database", or the
    TransientError's own words), or None when `exc` is not transient."""
    if isinstance(exc, TransientError):
        return str(exc) or _SOME_DEPENDENCY
    if isinstance(exc, _BUS_ERRORS):
        return "the message bus"
    if isinstance(exc, _DATABASE_ERRORS):
        return "the database"
    if isinstance(exc, ConnectionError | TimeoutError):  # refused, reset or timed out: whose, the code says
        return _raised_in(exc)
    if isinstance(exc, OSError):  # e.g. asyncio's "Multiple exceptions" of a host with two addresses
        named = _raised_in(exc)
        return None if named == _SOME_DEPENDENCY else named  # a missing file, a denied permission: not transient
    return None


_SOME_DEPENDENCY = "a dependency"


_CLIENT_PACKAGES = {"asyncpg": "the database", "nats": "the message bus"}


def _raised_in(exc: BaseException) -> str:
    """The dependency whose client library raised `exc` (its innermost such frame), else `_SOME_DEPENDENCY`."""
    named = _SOME_DEPENDENCY
    tb = exc.__traceback__
    while tb is not None:
        package = str(tb.tb_frame.f_globals.get("__name__", "")).partition(".")[0]
        named = _CLIENT_PACKAGES.get(package, named)
        tb = tb.tb_next
    return named


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` says a dependency did not answer (retry later), not that the work is wrong."""
    return dependency_of(exc) is not None


def unavailable(failed: Failed) -> TransientError | None:
    """For an RPC's answer: a TransientError to raise when it says the callee (or what it needs) did not answer,
    None when it is a real refusal the caller must act on."""
    if failed.code == FailureCode.UNAVAILABLE:
        return TransientError(failed.detail)
    return None


def unavailable_reply(exc: BaseException) -> Failed:
    """What an RPC answers when a dependency it needs did not answer: `unavailable`, with a retry delay."""
    return Failed(code=FailureCode.UNAVAILABLE, detail=f"{dependency_of(exc)} is unavailable; retry shortly",
                  retry_after_seconds=RETRY_AFTER_SECONDS)
