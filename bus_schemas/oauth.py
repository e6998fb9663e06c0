"""The OAuth Authorization Server's messages: client registration, authorization, tokens, keys.

The gateway turns HTTP requests on the OAuth endpoints into these and answers with what comes back;
every decision (is this client, redirect URI, scope, resource, code, refresh token acceptable) is the
oauth actor's. Expected refusals are `OAuthError` values carrying the RFC 6749 error code.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from bus_schemas.base import Failed, Id, Message

SCOPE_TOOLS_READ = "mcp:tools:read"
"""Call the server's read-only tools (annotated `readOnlyHint`); what using a server at all needs."""
SCOPE_TOOLS_WRITE = "mcp:tools:write"
"""Call the server's tools that change something."""
SCOPE_TOOL_PREFIX = "mcp:tool:"
"""`mcp:tool:<name>`: call one named tool, whatever kind it is (`<name>`: [A-Za-z0-9_.-]{1,64})."""
SCOPE_OFFLINE_ACCESS = "offline_access"
"""Accepted for clients that ask; refresh tokens are issued to every client registered for them."""
SCOPES_SUPPORTED = (SCOPE_TOOLS_READ, SCOPE_TOOLS_WRITE, SCOPE_OFFLINE_ACCESS)
"""The scope grammar's fixed members (per-tool scopes are open-ended); a token's `aud` names the server."""

TokenEndpointAuthMethod = Literal["none", "client_secret_post", "client_secret_basic"]
"""How a client authenticates at the token endpoint: public clients send no secret."""

ClientAuthUsed = Literal["none", "client_secret_post", "client_secret_basic"]
"""How the caller of the token or revocation endpoint presented its credentials."""


class OAuthError(Message, frozen=True, kw_only=True, tag="oauth.error.v1"):
    """An RFC 6749/6750/7591/8707 refusal: `error` is the registered error code."""

    error: str
    """invalid_request, invalid_client, invalid_grant, unauthorized_client, unsupported_grant_type,
    invalid_scope, invalid_target, access_denied, unsupported_response_type,
    invalid_redirect_uri, invalid_client_metadata, temporarily_unavailable."""
    description: str
    """A sentence a developer can act on (shown as `error_description`)."""
    status: int = 400
    """The HTTP status the edge answers with (400; 401 for invalid_client; 429 when rate limited)."""
    location: str | None = None
    """For an authorization request whose redirect URI was validated: where to send the browser (the
    redirect URI with `error`, `state` and `iss`). None: show an error page instead."""
    retry_after_seconds: int | None = None
    """With status 429: seconds until the rate limit's window frees up (the edge's `Retry-After`)."""


class ClientMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """RFC 7591 client metadata, as sent to the registration endpoint (unknown members are dropped)."""

    redirect_uris: tuple[str, ...] = ()
    client_name: str | None = None
    token_endpoint_auth_method: str | None = None
    """Omitted means `client_secret_basic` (RFC 7591 §2)."""
    grant_types: tuple[str, ...] | None = None
    response_types: tuple[str, ...] | None = None
    scope: str | None = None
    client_uri: str | None = None
    logo_uri: str | None = None
    software_id: str | None = None
    software_version: str | None = None


class RegisterClient(Message, frozen=True, kw_only=True, tag="oauth.register_client.v1"):
    """Dynamic Client Registration (RFC 7591); the same metadata returns the same client."""

    metadata: ClientMetadata
    client_ip: str
    """Where the registration came from, for the per-address rate limit."""


class CreateClient(Message, frozen=True, kw_only=True, tag="oauth.create_client.v1"):
    """Pre-register a client (operator CLI): never cleaned up, may be confidential."""

    metadata: ClientMetadata
    client_id: str | None = None
    """A chosen client id; omitted, one is generated."""


class ClientRegistered(Message, frozen=True, kw_only=True, tag="oauth.client_registered.v1"):
    """A registered client (RFC 7591 §3.2.1); `client_secret` is shown once and stored hashed."""

    client_id: str
    client_secret: str | None = None
    client_id_issued_at: int
    client_secret_expires_at: int = 0
    redirect_uris: tuple[str, ...]
    client_name: str | None = None
    token_endpoint_auth_method: TokenEndpointAuthMethod
    grant_types: tuple[str, ...]
    response_types: tuple[str, ...]
    scope: str | None = None


class Signer(msgspec.Struct, frozen=True, kw_only=True):
    """The signed-in person on whose behalf an authorization is asked."""

    subject: str
    """The token's `sub`: the person id."""
    org_id: str
    label: str = ""
    """How to name the person on the consent page (their email)."""


DASHBOARD_CLIENT_ID = "bmms-dashboard"
"""The platform's own first-party client: the dashboard's playground asks for tokens as it. Registered by the
Authorization Server itself (public, authorization_code only: no refresh token; its one redirect URI is
DASHBOARD_REDIRECT_PATH on the issuer); consent is implicit for a person's own organisation's servers."""
DASHBOARD_REDIRECT_PATH = "/dashboard/oauth/callback"
"""The first-party client's redirect URI, on the issuer (the gateway reads the code from it, server-side)."""


class StartAuthorization(Message, frozen=True, kw_only=True, tag="oauth.start_authorization.v1"):
    """An authorization request (RFC 6749 §4.1.1 + PKCE + RFC 8707), as it arrived at /oauth/authorize."""

    issuer: str
    client_id: str | None = None
    redirect_uri: str | None = None
    response_type: str | None = None
    state: str | None = None
    scope: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    resources: tuple[str, ...] = ()
    """Every `resource` parameter given (exactly one is accepted)."""
    signer: Signer | None = None
    """The signed-in person; None only validates the request (the browser then signs in first)."""


