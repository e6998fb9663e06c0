"""Signing a person in through the gateway as a browser does (the magic link from a real mailbox), and reading
what a person's pages and session answer: shared by every test that needs a signed-in person."""

from __future__ import annotations

import html
import re
import secrets
from http.cookies import SimpleCookie

import httpx

from tests.support.mailbox import Mailbox

CALLBACK = "/v1/auth/magic-link/callback"
COOKIE = "bmms_session"


def fresh_ip() -> str:
    """A client address nobody else in this run uses (uvicorn takes it from X-Forwarded-For on loopback)."""
    return f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


def fresh_email(name: str) -> str:
    return f"{name}-{secrets.token_hex(4)}@example.com"


def session_of(response: httpx.Response) -> SimpleCookie:
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(response.headers["set-cookie"])
    return cookie


def with_session(token: str, org: str | None = None) -> dict[str, str]:
    headers = {"Cookie": f"{COOKIE}={token}"}
    if org is not None:
        headers["X-Org"] = org
    return headers


async def ask_link(http: httpx.AsyncClient, email: str, ip: str | None = None) -> httpx.Response:
    return await http.post("/v1/auth/magic-link", json={"email": email}, headers={"X-Forwarded-For": ip or fresh_ip()})


def form_fields(page: str) -> dict[str, str]:
    """The hidden fields of a page's form."""
    return dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">', page))


async def open_link(browser: httpx.AsyncClient, token: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """Open a sign-in link and press its "Sign in" button, as a person does, in `browser`."""
    page = await browser.get(CALLBACK, params={"token": token}, headers=headers)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text
    assert '<button type="submit">Sign in</button>' in page.text
    return await browser.post(CALLBACK, data=form_fields(html.unescape(page.text)), headers=headers)


async def follow(base_url: str, token: str, headers: dict[str, str] | None = None) -> httpx.Response:
    # A fresh client each time: the shared one must not collect session cookies between tests.
    async with httpx.AsyncClient(base_url=base_url, timeout=15) as browser:
        return await open_link(browser, token, headers)


def assert_page(response: httpx.Response, status: int) -> str:
    """An HTML page for a person (not a problem document), never framed nor cached."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["x-frame-options"] == "DENY" and response.headers["cache-control"] == "no-store"
    return response.text


def assert_retry_after(response: httpx.Response, at_most: int) -> int:
    """The 429's Retry-After: whole seconds, within the limit's window."""
    seconds = int(response.headers["retry-after"])
    assert 0 < seconds <= at_most
    return seconds


async def link_for(http: httpx.AsyncClient, mailbox: Mailbox, email: str) -> str:
    before = mailbox.count(email)
    response = await ask_link(http, email)
    assert response.status_code == 202, response.text
    return await mailbox.link_token(email, after=before)


async def sign_in(http: httpx.AsyncClient, mailbox: Mailbox, email: str) -> str:
    """Sign in by mail; the session token from the cookie."""
    response = await follow(str(http.base_url), await link_for(http, mailbox, email))
    assert response.status_code == 303, response.text
    return session_of(response)[COOKIE].value


async def me(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, object]:
    response = await http.get("/v1/me", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body
