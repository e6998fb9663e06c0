"""The gateway application: `create_app(settings)` builds the Litestar app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.static_files import create_static_files_router

from actors.runtime.observability import configure as configure_observability
from actors.runtime.settings import Settings
from gateway.api_keys import ApiKeysController
from gateway.bodies import GatewayRequest, known_fields_only
from gateway.browser import page_headers_middleware, same_origin_writes
from gateway.builds import BuildsController
from gateway.config import GatewayConfig
from gateway.dashboard import DashboardController
from gateway.dashboard_org import OrgPageController
from gateway.dashboard_playground import PlaygroundController
from gateway.dashboard_usage import UsagePageController
from gateway.events import EventsController
from gateway.health import HealthController
from gateway.identity import SignInController
from gateway.metrics import metrics_handlers, metrics_middleware
from gateway.oauth import OAuthController
from gateway.org import InvitesController, OrgController
from gateway.pages import STATIC_DIR
from gateway.plans import PlansController
from gateway.problems import problem_response
from gateway.routing import ServerRouting
from gateway.servers import ServersController
from gateway.services import EdgeServices
from gateway.sessions import MeController, SessionsController
from gateway.sign_in import SignInPageController
from gateway.tracing import trace_middleware
from gateway.usage import UsageController


def create_app(settings: Settings, config: GatewayConfig | None = None) -> Litestar:
    """The gateway app; it connects to NATS (and the readiness pool) in its lifespan.

    The running services are at `app.state.services` (an `EdgeServices`)."""
    services = EdgeServices(settings, config or GatewayConfig())
    configure_observability(settings, "gateway")  # metrics and traces, when the settings ask for them
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

    return Litestar(
        route_handlers=[
            HealthController, BuildsController, PlansController, SignInController, MeController, SessionsController,
            InvitesController, OrgController, ApiKeysController, SignInPageController, OAuthController,
            ServersController, UsageController, EventsController, DashboardController, *routing.route_handlers,
            PlaygroundController, UsagePageController, OrgPageController,  # the dashboard's account pages
            create_static_files_router(path="/static", directories=[STATIC_DIR], include_in_schema=False),
            *metrics_handlers(settings),  # GET /metrics, only with BMMS_METRICS=true (gateway.metrics)
        ],
        # Handlers reach the bus, the authenticator and the build feeds through `services`; the caller's
        # principal (gateway.services.provide_principal) depends on it. Keeping the graph a single chain lets
        # Litestar resolve it without an anyio task group, and each dependency costs a resolution per request.
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        lifespan=[lifespan, routing.lifespan],
        middleware=[*metrics_middleware(settings), trace_middleware, page_headers_middleware],
        # Cookie-authenticated writes only from our own pages, JSON bodies only as JSON (gateway.browser), and
        # only with fields the route takes, at any depth (gateway.bodies).
        guards=[same_origin_writes, known_fields_only],
        request_class=GatewayRequest,
        # One handler for everything: every error is a problem document (gateway.problems).
        exception_handlers={Exception: problem_response},
        # The API reference is the OpenAPI document itself (`/schema`, `/schema/openapi.json`, `.yaml`): no
        # page that loads a renderer from a third-party CDN on the session cookie's origin.
        openapi_config=OpenAPIConfig(
            title="Build My MCP Server", version="0.1.0", description="Describe an MCP server; get it built.",
            render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"]), YamlRenderPlugin(path="/openapi.yaml")],
        ),
        state=State({"services": services}),
        # The process's one log handler is installed by actors.runtime.logs; Litestar must not add its own.
        logging_config=None,
    )
