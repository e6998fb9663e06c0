"""The organisation page and the organisation switcher in a real browser: an API key created (its secret shown
once), then revoked and refused by the API; a person in two organisations switching between them; the page at a
phone's width. One platform for the module."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.dashboard_support import (
    DashboardPlatform,
    Person,
    as_person,
    fits_the_width,
    screenshot,
    sign_in_in_browser,
    signed_in_person,
)


@pytest.fixture(scope="module")
async def owner(chromium: Browser, platform: DashboardPlatform) -> Person:
    return await signed_in_person(chromium, platform, "owner")


async def me(platform: DashboardPlatform, headers: dict[str, str]) -> httpx.Response:
    return await platform.http.get("/v1/me", headers=headers)


async def test_an_api_key_is_created_with_its_secret_shown_once_then_revoked_and_refused(
    page: Page, platform: DashboardPlatform, owner: Person
) -> None:
    await as_person(page, platform, owner)
    await page.goto(f"{platform.base_url}/dashboard/org")
    await page.get_by_label("Label for a new key").fill("ci deploys")
    await page.get_by_role("button", name="Create API key").click()
    secret = page.locator("#new-key-secret")
    await expect(secret).to_have_text(re.compile(r"^bmms_\w+_\S+$"))
    key = await secret.inner_text()
    assert (await me(platform, {"Authorization": f"Bearer {key}"})).status_code == 200
    await expect(page.get_by_role("cell", name="ci deploys", exact=True)).to_be_visible()

    await page.get_by_role("button", name="Revoke the key ci deploys").click()
    await page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    await expect(page.get_by_role("cell", name="ci deploys", exact=True)).to_have_count(0)
    await expect(secret).to_be_hidden()  # shown once: gone with the key
    refused = await me(platform, {"Authorization": f"Bearer {key}"})
    assert refused.status_code == 401, refused.text


async def test_a_person_in_two_organisations_switches_between_them(
    chromium: Browser, page: Page, platform: DashboardPlatform, owner: Person
) -> None:
    owners_org = (await me(platform, owner.headers)).json()
    invited = f"guest-{owners_org['org_id']}@example.com"
    sent = await platform.http.post("/v1/invites", json={"email": invited}, headers=owner.headers)
    assert sent.status_code == 201, sent.text
    # Signing in accepts the invitation: the guest has their own organisation (first) and the owner's.
    context = await chromium.new_context()
    try:
        guest = await sign_in_in_browser(await context.new_page(), platform, invited)
    finally:
        await context.close()
    await as_person(page, platform, guest)
    await page.goto(f"{platform.base_url}/dashboard/org")
    own_name = (await me(platform, guest.headers)).json()["orgs"][0]["name"]
    await expect(page.locator("#org-name")).to_contain_text(f"{own_name} · you are owner")
    switcher = page.get_by_label("Organisation", exact=True)
    await expect(switcher).to_be_visible()
    their_name = next(o["name"] for o in owners_org["orgs"] if o["org_id"] == owners_org["org_id"])
    await switcher.select_option(label=f"{their_name} (member)")
    await expect(page.locator("#org-name")).to_contain_text(f"{their_name} · you are member")
    # A member sees no invitations to manage, and the owner among the people.
    await expect(page.get_by_role("heading", name="Invitations")).to_be_hidden()
    await expect(page.get_by_role("cell", name=owner.email, exact=True)).to_be_visible()
    # Server-rendered pages follow the switch too (the cookie they read).
    chosen = {c["name"]: c["value"] for c in await page.context.cookies()}
    assert chosen.get("bmms_org") == owners_org["org_id"]
    await page.get_by_role("link", name="Usage").click()
    await expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_visible()
    await expect(switcher).to_have_value(owners_org["org_id"])


@pytest.mark.parametrize("page", [375], indirect=True)
async def test_the_organisation_page_fits_a_phone(page: Page, platform: DashboardPlatform, owner: Person) -> None:
    await as_person(page, platform, owner)
    await page.goto(f"{platform.base_url}/dashboard/org")
    await expect(page.get_by_role("cell", name=f"{owner.email} (you)", exact=True)).to_be_visible()
    await expect(page.get_by_role("cell", name=re.compile(r"\(this one\)$"))).to_be_visible()
    await fits_the_width(page)
    await screenshot(page, "organisation-phone")


async def test_a_remembered_organisation_the_person_is_not_in_is_ignored_by_the_pages(
    platform: DashboardPlatform, owner: Person
) -> None:
    for org in ("o0123456789abcdef", "not an id"):
        shown = await platform.http.get("/dashboard/usage", headers={"Cookie": f"{owner.headers['Cookie']}; "
                                                                               f"bmms_org={org}"})
        assert shown.status_code == 200 and "<h1>Usage</h1>" in shown.text, shown.text


async def test_an_invitation_is_sent_and_withdrawn_and_the_last_owner_keeps_the_role(
    page: Page, platform: DashboardPlatform, owner: Person
) -> None:
    await as_person(page, platform, owner)
    await page.goto(f"{platform.base_url}/dashboard/org")
    await page.get_by_label("Email address to invite").fill("later@example.com")
    await page.get_by_role("button", name="Invite").click()
    await expect(page.get_by_role("cell", name="later@example.com", exact=True)).to_be_visible()
    await page.get_by_role("button", name="Withdraw the invitation of later@example.com").click()
    await expect(page.get_by_text("No pending invitations.")).to_be_visible()

    role = page.get_by_label(f"Role of {owner.email}")
    await role.select_option("member")
    await expect(page.get_by_role("alert").filter(has_text="last owner cannot become a member")).to_be_visible()
    await expect(page.get_by_label(f"Role of {owner.email}")).to_have_value("owner")
    # The browser logs the refused request itself (a 409); that refusal is what this test asks for.
    errors: list[str] = page.console_errors  # type: ignore[attr-defined]  # set by the page fixture
    errors[:] = [e for e in errors if "status of 409" not in e]
