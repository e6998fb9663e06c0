"""Grants and access tokens end where they are used: an owner removing a person over the gateway ends the OAuth
grants that person gave MCP clients for the organisation's servers (refreshes refused, access tokens refused by
a running runner), and a client revoking one access token (RFC 7009, POST /oauth/revoke) has runners refuse
that token and no other. Everything is real: auth and oauth actors, the gateway, the IDENTITY stream and the
REVOKED bucket under nats.conf's users, a runner verifying tokens with keys fetched over the bus. Waits poll
with a timeout; nothing sleeps."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from joserfc import jwt
from nats.aio.client import Client

from actors.auth.actor import create_actor as create_auth_actor
from actors.auth.config import AuthConfig
from actors.oauth.actor import create_actor as create_oauth_actor
from actors.oauth.state import OAuthConfig
from actors.runtime.bus import connect
from bus_schemas.oauth import ConsentRequired, DecideConsent, OAuthError, Signer, TokenIssued
from bus_schemas.registry import OAUTH_DECIDE_CONSENT
from tests.conftest import Stack, eventually, running
from tests.gateway.conftest import Gateway, gateway_settings, serving
from tests.gateway.test_org_members_http import Team, team
from tests.runner_template.conftest import STRANGER, RunningRunner, resource_for, runner, settings_for
from tests.runner_template.test_revocation import accepted, answer
from tests.support.mailbox import Mailbox
from tests.support.oauth_helpers import SECRET_KEY, ask, authorize, exchange, pkce_pair, query_of, register
from tests.support.server_registry import server_registry

SERVERS_URL = "https://mcp.example.test/servers"
RESOURCE = resource_for("weather")
"""The team's server, run by the test's runner."""
OWN_RESOURCE = resource_for("own")
"""A server of the member's own organisation (no runner: only its grant's refreshes are checked)."""


@dataclass
class Platform:
    gateway: Gateway
    servers: dict[str, tuple[str, str]]
    nc: Client
    """As admin: asks the oauth actor what a person's browser would have the gateway ask."""

    @property
    def issuer(self) -> str:
        return self.gateway.base_url


@pytest.fixture(scope="module")
async def platform(stack: Stack, mailbox: Mailbox) -> AsyncIterator[Platform]:
    oauth_settings = stack.settings("oauth", secret_key=SECRET_KEY, servers_url=SERVERS_URL)
    async with (
        server_registry(stack, {}) as servers,
        running(create_auth_actor(AuthConfig()), stack.settings("auth", smtp_url=mailbox.url)),
        running(create_oauth_actor(OAuthConfig(registrations_per_hour=1000)), oauth_settings),
        serving(gateway_settings(stack)) as gw,
    ):
        nc = await connect(stack.settings("admin"), "test-oauth-revocation-http")
        try:
            yield Platform(gateway=gw, servers=servers, nc=nc)
        finally:
            await nc.close()


@pytest.fixture(scope="module")
async def http(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=platform.issuer, timeout=15) as client:
        yield client


def team_runner(stack: Stack, platform: Platform, org_id: str) -> Any:
    """The runner of the team's `weather` server, trusting the gateway as issuer."""
    return runner(settings_for(stack, "weather", resource=RESOURCE, issuer=platform.issuer, org_id=org_id))


async def consent(platform: Platform, client_id: str, person_id: str, org_id: str, resource: str
                  ) -> tuple[ConsentRequired, str]:
    """A consent page opened for the person in the organisation (as the gateway opens it for a signed-in
    person); (the page, the PKCE verifier)."""
    verifier, challenge = pkce_pair()
    page = await authorize(platform.nc, client_id, challenge, issuer=platform.issuer, resources=(resource,),
                           signer=Signer(subject=person_id, org_id=org_id, label="someone"))
    assert isinstance(page, ConsentRequired), page
    return page, verifier


