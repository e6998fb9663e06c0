"""The oauth actor's handlers: the Authorization Server's decisions, one RPC per endpoint step.

Every refusal is logged with its reason (client id, what was wrong), so an operator can see why a client
failed instead of guessing from an opaque "authorization failed".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from actors.oauth import storage
from actors.oauth.clients import (
    Client,
    MetadataDocuments,
    MetadataError,
    checked_metadata,
    is_metadata_document_url,
    metadata_digest,
    trusting,
)
from actors.oauth.keys import Clock, KeyEncryption, SigningKeys, signing_key_encryption
from actors.oauth.resources import RegistryUnavailable, resolve_resource, server_id_of, servers_base
from actors.oauth.revocations import REVOKED_ALONE_REASON, record_revocation, republish_recent
from actors.oauth.scopes import ScopeError, describe, is_optional, narrowed_scope, parse_scope, requested_scopes
from actors.oauth.tokens import digest, mint_access_token, new_secret, our_access_token_claims, pkce_matches
from actors.runtime.actor import Actor, Context, TransientError
from actors.runtime.settings import Settings
from bus_schemas.base import Failed, FailureCode
from bus_schemas.identity import MembershipEnded
from bus_schemas.oauth import (
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
    TokenIssued,
    TokenRevoked,
)
from bus_schemas.registry import (
    OAUTH_CREATE_CLIENT,
    OAUTH_DECIDE_CONSENT,
    OAUTH_EXCHANGE_TOKEN,
    OAUTH_GET_JWKS,
    OAUTH_MEMBERSHIP_ENDED,
    OAUTH_MINT_SERVICE_TOKEN,
    OAUTH_REGISTER_CLIENT,
    OAUTH_REVOKE_TOKEN,
    OAUTH_START_AUTHORIZATION,
    REVOKED,
)

log = logging.getLogger("bmms.oauth")

_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")


def utc_now() -> dt.datetime:
    """The default clock."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class OAuthConfig:
    """Lifetimes and limits of the Authorization Server; tests pass a clock they move."""

    clock: Clock = field(default=utc_now)
    """Now; every expiry is computed from it (no `now()` in SQL), so tests move time, never sleep."""
    code_ttl: dt.timedelta = dt.timedelta(seconds=60)
    """Authorization codes are single-use and live this long."""
    consent_ttl: dt.timedelta = dt.timedelta(minutes=10)
    """How long a consent page may stay open before its decision is refused."""
    access_token_ttl: dt.timedelta = dt.timedelta(minutes=15)
    refresh_token_ttl: dt.timedelta = dt.timedelta(days=30)
    """Sliding: every refresh issues a new refresh token with a fresh lifetime."""
    registrations_per_hour: int = 30
    """Dynamic registrations accepted per source address per hour."""
    unused_client_ttl: dt.timedelta = dt.timedelta(days=7)
    """Dynamic clients never used to complete an authorization are deleted after this."""
    key_rotation: dt.timedelta = dt.timedelta(days=30)
    """A new signing key is made when the current one is this old."""
    jwks_max_age: int = 300
    """Seconds verifiers may cache the JWKS."""


class OAuthActor(Actor):
    """The actor, plus what it builds once from the process settings."""

    def __init__(self, config: OAuthConfig) -> None:
        super().__init__("oauth", migrations=Path(__file__).parent / "migrations")
        self.config = config
        self.settings: Settings | None = None
        self.encryption: KeyEncryption | None = None
        self.documents: MetadataDocuments | None = None
        self._keys: SigningKeys | None = None

    async def serve(self, settings: Settings, stop: asyncio.Event) -> None:
        """Refuse to start without a key-encryption key, then serve."""
        if not settings.secret_key:
            raise RuntimeError("the oauth actor needs BMMS_SECRET_KEY (its signing keys are stored encrypted)")
        self.settings = settings
        self.encryption = signing_key_encryption(settings.secret_key)
        self.documents = MetadataDocuments(allow_loopback=settings.oauth_allow_loopback_fetch,
                                           tls=trusting(settings.oauth_metadata_ca_file))
        if self.config.access_token_ttl + VERIFIER_LEEWAY >= dt.timedelta(seconds=REVOKED.ttl_seconds):
            raise RuntimeError(f"access tokens live {self.config.access_token_ttl}, as long as the {REVOKED.name} "
                               "bucket keeps a revocation: a revoked grant's tokens would work again")
        await super().serve(settings, stop)

    async def started(self, ctx: Context) -> None:
        """Write the grants revoked within the REVOKED bucket's TTL again, in case a write was lost."""
        try:
            written = await republish_recent(ctx.pool, ctx.js, self.config.clock())
        except Exception:
            ctx.log.exception("could not catch up on revoked grants")
            return
        if written:
            ctx.log.info("recorded %d recently revoked grant(s) in %s again", written, REVOKED.name)

    def keys(self, ctx: Context) -> SigningKeys:
        """The signing keys (built on first use, once the pool exists)."""
        if self._keys is None:
            assert self.encryption is not None
            self._keys = SigningKeys(
                ctx.pool, self.encryption, self.config.clock, rotate_after=self.config.key_rotation,
                publish_retired_for=self.config.access_token_ttl + dt.timedelta(minutes=5),
            )
        return self._keys


