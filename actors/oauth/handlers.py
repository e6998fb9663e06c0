"""The oauth actor's handlers: the Authorization Server's decisions, one RPC per endpoint step.

Every refusal is logged with its reason (client id, what was wrong), so an operator can see why a client
failed instead of guessing from an opaque "authorization failed".
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
from typing import cast
from urllib.parse import urlencode, urlsplit

from actors.oauth import storage
from actors.oauth.clients import Client, MetadataError, checked_metadata, is_metadata_document_url, metadata_digest
from actors.oauth.resources import RegistryUnavailable, ResourceServer, resolve_resource, server_id_of, servers_base
from actors.oauth.revocations import REVOKED_ALONE_REASON, record_revocation, republish_recent
from actors.oauth.scopes import ScopeError, describe, is_optional, narrowed_scope, parse_scope, requested_scopes
from actors.oauth.state import VERIFIER_LEEWAY, OAuthState
from actors.oauth.storage import Grant, PendingConsent
from actors.oauth.tokens import digest, mint_access_token, new_secret, our_access_token_claims, pkce_matches
from actors.runtime.actor import Context, TransientError
from bus_schemas.base import Failed, FailureCode
from bus_schemas.identity import MembershipEnded
from bus_schemas.oauth import (
    DASHBOARD_CLIENT_ID,
    DASHBOARD_REDIRECT_PATH,
    AuthorizationRedirect,
    ClientMetadata,
    ClientRegistered,
    ConsentRequired,
    CreateClient,
    CreateClientReply,
    DecideConsent,
    DecideConsentReply,
    ExchangeToken,
    ExchangeTokenReply,
    GetJwks,
    GetJwksReply,
    Jwks,
    MintServiceToken,
    MintServiceTokenReply,
    OAuthError,
    RegisterClient,
    RegisterClientReply,
    RevokeToken,
    RevokeTokenReply,
    ScopeChoice,
    SignInRequired,
    StartAuthorization,
    StartAuthorizationReply,
    TokenEndpointAuthMethod,
    TokenIssued,
    TokenRevoked,
)
from bus_schemas.registry import REVOKED

log = logging.getLogger("bmms.oauth")

_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")


async def catch_up_revocations(ctx: Context, oauth: OAuthState) -> None:
    """Write the grants revoked within the REVOKED bucket's TTL again, in case a write was lost (at start)."""
    try:
        written = await republish_recent(ctx.pool, ctx.js, oauth.config.clock())
    except Exception:
        ctx.log.exception("could not catch up on revoked grants")
        return
    if written:
        ctx.log.info("recorded %d recently revoked grant(s) in %s again", written, REVOKED.name)


# --- clients ---


async def register_client(request: RegisterClient, ctx: Context, oauth: OAuthState) -> RegisterClientReply:
    """Dynamic Client Registration (RFC 7591), limited per source address per hour."""
    cfg = oauth.config
    now = cfg.clock()
    attempts = await storage.count_registration(ctx.pool, request.client_ip, now)
    if attempts > cfg.registrations_per_hour:
        return _refuse("temporarily_unavailable",
                       f"too many client registrations from {request.client_ip} this hour; "
                       "reuse the client you registered", status=429, what="registration",
                       client=request.client_ip, retry_after_seconds=storage.seconds_left_in_window(now))
    # Housekeeping rides on registration (clients register on every connect): no scheduler needed.
    removed = await storage.delete_unused_clients(ctx.pool, now - cfg.unused_client_ttl)
    if removed:
        ctx.log.info("deleted %d dynamic client(s) never used within %s", removed, cfg.unused_client_ttl)
    await storage.delete_expired(ctx.pool, now, keep=dt.timedelta(days=1))
    return await _register(ctx, oauth, request.metadata, kind="dynamic", source=request.client_ip)