async def decide(platform: Platform, page: ConsentRequired, person_id: str) -> Any:
    return await ask(platform.nc, OAUTH_DECIDE_CONSENT, DecideConsent(
        issuer=platform.issuer, consent_id=page.consent_id, csrf_token=page.csrf_token, subject=person_id,
        approve=True, granted_optional=("mcp:tools:write",)))


async def code(platform: Platform, client_id: str, person_id: str, org_id: str, resource: str = RESOURCE
               ) -> tuple[str, str]:
    """An authorization code the person approved, and its PKCE verifier."""
    page, verifier = await consent(platform, client_id, person_id, org_id, resource)
    decided = await decide(platform, page, person_id)
    return query_of(decided.location)["code"], verifier


async def grant(platform: Platform, client_id: str, person_id: str, org_id: str, resource: str = RESOURCE
                ) -> TokenIssued:
    """The tokens of a fresh grant the person gave the client for `resource`."""
    issued_code, verifier = await code(platform, client_id, person_id, org_id, resource)
    issued = await exchange(platform.nc, client_id, issued_code, verifier, issuer=platform.issuer,
                            resources=(resource,))
    assert isinstance(issued, TokenIssued) and issued.refresh_token, issued
    return issued


async def refresh(http: httpx.AsyncClient, client_id: str, refresh_token: str | None,
                  resource: str = RESOURCE) -> httpx.Response:
    """The token endpoint's answer to a refresh."""
    assert refresh_token
    return await http.post("/oauth/token", data={"grant_type": "refresh_token", "client_id": client_id,
                                                 "refresh_token": refresh_token, "resource": resource})


def refused_as_revoked_grant(response: httpx.Response) -> bool:
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant", response.text
    return "grant was revoked" in response.json()["error_description"]


async def refused_as(running: RunningRunner, access_token: str, description: str) -> bool:
    """Whether the runner refuses the token now, saying `description` (it must otherwise accept it)."""
    response = await answer(running, access_token)
    if response.status_code != 401:
        assert response.status_code == 200, response.text
        return False
    assert response.json() == {"error": "invalid_token", "error_description": description}
    return True


async def new_team(http: httpx.AsyncClient, mailbox: Mailbox, platform: Platform) -> Team:
    """An owner's organisation with one member, owning the `weather` server the runner serves."""
    people = await team(http, mailbox)
    platform.servers["weather"] = (people.org, RESOURCE)
    return people