VERIFIER_LEEWAY = dt.timedelta(seconds=30)
"""The clock leeway resource servers allow on `exp` (runner_template.auth)."""


def _refuse(
    error: str, description: str, *, status: int = 400, what: str = "request", client: str = "-",
    retry_after_seconds: int | None = None,
) -> OAuthError:
    log.warning("oauth refused %s (client %s): %s: %s", what, client, error, description)
    return OAuthError(error=error, description=description, status=status, retry_after_seconds=retry_after_seconds)


def _redirect_location(redirect_uri: str, params: dict[str, str | None]) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{redirect_uri}{'&' if urlsplit(redirect_uri).query else '?'}{query}"


def _registered(
    client_id: str, issued_at: dt.datetime, metadata: ClientMetadata, secret: str | None
) -> ClientRegistered:
    return ClientRegistered(
        client_id=client_id,
        client_secret=secret,
        client_id_issued_at=int(issued_at.timestamp()),
        redirect_uris=metadata.redirect_uris,
        client_name=metadata.client_name,
        token_endpoint_auth_method=metadata.token_endpoint_auth_method,  # type: ignore[arg-type]  # checked
        grant_types=metadata.grant_types or (),
        response_types=metadata.response_types or ("code",),
        scope=metadata.scope,
    )


def create_actor(config: OAuthConfig | None = None) -> Actor:
    """The oauth actor."""
    actor = OAuthActor(config or OAuthConfig())
    cfg = actor.config

    def settings() -> Settings:
        assert actor.settings is not None
        return actor.settings

    async def find_client(ctx: Context, client_id: str) -> Client | None:
        if is_metadata_document_url(client_id):
            assert actor.documents is not None
            return await actor.documents.client(client_id)
        row = await storage.find_client(ctx.pool, client_id)
        if row is None:
            return None
        return Client(
            client_id=row["client_id"],
            client_name=row["client_name"] or row["client_id"],
            client_uri=row["client_uri"],
            redirect_uris=tuple(row["redirect_uris"]),
            token_endpoint_auth_method=row["token_endpoint_auth_method"],
            grant_types=tuple(row["grant_types"]),
        )

    async def register(ctx: Context, metadata: ClientMetadata, *, kind: str, source: str | None,
                       client_id: str | None = None) -> RegisterClientReply:
        now = cfg.clock()
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

    @actor.rpc(OAUTH_REGISTER_CLIENT)
    async def register_client(request: RegisterClient, ctx: Context) -> RegisterClientReply:
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
        return await register(ctx, request.metadata, kind="dynamic", source=request.client_ip)

    @actor.rpc(OAUTH_CREATE_CLIENT)
    async def create_client(request: CreateClient, ctx: Context) -> CreateClientReply:
        return await register(ctx, request.metadata, kind="preregistered", source=None, client_id=request.client_id)

    @actor.rpc(OAUTH_START_AUTHORIZATION)
    async def start_authorization(request: StartAuthorization, ctx: Context) -> StartAuthorizationReply:
        what = "authorization"
        if not request.client_id:
            return _refuse("invalid_request", "client_id is missing", what=what)
        try:
            client = await find_client(ctx, request.client_id)
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

        # From here on the redirect URI is the client's own: errors go back to it (RFC 6749 §4.1.2.1).
        def back(error: str, description: str) -> OAuthError:
            refusal = _refuse(error, description, what=what, client=client.client_id)
            location = _redirect_location(redirect_uri, {
                "error": error, "error_description": description, "state": request.state, "iss": request.issuer,
            })
            return OAuthError(error=refusal.error, description=refusal.description, location=location)

        if request.response_type != "code":
            return back("unsupported_response_type", "response_type must be code")
        if "authorization_code" not in client.grant_types:
            return back("unauthorized_client", "this client is not registered for the authorization_code grant")
        if not request.code_challenge:
            return back("invalid_request", "PKCE is required: send code_challenge with code_challenge_method=S256")
        if request.code_challenge_method != "S256":
            return back("invalid_request", f"code_challenge_method must be S256, not "
                        f"{request.code_challenge_method or 'plain (the default when omitted)'}")
        if not _CHALLENGE.match(request.code_challenge):
            return back("invalid_request", "code_challenge must be 43 base64url characters (SHA-256 of the verifier)")
        if len(request.resources) != 1:
            return back("invalid_target", "send exactly one resource parameter: the MCP server's URL "
                        f"(got {len(request.resources)})")
        resource = request.resources[0]
        base = servers_base(settings().servers_url, request.issuer)
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
        consent_id = secrets.token_urlsafe(18)
        csrf = secrets.token_urlsafe(32)
        now = cfg.clock()
        required = [s for s in scopes if not is_optional(s)]
        optional = [s for s in scopes if is_optional(s)]
        await storage.open_consent(
            ctx.pool, consent_id=consent_id, csrf_hash=digest(csrf), subject=request.signer.subject,
            org_id=request.signer.org_id, client_id=client.client_id, redirect_uri=redirect_uri,
            state=request.state, code_challenge=request.code_challenge, resource=server.resource,
            scopes_required=required, scopes_optional=optional, issuer=request.issuer,
            expires_at=now + cfg.consent_ttl,
        )
        return ConsentRequired(
            consent_id=consent_id, csrf_token=csrf, client_id=client.client_id, client_name=client.client_name,
            client_uri=client.client_uri, redirect_uri=redirect_uri, resource=server.resource,
            server_id=server.server_id,
            scopes=tuple(ScopeChoice(scope=s, description=describe(s), optional=is_optional(s)) for s in scopes),
            expires_in=int(cfg.consent_ttl.total_seconds()),
        )

    @actor.rpc(OAUTH_DECIDE_CONSENT)
    async def decide_consent(request: DecideConsent, ctx: Context) -> DecideConsentReply:
        what = "consent"
        pending = await storage.peek_consent(ctx.pool, request.consent_id)
        if pending is None:
            return _refuse("invalid_request", "this consent request is unknown or was already answered; start "
                           "again from your MCP client", what=what)
        if not secrets.compare_digest(pending["csrf_hash"], digest(request.csrf_token)) \
                or pending["subject"] != request.subject or pending["issuer"] != request.issuer:
            return _refuse("invalid_request", "the consent form does not belong to this session; start again",
                           status=403, what=what, client=pending["client_id"])
        pending = await storage.take_consent(ctx.pool, request.consent_id)
        if pending is None:
            return _refuse("invalid_request", "this consent request was already answered", what=what)
        now = cfg.clock()
        if pending["expires_at"] <= now:
            return _refuse("invalid_request", "this consent request expired; start again from your MCP client",
                           what=what, client=pending["client_id"])
        redirect_uri = pending["redirect_uri"]
        if not request.approve:
            _refuse("access_denied", "the person denied the request", what=what, client=pending["client_id"])
            return AuthorizationRedirect(location=_redirect_location(redirect_uri, {
                "error": "access_denied", "error_description": "the person denied access",
                "state": pending["state"], "iss": pending["issuer"],
            }))
        optional = [s for s in pending["scopes_optional"] if s in request.granted_optional]
        scope = " ".join([*pending["scopes_required"], *optional])
        if not scope:
            return AuthorizationRedirect(location=_redirect_location(redirect_uri, {
                "error": "access_denied", "error_description": "no scope was granted",
                "state": pending["state"], "iss": pending["issuer"],
            }))
        code = new_secret("bmms_ac_")
        await storage.issue_code(
            ctx.pool, grant_id=f"g{secrets.token_hex(12)}", code_hash=digest(code), client_id=pending["client_id"],
            subject=pending["subject"], org_id=pending["org_id"], resource=pending["resource"], scope=scope,
            issuer=pending["issuer"], redirect_uri=redirect_uri, code_challenge=pending["code_challenge"], now=now,
            expires_at=now + cfg.code_ttl,
        )
        ctx.log.info("authorization approved for client %s by %s on %s (%s)", pending["client_id"],
                     pending["subject"], pending["resource"], scope)
        return AuthorizationRedirect(location=_redirect_location(redirect_uri, {
            "code": code, "state": pending["state"], "iss": pending["issuer"],
        }))

    async def authenticate_client(
        ctx: Context, client_id: str | None, secret: str | None, used: str, what: str
    ) -> Client | OAuthError:
        if not client_id:
            return _refuse("invalid_client", "client_id is missing", status=401, what=what)
        try:
            client = await find_client(ctx, client_id)
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

    async def tokens_for(ctx: Context, client: Client, grant_id: str, row: dict[str, str], scope: str) -> TokenIssued:
        now = cfg.clock()
        lifetime = int(cfg.access_token_ttl.total_seconds())
        access, _ = mint_access_token(
            await actor.keys(ctx).current(), issuer=row["issuer"], subject=row["subject"], audience=row["resource"],
            client_id=client.client_id, scope=scope, org_id=row["org_id"], lifetime=lifetime, now=now.timestamp(),
            grant_id=grant_id,
        )
        refresh = None
        if "refresh_token" in client.grant_types:
            refresh = new_secret("bmms_rt_")
            await storage.add_refresh_token(ctx.pool, grant_id, digest(refresh), now, now + cfg.refresh_token_ttl)
        return TokenIssued(access_token=access, expires_in=lifetime, refresh_token=refresh, scope=scope)

    async def end_grant(ctx: Context, grant_id: str, reason: str) -> None:
        """Revoke a grant: no more refreshes, and its access tokens refused by runners (the REVOKED bucket)."""
        now = cfg.clock()
        org_id = await storage.revoke_grant(ctx.pool, grant_id, reason, now)
        if org_id is not None:
            await record_revocation(ctx.js, grant_id=grant_id, org_id=org_id, reason=reason, at=now)

    @actor.rpc(OAUTH_EXCHANGE_TOKEN)
    async def exchange_token(request: ExchangeToken, ctx: Context) -> ExchangeTokenReply:
        what = f"token ({request.grant_type})"
        if request.grant_type not in ("authorization_code", "refresh_token"):
            return _refuse("unsupported_grant_type", f"grant_type {request.grant_type!r} is not supported; use "
                           "authorization_code or refresh_token", what=what, client=request.client_id or "-")
        client = await authenticate_client(ctx, request.client_id, request.client_secret, request.client_auth, what)
        if isinstance(client, OAuthError):
            return client
        cid = client.client_id
        if request.grant_type not in client.grant_types:
            return _refuse("unauthorized_client", f"this client is not registered for {request.grant_type}",
                           what=what, client=cid)
        if len(request.resources) != 1:
            return _refuse("invalid_target", "send exactly one resource parameter: the MCP server's URL",
                           what=what, client=cid)
        now = cfg.clock()
        if request.grant_type == "authorization_code":
            if not request.code:
                return _refuse("invalid_request", "code is missing", what=what, client=cid)
            row, first = await storage.use_code(ctx.pool, digest(request.code), now)
            if row is None:
                return _refuse("invalid_grant", "unknown authorization code", what=what, client=cid)
            if not first:
                await end_grant(ctx, row["grant_id"], "authorization code reused")
                return _refuse("invalid_grant", "this authorization code was already used; every token it issued "
                               "is revoked", what=what, client=cid)
            if row["revoked_at"] is not None:  # e.g. the person left the organisation before the exchange
                return _refuse("invalid_grant", "this grant was revoked; authorize again", what=what, client=cid)
            if row["client_id"] != cid:
                return _refuse("invalid_grant", "the authorization code was issued to another client",
                               what=what, client=cid)
            if row["expires_at"] <= now:
                return _refuse("invalid_grant", "the authorization code expired; authorize again", what=what,
                               client=cid)
            if request.redirect_uri != row["redirect_uri"]:
                return _refuse("invalid_grant", "redirect_uri differs from the one of the authorization request",
                               what=what, client=cid)
            if not request.code_verifier or not _VERIFIER.match(request.code_verifier):
                return _refuse("invalid_grant", "code_verifier is missing or malformed (43-128 characters)",
                               what=what, client=cid)
            if not pkce_matches(request.code_verifier, row["code_challenge"]):
                return _refuse("invalid_grant", "code_verifier does not match the code_challenge (PKCE)",
                               what=what, client=cid)
            if request.resources[0] != row["resource"]:
                return _refuse("invalid_target", f"resource must be {row['resource']}, the one authorized",
                               what=what, client=cid)
            if row["issuer"] != request.issuer:
                return _refuse("invalid_grant", "the code was issued by another issuer", what=what, client=cid)
            ctx.log.info("issued tokens to client %s for %s", cid, row["resource"])
            return await tokens_for(ctx, client, row["grant_id"], dict(row), row["scope"])

        if not request.refresh_token:
            return _refuse("invalid_request", "refresh_token is missing", what=what, client=cid)

        async def replayed(grant_id: str) -> OAuthError:
            await end_grant(ctx, grant_id, "refresh token reused")
            return _refuse("invalid_grant", "this refresh token was already used; its whole family is revoked, "
                           "authorize again", what=what, client=cid)

        # Everything is checked before the token is used: a refused refresh (another client, resource or issuer,
        # a wider scope) leaves it to its client, whose next refresh would otherwise look like a replay.
        token_hash = digest(request.refresh_token)
        row = await storage.find_refresh_token(ctx.pool, token_hash)
        if row is None:
            return _refuse("invalid_grant", "unknown refresh token", what=what, client=cid)
        if row["client_id"] != cid:
            return _refuse("invalid_grant", "the refresh token was issued to another client", what=what, client=cid)
        if row["revoked_at"] is not None:
            return _refuse("invalid_grant", "this grant was revoked; authorize again", what=what, client=cid)
        if row["used_at"] is not None:
            return await replayed(row["grant_id"])
        if row["expires_at"] <= now:
            return _refuse("invalid_grant", "the refresh token expired; authorize again", what=what, client=cid)
        if request.resources[0] != row["resource"]:
            return _refuse("invalid_target", f"resource must be {row['resource']}, the one authorized",
                           what=what, client=cid)
        if row["issuer"] != request.issuer:
            return _refuse("invalid_grant", "the refresh token was issued by another issuer", what=what, client=cid)
        try:
            scope = narrowed_scope(row["scope"], request.scope)
        except ScopeError as exc:
            return _refuse("invalid_scope", str(exc), what=what, client=cid)
        if not await storage.use_refresh_token(ctx.pool, token_hash, now):  # a concurrent refresh used it first
            return await replayed(row["grant_id"])
        return await tokens_for(ctx, client, row["grant_id"], dict(row), scope)

    @actor.rpc(OAUTH_REVOKE_TOKEN)
    async def revoke_token(request: RevokeToken, ctx: Context) -> RevokeTokenReply:
        client = await authenticate_client(ctx, request.client_id, request.client_secret, request.client_auth,
                                           "revocation")
        if isinstance(client, OAuthError):
            return client
        row = await storage.find_refresh_token(ctx.pool, digest(request.token))
        if row is not None and row["client_id"] == client.client_id:
            await end_grant(ctx, row["grant_id"], "revoked by the client")
            ctx.log.info("client %s revoked grant %s", client.client_id, row["grant_id"])
        elif row is None and request.token.count(".") == 2:
            await revoke_access_token(ctx, client, request)
        # Access tokens are JWTs that resource servers verify offline; ending the grant also lists it in
        # the REVOKED bucket, which runners watch to refuse its access tokens within moments.
        return TokenRevoked()

    async def revoke_access_token(ctx: Context, client: Client, request: RevokeToken) -> None:
        """Revoke one access token of the client's: listed by its `jti` in REVOKED until it expires, so
        runners refuse it; the grant and its other tokens stay. Anything not ours, not the client's or
        already expired is left alone (RFC 7009 answers 200 all the same)."""
        claims = None
        if request.issuer is not None:
            claims = our_access_token_claims(request.token, await actor.keys(ctx).verifying(), request.issuer)
        if claims is None:
            ctx.log.info("revocation by client %s: not an access token of this issuer; nothing to do",
                         client.client_id)
            return
        jti, grant_id, org_id = claims.get("jti"), claims.get("gid"), claims.get("org_id")
        if claims.get("client_id") != client.client_id or not all(isinstance(v, str) for v in (jti, grant_id, org_id)):
            ctx.log.warning("client %s asked to revoke an access token that is not its own; ignored", client.client_id)
            return
        assert isinstance(jti, str) and isinstance(grant_id, str) and isinstance(org_id, str)
        now = cfg.clock()
        expires_at = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC) + VERIFIER_LEEWAY
        if expires_at <= now:
            return  # no verifier accepts it any more
        await storage.revoke_access_token(ctx.pool, jti=jti, grant_id=grant_id, org_id=org_id,
                                          client_id=client.client_id, now=now, expires_at=expires_at)
        await record_revocation(ctx.js, grant_id=grant_id, org_id=org_id, reason=REVOKED_ALONE_REASON, at=now,
                                token_id=jti)
        ctx.log.info("client %s revoked access token %s of grant %s", client.client_id, jti, grant_id)

    @actor.consumer(OAUTH_MEMBERSHIP_ENDED)
    async def end_membership_grants(event: MembershipEnded, ctx: Context) -> None:
        """A person may no longer use an organisation: end every grant they gave MCP clients there (refreshes
        refused, access tokens listed in REVOKED). Safe twice: a redelivery records the same grants again."""
        now = cfg.clock()
        ended = await storage.end_grants_of_person(
            ctx.pool, event.org_id, event.person_id, "the person left the organisation", now,
            since=now - dt.timedelta(seconds=REVOKED.ttl_seconds),
        )
        recorded = [
            await record_revocation(ctx.js, grant_id=row["grant_id"], org_id=row["org_id"],
                                    reason=row["revoked_reason"] or "revoked", at=row["revoked_at"])
            for row in ended
        ]
        if not all(recorded):  # nak: the redelivery writes them again
            raise TransientError(f"{recorded.count(False)} revoked grant(s) not recorded in {REVOKED.name}")
        ctx.log.info("%s left %s: ended %d grant(s) of theirs", event.person_id, event.org_id, len(ended))

    @actor.rpc(OAUTH_GET_JWKS)
    async def get_jwks(request: GetJwks, ctx: Context) -> GetJwksReply:
        del request
        try:
            keys = await actor.keys(ctx).published()
        except Exception as exc:  # a wrong BMMS_SECRET_KEY shows up here: say so
            ctx.log.exception("cannot load the signing keys")
            return Failed(code=FailureCode.UNAVAILABLE, detail=f"signing keys unavailable: {type(exc).__name__}")
        return Jwks(keys=keys, max_age=cfg.jwks_max_age)

    @actor.rpc(OAUTH_MINT_SERVICE_TOKEN)
    async def mint_service_token(request: MintServiceToken, ctx: Context) -> MintServiceTokenReply:
        # Only the deployer's NATS user may send this (nats.conf); the token is as narrow as a client's:
        # one server (aud), the scopes asked for, short-lived.
        base = servers_base(settings().servers_url, request.issuer)
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
        now = cfg.clock()
        access, jti = mint_access_token(
            await actor.keys(ctx).current(), issuer=request.issuer, subject=f"service:{request.service}",
            audience=server.resource, client_id=f"bmms-{request.service}", scope=" ".join(scopes),
            org_id=request.org_id, lifetime=lifetime, now=now.timestamp(),
        )
        ctx.log.info("service token %s for %s to %s (%s)", jti, request.service, server.resource, " ".join(scopes))
        return TokenIssued(access_token=access, expires_in=lifetime, scope=" ".join(scopes))

    return actor
