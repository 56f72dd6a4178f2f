"""Browser peer: Debian's Chromium driven by Playwright for Python.

``desk_browser`` (function): opens pages, each in its own Chromium with a
fresh user-data dir (headless, no sandbox, no background networking), so two
agents never share storage. Playwright's own browser download is never used:
the executable is /usr/bin/chromium, and a missing one fails the test.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, Playwright, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
]
VIEWPORT = {"width": 1366, "height": 768}
TIMEOUT_MS = 20_000


class DeskBrowser:
    def __init__(self, playwright: Playwright) -> None:
        self._pw = playwright
        self._contexts: list[BrowserContext] = []
        self._dirs: list[str] = []
        self.dialogs: list[str] = []

    async def new_page(self) -> Page:
        profile = tempfile.mkdtemp(prefix="cti-chromium-")
        self._dirs.append(profile)
        context = await self._pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,  # type: ignore[arg-type]
            timeout=60_000,
        )
        self._contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.pages[0] if context.pages else await context.new_page()

        async def on_dialog(dialog: object) -> None:
            self.dialogs.append(getattr(dialog, "message", "?"))
            await dialog.dismiss()  # type: ignore[attr-defined]

        page.on("dialog", on_dialog)
        return page

    async def screenshot(self, page: Page, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await page.screenshot(path=str(path))
        return path

    async def close(self) -> None:
        for context in self._contexts:
            await context.close()
        for profile in self._dirs:
            shutil.rmtree(profile, ignore_errors=True)


def _check_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")


@pytest.fixture
async def desk_browser() -> AsyncIterator[DeskBrowser]:
    _check_chromium()
    async with async_playwright() as playwright:
        browser = DeskBrowser(playwright)
        try:
            yield browser
        finally:
            await browser.close()
