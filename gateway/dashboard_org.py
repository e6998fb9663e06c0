"""The organisation page, `/dashboard/org`, and which organisation a dashboard page acts in.

The page is a shell filled by `/static/org.js` from the existing API, with the session cookie and `X-Org`:
members and roles (`/v1/org/members`: change a role, remove a person; the auth actor refuses to leave an
organisation without an owner and the page says so in words), invitations (`/v1/invites`, `/v1/org/invites`),
API keys (`/v1/api-keys`: created with the secret shown once, revoked) and the person's sessions (`/v1/sessions`).

**Which organisation.** The API acts in the organisation named by `X-Org` (gateway.auth), else the person's first.
The organisation switcher in the top bar (`/static/org_switcher.js`, shown to people in several organisations)
keeps the choice where both kinds of request find it: `localStorage["bmms.org"]`, which `BMMS.api` sends as
`X-Org`, and the `bmms_org` cookie, which server-rendered pages read (`gateway.dashboard.page_principal`).
Neither is a credential: every request is checked against the person's memberships, and an organisation they left
falls back to their first.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency

from gateway.dashboard import dashboard_page, page_principal, to_sign_in
from gateway.services import EdgeServices


class OrgPageController(Controller):
    """The organisation page."""

    path = "/dashboard/org"
    include_in_schema = False

    @get("/", summary="Organisation")
    async def page(self, request: Request[Any, Any, Any], services: NamedDependency[EdgeServices]) -> Response[Any]:
        """Members and roles, invitations, API keys and sessions (filled by `/static/org.js`)."""
        principal = await page_principal(request, services)
        if principal is None:
            return to_sign_in(request)
        return dashboard_page("org.html", principal, title="Organisation", active="org")
