"""People at the HTTP edge: magic-link sign-in to a session cookie, organisations and invitations, API
keys, sessions and sign-out. Sign-in mail goes through a real SMTP server and is read from its mailbox."""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import secrets
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import websockets

from actors.auth.actor import create_actor as create_auth_actor
from actors.auth.config import AuthConfig
from gateway.config import GatewayConfig
from tests.conftest import Stack, eventually, running
from tests.gateway.conftest import PLAIN, Gateway, assert_problem, gateway_settings, serving
from tests.support.mailbox import Mailbox
from tests.support.sign_in import (
    CALLBACK,
    COOKIE,
    ask_link,
    assert_page,
    assert_retry_after,
    follow,
    form_fields,
    fresh_email,
    fresh_ip,
    link_for,
    me,
    open_link,
    session_of,
    sign_in,
    with_session,
)


@pytest.fixture(scope="module")
async def identity_gateway(stack: Stack, mailbox: Mailbox, planner_actor: None) -> AsyncIterator[Gateway]:
    async with (
        running(create_auth_actor(AuthConfig()), stack.settings("auth", smtp_url=mailbox.url)),
        serving(gateway_settings(stack), GatewayConfig(feed_grace_seconds=0.3)) as gw,
    ):
        yield gw


@pytest.fixture(scope="module")
async def http(identity_gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=identity_gateway.base_url, timeout=15) as client:
        yield client


