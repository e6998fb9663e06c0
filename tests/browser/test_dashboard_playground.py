"""The playground and the usage page in a real browser: a server's tools listed and one called through its public
URL with the person's own first-party OAuth token (the request and the result shown), then the call counted on the
usage page. One platform (process backend) for the module."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.dashboard_support import (
    DashboardPlatform,
    Person,
    as_person,
    fits_the_width,
    screenshot,
    settled_build,
    signed_in_person,
    start_build,
)
from tests.conftest import eventually


@pytest.fixture(scope="module")
async def person(chromium: Browser, platform: DashboardPlatform) -> Person:
    return await signed_in_person(chromium, platform, "player")


def repeater(name: str) -> dict[str, Any]:
    """A tool-spec build of one tool taking a string, an integer and a boolean."""
    return {"name": name, "source": {"kind": "tool_spec", "tools": [{
        "name": "repeat", "description": "Repeat a text.",
        "parameters": [{"name": "text", "type": "string", "description": "what to repeat"},
                       {"name": "times", "type": "integer"},
                       {"name": "shout", "type": "boolean", "required": False}],
        "implementation": {"kind": "function",
                           "body": "said = (text.upper() if shout else text)\nreturn ' '.join([said] * times)"},
    }]}}


@pytest.fixture(scope="module")
async def server_id(platform: DashboardPlatform, person: Person) -> str:
    summary = await settled_build(platform, person, await start_build(platform, person, repeater("Parrot")))
    assert summary["status"] == "deployed", summary
    return str(summary["server_id"])


async def test_a_tool_is_called_in_the_playground_and_the_call_is_counted_on_the_usage_page(
    page: Page, platform: DashboardPlatform, person: Person, server_id: str
) -> None:
    await as_person(page, platform, person)
    await page.goto(f"{platform.base_url}/dashboard/servers/{server_id}/playground")
    await expect(page.get_by_role("status").filter(has_text="1 tool")).to_be_visible()
    await expect(page.get_by_role("button", name="repeat")).to_be_visible()
    # The form follows the input schema: a text, a whole number, a boolean as a choice; required ones marked.
    await expect(page.get_by_label("text (required)")).to_be_visible()
    await expect(page.get_by_label("shout")).to_have_js_property("tagName", "SELECT")
    await page.get_by_label("times (required)").fill("2")
    await page.get_by_role("button", name="Call tool").click()
    await expect(page.get_by_role("alert").filter(has_text="text is required")).to_be_visible()
    await page.get_by_label("text (required)").fill("hello")
    await page.get_by_label("shout").select_option("true")
    await page.get_by_role("button", name="Call tool").click()
    await expect(page.locator("#result-content")).to_have_text("HELLO HELLO")
    await expect(page.locator("#result-state")).to_have_text("isError: false")
    request = page.get_by_label("JSON-RPC request")
    await expect(request).to_contain_text('"method": "tools/call"')
    await expect(request).to_contain_text('"times": 2')
    await expect(page.get_by_label("structuredContent")).to_have_text("(none)")  # a text result has none
    await screenshot(page, "playground")
    # The token stayed in the page's memory: nothing in its storage holds it.
    stored = await page.evaluate("JSON.stringify(window.localStorage) + JSON.stringify(window.sessionStorage)")
    assert "eyJ" not in stored

    async def counted() -> bool:
        usage = (await platform.http.get("/v1/usage", headers=person.headers)).json()
        return any(t["tool"] == "repeat" and t["calls"] >= 1 for t in usage["by_tool"])

    await eventually(counted, timeout=60, interval=0.2)
    await page.get_by_role("link", name="Servers").click()  # the list says the server was called today
    listed = page.get_by_role("row").filter(has=page.locator(f'a[href="/dashboard/servers/{server_id}"]'))
    await expect(listed.get_by_role("cell").last).to_have_text("1")
    await page.get_by_role("link", name="Usage").click()
    await expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_visible()
    row = page.locator("#tool-calls tr", has_text="repeat")
    await expect(row.get_by_role("cell")).to_have_text([re.compile(f"repeat.*{server_id}"), "1", "0"])
    await expect(page.get_by_role("img", name=re.compile(r"Tool calls per day .*: 1 in all"))).to_be_visible()
    await expect(page.get_by_role("img", name=re.compile(r"^Tool calls this month: 1 "))).to_be_visible()
    await screenshot(page, "usage")


@pytest.mark.parametrize("page", [375], indirect=True)
async def test_the_usage_page_fits_a_phone(page: Page, platform: DashboardPlatform, person: Person) -> None:
    await as_person(page, platform, person)
    await page.goto(f"{platform.base_url}/dashboard/usage")
    await expect(page.get_by_role("heading", name="Quotas")).to_be_visible()
    await fits_the_width(page)


async def test_no_token_for_another_organisations_server_nor_for_an_api_key(
    chromium: Browser, platform: DashboardPlatform, person: Person, server_id: str
) -> None:
    token_path = f"/dashboard/servers/{server_id}/playground/token"
    mine = await platform.http.post(token_path, headers=person.headers)
    assert mine.status_code == 200 and mine.headers["cache-control"] == "no-store", mine.text
    assert mine.json()["url"].endswith(f"/servers/{server_id}/mcp") and "refresh_token" not in mine.json()
    stranger = await signed_in_person(chromium, platform, "stranger")
    refused = await platform.http.post(token_path, headers=stranger.headers)
    assert refused.status_code == 404, refused.text
    key = await platform.http.post("/v1/api-keys", json={"label": "script"}, headers=person.headers)
    by_key = await platform.http.post(token_path, headers={"Authorization": f"Bearer {key.json()['secret']}"})
    assert by_key.status_code == 403, by_key.text
    # Another site's page cannot have a signed-in browser ask for one.
    cross_site = await platform.http.post(token_path, headers={**person.headers, "Origin": "https://evil.example"})
    assert cross_site.status_code == 403, cross_site.text


def search_document(base_url: str) -> str:
    """One operation whose input has an enum, an array and an object: what the form must offer besides text."""
    return f"""openapi: 3.0.3
