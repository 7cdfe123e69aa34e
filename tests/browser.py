"""Debian's Chromium, driven by Playwright (never a downloaded browser), and what tests read
from the pages it draws: CSP violations and console errors, element boxes, painted pixels."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
# Headless as root, with nothing reaching out to the (closed) network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, site_url: str) -> Iterator[Page]:
    """A page of its own (a fresh browser context) on `site_url`, the server a test module
    drives (each such module defines that fixture); it may use the clipboard."""
    context = browser.new_context(base_url=site_url)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site_url)
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


@pytest.fixture
def problems(page: Page) -> PageProblems:
    return PageProblems(page)


# Collects what the page's Content-Security-Policy refused (the event fires in every frame
# before the console message, so nothing is missed between navigations).
_RECORD_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) => {
  const seen = JSON.parse(sessionStorage.getItem("csp-violations") || "[]");
  seen.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} on ${location.pathname}`);
  sessionStorage.setItem("csp-violations", JSON.stringify(seen));
});
"""


class PageProblems:
    """Console errors and CSP violations of a page, over every navigation it makes."""

    def __init__(self, page: Page) -> None:
        self.console_errors: list[str] = []
        self.csp_reports: list[str] = []
        page.add_init_script(_RECORD_CSP_VIOLATIONS)
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(f"{message.text} ({message.location.get('url')})")

    def csp_violations(self, page: Page) -> list[str]:
        """Violations on the current page (read from it) and any the console reported."""
        on_page = page.evaluate("JSON.parse(sessionStorage.getItem('csp-violations') || '[]')")
        in_console = [m for m in self.console_errors if "Content Security Policy" in m]
        return [*on_page, *in_console]


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    width: float
    height: float

    @property
    def right(self) -> float:
        return self.x + self.width

    @property
    def bottom(self) -> float:
        return self.y + self.height

    def holds(self, other: Box, slack: float = 0.5) -> bool:
        return (
            other.x >= self.x - slack
            and other.y >= self.y - slack
            and other.right <= self.right + slack
            and other.bottom <= self.bottom + slack
        )

    def overlaps(self, other: Box) -> bool:
        return not (
            other.x >= self.right
            or other.right <= self.x
            or other.y >= self.bottom
            or other.bottom <= self.y
        )


def box_of(locator: Locator) -> Box:
    """Where the element is drawn on the page, in CSS pixels (it must be visible)."""
    found = locator.bounding_box()
    assert found is not None, f"{locator} is not drawn"
    return Box(found["x"], found["y"], found["width"], found["height"])


def viewport_of(page: Page) -> Box:
    size = page.viewport_size
    assert size is not None
    return Box(0, 0, size["width"], size["height"])


def screenshot_pixels(locator: Locator) -> Image.Image:
    """The element as the browser painted it (RGB, one pixel per CSS pixel)."""
    return Image.open(io.BytesIO(locator.screenshot())).convert("RGB")


def pixels_near(image: Image.Image, colour: tuple[int, int, int], box: Box | None = None) -> int:
    """How many pixels (in `box`, relative to the image) are within 40 of `colour`."""
    if box is not None:
        image = image.crop((round(box.x), round(box.y), round(box.right), round(box.bottom)))
    distance = np.abs(np.asarray(image, dtype=np.int16) - np.array(colour)).sum(axis=-1)
    return int((distance <= 40).sum())
