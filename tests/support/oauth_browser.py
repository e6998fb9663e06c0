"""The browser side of the OAuth flow for tests that drive the real mcp SDK client: a person signs in by
mail (or with a session), approves the consent form, and the redirect back is captured; plus the SDK's
token storage kept in memory."""

from __future__ import annotations

import html
import re

import httpx
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthToken

from tests.support.mailbox import Mailbox
from tests.support.oauth_helpers import query_of
from tests.support.sign_in import form_fields, fresh_ip, open_link


class MemoryStorage:
    """The SDK's TokenStorage, kept in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None
        self.token_history: list[OAuthToken] = []

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.token_history.append(tokens)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


async def sign_in_from_authorize(
    browser: httpx.AsyncClient, authorization_url: str, mailbox: Mailbox, email: str
) -> httpx.Response:
    """What a person without a session does: open the authorization URL, land on the sign-in page, send
    their address, open the mailed link, press "Sign in", and come back; the page they come back to."""
    sent_away = await browser.get(authorization_url)
    assert sent_away.status_code == 303, sent_away.text
    sign_in_page = sent_away.headers["location"]
    assert sign_in_page.startswith("/sign-in?next=")
    page = await browser.get(sign_in_page)
    assert page.status_code == 200, page.text
    before = mailbox.count(email)
    sent = await browser.post("/sign-in", data={**form_fields(html.unescape(page.text)), "email": email},
                              headers={"X-Forwarded-For": fresh_ip()})
    assert sent.status_code == 200 and "Check your email" in sent.text
    landed = await open_link(browser, await mailbox.link_token(email, after=before))
    assert landed.status_code == 303, landed.text
    back = httpx.URL(authorization_url)
    assert landed.headers["location"] == f"{back.path}?{back.query.decode()}"  # byte for byte
    return await browser.get(landed.headers["location"])


class Browser:
    """Acts as the person's browser: follows the authorization URL (with the session cookie, or signing in
    by mail on the way when there is none), approves the consent form, and captures the redirect back to
    the client."""

    def __init__(self, issuer: str, email: str, session: str | None = None, untick: tuple[str, ...] = (),
                 mailbox: Mailbox | None = None) -> None:
        self.issuer = issuer
        self.email = email
        self.session = session
        self.untick = untick
        self.mailbox = mailbox
        self.location: str | None = None
        self.consent_html = ""

    async def redirect_handler(self, authorization_url: str) -> None:
        cookies = {"bmms_session": self.session} if self.session else None
        async with httpx.AsyncClient(base_url=self.issuer, cookies=cookies, timeout=15) as browser:
            if self.session is None:
                assert self.mailbox is not None
                page = await sign_in_from_authorize(browser, authorization_url, self.mailbox, self.email)
            else:
                page = await browser.get(authorization_url)
            assert page.status_code == 200, page.text
            self.consent_html = page.text
            form = consent_form(page.text)
            form["decision"] = "approve"
            optional = [s for s in re.findall(r'name="scope" value="([^"]+)"', page.text) if s not in self.untick]
            decided = await browser.post(f"{self.issuer}/oauth/authorize/decision",
                                         data={**form, "scope": optional})
            assert decided.status_code == 303, decided.text
            self.location = decided.headers["location"]

    async def callback_handler(self) -> AuthorizationCodeResult:
        assert self.location is not None
        params = query_of(self.location)
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))


def consent_form(page: str) -> dict[str, str]:
    """The hidden fields of the consent form."""
    return dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">', page))
