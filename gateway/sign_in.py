"""The sign-in page for people in a browser: an MCP client opens `/oauth/authorize`, which sends a
stranger here with `next` = the authorization request; the magic link brings them back to it.

- `GET /sign-in?next=<local path>` -> the email form (303 straight to `next` when already signed in).
- `POST /sign-in` (form: email, next, form token) -> "check your email", the same page whether or not
  the address has an account; 429 page (with `Retry-After`) over the sign-in link limits.
CSRF: the double-submit form token of `gateway.pages`.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.response import Redirect

from bus_schemas.identity import RequestMagicLink, safe_next
from bus_schemas.registry import REQUEST_MAGIC_LINK
from gateway.browser import CROSS_SITE_OPT
from gateway.identity import (
    CALLBACK_PATH,
    DEFAULT_AFTER_SIGN_IN,
    SIGN_IN_PAGE,
    client_ip,
    is_https,
    public_base,
)
from gateway.pages import FORM_FIELD, Link, form_cookie, form_is_ours, form_token, message_page, render
from gateway.problems import Problem
from gateway.services import EdgeServices

log = logging.getLogger("bmms.gateway.sign_in")

def sign_in_form(request: Request[Any, Any, Any], services: EdgeServices, next_path: str | None, *,
                 email: str = "", notice: str = "", status: int = 200) -> Response[str]:
    """The email form, with a fresh (or the browser's current) form token."""
    token = form_token(request)
    return render("sign_in.html", status, cookies=[form_cookie(token, is_https(request, services.settings))],
                  title="Sign in", action=SIGN_IN_PAGE, form_field=FORM_FIELD, form_token=token,
                  next_path=next_path or "", email=email, notice=notice)


class SignInPageController(Controller):
    """The browser's way to ask for a sign-in link."""

    path = SIGN_IN_PAGE
    tags = ["identity"]
    include_in_schema = False

    @get("/", summary="Sign-in page")
    async def show(
        self, request: Request[Any, Any, Any], services: NamedDependency[EdgeServices],
    ) -> Response[Any]:
        """The email form; `next` must be a local path."""
        raw_next = request.query_params.get("next")
        next_path = safe_next(raw_next)
        if raw_next is not None and next_path is None:
            log.info("refused sign-in page: `next` is not a local path")
            return message_page("Sign in", "That sign-in address points away from this site; open the link from "
                                "your app again.", 400)
        if await services.authenticator.session_principal(request) is not None:
            return Redirect(next_path or DEFAULT_AFTER_SIGN_IN, status_code=303, headers={"Cache-Control": "no-store"})
        return sign_in_form(request, services, next_path)

    @post("/", status_code=200, summary="Ask for a sign-in link", opt={CROSS_SITE_OPT: "form token"})
    async def submit(
        self, request: Request[Any, Any, Any], services: NamedDependency[EdgeServices],
    ) -> Response[str]:
        """Mail the link (REQUEST_MAGIC_LINK) and say to check the inbox, whoever the address belongs to."""
        form = await request.form()
        email, raw_next = form.get("email"), form.get("next") or None
        if not isinstance(email, str) or not isinstance(raw_next, str | None):
            return message_page("Sign in", "The sign-in form is incomplete; open it again.", 400)
        if not form_is_ours(request, form.get(FORM_FIELD), services.settings.public_url):
            log.info("refused sign-in form: form token missing or wrong, or foreign Origin %r",
                     request.headers.get("origin", "")[:200])
            return message_page("Sign in", "This form expired or did not come from this site. Open the sign-in "
                                "page again.", 403, link=Link(SIGN_IN_PAGE, "Sign in"))
        try:
            sent = await services.bus.ask(
                REQUEST_MAGIC_LINK,
                RequestMagicLink(email=email[:320], client_ip=client_ip(request), next=raw_next,
                                 link_base=public_base(request, services.settings) + CALLBACK_PATH),
            )
        except Problem as problem:
            if problem.status == 422 and problem.errors and problem.errors[0].field == "email":
                return sign_in_form(request, services, safe_next(raw_next), email=email[:320],
                                    notice="That is not an email address.", status=400)
            if problem.status == 429:
                sentence = problem.detail[:1].upper() + problem.detail[1:] + "."
                return message_page("Too many sign-in links", sentence, 429,
                                    headers={k: v for k, v in problem.headers.items() if k == "Retry-After"})
            if problem.status < 500:
                return message_page("Sign in", f"{problem.detail}; open the link from your app again.", 400)
            return message_page("Sign-in is unavailable", "Sign-in is unavailable right now; try again shortly.",
                                problem.status)
        minutes = sent.expires_in_seconds // 60
        return message_page(
            "Check your email",
            f"If {email.strip()} can receive mail, a sign-in link is on its way to it. The link works once, for "
            f"{minutes} minutes; open it in this browser to come back to where you were.",
            small="Nothing arrived? Check the spam folder, or ask again in a minute.",
        )
