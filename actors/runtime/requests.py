"""Request/reply for a process that asks a lot: one wildcard reply subscription, a counter for reply tokens.

nats-py's `Client.request` is correct but costs more than it needs on a hot path: a NUID plus random bytes
from the OS for every reply token, several bytes<->str conversions, and `asyncio.wait_for` around the answer.
`Requester.request` has the same signature and the same failures (`nats.errors.TimeoutError`,
`nats.errors.NoRespondersError`), so `actors.runtime.bus.call` takes either. The gateway asks through one of
these (see `ops/bench/bench_gateway.py`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

NO_RESPONDERS = "503"


class Requests(Protocol):
    """What can send a request and wait for its reply: a NATS `Client`, or a `Requester`."""

    async def request(
        self, subject: str, payload: bytes = b"", timeout: float = 0.5, old_style: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> Msg: ...


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


class Requester:
    """Requests whose replies come to `<connection's inbox prefix>.<unique>.<n>`, one subscription for all.

    Start it once the connection is up; the subscription is restored with the connection after a reconnect
    (a request in flight during the outage times out), and ends with the connection's drain."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._next = 0
        self._prefix = ""
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        """Subscribe to this requester's replies."""
        self._prefix = self.nc.new_inbox() + "."
        self._subscription = await self.nc.subscribe(self._prefix + "*", cb=self._answer)

    async def _answer(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix):])
        if future is not None and not future.done():
            future.set_result(msg)

    async def request(
        self, subject: str, payload: bytes = b"", timeout: float = 0.5, old_style: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> Msg:
        """Publish `payload` to `subject` and return the first reply; `old_style` is accepted for the
        `Requests` signature and ignored (replies always share the one subscription)."""
        del old_style
        if self._subscription is None:
            raise RuntimeError("Requester.start() was not awaited")
        self._next += 1
        token = str(self._next)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = future
        timer = loop.call_later(timeout, _expire, future)
        try:
            await self.nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            reply = await future
        finally:
            timer.cancel()
            del self._waiting[token]
        if reply.headers and reply.headers.get("Status") == NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return reply