async def test_removing_a_member_ends_the_grants_they_gave_for_the_organisations_servers(
    stack: Stack, platform: Platform, http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    a = await new_team(http, mailbox, platform)
    client_id = (await register(platform.nc)).client_id
    member = await grant(platform, client_id, a.member_id, a.org)
    owner = await grant(platform, client_id, a.owner_id, a.org)
    member_orgs = (await http.get("/v1/me", headers={"Cookie": f"bmms_session={a.member}"})).json()
    own_org = member_orgs["org_id"]
    assert own_org != a.org
    platform.servers["own"] = (own_org, OWN_RESOURCE)
    in_own_org = await grant(platform, client_id, a.member_id, own_org, OWN_RESOURCE)
    async with team_runner(stack, platform, a.org) as running:
        assert await accepted(running, member.access_token) and await accepted(running, owner.access_token)

        started = time.perf_counter()
        removed = await http.delete(f"/v1/org/members/{a.member_id}", headers=a.as_owner())
        assert removed.status_code == 204, removed.text
        await eventually(lambda: refused_as(running, member.access_token, "the grant was revoked"), timeout=10)
        print(f"removal reached the runner in {(time.perf_counter() - started) * 1000:.1f} ms")
        # REVOKED is written once the grants ended in the database: the refresh is refused from here on
        assert refused_as_revoked_grant(await refresh(http, client_id, member.refresh_token))

        assert await accepted(running, owner.access_token)  # the owner's grant is theirs, not the member's
    assert (await refresh(http, client_id, owner.refresh_token)).status_code == 200
    # the person's grants in their own organisation are untouched
    assert (await refresh(http, client_id, in_own_org.refresh_token, OWN_RESOURCE)).status_code == 200


async def test_a_removed_member_cannot_finish_an_authorization_begun_before_the_removal(
    platform: Platform, http: httpx.AsyncClient, mailbox: Mailbox, db: asyncpg.Connection
) -> None:
    a = await new_team(http, mailbox, platform)
    client_id = (await register(platform.nc)).client_id
    open_page, _ = await consent(platform, client_id, a.member_id, a.org, RESOURCE)
    unexchanged, verifier = await code(platform, client_id, a.member_id, a.org)
    bystander = await grant(platform, client_id, a.owner_id, a.org)

    removed = await http.delete(f"/v1/org/members/{a.member_id}", headers=a.as_owner())
    assert removed.status_code == 204, removed.text

    async def grants_ended() -> bool:
        # The code and the consent are single-use, so the wait reads the oauth actor's state instead of
        # trying them: their grant ends, and the open consent goes, in one transaction.
        open_grants = await db.fetchval("SELECT count(*) FROM oauth_grants WHERE org_id = $1 AND subject = $2 "
                                        "AND revoked_at IS NULL", a.org, a.member_id)
        return bool(open_grants == 0)

    await eventually(grants_ended, timeout=10)
    late = await exchange(platform.nc, client_id, unexchanged, verifier, issuer=platform.issuer, resources=(RESOURCE,))
    assert isinstance(late, OAuthError) and late.error == "invalid_grant" and "revoked" in late.description
    decided = await decide(platform, open_page, a.member_id)
    assert isinstance(decided, OAuthError) and "unknown or was already answered" in decided.description, decided
    assert (await refresh(http, client_id, bystander.refresh_token)).status_code == 200


async def test_revoking_an_access_token_stops_that_token_at_the_runner_and_no_other(
    stack: Stack, platform: Platform, http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    a = await new_team(http, mailbox, platform)
    client_id = (await register(platform.nc)).client_id
    other_client = (await register(platform.nc, name="another client")).client_id
    first = await grant(platform, client_id, a.owner_id, a.org)
    renewed = await refresh(http, client_id, first.refresh_token)  # a second access token of the same grant
    assert renewed.status_code == 200, renewed.text
    second = renewed.json()
    async with team_runner(stack, platform, a.org) as running:
        assert await accepted(running, first.access_token) and await accepted(running, second["access_token"])

        # Neither another client nor a forged copy can revoke the second token: both are answered 200 (RFC 7009)
        # and change nothing. Revocations reach the runner in order, so once the first token is refused below,
        # anything these had recorded would have arrived before it.
        foreign = await http.post("/oauth/revoke", data={"token": second["access_token"], "client_id": other_client})
        assert foreign.status_code == 200, foreign.text
        forged = await http.post("/oauth/revoke", data={"token": forge(second["access_token"]), "client_id": client_id})
        assert forged.status_code == 200, forged.text
        for junk in ("not-a-token", "a.b.c"):
            assert (await http.post("/oauth/revoke", data={"token": junk, "client_id": client_id})).status_code == 200

        revoked = await http.post("/oauth/revoke", data={"token": first.access_token, "client_id": client_id,
                                                         "token_type_hint": "access_token"})
        assert revoked.status_code == 200 and revoked.content == b"", revoked.text
        await eventually(lambda: refused_as(running, first.access_token, "the token was revoked"), timeout=10)

        assert await accepted(running, second["access_token"])  # the grant's other token keeps working
    # and the grant goes on: its refresh token still renews
    assert (await refresh(http, client_id, second["refresh_token"])).status_code == 200


def forge(token: str) -> str:
    """The token's header (its kid too) and claims, signed with a key that is not ours."""
    head, body, _ = token.split(".")
    return jwt.encode(_json(head), _json(body), STRANGER, algorithms=["RS256"])


def _json(segment: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return value
