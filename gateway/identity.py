"""People signing in at the edge, and what the other identity routes share (`require_person`, the session
cookie, the public base URL).

Routes (the JSON ones answer RFC 9457 problems on failure):
- `POST /v1/auth/magic-link {email, next?}` -> 202, the same for every well-formed address (no account
  probing); 429 over the per-address or per-client limit.
- `GET /v1/auth/magic-link/callback?token=...` -> a page whose "Sign in" button POSTs the token (mail
  scanners fetch links; only the person's click uses one).
- `POST /v1/auth/magic-link/callback` (form: token, form token) -> 303 to `next` (default `/v1/me`) with
  the session cookie; a 401 page for a link that is unknown, expired or used. These two are HTML pages.
- `POST /v1/auth/sign-out` -> 204, ends the cookie's session and clears the cookie.

Who is calling and their sessions are `gateway.sessions`; the organisation's people and invitations
`gateway.org`; API keys `gateway.api_keys`. Managing sessions, invitations and keys needs a signed-in
person: an API key cannot mint more keys.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter
from litestar.response import Redirect

from actors.runtime.settings import Settings
from bus_schemas.base import FailureCode
from bus_schemas.identity import (
    NEXT_MAX_LENGTH,
    Principal,
    RedeemMagicLink,
    RequestMagicLink,
    RevokeSession,
)
from bus_schemas.registry import (
    REDEEM_MAGIC_LINK,
    REQUEST_MAGIC_LINK,
    REVOKE_SESSION,
)
from gateway.auth import SESSION_COOKIE, session_token
from gateway.browser import CROSS_SITE_OPT
from gateway.pages import FORM_FIELD, Link, form_cookie, form_is_ours, form_token, message_page, render
from gateway.problems import Problem
from gateway.services import EdgeServices

log = logging.getLogger("bmms.gateway.identity")

CALLBACK_PATH = "/v1/auth/magic-link/callback"
"""Where magic links point; the token is the `token` query parameter."""
SIGN_IN_PAGE = "/sign-in"
"""The browser's sign-in page (gateway.sign_in)."""
DEFAULT_AFTER_SIGN_IN = "/v1/me"

Email = Annotated[str, msgspec.Meta(min_length=3, max_length=320)]


class MagicLinkBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Ask for a sign-in link."""

    email: Email
    next: Annotated[str, msgspec.Meta(max_length=NEXT_MAX_LENGTH)] | None = None
    """A path on this site to land on after signing in."""


class MagicLinkAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to every well-formed sign-in request."""

    detail: str
    expires_in_seconds: int


def client_ip(request: Request[Any, Any, Any]) -> str:
    """The client's address (uvicorn applies X-Forwarded-For from trusted proxies)."""
    return request.client.host if request.client else "unknown"


