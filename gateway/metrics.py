"""The gateway's Prometheus metrics, only with `BMMS_METRICS=true`: each request counted and timed by its route
template, method and status, and `GET /metrics` with every metric of the process (`actors.runtime.observability`).

Without the setting neither the middleware nor the route exists: no per-request work, and `/metrics` is 404.
The route sits at the gateway's root, outside `/servers/...`, so no hosted server's URL reaches it; an operator's
edge router should not forward it either (the README says so).
"""

from __future__ import annotations

import time

from litestar import Response, get
from litestar.enums import ScopeType
from litestar.handlers import HTTPRouteHandler
from litestar.types import ASGIApp, Middleware, Receive, Scope, Send

from actors.runtime.observability import HTTP_DURATION, HTTP_REQUESTS, METRICS_CONTENT_TYPE, metrics_text
from actors.runtime.settings import Settings
from runner_template.logs import ResponseStatus

METRICS_PATH = "/metrics"


@get(METRICS_PATH, include_in_schema=False, sync_to_thread=False)
def metrics() -> Response[bytes]:
    """Every metric of this process, in Prometheus' text format."""
    return Response(metrics_text(), media_type=METRICS_CONTENT_TYPE)


def http_metrics_middleware(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: count and time each HTTP request under its route template (bounded label values)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        watch = ResponseStatus(send, 500)  # 500: what the client gets if the app raises before answering
        try:
            await app(scope, receive, watch)
        finally:
            status = watch.status
            route, method = scope.get("path_template") or "unmatched", str(scope.get("method"))
            HTTP_REQUESTS.labels(route, method, str(status)).inc()
            HTTP_DURATION.labels(route, method).observe(time.perf_counter() - started)

    return middleware


def metrics_handlers(settings: Settings) -> list[HTTPRouteHandler]:
    """`GET /metrics` when the settings ask for metrics, else nothing."""
    return [metrics] if settings.metrics else []


def metrics_middleware(settings: Settings) -> list[Middleware]:
    """The request metrics middleware when the settings ask for metrics, else nothing."""
    return [http_metrics_middleware] if settings.metrics else []
