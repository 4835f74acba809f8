"""A real headless browser for the web page tests: Debian's chromium driven by its chromium-driver via Selenium.

`make test` installs both (apt); where they are missing the tests skip and say so. As root, chromium needs
--no-sandbox; the background-networking flags keep it from calling out of this closed machine; each browser gets a
fresh profile directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--hide-scrollbars",
)


def chromium(profile: Path, *, width: int = 1400, height: int = 900):
    """A Selenium WebDriver on headless chromium with a window of width x height CSS pixels."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        why = "Debian's chromium and chromium-driver are not installed (`make test` installs them with apt)"
        if os.environ.get("CI"):  # CI runs `make test`, which installs them: missing there is a failure
            pytest.fail(why)
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    browser.set_window_size(width, height)
    # --window-size sets the outer window: make the page's own viewport width x height
    inner = browser.execute_script("return [window.innerWidth, window.innerHeight]")
    browser.set_window_size(2 * width - inner[0], 2 * height - inner[1])
    return browser


def console_errors(browser) -> list[dict]:
    """Browser console messages at SEVERE level (errors, failed loads) since the last call."""
    return [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]


def screenshot(browser, path: Path, *, max_width: int = 1100) -> Path:
    """A PNG of the viewport for docs/img: downscaled to at most max_width pixels and reduced to a 128-colour
    palette (Pillow, which matplotlib brings), so the committed pictures stay small."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path
