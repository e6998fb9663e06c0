"""What other sites cannot make a signed-in person's browser do here, and what every page tells the browser.

- **Cross-site writes.** A request that changes state (any method but GET, HEAD and OPTIONS) and is
  authenticated by the session cookie (no `Authorization` header) is refused with 403 unless it comes from
  this gateway's own origin: its `Origin` is ours (`gateway.auth.origin_allowed`), or, without an `Origin`,
  its `Sec-Fetch-Site` is `same-origin` or `none` (a person typing a URL). Browsers send `Origin` on every
  cross-origin POST, PUT, PATCH and DELETE and a page cannot forge it, so this closes what `SameSite=Lax`
  leaves open: sibling subdomains and other ports of the same host are the same *site* but another *origin*.
  Clients without a browser (curl, SDKs) send neither header and are not affected; API keys work from
  anywhere, since another site's page cannot make a browser attach one.
- **JSON bodies only.** A route that takes a JSON body accepts it only as `application/json` (or a
  `+json` type): 415 otherwise. A cross-site form or `text/plain` "simple request" is never read as JSON.
- **Pages.** Every HTML answer carries a Content-Security-Policy (the page's own, else `HTML_HEADERS`'),
  and is never framed. The API reference is the OpenAPI document itself (`/schema`), no third-party script.

Routes with their own CSRF defence (forms with a double-submit token, the OAuth endpoints that clients on
other origins call) opt out with `CROSS_SITE_OPT`.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from bus_schemas.base import FailureCode
from gateway.auth import origin_allowed, session_token
from gateway.bodies import takes_json_body
from gateway.problems import Problem

log = logging.getLogger("bmms.gateway.browser")

CROSS_SITE_OPT = "cross_site"
"""Route handler `opt` key: `{CROSS_SITE_OPT: "own-defence"}` exempts a route from the session-cookie origin
check (it defends itself: a form token, or no cookie counts there)."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SAME_ORIGIN_FETCH = frozenset({"same-origin", "none"})

HTML_HEADERS: dict[bytes, bytes] = {
    b"content-security-policy": b"default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                                b"frame-ancestors 'none'; base-uri 'none'",
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
}
"""The headers every HTML answer gets (unless it set its own): no inline script or style anywhere; pages are
styled by the gateway's own `/static` style sheet."""

DASHBOARD_CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; "
                 "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
"""The dashboard's pages' Content-Security-Policy (gateway.dashboard): `HTML_HEADERS`' plus scripts from our own
`/static` files and `fetch`/WebSocket to this origin only; still no inline script or style."""


def is_json_media_type(content_type: str) -> bool:
    """Whether a Content-Type header names JSON: `application/json` or `application/<x>+json`."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def _has_body(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    length = connection.headers.get("content-length")
    return (length is not None and length.strip() != "0") or "transfer-encoding" in connection.headers


def same_origin_writes(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """App-wide guard: JSON bodies as JSON only, and cookie-authenticated writes from our own origin only."""
    if not isinstance(connection, Request) or connection.method in SAFE_METHODS:
        return
    if takes_json_body(handler) and _has_body(connection):
        content_type = connection.headers.get("content-type", "")
        if not is_json_media_type(content_type):
            log.info("refused %s %s: body sent as %r", connection.method, connection.url.path,
                     content_type[:100])
            media_type = content_type.split(";", 1)[0].strip()[:100] or "an untyped body"
            raise Problem(415, f"send the request body as application/json, not {media_type}", code=FailureCode.INVALID,
                          headers={"Accept": "application/json"})
    if handler.opt.get(CROSS_SITE_OPT) or "authorization" in connection.headers:
        return
    if session_token(connection) is None:
        return
    origin = connection.headers.get("origin")
    if origin is not None:
        allowed = origin_allowed(connection, connection.app.state.services.settings.public_url)
    else:
        fetch_site = connection.headers.get("sec-fetch-site")
        allowed = fetch_site is None or fetch_site in _SAME_ORIGIN_FETCH
    if not allowed:
        log.info("refused cross-site %s %s with the session cookie (Origin %r, Sec-Fetch-Site %r)",
                 connection.method, connection.url.path, (origin or "")[:200],
                 connection.headers.get("sec-fetch-site"))
        raise Problem(403, "this request carries the session cookie but comes from another site's page; "
                      "the session acts only from this site's own pages (use an API key elsewhere)",
                      code=FailureCode.FORBIDDEN)


def page_headers_middleware(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: every `text/html` answer gets `HTML_HEADERS` it did not set itself."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = {name.lower() for name, _ in headers}
                content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
                if content_type.lower().startswith(b"text/html"):
                    headers.extend((name, value) for name, value in HTML_HEADERS.items() if name not in names)
                    message["headers"] = headers
            await send(message)

        await app(scope, receive, send_with_headers)

    return middleware