async def create_client(request: CreateClient, ctx: Context, oauth: OAuthState) -> CreateClientReply:
    """An operator pre-registers a client (`bmms oauth-client create`)."""
    return await _register(ctx, oauth, request.metadata, kind="preregistered", source=None,
                           client_id=request.client_id)


async def _register(ctx: Context, oauth: OAuthState, metadata: ClientMetadata, *, kind: str, source: str | None,
                    client_id: str | None = None) -> RegisterClientReply:
    now = oauth.config.clock()
    try:
        checked = checked_metadata(metadata)
    except MetadataError as exc:
        return _refuse(exc.error, exc.description, what="registration", client=source or "-")
    secret = new_secret("bmms_cs_") if checked.token_endpoint_auth_method != "none" else None  # noqa: S105
    digest_ = metadata_digest(checked) if kind == "dynamic" else None
    try:
        saved_id, created_at = await storage.save_client(
            ctx.pool, client_id=client_id or f"c{secrets.token_hex(12)}", kind=kind, metadata=checked,
            digest=digest_, source=source, secret_hash=digest(secret) if secret else None, now=now,
        )
    except ValueError as exc:
        return _refuse("invalid_client_metadata", str(exc), what="registration")
    ctx.log.info("registered %s client %s (%s) from %s", kind, saved_id, checked.client_name, source or "operator")
    return _registered(saved_id, created_at, checked, secret)


def _registered(
    client_id: str, issued_at: dt.datetime, metadata: ClientMetadata, secret: str | None
) -> ClientRegistered:
    return ClientRegistered(
        client_id=client_id,
        client_secret=secret,
        client_id_issued_at=int(issued_at.timestamp()),
        redirect_uris=metadata.redirect_uris,
        client_name=metadata.client_name,
        # checked_metadata accepts only these methods; ClientMetadata types it as any string
        token_endpoint_auth_method=cast(TokenEndpointAuthMethod, metadata.token_endpoint_auth_method),
        grant_types=metadata.grant_types or (),
        response_types=metadata.response_types or ("code",),
        scope=metadata.scope,
    )


def dashboard_client(issuer: str) -> Client:
    """The platform's first-party client (DASHBOARD_CLIENT_ID): registered by the platform, not stored; its
    redirect URI is on the issuer the request came to."""
    return Client(client_id=DASHBOARD_CLIENT_ID, client_name="Build My MCP Server dashboard", client_uri=issuer or None,
                  redirect_uris=(issuer + DASHBOARD_REDIRECT_PATH,), token_endpoint_auth_method="none",  # noqa: S106 (a method name)
                  grant_types=("authorization_code",))


async def _find_client(ctx: Context, oauth: OAuthState, client_id: str, issuer: str = "") -> Client | None:
    if client_id == DASHBOARD_CLIENT_ID:
        return dashboard_client(issuer)
    if is_metadata_document_url(client_id):
        return await oauth.documents.client(client_id)
    return await storage.find_client(ctx.pool, client_id)


async def _authenticate_client(
    ctx: Context, oauth: OAuthState, client_id: str | None, secret: str | None, used: str, what: str
) -> Client | OAuthError:
    if not client_id:
        return _refuse("invalid_client", "client_id is missing", status=401, what=what)
    try:
        client = await _find_client(ctx, oauth, client_id)
    except MetadataError as exc:
        return _refuse("invalid_client", exc.description, status=401, what=what, client=client_id)
    if client is None:
        return _refuse("invalid_client", "unknown client; register it again", status=401, what=what,
                       client=client_id)
    if client.token_endpoint_auth_method == "none":  # noqa: S105
        return client
    if not secret or used == "none":
        return _refuse("invalid_client", f"this client authenticates with {client.token_endpoint_auth_method}; "
                       "no client secret was sent", status=401, what=what, client=client_id)
    if not await storage.client_secret_matches(ctx.pool, client.client_id, digest(secret)):
        return _refuse("invalid_client", "wrong client secret", status=401, what=what, client=client_id)
    return client


# --- authorization ---


