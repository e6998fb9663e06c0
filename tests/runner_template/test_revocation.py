"""Revoking a grant reaches the runners: the real oauth actor issues tokens and records revoked grants in the
REVOKED bucket, a real runner (as the `runner` NATS user, keys from the actor over the bus) refuses that
grant's access tokens within moments, and every other token keeps working. Nothing here sleeps: waits poll
with a timeout."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import msgspec
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.client import KV_PRE_TEMPLATE

from actors.oauth.actor import create_actor
from actors.oauth.state import OAuthConfig
from actors.runtime.bus import connect
from bus_schemas.oauth import GrantRevoked, OAuthError, RevokeToken, TokenIssued, TokenRevoked
from bus_schemas.registry import OAUTH_REVOKE_TOKEN, REVOKED, revocation_key
from runner_template.auth import RevokedGrants
from tests.conftest import Stack, eventually, running
from tests.runner_template.conftest import RunningRunner, runner, settings_for
from tests.support.oauth_helpers import (
    FOREIGN,
    ISSUER,
    RESOURCE,
    SECRET_KEY,
    ask,
    code_for,
    exchange,
    pkce_pair,
    refresh,
    register,
)
from tests.support.server_registry import server_registry

ORG = "oorg1"
"""The organisation owning the `weather` server the tokens are for."""

INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "revocation-test", "version": "1"}}}


@pytest.fixture(scope="module")
async def nc(stack: Stack) -> AsyncIterator[Client]:
    actor = create_actor(OAuthConfig())
    settings = stack.settings("oauth", secret_key=SECRET_KEY)
    async with server_registry(stack, {"weather": (ORG, RESOURCE), "elsewhere": ("oorg2", FOREIGN)}), \
            running(actor, settings):
        client = await connect(stack.settings("admin"), "test-revocation")
        try:
            yield client
        finally:
            await client.close()


def weather_runner(stack: Stack) -> Any:
    """The runner of the `weather` server, verifying tokens of the real Authorization Server."""
    return runner(settings_for(stack, "weather", resource=RESOURCE, issuer=ISSUER, org_id=ORG))


async def grant(nc: Client) -> tuple[str, TokenIssued]:
    """A fresh grant's (client id, tokens)."""
    client = await register(nc)
    verifier, challenge = pkce_pair()
    issued = await exchange(nc, client.client_id, await code_for(nc, client.client_id, challenge), verifier)
    assert isinstance(issued, TokenIssued) and issued.refresh_token, issued
    return client.client_id, issued


async def answer(running: RunningRunner, access_token: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10, trust_env=False) as http:
        return await http.post(running.url, json=INITIALIZE, headers={
            "Authorization": f"Bearer {access_token}", "Accept": "application/json, text/event-stream"})


async def accepted(running: RunningRunner, access_token: str) -> bool:
    response = await answer(running, access_token)
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


async def refused_as_revoked(running: RunningRunner, access_token: str) -> bool:
    response = await answer(running, access_token)
    if response.status_code != 401:
        assert response.status_code == 200, response.text
        return False
    assert response.json() == {"error": "invalid_token", "error_description": "the grant was revoked"}
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    return True


async def test_revoking_a_refresh_token_stops_its_grants_access_tokens_at_a_running_runner(
    stack: Stack, nc: Client
) -> None:
    client_id, doomed = await grant(nc)
    _, bystander = await grant(nc)
    assert doomed.refresh_token
    renewed = await refresh(nc, client_id, doomed.refresh_token)  # two access tokens of one grant
    assert isinstance(renewed, TokenIssued) and renewed.refresh_token
    async with weather_runner(stack) as running:
        for token in (doomed.access_token, renewed.access_token, bystander.access_token):
            assert await accepted(running, token)
        started = time.perf_counter()
        revoked = await ask(nc, OAUTH_REVOKE_TOKEN, RevokeToken(token=renewed.refresh_token, client_id=client_id))
        assert isinstance(revoked, TokenRevoked)
        await eventually(lambda: refused_as_revoked(running, doomed.access_token), timeout=5)
        print(f"revocation reached the runner in {(time.perf_counter() - started) * 1000:.1f} ms")
        assert await refused_as_revoked(running, renewed.access_token)
        assert await accepted(running, bystander.access_token)  # another grant is untouched


