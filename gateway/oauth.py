"""The OAuth 2.1 Authorization Server's HTTP face: metadata, JWKS, registration, authorize + consent,
token and revocation. Every decision is the oauth actor's; this module parses the edge and renders.

OAuth endpoints answer in the formats their RFCs fix (`{"error", "error_description"}` JSON, redirects
with `error`/`state`/`iss`, an HTML error page when the redirect URI is not trusted), not RFC 9457.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any, TypeVar
from urllib.parse import unquote, urlencode

import msgspec
from litestar import Controller, Request, Response, get, post, route
from litestar.di import NamedDependency
from litestar.response import Redirect

from bus_schemas.base import Failed, Message
from bus_schemas.identity import NEXT_MAX_LENGTH, safe_next
from bus_schemas.oauth import (
    SCOPES_SUPPORTED,
    AuthorizationRedirect,
    ClientAuthUsed,
    ClientMetadata,
    ClientRegistered,
    ConsentRequired,
    DecideConsent,
    ExchangeToken,
    GetJwks,
    Jwks,
    OAuthError,
    RegisterClient,
    RevokeToken,
    Signer,
    SignInRequired,
    StartAuthorization,
    TokenIssued,
)
from bus_schemas.registry import (
    OAUTH_DECIDE_CONSENT,
    OAUTH_EXCHANGE_TOKEN,
    OAUTH_GET_JWKS,
    OAUTH_REGISTER_CLIENT,
    OAUTH_REVOKE_TOKEN,
    OAUTH_START_AUTHORIZATION,
    Rpc,
)
from gateway.auth import Authenticator
from gateway.bodies import decode_json_body
from gateway.browser import CROSS_SITE_OPT
from gateway.identity import SIGN_IN_PAGE
from gateway.pages import message_page, render
from gateway.services import EdgeServices
from runner_template.rpc import call

Req = TypeVar("Req", bound=Message)
Rep = TypeVar("Rep")
log = logging.getLogger("bmms.gateway.oauth")

JWKS_PATH = "/oauth/jwks.json"

_encoder = msgspec.json.Encoder()
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_PAGE_HEADERS = {
    **_NO_STORE,
    # Besides the pages' own headers (gateway.pages: never framed, nothing loaded from elsewhere): the consent
    # page and the pages on the way to it tell no one where they came from.
    "Referrer-Policy": "no-referrer",
}


def issuer_of(request: Request[Any, Any, Any]) -> str:
    """The issuer: the gateway's public URL (or bound address), byte-identical everywhere, no slash."""
    base = request.app.state.get("base_url")
    if base:
        return str(base)
    services: EdgeServices = request.app.state["services"]
    if services.settings.public_url:
        return services.settings.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


def authorization_server_metadata(issuer: str) -> dict[str, Any]:
    """RFC 8414 metadata: what MCP clients read before anything else."""
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/oauth/authorize",
        "token_endpoint": f"{issuer}/oauth/token",
        "registration_endpoint": f"{issuer}/oauth/register",
        "revocation_endpoint": f"{issuer}/oauth/revoke",
        "jwks_uri": f"{issuer}{JWKS_PATH}",
        "scopes_supported": list(SCOPES_SUPPORTED),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "client_id_metadata_document_supported": True,
        "service_documentation": f"{issuer}/schema",
    }


_CORS = {"Access-Control-Allow-Origin": "*"}
"""Browser-based MCP clients (the Inspector) call these endpoints from another origin. No cookie is read
on them (the consent pages are not among them), so any origin may."""
_CORS_PATHS = [
    "/.well-known/oauth-authorization-server", "/.well-known/openid-configuration", JWKS_PATH,
    "/.well-known/jwks.json", "/oauth/register", "/oauth/token", "/oauth/revoke",
]


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(_encoder.encode(body), status_code=status, media_type="application/json",
                    headers={**_CORS, **(headers or {})})


def _refused_at_edge(error: OAuthError, what: str) -> Response[bytes]:
    # The oauth actor logs its own refusals; these never reached it.
    log.warning("oauth refused %s at the edge: %s: %s", what, error.error, error.description)
    return _oauth_error(error)


def _oauth_error(error: OAuthError, extra_headers: dict[str, str] | None = None) -> Response[bytes]:
    body = {"error": error.error, "error_description": error.description}
    return _json(body, error.status, {**_NO_STORE, **(extra_headers or {})})