async def start_authorization(
    request: StartAuthorization, ctx: Context, oauth: OAuthState
) -> StartAuthorizationReply:
    """Check an authorization request; ask the person to sign in, or open their consent."""
    found = await _authorizing_client(ctx, oauth, request)
    if isinstance(found, OAuthError):
        return found
    client, redirect_uri = found

    # From here on the redirect URI is the client's own: errors go back to it (RFC 6749 §4.1.2.1).
    def back(error: str, description: str) -> OAuthError:
        return _back(request, client, redirect_uri, error, description)

    problem = _authorization_problem(request, client)
    if problem is not None:
        return back(*problem)
    resource = request.resources[0]
    base = servers_base(oauth.settings.servers_url, request.issuer)
    # Which server ids exist, and whose they are, is told to nobody: a URL of another shape, a server that
    # does not exist and another organisation's get one answer, and the registry is asked only once a
    # person is signed in (else "sign in" itself would tell that a server exists).
    not_yours = f"resource is not one of your organisation's MCP servers here (expected {base}/<server-id>/mcp)"
    if server_id_of(resource, base) is None:
        return back("invalid_target", not_yours)
    try:
        scopes = requested_scopes(request.scope)
    except ScopeError as exc:
        return back("invalid_scope", str(exc))
    if request.signer is None:
        return SignInRequired(client_name=client.client_name)
    try:
        server = await resolve_resource(ctx.nc, resource, base)
    except RegistryUnavailable as exc:
        return back("temporarily_unavailable", f"the server registry cannot be reached ({exc}); try again")
    if server is None or server.org_id != request.signer.org_id:
        why = "no such server" if server is None else f"it belongs to another organisation ({server.org_id})"
        ctx.log.warning("authorization for client %s by %s of %s: resource %r refused: %s", client.client_id,
                        request.signer.subject, request.signer.org_id, resource[:200], why)
        return back("invalid_target", not_yours)
    if client.client_id == DASHBOARD_CLIENT_ID:
        # First party: the person is signed in to the platform itself and the server is their organisation's
        # (checked just above), so there is nobody else to consent to; every scope asked for is granted.
        assert request.signer is not None and request.code_challenge is not None
        ctx.log.info("first-party authorization by %s on %s", request.signer.subject, server.resource)
        return await _issue_code(ctx, oauth, client_id=client.client_id, subject=request.signer.subject,
                                 org_id=request.signer.org_id, resource=server.resource, scope=" ".join(scopes),
                                 issuer=request.issuer, redirect_uri=redirect_uri,
                                 code_challenge=request.code_challenge, state=request.state)
    return await _open_consent(ctx, oauth, request, client, redirect_uri, server, scopes)


async def _authorizing_client(
    ctx: Context, oauth: OAuthState, request: StartAuthorization
) -> tuple[Client, str] | OAuthError:
    """The client of an authorization request and the redirect URI to answer on, or the refusal (shown to
    the person: a redirect URI not yet known to be the client's is never redirected to)."""
    what = "authorization"
    if not request.client_id:
        return _refuse("invalid_request", "client_id is missing", what=what)
    try:
        client = await _find_client(ctx, oauth, request.client_id, request.issuer)
    except MetadataError as exc:
        return _refuse("invalid_client", exc.description, what=what, client=request.client_id)
    if client is None:
        return _refuse("invalid_client", f"no client {request.client_id[:200]!r} is registered here; "
                       "register it again", what=what, client=request.client_id)
    redirect_uri = request.redirect_uri
    if redirect_uri is None:
        if len(client.redirect_uris) != 1:
            return _refuse("invalid_request", "redirect_uri is missing (the client has several)",
                           what=what, client=client.client_id)
        redirect_uri = client.redirect_uris[0]
    elif redirect_uri not in client.redirect_uris:
        return _refuse("invalid_request", f"redirect_uri {redirect_uri[:200]!r} is not one of the client's "
                       "registered redirect URIs (they must match exactly)", what=what, client=client.client_id)
    return client, redirect_uri


