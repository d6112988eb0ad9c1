"""Open an HTML file in headless Chromium through the DevTools protocol (test helper).

Collects console errors, uncaught exceptions and failed loads, evaluates JavaScript in the page
and takes a screenshot. Uses Debian's `chromium` and the `websockets` package; the browser runs
with no network features and a throwaway profile.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
    "--window-size=1400,1000",
]


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class PageSession:
    """One page of a headless Chromium; use as an async context manager."""

    def __init__(self, binary: str):
        self.binary = binary
        self.events: list[dict] = []
        self._id = 0
        self._pending: dict[int, asyncio.Future] = {}

    async def __aenter__(self) -> PageSession:
        import websockets

        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.proc = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        port = await asyncio.to_thread(self._read_port)
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = await websockets.connect(page["webSocketDebuggerUrl"], max_size=64 << 20)
        self._reader = asyncio.create_task(self._read())
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")
        return self

    def _read_port(self) -> int:
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                return int(m.group(1))
        raise RuntimeError(f"chromium did not start (exit {self.proc.poll()})")

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message)
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)

    async def send(self, method: str, **params) -> dict:
        self._id += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._id] = fut
        await self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, timeout=60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def open(self, path: Path) -> None:
        await self.send("Page.navigate", url=Path(path).resolve().as_uri())
        deadline = time.time() + 60
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            if time.time() > deadline:
                raise TimeoutError(f"{path} did not finish loading")
            await asyncio.sleep(0.05)

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, out: Path, max_height: int = 6000) -> Path:
        """The whole page (up to `max_height` CSS pixels), not only the first screen."""
        size = (await self.send("Page.getLayoutMetrics"))["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], max_height), "scale": 1}
        result = await self.send(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip
        )
        out.write_bytes(base64.b64decode(result["data"]))
        return out

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in {"error", "assert"}:
                out.append(
                    "console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"])
                )
            elif e["method"] == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails"))[:500])
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append("log: " + p["entry"].get("text", ""))
        return out

    async def __aexit__(self, *exc) -> None:
        try:
            await self.ws.close()
            self._reader.cancel()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self._profile, ignore_errors=True)


def inspect_report(binary: str, html_path: Path, screenshot: Path, script: str) -> tuple[object, list[str]]:
    """Open `html_path`, run `script` (a JS expression), screenshot; return (value, errors)."""

    async def go():
        async with PageSession(binary) as page:
            await page.open(html_path)
            value = await page.evaluate(script)
            await page.screenshot(screenshot)
            await asyncio.sleep(0.2)  # late console messages
            return value, page.errors()

    return asyncio.run(go())