def _unavailable(failed: Failed) -> OAuthError:
    log.warning("oauth actor failed: %s: %s", failed.code, failed.detail)
    status = 503 if failed.code == "unavailable" else 500
    return OAuthError(error="temporarily_unavailable" if status == 503 else "server_error",
                      description=failed.detail, status=status)


def _page(title: str, message: str, status: int) -> Response[str]:
    return message_page(title, message, status, headers=_PAGE_HEADERS)


def _consent_page(consent: ConsentRequired, signer: Signer) -> Response[str]:
    return render(
        "oauth_consent.html", headers=_PAGE_HEADERS, client_name=consent.client_name, client_id=consent.client_id,
        redirect_host=consent.redirect_uri.split("/")[2] if "//" in consent.redirect_uri else "",
        person=signer.label or signer.subject, server_id=consent.server_id, resource=consent.resource,
        scopes=consent.scopes, consent_id=consent.consent_id, csrf_token=consent.csrf_token,
    )


def _client_credentials(request: Request[Any, Any, Any], form: dict[str, str]) -> tuple[str | None, str | None,
                                                                                      ClientAuthUsed] | OAuthError:
    """(client id, secret, how they came) from `Authorization: Basic` or the form (RFC 6749 §2.3.1)."""
    header = request.headers.get("authorization", "")
    if header[:6].lower() == "basic ":
        if form.get("client_secret"):
            return OAuthError(error="invalid_request", description="send client credentials one way, not two")
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
            raw_id, _, raw_secret = decoded.partition(":")
        except ValueError:
            return OAuthError(error="invalid_client", description="malformed Basic credentials", status=401)
        client_id = unquote(raw_id)
        if form.get("client_id") and form["client_id"] != client_id:
            return OAuthError(error="invalid_request", description="client_id differs from the Basic credentials")
        return client_id, unquote(raw_secret), "client_secret_basic"
    if form.get("client_secret"):
        return form.get("client_id"), form["client_secret"], "client_secret_post"
    return form.get("client_id"), None, "none"


async def _form(request: Request[Any, Any, Any]) -> tuple[dict[str, str], list[str]] | OAuthError:
    """The single-valued fields of a form body, and every `resource` value."""
    media_type = request.content_type[0]
    if media_type != "application/x-www-form-urlencoded":
        return OAuthError(error="invalid_request", description="send the request as application/x-www-form-urlencoded")
    form = await request.form()
    values: dict[str, str] = {}
    for key in form:
        items = form.getall(key)
        if key != "resource" and len(items) > 1:
            return OAuthError(error="invalid_request", description=f"parameter {key} is repeated")
        values[key] = str(items[0])
    return values, [str(v) for v in form.getall("resource")] if "resource" in form else []


class JwksCache:
    """The JWKS as the oauth actor last answered it, kept for the `max_age` it gave."""

    def __init__(self) -> None:
        self.value: tuple[float, Jwks] | None = None


