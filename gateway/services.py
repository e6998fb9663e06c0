"""What the gateway holds while it runs: the NATS connection, a tiny database pool, auth cache, feeds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg
import nats.js.errors
from litestar import Request
from litestar.di import NamedDependency
from nats.aio.client import Client
from nats.js.kv import KeyValue

from actors.runtime.bus import connect
from actors.runtime.settings import Settings
from bus_schemas.identity import Principal
from bus_schemas.registry import BUILD_SUMMARIES
from gateway.auth import Authenticator
from gateway.bus import BusClient
from gateway.config import GatewayConfig
from gateway.feeds import BuildFeeds
from gateway.requester import Requester
from runner_template.rpc import Requests

log = logging.getLogger("bmms.gateway")


class EdgeServices:
    """Opened by the app's lifespan, handed to handlers through dependencies."""

    def __init__(self, settings: Settings, config: GatewayConfig) -> None:
        self.settings = settings
        self.config = config
        self._nc: Client | None = None
        self._pool: asyncpg.Pool | None = None
        self._bus: BusClient | None = None
        self._requester: Requests | None = None
        self._authenticator: Authenticator | None = None
        self._feeds: BuildFeeds | None = None
        self.summaries: KeyValue | None = None
        """The build registry's read model (BUILD_SUMMARIES); None until the bucket exists."""

    async def start(self) -> None:
        """Connect to NATS as the gateway user and prepare the readiness pool."""
        self._nc = await connect(self.settings, "bmms-gateway")
        # On the fast path, requests (RPCs, the direct gets of build summaries) take a connection of their own,
        # spoken without nats-py's task hops (gateway.requester); events, feeds and JetStream stay on `_nc`.
        self._requester = (
            await Requester.for_settings(self.settings, "bmms-gateway-requests", tls_fallback=self._nc)
            if self.settings.gateway_fast_path else self._nc
        )
        self._bus = BusClient(self._nc, self._requester, self.settings.rpc_timeout)
        self._authenticator = Authenticator(self._bus, self.config.auth_cache_seconds, self.config.auth_cache_size)
        self._feeds = BuildFeeds(
            self._nc.jetstream(), grace_seconds=self.config.feed_grace_seconds, max_lag=self.config.max_socket_lag
        )
        with contextlib.suppress(nats.js.errors.BucketNotFoundError):
            self.summaries = await self._nc.jetstream().key_value(BUILD_SUMMARIES.name)
        if self.settings.database_url:
            # The gateway owns no tables; the pool only answers readiness. min_size=0 lets the
            # gateway start (and report itself not ready) while the database is down.
            self._pool = await asyncpg.create_pool(self.settings.database_url, min_size=0, max_size=2)

    async def stop(self) -> None:
        """Delete the build consumers, drain NATS, close the pool."""
        if self._feeds is not None:
            await self._feeds.close()
        if isinstance(self._requester, Requester):
            await self._requester.close()
        if self._nc is not None:
            try:
                await self._nc.drain()
            except Exception:  # already closed; nothing left to flush
                log.debug("drain on stop failed", exc_info=True)
        if self._pool is not None:
            await self._pool.close()

    @property
    def nc(self) -> Client:
        """The gateway's NATS connection."""
        if self._nc is None:
            raise RuntimeError("the gateway has not started")
        return self._nc

    @property
    def rpc_timeout(self) -> float:
        """How long a request to the bus may take."""
        return self.settings.rpc_timeout

    @property
    def bus(self) -> BusClient:
        """RPC calls to the actors."""
        if self._bus is None:
            raise RuntimeError("the gateway has not started")
        return self._bus

    @property
    def authenticator(self) -> Authenticator:
        """API key -> principal, cached briefly."""
        if self._authenticator is None:
            raise RuntimeError("the gateway has not started")
        return self._authenticator

    @property
    def feeds(self) -> BuildFeeds:
        """The build feeds behind the WebSockets."""
        if self._feeds is None:
            raise RuntimeError("the gateway has not started")
        return self._feeds

    async def check_bus(self) -> str:
        """"ok" when a NATS round trip completes in time, else what is wrong."""
        if self._nc is None or not self._nc.is_connected:
            return "disconnected"
        if isinstance(self._requester, Requester) and not self._requester.is_connected:
            return "requests connection down"
        try:
            await self._nc.flush(timeout=self.config.ready_timeout)  # type: ignore[arg-type]  # a float works
        except Exception as exc:
            return f"no answer: {type(exc).__name__}"
        return "ok"

    async def check_database(self) -> str:
        """"ok" when the database answers `SELECT 1` in time, else what is wrong."""
        if self._pool is None:
            return "not configured"
        try:
            async with asyncio.timeout(self.config.ready_timeout):
                await self._pool.fetchval("SELECT 1")
        except Exception as exc:
            return f"no answer: {type(exc).__name__}"
        return "ok"


async def provide_principal(request: Request[Any, Any, Any], services: NamedDependency[EdgeServices]) -> Principal:
    """The caller of a /v1 request, from its bearer API key or session cookie; 401 without a valid one."""
    return await services.authenticator.for_request(request)
