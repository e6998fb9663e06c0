"""The dashboard: pages for signed-in people, under `/dashboard` (issue 16).

- `GET /dashboard` -> the servers list (home) · `GET /dashboard/new` -> a new server (plain words, OpenAPI with
  an operation picker, or a tool spec) · `GET /dashboard/builds/{build_id}` -> a build, live ·
  `GET /dashboard/servers/{server_id}` -> a server (versions, rollback, stop/start/delete, logs, secrets,
  Connect). Other dashboard pages (playground, usage, organisation) render through `dashboard_page` too.

Each page is a shell rendered here (`templates/dashboard/layout.html`) and filled in the browser by plain
JavaScript from `/static` (`dashboard.js`, the shared helpers, and one script per page), which talks to the
gateway's own JSON API (`/v1/...`) and build stream with the session cookie: the pages reach the actors only
through the routes and streams every client uses, so they show exactly what the API says.

A visitor without a valid session is sent (303) to `/sign-in?next=<this page>`.

**How the dashboard writes (CSRF).** One way for every page: `BMMS.api(method, path, body)` in `dashboard.js`,
a same-origin `fetch` with a JSON body. The gateway's app-wide guard (`gateway.browser.same_origin_writes`)
accepts a cookie-authenticated POST/PUT/DELETE only when its `Origin` is the gateway's own, which browsers
send on every such fetch and no other site's page can forge; JSON bodies are accepted only as
`application/json`, which a cross-site form cannot send. The dashboard has no forms that post to the server,
so it needs no form token. Its pages carry `DASHBOARD_CSP` (`gateway.browser`): scripts only from `/static`,
connections only to this origin, no inline script or style.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect

from actors.deployer.install import client_name, install_snippets
from bus_schemas.base import SUBJECT_TOKEN_RE
from bus_schemas.identity import Principal
from gateway.auth import session_token
from gateway.browser import DASHBOARD_CSP
from gateway.identity import SIGN_IN_PAGE
from gateway.pages import Link, message_page, render
from gateway.problems import Problem
from gateway.servers import server_of
from gateway.services import EdgeServices

log = logging.getLogger("bmms.gateway.dashboard")

DASHBOARD = "/dashboard"


@dataclass(frozen=True)
class ConnectOption:
    """How to add a server to one MCP client: what to copy, and a one-click install link where it has one."""

    client: str
    how: str
    """What to do with `text`, in a sentence."""
    text: str
    install_link: str | None = None
    also: str | None = None
    """A second thing to copy (Claude Desktop: the JSON config beside the connector steps)."""
    also_how: str = ""


def connect_options(name: str, url: str) -> tuple[ConnectOption, ...]:
    """The Connect section of a server page: the deployer's install snippets (the same ones a build's `deployed`
    event carries), with Cursor's and VS Code's install deep links and Claude Desktop's JSON config."""
    snippets = {snippet.client: snippet.text for snippet in install_snippets(name, url)}
    key = client_name(name)
    cursor_config = base64.b64encode(json.dumps({"url": url}, separators=(",", ":")).encode()).decode()
    vscode_config = json.dumps({"name": key, "type": "http", "url": url}, separators=(",", ":"))
    desktop_config = json.dumps({"mcpServers": {key: {"command": "npx", "args": ["-y", "mcp-remote", url]}}}, indent=2)
    return (
        ConnectOption("Claude Code", "Run in a terminal:", snippets["Claude Code"]),
        ConnectOption("Claude Desktop", snippets["Claude Desktop"], url,
                      also=desktop_config,
                      also_how="Or add it to claude_desktop_config.json, through the mcp-remote bridge:"),
        ConnectOption("ChatGPT", snippets["ChatGPT"], url),
        ConnectOption("Cursor", "Install with one click, or add to ~/.cursor/mcp.json:", snippets["Cursor"],
                      install_link=f"cursor://anysphere.cursor-deeplink/mcp/install?name={quote(key, safe='')}"
                                   f"&config={quote(cursor_config, safe='')}"),
        ConnectOption("VS Code", "Install with one click, or run:", snippets["VS Code"],
                      install_link=f"vscode:mcp/install?{quote(vscode_config, safe='')}"),
    )