async def test_a_reused_authorization_code_stops_the_access_token_it_issued(stack: Stack, nc: Client) -> None:
    client = await register(nc)
    verifier, challenge = pkce_pair()
    code = await code_for(nc, client.client_id, challenge)
    issued = await exchange(nc, client.client_id, code, verifier)
    assert isinstance(issued, TokenIssued)
    _, bystander = await grant(nc)
    async with weather_runner(stack) as running:
        assert await accepted(running, issued.access_token)
        replayed = await exchange(nc, client.client_id, code, verifier)
        assert isinstance(replayed, OAuthError) and "already used" in replayed.description
        await eventually(lambda: refused_as_revoked(running, issued.access_token), timeout=5)
        assert await accepted(running, bystander.access_token)


async def test_a_reused_refresh_token_stops_its_familys_access_tokens(stack: Stack, nc: Client) -> None:
    client_id, first = await grant(nc)
    assert first.refresh_token
    renewed = await refresh(nc, client_id, first.refresh_token)
    assert isinstance(renewed, TokenIssued)
    async with weather_runner(stack) as running:
        assert await accepted(running, renewed.access_token)
        replayed = await refresh(nc, client_id, first.refresh_token)  # a thief's copy
        assert isinstance(replayed, OAuthError) and "family" in replayed.description
        await eventually(lambda: refused_as_revoked(running, renewed.access_token), timeout=5)


async def test_a_runner_started_after_the_revocation_refuses_the_token_from_the_start(
    stack: Stack, nc: Client
) -> None:
    client_id, doomed = await grant(nc)
    _, bystander = await grant(nc)
    revoked = await ask(nc, OAUTH_REVOKE_TOKEN, RevokeToken(token=doomed.refresh_token or "", client_id=client_id))
    assert isinstance(revoked, TokenRevoked)
    async with weather_runner(stack) as running:
        await eventually(lambda: _has_revocations(running), timeout=5)
        assert await refused_as_revoked(running, doomed.access_token)
        assert await accepted(running, bystander.access_token)


async def _has_revocations(running: RunningRunner) -> bool:
    return running.runtime.revoked.updates > 0


async def test_access_tokens_carry_their_grant_id(nc: Client) -> None:
    _, issued = await grant(nc)
    claims = msgspec.json.decode(_segment(issued.access_token))
    assert isinstance(claims["gid"], str) and claims["gid"].startswith("g")


def _segment(token: str) -> bytes:
    payload = token.split(".")[1]
    return base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))


async def test_the_runner_user_may_watch_revocations_but_not_write_or_inspect_the_bucket(stack: Stack) -> None:
    nc = await connect(stack.settings("runner"), "test-runner-permissions")
    admin = await connect(stack.settings("admin"), "test-revocation-admin")
    try:
        js = nc.jetstream(timeout=1.0)
        subject = KV_PRE_TEMPLATE.format(bucket=REVOKED.name) + revocation_key("oorg-perm", "gforged")
        forged = msgspec.json.encode(GrantRevoked(grant_id="gforged", org_id="oorg-perm", reason="x",
                                                  revoked_at="2026-01-01T00:00:00Z"))
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError)):
            await js.publish(subject, forged)  # a runner cannot revoke (or un-revoke) anything
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await js.key_value(REVOKED.name)  # no stream info
        stored = await admin.jetstream().stream_info(f"KV_{REVOKED.name}", subjects_filter=subject)
        assert not stored.state.subjects  # nothing was written
        # What it may do: the ordered consumer its watch uses.
        sub = await js.subscribe(KV_PRE_TEMPLATE.format(bucket=REVOKED.name) + "oorg-perm.*",
                                 stream=f"KV_{REVOKED.name}", ordered_consumer=True)
        await sub.unsubscribe()
    finally:
        await nc.close()
        await admin.close()


def test_revoked_grants_are_forgotten_once_no_token_of_theirs_can_be_valid() -> None:
    now = [1000.0]
    grants = RevokedGrants(keep_seconds=REVOKED.ttl_seconds, clock=lambda: now[0])
    grants.revoke("g1", revoked_at=now[0])
    assert "g1" in grants and "g2" not in grants
    now[0] += REVOKED.ttl_seconds + 1
    assert "g1" not in grants
