"""A headless Chromium driven over the DevTools protocol, for the site test (no Selenium or Playwright:
tornado's websocket client, already installed with ipykernel, is all it takes).

The browser runs with every http(s) request sent to a proxy that does not exist, so the site is checked
as a reader without internet sees it: anything it fetched from a CDN would fail and be recorded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from tornado.websocket import websocket_connect


def find_chromium() -> str | None:
    """``$CHROMIUM``, else Debian's ``chromium`` (``make chromium`` installs it), else Chrome."""
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class Browser:
    """One headless Chromium page. ``errors`` collects uncaught exceptions, console errors and failed
    requests since the last ``goto``."""

    def __init__(self, executable: str, width: int = 1200, height: int = 1600, loopback: bool = False):
        """``loopback``: let requests to 127.0.0.1 through (a local JupyterLab); the rest still fail."""
        self.profile = tempfile.mkdtemp(prefix="sslnb-chromium-")
        bypass = "127.0.0.1" if loopback else "<-loopback>"
        self.proc = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--proxy-server=http://127.0.0.1:9", f"--proxy-bypass-list={bypass}",  # no internet
             f"--window-size={width},{height}", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start (no DevToolsActivePort)")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.loop = asyncio.new_event_loop()

        async def connect():
            return await websocket_connect(url, max_message_size=256 * 2**20)

        self.ws = self.loop.run_until_complete(connect())
        self.next_id = 0
        self.errors: list[str] = []
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    # -------------------------------------------------------------- protocol
    def _read(self, timeout: float) -> dict:
        async def read():
            return await asyncio.wait_for(self.ws.read_message(), timeout)

        msg = self.loop.run_until_complete(read())
        if msg is None:
            raise RuntimeError("chromium closed the DevTools connection")
        data = json.loads(msg)
        if "method" in data:
            self._note(data)
        return data

    def _note(self, event: dict) -> None:
        method, params = event["method"], event.get("params", {})
        self.events.append(event)
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append("exception: " + details.get("exception", {}).get("description", details.get("text", "")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                            for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            self.errors.append(f"request failed: {params.get('errorText')}")

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        self.next_id += 1
        my_id = self.next_id
        async def write():
            await self.ws.write_message(json.dumps({"id": my_id, "method": method, "params": params}))

        self.loop.run_until_complete(write())
        deadline = time.time() + timeout
        while True:
            data = self._read(max(0.1, deadline - time.time()))
            if data.get("id") == my_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})

    def pump(self, seconds: float) -> None:
        """Let the page run for ``seconds``, collecting its events."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                self._read(deadline - time.time())
            except asyncio.TimeoutError:
                return

    # -------------------------------------------------------------- page helpers
    def goto(self, url: str, timeout: float = 60) -> None:
        self.errors, self.events = [], []
        self.call("Page.navigate", url=url)
        deadline = time.time() + timeout
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            if time.time() > deadline:
                raise TimeoutError(f"{url} did not finish loading in {timeout} s")
            self.pump(0.2)

    def js(self, expression: str):
        """The value of a JavaScript expression (promises are awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}...: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.js(expression):
                return True
            self.pump(0.25)
        return False

    def dropdowns_redraw(self, selects: str, images: str, timeout: float) -> list[int]:
        """Move each dropdown of ``selects`` (a JavaScript NodeList expression) with two or more options to
        its next option, one at a time; returns the indices after which ``images`` (an expression for
        what is on screen) did not change within ``timeout`` seconds."""
        stuck = []
        for i in range(self.js(f"{selects}.length")):
            if self.js(f"{selects}[{i}].options.length") < 2:
                continue
            before = self.js(images)
            self.js(f"(() => {{ const s = {selects}[{i}]; s.selectedIndex = (s.selectedIndex + 1) % s.options.length;"
                    " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
            if not self.wait_for(f"{images} !== {before!r}", timeout=timeout):
                stuck.append(i)
        return stuck

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:  # chromium's helper processes share its process group
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)