class OAuthController(Controller):
    """The Authorization Server's endpoints."""

    path = "/"
    # Clients on other origins call the token, registration and revocation endpoints, and the consent form
    # carries a CSRF token bound to the person: none of them rests on the cookie alone.
    opt = {CROSS_SITE_OPT: "own-defence"}
    tags = ["oauth"]
    include_in_schema = True

    async def _ask(self, services: EdgeServices, rpc: Rpc[Req, Rep], message: Req) -> Rep | OAuthError:
        """Call the oauth actor; its failures become RFC 6749 errors (`temporarily_unavailable`, `server_error`)."""
        reply = await call(services.bus.requester, rpc, message, timeout=services.settings.rpc_timeout)
        return _unavailable(reply) if isinstance(reply, Failed) else reply

    @route(_CORS_PATHS, http_method=["OPTIONS"], include_in_schema=False)
    async def preflight(self) -> Response[bytes]:
        """CORS preflight for browser-based clients."""
        return Response(b"", status_code=204, headers={
            **_CORS,
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, MCP-Protocol-Version",
            "Access-Control-Max-Age": "86400",
        })

    @get(["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"],
         summary="Authorization server metadata (RFC 8414)")
    async def metadata(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Endpoints, grants, PKCE S256, scopes; `issuer` is the one tokens carry."""
        metadata = authorization_server_metadata(issuer_of(request))
        return _json(metadata, headers={"Cache-Control": "public, max-age=300"})

    @get([JWKS_PATH, "/.well-known/jwks.json"], summary="The token-signing public keys (JWKS)")
    async def jwks(self, request: Request[Any, Any, Any], services: NamedDependency[EdgeServices]) -> Response[bytes]:
        """The signing key and retired keys whose tokens may still be live; rotation adds a key here first."""
        cache: JwksCache = request.app.state.setdefault("oauth_jwks", JwksCache())
        now = time.monotonic()
        if cache.value is None or cache.value[0] <= now:
            reply = await self._ask(services, OAUTH_GET_JWKS, GetJwks())
            if isinstance(reply, OAuthError):
                return _oauth_error(reply)
            # Cached briefly at the edge: a freshly rotated key must show up well before verifiers need it.
            cache.value = (now + min(reply.max_age, 30), reply)
        keys = cache.value[1]
        body = {"keys": [msgspec.to_builtins(k) for k in keys.keys]}
        return _json(body, headers={"Cache-Control": f"public, max-age={keys.max_age}"})

    @post("/oauth/register", status_code=201, summary="Dynamic Client Registration (RFC 7591)")
    async def register(
        self, request: Request[Any, Any, Any], services: NamedDependency[EdgeServices]
    ) -> Response[bytes]:
        """Register a client; the same metadata returns the same client_id. Rate-limited per address."""
        try:
            raw = decode_json_body(await request.body())
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            fields = {k: raw[k] for k in ClientMetadata.__struct_fields__ if k in raw and raw[k] is not None}
            metadata = msgspec.convert(fields, ClientMetadata)
        except (ValueError, msgspec.ValidationError) as exc:
            log.warning("oauth refused registration: invalid_client_metadata: %s", exc)
            return _oauth_error(OAuthError(error="invalid_client_metadata", description=f"unreadable metadata: {exc}"))
        client_ip = request.client.host if request.client else "unknown"
        reply = await self._ask(services, OAUTH_REGISTER_CLIENT, RegisterClient(metadata=metadata, client_ip=client_ip))
        if isinstance(reply, OAuthError):
            # The window is the clock hour: an hour is the safe bound when the actor gave no figure.
            retry = {"Retry-After": str(reply.retry_after_seconds or 3600)} if reply.status == 429 else None
            return _oauth_error(reply, retry)
        assert isinstance(reply, ClientRegistered)
        body = {k: v for k, v in msgspec.to_builtins(reply).items() if v is not None and k != "type"}
        return _json(body, 201, _NO_STORE)

    @get("/oauth/authorize", summary="Authorization endpoint", include_in_schema=False)
    async def authorize(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[EdgeServices],
    ) -> Response[Any]:
        """Validate the request, make sure a person is signed in, and show the consent page."""
        query = request.query_params
        repeated = [k for k in query if k != "resource" and len(query.getall(k)) > 1]
        single = {k: query.get(k) for k in query}
        issuer = issuer_of(request)
        signer = await self._signer(request, services.authenticator)
        message = StartAuthorization(
            issuer=issuer,
            client_id=single.get("client_id"),
            redirect_uri=single.get("redirect_uri"),
            response_type=single.get("response_type"),
            state=single.get("state"),
            scope=single.get("scope"),
            code_challenge=single.get("code_challenge"),
            code_challenge_method=single.get("code_challenge_method"),
            resources=tuple(query.getall("resource")) if "resource" in query else (),
            signer=signer,
        )
        if repeated:
            log.warning("oauth refused authorization: repeated parameters %s", repeated)
            return _page("Invalid request", f"Parameters may appear once: {', '.join(repeated)}.", 400)
        reply = await self._ask(services, OAUTH_START_AUTHORIZATION, message)
        if isinstance(reply, OAuthError):
            if reply.location:
                return Redirect(reply.location, status_code=302, headers=_NO_STORE)
            return _page("This app cannot connect", f"{reply.error}: {reply.description}", reply.status)
        if isinstance(reply, SignInRequired):
            # Back to this very request once signed in: the raw query, byte for byte (PKCE, state).
            back = f"{request.url.path}?{request.scope['query_string'].decode('latin-1')}"
            if len(back) > NEXT_MAX_LENGTH:
                log.warning("oauth refused authorization: request of %d characters is too long to sign in with",
                            len(back))
                return _page("This app cannot connect", f"The authorization request is longer than "
                             f"{NEXT_MAX_LENGTH} characters; {reply.client_name} must send a shorter one.", 414)
            if safe_next(back) is None:
                log.warning("oauth refused authorization: the request cannot be come back to after sign-in")
                return _page("This app cannot connect", "The authorization request holds characters that cannot "
                             "be carried through sign-in (backslashes or control characters).", 400)
            return Redirect(f"{SIGN_IN_PAGE}?{urlencode({'next': back})}", status_code=303, headers=_NO_STORE)
        if isinstance(reply, AuthorizationRedirect):  # the first-party client: consent is implicit
            return Redirect(reply.location, status_code=302, headers=_NO_STORE)
        assert isinstance(reply, ConsentRequired) and signer is not None
        return _consent_page(reply, signer)

    @post("/oauth/authorize/decision", summary="Consent decision", include_in_schema=False)
    async def decide(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[EdgeServices],
    ) -> Response[Any]:
        """The consent form's POST (CSRF token bound to the person); redirects to the client."""
        signer = await self._signer(request, services.authenticator)
        if signer is None:
            return _page("Signed out", "Your session ended; start again from your MCP client.", 401)
        form = await request.form()
        consent_id, csrf = form.get("consent_id"), form.get("csrf_token")
        if not isinstance(consent_id, str) or not isinstance(csrf, str):
            return _page("Invalid request", "The consent form is incomplete; start again from your MCP client.", 400)
        decision = DecideConsent(
            issuer=issuer_of(request), consent_id=consent_id, csrf_token=csrf, subject=signer.subject,
            approve=form.get("decision") == "approve",
            granted_optional=tuple(str(s) for s in form.getall("scope")) if "scope" in form else (),
        )
        reply = await self._ask(services, OAUTH_DECIDE_CONSENT, decision)
        if isinstance(reply, OAuthError):
            return _page("This request cannot be completed", reply.description, reply.status)
        assert isinstance(reply, AuthorizationRedirect)
        return Redirect(reply.location, status_code=303, headers=_NO_STORE)

    @post("/oauth/token", status_code=200, summary="Token endpoint")
    async def token(self, request: Request[Any, Any, Any], services: NamedDependency[EdgeServices]) -> Response[bytes]:
        """authorization_code (with PKCE and resource) and refresh_token grants; `Cache-Control: no-store`."""
        parsed = await _form(request)
        if isinstance(parsed, OAuthError):
            return _refused_at_edge(parsed, "token request")
        form, resources = parsed
        credentials = _client_credentials(request, form)
        if isinstance(credentials, OAuthError):
            return _refused_at_edge(credentials, "token request")
        client_id, secret, used = credentials
        reply = await self._ask(services, OAUTH_EXCHANGE_TOKEN, ExchangeToken(
            issuer=issuer_of(request), grant_type=form.get("grant_type"), code=form.get("code"),
            redirect_uri=form.get("redirect_uri"), code_verifier=form.get("code_verifier"),
            refresh_token=form.get("refresh_token"), resources=tuple(resources), scope=form.get("scope"),
            client_id=client_id, client_secret=secret, client_auth=used,
        ))
        if isinstance(reply, OAuthError):
            challenge = {"WWW-Authenticate": 'Basic realm="oauth"'} if reply.status == 401 else None
            return _oauth_error(reply, challenge)
        assert isinstance(reply, TokenIssued)
        body = {k: v for k, v in msgspec.to_builtins(reply).items() if v is not None and k != "type"}
        return _json(body, 200, _NO_STORE)

    @post("/oauth/revoke", status_code=200, summary="Token revocation (RFC 7009)")
    async def revoke(self, request: Request[Any, Any, Any], services: NamedDependency[EdgeServices]) -> Response[bytes]:
        """Revoke a refresh token (and its family) or one access token; unknown tokens are answered 200 too."""
        parsed = await _form(request)
        if isinstance(parsed, OAuthError):
            return _refused_at_edge(parsed, "revocation")
        form, _ = parsed
        if not form.get("token"):
            return _refused_at_edge(OAuthError(error="invalid_request", description="token is missing"), "revocation")
        credentials = _client_credentials(request, form)
        if isinstance(credentials, OAuthError):
            return _refused_at_edge(credentials, "revocation")
        client_id, secret, used = credentials
        reply = await self._ask(services, OAUTH_REVOKE_TOKEN, RevokeToken(
            token=form["token"], token_type_hint=form.get("token_type_hint"), client_id=client_id,
            client_secret=secret, client_auth=used, issuer=issuer_of(request),
        ))
        if isinstance(reply, OAuthError):
            return _oauth_error(reply)
        return Response(b"", status_code=200, headers={**_CORS, **_NO_STORE})

    async def _signer(self, request: Request[Any, Any, Any], authenticator: Authenticator) -> Signer | None:
        """The person signed in with the session cookie; API keys never consent."""
        principal = await authenticator.session_principal(request)
        if principal is None or principal.person_id is None:
            return None
        return Signer(subject=principal.person_id, org_id=principal.org_id, label=principal.email or "")
