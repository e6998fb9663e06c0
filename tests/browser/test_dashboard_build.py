"""The dashboard in a real browser, from signing in to a deployed server: a new server from a tool spec watched live
on the build page, an OpenAPI document narrowed to two operations in the picker, and a build page that resumes
after its WebSocket drops with every log line once. One platform (process backend) for the module."""

from __future__ import annotations

import json
import re

import pytest
from playwright.async_api import Browser, Page, WebSocketRoute, expect

from bus_schemas.registry import BUILD_EVENTS, BUILDS
from tests.browser.dashboard_support import (
    DashboardPlatform,
    Person,
    as_person,
    fits_the_width,
    notes_document,
    screenshot,
    server_json,
    settled_build,
    sign_in_in_browser,
    signed_in_person,
    start_build,
    tool_spec_body,
)

DEPLOYED = 180_000
"""How long a page may take to show a build deployed (ms): a first build's check warms mypy."""

LINE_KINDS = frozenset({"requested", "log", "planned", "generated", "checked", "deployed", "failed"})
"""The build events the build page shows as a log line (step events move the step bar only)."""


async def line_sequences(platform: DashboardPlatform, org_id: str, build_id: str) -> list[int]:
    """The stream sequences of a deployed build's events that the build page shows as log lines."""
    sub = await platform.admin.jetstream().subscribe(BUILD_EVENTS.wildcard(org=org_id, build=build_id),
                                                     stream=BUILDS.name, ordered_consumer=True)
    sequences: list[int] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            kind = msg.subject.rsplit(".", 1)[-1]
            if kind in LINE_KINDS:
                sequences.append(msg.metadata.sequence.stream)
            if kind == "deployed":
                return sequences
    finally:
        await sub.unsubscribe()


@pytest.fixture(scope="module")
async def person(chromium: Browser, platform: DashboardPlatform) -> Person:
    return await signed_in_person(chromium, platform, "builder")


async def test_a_stranger_signs_in_through_the_emailed_link_and_lands_on_an_empty_servers_list(
    page: Page, platform: DashboardPlatform
) -> None:
    await sign_in_in_browser(page, platform, "first-visit@example.com")
    await expect(page.get_by_role("heading", name="No servers yet")).to_be_visible()
    await expect(page.get_by_role("link", name="Create your first server")).to_have_attribute("href", "/dashboard/new")
    await expect(page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Servers")
                 ).to_have_attribute("aria-current", "page")


async def test_a_tool_spec_server_is_built_and_its_step_bar_reaches_deployed_live(
    page: Page, platform: DashboardPlatform, person: Person
) -> None:
    await as_person(page, platform, person)
    await page.goto(f"{platform.base_url}/dashboard/new")
    await page.get_by_label("Server name").fill("Calculator")
    await page.get_by_role("tab", name="Tool spec").click()
    await expect(page.get_by_label("Tool spec (JSON)")).to_have_value(re.compile('"name": "add"'))  # the example
    await page.get_by_role("button", name="Build the server").click()

    await expect(page).to_have_url(re.compile(r"/dashboard/builds/[^/]+$"))
    steps = page.get_by_role("list", name="Build steps")
    await expect(steps.locator("li[data-step=deploy]")).to_have_class(re.compile(r"\bdone\b"), timeout=DEPLOYED)
    for step in ("plan", "generate", "check", "deploy"):
        await expect(steps.locator(f"li[data-step={step}] .state")).to_have_text(re.compile(r"^done in \d"))
    await expect(page.locator("#build-status")).to_have_text("deployed")
    await expect(page.get_by_role("heading", name="Deployed: version 1 is live")).to_be_visible()
    url = await page.locator("#server-url").text_content()
    assert url and url.startswith(platform.base_url + "/servers/") and url.endswith("/mcp")
    log = page.get_by_role("log", name="Build log")
    await expect(log).to_contain_text("Planned 2 tools")
    await expect(log).not_to_contain_text('"kind"')  # readable lines, not the events' JSON
    await expect(page.get_by_role("link", name=re.compile("^Connect it to"))).to_have_attribute(
        "href", re.compile(r"^/dashboard/servers/[^/]+#connect$"))
    await screenshot(page, "build-page")
    await page.get_by_role("button", name="Copy the server URL").click()
    await expect(page.get_by_role("status").filter(has_text="Copied")).to_be_visible()


