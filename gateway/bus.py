"""The gateway's only way to the actors: typed RPC calls over NATS, failures raised as problems.

A call that reached nobody (no copy of the actor subscribed, the bus out of reach) is sent again for a moment
(`NO_RESPONDERS_GRACE_SECONDS`: a copy may be reconnecting), then answered 503 with `Retry-After`. A call that
reached a copy which never answered (it was killed or froze with the request) is sent again, to another copy,
only when it is idempotent (`IDEMPOTENT`), each attempt taking a part of the call's timeout so the retries fit in
it; a call that is not idempotent is not repeated, and its 503 may follow an effect.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client

from bus_schemas.base import Failed, FailureCode, Message
from bus_schemas.registry import (
    AUTHENTICATE,
    GET_BUILD,
    GET_ME,
    GET_QUOTA,
    GET_SERVER,
    GET_SERVER_LOGS,
    GET_USAGE,
    LIST_API_KEYS,
    LIST_INVITES,
    LIST_MEMBERS,
    LIST_SERVER_SECRETS,
    LIST_SERVERS,
    LIST_SESSIONS,
    OAUTH_GET_JWKS,
    STAGE_BUILD_SECRETS,
    SUBMIT_BUILD,
    Rpc,
)
from gateway.problems import Problem, problem_from_failed, unavailable_problem
from runner_template.rpc import Answer, Requests, call

Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep")

IDEMPOTENT: frozenset[str] = frozenset(rpc.subject for rpc in (
    AUTHENTICATE, GET_BUILD, GET_ME, GET_QUOTA, GET_SERVER, GET_SERVER_LOGS, GET_USAGE, LIST_API_KEYS,
    LIST_INVITES, LIST_MEMBERS, LIST_SERVER_SECRETS, LIST_SERVERS, LIST_SESSIONS, OAUTH_GET_JWKS,
    STAGE_BUILD_SECRETS,  # the same values put again
    SUBMIT_BUILD,  # the gateway gives each request an id the build registry records a build under once
))
"""RPCs (by subject) that may be sent again after a copy took one and did not answer: reads, and the calls whose
repetition the actor makes harmless."""

ATTEMPTS = 3
"""An idempotent call's timeout is split in this many attempts, so a copy that died with it leaves time for
another."""
MIN_ATTEMPT_SECONDS = 1.0
"""No attempt waits less than this (when the call's timeout allows it)."""
NO_RESPONDERS_GRACE_SECONDS = 1.0
"""How long a call that reached nobody is sent again before it is answered 503 (a copy reconnecting to a
restarted server subscribes again within this); waiting longer would only delay the 503 that says to retry."""
FIRST_RETRY_SECONDS = 0.05
"""The wait before the first retry; it doubles up to `MAX_RETRY_WAIT_SECONDS`."""
MAX_RETRY_WAIT_SECONDS = 0.5
CLOCK_SKEW_SECONDS = 10.0
"""How far the clock an actor goes by (the database's) may run ahead of the gateway's: a deadline handed to it
is that much later, so a skewed clock never refuses a request the gateway still waits for."""


def new_request_id() -> str:
    """A fresh id for one request that an actor records something under (a build: the build registry's ids are
    time-ordered and subject-safe, and so is this), so sending it again records nothing new."""
    return f"b{int(time.time() * 1000):011x}{secrets.token_hex(6)}"


class _Attempt:
    """One attempt's transport: the gateway's requester, noting what became of the request when it was not
    answered (`call` turns every such end into the same `Failed(unavailable)` value)."""

    def __init__(self, requester: Requests) -> None:
        self.requester = requester
        self.reached_nobody = False
        """No copy was subscribed, or the bus was out of reach: nobody has the request."""
        self.unanswered = False
        """A copy may have taken the request (timeout, connection lost in flight) and not answered."""

    async def request(self, subject: str, payload: bytes = b"", timeout: float = 0.5, old_style: bool = False,
                      headers: dict[str, Any] | None = None) -> Answer:
        try:
            return await self.requester.request(subject, payload, timeout=timeout, old_style=old_style,
                                                headers=headers)
        except (nats.errors.NoRespondersError, nats.errors.ConnectionReconnectingError):
            self.reached_nobody = True
            raise nats.errors.NoRespondersError from None
        except (nats.errors.TimeoutError, TimeoutError, nats.errors.ConnectionClosedError):
            self.unanswered = True
            raise nats.errors.TimeoutError from None


class Unanswered(Problem):
    """A 503 for an idempotent call that copies took and none answered within its timeout: unlike other 503s,
    whether it took effect is not known."""


class BusClient:
    """Calls RPC endpoints as the `gateway` NATS user; every answer is the expected type or a Problem."""

    def __init__(self, nc: Client, requester: Requests, rpc_timeout: float) -> None:
        self.nc = nc
        self.requester = requester
        """Every request the gateway sends goes through this: a `Requester` (gateway.requester)."""
        self.rpc_timeout = rpc_timeout

    def answered_by(self, rpc: Rpc[Any, Any]) -> str:
        """RFC 3339: when a call of `rpc` made now is answered at the latest, plus `CLOCK_SKEW_SECONDS` (the last
        moment an actor, by its own clock, may still act on it)."""
        timeout = max(self.rpc_timeout, rpc.timeout_seconds or 0.0)
        at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timeout + CLOCK_SKEW_SECONDS)
        return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    async def ask(self, rpc: Rpc[Req, Rep], request: Req) -> Rep:
        """Call `rpc`; return its reply, or raise the Problem its `Failed` reply maps to (503 with `Retry-After`
        when no copy answered, `Unanswered` when copies of an idempotent one took it and none answered)."""
        timeout = max(self.rpc_timeout, rpc.timeout_seconds or 0.0)
        # A long call is not cut into attempts: a healthy copy may need all of its time.
        retried = rpc.subject in IDEMPOTENT and rpc.timeout_seconds is None
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + timeout
        per_attempt = max(timeout / ATTEMPTS, MIN_ATTEMPT_SECONDS) if retried else timeout
        wait = FIRST_RETRY_SECONDS
        uncertain = False
        while True:
            left = deadline - loop.time()
            attempt = _Attempt(self.requester)
            try:
                reply = await call(attempt, rpc, request, timeout=min(left, per_attempt))
            except nats.errors.Error as exc:  # the request could not be sent at all
                raise unavailable_problem(f"the message bus is unavailable ({type(exc).__name__})") from exc
            if not isinstance(reply, Failed):
                return reply
            if not (attempt.reached_nobody or attempt.unanswered):
                raise problem_from_failed(reply)  # a copy answered: its answer stands
            uncertain = uncertain or attempt.unanswered
            again = (attempt.unanswered and retried) or (
                attempt.reached_nobody and loop.time() - start < NO_RESPONDERS_GRACE_SECONDS)
            if not again or loop.time() + wait >= deadline:
                break
            await asyncio.sleep(wait)
            wait = min(wait * 2, MAX_RETRY_WAIT_SECONDS)
        if not getattr(self.requester, "is_connected", True):
            raise unavailable_problem("the message bus is unavailable")
        if uncertain:
            raise Unanswered(503, reply.detail, code=FailureCode.UNAVAILABLE,
                             headers=unavailable_problem(reply.detail).headers)
        raise unavailable_problem(reply.detail)
