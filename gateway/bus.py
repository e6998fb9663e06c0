"""The gateway's only way to the actors: typed RPC calls over NATS, failures raised as problems."""

from __future__ import annotations

from typing import TypeVar

import nats.errors
from nats.aio.client import Client

from bus_schemas.base import Failed, FailureCode, Message
from bus_schemas.registry import Rpc
from gateway.problems import Problem, problem_from_failed
from runner_template.rpc import Requests, call

Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep")


class BusClient:
    """Calls RPC endpoints as the `gateway` NATS user; every answer is the expected type or a Problem."""

    def __init__(self, nc: Client, requester: Requests, rpc_timeout: float) -> None:
        self.nc = nc
        self.requester = requester
        """Every request the gateway sends goes through this: a `Requester` (gateway.requester)."""
        self.rpc_timeout = rpc_timeout

    async def ask(self, rpc: Rpc[Req, Rep], request: Req) -> Rep:
        """Call `rpc`; return its reply, or raise the Problem its `Failed` reply maps to."""
        try:
            reply = await call(self.requester, rpc, request, timeout=max(self.rpc_timeout, rpc.timeout_seconds or 0.0))
        except nats.errors.Error as exc:
            # `call` turns no-responders and timeouts into values; a closed connection still raises.
            raise Problem(503, f"the message bus is unavailable ({type(exc).__name__})",
                          code=FailureCode.UNAVAILABLE) from exc
        if isinstance(reply, Failed):
            raise problem_from_failed(reply)
        return reply
