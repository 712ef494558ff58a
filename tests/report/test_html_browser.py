"""The HTML report in a real browser: headless Chromium, driven over the DevTools protocol.

No new dependency: Chromium's `--remote-debugging-pipe` speaks the DevTools protocol as
NUL-terminated JSON on file descriptors 3 (commands in) and 4 (events out), so a pipe and
`select` are all it takes (no websocket, no playwright). The page is loaded from a file
with the Network, Log and Runtime domains on; then the test asks the page what it shows.

Without Chromium these tests skip, except under CI (env `CI` set), where they fail: a
CI that silently stops checking the page in a browser is worse than a red build. Point
`DIAGNOSE_CHROMIUM` at the binary if it is not on PATH as chromium/google-chrome.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.report.test_html import (
    ATTR, FIGURE_IDS, PWN_ATTR, PWN_SCRIPT, SCRIPT, hostile_findings, render_hostile, render_hostile_cli,
)

pytestmark = pytest.mark.browser

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
_ALLOWED_SCHEMES = ("file:", "data:", "about:")


def find_chromium() -> str | None:
    for name in (os.environ.get("DIAGNOSE_CHROMIUM"), *_NAMES):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class DevTools:
    """A headless Chromium and one page, over --remote-debugging-pipe."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def on_fds_3_and_4() -> None:  # in the child, before exec
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)  # above 4, so dup2 cannot clobber
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=on_fds_3_and_4)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=self.session)

    def call(self, method: str, session: str | None = None, timeout: float = 30.0, **params: Any) -> dict:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._receive(deadline))
        return next(e for e in self.events if e.get("method") == method)

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            if select.select([self._from_chrome], [], [], left)[0]:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise EOFError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def load(self, path: Path) -> None:
        self.call("Page.navigate", session=self.session, url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=self.session, expression=expression, returnByValue=True)
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Console output, errors (CSP violations included) and non-local requests."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if not url.startswith(_ALLOWED_SCHEMES):
                    found.append(f"request: {url}")
            elif method == "Runtime.consoleAPICalled":
                found.append(f"console.{params.get('type')}: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params.get('exceptionDetails', {}).get('text')}")
            elif method == "Page.javascriptDialogOpening":  # alert(1) ran
                found.append(f"dialog: {params.get('type')} {params.get('message')}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(f"log {params['entry']['level']}: {params['entry']['text']}")
        return found

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, EOFError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("headless Chromium is required in CI for the HTML report's browser tests "
                        "(install chromium or set DIAGNOSE_CHROMIUM)")
        pytest.skip("headless Chromium not found (install chromium or set DIAGNOSE_CHROMIUM)")
    return binary


@pytest.fixture
def browser(chromium: str, tmp_path: Path):
    devtools = DevTools(chromium, tmp_path / "profile")
    yield devtools
    devtools.close()


_STATE = """JSON.stringify({
  images: Array.from(document.images).map(i => ({complete: i.complete, width: i.naturalWidth,
                                                  shown: i.getBoundingClientRect().width})),
  figures: Array.from(document.querySelectorAll('figure.plot')).map(f => f.id),
  findings: Array.from(document.querySelectorAll('article.finding')).map(a => a.id),
  scripts: document.scripts.length,
  text: document.body.innerText,
})"""


def test_report_renders_figures_and_findings_without_errors_or_requests(browser: DevTools, tmp_path: Path) -> None:
    page = render_hostile(tmp_path)
    browser.load(page)
    state = json.loads(browser.evaluate(_STATE))
    assert browser.problems() == []
    assert state["scripts"] == 0
    assert state["figures"] == FIGURE_IDS
    assert state["images"] and all(i["complete"] and i["width"] > 0 and i["shown"] > 300 for i in state["images"])
    assert len(state["findings"]) == len(hostile_findings())
    assert SCRIPT in state["text"] and ATTR in state["text"]  # shown as text, never run
    assert browser.evaluate("document.querySelectorAll('img[src^=\"x\"], img:not([src^=\"data:\"])').length") == 0
    assert _nothing_ran(browser)


_PWNED = "JSON.stringify({pwned: typeof window.__pwned, title: document.title})"


def _nothing_ran(browser: DevTools) -> bool:
    """No payload's side effect: `window.__pwned` unset, the title untouched."""
    state = json.loads(browser.evaluate(_PWNED))
    return state["pwned"] == "undefined" and state["title"] != "pwned"


def test_the_cli_report_runs_no_script_from_the_data(browser: DevTools, tmp_path: Path) -> None:
    """`diagnose report --html` on a run whose directory name, config, crash message, OOM
    event and exception hold payloads: every rule's finding shown, none of them run."""
    browser.load(render_hostile_cli(tmp_path))
    assert browser.problems() == []
    assert browser.evaluate("document.scripts.length") == 0
    assert _nothing_ran(browser)
    text = browser.evaluate("document.body.innerText")
    assert PWN_ATTR in text and PWN_SCRIPT in text and "Out of memory at step 40" in text
    assert browser.evaluate("Array.from(document.querySelectorAll('[href]'))"
                            ".filter(a => !a.getAttribute('href').startsWith('#')).length") == 0


def test_the_harness_sees_requests_and_csp_violations(browser: DevTools, tmp_path: Path) -> None:
    """The detector itself works: a page that fetches and runs script is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
                   "content=\"default-src 'none'\"></head><body><img src=\"http://example.invalid/x.png\">"
                   "<script>console.log('ran')</script></body></html>")
    browser.load(bad)
    problems = browser.problems()
    assert any("Content Security Policy" in p for p in problems), problems
    assert any(p.startswith("request: http://example.invalid") for p in problems), problems


def test_the_harness_sees_a_payload_run(browser: DevTools, tmp_path: Path) -> None:
    """Without the CSP and the escaping, the payload would run, and `_nothing_ran` says so."""
    bad = tmp_path / "unsafe.html"
    bad.write_text(f'<!DOCTYPE html><html><head><title>t</title></head><body><p title="{PWN_ATTR}"></p></body></html>')
    browser.load(bad)
    assert not _nothing_ran(browser)
