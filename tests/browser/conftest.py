"""A real browser for the pages: Debian's chromium (`/usr/bin/chromium`, installed by `.ci/run`) driven by
Playwright, which never downloads a browser of its own.

`page` is a fresh browser context (no cookies) at a phone's width or a desktop's; any console error or uncaught
page error fails the test that saw it, and a failed test leaves a screenshot named after it in
`ci-artifacts/screenshots/` (CI keeps that directory as an artifact).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.browser.dashboard_support import DashboardPlatform, dashboard_platform
from tests.conftest import Stack

CHROMIUM = os.environ.get("BMMS_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "ci-artifacts" / "screenshots"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report: pytest.TestReport = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage"],  # as root in CI; /dev/shm is small in containers
        )
        try:
            yield browser
        finally:
            await browser.close()


class ConsoleErrors(list[str]):
    """What the page wrote to the console as errors, and its uncaught errors."""


@pytest.fixture
async def page(chromium: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A page in a fresh context; `page.console_errors` collects errors, which fail the test at its end."""
    width = getattr(request, "param", 1280)
    context = await chromium.new_context(viewport={"width": width, "height": 900})
    page = await context.new_page()
    errors = ConsoleErrors()
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.console_errors = errors  # type: ignore[attr-defined]  # carried on the page for the test to read
    try:
        yield page
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-180:]
            await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        await context.close()
    assert not errors, f"the page logged errors: {errors}"


@pytest.fixture(scope="module")
async def platform(stack: Stack) -> AsyncIterator[DashboardPlatform]:
    """A platform with its dashboard for each module of page tests (process backend)."""
    async with dashboard_platform(stack) as running_platform:
        yield running_platform
