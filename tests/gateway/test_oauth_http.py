"""The Authorization Server at the HTTP edge, driven by the real mcp SDK OAuth client against a protected
MCP server built in the test (MCPServer + AuthSettings + runner_template's verifier): discovery,
registration, consent, PKCE, token, refresh, then a tool call. The person signs in by magic link."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.server import MCPServer
from mcp.server.auth.settings import AuthSettings
from mcp.shared.auth import OAuthClientMetadata
from pydantic import AnyUrl

from actors.auth.actor import create_actor as create_auth_actor
from actors.auth.config import AuthConfig
from actors.oauth.actor import create_actor as create_oauth_actor
from actors.oauth.state import OAuthConfig
from gateway.config import GatewayConfig
from runner_template.auth import AccessTokenVerifier
from tests.conftest import Stack, running
from tests.gateway.conftest import Gateway, gateway_settings, serving
from tests.support.mailbox import Mailbox
from tests.support.oauth_browser import Browser, MemoryStorage, consent_form, sign_in_from_authorize
from tests.support.oauth_helpers import SECRET_KEY, bound_socket, pkce_pair, query_of, serve_asgi
from tests.support.server_registry import server_registry
from tests.support.sign_in import fresh_email, me, sign_in

REDIRECT = "http://127.0.0.1:33418/callback"
SERVER_ID = "weather"
OWNER = fresh_email("owner")
"""The person whose organisation owns the test's MCP server; every sign-in of this module is theirs."""


@dataclass
class Platform:
    """The gateway (our issuer) and where the test's MCP server lives."""

    gateway: Gateway
    servers_url: str
    mcp_socket: Any
    servers: dict[str, tuple[str, str]]
    """The server registry's answers: server id -> (owning org, URL)."""

    @property
    def issuer(self) -> str:
        return self.gateway.base_url

    @property
    def resource(self) -> str:
        return f"{self.servers_url}/{SERVER_ID}/mcp"


@pytest.fixture(scope="module")
async def platform(stack: Stack, mailbox: Mailbox) -> AsyncIterator[Platform]:
    # The MCP server's socket is bound first, so the server URL space can point at it.
    sock = bound_socket()
    servers_url = f"http://127.0.0.1:{sock.getsockname()[1]}/servers"
    oauth_settings = stack.settings("oauth", secret_key=SECRET_KEY, servers_url=servers_url,
                                    oauth_allow_loopback_fetch=True)
    async with (
        server_registry(stack, {}) as servers,
        running(create_auth_actor(AuthConfig()), stack.settings("auth", smtp_url=mailbox.url)),
        running(create_oauth_actor(OAuthConfig(registrations_per_hour=1000)), oauth_settings),
        serving(gateway_settings(stack), GatewayConfig(feed_grace_seconds=0.3)) as gw,
    ):
        yield Platform(gateway=gw, servers_url=servers_url, mcp_socket=sock, servers=servers)


@pytest.fixture(scope="module")
async def http(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=platform.issuer, timeout=15) as client:
        yield client


@pytest.fixture(scope="module")
async def session(platform: Platform, http: httpx.AsyncClient, mailbox: Mailbox) -> str:
    """The owner's session; their organisation owns the server `weather` in the registry."""
    token = await sign_in(http, mailbox, OWNER)
    org_id = (await me(http, {"Cookie": f"bmms_session={token}"}))["org_id"]
    platform.servers[SERVER_ID] = (str(org_id), platform.resource)
    return token


@pytest.fixture(autouse=True)
def owner_signed_in(session: str) -> None:
    """Every test runs after the owner signed in once (so the server has its owner)."""


def protected_server(platform: Platform) -> Any:
    """A small MCP server protected by our Authorization Server, as a runner will be."""
    verifier = AccessTokenVerifier(issuer=platform.issuer, resource=platform.resource)
    mcp = MCPServer(
        "weather",
        token_verifier=verifier,
        auth=AuthSettings(issuer_url=platform.issuer, resource_server_url=platform.resource,  # type: ignore[arg-type]
                          required_scopes=["mcp:tools:read"], validate_token_resource=True),
    )

    @mcp.tool()
    def forecast(city: str) -> str:
        """Tomorrow's weather in a city."""
        return f"sunny in {city}"

    return mcp.streamable_http_app(streamable_http_path=f"/servers/{SERVER_ID}/mcp", stateless_http=True)


