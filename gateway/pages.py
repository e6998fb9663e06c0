"""Server-rendered pages for people in a browser (sign-in, the magic-link confirmation, consent): Jinja
templates in `templates/` with every value escaped, styled by `static/bmms.css`; and the form token that keeps
other sites from submitting their forms.

CSRF defence of these forms (they act without a session, so the session cookie cannot anchor them): a
double-submit token. Rendering a form sets the `bmms_form` cookie (random, HttpOnly, SameSite=Lax) and
puts the same value in a hidden field; a POST is accepted only when both are present and equal. A
cross-site POST carries no Lax cookie, and another site cannot read the field. As a second check, a
POST whose `Origin` names another site is refused (pages send `Referrer-Policy: same-origin`, so our
own forms send their real `Origin`, not `null`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from litestar import MediaType, Request, Response
from litestar.datastructures import Cookie

from gateway.auth import origin_allowed

FORM_COOKIE = "bmms_form"
"""The double-submit form token cookie (HttpOnly, SameSite=Lax, Path=/, one hour)."""
FORM_FIELD = "form_token"
"""The hidden field that must echo the form token cookie."""
FORM_TOKEN_SECONDS = 3600

_FORM_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")

STATIC_DIR = Path(__file__).parent / "static"
"""The pages' own assets (style sheets), served at /static: no page loads anything from elsewhere."""
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # every value a template shows is escaped; none is markup
    undefined=jinja2.StrictUndefined,  # a value a template names but the page did not give is an error
    trim_blocks=True,
)

PAGE_HEADERS = {
    # The Content-Security-Policy (nothing loaded but our own style sheet, forms post only here, never framed)
    # is every HTML answer's: gateway.browser.HTML_HEADERS.
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    # Not `no-referrer`: with it, browsers send `Origin: null` on our own form POSTs.
    "Referrer-Policy": "same-origin",
}


@dataclass(frozen=True)
class Link:
    """A link below a page's message."""

    href: str
    label: str


def render(template: str, status: int = 200, *, headers: Mapping[str, str] | None = None,
           cookies: list[Cookie] | None = None, **context: Any) -> Response[str]:
    """An HTML page from `templates/<template>`; every value in `context` is escaped where it is shown."""
    document = _TEMPLATES.get_template(template).render(**context)
    return Response(document, status_code=status, media_type=MediaType.HTML,
                    headers={**PAGE_HEADERS, **(headers or {})}, cookies=cookies or [])


def message_page(title: str, text: str, status: int = 200, *, small: str = "", link: Link | None = None,
                 headers: Mapping[str, str] | None = None) -> Response[str]:
    """A page that says one thing (and maybe a smaller second thing, and where to go next)."""
    return render("message.html", status, headers=headers, title=title, text=text, small=small, link=link)


def form_token(request: Request[Any, Any, Any]) -> str:
    """The browser's form token: the cookie's when it has a well-formed one (two tabs keep working), else
    a new one."""
    current = request.cookies.get(FORM_COOKIE, "")
    return current if _FORM_TOKEN_RE.match(current) else secrets.token_urlsafe(32)


def form_cookie(token: str, secure: bool) -> Cookie:
    """The form token cookie to set with a page that renders a form."""
    return Cookie(key=FORM_COOKIE, value=token, max_age=FORM_TOKEN_SECONDS, path="/", httponly=True, secure=secure,
                  samesite="lax")


def form_is_ours(request: Request[Any, Any, Any], submitted: object, public_url: str | None) -> bool:
    """Whether a form POST came from one of our pages: its token field equals the form cookie, and its
    `Origin`, when it names a site, is ours."""
    cookie = request.cookies.get(FORM_COOKIE, "")
    if not isinstance(submitted, str) or not _FORM_TOKEN_RE.match(cookie):
        return False
    if not secrets.compare_digest(cookie.encode(), submitted.encode()):
        return False
    origin = request.headers.get("origin")
    return origin is None or origin == "null" or origin_allowed(request, public_url)