def _authorization_problem(request: StartAuthorization, client: Client) -> tuple[str, str] | None:
    """What is wrong with the request itself (error, description), checked before its resource and scope."""
    if request.response_type != "code":
        return "unsupported_response_type", "response_type must be code"
    if "authorization_code" not in client.grant_types:
        return "unauthorized_client", "this client is not registered for the authorization_code grant"
    if not request.code_challenge:
        return "invalid_request", "PKCE is required: send code_challenge with code_challenge_method=S256"
    if request.code_challenge_method != "S256":
        return "invalid_request", (f"code_challenge_method must be S256, not "
                                   f"{request.code_challenge_method or 'plain (the default when omitted)'}")
    if not _CHALLENGE.match(request.code_challenge):
        return "invalid_request", "code_challenge must be 43 base64url characters (SHA-256 of the verifier)"
    if len(request.resources) != 1:
        return "invalid_target", ("send exactly one resource parameter: the MCP server's URL "
                                  f"(got {len(request.resources)})")
    return None


def _back(request: StartAuthorization, client: Client, redirect_uri: str, error: str, description: str) -> OAuthError:
    """A refusal sent back to the client's redirect URI."""
    refusal = _refuse(error, description, what="authorization", client=client.client_id)
    location = _redirect_location(redirect_uri, {
        "error": error, "error_description": description, "state": request.state, "iss": request.issuer,
    })
    return OAuthError(error=refusal.error, description=refusal.description, location=location)


async def _open_consent(
    ctx: Context, oauth: OAuthState, request: StartAuthorization, client: Client, redirect_uri: str,
    server: ResourceServer, scopes: tuple[str, ...],
) -> ConsentRequired:
    assert request.signer is not None and request.code_challenge is not None
    csrf = secrets.token_urlsafe(32)
    consent = PendingConsent(
        consent_id=secrets.token_urlsafe(18), csrf_hash=digest(csrf), subject=request.signer.subject,
        org_id=request.signer.org_id, client_id=client.client_id, redirect_uri=redirect_uri, state=request.state,
        code_challenge=request.code_challenge, resource=server.resource,
        scopes_required=tuple(s for s in scopes if not is_optional(s)),
        scopes_optional=tuple(s for s in scopes if is_optional(s)), issuer=request.issuer,
        expires_at=oauth.config.clock() + oauth.config.consent_ttl,
    )
    await storage.open_consent(ctx.pool, consent)
    return ConsentRequired(
        consent_id=consent.consent_id, csrf_token=csrf, client_id=client.client_id, client_name=client.client_name,
        client_uri=client.client_uri, redirect_uri=redirect_uri, resource=server.resource,
        server_id=server.server_id,
        scopes=tuple(ScopeChoice(scope=s, description=describe(s), optional=is_optional(s)) for s in scopes),
        expires_in=int(oauth.config.consent_ttl.total_seconds()),
    )