async def test_the_mcp_sdk_connects_through_discovery_registration_sign_in_consent_token_and_refresh(
    platform: Platform, mailbox: Mailbox
) -> None:
    storage = MemoryStorage()
    browser = Browser(platform.issuer, OWNER, mailbox=mailbox)  # nobody is signed in: the browser signs in by mail
    provider = OAuthClientProvider(
        server_url=platform.resource,
        client_metadata=OAuthClientMetadata(
            client_name="bmms test client", redirect_uris=[AnyUrl(REDIRECT)],
            grant_types=["authorization_code", "refresh_token"],
        ),
        storage=storage,
        redirect_handler=browser.redirect_handler,
        callback_handler=browser.callback_handler,
    )
    async with serve_asgi(protected_server(platform), platform.mcp_socket) as mcp_base:
        assert platform.resource.startswith(mcp_base)
        async with httpx2.AsyncClient(auth=provider, timeout=30) as http_client:
            async with Client(streamable_http_client(platform.resource, http_client=http_client)) as client:
                result = await client.call_tool("forecast", {"city": "Oslo"})
                assert "sunny in Oslo" in str(result.content)
            first = storage.tokens
            assert first is not None and first.refresh_token
            assert browser.location is not None and query_of(browser.location)["iss"] == platform.issuer
            assert "Signed in as" in browser.consent_html and SERVER_ID in browser.consent_html

            # The access token runs out: the SDK refreshes (rotating the refresh token) and carries on.
            provider.context.token_expiry_time = 1.0  # long past (0 would read as "no expiry")
            async with Client(streamable_http_client(platform.resource, http_client=http_client)) as client:
                result = await client.call_tool("forecast", {"city": "Bergen"})
                assert "sunny in Bergen" in str(result.content)
            second = storage.tokens
            assert second is not None and second.refresh_token
            assert second.access_token != first.access_token and second.refresh_token != first.refresh_token
            assert storage.client is not None and storage.client.client_secret  # DCR gave a confidential client