class SignInRequired(Message, frozen=True, kw_only=True, tag="oauth.sign_in_required.v1"):
    """The request is valid; a person must sign in before consenting."""

    client_name: str


class ScopeChoice(msgspec.Struct, frozen=True, kw_only=True):
    """One scope on the consent page."""

    scope: str
    description: str
    optional: bool
    """The person may untick it."""


class ConsentRequired(Message, frozen=True, kw_only=True, tag="oauth.consent_required.v1"):
    """A validated, pending authorization waiting for the person's decision."""

    consent_id: str
    csrf_token: str
    """Must come back with the decision; stored hashed and bound to the person."""
    client_id: str
    client_name: str
    client_uri: str | None = None
    redirect_uri: str
    resource: str
    server_id: str
    scopes: tuple[ScopeChoice, ...]
    expires_in: int


class DecideConsent(Message, frozen=True, kw_only=True, tag="oauth.decide_consent.v1"):
    """The person's answer on the consent page."""

    issuer: str
    consent_id: str
    csrf_token: str
    subject: str
    """Who submitted the form; must be who the consent was shown to."""
    approve: bool
    granted_optional: tuple[str, ...] = ()
    """The optional scopes left ticked."""


class AuthorizationRedirect(Message, frozen=True, kw_only=True, tag="oauth.authorization_redirect.v1"):
    """Where to send the browser: the redirect URI with `code` (or `error`), `state` and `iss`."""

    location: str


class ExchangeToken(Message, frozen=True, kw_only=True, tag="oauth.exchange_token.v1"):
    """A token request (RFC 6749 §4.1.3 / §6), with the client credentials the edge found."""

    issuer: str
    grant_type: str | None = None
    code: str | None = None
    redirect_uri: str | None = None
    code_verifier: str | None = None
    refresh_token: str | None = None
    resources: tuple[str, ...] = ()
    scope: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    client_auth: ClientAuthUsed = "none"


class TokenIssued(Message, frozen=True, kw_only=True, tag="oauth.token_issued.v1"):
    """A successful token response (RFC 6749 §5.1)."""

    access_token: str
    token_type: str = "Bearer"  # noqa: S105
    expires_in: int
    refresh_token: str | None = None
    scope: str


class RevokeToken(Message, frozen=True, kw_only=True, tag="oauth.revoke_token.v1"):
    """RFC 7009 revocation of a refresh token (its whole family) or an access token."""

    token: str
    token_type_hint: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    client_auth: ClientAuthUsed = "none"
    issuer: str | None = None
    """The issuer the request came to; an access token is revoked only if its `iss` is this one."""


class TokenRevoked(Message, frozen=True, kw_only=True, tag="oauth.token_revoked.v1"):
    """Revocation done (also answered for unknown tokens, as RFC 7009 §2.2 asks)."""


class GrantRevoked(Message, frozen=True, kw_only=True, tag="oauth.grant_revoked.v1"):
    """A grant ended early (revoked by its client, a reused code or refresh token, its person removed from
    the organisation): resource servers refuse every access token carrying its id (the `gid` claim) until
    those tokens would have expired anyway. With `token_id`, only that one access token was revoked."""

    grant_id: str
    org_id: str
    reason: str
    revoked_at: str
    token_id: str | None = None
    """Set when one access token (this `jti`) was revoked (RFC 7009), not its whole grant."""


class GetJwks(Message, frozen=True, kw_only=True, tag="oauth.get_jwks.v1"):
    """The public keys that verify tokens."""


class PublicJwk(msgspec.Struct, frozen=True, kw_only=True):
    """One RSA public key (RFC 7517)."""

    kty: str
    n: str
    e: str
    kid: str
    alg: str = "RS256"
    use: str = "sig"


class Jwks(Message, frozen=True, kw_only=True, tag="oauth.jwks.v1"):
    """The JWK Set: the signing key and every retired key whose tokens may still be live."""

    keys: tuple[PublicJwk, ...]
    max_age: int
    """Seconds a verifier may cache the set."""


class MintServiceToken(Message, frozen=True, kw_only=True, tag="oauth.mint_service_token.v1"):
    """A short-lived access token for the platform itself (the deployer's health check of a server).

    Only the deployer's NATS user may ask for one. `sub` is `service:<service>`, `client_id` is
    `bmms-<service>`, `aud` the server's canonical URL: the runner verifies it like any other token.
    """

    service: Annotated[str, msgspec.Meta(pattern=r"^[a-z]{1,32}$")]
    issuer: str
    """The issuer runners are configured with (the platform's public URL)."""
    resource: str
    org_id: Id
    scope: str = SCOPE_TOOLS_READ


RegisterClientReply = ClientRegistered | OAuthError | Failed
CreateClientReply = ClientRegistered | OAuthError | Failed
StartAuthorizationReply = SignInRequired | ConsentRequired | AuthorizationRedirect | OAuthError | Failed
DecideConsentReply = AuthorizationRedirect | OAuthError | Failed
ExchangeTokenReply = TokenIssued | OAuthError | Failed
RevokeTokenReply = TokenRevoked | OAuthError | Failed
GetJwksReply = Jwks | Failed
MintServiceTokenReply = TokenIssued | Failed