def dashboard_page(template: str, principal: Principal, *, title: str, active: str = "",
                   **context: Any) -> Response[str]:
    """A dashboard page from `templates/dashboard/<template>` in the shell, with the dashboard's CSP."""
    return render(f"dashboard/{template}", headers={"Content-Security-Policy": DASHBOARD_CSP},
                  principal=principal, title=title, active=active, **context)


def to_sign_in(request: Request[Any, Any, Any]) -> Redirect:
    """303 to the sign-in page, which brings the person back to this page once signed in."""
    return Redirect(f"{SIGN_IN_PAGE}?next={quote(request.url.path)}", status_code=303,
                    headers={"Cache-Control": "no-store"})


ORG_COOKIE = "bmms_org"
"""The organisation the dashboard's server-rendered pages act in (set by the organisation switcher)."""


async def page_principal(request: Request[Any, Any, Any], services: EdgeServices) -> Principal | None:
    """The signed-in person of a dashboard page (their session cookie), in the organisation the switcher chose
    (the `bmms_org` cookie) when they are still a member of it, else in their first; None when nobody is signed
    in. The cookie is no credential: the membership is checked on every page."""
    principal = await services.authenticator.session_principal(request)
    org = request.cookies.get(ORG_COOKIE)
    if principal is None or not org or org == principal.org_id or not SUBJECT_TOKEN_RE.match(org):
        return principal
    try:
        return await services.authenticator.principal(session_token(request), org)
    except Problem:
        log.info("dashboard page: %s is no longer in %s; showing their first organisation", principal.subject, org)
        return principal


class DashboardController(Controller):
    """The servers list, a new server, a build, a server."""

    path = DASHBOARD
    include_in_schema = False

    @get("/", summary="Servers")
    async def servers(self, request: Request[Any, Any, Any], services: NamedDependency[EdgeServices]) -> Response[Any]:
        """The organisation's servers: status, URL, current version, calls today."""
        principal = await page_principal(request, services)
        if principal is None:
            return to_sign_in(request)
        return dashboard_page("servers.html", principal, title="Servers", active="servers")

    @get("/new", summary="New server")
    async def new_server(self, request: Request[Any, Any, Any], services: NamedDependency[EdgeServices]
                         ) -> Response[Any]:
        """Describe a server in plain words, from an OpenAPI document, or as a tool spec."""
        principal = await page_principal(request, services)
        if principal is None:
            return to_sign_in(request)
        return dashboard_page("new.html", principal, title="New server", active="new")

    @get("/builds/{build_id:str}", summary="A build")
    async def build(self, build_id: FromPath[str], request: Request[Any, Any, Any],
                    services: NamedDependency[EdgeServices]) -> Response[Any]:
        """A build's steps and log, live from its event stream."""
        principal = await page_principal(request, services)
        if principal is None:
            return to_sign_in(request)
        return dashboard_page("build.html", principal, title="Build", active="servers", build_id=build_id)

    @get("/servers/{server_id:str}", summary="A server")
    async def server(self, server_id: FromPath[str], request: Request[Any, Any, Any],
                     services: NamedDependency[EdgeServices]) -> Response[Any]:
        """A server: versions and their tool changes, rollback, stop/start/delete, logs, secrets, Connect.

        The server is read here once (its name and URL never change) for the Connect section and the title;
        the rest of the page reads the JSON API from the browser and stays current after each action."""
        principal = await page_principal(request, services)
        if principal is None:
            return to_sign_in(request)
        try:
            server = await server_of(services.bus, principal, server_id)
        except Problem as problem:
            if problem.status != 404:
                raise
            return message_page("No such server", f"There is no server {server_id[:80]} in your organisation.",
                                404, link=Link(DASHBOARD, "Your servers"),
                                headers={"Content-Security-Policy": DASHBOARD_CSP})
        return dashboard_page("server.html", principal, title=server.name, active="servers", server=server,
                              connect=connect_options(server.name, server.url))
