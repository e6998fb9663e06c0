"""Server-rendered pages for people in a browser (sign-in, the magic-link confirmation), and the form
token that keeps other sites from submitting their forms.

CSRF defence of these forms (they act without a session, so the session cookie cannot anchor them): a
double-submit token. Rendering a form sets the `bmms_form` cookie (random, HttpOnly, SameSite=Lax) and
puts the same value in a hidden field; a POST is accepted only when both are present and equal. A
cross-site POST carries no Lax cookie, and another site cannot read the field. As a second check, a
POST whose `Origin` names another site is refused (pages send `Referrer-Policy: same-origin`, so our
own forms send their real `Origin`, not `null`).
"""

from __future__ import annotations

import html
import re
import secrets
from pathlib import Path
from string import Template
from typing import Any

from litestar import Request, Response
from litestar.datastructures import Cookie

from gateway.auth import origin_allowed

FORM_COOKIE = "bmms_form"
"""The double-submit form token cookie (HttpOnly, SameSite=Lax, Path=/, one hour)."""
FORM_FIELD = "form_token"
"""The hidden field that must echo the form token cookie."""
FORM_TOKEN_SECONDS = 3600

_FORM_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_PAGE = Template((Path(__file__).parent / "templates" / "page.html").read_text())

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    # Never framed (clickjacking), nothing loaded from anywhere, forms post only here.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    # Not `no-referrer`: with it, browsers send `Origin: null` on our own form POSTs.
    "Referrer-Policy": "same-origin",
}


def page(title: str, body_html: str, status: int = 200, *, headers: dict[str, str] | None = None,
         cookies: list[Cookie] | None = None) -> Response[str]:
    """An HTML page; `body_html` is markup already escaped by the caller (see `paragraph`)."""
    document = _PAGE.substitute(title=html.escape(title), body=body_html)
    return Response(document, status_code=status, media_type="text/html; charset=utf-8",
                    headers={**PAGE_HEADERS, **(headers or {})}, cookies=cookies or [])


def paragraph(text: str, css_class: str = "") -> str:
    """A paragraph of plain text, escaped."""
    attribute = f' class="{css_class}"' if css_class else ""
    return f"  <p{attribute}>{html.escape(text)}</p>"


def hidden(name: str, value: str) -> str:
    """A hidden form field, escaped."""
    return f'    <input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'


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