async def test_an_openapi_server_has_exactly_the_two_operations_chosen_in_the_picker(
    page: Page, platform: DashboardPlatform, person: Person
) -> None:
    await as_person(page, platform, person)
    await page.goto(f"{platform.base_url}/dashboard/new")
    await page.get_by_label("Server name").fill("Notes")
    await page.get_by_label("Paste it").check()
    await page.get_by_label("OpenAPI document text (YAML or JSON)").fill(notes_document(platform.upstream))
    await page.get_by_role("button", name="Show its operations").click()

    picker = page.locator("#picker")
    await expect(picker.get_by_role("checkbox")).to_have_count(3)
    total = page.locator("#token-total")
    await expect(total).to_contain_text("3 of 3 tools chosen")
    boxes = {name: picker.get_by_role("checkbox", name=re.compile(f"^{name} ")) for name in ("list_notes", "get_note",
                                                                                              "delete_note")}
    tokens = {name: int(await box.get_attribute("data-tokens") or 0) for name, box in boxes.items()}
    await boxes["delete_note"].uncheck()
    await expect(total).to_have_text(f"2 of 3 tools chosen: about {tokens['list_notes'] + tokens['get_note']} tokens")
    await expect(page.get_by_role("heading", name="Secrets the server needs")).to_be_visible()
    await page.get_by_label("NOTES_KEY").fill("key-from-the-new-page")
    await page.get_by_role("button", name="Build the server").click()

    await expect(page).to_have_url(re.compile(r"/dashboard/builds/[^/]+$"))
    await expect(page.locator("#build-status")).to_have_text("deployed", timeout=DEPLOYED)
    server_link = page.get_by_role("link", name="Open the server page")
    server_id = (await server_link.get_attribute("href") or "").rsplit("/", 1)[-1]
    server = await server_json(platform, person, server_id)
    (version,) = server["versions"]
    assert version["tool_count"] == 2
    assert sorted(version["tool_changes"]["added"]) == ["get_note", "list_notes"]
    secrets = (await platform.http.get(f"/v1/servers/{server_id}/secrets", headers=person.headers)).json()
    assert secrets["missing"] == [] and [s["name"] for s in secrets["secrets"]] == ["NOTES_KEY"]


async def test_an_openapi_document_is_read_from_an_upload_or_a_url_for_the_picker(
    page: Page, platform: DashboardPlatform, person: Person
) -> None:
    await as_person(page, platform, person)
    await page.goto(f"{platform.base_url}/dashboard/new")
    picker = page.locator("#picker").get_by_role("checkbox")
    await page.get_by_label("OpenAPI file (YAML or JSON)").set_input_files(files=[{
        "name": "notes.yaml", "mimeType": "application/yaml", "buffer": notes_document(platform.upstream).encode()}])
    await page.get_by_role("button", name="Show its operations").click()
    await expect(picker).to_have_count(3)

    await page.get_by_label("From a URL").check()
    await expect(page.locator("#preview")).to_be_hidden()  # another source: the picker starts over
    await page.get_by_label("Document URL").fill(f"{platform.upstream}/openapi.yaml")
    await page.get_by_role("button", name="Show its operations").click()
    await expect(picker).to_have_count(3)
    await expect(page.locator("#flags-box")).to_be_hidden()

    await page.get_by_label("Document URL").fill(f"{platform.upstream}/missing.yaml")
    await page.get_by_role("button", name="Show its operations").click()
    await expect(page.locator("#preview-error")).to_contain_text("404")  # the planner's reason, in words
    errors = page.console_errors  # type: ignore[attr-defined]  # the harness's list (tests/browser/conftest.py)
    refused = [e for e in errors if "status of 422" in e]  # the browser logs the refused preview request itself
    assert refused, errors
    for error in refused:
        errors.remove(error)


