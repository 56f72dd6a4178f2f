"""Browser peer: Debian's Chromium driven by Playwright for Python.

``chromium_server`` (session): one Chromium, started once per pytest process by
Playwright's own ``launch-server`` (so it gets Playwright's usual switches), on
a loopback port, stopped by its PID at session end (it closes Chromium).
Launching Chromium costs seconds on a loaded machine; a browser context costs
a fraction of that.

``desk_browser`` (function): opens pages, each in its own browser context (its
own cookies, local storage and cache: two agents never share storage),
connected to that shared Chromium; every context is closed after the test.
Playwright's own browser download is never used: the executable is
/usr/bin/chromium, and a missing one fails the test.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright._impl._driver import compute_driver_executable, get_driver_env
from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright

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
SERVER_START_TIMEOUT = 90.0


class DeskBrowser:
    """Pages for one test; ``ws_endpoint``: the shared Chromium (None: launch one per page)."""

    def __init__(self, playwright: Playwright, ws_endpoint: str | None = None) -> None:
        self._pw = playwright
        self._ws_endpoint = ws_endpoint
        self._browser: Browser | None = None
        self._contexts: list[BrowserContext] = []
        self._dirs: list[str] = []
        self.dialogs: list[str] = []

    async def _new_context(self) -> BrowserContext:
        if self._ws_endpoint is None:
            profile = tempfile.mkdtemp(prefix="cti-chromium-")
            self._dirs.append(profile)
            return await self._pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport=VIEWPORT,  # type: ignore[arg-type]
                timeout=60_000,
            )
        if self._browser is None:
            self._browser = await self._pw.chromium.connect(self._ws_endpoint, timeout=60_000)
        return await self._browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]

    async def new_page(self) -> Page:
        context = await self._new_context()
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
        if self._browser is not None:
            await self._browser.close()  # disconnects; the shared Chromium goes on
        for profile in self._dirs:
            shutil.rmtree(profile, ignore_errors=True)


def _check_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")


def _read_endpoint(proc: subprocess.Popen[bytes], log: Path) -> str:
    """The ws:// endpoint ``playwright launch-server`` prints once Chromium is up."""
    assert proc.stdout is not None
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    out = b""
    while time.monotonic() < deadline and b"\n" not in out:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            out += chunk
    line = out.decode(errors="replace").strip()
    if line.startswith("ws://"):
        return line.splitlines()[0]
    _stop_server(proc)
    err = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    pytest.fail(f"Chromium (playwright launch-server) did not start: {line!r}\n{err}",
                pytrace=False)


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server (it closes its Chromium first), SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture(scope="session")
def chromium_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The ws:// endpoint of one headless Chromium shared by the session's tests."""
    _check_chromium()
    base = tmp_path_factory.mktemp("chromium")
    config = base / "launch-server.json"
    config.write_text(json.dumps({
        "executablePath": str(CHROMIUM), "headless": True, "args": CHROMIUM_ARGS,
        "host": "127.0.0.1", "port": 0, "timeout": 60_000,
    }), encoding="utf-8")
    log = base / "launch-server.log"
    # The driver's node itself (not `python -m playwright`, which would leave node
    # behind on SIGTERM): on SIGTERM it closes Chromium and every Chromium child.
    node, cli = compute_driver_executable()
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [node, cli, "launch-server", "--browser", "chromium", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
            env=get_driver_env(),
        )
    try:
        yield _read_endpoint(proc, log)
    finally:
        _stop_server(proc)


@pytest.fixture
async def desk_browser(chromium_server: str) -> AsyncIterator[DeskBrowser]:
    async with async_playwright() as playwright:
        browser = DeskBrowser(playwright, chromium_server)
        try:
            yield browser
        finally:
            await browser.close()
