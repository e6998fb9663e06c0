"""The playground: `/dashboard/servers/{server_id}/playground` lists a server's tools and calls one from the browser,
through the server's public URL, with a real OAuth access token of the signed-in person.

**How the page gets its token.** The dashboard is a first-party client of the platform's own Authorization Server
(`bus_schemas.oauth.DASHBOARD_CLIENT_ID`, registered by the AS itself: public, authorization_code only, so no
refresh token). `POST .../playground/token` runs that client's ordinary code + PKCE flow on the person's behalf,
server-side, over the same RPCs `/oauth/authorize` and `/oauth/token` use: an authorization request for the
server's URL as `resource` (a fresh S256 challenge and state), signed by the person of the session in the
organisation the page acts in (`X-Org`); the AS checks the server is that organisation's and, the client being
first-party, answers with the code at once (consent is implicit: a person needs no consent screen to use their
own organisation's server on the platform's own site); the code is exchanged with its verifier. The access token
(audience: that server's URL; 15 minutes) goes back to the page, which keeps it in a variable (never in storage)
and sends it as `Authorization: Bearer` to the server, like any MCP client. The route is a cookie-authenticated
POST, so only this site's own pages can call it (`gateway.browser`: the Origin check).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from bus_schemas.base import Failed, FailureCode
from bus_schemas.identity import Principal
from bus_schemas.oauth import (
    DASHBOARD_CLIENT_ID,
    DASHBOARD_REDIRECT_PATH,
    AuthorizationRedirect,
    ExchangeToken,
    OAuthError,
    Signer,
    StartAuthorization,
    TokenIssued,
)
from bus_schemas.registry import OAUTH_EXCHANGE_TOKEN, OAUTH_START_AUTHORIZATION
from gateway.browser import DASHBOARD_CSP
from gateway.dashboard import dashboard_page, page_principal, to_sign_in
from gateway.oauth import issuer_of
from gateway.problems import Problem
from gateway.servers import server_of
from gateway.services import EdgeServices
from runner_template.rpc import call

log = logging.getLogger("bmms.gateway.playground")

PLAYGROUND = "/dashboard/servers/{server_id:str}/playground"


class PlaygroundToken(msgspec.Struct, frozen=True, kw_only=True):
    """An access token for one server, for the playground page's memory only."""

    access_token: str
    token_type: str = "Bearer"  # noqa: S105 (the scheme, not a secret)
    expires_in: int
    scope: str
    url: str
    """The server's MCP URL: the token's audience, and where the page sends its JSON-RPC."""


def playground_csp(servers_url: str | None) -> str:
    """The dashboard's policy, with the hosted servers' origin allowed to `fetch` when they live on another
    one (BMMS_SERVERS_URL): the page talks to a server at its public URL, as any MCP client does."""
    parts = urlsplit(servers_url or "")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return DASHBOARD_CSP  # under the gateway's own origin: 'self' covers it
    return DASHBOARD_CSP.replace("connect-src 'self'", f"connect-src 'self' {parts.scheme}://{parts.netloc}", 1)


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge) of RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _refused(error: OAuthError | Failed, what: str) -> Problem:
    """The AS's refusal, in words (403 for a refusal, 503 when it cannot answer)."""
    if isinstance(error, Failed):
        return Problem(503, f"the authorization server cannot answer ({error.detail}); try again",
                       code=FailureCode.UNAVAILABLE)
    log.info("playground token refused at %s: %s: %s", what, error.error, error.description)
    return Problem(403, f"no token for this server: {error.description}", code=FailureCode.FORBIDDEN)


async def playground_token(request: Request[Any, Any, Any], services: EdgeServices, principal: Principal,
                           server_id: str) -> PlaygroundToken:
    """The first-party client's code + PKCE flow for the person and the server (see the module docstring)."""
    if principal.person_id is None:
        raise Problem(403, "the playground acts for a signed-in person, not an API key", code=FailureCode.FORBIDDEN)
    server = await server_of(services.bus, principal, server_id)
    issuer = issuer_of(request)
    redirect_uri = issuer + DASHBOARD_REDIRECT_PATH
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    timeout = services.settings.rpc_timeout
    started = await call(services.bus.requester, OAUTH_START_AUTHORIZATION, StartAuthorization(
        issuer=issuer, client_id=DASHBOARD_CLIENT_ID, redirect_uri=redirect_uri, response_type="code", state=state,
        code_challenge=challenge, code_challenge_method="S256", resources=(server.url,),
        signer=Signer(subject=principal.person_id, org_id=principal.org_id, label=principal.email or ""),
    ), timeout=timeout)
    if isinstance(started, OAuthError | Failed):
        raise _refused(started, "authorization")
    if not isinstance(started, AuthorizationRedirect):
        raise Problem(503, "the authorization server asked for consent from its own dashboard; try again",
                      code=FailureCode.UNAVAILABLE)
    answer = {k: v[0] for k, v in parse_qs(urlsplit(started.location).query).items()}
    if "code" not in answer or answer.get("state") != state or answer.get("iss") != issuer:
        raise _refused(OAuthError(error=answer.get("error", "invalid_request"),
                                  description=answer.get("error_description", "the authorization answer is not ours")),
                       "authorization")
    issued = await call(services.bus.requester, OAUTH_EXCHANGE_TOKEN, ExchangeToken(
        issuer=issuer, grant_type="authorization_code", code=answer["code"], redirect_uri=redirect_uri,
        code_verifier=verifier, resources=(server.url,), client_id=DASHBOARD_CLIENT_ID, client_auth="none",
    ), timeout=timeout)
    if not isinstance(issued, TokenIssued):
        raise _refused(issued, "token")
    log.info("playground token for %s on %s", principal.subject, server.server_id)
    return PlaygroundToken(access_token=issued.access_token, expires_in=issued.expires_in, scope=issued.scope or "",
                           url=server.url)


class PlaygroundController(Controller):
    """The playground page and its token."""

    path = PLAYGROUND
    include_in_schema = False

    @get("/", summary="Playground")
    async def page(self, server_id: FromPath[str], request: Request[Any, Any, Any],
                   services: NamedDependency[EdgeServices]) -> Response[Any]:
        """The page; its script (`/static/playground.js`) asks for a token, lists the tools and calls them."""
        principal = await page_principal(request, services)
        if principal is None:
            return to_sign_in(request)
        page = dashboard_page("playground.html", principal, title="Playground", active="servers",
                              server_id=server_id)
        page.headers["Content-Security-Policy"] = playground_csp(services.settings.servers_url)
        return page

    @post("/token", status_code=200, summary="A first-party access token for this server")
    async def token(self, server_id: FromPath[str], request: Request[Any, Any, Any],
                    services: NamedDependency[EdgeServices]) -> Response[PlaygroundToken]:
        """An access token of the signed-in person for the server (the page's memory only; never cached)."""
        principal = await services.authenticator.for_request(request)
        issued = await playground_token(request, services, principal, server_id)
        return Response(issued, headers={"Cache-Control": "no-store"})