async def decide_consent(request: DecideConsent, ctx: Context, oauth: OAuthState) -> DecideConsentReply:
    """The person's answer on the consent page: an authorization code for the client, or its refusal."""
    what = "consent"
    pending = await storage.peek_consent(ctx.pool, request.consent_id)
    if pending is None:
        return _refuse("invalid_request", "this consent request is unknown or was already answered; start "
                       "again from your MCP client", what=what)
    if not secrets.compare_digest(pending.csrf_hash, digest(request.csrf_token)) \
            or pending.subject != request.subject or pending.issuer != request.issuer:
        return _refuse("invalid_request", "the consent form does not belong to this session; start again",
                       status=403, what=what, client=pending.client_id)
    pending = await storage.take_consent(ctx.pool, request.consent_id)
    if pending is None:
        return _refuse("invalid_request", "this consent request was already answered", what=what)
    now = oauth.config.clock()
    if pending.expires_at <= now:
        return _refuse("invalid_request", "this consent request expired; start again from your MCP client",
                       what=what, client=pending.client_id)
    redirect_uri = pending.redirect_uri
    if not request.approve:
        _refuse("access_denied", "the person denied the request", what=what, client=pending.client_id)
        return AuthorizationRedirect(location=_redirect_location(redirect_uri, {
            "error": "access_denied", "error_description": "the person denied access",
            "state": pending.state, "iss": pending.issuer,
        }))
    optional = [s for s in pending.scopes_optional if s in request.granted_optional]
    scope = " ".join([*pending.scopes_required, *optional])
    if not scope:
        return AuthorizationRedirect(location=_redirect_location(redirect_uri, {
            "error": "access_denied", "error_description": "no scope was granted",
            "state": pending.state, "iss": pending.issuer,
        }))
    ctx.log.info("authorization approved for client %s by %s on %s (%s)", pending.client_id,
                 pending.subject, pending.resource, scope)
    return await _issue_code(ctx, oauth, client_id=pending.client_id, subject=pending.subject, org_id=pending.org_id,
                             resource=pending.resource, scope=scope, issuer=pending.issuer, redirect_uri=redirect_uri,
                             code_challenge=pending.code_challenge, state=pending.state)


async def _issue_code(ctx: Context, oauth: OAuthState, *, client_id: str, subject: str, org_id: str, resource: str,
                      scope: str, issuer: str, redirect_uri: str, code_challenge: str,
                      state: str | None) -> AuthorizationRedirect:
    """An authorization code for an approved grant, sent back to the client's redirect URI."""
    now = oauth.config.clock()
    code = new_secret("bmms_ac_")
    await storage.issue_code(
        ctx.pool, grant_id=f"g{secrets.token_hex(12)}", code_hash=digest(code), client_id=client_id,
        subject=subject, org_id=org_id, resource=resource, scope=scope, issuer=issuer, redirect_uri=redirect_uri,
        code_challenge=code_challenge, now=now, expires_at=now + oauth.config.code_ttl,
    )
    return AuthorizationRedirect(location=_redirect_location(redirect_uri, {
        "code": code, "state": state, "iss": issuer,
    }))


# --- tokens ---


async def exchange_token(request: ExchangeToken, ctx: Context, oauth: OAuthState) -> ExchangeTokenReply:
    """The token endpoint: an authorization code or a refresh token for tokens."""
    what = f"token ({request.grant_type})"
    if request.grant_type not in ("authorization_code", "refresh_token"):
        return _refuse("unsupported_grant_type", f"grant_type {request.grant_type!r} is not supported; use "
                       "authorization_code or refresh_token", what=what, client=request.client_id or "-")
    client = await _authenticate_client(ctx, oauth, request.client_id, request.client_secret, request.client_auth,
                                        what)
    if isinstance(client, OAuthError):
        return client
    cid = client.client_id
    if request.grant_type not in client.grant_types:
        return _refuse("unauthorized_client", f"this client is not registered for {request.grant_type}",
                       what=what, client=cid)
    if len(request.resources) != 1:
        return _refuse("invalid_target", "send exactly one resource parameter: the MCP server's URL",
                       what=what, client=cid)
    if request.grant_type == "authorization_code":
        return await _exchange_code(request, ctx, oauth, client, what)
    return await _refresh(request, ctx, oauth, client, what)


