"""The browser harness itself: Debian's chromium starts under Playwright, and a console error fails a test."""

from __future__ import annotations

import pytest
from playwright.async_api import Page

from tests.conftest import Stack
from tests.gateway.conftest import gateway_settings, serving


async def test_the_sign_in_page_renders_in_a_real_browser_without_console_errors(stack: Stack, page: Page) -> None:
    async with serving(gateway_settings(stack)) as gw:
        await page.goto(f"{gw.base_url}/sign-in")
        email = page.get_by_label("Email")
        await email.fill("someone@example.com")
        assert await email.input_value() == "someone@example.com"
        assert "chromium" in (await page.evaluate("navigator.userAgent")).lower() or \
            "headless" in (await page.evaluate("navigator.userAgent")).lower()


async def test_a_page_error_is_seen_by_the_harness(page: Page) -> None:
    await page.set_content("<p>x</p>")
    await page.evaluate("setTimeout(() => { throw new Error('boom') }, 0)")
    await page.wait_for_function("true")
    await page.wait_for_timeout(50)  # the browser's own event loop turn, not a wait for our code
    errors = page.console_errors  # type: ignore[attr-defined]
    assert any("boom" in e for e in errors)
    errors.clear()  # seen: the fixture's own check would otherwise fail this test


@pytest.mark.parametrize("page", [375], indirect=True)
async def test_a_phone_width_page_can_be_asked_for(page: Page) -> None:
    assert (await page.evaluate("window.innerWidth")) == 375