async def test_metadata_is_served_on_both_discovery_paths_with_one_issuer(
    platform: Platform, http: httpx.AsyncClient
) -> None:
    oauth = await http.get("/.well-known/oauth-authorization-server")
    oidc = await http.get("/.well-known/openid-configuration")
    assert oauth.status_code == oidc.status_code == 200
    assert oauth.json() == oidc.json()
    body = oauth.json()
    assert body["issuer"] == platform.issuer and not body["issuer"].endswith("/")
    assert all(body[k].startswith(platform.issuer + "/") for k in
               ("authorization_endpoint", "token_endpoint", "registration_endpoint", "jwks_uri", "revocation_endpoint"))
    assert body["code_challenge_methods_supported"] == ["S256"]
    assert body["authorization_response_iss_parameter_supported"] is True
    assert body["client_id_metadata_document_supported"] is True
    assert body["response_types_supported"] == ["code"]
    assert body["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert set(body["token_endpoint_auth_methods_supported"]) == {"none", "client_secret_post", "client_secret_basic"}
    assert "mcp:tools:read" in body["scopes_supported"]


async def test_browser_clients_may_call_the_oauth_endpoints_cross_origin(http: httpx.AsyncClient) -> None:
    preflight = await http.options("/oauth/token", headers={
        "Origin": "https://inspector.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == "*"
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    metadata = await http.get("/.well-known/oauth-authorization-server", headers={"Origin": "https://x.example"})
    assert metadata.headers["access-control-allow-origin"] == "*"


async def test_jwks_publishes_the_rs256_signing_key(http: httpx.AsyncClient) -> None:
    for path in ("/oauth/jwks.json", "/.well-known/jwks.json"):
        response = await http.get(path)
        assert response.status_code == 200
        keys = response.json()["keys"]
        assert keys and all(k["kty"] == "RSA" and k["alg"] == "RS256" and k["kid"] and "d" not in k for k in keys)


async def register(http: httpx.AsyncClient, **metadata: Any) -> httpx.Response:
    body = {"redirect_uris": [REDIRECT], "client_name": "http test", "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"], **metadata}
    return await http.post("/oauth/register", json=body,
                           headers={"X-Forwarded-For": f"10.9.{secrets.randbelow(256)}.{secrets.randbelow(250) + 1}"})


async def test_dynamic_registration_is_idempotent_over_http(http: httpx.AsyncClient) -> None:
    first = await register(http, client_name="same metadata")
    second = await register(http, client_name="same metadata")
    assert first.status_code == second.status_code == 201
    assert first.headers["cache-control"] == "no-store"
    assert first.json()["client_id"] == second.json()["client_id"]
    refused = await register(http, redirect_uris=["http://evil.example/cb"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_redirect_uri"


async def authorize_url(platform: Platform, client_id: str, challenge: str, **changes: str) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "state": "xyz",
              "code_challenge": challenge, "code_challenge_method": "S256", "resource": platform.resource,
              "scope": "mcp:tools:read mcp:tools:write", **changes}
    return str(httpx.URL(f"{platform.issuer}/oauth/authorize", params=params))


async def approve(platform: Platform, session: str, url: str, scopes: list[str]) -> str:
    async with httpx.AsyncClient(cookies={"bmms_session": session}, timeout=15) as browser:
        page = await browser.get(url)
        assert page.status_code == 200, page.text
        assert page.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        decided = await browser.post(f"{platform.issuer}/oauth/authorize/decision",
                                     data={**consent_form(page.text), "decision": "approve", "scope": scopes})
        assert decided.status_code == 303, decided.text
        return decided.headers["location"]


async def test_token_endpoint_answers_no_store_json_and_rfc6749_errors(
    platform: Platform, http: httpx.AsyncClient, session: str
) -> None:
    client_id = (await register(http, client_name="token errors")).json()["client_id"]
    verifier, challenge = pkce_pair()
    location = await approve(platform, session, await authorize_url(platform, client_id, challenge), [])
    assert location.startswith(REDIRECT) and query_of(location)["iss"] == platform.issuer
    code = query_of(location)["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": client_id,
            "code_verifier": verifier, "resource": platform.resource}
    issued = await http.post("/oauth/token", data=form)
    assert issued.status_code == 200, issued.text
    assert issued.headers["cache-control"] == "no-store" and issued.headers["content-type"] == "application/json"
    assert issued.json()["token_type"] == "Bearer" and issued.json()["scope"] == "mcp:tools:read"
    reused = await http.post("/oauth/token", data=form)
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert reused.headers["cache-control"] == "no-store"
    unsupported = await http.post("/oauth/token", data={"grant_type": "password", "client_id": client_id})
    assert unsupported.json()["error"] == "unsupported_grant_type"
    unknown = await http.post("/oauth/token", data={**form, "client_id": "nobody"})
    assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_client"
    assert "www-authenticate" in unknown.headers
    revoked = await http.post("/oauth/revoke", data={"token": issued.json()["refresh_token"], "client_id": client_id})
    assert revoked.status_code == 200
    after = await http.post("/oauth/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                                   "refresh_token": issued.json()["refresh_token"],
                                                   "resource": platform.resource})
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"


async def test_authorize_without_a_session_sends_the_person_to_sign_in_and_back(
    platform: Platform, http: httpx.AsyncClient
) -> None:
    client_id = (await register(http, client_name="no session")).json()["client_id"]
    _, challenge = pkce_pair()
    url = httpx.URL(await authorize_url(platform, client_id, challenge))
    answer = await http.get(url)
    assert answer.status_code == 303 and answer.headers["cache-control"] == "no-store"
    location = httpx.URL(answer.headers["location"])
    assert location.path == "/sign-in" and not location.host  # a local redirect
    assert location.params["next"] == f"/oauth/authorize?{url.query.decode()}"


async def test_a_long_authorization_request_survives_sign_in_and_shows_consent(
    platform: Platform, http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    client_id = (await register(http, client_name="long request")).json()["client_id"]
    _, challenge = pkce_pair()
    tools = " ".join(f"mcp:tool:tool_number_{i}" for i in range(60))
    state = secrets.token_urlsafe(900)  # clients put whole JSON blobs in state
    url = await authorize_url(platform, client_id, challenge, state=state, scope=f"mcp:tools:read {tools}")
    assert len(httpx.URL(url).query) > 3000
    async with httpx.AsyncClient(base_url=platform.issuer, timeout=15) as browser:
        consent = await sign_in_from_authorize(browser, url, mailbox, OWNER)
        assert consent.status_code == 200, consent.text
        assert "Signed in as" in consent.text and "mcp:tool:tool_number_59" in consent.text
        decided = await browser.post("/oauth/authorize/decision",
                                     data={**consent_form(consent.text), "decision": "approve"})
    assert decided.status_code == 303, decided.text
    assert query_of(decided.headers["location"])["state"] == state


async def test_an_authorization_request_too_long_to_come_back_to_is_refused_with_a_page(
    platform: Platform, http: httpx.AsyncClient
) -> None:
    client_id = (await register(http, client_name="too long")).json()["client_id"]
    _, challenge = pkce_pair()
    answer = await http.get(await authorize_url(platform, client_id, challenge, state="s" * 9000))
    assert answer.status_code == 414 and "text/html" in answer.headers["content-type"]
    assert "location" not in answer.headers


async def test_registration_over_the_hourly_limit_says_when_to_retry(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ip = f"10.8.{secrets.randbelow(256)}.{secrets.randbelow(250) + 1}"
    # This address already registered 1000 clients this hour (the limit of this test's actor).
    await db.execute("INSERT INTO oauth_registration_attempts (source, window_start, attempts) "
                     "VALUES ($1, date_trunc('hour', now()), 1000)", ip)
    body = {"redirect_uris": [REDIRECT], "client_name": "one too many", "token_endpoint_auth_method": "none"}
    refused = await http.post("/oauth/register", json=body, headers={"X-Forwarded-For": ip})
    assert refused.status_code == 429 and refused.json()["error"] == "temporarily_unavailable"
    now = dt.datetime.now(dt.UTC)
    until_next_hour = 3600 - (now.minute * 60 + now.second)
    assert abs(int(refused.headers["retry-after"]) - until_next_hour) <= 5


async def test_redirect_uri_mismatch_shows_an_error_page_and_never_redirects(
    platform: Platform, http: httpx.AsyncClient, session: str
) -> None:
    client_id = (await register(http, client_name="mismatch")).json()["client_id"]
    _, challenge = pkce_pair()
    url = await authorize_url(platform, client_id, challenge, redirect_uri="https://attacker.example/cb")
    page = await http.get(url, headers={"Cookie": f"bmms_session={session}"})
    assert page.status_code == 400 and "location" not in page.headers
    assert "text/html" in page.headers["content-type"] and "exactly" in page.text


async def test_foreign_resource_is_sent_back_to_the_client_as_invalid_target(
    platform: Platform, http: httpx.AsyncClient, session: str
) -> None:
    client_id = (await register(http, client_name="foreign resource")).json()["client_id"]
    _, challenge = pkce_pair()
    url = await authorize_url(platform, client_id, challenge, resource="https://elsewhere.example/mcp")
    answer = await http.get(url, headers={"Cookie": f"bmms_session={session}"})
    assert answer.status_code == 302
    params = query_of(answer.headers["location"])
    assert params["error"] == "invalid_target" and params["state"] == "xyz" and params["iss"] == platform.issuer


async def test_consent_post_without_the_csrf_token_is_refused(
    platform: Platform, http: httpx.AsyncClient, session: str
) -> None:
    client_id = (await register(http, client_name="csrf")).json()["client_id"]
    _, challenge = pkce_pair()
    async with httpx.AsyncClient(cookies={"bmms_session": session}, timeout=15) as browser:
        page = await browser.get(await authorize_url(platform, client_id, challenge))
        form = consent_form(page.text)
        forged = await browser.post(f"{platform.issuer}/oauth/authorize/decision",
                                    data={"consent_id": form["consent_id"], "csrf_token": "guessed",
                                          "decision": "approve"})
        assert forged.status_code == 403 and "location" not in forged.headers


async def test_a_server_of_another_organisation_gets_the_same_answer_as_a_missing_one(
    platform: Platform, http: httpx.AsyncClient, session: str
) -> None:
    platform.servers["elsewhere"] = ("oorg-someone-else", f"{platform.servers_url}/elsewhere/mcp")
    client_id = (await register(http, client_name="probing")).json()["client_id"]
    _, challenge = pkce_pair()
    answers = []
    for server_id in ("elsewhere", "nosuchserver"):
        url = await authorize_url(platform, client_id, challenge, resource=f"{platform.servers_url}/{server_id}/mcp")
        answers.append(await http.get(url, headers={"Cookie": f"bmms_session={session}"}))
    foreign, missing = answers
    assert foreign.status_code == missing.status_code == 302
    assert foreign.headers["location"] == missing.headers["location"]
    assert query_of(foreign.headers["location"])["error"] == "invalid_target"
