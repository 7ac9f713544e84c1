"""Debian's Chromium driven by Playwright, for the browser tests (Playwright never downloads a browser here)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    # Without these the closed network refuses Chromium's own connections and slows every page.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextlib.contextmanager
def chromium_page(profile: Path, *, width: int = 1280, height: int = 1000) -> Iterator[Any]:
    """A page of a headless Chromium with a fresh profile; skips the test when Chromium is missing."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed: run `make browser` (apt-get chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )  # fmt: skip
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def screenshot_html(html: Path, png: Path, profile: Path, *, width: int = 1100) -> bool:
    """Save a full-page screenshot of a local HTML file; False (nothing written) without Chromium."""
    if not CHROMIUM.exists():
        return False
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return False
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": 900},
        )  # fmt: skip
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(html.resolve().as_uri())
            page.screenshot(path=str(png), full_page=True)
        finally:
            context.close()
    return True