async def test_magic_link_signs_in_with_a_session_cookie_and_me_shows_the_person(
    http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    email = fresh_email("alice")
    asked = await ask_link(http, email.upper())  # addresses are case-insensitive
    assert asked.status_code == 202, asked.text
    assert asked.json()["expires_in_seconds"] == 900
    token = await mailbox.link_token(email)

    followed = await follow(str(http.base_url), token)
    assert followed.status_code == 303, followed.text
    assert followed.headers["location"] == "/v1/me"
    assert followed.headers["cache-control"] == "no-store"
    cookie = session_of(followed)[COOKIE]
    assert cookie["httponly"] and cookie["path"] == "/" and cookie["samesite"].lower() == "lax"
    assert cookie["max-age"] == str(30 * 24 * 3600)
    assert not cookie["secure"]  # served over plain http here

    body = await me(http, with_session(cookie.value))
    assert body["email"] == email and body["role"] == "owner"
    assert body["subject"] == f"person:{body['person_id']}"
    orgs = body["orgs"]
    assert isinstance(orgs, list) and len(orgs) == 1
    assert orgs[0] == {"org_id": body["org_id"], "name": email, "role": "owner"}


async def test_session_cookie_is_secure_when_the_proxy_says_https(http: httpx.AsyncClient, mailbox: Mailbox) -> None:
    token = await link_for(http, mailbox, fresh_email("secure"))
    https = {"X-Forwarded-Proto": "https"}
    page = await http.get(CALLBACK, params={"token": token}, headers=https)
    form_cookie = session_of(page)["bmms_form"]
    assert form_cookie["secure"]  # the form cookie too; this test's client speaks plain http, so send it by hand
    followed = await http.post(CALLBACK, data=form_fields(html.unescape(page.text)),
                               headers={**https, "Cookie": f"bmms_form={form_cookie.value}"})
    assert followed.status_code == 303
    assert session_of(followed)[COOKIE]["secure"]


async def test_magic_link_keeps_a_local_next_path_and_refuses_another_site(
    http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    email = fresh_email("next")
    refused = await http.post("/v1/auth/magic-link", json={"email": email, "next": "//evil.example/x"})
    assert_problem(refused, 422)
    before = mailbox.count(email)
    asked = await http.post("/v1/auth/magic-link", json={"email": email, "next": "/oauth/consent?id=1"},
                            headers={"X-Forwarded-For": fresh_ip()})
    assert asked.status_code == 202
    followed = await follow(str(http.base_url), await mailbox.link_token(email, after=before))
    assert followed.headers["location"] == "/oauth/consent?id=1"


async def test_reused_magic_link_is_rejected(http: httpx.AsyncClient, mailbox: Mailbox) -> None:
    token = await link_for(http, mailbox, fresh_email("twice"))
    assert (await follow(str(http.base_url), token)).status_code == 303
    again = await follow(str(http.base_url), token)
    assert "already used" in assert_page(again, 401)
    assert COOKIE not in again.headers.get("set-cookie", "")


async def test_expired_magic_link_is_rejected(
    http: httpx.AsyncClient, mailbox: Mailbox, db: asyncpg.Connection
) -> None:
    token = await link_for(http, mailbox, fresh_email("late"))
    # Fifteen minutes pass, as far as the link is concerned.
    aged = await db.execute("UPDATE magic_links SET expires_at = now() - interval '1 second' WHERE token_hash = $1",
                            hashlib.sha256(token.encode()).digest())
    assert aged == "UPDATE 1"
    assert_page(await follow(str(http.base_url), token), 401)


async def test_made_up_magic_link_is_rejected(http: httpx.AsyncClient) -> None:
    assert_page(await follow(str(http.base_url), "bmms_link_" + secrets.token_urlsafe(32)), 401)
    assert_page(await follow(str(http.base_url), "nonsense"), 401)


async def test_opening_a_magic_link_asks_for_a_click_and_does_not_use_the_link(
    http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    token = await link_for(http, mailbox, fresh_email("scanned"))
    async with httpx.AsyncClient(base_url=str(http.base_url), timeout=15) as scanner:
        for _ in range(3):  # a mail scanner fetches the link, again and again
            opened = await scanner.get(CALLBACK, params={"token": token})
            page = assert_page(opened, 200)
            assert COOKIE not in opened.headers.get("set-cookie", "")
            # A real button, and nothing that could press it by itself.
            assert '<form method="post" action="/v1/auth/magic-link/callback">' in page
            assert '<button type="submit">Sign in</button>' in page and "<script" not in page.lower()
            assert "default-src 'none'" in opened.headers["content-security-policy"]
    followed = await follow(str(http.base_url), token)  # the person's click still works
    assert followed.status_code == 303 and session_of(followed)[COOKIE].value


async def test_using_a_link_needs_the_confirmation_pages_form_token(http: httpx.AsyncClient, mailbox: Mailbox) -> None:
    token = await link_for(http, mailbox, fresh_email("forged"))
    async with httpx.AsyncClient(base_url=str(http.base_url), timeout=15) as browser:
        # Another site posting the link (login CSRF) has neither the form cookie nor its value.
        forged = await browser.post(CALLBACK, data={"token": token, "form_token": secrets.token_urlsafe(32)})
        assert_page(forged, 403)
        page = await browser.get(CALLBACK, params={"token": token})
        fields = form_fields(html.unescape(page.text))
        foreign = await browser.post(CALLBACK, data=fields, headers={"Origin": "https://evil.example"})
        assert_page(foreign, 403)
        assert COOKIE not in forged.headers.get("set-cookie", "") + foreign.headers.get("set-cookie", "")
        used = await browser.post(CALLBACK, data=fields, headers={"Origin": str(http.base_url).rstrip("/")})
    assert used.status_code == 303 and session_of(used)[COOKIE].value  # the refusals did not burn the link


async def test_known_and_unknown_addresses_get_the_same_answer(http: httpx.AsyncClient, mailbox: Mailbox) -> None:
    known = fresh_email("known")
    await sign_in(http, mailbox, known)
    answers = [await ask_link(http, address) for address in (known, fresh_email("nobody"))]
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].json() == answers[1].json()
    assert answers[0].headers.keys() - {"x-trace-id", "date"} == answers[1].headers.keys() - {"x-trace-id", "date"}


async def test_sixth_link_for_one_address_within_the_window_is_refused_with_429(http: httpx.AsyncClient) -> None:
    email = fresh_email("eager")
    for _ in range(5):
        assert (await ask_link(http, email)).status_code == 202
    refused = await ask_link(http, email)  # from yet another client address
    body = assert_problem(refused, 429)
    assert body["code"] == "rate_limited" and "this address" in str(body["detail"])
    assert_retry_after(refused, 15 * 60)


async def test_twenty_first_link_from_one_client_within_the_window_is_refused_with_429(
    http: httpx.AsyncClient,
) -> None:
    ip = fresh_ip()
    for n in range(20):
        assert (await ask_link(http, fresh_email(f"spray{n}"), ip)).status_code == 202
    refused = await ask_link(http, fresh_email("spray-last"), ip)
    body = assert_problem(refused, 429)
    assert body["code"] == "rate_limited" and "network address" in str(body["detail"])
    assert_retry_after(refused, 15 * 60)


async def test_another_organisations_build_is_invisible(http: httpx.AsyncClient, mailbox: Mailbox) -> None:
    alice = await sign_in(http, mailbox, fresh_email("alice"))
    carol = await sign_in(http, mailbox, fresh_email("carol"))
    created = await http.post("/v1/builds", json=PLAIN, headers=with_session(alice))
    assert created.status_code == 202, created.text
    build = created.json()["links"]["self"]
    assert (await http.get(build, headers=with_session(alice))).status_code == 200
    assert_problem(await http.get(build, headers=with_session(carol)), 404)
    # Naming alice's organisation does not help carol: she is not a member of it.
    alice_org = str((await me(http, with_session(alice)))["org_id"])
    assert_problem(await http.get(build, headers=with_session(carol, org=alice_org)), 403)


async def test_invited_address_joins_the_organisation_as_member_on_sign_in(
    http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    owner = await sign_in(http, mailbox, fresh_email("owner"))
    org = str((await me(http, with_session(owner)))["org_id"])
    bob_email = fresh_email("bob")
    invited = await http.post("/v1/invites", json={"email": bob_email}, headers=with_session(owner))
    assert invited.status_code == 201, invited.text
    assert invited.json()["org_id"] == org and invited.json()["role"] == "member"

    # The invitation mail carries a sign-in link; following it accepts the invitation.
    followed = await follow(str(http.base_url), await mailbox.link_token(bob_email))
    bob = session_of(followed)[COOKIE].value
    in_org = await me(http, with_session(bob, org=org))
    assert in_org["org_id"] == org and in_org["role"] == "member"
    roles = {o["org_id"]: o["role"] for o in in_org["orgs"]}  # type: ignore[attr-defined]
    assert roles[org] == "member" and sorted(roles.values()) == ["member", "owner"]  # and bob's own

    # Members see the organisation's builds.
    created = await http.post("/v1/builds", json=PLAIN, headers=with_session(owner))
    assert (await http.get(created.json()["links"]["self"], headers=with_session(bob, org=org))).status_code == 200


async def test_member_cannot_invite(http: httpx.AsyncClient, mailbox: Mailbox) -> None:
    owner = await sign_in(http, mailbox, fresh_email("owner"))
    org = str((await me(http, with_session(owner)))["org_id"])
    member_email = fresh_email("member")
    invited = await http.post("/v1/invites", json={"email": member_email}, headers=with_session(owner))
    assert invited.status_code == 201
    member = session_of(await follow(str(http.base_url), await mailbox.link_token(member_email)))[COOKIE].value
    refused = await http.post("/v1/invites", json={"email": fresh_email("x")}, headers=with_session(member, org=org))
    assert assert_problem(refused, 403)["code"] == "forbidden"


async def test_api_key_is_shown_once_listed_without_secret_and_refused_once_revoked(
    http: httpx.AsyncClient, mailbox: Mailbox, stack: Stack
) -> None:
    person = await sign_in(http, mailbox, fresh_email("ci"))
    org = str((await me(http, with_session(person)))["org_id"])
    created = await http.post("/v1/api-keys", json={"label": "ci"}, headers=with_session(person))
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["org_id"] == org and key["label"] == "ci" and key["secret"].startswith("bmms_")
    bearer = {"Authorization": f"Bearer {key['secret']}"}

    listed = await http.get("/v1/api-keys", headers=with_session(person))
    assert listed.status_code == 200
    entry = next(k for k in listed.json()["keys"] if k["key_id"] == key["key_id"])
    assert "secret" not in entry and key["secret"] not in listed.text and entry["label"] == "ci"

    as_key = await me(http, bearer)
    assert as_key["org_id"] == org and as_key["subject"] == f"api_key:{key['key_id']}" and as_key["person_id"] is None
    assert_problem(await http.post("/v1/api-keys", json={}, headers=bearer), 403)  # a key cannot mint keys

    # Another gateway copy with a short cache has the key cached when it is revoked here.
    async with serving(gateway_settings(stack), GatewayConfig(auth_cache_seconds=0.5)) as other, \
            httpx.AsyncClient(base_url=other.base_url, timeout=15) as other_http:
        assert (await other_http.get("/v1/me", headers=bearer)).status_code == 200
        revoked = await http.delete(f"/v1/api-keys/{key['key_id']}", headers=with_session(person))
        assert revoked.status_code == 204, revoked.text
        assert_problem(await http.get("/v1/me", headers=bearer), 401)  # at once on the gateway that revoked it

        async def refused_elsewhere() -> bool:
            return (await other_http.get("/v1/me", headers=bearer)).status_code == 401

        await eventually(refused_elsewhere, timeout=5)  # within the other copy's cache bound
    assert_problem(await http.delete(f"/v1/api-keys/{key['key_id']}", headers=with_session(person)), 404)
    listed = await http.get("/v1/api-keys", headers=with_session(person))
    assert key["key_id"] not in listed.text


async def test_sign_out_revokes_the_session_and_clears_the_cookie(http: httpx.AsyncClient, mailbox: Mailbox) -> None:
    session = await sign_in(http, mailbox, fresh_email("leaving"))
    await me(http, with_session(session))
    async with httpx.AsyncClient(base_url=str(http.base_url), timeout=15) as browser:
        out = await browser.post("/v1/auth/sign-out", headers=with_session(session))
    assert out.status_code == 204
    cleared = session_of(out)[COOKIE]
    assert cleared.value == "" and cleared["max-age"] == "0"
    assert_problem(await http.get("/v1/me", headers=with_session(session)), 401)


async def test_a_person_lists_sessions_and_ends_another_one(http: httpx.AsyncClient, mailbox: Mailbox) -> None:
    email = fresh_email("two-devices")
    laptop = await sign_in(http, mailbox, email)
    phone = await sign_in(http, mailbox, email)
    listed = await http.get("/v1/sessions", headers=with_session(laptop))
    assert listed.status_code == 200
    sessions = listed.json()["sessions"]
    assert len(sessions) == 2 and [s["current"] for s in sessions].count(True) == 1
    assert laptop not in listed.text and phone not in listed.text
    other = next(s["session_id"] for s in sessions if not s["current"])

    stranger = await sign_in(http, mailbox, fresh_email("stranger"))
    assert_problem(await http.delete(f"/v1/sessions/{other}", headers=with_session(stranger)), 404)
    assert (await http.delete(f"/v1/sessions/{other}", headers=with_session(laptop))).status_code == 204
    assert_problem(await http.get("/v1/me", headers=with_session(phone)), 401)
    await me(http, with_session(laptop))


async def test_no_token_or_secret_is_stored_in_clear(
    http: httpx.AsyncClient, mailbox: Mailbox, db: asyncpg.Connection
) -> None:
    email = fresh_email("vault")
    link = await link_for(http, mailbox, email)
    followed = await follow(str(http.base_url), link)
    session = session_of(followed)[COOKIE].value
    created = await http.post("/v1/api-keys", json={"label": "vault"}, headers=with_session(session))
    api_key = created.json()["secret"]
    key_secret = api_key.split("_", 2)[2]  # bmms_<key id>_<secret>; the secret itself may hold "_"
    secrets_seen = {"magic link": link, "session": session, "API key": api_key, "API key secret": key_secret}

    tables = ["orgs", "api_keys", "people", "memberships", "invites", "magic_links", "sessions", "rate_limits"]
    rows = [row[0] for table in tables for row in await db.fetch(f"SELECT t::text FROM {table} t")]
    assert any(email in row for row in rows)  # the dump does hold this person's rows
    dump = "\n".join(rows)
    for name, secret in secrets_seen.items():
        assert secret not in dump, f"the {name} is stored in clear"
        assert secret.encode().hex() not in dump, f"the {name} is stored hex-encoded"
    # What is stored instead: digests of the 256-bit tokens, and an argon2id hash of the key's secret.
    assert await db.fetchval("SELECT count(*) FROM magic_links WHERE token_hash = $1",
                             hashlib.sha256(link.encode()).digest()) == 1
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE token_hash = $1",
                             hashlib.sha256(session.encode()).digest()) == 1
    stored = await db.fetchval("SELECT secret_hash FROM api_keys WHERE key_id = $1", created.json()["key_id"])
    assert stored.startswith("$argon2id$")


async def open_sign_in(browser: httpx.AsyncClient, next_path: str | None) -> dict[str, str]:
    """The sign-in page's form fields, as the browser got them (with the form cookie)."""
    page = await browser.get("/sign-in", params={"next": next_path} if next_path is not None else None)
    text = assert_page(page, 200)
    assert '<input type="email" id="email" name="email"' in text and "<script" not in text.lower()
    assert "bmms_form" in page.headers["set-cookie"] and "samesite=lax" in page.headers["set-cookie"].lower()
    return form_fields(html.unescape(text))


async def test_sign_in_page_mails_a_link_that_lands_back_on_next(http: httpx.AsyncClient, mailbox: Mailbox) -> None:
    email = fresh_email("page")
    next_path = "/v1/me?from=sign-in&x=%2F"
    async with httpx.AsyncClient(base_url=str(http.base_url), timeout=15,
                                 headers={"X-Forwarded-For": fresh_ip()}) as browser:
        fields = await open_sign_in(browser, next_path)
        assert fields["next"] == next_path
        sent = await browser.post("/sign-in", data={**fields, "email": email})
        assert "Check your email" in assert_page(sent, 200)
        token = await mailbox.link_token(email)
        landed = await open_link(browser, token)
        assert landed.status_code == 303 and landed.headers["location"] == next_path
        assert (await browser.get(next_path)).json()["email"] == email  # the browser now has the session
        # Signed in already: the sign-in page sends straight on.
        again = await browser.get("/sign-in", params={"next": "/v1/sessions"})
        assert again.status_code == 303 and again.headers["location"] == "/v1/sessions"


async def test_sign_in_page_answers_the_same_for_known_and_unknown_addresses(
    http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    known = fresh_email("known-page")
    await sign_in(http, mailbox, known)
    pages = []
    for address in (known, fresh_email("unknown-page")):
        async with httpx.AsyncClient(base_url=str(http.base_url), timeout=15,
                                     headers={"X-Forwarded-For": fresh_ip()}) as browser:
            sent = await browser.post("/sign-in", data={**await open_sign_in(browser, None), "email": address})
            pages.append((sent.status_code, assert_page(sent, 200).replace(address, "ADDRESS")))
    assert pages[0] == pages[1]


async def test_sign_in_page_refuses_a_next_that_leaves_the_site(http: httpx.AsyncClient, mailbox: Mailbox) -> None:
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "/ok\r\nSet-Cookie: x=1"):
        assert_page(await http.get("/sign-in", params={"next": evil}), 400)
    email = fresh_email("evil-next")
    async with httpx.AsyncClient(base_url=str(http.base_url), timeout=15,
                                 headers={"X-Forwarded-For": fresh_ip()}) as browser:
        fields = await open_sign_in(browser, "/v1/me")
        refused = await browser.post("/sign-in", data={**fields, "next": "//evil.example/x", "email": email})
        assert_page(refused, 400)
        not_an_address = await browser.post("/sign-in", data={**fields, "email": "not an address"})
        assert "not an email address" in assert_page(not_an_address, 400)
    assert mailbox.count(email) == 0


async def test_sign_in_form_from_another_site_is_refused(http: httpx.AsyncClient, mailbox: Mailbox) -> None:
    email = fresh_email("csrf-page")
    async with httpx.AsyncClient(base_url=str(http.base_url), timeout=15,
                                 headers={"X-Forwarded-For": fresh_ip()}) as browser:
        no_cookie = await browser.post("/sign-in", data={"email": email, "form_token": secrets.token_urlsafe(32)})
        assert_page(no_cookie, 403)
        fields = await open_sign_in(browser, None)
        wrong = await browser.post("/sign-in", data={**fields, "email": email, "form_token": secrets.token_urlsafe(32)})
        assert_page(wrong, 403)
        foreign = await browser.post("/sign-in", data={**fields, "email": email},
                                     headers={"Origin": "https://evil.example"})
        assert_page(foreign, 403)
        ours = await browser.post("/sign-in", data={**fields, "email": email},
                                  headers={"Origin": str(http.base_url).rstrip("/")})
        assert_page(ours, 200)
    await mailbox.next_for(email)
    assert mailbox.count(email) == 1  # only the genuine form sent mail


async def test_sign_in_page_over_the_limit_answers_a_429_page_with_retry_after(http: httpx.AsyncClient) -> None:
    email = fresh_email("eager-page")
    async with httpx.AsyncClient(base_url=str(http.base_url), timeout=15) as browser:
        fields = await open_sign_in(browser, None)
        for _ in range(5):
            sent = await browser.post("/sign-in", data={**fields, "email": email},
                                      headers={"X-Forwarded-For": fresh_ip()})
            assert sent.status_code == 200
        refused = await browser.post("/sign-in", data={**fields, "email": email},
                                     headers={"X-Forwarded-For": fresh_ip()})
    assert "Too many sign-in links" in assert_page(refused, 429)
    assert_retry_after(refused, 15 * 60)


async def test_build_socket_takes_the_session_cookie_only_from_this_sites_pages(
    identity_gateway: Gateway, http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    session = await sign_in(http, mailbox, fresh_email("dashboard"))
    created = await http.post("/v1/builds", json=PLAIN, headers=with_session(session))
    assert created.status_code == 202, created.text
    url = f"{identity_gateway.ws_url}/v1/builds/{created.json()['build_id']}/stream"
    cookie = {"Cookie": f"{COOKIE}={session}"}

    async with websockets.connect(url, additional_headers=cookie, origin=identity_gateway.base_url,  # type: ignore[arg-type]
                                  open_timeout=10) as ws:
        async with asyncio.timeout(15):
            first = json.loads(await ws.recv())
        assert first["kind"] == "requested"

    # Another site's page opening the socket: the browser attaches the cookie, the gateway refuses it.
    for origin in ("https://evil.example", None):
        async with websockets.connect(url, additional_headers=cookie, origin=origin,  # type: ignore[arg-type]
                                      open_timeout=10) as ws:
            async with asyncio.timeout(10):
                await ws.wait_closed()
            assert ws.close_code == 4403 and "own pages" in ws.close_reason


async def test_build_socket_acts_in_the_organisation_its_org_parameter_names(
    identity_gateway: Gateway, http: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    # A browser cannot set X-Org on a WebSocket: the dashboard names the organisation it acts in with `?org=`.
    owner = await sign_in(http, mailbox, fresh_email("owner"))
    org = str((await me(http, with_session(owner)))["org_id"])
    member_email = fresh_email("member")
    invited = await http.post("/v1/invites", json={"email": member_email}, headers=with_session(owner))
    assert invited.status_code == 201, invited.text
    member = session_of(await follow(str(http.base_url), await mailbox.link_token(member_email)))[COOKIE].value
    created = await http.post("/v1/builds", json=PLAIN, headers=with_session(owner))
    url = f"{identity_gateway.ws_url}/v1/builds/{created.json()['build_id']}/stream"
    cookie = {"Cookie": f"{COOKIE}={member}"}

    async with websockets.connect(f"{url}?org={org}", additional_headers=cookie,  # type: ignore[arg-type]
                                  origin=identity_gateway.base_url, open_timeout=10) as ws:
        async with asyncio.timeout(15):
            assert json.loads(await ws.recv())["kind"] == "requested"
    for query, code in (("", 4404), ("?org=o-not-theirs", 4403)):  # their own organisation has no such build
        async with websockets.connect(url + query, additional_headers=cookie,  # type: ignore[arg-type]
                                      origin=identity_gateway.base_url, open_timeout=10) as ws:
            async with asyncio.timeout(10):
                await ws.wait_closed()
            assert ws.close_code == code, (query, ws.close_code, ws.close_reason)
