"""The auth actor over the bus: revocation against its verified-key cache, link lifetimes, one use of a
link under concurrency, and sessions resolving to a person's principal."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from actors.auth.actor import create_actor
from actors.auth.config import AuthConfig
from actors.runtime.bus import call
from bus_schemas.base import Failed
from bus_schemas.identity import (
    ApiKeyCreated,
    ApiKeyRevoked,
    Authenticate,
    CreateApiKey,
    IssueSignInLink,
    MagicLinkRequested,
    Principal,
    RedeemMagicLink,
    RequestMagicLink,
    RevokeApiKey,
    SessionStarted,
    SignInLinkIssued,
)
from bus_schemas.registry import (
    AUTHENTICATE,
    CREATE_API_KEY,
    ISSUE_SIGN_IN_LINK,
    REDEEM_MAGIC_LINK,
    REQUEST_MAGIC_LINK,
    REVOKE_API_KEY,
)
from tests.conftest import Stack, running
from tests.support.mailbox import Mailbox

LINK_BASE = "http://gateway.test/v1/auth/magic-link/callback"


@pytest.fixture
async def auth(stack: Stack, mailbox: Mailbox) -> AsyncIterator[None]:
    # One copy per test, so no other copy with another configuration answers in its queue group.
    async with running(create_actor(AuthConfig()), stack.settings("auth", smtp_url=mailbox.url)):
        yield


async def link(nc: Client, mailbox: Mailbox, email: str) -> str:
    before = mailbox.count(email)
    request = RequestMagicLink(email=email, client_ip=f"192.0.2.{secrets.randbelow(250) + 1}", link_base=LINK_BASE)
    assert isinstance(await call(nc, REQUEST_MAGIC_LINK, request, timeout=10), MagicLinkRequested)
    return await mailbox.link_token(email, after=before)


async def test_revoked_api_key_is_refused_at_once_although_this_copy_cached_it(admin_nc: Client, auth: None) -> None:
    created = await call(admin_nc, CREATE_API_KEY, CreateApiKey(org_name=f"revoke-{secrets.token_hex(4)}"), timeout=10)
    assert isinstance(created, ApiKeyCreated)
    for _ in range(2):  # the second answer comes from the verified-key cache
        principal = await call(admin_nc, AUTHENTICATE, Authenticate(token=created.secret), timeout=10)
        assert isinstance(principal, Principal) and principal.org_id == created.org_id
    revoked = await call(admin_nc, REVOKE_API_KEY, RevokeApiKey(org_id=created.org_id, key_id=created.key_id),
                         timeout=10)
    assert isinstance(revoked, ApiKeyRevoked)
    refused = await call(admin_nc, AUTHENTICATE, Authenticate(token=created.secret), timeout=10)
    assert isinstance(refused, Failed) and refused.code == "unauthenticated"


async def test_api_key_cannot_act_for_another_organisation(admin_nc: Client, auth: None) -> None:
    created = await call(admin_nc, CREATE_API_KEY, CreateApiKey(org_name=f"own-{secrets.token_hex(4)}"), timeout=10)
    assert isinstance(created, ApiKeyCreated)
    refused = await call(admin_nc, AUTHENTICATE, Authenticate(token=created.secret, org_id="oelsewhere"), timeout=10)
    assert isinstance(refused, Failed) and refused.code == "forbidden"


async def test_magic_link_past_its_lifetime_is_rejected(admin_nc: Client, stack: Stack, mailbox: Mailbox) -> None:
    # Links that expire as soon as they are made: "fifteen minutes later" without waiting for it.
    expiring = create_actor(AuthConfig(magic_link_ttl_seconds=0))
    async with running(expiring, stack.settings("auth", smtp_url=mailbox.url)):
        token = await link(admin_nc, mailbox, f"late-{secrets.token_hex(4)}@example.com")
        refused = await call(admin_nc, REDEEM_MAGIC_LINK, RedeemMagicLink(token=token), timeout=10)
    assert isinstance(refused, Failed) and refused.code == "unauthenticated"


async def test_a_link_followed_many_times_at_once_starts_one_session(
    admin_nc: Client, auth: None, mailbox: Mailbox
) -> None:
    email = f"racer-{secrets.token_hex(4)}@example.com"
    token = await link(admin_nc, mailbox, email)
    replies = await asyncio.gather(
        *(call(admin_nc, REDEEM_MAGIC_LINK, RedeemMagicLink(token=token), timeout=10) for _ in range(8))
    )
    started = [r for r in replies if isinstance(r, SessionStarted)]
    assert len(started) == 1 and all(isinstance(r, Failed) for r in replies if r is not started[0])
    session = started[0]
    assert session.email == email and session.first_sign_in

    principal = await call(admin_nc, AUTHENTICATE, Authenticate(token=session.token), timeout=10)
    assert isinstance(principal, Principal)
    assert principal.person_id == session.person_id and principal.role == "owner"
    assert principal.org_id == session.org_id and principal.session_id == session.session_id
    assert principal.subject == f"person:{session.person_id}"

    # A second sign-in finds the same person and organisation.
    again = await call(admin_nc, REDEEM_MAGIC_LINK, RedeemMagicLink(token=await link(admin_nc, mailbox, email)),
                       timeout=10)
    assert isinstance(again, SessionStarted)
    assert (again.person_id, again.org_id, again.first_sign_in) == (session.person_id, session.org_id, False)


async def test_an_operator_sign_in_link_signs_in_an_owner_of_the_named_organisation_and_mails_nothing(
    admin_nc: Client, auth: None, mailbox: Mailbox
) -> None:
    org = f"ops-{secrets.token_hex(4)}"
    email = f"local-{secrets.token_hex(4)}@bmms.localhost"
    key = await call(admin_nc, CREATE_API_KEY, CreateApiKey(org_name=org), timeout=10)
    assert isinstance(key, ApiKeyCreated)
    issued = await call(admin_nc, ISSUE_SIGN_IN_LINK, IssueSignInLink(email=email, org_name=org, link_base=LINK_BASE,
                                                                       next="/dashboard"), timeout=10)
    assert isinstance(issued, SignInLinkIssued) and issued.org_id == key.org_id
    assert issued.link.startswith(f"{LINK_BASE}?token=") and mailbox.count(email) == 0
    token = issued.link.split("?token=", 1)[1]
    session = await call(admin_nc, REDEEM_MAGIC_LINK, RedeemMagicLink(token=token), timeout=10)
    # Their first organisation is the named one (no organisation of their own is made), as an owner.
    assert isinstance(session, SessionStarted) and session.org_id == key.org_id and session.next == "/dashboard"
    principal = await call(admin_nc, AUTHENTICATE, Authenticate(token=session.token), timeout=10)
    assert isinstance(principal, Principal) and principal.role == "owner"
    # Once only; a second link for the same person keeps them as they are.
    assert isinstance(await call(admin_nc, REDEEM_MAGIC_LINK, RedeemMagicLink(token=token), timeout=10), Failed)
    again = await call(admin_nc, ISSUE_SIGN_IN_LINK, IssueSignInLink(email=email, org_name=org, link_base=LINK_BASE),
                       timeout=10)
    assert isinstance(again, SignInLinkIssued) and again.person_id == issued.person_id
    refused = await call(admin_nc, ISSUE_SIGN_IN_LINK, IssueSignInLink(email="nobody", org_name=org,
                                                                        link_base=LINK_BASE), timeout=10)
    assert isinstance(refused, Failed) and refused.field == "email"