async def _exchange_code(
    request: ExchangeToken, ctx: Context, oauth: OAuthState, client: Client, what: str
) -> ExchangeTokenReply:
    cid = client.client_id
    now = oauth.config.clock()
    if not request.code:
        return _refuse("invalid_request", "code is missing", what=what, client=cid)
    code, first = await storage.use_code(ctx.pool, digest(request.code), now)
    if code is None:
        return _refuse("invalid_grant", "unknown authorization code", what=what, client=cid)
    grant = code.grant
    if not first:
        await _end_grant(ctx, oauth, grant.grant_id, "authorization code reused")
        return _refuse("invalid_grant", "this authorization code was already used; every token it issued "
                       "is revoked", what=what, client=cid)
    if grant.revoked_at is not None:  # e.g. the person left the organisation before the exchange
        return _refuse("invalid_grant", "this grant was revoked; authorize again", what=what, client=cid)
    if grant.client_id != cid:
        return _refuse("invalid_grant", "the authorization code was issued to another client", what=what, client=cid)
    if code.expires_at <= now:
        return _refuse("invalid_grant", "the authorization code expired; authorize again", what=what, client=cid)
    if request.redirect_uri != code.redirect_uri:
        return _refuse("invalid_grant", "redirect_uri differs from the one of the authorization request",
                       what=what, client=cid)
    if not request.code_verifier or not _VERIFIER.match(request.code_verifier):
        return _refuse("invalid_grant", "code_verifier is missing or malformed (43-128 characters)",
                       what=what, client=cid)
    if not pkce_matches(request.code_verifier, code.code_challenge):
        return _refuse("invalid_grant", "code_verifier does not match the code_challenge (PKCE)",
                       what=what, client=cid)
    if request.resources[0] != grant.resource:
        return _refuse("invalid_target", f"resource must be {grant.resource}, the one authorized",
                       what=what, client=cid)
    if grant.issuer != request.issuer:
        return _refuse("invalid_grant", "the code was issued by another issuer", what=what, client=cid)
    ctx.log.info("issued tokens to client %s for %s", cid, grant.resource)
    return await _tokens_for(ctx, oauth, client, grant, grant.scope)


async def _refresh(
    request: ExchangeToken, ctx: Context, oauth: OAuthState, client: Client, what: str
) -> ExchangeTokenReply:
    cid = client.client_id
    now = oauth.config.clock()
    if not request.refresh_token:
        return _refuse("invalid_request", "refresh_token is missing", what=what, client=cid)
    # Everything is checked before the token is used: a refused refresh (another client, resource or issuer,
    # a wider scope) leaves it to its client, whose next refresh would otherwise look like a replay.
    token_hash = digest(request.refresh_token)
    token = await storage.find_refresh_token(ctx.pool, token_hash)
    if token is None:
        return _refuse("invalid_grant", "unknown refresh token", what=what, client=cid)
    grant = token.grant
    if grant.client_id != cid:
        return _refuse("invalid_grant", "the refresh token was issued to another client", what=what, client=cid)
    if grant.revoked_at is not None:
        return _refuse("invalid_grant", "this grant was revoked; authorize again", what=what, client=cid)
    if token.used_at is not None:
        return await _replayed(ctx, oauth, grant.grant_id, what, cid)
    if token.expires_at <= now:
        return _refuse("invalid_grant", "the refresh token expired; authorize again", what=what, client=cid)
    if request.resources[0] != grant.resource:
        return _refuse("invalid_target", f"resource must be {grant.resource}, the one authorized",
                       what=what, client=cid)
    if grant.issuer != request.issuer:
        return _refuse("invalid_grant", "the refresh token was issued by another issuer", what=what, client=cid)
    try:
        scope = narrowed_scope(grant.scope, request.scope)
    except ScopeError as exc:
        return _refuse("invalid_scope", str(exc), what=what, client=cid)
    if not await storage.use_refresh_token(ctx.pool, token_hash, now):  # a concurrent refresh used it first
        return await _replayed(ctx, oauth, grant.grant_id, what, cid)
    return await _tokens_for(ctx, oauth, client, grant, scope)


async def _replayed(ctx: Context, oauth: OAuthState, grant_id: str, what: str, client_id: str) -> OAuthError:
    """A refresh token used twice: its whole family is revoked."""
    await _end_grant(ctx, oauth, grant_id, "refresh token reused")
    return _refuse("invalid_grant", "this refresh token was already used; its whole family is revoked, "
                   "authorize again", what=what, client=client_id)


