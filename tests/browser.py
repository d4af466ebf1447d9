"""Shared pieces for the real-browser tests: Debian's Chromium driven by Playwright (no tests here)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
# The README's screenshots are refreshed only on request (DERLINK_SCREENSHOTS=1 pytest ...), so that a test
# run leaves the working tree as it was; otherwise the pages are still captured, to a temporary directory.
SHOTS = (
    Path(__file__).resolve().parent.parent / "docs" / "screenshots"
    if os.environ.get("DERLINK_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "derlink-screenshots"
)

needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian chromium (.ci/run installs it)"
)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium for one test (about a second to start), closed afterwards."""
    from playwright.async_api import async_playwright

    pw = await async_playwright().start()
    browser = await pw.chromium.launch(
        executable_path=CHROMIUM,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run"],
    )  # fmt: skip
    try:
        yield browser
    finally:
        await browser.close()
        await pw.stop()


async def assert_no_sideways_scroll(page: Any, width: int = 400) -> None:
    """On a phone the page must not scroll sideways; the message names the elements that stick out
    (a table inside a ``.scroll`` box may scroll on its own)."""
    scroll = int(await page.evaluate("document.documentElement.scrollWidth"))
    wide = await page.evaluate(
        """(w) => [...document.querySelectorAll('main *')].filter(e => e.getBoundingClientRect().right > w
        && !e.closest('.scroll')).slice(0, 5).map(e => e.tagName + '.' + e.className)""",
        width,
    )
    assert scroll <= width, f"{page.url} is {scroll} px wide on a phone: {wide}"


async def tab_to(page: Any, selector: str, limit: int = 60) -> None:
    """Press Tab until the focused element matches ``selector``: it is reachable from the keyboard."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        if await page.evaluate("(s) => document.activeElement?.matches(s) ?? false", selector):
            return
    raise AssertionError(f"{selector} is not reachable with Tab within {limit} presses")


async def focus_outline(page: Any) -> str:
    """The focused element's outline style: keyboard users must see where they are."""
    return str(await page.evaluate("getComputedStyle(document.activeElement).outlineStyle"))