def is_https(request: Request[Any, Any, Any], settings: Settings) -> bool:
    """Whether the browser reached us over https: the scheme, X-Forwarded-Proto, or the public URL."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https" or (settings.public_url or "").startswith("https://")


def public_base(request: Request[Any, Any, Any], settings: Settings) -> str:
    """The base URL links point to. Set BMMS_PUBLIC_URL in production: without it the request's Host
    decides, which only suits development."""
    return (settings.public_url or str(request.base_url)).rstrip("/")


def require_person(principal: Principal) -> str:
    """The person id of a signed-in caller; 403 for an API key."""
    if principal.person_id is None:
        log.info("rejected %s: identity management needs a signed-in person", principal.subject)
        raise Problem(403, "sign in as a person for this: an API key cannot manage identities",
                      code=FailureCode.FORBIDDEN)
    return principal.person_id


def session_cookie(value: str, max_age: int, secure: bool) -> Cookie:
    """The session cookie with its attributes (an empty value with max_age 0 clears it)."""
    return Cookie(key=SESSION_COOKIE, value=value, max_age=max_age, path="/", httponly=True, secure=secure,
                  samesite="lax")


class SignInController(Controller):
    """Magic-link sign-in and sign-out."""

    path = "/v1/auth"
    tags = ["identity"]

    @post("/magic-link", status_code=202, summary="Mail a sign-in link")
    async def request_link(
        self, request: Request[Any, Any, Any], data: JSONBody[MagicLinkBody],
        services: NamedDependency[EdgeServices],
    ) -> MagicLinkAccepted:
        """Mail a one-time sign-in link (15 minutes) to the address; the answer is the same whether or not
        anyone has signed in with it. 429 after 5 links per address or 20 per client in 15 minutes."""
        settings = services.settings
        sent = await services.bus.ask(
            REQUEST_MAGIC_LINK,
            RequestMagicLink(email=data.email, client_ip=client_ip(request), next=data.next,
                             link_base=public_base(request, settings) + CALLBACK_PATH),
        )
        return MagicLinkAccepted(detail="a sign-in link is on its way to that address; it works once",
                                 expires_in_seconds=sent.expires_in_seconds)

    @get("/magic-link/callback", summary="Open a sign-in link", include_in_schema=True)
    async def confirm_link(
        self, request: Request[Any, Any, Any], services: NamedDependency[EdgeServices],
        token: Annotated[str, QueryParameter(min_length=1, max_length=200, description="The link's token.")],
    ) -> Response[str]:
        """A page with a "Sign in" button that POSTs the token: opening the link does not use it, so a
        mail scanner that fetches every link cannot burn it. Nothing submits the form but the person."""
        form = form_token(request)
        return render("sign_in_link.html", cookies=[form_cookie(form, is_https(request, services.settings))],
                      title="Sign in", action=CALLBACK_PATH, form_field=FORM_FIELD, form_token=form, token=token)

    @post("/magic-link/callback", summary="Use a sign-in link", include_in_schema=True,
          opt={CROSS_SITE_OPT: "form token"})
    async def use_link(
        self, request: Request[Any, Any, Any],
        services: NamedDependency[EdgeServices],
    ) -> Response[Any]:
        """The confirmation form's POST (form token checked): use the link once, set the session cookie
        (30 days) and go to `next`, else `/v1/me`. Refusals are HTML pages: a person is reading."""
        form = await request.form()
        token = form.get("token")
        if not form_is_ours(request, form.get(FORM_FIELD), services.settings.public_url):
            log.info("refused sign-in link use: form token missing or wrong, or foreign Origin %r",
                     request.headers.get("origin", "")[:200])
            return message_page("Sign in", "This form expired or did not come from this site: open the link from "
                                "your mail again.", 403)
        if not isinstance(token, str) or not 1 <= len(token) <= 200:
            return message_page("Sign in", "The sign-in form is incomplete: open the link from your mail again.", 400)
        try:
            started = await services.bus.ask(
                REDEEM_MAGIC_LINK,
                RedeemMagicLink(token=token, user_agent=request.headers.get("user-agent", ""),
                                client_ip=client_ip(request)),
            )
        except Problem as problem:
            if problem.status != 401:
                raise
            return message_page("This link cannot sign you in", problem.detail[:1].upper() + problem.detail[1:] + ".",
                                401, link=Link(SIGN_IN_PAGE, "Ask for a new link"))
        cookie = session_cookie(started.token, started.max_age_seconds, is_https(request, services.settings))
        return Redirect(
            path=started.next or DEFAULT_AFTER_SIGN_IN, status_code=303, cookies=[cookie],
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )

    @post("/sign-out", status_code=204, summary="Sign out")
    async def sign_out(
        self, request: Request[Any, Any, Any], services: NamedDependency[EdgeServices],
    ) -> Response[None]:
        """End the cookie's session and clear the cookie; 204 even when there was no valid session."""
        token = session_token(request)
        if token is not None:
            principal = await services.authenticator.session_principal(request)
            if principal is not None and principal.person_id and principal.session_id:
                revoke = RevokeSession(person_id=principal.person_id, session_id=principal.session_id)
                await services.bus.ask(REVOKE_SESSION, revoke)
            services.authenticator.forget(token=token)
        return Response(None, status_code=204,
                        cookies=[session_cookie("", 0, is_https(request, services.settings))])

