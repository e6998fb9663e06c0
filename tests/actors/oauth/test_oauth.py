"""The oauth actor over the real bus and database: registration, authorization, PKCE, codes, tokens,
refresh rotation with reuse detection, Client ID Metadata Documents, and nothing secret stored in clear."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from nats.aio.client import Client

from actors.oauth.actor import create_actor
from actors.oauth.clients import MetadataDocuments, MetadataError
from actors.oauth.keys import signing_key_encryption
from actors.oauth.state import OAuthConfig
from actors.oauth.tokens import digest
from actors.runtime.bus import connect
from bus_schemas.oauth import (
    DASHBOARD_CLIENT_ID,
    DASHBOARD_REDIRECT_PATH,
    AuthorizationRedirect,
    ClientMetadata,
    ClientRegistered,
    ConsentRequired,
    CreateClient,
    DecideConsent,
    ExchangeToken,
    GetJwks,
    Jwks,
    OAuthError,
    RegisterClient,
    RevokeToken,
    SignInRequired,
    TokenIssued,
    TokenRevoked,
)
from bus_schemas.registry import (
    OAUTH_CREATE_CLIENT,
    OAUTH_DECIDE_CONSENT,
    OAUTH_EXCHANGE_TOKEN,
    OAUTH_GET_JWKS,
    OAUTH_REGISTER_CLIENT,
    OAUTH_REVOKE_TOKEN,
)
from tests.conftest import Stack, running
from tests.support.oauth_helpers import (
    FOREIGN,
    ISSUER,
    REDIRECT,
    RESOURCE,
    SECRET_KEY,
    MovableClock,
    ask,
    authorize,
    code_for,
    document_server,
    exchange,
    person,
    pkce_pair,
    query_of,
    refresh,
    register,
    serve_asgi,
    tokens,
)
from tests.support.server_registry import server_registry

CLOCK = MovableClock()
REGISTRATIONS_PER_HOUR = 20


@pytest.fixture(scope="module")
async def oauth_actor(stack: Stack) -> AsyncIterator[None]:
    actor = create_actor(OAuthConfig(clock=CLOCK, registrations_per_hour=REGISTRATIONS_PER_HOUR))
    settings = stack.settings("oauth", secret_key=SECRET_KEY, oauth_allow_loopback_fetch=True)
    async with server_registry(stack, {"weather": ("oorg1", RESOURCE), "elsewhere": ("oorg2", FOREIGN)}), \
            running(actor, settings):
        yield


@pytest.fixture(scope="module")
async def nc(stack: Stack, oauth_actor: None) -> AsyncIterator[Client]:
    client = await connect(stack.settings("admin"), "test-oauth")
    yield client
    await client.close()


# --- registration ---


async def test_registering_the_same_metadata_twice_returns_the_same_client(nc: Client) -> None:
    first = await register(nc, name="Idempotent", ip="198.51.100.2")
    second = await register(nc, name="Idempotent", ip="198.51.100.2")
    other = await register(nc, name="Idempotent but renamed", ip="198.51.100.2")
    assert first.client_id == second.client_id
    assert other.client_id != first.client_id
    assert first.client_secret is None and first.token_endpoint_auth_method == "none"


async def test_registration_without_an_auth_method_gets_a_hashed_client_secret(
    nc: Client, db: asyncpg.Connection
) -> None:
    client = await register(nc, name="Confidential", method=None, ip="198.51.100.3")
    assert client.token_endpoint_auth_method == "client_secret_basic"
    assert client.client_secret and client.client_secret.startswith("bmms_cs_")
    stored = await db.fetch("SELECT secret_hash FROM oauth_client_secrets WHERE client_id = $1", client.client_id)
    assert [r["secret_hash"] for r in stored] == [digest(client.client_secret)]


async def test_registrations_are_rate_limited_per_address(nc: Client) -> None:
    ip = "198.51.100.77"
    for i in range(REGISTRATIONS_PER_HOUR):
        await register(nc, name=f"burst {i}", ip=ip)
    refused = await ask(nc, OAUTH_REGISTER_CLIENT, RegisterClient(
        metadata=ClientMetadata(redirect_uris=(REDIRECT,), client_name="one too many"), client_ip=ip))
    assert isinstance(refused, OAuthError) and refused.status == 429
    assert ip in refused.description
    # The window is the clock hour: the refusal says how long until it ends.
    now = CLOCK()
    until_next_hour = 3600 - (now.minute * 60 + now.second)
    assert refused.retry_after_seconds is not None and abs(refused.retry_after_seconds - until_next_hour) <= 5
    # another address is not affected
    await register(nc, name="elsewhere", ip="198.51.100.78")


@pytest.mark.parametrize("uri", [
    "http://example.com/callback", "https://example.com/cb#frag", "myapp://callback", "http://10.0.0.1/cb",
])
async def test_registration_refuses_redirect_uris_that_are_neither_https_nor_loopback(nc: Client, uri: str) -> None:
    refused = await ask(nc, OAUTH_REGISTER_CLIENT, RegisterClient(
        metadata=ClientMetadata(redirect_uris=(uri,), token_endpoint_auth_method="none"), client_ip="198.51.100.4"))
    assert isinstance(refused, OAuthError) and refused.error == "invalid_redirect_uri", refused


async def test_unused_dynamic_clients_are_deleted_on_a_later_registration(
    nc: Client, db: asyncpg.Connection
) -> None:
    stale = await register(nc, name="Never used", ip="198.51.100.5")
    CLOCK.offset = OAuthConfig().unused_client_ttl + OAuthConfig().unused_client_ttl
    try:
        await register(nc, name="Triggers the clean-up", ip="198.51.100.5")
    finally:
        CLOCK.offset = OAuthConfig().code_ttl * 0
    assert await db.fetchval("SELECT count(*) FROM oauth_clients WHERE client_id = $1", stale.client_id) == 0


async def test_operator_preregistered_client_keeps_its_chosen_id(nc: Client) -> None:
    metadata = ClientMetadata(redirect_uris=("https://claude.example/cb",), client_name="Claude",
                              token_endpoint_auth_method="none")
    created = await ask(nc, OAUTH_CREATE_CLIENT, CreateClient(client_id="claude-desktop-test", metadata=metadata))
    assert isinstance(created, ClientRegistered) and created.client_id == "claude-desktop-test"


# --- authorization, codes and tokens ---


async def test_code_exchange_issues_an_rs256_token_bound_to_the_resource(nc: Client) -> None:
    client, issued = await tokens(nc)
    jwks = await ask(nc, OAUTH_GET_JWKS, GetJwks())
    assert isinstance(jwks, Jwks) and jwks.keys
    key_set = KeySet.import_key_set({"keys": [json.loads(json.dumps({
        "kty": k.kty, "n": k.n, "e": k.e, "kid": k.kid, "alg": k.alg, "use": k.use})) for k in jwks.keys]})
    token = jwt.decode(issued.access_token, key_set, algorithms=["RS256"])
    assert token.header["alg"] == "RS256" and token.header["typ"] == "at+jwt"
    claims = token.claims
    assert claims["iss"] == ISSUER and claims["aud"] == RESOURCE and claims["sub"] == person().subject
    assert claims["client_id"] == client.client_id and claims["scope"] == "mcp:tools:read mcp:tools:write"
    assert claims["exp"] - claims["iat"] == 900 and claims["jti"]
    assert issued.refresh_token and issued.refresh_token.startswith("bmms_rt_")


async def test_unticked_optional_scopes_are_not_granted(nc: Client) -> None:
    client = await register(nc)
    verifier, challenge = pkce_pair()
    code = await code_for(nc, client.client_id, challenge, granted=())
    issued = await exchange(nc, client.client_id, code, verifier)
    assert isinstance(issued, TokenIssued) and issued.scope == "mcp:tools:read"


@pytest.mark.parametrize("asked", ["mcp:tools:write", "mcp:tool:forecast", "mcp:tools:write mcp:tool:forecast"])
async def test_mcp_tools_read_is_granted_even_when_the_client_asks_only_for_other_scopes(
    nc: Client, asked: str
) -> None:
    client = await register(nc)
    verifier, challenge = pkce_pair()
    consent = await authorize(nc, client.client_id, challenge, scope=asked)
    assert isinstance(consent, ConsentRequired), consent
    first = consent.scopes[0]
    assert first.scope == "mcp:tools:read" and not first.optional
    decided = await ask(nc, OAUTH_DECIDE_CONSENT, DecideConsent(
        issuer=ISSUER, consent_id=consent.consent_id, csrf_token=consent.csrf_token, subject=person().subject,
        approve=True, granted_optional=tuple(asked.split()),
    ))
    assert isinstance(decided, AuthorizationRedirect), decided
    issued = await exchange(nc, client.client_id, query_of(decided.location)["code"], verifier)
    assert isinstance(issued, TokenIssued), issued
    assert issued.scope.split() == ["mcp:tools:read", *asked.split()]


async def test_without_a_signed_in_person_a_valid_request_asks_for_sign_in(nc: Client) -> None:
    client = await register(nc)
    _, challenge = pkce_pair()
    assert isinstance(await authorize(nc, client.client_id, challenge, signer=None), SignInRequired)


async def test_wrong_pkce_verifier_is_rejected(nc: Client) -> None:
    client = await register(nc)
    _, challenge = pkce_pair()
    code = await code_for(nc, client.client_id, challenge)
    other_verifier, _ = pkce_pair()
    refused = await exchange(nc, client.client_id, code, other_verifier)
    assert isinstance(refused, OAuthError) and refused.error == "invalid_grant" and "PKCE" in refused.description


async def test_plain_pkce_is_refused_back_at_the_redirect_uri(nc: Client) -> None:
    client = await register(nc)
    verifier, _ = pkce_pair()
    refused = await authorize(nc, client.client_id, verifier, code_challenge_method="plain")
    assert isinstance(refused, OAuthError) and refused.location
    params = query_of(refused.location)
    assert params["error"] == "invalid_request" and "S256" in params["error_description"]
    assert params["state"] == "st-1" and params["iss"] == ISSUER


async def test_reused_authorization_code_is_rejected_and_revokes_what_it_issued(nc: Client) -> None:
    client = await register(nc)
    verifier, challenge = pkce_pair()
    code = await code_for(nc, client.client_id, challenge)
    issued = await exchange(nc, client.client_id, code, verifier)
    assert isinstance(issued, TokenIssued) and issued.refresh_token
    again = await exchange(nc, client.client_id, code, verifier)
    assert isinstance(again, OAuthError) and again.error == "invalid_grant" and "already used" in again.description
    refused = await refresh(nc, client.client_id, issued.refresh_token)
    assert isinstance(refused, OAuthError) and refused.error == "invalid_grant" and "revoked" in refused.description


async def test_expired_authorization_code_is_rejected(nc: Client) -> None:
    client = await register(nc)
    verifier, challenge = pkce_pair()
    code = await code_for(nc, client.client_id, challenge)
    CLOCK.offset = OAuthConfig().code_ttl + OAuthConfig().code_ttl / 60
    try:
        refused = await exchange(nc, client.client_id, code, verifier)
    finally:
        CLOCK.offset = OAuthConfig().code_ttl * 0
    assert isinstance(refused, OAuthError) and refused.error == "invalid_grant" and "expired" in refused.description


async def test_redirect_uri_mismatch_shows_an_error_instead_of_redirecting(nc: Client) -> None:
    client = await register(nc)
    _, challenge = pkce_pair()
    refused = await authorize(nc, client.client_id, challenge, redirect_uri="http://127.0.0.1:33418/other")
    assert isinstance(refused, OAuthError) and refused.location is None
    assert refused.error == "invalid_request" and "exactly" in refused.description


async def test_token_request_with_another_redirect_uri_is_rejected(nc: Client) -> None:
    client = await register(nc)
    verifier, challenge = pkce_pair()
    code = await code_for(nc, client.client_id, challenge)
    refused = await exchange(nc, client.client_id, code, verifier, redirect_uri="http://127.0.0.1:1/else")
    assert isinstance(refused, OAuthError) and refused.error == "invalid_grant"


@pytest.mark.parametrize(("resources", "why"), [
    ((), "exactly one"),
    (("https://evil.example/servers/weather/mcp",), "not one of your organisation's MCP servers"),
    ((f"{ISSUER}/servers/weather",), "not one of your organisation's MCP servers"),
    ((RESOURCE, f"{ISSUER}/servers/other/mcp"), "exactly one"),
    ((f"{ISSUER}/servers/nosuchserver/mcp",), "not one of your organisation's MCP servers"),
])
async def test_missing_or_foreign_resource_is_refused_with_invalid_target(
    nc: Client, resources: tuple[str, ...], why: str
) -> None:
    client = await register(nc)
    _, challenge = pkce_pair()
    refused = await authorize(nc, client.client_id, challenge, resources=resources)
    assert isinstance(refused, OAuthError) and refused.location
    params = query_of(refused.location)
    assert params["error"] == "invalid_target" and why in params["error_description"]


async def test_a_server_of_another_organisation_is_refused_exactly_like_one_that_does_not_exist(
    nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    client = await register(nc)
    _, challenge = pkce_pair()
    with caplog.at_level(logging.INFO, logger="bmms.oauth"):
        foreign = await authorize(nc, client.client_id, challenge, resources=(FOREIGN,))
    missing = await authorize(nc, client.client_id, challenge, resources=(f"{ISSUER}/servers/nosuchserver/mcp",))
    assert isinstance(foreign, OAuthError) and isinstance(missing, OAuthError)
    # Nothing tells a signed-in person that the server exists elsewhere: same code, words, status, redirect.
    assert (foreign.error, foreign.description, foreign.status) == (missing.error, missing.description, missing.status)
    assert foreign.location and foreign.location == missing.location
    assert query_of(foreign.location)["error"] == "invalid_target"
    assert "another organisation" not in foreign.description
    assert "belongs to another organisation" in caplog.text  # the real reason stays in the server log


async def test_without_sign_in_a_server_of_another_organisation_and_a_missing_one_both_ask_for_sign_in(
    nc: Client
) -> None:
    client = await register(nc)
    _, challenge = pkce_pair()
    for resource in (FOREIGN, f"{ISSUER}/servers/nosuchserver/mcp", RESOURCE):
        asked = await authorize(nc, client.client_id, challenge, resources=(resource,), signer=None)
        assert isinstance(asked, SignInRequired), (resource, asked)


async def test_token_request_for_another_resource_is_refused(nc: Client) -> None:
    client = await register(nc)
    verifier, challenge = pkce_pair()
    code = await code_for(nc, client.client_id, challenge)
    refused = await exchange(nc, client.client_id, code, verifier, resources=(f"{ISSUER}/servers/other/mcp",))
    assert isinstance(refused, OAuthError) and refused.error == "invalid_target"
    missing = await exchange(nc, client.client_id, code, verifier, resources=())
    assert isinstance(missing, OAuthError) and missing.error == "invalid_target"


async def test_unknown_scope_is_refused(nc: Client) -> None:
    client = await register(nc)
    _, challenge = pkce_pair()
    refused = await authorize(nc, client.client_id, challenge, scope="mcp:tools:read admin")
    assert isinstance(refused, OAuthError) and query_of(refused.location or "")["error"] == "invalid_scope"


async def test_consent_cannot_be_decided_by_another_person_or_with_a_wrong_csrf_token(nc: Client) -> None:
    client = await register(nc)
    _, challenge = pkce_pair()
    consent = await authorize(nc, client.client_id, challenge)
    assert isinstance(consent, ConsentRequired)
    for subject, csrf in (("person:intruder", consent.csrf_token), (person().subject, "forged")):
        refused = await ask(nc, OAUTH_DECIDE_CONSENT, DecideConsent(
            issuer=ISSUER, consent_id=consent.consent_id, csrf_token=csrf, subject=subject, approve=True))
        assert isinstance(refused, OAuthError) and refused.status == 403


async def test_denied_consent_redirects_with_access_denied(nc: Client) -> None:
    client = await register(nc)
    _, challenge = pkce_pair()
    consent = await authorize(nc, client.client_id, challenge)
    assert isinstance(consent, ConsentRequired)
    denied = await ask(nc, OAUTH_DECIDE_CONSENT, DecideConsent(
        issuer=ISSUER, consent_id=consent.consent_id, csrf_token=consent.csrf_token, subject=person().subject,
        approve=False))
    assert isinstance(denied, AuthorizationRedirect)
    assert query_of(denied.location)["error"] == "access_denied"


# --- refresh tokens ---


async def test_refresh_rotates_the_refresh_token(nc: Client) -> None:
    client, issued = await tokens(nc)
    assert issued.refresh_token
    renewed = await refresh(nc, client.client_id, issued.refresh_token)
    assert isinstance(renewed, TokenIssued) and renewed.refresh_token
    assert renewed.refresh_token != issued.refresh_token and renewed.access_token != issued.access_token
    again = await refresh(nc, client.client_id, renewed.refresh_token)
    assert isinstance(again, TokenIssued)


async def test_reused_refresh_token_revokes_its_whole_family(nc: Client, db: asyncpg.Connection) -> None:
    client, issued = await tokens(nc)
    assert issued.refresh_token
    renewed = await refresh(nc, client.client_id, issued.refresh_token)
    assert isinstance(renewed, TokenIssued) and renewed.refresh_token
    replayed = await refresh(nc, client.client_id, issued.refresh_token)
    assert isinstance(replayed, OAuthError) and replayed.error == "invalid_grant"
    assert "family" in replayed.description
    # the legitimate, newest token of the family is dead too
    after = await refresh(nc, client.client_id, renewed.refresh_token)
    assert isinstance(after, OAuthError) and after.error == "invalid_grant"
    reason = await db.fetchval(
        "SELECT g.revoked_reason FROM oauth_refresh_tokens r JOIN oauth_grants g USING (grant_id) "
        "WHERE r.token_hash = $1", digest(renewed.refresh_token))
    assert reason == "refresh token reused"


async def test_refresh_by_another_client_is_rejected(nc: Client) -> None:
    _, issued = await tokens(nc)
    other = await register(nc, name="Another client")
    assert issued.refresh_token
    refused = await refresh(nc, other.client_id, issued.refresh_token)
    assert isinstance(refused, OAuthError) and refused.error == "invalid_grant"


@pytest.mark.parametrize("wrong", [
    pytest.param({"client_id": "other"}, id="another-client"),
    pytest.param({"resources": (FOREIGN,)}, id="another-resource"),
    pytest.param({"scope": "mcp:tools:read mcp:tools:write mcp:tool:forecast"}, id="a-wider-scope"),
    pytest.param({"issuer": "https://elsewhere.example"}, id="another-issuer"),
])
async def test_a_refused_refresh_leaves_the_refresh_token_to_its_client(nc: Client, wrong: dict[str, Any]) -> None:
    client, issued = await tokens(nc)
    assert issued.refresh_token
    if wrong.get("client_id") == "other":
        wrong = {"client_id": (await register(nc, name="Another client")).client_id}
    refused = await ask(nc, OAUTH_EXCHANGE_TOKEN, ExchangeToken(**{
        "issuer": ISSUER, "grant_type": "refresh_token", "refresh_token": issued.refresh_token,
        "resources": (RESOURCE,), "client_id": client.client_id, **wrong,
    }))
    assert isinstance(refused, OAuthError), refused
    # The real client's next refresh is its first: it works, and so does the one after (no family revoked).
    renewed = await refresh(nc, client.client_id, issued.refresh_token)
    assert isinstance(renewed, TokenIssued), renewed
    assert renewed.refresh_token
    again = await refresh(nc, client.client_id, renewed.refresh_token)
    assert isinstance(again, TokenIssued), again


async def test_a_refresh_that_narrows_the_scope_keeps_mcp_tools_read(nc: Client) -> None:
    client, issued = await tokens(nc)
    assert issued.refresh_token and issued.scope == "mcp:tools:read mcp:tools:write"
    narrowed = await ask(nc, OAUTH_EXCHANGE_TOKEN, ExchangeToken(
        issuer=ISSUER, grant_type="refresh_token", refresh_token=issued.refresh_token, resources=(RESOURCE,),
        client_id=client.client_id, scope="mcp:tools:write",
    ))
    assert isinstance(narrowed, TokenIssued), narrowed
    assert narrowed.scope == "mcp:tools:read mcp:tools:write"


async def test_revoked_refresh_token_no_longer_refreshes(nc: Client) -> None:
    client, issued = await tokens(nc)
    assert issued.refresh_token
    revoked = await ask(nc, OAUTH_REVOKE_TOKEN, RevokeToken(token=issued.refresh_token, client_id=client.client_id))
    assert isinstance(revoked, TokenRevoked)
    refused = await refresh(nc, client.client_id, issued.refresh_token)
    assert isinstance(refused, OAuthError) and refused.error == "invalid_grant"


async def test_confidential_client_must_present_its_secret(nc: Client) -> None:
    client = await register(nc, name="Secretive", method="client_secret_post")
    verifier, challenge = pkce_pair()
    code = await code_for(nc, client.client_id, challenge)
    refused = await exchange(nc, client.client_id, code, verifier)
    assert isinstance(refused, OAuthError) and refused.error == "invalid_client" and refused.status == 401
    verifier, challenge = pkce_pair()
    code = await code_for(nc, client.client_id, challenge)
    issued = await exchange(nc, client.client_id, code, verifier, client_secret=client.client_secret,
                            client_auth="client_secret_post")
    assert isinstance(issued, TokenIssued)


# --- storage ---


async def test_nothing_secret_is_stored_in_clear(nc: Client, db: asyncpg.Connection) -> None:
    confidential = await register(nc, name="Stored secret", method="client_secret_basic")
    client, issued = await tokens(nc)
    assert issued.refresh_token and confidential.client_secret
    verifier, challenge = pkce_pair()
    code = await code_for(nc, client.client_id, challenge)
    rows = []
    for table in ("oauth_clients", "oauth_client_secrets", "oauth_codes", "oauth_refresh_tokens",
                  "oauth_grants", "oauth_consents", "oauth_signing_keys"):
        rows += [str(dict(row)) for row in await db.fetch(f"SELECT * FROM {table}")]
    dump = "\n".join(rows)
    for secret in (confidential.client_secret, issued.refresh_token, code, verifier):
        assert secret not in dump
    assert digest(code) in dump and digest(issued.refresh_token) in dump
    keys = await db.fetch("SELECT kid, private_key FROM oauth_signing_keys")
    assert keys
    for row in keys:
        sealed = bytes(row["private_key"])
        assert b"PRIVATE KEY" not in sealed
        pem = signing_key_encryption(SECRET_KEY).open(row["kid"], sealed)
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        with pytest.raises(Exception):  # noqa: B017 (cryptography's InvalidTag)
            signing_key_encryption("another-key-encryption-key-abcdef").open(row["kid"], sealed)


# --- Client ID Metadata Documents ---


async def test_client_id_metadata_document_is_fetched_checked_and_cached(nc: Client) -> None:
    documents: dict[str, tuple[bytes, dict[str, str]]] = {}
    app = document_server(documents)
    async with serve_asgi(app) as base:
        url = f"{base}/oauth/client.json"
        documents["/oauth/client.json"] = (json.dumps({
            "client_id": url, "client_name": "Doc Client", "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"], "token_endpoint_auth_method": "none",
        }).encode(), {"Cache-Control": "max-age=600"})
        mismatched = f"{base}/oauth/wrong.json"
        documents["/oauth/wrong.json"] = (json.dumps({"client_id": "https://other.example/c", "redirect_uris": [
            REDIRECT]}).encode(), {})
        verifier, challenge = pkce_pair()
        code = await code_for(nc, url, challenge)
        issued = await exchange(nc, url, code, verifier)
        assert isinstance(issued, TokenIssued)
        _, challenge = pkce_pair()
        await code_for(nc, url, challenge)
        assert app.hits["/oauth/client.json"] == 1  # cached for its max-age
        refused = await authorize(nc, mismatched, challenge)
        assert isinstance(refused, OAuthError) and refused.error == "invalid_client"
        assert "is not its URL" in refused.description and refused.location is None


async def test_metadata_documents_refuse_oversized_bodies() -> None:
    documents = {"/big.json": (b"{" + b" " * 6000 + b"}", {})}
    async with serve_asgi(document_server(documents)) as base:
        with pytest.raises(MetadataError, match="over 5120 bytes"):
            await MetadataDocuments(allow_loopback=True).client(f"{base}/big.json")


@pytest.mark.parametrize(("url", "why"), [
    ("http://127.0.0.1:9/client.json", "must be an https URL"),
    ("https://localhost/client.json", "address is not allowed"),
    ("https://127.0.0.1/client.json", "address is not allowed"),
    ("https://10.1.2.3/client.json", "address is not allowed"),
    ("https://169.254.169.254/latest/meta-data", "address is not allowed"),
    ("https://[::1]/client.json", "address is not allowed"),
    ("https://example.com/", "must have a path"),
])
async def test_metadata_documents_refuse_non_public_targets_in_production(url: str, why: str) -> None:
    with pytest.raises(MetadataError, match=why):
        await MetadataDocuments(allow_loopback=False).client(url)


async def test_a_refused_metadata_document_host_does_not_reveal_what_it_resolves_to(
    caplog: pytest.LogCaptureFixture
) -> None:
    documents = MetadataDocuments(allow_loopback=False)
    with caplog.at_level(logging.INFO, logger="bmms.oauth"), pytest.raises(MetadataError) as private:
        await documents.client("https://localhost/client.json")
    assert "address is not allowed" in private.value.description
    assert "127.0.0.1" not in private.value.description and "::1" not in private.value.description
    assert "127.0.0.1" in caplog.text  # the operator still sees the DNS answer
    # A name that does not resolve at all reads the same (no oracle for which internal names exist).
    with pytest.raises(MetadataError) as unresolved:
        await documents.client("https://nothing.invalid/client.json")
    assert unresolved.value.description == private.value.description.replace("localhost", "nothing.invalid")


# --- signing keys ---


async def test_signing_key_rotates_and_the_old_key_stays_published_until_its_tokens_expire(nc: Client) -> None:
    _, before = await tokens(nc)
    old_kid = jwt.decode(before.access_token, await key_set(nc), algorithms=["RS256"]).header["kid"]
    config = OAuthConfig()
    CLOCK.offset = config.key_rotation + dt.timedelta(minutes=1)
    try:
        _, after = await tokens(nc)
        published = await ask(nc, OAUTH_GET_JWKS, GetJwks())
        assert isinstance(published, Jwks)
        new_kid = jwt.decode(after.access_token, await key_set(nc), algorithms=["RS256"]).header["kid"]
        assert new_kid != old_kid and {old_kid, new_kid} <= {k.kid for k in published.keys}
        CLOCK.offset += config.access_token_ttl + dt.timedelta(minutes=10)
        later = await ask(nc, OAUTH_GET_JWKS, GetJwks())
        assert isinstance(later, Jwks) and old_kid not in {k.kid for k in later.keys}
        assert new_kid in {k.kid for k in later.keys}
    finally:
        CLOCK.offset = dt.timedelta()


async def key_set(nc: Client) -> KeySet:
    published = await ask(nc, OAUTH_GET_JWKS, GetJwks())
    assert isinstance(published, Jwks)
    return KeySet.import_key_set({"keys": [msgspec.to_builtins(k) for k in published.keys]})


FIRST_PARTY_REDIRECT = ISSUER + DASHBOARD_REDIRECT_PATH


async def test_the_first_party_dashboard_client_gets_a_code_without_a_consent_page_and_no_refresh_token(
    nc: Client
) -> None:
    verifier, challenge = pkce_pair()
    answered = await authorize(nc, DASHBOARD_CLIENT_ID, challenge, redirect_uri=FIRST_PARTY_REDIRECT)
    assert isinstance(answered, AuthorizationRedirect), answered
    params = query_of(answered.location)
    assert answered.location.startswith(FIRST_PARTY_REDIRECT + "?") and params["state"] == "st-1"
    assert params["iss"] == ISSUER
    issued = await exchange(nc, DASHBOARD_CLIENT_ID, params["code"], verifier, redirect_uri=FIRST_PARTY_REDIRECT)
    assert isinstance(issued, TokenIssued), issued
    assert issued.refresh_token is None and issued.expires_in <= 15 * 60


async def test_the_first_party_client_is_refused_another_organisations_server_and_any_other_redirect_uri(
    nc: Client
) -> None:
    _, challenge = pkce_pair()
    foreign = await authorize(nc, DASHBOARD_CLIENT_ID, challenge, redirect_uri=FIRST_PARTY_REDIRECT,
                              resources=(FOREIGN,))
    assert isinstance(foreign, OAuthError) and query_of(foreign.location or "")["error"] == "invalid_target"
    elsewhere = await authorize(nc, DASHBOARD_CLIENT_ID, challenge, redirect_uri=REDIRECT)
    assert isinstance(elsewhere, OAuthError) and elsewhere.location is None  # never redirected to
    unsigned = await authorize(nc, DASHBOARD_CLIENT_ID, challenge, redirect_uri=FIRST_PARTY_REDIRECT, signer=None)
    assert isinstance(unsigned, SignInRequired)
