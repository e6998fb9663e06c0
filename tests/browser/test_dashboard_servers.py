"""The dashboard's servers in a real browser: the list (at a phone's width), and a server's page: a missing secret
set, a second version rolled back, stop, start and delete each confirmed first, and Connect's install links.
One platform (process backend) for the module; each test builds its own server over the JSON API."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import unquote

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.dashboard_support import (
    DashboardPlatform,
    Person,
    as_person,
    fits_the_width,
    notes_document,
    screenshot,
    server_json,
    settled_build,
    signed_in_person,
    start_build,
    tool_spec_body,
)
from tests.support.sign_in import COOKIE, follow, fresh_email, fresh_ip, session_of


@pytest.fixture(scope="module")
async def person(chromium: Browser, platform: DashboardPlatform) -> Person:
    return await signed_in_person(chromium, platform, "keeper")


async def deployed_server(platform: DashboardPlatform, person: Person, body: dict[str, object]) -> str:
    """Build over the API and wait until deployed; the server id."""
    build_id = await start_build(platform, person, body)
    summary = await settled_build(platform, person, build_id)
    assert summary["status"] == "deployed", summary
    servers = (await platform.http.get("/v1/servers", headers=person.headers)).json()["servers"]
    if "server_id" in body:
        return str(body["server_id"])
    (server_id,) = [s["server_id"] for s in servers if s["name"] == body["name"]]
    return str(server_id)


@pytest.mark.parametrize("page", [375], indirect=True)
async def test_the_servers_list_shows_each_server_at_a_phone_width(
    page: Page, platform: DashboardPlatform, person: Person
) -> None:
    server_id = await deployed_server(platform, person, tool_spec_body("Listed", "echo"))
    server = await server_json(platform, person, server_id)
    await as_person(page, platform, person)
    await page.goto(f"{platform.base_url}/dashboard")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="Listed"))
    await expect(row).to_contain_text("running")
    await expect(row).to_contain_text(server["url"])
    await expect(row.get_by_role("button", name="Copy the URL of Listed")).to_be_visible()
    await fits_the_width(page)
    await row.get_by_role("link", name="Listed").click()
    await expect(page).to_have_url(f"{platform.base_url}/dashboard/servers/{server_id}")
    await expect(page.get_by_role("heading", name="Listed", exact=True)).to_be_visible()
    await fits_the_width(page)


async def test_a_missing_secret_is_marked_and_set_on_the_server_page(
    page: Page, platform: DashboardPlatform, person: Person
) -> None:
    body = {"name": "Keyed notes", "source": {"kind": "openapi", "document": notes_document(platform.upstream)}}
    server_id = await deployed_server(platform, person, body)
    await as_person(page, platform, person)
    await page.goto(f"{platform.base_url}/dashboard/servers/{server_id}")
    secret = page.locator("#secret-list li[data-secret=NOTES_KEY]")
    await expect(secret).to_contain_text("missing")
    await secret.get_by_role("button", name="Set NOTES_KEY").click()
    await expect(page.get_by_label("Name")).to_have_value("NOTES_KEY")
    await page.get_by_label("Value").fill("the-notes-key")
    await page.get_by_role("button", name="Save secret").click()
    await expect(secret).not_to_contain_text("missing")
    await expect(secret.get_by_role("button", name="Rotate NOTES_KEY")).to_be_visible()
    listed = (await platform.http.get(f"/v1/servers/{server_id}/secrets", headers=person.headers)).json()
    assert listed["missing"] == [] and [s["name"] for s in listed["secrets"]] == ["NOTES_KEY"]


async def test_a_second_version_is_rolled_back_from_the_server_page(
    page: Page, platform: DashboardPlatform, person: Person
) -> None:
    server_id = await deployed_server(platform, person, tool_spec_body("Versioned", "echo", "shout"))
    await as_person(page, platform, person)
    await page.goto(f"{platform.base_url}/dashboard/servers/{server_id}")
    await expect(page.locator("#server-version")).to_have_text("version 1")

    await page.get_by_role("link", name="Deploy a new version").click()
    await expect(page.get_by_label("Server name")).to_have_value("Versioned")
    await page.get_by_role("tab", name="Tool spec").click()
    second_spec = tool_spec_body("Versioned", "echo", "scale")["source"]
    await page.get_by_label("Tool spec (JSON)").fill(json.dumps(second_spec))
    await page.get_by_role("button", name="Build the new version").click()
    await expect(page.get_by_role("heading", name="Deployed: version 2 is live")).to_be_visible(timeout=180_000)
    await page.get_by_role("link", name="Open the server page").click()
    await expect(page).to_have_url(f"{platform.base_url}/dashboard/servers/{server_id}")
    await expect(page.locator("#server-version")).to_have_text("version 2")
    second = page.locator("#versions tr[data-version='2']")
    await expect(second).to_contain_text("+ scale added")
    await expect(second).to_contain_text("shout removed")
    await expect(second).to_contain_text("breaking")
    await expect(second).to_contain_text("current")
    await expect(page.locator("#logs")).to_contain_text("INFO tools loaded")  # the runner's log, readable
    await screenshot(page, "server-page", full_page=False)

    await page.get_by_role("button", name="Roll back to version 1").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Roll back to version 1?")
    await dialog.get_by_role("button", name="Roll back to v1").click()
    await expect(page.locator("#server-version")).to_have_text("version 1")
    await expect(page.locator("#versions tr[data-version='1']")).to_contain_text("current")
    assert (await server_json(platform, person, server_id))["version"] == 1


async def test_stop_start_and_delete_each_ask_first(page: Page, platform: DashboardPlatform, person: Person) -> None:
    server_id = await deployed_server(platform, person, tool_spec_body("Lifecycle", "echo"))
    await as_person(page, platform, person)
    await page.goto(f"{platform.base_url}/dashboard/servers/{server_id}")
    state = page.locator("#server-state")
    await expect(state).to_have_text("running")
    dialog = page.get_by_role("dialog")

    await page.get_by_role("button", name="Stop").click()
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()
    await expect(state).to_have_text("running")
    await page.get_by_role("button", name="Stop").click()
    await dialog.get_by_role("button", name="Stop").click()
    await expect(state).to_have_text("stopped")
    assert (await server_json(platform, person, server_id))["state"] == "stopped"

    await page.get_by_role("button", name="Start").click()
    await expect(state).to_have_text("running")

    await page.get_by_role("button", name="Delete", exact=True).click()
    await expect(dialog).to_contain_text("This cannot be undone")
    await dialog.get_by_role("button", name="Delete server").click()
    await expect(page).to_have_url(f"{platform.base_url}/dashboard")
    await expect(page.locator("#servers")).not_to_contain_text("Lifecycle")
    listed = (await platform.http.get("/v1/servers", headers=person.headers)).json()["servers"]
    assert server_id not in [s["server_id"] for s in listed]


async def test_connect_gives_each_client_its_config_and_cursor_and_vs_code_install_links(
    page: Page, platform: DashboardPlatform, person: Person
) -> None:
    server_id = await deployed_server(platform, person, tool_spec_body("Connect Me", "echo"))
    url = (await server_json(platform, person, server_id))["url"]
    await as_person(page, platform, person)
    await page.goto(f"{platform.base_url}/dashboard/servers/{server_id}#connect")
    connect = page.locator("#connect")
    await expect(connect).to_contain_text(f"claude mcp add --transport http connect-me {url}")
    for client in ("Claude Code", "Claude Desktop", "ChatGPT", "Cursor", "VS Code"):
        await expect(connect.get_by_role("heading", name=client, exact=True)).to_be_visible()
        await expect(connect.get_by_role("button", name=f"Copy the {client} configuration")).to_be_visible()
    desktop = json.loads(await connect.locator("pre").filter(has_text="mcpServers").filter(
        has_text="mcp-remote").text_content() or "")
    assert desktop == {"mcpServers": {"connect-me": {"command": "npx", "args": ["-y", "mcp-remote", url]}}}

    cursor = await connect.get_by_role("link", name="Install in Cursor").get_attribute("href") or ""
    match = re.fullmatch(r"cursor://anysphere\.cursor-deeplink/mcp/install\?name=connect-me&config=(.+)", cursor)
    assert match and json.loads(base64.b64decode(unquote(match.group(1)))) == {"url": url}
    vscode = await connect.get_by_role("link", name="Install in VS Code").get_attribute("href") or ""
    assert vscode.startswith("vscode:mcp/install?")
    assert json.loads(unquote(vscode.removeprefix("vscode:mcp/install?"))) == {"name": "connect-me", "type": "http",
                                                                                 "url": url}
    await connect.get_by_role("button", name="Copy the Claude Code configuration").click()
    await expect(page.get_by_role("status").filter(has_text="Copied")).to_be_visible()
    await expect(page.get_by_role("link", name="Open the playground")).to_have_attribute(
        "href", f"/dashboard/servers/{server_id}/playground")


async def test_the_server_page_reads_the_server_in_the_organisation_the_switcher_chose(
    platform: DashboardPlatform, person: Person
) -> None:
    server_id = await deployed_server(platform, person, tool_spec_body("Shared", "echo"))
    org = (await platform.http.get("/v1/me", headers=person.headers)).json()["org_id"]
    member_email = fresh_email("member")
    invited = await platform.http.post("/v1/invites", json={"email": member_email}, headers=person.headers)
    assert invited.status_code == 201, invited.text
    followed = await follow(platform.base_url, await platform.mailbox.link_token(member_email),
                            headers={"X-Forwarded-For": fresh_ip()})
    member = session_of(followed)[COOKIE].value

    chosen = await platform.http.get(f"/dashboard/servers/{server_id}",
                                     headers={"Cookie": f"{COOKIE}={member}; bmms_org={org}"})
    assert chosen.status_code == 200 and "<h1 id=\"server-title\">Shared</h1>" in chosen.text
    own = await platform.http.get(f"/dashboard/servers/{server_id}", headers={"Cookie": f"{COOKIE}={member}"})
    assert own.status_code == 404  # in their own organisation there is no such server
