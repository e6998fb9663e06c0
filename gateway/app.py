"""The gateway application: `create_app(settings)` builds the Litestar app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi import OpenAPIConfig

from actors.runtime.settings import Settings
from gateway.auth import Authenticator
from gateway.builds import BuildsController
from gateway.bus import BusClient
from gateway.config import GatewayConfig
from gateway.events import EventsController
from gateway.feeds import BuildFeeds
from gateway.health import HealthController
from gateway.identity import IDENTITY_CONTROLLERS
from gateway.oauth import OAuthController
from gateway.problems import problem_response
from gateway.routing import ServerRouting
from gateway.servers import ServersController
from gateway.services import EdgeServices
from gateway.sign_in import SignInPageController
from gateway.tracing import trace_middleware
from gateway.usage import UsageController


def create_app(settings: Settings, config: GatewayConfig | None = None) -> Litestar:
    """The gateway app; it connects to NATS (and the readiness pool) in its lifespan.

    The running services are at `app.state.services` (an `EdgeServices`)."""
    services = EdgeServices(settings, config or GatewayConfig())
    routing = ServerRouting(lambda: services.bus)  # dev routing of <servers_url>/<id>/mcp (gateway.routing)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    def provide_services() -> EdgeServices:
        return services

    def provide_bus(services: NamedDependency[EdgeServices]) -> BusClient:
        # Chained after `services` (see provide_authenticator) so that a handler taking both resolves them
        # one after another.
        return services.bus

    def provide_authenticator(bus: NamedDependency[BusClient]) -> Authenticator:
        # Depending on `bus` (unused) chains the dependencies, so Litestar resolves them one after
        # another instead of starting an anyio task group on every request (7% of the gateway's CPU).
        del bus
        return services.authenticator

    def provide_feeds() -> BuildFeeds:
        return services.feeds

    return Litestar(
        route_handlers=[
            HealthController, BuildsController, *IDENTITY_CONTROLLERS, SignInPageController, OAuthController,
            ServersController, UsageController, EventsController, *routing.route_handlers,
        ],
        dependencies={
            "services": Provide(provide_services, sync_to_thread=False),
            "bus": Provide(provide_bus, sync_to_thread=False),
            "authenticator": Provide(provide_authenticator, sync_to_thread=False),
            "feeds": Provide(provide_feeds, sync_to_thread=False),
        },
        lifespan=[lifespan, routing.lifespan],
        middleware=[trace_middleware],
        # One handler for everything: every error is a problem document (gateway.problems).
        exception_handlers={Exception: problem_response},
        openapi_config=OpenAPIConfig(
            title="Build My MCP Server", version="0.1.0", description="Describe an MCP server; get it built."
        ),
        state=State({"services": services}),
        # The process's one log handler is installed by actors.runtime.logs; Litestar must not add its own.
        logging_config=None,
    )