@pytest.mark.parametrize("page", [375], indirect=True)
async def test_the_build_page_resumes_after_its_socket_drops_with_every_line_once(
    page: Page, platform: DashboardPlatform, person: Person
) -> None:
    build_id = await start_build(platform, person, tool_spec_body("Echoes", "echo", "repeat"))
    opened: list[str] = []
    relayed: list[int] = []

    async def drop_after_three_frames(socket: WebSocketRoute) -> None:
        opened.append(socket.url)
        server = socket.connect_to_server()
        if len(opened) > 1:
            return  # the reconnection: passed through as it is

        async def relay(message: str | bytes) -> None:
            if len(relayed) == 3:
                return
            socket.send(message)
            relayed.append(json.loads(message)["seq"])
            if len(relayed) == 3:
                await socket.close(code=1001, reason="going away")  # the page sees its connection dropped

        server.on_message(relay)

    await page.route_web_socket(re.compile(r"/v1/builds/[^/]+/stream"), drop_after_three_frames)
    await as_person(page, platform, person)
    await page.goto(f"{platform.base_url}/dashboard/builds/{build_id}")
    await expect(page.locator("#build-status")).to_have_text("deployed", timeout=DEPLOYED)

    assert len(opened) == 2, opened
    assert opened[0].endswith("?after=0") and opened[1].endswith(f"?after={relayed[-1]}"), (opened, relayed)
    shown = [int(seq) for seq in await page.locator("#log li").evaluate_all("items => items.map(i => i.dataset.seq)")]
    summary = await settled_build(platform, person, build_id)
    assert summary["status"] == "deployed"
    org_id = (await platform.http.get("/v1/me", headers=person.headers)).json()["org_id"]
    assert shown == await line_sequences(platform, org_id, build_id)  # every line once, in order, none missing
    await fits_the_width(page)


async def test_a_failed_build_says_at_which_step_and_why(page: Page, platform: DashboardPlatform, person: Person
                                                          ) -> None:
    tool = {"name": "run", "description": "Run a text.", "parameters": [{"name": "text", "type": "string"}],
            "implementation": {"kind": "function", "body": "return eval(text)"}}
    build_id = await start_build(platform, person, {"name": "Broken", "source": {"kind": "tool_spec", "tools": [tool]}})
    await as_person(page, platform, person)
    await page.goto(f"{platform.base_url}/dashboard/builds/{build_id}")
    failure = page.get_by_role("alert").filter(has_text="The build failed")
    await expect(failure.get_by_role("heading")).to_have_text("The build failed at the Check step", timeout=DEPLOYED)
    await expect(failure).to_contain_text("eval")
    await expect(page.locator("#build-status")).to_have_text("failed")
    await expect(page.get_by_role("list", name="Build steps").locator("li[data-step=check]")).to_have_class(
        re.compile(r"\bfailed\b"))
    await expect(page.locator("#log li.failure").last).to_contain_text("eval")


async def test_dashboard_pages_send_strangers_to_sign_in_and_allow_no_inline_script(
    platform: DashboardPlatform, person: Person
) -> None:
    for path in ("/dashboard", "/dashboard/new", "/dashboard/builds/b0123", "/dashboard/servers/s0123"):
        stranger = await platform.http.get(path)
        assert (stranger.status_code, stranger.headers["location"]) == (303, f"/sign-in?next={path}"), path
    page = await platform.http.get("/dashboard/new", headers=person.headers)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "connect-src 'self';" in policy and "unsafe" not in policy
    missing = await platform.http.get("/dashboard/servers/s0123", headers=person.headers)
    assert missing.status_code == 404 and "No such server" in missing.text