async def _tokens_for(ctx: Context, oauth: OAuthState, client: Client, grant: Grant, scope: str) -> TokenIssued:
    cfg = oauth.config
    now = cfg.clock()
    lifetime = int(cfg.access_token_ttl.total_seconds())
    access, _ = mint_access_token(
        await oauth.keys(ctx.pool).current(), issuer=grant.issuer, subject=grant.subject, audience=grant.resource,
        client_id=client.client_id, scope=scope, org_id=grant.org_id, lifetime=lifetime, now=now.timestamp(),
        grant_id=grant.grant_id,
    )
    refresh = None
    if "refresh_token" in client.grant_types:
        refresh = new_secret("bmms_rt_")
        await storage.add_refresh_token(ctx.pool, grant.grant_id, digest(refresh), now, now + cfg.refresh_token_ttl)
    return TokenIssued(access_token=access, expires_in=lifetime, refresh_token=refresh, scope=scope)


# --- revocation ---


async def revoke_token(request: RevokeToken, ctx: Context, oauth: OAuthState) -> RevokeTokenReply:
    """Token revocation (RFC 7009): a refresh token ends its grant, an access token is refused on its own."""
    client = await _authenticate_client(ctx, oauth, request.client_id, request.client_secret, request.client_auth,
                                        "revocation")
    if isinstance(client, OAuthError):
        return client
    token = await storage.find_refresh_token(ctx.pool, digest(request.token))
    if token is not None and token.grant.client_id == client.client_id:
        await _end_grant(ctx, oauth, token.grant.grant_id, "revoked by the client")
        ctx.log.info("client %s revoked grant %s", client.client_id, token.grant.grant_id)
    elif token is None and request.token.count(".") == 2:
        await _revoke_access_token(ctx, oauth, client, request)
    # Access tokens are JWTs that resource servers verify offline; ending the grant also lists it in
    # the REVOKED bucket, which runners watch to refuse its access tokens within moments.
    return TokenRevoked()


async def _revoke_access_token(ctx: Context, oauth: OAuthState, client: Client, request: RevokeToken) -> None:
    """Revoke one access token of the client's: listed by its `jti` in REVOKED until it expires, so
    runners refuse it; the grant and its other tokens stay. Anything not ours, not the client's or
    already expired is left alone (RFC 7009 answers 200 all the same)."""
    claims = None
    if request.issuer is not None:
        claims = our_access_token_claims(request.token, await oauth.keys(ctx.pool).verifying(), request.issuer)
    if claims is None:
        ctx.log.info("revocation by client %s: not an access token of this issuer; nothing to do",
                     client.client_id)
        return
    jti, grant_id, org_id = claims.get("jti"), claims.get("gid"), claims.get("org_id")
    if claims.get("client_id") != client.client_id or not all(isinstance(v, str) for v in (jti, grant_id, org_id)):
        ctx.log.warning("client %s asked to revoke an access token that is not its own; ignored", client.client_id)
        return
    assert isinstance(jti, str) and isinstance(grant_id, str) and isinstance(org_id, str)
    now = oauth.config.clock()
    expires_at = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC) + VERIFIER_LEEWAY
    if expires_at <= now:
        return  # no verifier accepts it any more
    await storage.revoke_access_token(ctx.pool, jti=jti, grant_id=grant_id, org_id=org_id,
                                      client_id=client.client_id, now=now, expires_at=expires_at)
    await record_revocation(ctx.js, grant_id=grant_id, org_id=org_id, reason=REVOKED_ALONE_REASON, at=now,
                            token_id=jti)
    ctx.log.info("client %s revoked access token %s of grant %s", client.client_id, jti, grant_id)


async def _end_grant(ctx: Context, oauth: OAuthState, grant_id: str, reason: str) -> None:
    """Revoke a grant: no more refreshes, and its access tokens refused by runners (the REVOKED bucket)."""
    now = oauth.config.clock()
    org_id = await storage.revoke_grant(ctx.pool, grant_id, reason, now)
    if org_id is not None:
        await record_revocation(ctx.js, grant_id=grant_id, org_id=org_id, reason=reason, at=now)


