"""Headless Chromium for the web console's tests: Debian's ``chromium`` and ``chromium-driver``
driven by selenium (no browser or driver is downloaded: both paths are given to selenium).

``Browser`` wraps one WebDriver: ``open(url)``, waiting helpers that poll the page, a record of
the page's ``fetch`` calls (installed before any of its scripts run, so tests can assert how many
requests and keys a view cost), and screenshots into the artifacts directory.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# What works in a container without a display, GPU, sandbox or network beyond loopback.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,900", "--lang=en-US"]

# Wraps window.fetch: every call's URL, request body, HTTP status and, for ranges, how many
# keys came back (entries of window.__calls).
FETCH_RECORDER = """
window.__calls = [];
const realFetch = window.fetch;
window.fetch = async function (input, init) {
  const entry = {url: String(input), body: init && typeof init.body === 'string' ? init.body : null,
                 status: 0, kvs: 0};
  window.__calls.push(entry);
  const resp = await realFetch.apply(this, arguments);
  entry.status = resp.status;
  if (entry.url.endsWith('/v3/kv/range')) {
    resp.clone().json().then((d) => { entry.kvs = (d.kvs || []).length; }).catch(() => {});
  }
  return resp;
};
"""

T = TypeVar("T")


def available() -> str | None:
    """None when the browser can run, else why not."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "Debian's chromium and chromium-driver are not installed (make test installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is in the test extra)"
    return None


class Browser:
    def __init__(self, profile_dir: Path, artifacts: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM or ""
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile_dir}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=CHROMEDRIVER or "", log_output=os.devnull)
        self.driver = webdriver.Chrome(options=options, service=service)
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": FETCH_RECORDER})
        self.artifacts = artifacts
        self.shots: list[Path] = []

    def close(self) -> None:
        self.driver.quit()

    def open(self, url: str) -> None:
        self.driver.get(url)
        self.wait(lambda: self.js("return document.body.dataset.ready === 'true' || !!document.querySelector('#login[open]')"),
                  "the console started")

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, check: Callable[[], T], what: str, timeout: float = 10.0) -> T:
        """Polls ``check`` until it returns something true; fails naming ``what``."""
        from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                value = check()
                if value:
                    return value
            except (StaleElementReferenceException, WebDriverException) as exc:
                last_error = exc
            if time.monotonic() > deadline:
                shot = self.screenshot("timeout")
                raise AssertionError(f"timed out waiting until {what} (screenshot {shot}; last error {last_error})")
            time.sleep(0.1)

    def css(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def text(self, selector: str) -> str:
        found = self.all(selector)
        return found[0].text if found else ""

    def click(self, selector: str) -> None:
        self.wait(lambda: self.all(selector) and self.all(selector)[0].is_displayed(), f"{selector} is shown")
        self.css(selector).click()

    def type(self, selector: str, text: str, clear: bool = True) -> None:
        field = self.css(selector)
        if clear:
            field.clear()
        field.send_keys(text)

    def calls(self) -> list[dict[str, Any]]:
        return list(self.js("return window.__calls || []"))

    def errors(self) -> list[str]:
        """Script errors the page logged (not failed requests: a 4xx answer is the API's)."""
        out = []
        for entry in self.driver.get_log("browser"):
            if entry.get("level") == "SEVERE" and "Failed to load resource" not in entry.get("message", ""):
                out.append(entry["message"])
        return out

    def screenshot(self, name: str) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{len(self.shots) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.shots.append(path)
        return path
