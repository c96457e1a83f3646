"""Open local HTML files in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``) through selenium.

``Browser`` starts one Chromium; ``Browser.open(path)`` loads a file and returns a ``Page`` with what the page did:

* ``page.console``: the console messages ``[(level, text)]`` (levels as ChromeDriver names them: ``"SEVERE"`` for
  errors, uncaught exceptions and failed loads, ``"WARNING"``, ``"INFO"``, ...);
* ``page.requests``: every URL the page requested besides itself and ``data:`` URIs (empty for a self-contained page);
* ``page.images()``: ``[(src, decoded)]`` for every ``<img>``, ``decoded`` true when it loaded and decodes;
* ``page.js(script, *args)``: run JavaScript in the page (``return ...`` gives a value);
* ``page.screenshot(path)``: the whole page (up to ``MAX_HEIGHT`` pixels) as a PNG.

``open_page(path)`` is a context manager that does both for one page. Where Chromium, ChromeDriver or selenium is
missing the test is skipped, unless ``PIXELFLOWSOM_REQUIRE_BROWSER=1`` (set by ``.ci/run``): then it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("PIXELFLOWSOM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PIXELFLOWSOM_CHROMEDRIVER", "/usr/bin/chromedriver")
WIDTH = 1400
MAX_HEIGHT = 8000
#: Without the background-networking flags Chromium phones home at start, which a closed network refuses.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    f"--window-size={WIDTH},900",
]


def require_browser() -> None:
    """Skip the test (fail it under ``PIXELFLOWSOM_REQUIRE_BROWSER=1``) when no browser can be driven."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    reason = None
    if missing:
        reason = f"no {' and no '.join(missing)} (apt-get install chromium chromium-driver)"
    else:
        try:
            import selenium  # noqa: F401
        except ImportError:
            reason = "selenium is not installed (pip install '.[test]')"
    if reason is None:
        return
    if os.environ.get("PIXELFLOWSOM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"PIXELFLOWSOM_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class Page:
    """What a loaded page did, and a handle to ask it more (valid while its ``Browser`` is open)."""

    url: str
    console: list[tuple[str, str]]
    requests: list[str]
    driver: object = field(repr=False)

    def errors(self, levels=("SEVERE", "WARNING")) -> list[tuple[str, str]]:
        """The console messages of these levels."""
        return [(level, text) for level, text in self.console if level in levels]

    def js(self, script: str, *args):
        """Run ``script`` (a function body: ``return ...`` gives its value) in the page."""
        return self.driver.execute_script(script, *args)

    def images(self) -> list[tuple[str, bool]]:
        """``(src, decoded)`` for every ``<img>``: decoded when complete, of nonzero size, and ``decode()`` resolves."""
        return self.driver.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            Promise.all(Array.from(document.images, (img) => {
              const loaded = img.complete && img.naturalWidth > 0 && img.naturalHeight > 0;
              const src = img.getAttribute("src") || "";
              return img.decode().then(() => [src, loaded], () => [src, false]);
            })).then(done, (e) => done(String(e)));
            """
        )

    def screenshot(self, path) -> Path:
        """Save the whole page (``WIDTH`` wide, at most ``MAX_HEIGHT`` high) as a PNG at ``path``."""
        height = self.js("return Math.max(document.documentElement.scrollHeight, document.body.scrollHeight);")
        frame = self.driver.get_window_size()["height"] - self.js("return window.innerHeight;")  # not the page's
        self.driver.set_window_size(WIDTH, min(int(height), MAX_HEIGHT) + max(int(frame), 0))
        self.js("window.scrollTo(0, 0);")
        path = Path(path)
        if not self.driver.save_screenshot(str(path)):
            raise RuntimeError(f"Chromium did not save a screenshot to {path}")
        return path


class Browser:
    """One headless Chromium under ChromeDriver, with its console and network logged; use as a context manager."""

    def __init__(self):
        require_browser()
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self._profile = tempfile.mkdtemp(prefix="pixelflowsom-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*FLAGS, f"--user-data-dir={self._profile}"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        try:
            self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        except BaseException:
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        self.driver.set_page_load_timeout(60)
        self.driver.set_script_timeout(30)

    def open(self, path) -> Page:
        """Load the local file ``path`` and return what it logged and requested until its load event."""
        url = Path(path).resolve().as_uri()
        self.driver.get("about:blank")
        self.driver.get_log("browser")  # drop what earlier pages logged
        self.driver.get_log("performance")
        self.driver.set_window_size(WIDTH, 900)
        self.driver.get(url)
        console = [(entry["level"], entry["message"]) for entry in self.driver.get_log("browser")]
        requests = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                requested = message["params"]["request"]["url"]
                if requested != url and not requested.startswith("data:"):
                    requests.append(requested)
        return Page(url=url, console=console, requests=requests, driver=self.driver)

    def close(self) -> None:
        """Quit Chromium and ChromeDriver and remove the profile."""
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def open_page(path):
    """Open ``path`` in a Chromium of its own; yield its ``Page``, then quit Chromium."""
    with Browser() as browser:
        yield browser.open(path)