async def end_membership_grants(event: MembershipEnded, ctx: Context, oauth: OAuthState) -> None:
    """A person may no longer use an organisation: end every grant they gave MCP clients there (refreshes
    refused, access tokens listed in REVOKED). Safe twice: a redelivery records the same grants again."""
    now = oauth.config.clock()
    ended = await storage.end_grants_of_person(
        ctx.pool, event.org_id, event.person_id, "the person left the organisation", now,
        since=now - dt.timedelta(seconds=REVOKED.ttl_seconds),
    )
    recorded = [
        await record_revocation(ctx.js, grant_id=grant.grant_id, org_id=grant.org_id, reason=grant.reason,
                                at=grant.revoked_at)
        for grant in ended
    ]
    if not all(recorded):  # nak: the redelivery writes them again
        raise TransientError(f"{recorded.count(False)} revoked grant(s) not recorded in {REVOKED.name}")
    ctx.log.info("%s left %s: ended %d grant(s) of theirs", event.person_id, event.org_id, len(ended))


# --- keys and service tokens ---


async def get_jwks(request: GetJwks, ctx: Context, oauth: OAuthState) -> GetJwksReply:
    """The published signing keys, for resource servers to verify access tokens."""
    del request
    try:
        keys = await oauth.keys(ctx.pool).published()
    except Exception as exc:  # a wrong BMMS_SECRET_KEY shows up here: say so
        ctx.log.exception("cannot load the signing keys")
        return Failed(code=FailureCode.UNAVAILABLE, detail=f"signing keys unavailable: {type(exc).__name__}")
    return Jwks(keys=keys, max_age=oauth.config.jwks_max_age)


async def mint_service_token(request: MintServiceToken, ctx: Context, oauth: OAuthState) -> MintServiceTokenReply:
    """A short-lived access token for one of our own services (the deployer's health checks)."""
    # Only the deployer's NATS user may send this (nats.conf); the token is as narrow as a client's:
    # one server (aud), the scopes asked for, short-lived.
    base = servers_base(oauth.settings.servers_url, request.issuer)
    try:
        server = await resolve_resource(ctx.nc, request.resource, base)
    except RegistryUnavailable as exc:
        return Failed(code=FailureCode.UNAVAILABLE, detail=f"the server registry cannot be reached: {exc}")
    if server is None:
        return Failed(code=FailureCode.INVALID, field="resource",
                      detail=f"{request.resource[:200]!r} is not an MCP server URL under {base}")
    try:
        scopes = parse_scope(request.scope)
    except ScopeError as exc:
        return Failed(code=FailureCode.INVALID, field="scope", detail=str(exc))
    lifetime = 120
    now = oauth.config.clock()
    access, jti = mint_access_token(
        await oauth.keys(ctx.pool).current(), issuer=request.issuer, subject=f"service:{request.service}",
        audience=server.resource, client_id=f"bmms-{request.service}", scope=" ".join(scopes),
        org_id=request.org_id, lifetime=lifetime, now=now.timestamp(),
    )
    ctx.log.info("service token %s for %s to %s (%s)", jti, request.service, server.resource, " ".join(scopes))
    return TokenIssued(access_token=access, expires_in=lifetime, scope=" ".join(scopes))


# --- answers ---


def _refuse(
    error: str, description: str, *, status: int = 400, what: str = "request", client: str = "-",
    retry_after_seconds: int | None = None,
) -> OAuthError:
    log.warning("oauth refused %s (client %s): %s: %s", what, client, error, description)
    return OAuthError(error=error, description=description, status=status, retry_after_seconds=retry_after_seconds)


def _redirect_location(redirect_uri: str, params: dict[str, str | None]) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{redirect_uri}{'&' if urlsplit(redirect_uri).query else '?'}{query}"
