"""The web page (GET /) in headless Chromium, driven by Playwright: the one helper that the page
test (tests/test_page.py) and the README screenshot (scripts/page_screenshot.py) share.

Playwright's own browser download is not used: it launches the system Chromium, Debian's
`chromium-headless-shell` (what .ci/run installs) or `chromium`, found on PATH.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
INSTALL = "apt-get install chromium-headless-shell (Debian), or put chromium on PATH"
RUN_TIMEOUT_MS = 120_000  # one run of the page: a face's three calls, or a photo's two


def find_chromium() -> str | None:
    """The first Chromium on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def missing_browser() -> str | None:
    """Why the page cannot be driven here (no Playwright, no Chromium), or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    if find_chromium() is None:
        return f"no Chromium on PATH ({', '.join(BROWSERS)}): {INSTALL}"
    return None


@contextmanager
def open_page(url: str, width: int = 1000, height: int = 1200) -> Iterator[Page]:
    """The page at `url` in a fresh headless Chromium; a JavaScript error fails the block."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium())
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            yield page
        finally:
            browser.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def run(page: Page, image: Path, mode: str, key: str = "", reference: Path | None = None,
        fields: dict[str, str] | None = None) -> str | None:
    """Fill the form (mode `face` or `photo`, the API key, optional reference and other
    fields by element id), press the button and wait until the run ends; the error the page
    shows, or None."""
    page.set_input_files("#image", str(image))
    page.wait_for_selector("#image[data-guessed]", state="attached")  # the page's own guess
    page.check(f"input[name=mode][value={mode}]")
    page.fill("#api-key", key)
    page.set_input_files("#reference", [str(reference)] if reference else [])
    for element, value in (fields or {}).items():
        page.fill(f"#{element}", value)
    page.click("#run")
    page.wait_for_function("""() => {
        const error = document.getElementById("error");
        return !error.hidden || document.getElementById("status").textContent.startsWith("done");
    }""", timeout=RUN_TIMEOUT_MS)
    error = page.locator("#error")
    return error.inner_text() if error.is_visible() else None
