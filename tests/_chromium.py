"""Headless Chromium (Debian's package, no browser download) driven over the DevTools protocol (a websocket),
for the tests that open pages as a reader or a user would: the documentation site (tests/docs/test_site.py)
and the web-app example (tests/smart/test_web_app_browser.py).

Enough of the protocol for them: open a URL, evaluate JavaScript, wait for a condition, read cookies, take a
screenshot. The browser runs with a fresh profile, no background networking and its DevTools port on
127.0.0.1; it is stopped when the context ends. Without a ``chromium`` binary (or the websockets package) the
test is skipped, except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from ._processes import missing, stop

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection


class Page:
    """One Chromium tab: navigate, evaluate, wait for a condition, read cookies, take a screenshot."""

    def __init__(self, websocket: ClientConnection) -> None:
        self._ws = websocket
        self._next = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        ident = self._next
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            message = json.loads(self._ws.recv(timeout=20))
            if message.get("id") == ident:  # events in between are not ours to read
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result
        raise AssertionError(f"no answer to {method}")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"still false after {timeout} s: {expression}")
            time.sleep(0.05)

    def open(self, url: str) -> None:
        """Start navigating to ``url`` (which may redirect elsewhere: wait for what the test expects)."""
        self.call("Page.navigate", url=url)

    def load(self, url: str) -> None:
        """Navigate to ``url`` and wait until that document has loaded (for a page that does not redirect)."""
        self.open(url)
        self.wait_for(f"document.readyState === 'complete' && location.href.startsWith({json.dumps(url)})")

    def cookies(self, url: str) -> dict[str, str]:
        return {c["name"]: c["value"] for c in self.call("Network.getCookies", urls=[url])["cookies"]}

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))


@contextmanager
def chromium(profile: Path) -> Iterator[Page]:
    """A headless Chromium with its profile in ``profile`` (a fresh folder), and its first tab."""
    try:
        from websockets.sync.client import connect
    except ImportError:
        missing("websockets is not installed (pip install -e '.[dev]')")
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    if binary is None:
        missing("no chromium binary (Debian: apt-get install chromium)")
    # The flags keep Chromium off the network (loopback only) and away from the user's profile.
    process = subprocess.Popen(
        [
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.exists() and active.read_text().strip()):
            assert process.poll() is None, "chromium exited at start"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.05)
        port = active.read_text().split()[0]
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        tab = next(t for t in targets if t["type"] == "page")
        with connect(tab["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as websocket:
            page = Page(websocket)
            page.call("Page.enable")
            yield page
    finally:
        stop(process)
