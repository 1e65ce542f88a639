"""Open the HTML preview of the committed book in headless Chromium, as a reader would.

Fails on a JavaScript error, a missing image, a failed request or a broken internal link, and
saves screenshots of the index and one chapter. Chromium is Debian's package (``scripts/test.sh``
installs it); without it the test skips, except under CI where that is a failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

from cascade_defect.render import book_appendices, build_preview
from cascade_defect.runner import CHAPTERS

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("CASCADE_SCREENSHOT_DIR", ROOT / ".cache" / "browser-check"))
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _chromium() -> str:
    path = (
        os.environ.get("CASCADE_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if path:
        return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("chromium is not installed; scripts/test.sh installs Debian's chromium package")
    pytest.skip("chromium not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The preview of the committed notebooks, served on loopback."""
    out = build_preview(ROOT, out_dir=tmp_path_factory.mktemp("site"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


def test_every_page_loads_without_errors_missing_images_or_broken_links(site: str) -> None:
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    pages = [
        "index.html",
        *(f"{Path(c.notebook).stem}.html" for c in CHAPTERS),
        *(f"{Path(a).stem}.html" for a in book_appendices(ROOT)),
    ]
    problems: list[str] = []
    visited_links: set[str] = set()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on(
            "pageerror", lambda error: problems.append(f"{page.url}: JavaScript error: {error}")
        )
        page.on(
            "console",
            lambda message: (
                problems.append(f"{page.url}: console error: {message.text}")
                if message.type == "error"
                else None
            ),
        )
        page.on(
            "response",
            lambda response: (
                problems.append(f"{page.url}: HTTP {response.status} for {response.url}")
                if response.status >= 400
                else None
            ),
        )
        page.on(
            "requestfailed",
            lambda request: problems.append(f"{page.url}: request failed: {request.url}"),
        )
        for name in pages:
            response = page.goto(urljoin(site, name), wait_until="load")
            assert response is not None and response.ok, (
                f"{name}: HTTP {response.status if response else '?'}"
            )
            broken_images = page.evaluate(
                "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                ".map(i => (i.getAttribute('src') || '').slice(0, 60))"
            )
            problems += [f"{name}: image not shown: {src}" for src in broken_images]
            without_alt = page.evaluate(
                "Array.from(document.images).filter(i => !(i.alt || '').trim()"
                " || i.alt === 'No description has been provided for this image').length"
            )
            if without_alt:
                problems.append(f"{name}: {without_alt} image(s) without alt text")
            targets = page.evaluate(
                "Array.from(document.querySelectorAll('a[href^=\"#fig-\"]'))"
                ".filter(a => !document.getElementById(a.getAttribute('href').slice(1)))"
                ".map(a => a.getAttribute('href'))"
            )
            problems += [f"{name}: cross-reference to a missing figure: {t}" for t in targets]
            hrefs = page.evaluate(
                "Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))"
            )
            for href in hrefs:
                parsed = urlparse(href)
                if parsed.scheme or href.startswith(("#", "mailto:")):
                    continue
                visited_links.add(urljoin(urljoin(site, name), parsed.path))
            if name in ("index.html", "01_data_strategy.html"):
                page.screenshot(path=str(SCREENSHOTS / f"{Path(name).stem}.png"), full_page=False)
        for link in sorted(visited_links):
            response = page.request.get(link)
            if not response.ok:
                problems.append(f"broken internal link: {link} (HTTP {response.status})")
        browser.close()
    assert not problems, "\n".join(problems)
    assert len(visited_links) >= len(pages)  # the sidebar links every page
    assert (SCREENSHOTS / "index.png").stat().st_size > 0
