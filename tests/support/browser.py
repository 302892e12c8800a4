"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: file descriptors 3 and 4, NUL-separated JSON), inside a test-bed
namespace, so a test can load a page, read its DOM, click and take screenshots with no
browser-automation package. The process is killed however the test ends."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.support.netbed import Namespace

CHROMIUM = "chromium"
STEP_TIMEOUT = 30.0


class BrowserError(RuntimeError):
    pass


def chromium_path() -> str | None:
    return shutil.which(CHROMIUM)


class Browser:
    """One Chromium with one page, in ns (None: this process's own network namespace)."""

    def __init__(
        self, ns: Namespace | None, workdir: Path, width: int = 1200, height: int = 900
    ) -> None:
        path = chromium_path()
        if path is None:
            raise BrowserError("chromium is not installed (apt-get install chromium)")
        self.width, self.height = width, height
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "chromium.log"
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:
            # Out of the way first, so neither lands on the other's target number.
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 100)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 100)
            os.dup2(a, 3)
            os.dup2(b, 4)

        argv = [
            path,
            "--headless",
            "--no-sandbox",  # root in a test namespace; the sandbox needs user namespaces
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-proxy-server",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={workdir / 'profile'}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        popen = ns.popen if ns is not None else subprocess.Popen
        with open(self.log_path, "wb") as log:
            self.proc: subprocess.Popen[bytes] = popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(3, 4),
                preexec_fn=fds,
                start_new_session=True,
            )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._closed = False
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self.session = ""
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call(
                "Target.attachToTarget", {"targetId": target, "flatten": True}
            )["sessionId"]
            self.call("Page.enable")
            self.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
        except BaseException:
            self.close()
            raise

    # -- the protocol ------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer from chromium; its log: {self.log_tail()}")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                data = os.read(self._from_chrome, 1 << 20)
                if not data:
                    raise BrowserError(f"chromium went away; its log: {self.log_tail()}")
                self._buffer += data
        message, _, self._buffer = self._buffer.partition(b"\0")
        found: dict[str, Any] = json.loads(message)
        return found

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        self._send(message)
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            got = self._receive(deadline)
            if got.get("id") == self._next_id:
                if "error" in got:
                    raise BrowserError(f"{method}: {got['error']}")
                result: dict[str, Any] = got.get("result", {})
                return result
            if "method" in got:
                self._events.append(got)

    def wait_event(self, method: str, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self._events):
                if event["method"] == method:
                    return self._events.pop(i)
            got = self._receive(deadline)
            if "method" in got:
                self._events.append(got)

    # -- what tests use ----------------------------------------------------------------

    def load(self, url: str) -> None:
        """Navigate and wait for the load event (the page's script has run by then)."""
        self._events.clear()
        answer = self.call("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise BrowserError(f"{url}: {answer['errorText']}")
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        answer = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def rect(self, selector: str) -> dict[str, float]:
        """The element's box in viewport pixels (the screenshot's, at scale 1)."""
        found = self.evaluate(
            f"(function(){{var e=document.querySelector({json.dumps(selector)});"
            "if(!e)return null;e.scrollIntoView({block:'nearest'});"
            "var r=e.getBoundingClientRect();"
            "return {x:r.left,y:r.top,width:r.width,height:r.height};})()"
        )
        if found is None:
            raise BrowserError(f"no element {selector}")
        return dict(found)

    def _mouse(self, selector: str, kinds: tuple[str, ...]) -> None:
        r = self.rect(selector)
        x, y = r["x"] + r["width"] / 2, r["y"] + r["height"] / 2
        for kind in kinds:
            self.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
            )

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre."""
        self._mouse(selector, ("mouseMoved", "mousePressed", "mouseReleased"))

    def hover(self, selector: str) -> None:
        self._mouse(selector, ("mouseMoved",))

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        os.close(self._to_chrome)
        os.close(self._from_chrome)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
