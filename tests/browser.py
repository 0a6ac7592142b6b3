"""A real headless browser for tests: Debian's `chromium`, driven over the DevTools protocol.

Why the DevTools pipe (`--remote-debugging-pipe`) rather than chromedriver or a websocket on
`--remote-debugging-port`: the pipe is two file descriptors handed to the child (3 for our
commands, 4 for its answers and events, each message JSON ended by a NUL byte), so it needs no
Python package and no Debian package beyond `chromium`, opens no port another process could
reach or race for, and ends with the process. The protocol gives what a person sees and what
WebDriver cannot: console errors and uncaught exceptions as events, JavaScript dialogs (an
injected `alert()` would show up), computed styles, and screenshots.

Chromium runs as the tests do (root in CI), so with `--no-sandbox`, and with every feature
that would talk to the network turned off; it only ever loads loopback URLs.

Locally a missing chromium skips the test with the reason; with CI=true it fails it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from helpers import unavailable

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
    "--remote-debugging-pipe",
)
WINDOW = (1400, 1000)


def chromium_path() -> str:
    """The chromium executable; skips the calling test when it is missing (fails it in CI)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "chromium is not installed (apt-get install chromium)"
        unavailable(reason)
    return path


class BrowserError(Exception):
    pass


class Browser:
    """One chromium process; `open(url)` gives a page (a tab) to drive."""

    def __init__(self, directory: Path):
        executable = chromium_path()
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=directory)
        # Our ends stay in this process; the child's ends are moved to fds 3 and 4 by the bash
        # that execs chromium (a preexec_fn would run Python between fork and exec).
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        child_read = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD_CLOEXEC, 10)
        child_write = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._log = open(Path(directory) / "chromium.log", "wb")
        command = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
                   f"--window-size={WINDOW[0]},{WINDOW[1]}", "about:blank"]
        try:
            self.process = subprocess.Popen(
                ["bash", "-c", f'exec "$@" 3<&{child_read} 4>&{child_write} '
                             f"{child_read}<&- {child_write}>&-", "bash", *command],
                pass_fds=(child_read, child_write), stdin=subprocess.DEVNULL,
                stdout=self._log, stderr=self._log)
        finally:
            os.close(child_read)
            os.close(child_write)
        self._next_id = 0
        self._id_lock = threading.Lock()
        self._answers: dict[int, queue.Queue] = {}
        self._events: list[dict[str, Any]] = []
        self._events_changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="chromium-devtools", daemon=True)
        self._reader.start()

    # -- the protocol ----------------------------------------------------------------------------
    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                data = os.read(self._from_browser, 1 << 16)
            except OSError:
                data = b""
            if not data:
                with self._events_changed:
                    self._events.append({"method": "_closed"})
                    self._events_changed.notify_all()
                for waiting in list(self._answers.values()):
                    waiting.put({"error": {"message": "the browser closed the pipe"}})
                return
            buffer += data
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    waiting = self._answers.pop(message["id"], None)
                    if waiting is not None:
                        waiting.put(message)
                else:
                    with self._events_changed:
                        self._events.append(message)
                        self._events_changed.notify_all()

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 20.0) -> dict[str, Any]:
        with self._id_lock:
            self._next_id += 1
            number = self._next_id
        answer: queue.Queue = queue.Queue()
        self._answers[number] = answer
        message = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            reply = answer.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"{method}: no answer within {timeout} s") from None
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def events(self, session: str | None = None) -> list[dict[str, Any]]:
        with self._events_changed:
            return [event for event in self._events
                    if session is None or event.get("sessionId") == session]

    def wait_event(self, method: str, session: str, after: int, timeout: float) -> dict:
        """The first `method` event of the session after the first `after` of its events."""
        deadline = time.monotonic() + timeout
        with self._events_changed:
            while True:
                mine = [e for e in self._events if e.get("sessionId") == session]
                for event in mine[after:]:
                    if event.get("method") == method:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"no {method} within {timeout} s")
                self._events_changed.wait(left)

    # -- pages -----------------------------------------------------------------------------------
    def open(self, url: str, *, javascript: bool = True, timeout: float = 20.0) -> BrowserPage:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        page = BrowserPage(self, session)
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=session)
        if not javascript:
            self.call("Emulation.setScriptExecutionDisabled", {"value": True}, session=session)
        page.navigate(url, timeout)
        return page

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.call("Browser.close", timeout=5)
            except BrowserError:
                pass
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._reader.join(5)
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)


class BrowserPage:
    def __init__(self, browser: Browser, session: str):
        self.browser = browser
        self.session = session

    def navigate(self, url: str, timeout: float = 20.0) -> None:
        seen = len(self.browser.events(self.session))
        answer = self.browser.call("Page.navigate", {"url": url}, session=self.session)
        if answer.get("errorText"):
            raise BrowserError(f"loading {url}: {answer['errorText']}")
        self.wait_for_load(seen, timeout)

    def wait_for_load(self, after: int, timeout: float = 20.0) -> None:
        self.browser.wait_event("Page.loadEventFired", self.session, after, timeout)

    def event_count(self) -> int:
        return len(self.browser.events(self.session))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able values)."""
        answer = self.browser.call("Runtime.evaluate", {"expression": expression,
                                                        "returnByValue": True},
                                   session=self.session)
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression}: {answer['exceptionDetails'].get('text')}")
        return answer["result"].get("value")

    def computed_style(self, selector: str, prop: str) -> str | None:
        return self.evaluate(
            f"(function () {{ var e = document.querySelector({json.dumps(selector)}); "
            f"return e ? getComputedStyle(e).getPropertyValue({json.dumps(prop)}) : null; }})()")

    def errors(self) -> list[str]:
        """What a person would find in the console: errors, uncaught exceptions, failed loads."""
        found = []
        for event in self.browser.events(self.session):
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(f"console.{params['type']}: "
                             + " ".join(str(arg.get("value", arg.get("description")))
                                        for arg in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return found

    def dialogs(self) -> list[str]:
        """Every JavaScript dialog (alert, confirm, prompt) the page opened."""
        return [event["params"].get("message", "") for event in self.browser.events(self.session)
                if event.get("method") == "Page.javascriptDialogOpening"]

    def screenshot(self, path: Path) -> Path:
        """The whole page as a PNG."""
        metrics = self.browser.call("Page.getLayoutMetrics", session=self.session)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": max(size["width"], WINDOW[0]),
                "height": min(size["height"], 8000), "scale": 1}
        data = self.browser.call("Page.captureScreenshot",
                                 {"format": "png", "captureBeyondViewport": True, "clip": clip},
                                 session=self.session)["data"]
        path.write_bytes(base64.b64decode(data))
        return path