info: {{title: Search, version: "1.0"}}
servers: [{{url: "{base_url}"}}]
paths:
  /search:
    post:
      operationId: searchNotes
      summary: Search notes
      parameters:
        - {{name: kind, in: query, required: true, schema: {{type: string, enum: [note, task]}}}}
        - {{name: tags, in: query, schema: {{type: array, items: {{type: string}}}}}}
      requestBody:
        content: {{application/json: {{schema: {{type: object, properties: {{filter: {{type: object}}}}}}}}}}
      responses:
        "200": {{description: found, content: {{application/json: {{schema: {{type: object}}}}}}}}
"""


async def test_the_form_offers_enums_as_choices_and_arrays_as_json_and_shows_a_tool_error(
    page: Page, platform: DashboardPlatform, person: Person
) -> None:
    body = {"name": "Search", "source": {"kind": "openapi", "document": search_document(platform.upstream)}}
    summary = await settled_build(platform, person, await start_build(platform, person, body))
    assert summary["status"] == "deployed", summary
    await as_person(page, platform, person)
    await page.goto(f"{platform.base_url}/dashboard/servers/{summary['server_id']}/playground")
    kind = page.get_by_label("kind (required)")
    await expect(kind).to_have_js_property("tagName", "SELECT")
    await expect(kind.locator("option")).to_have_text(["note", "task"])
    tags = page.get_by_label("tags")
    await expect(tags).to_have_js_property("tagName", "TEXTAREA")
    await tags.fill("[not json")
    await page.get_by_role("button", name="Call tool").click()
    await expect(page.get_by_role("alert").filter(has_text="tags must be valid JSON")).to_be_visible()
    await kind.select_option("task")
    await tags.fill('["a", "b"]')
    await page.get_by_role("button", name="Call tool").click()
    # The notes API has no /search: the upstream's 404 comes back as a tool error, shown as one.
    await expect(page.locator("#result-state")).to_have_text("isError: true")
    await expect(page.get_by_label("JSON-RPC request")).to_contain_text('"kind": "task"')
