"""Open the report in headless Chromium through the DevTools protocol: console errors, the paper tables the page
shows, and a screenshot (the README's, and the report test's).

    python -m fpc_keras.report.browser reports/index.html --screenshot reports/screenshot.png

Needs a Chromium binary (Debian: `apt-get install chromium`) and websocket-client (the `dev` extra).
"""
from __future__ import annotations

import argparse
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

from ..errors import BadInputError
from ..io import atomic_path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# What the page is asked for once loaded: every paper table's key and the number of embedded images that decoded.
PAGE_FACTS = ("JSON.stringify({papers: [...document.querySelectorAll('table.paper-table')].map(t => t.dataset.paper),"
              " measured_rows: [...document.querySelectorAll('table.paper-table')].map("
              "t => t.querySelectorAll('tr.ours').length),"
              " no_run_notes: document.body.innerText.split('No run of this model yet').length - 1,"
              " images: document.images.length,"
              " broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)})")


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def render(page: str | Path, screenshot: str | Path | None = None, width: int = 1280, height: int = 2000,
           timeout_s: float = 60.0) -> dict:
    """Load `page` in headless Chromium; return {"console_errors", "papers", "measured_rows" (per paper table),
    "no_run_notes", "images", "broken"} and write a PNG
    screenshot of the top `height` pixels when asked."""
    browser = find_browser()
    if browser is None:
        raise BadInputError("no Chromium found", "install it (Debian: apt-get install chromium)")
    # Chromium's helper processes may still be writing the profile while it is removed: they are killed as a
    # group, and a file that appears during the removal is not an error.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                                    "--remote-debugging-port=0", f"--user-data-dir={profile}",
                                    f"--window-size={width},{height}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            session = _DevTools(_page_socket(Path(profile), timeout_s), timeout_s)
            try:
                return session.visit(Path(page).resolve().as_uri(), screenshot, width, height)
            finally:
                session.close()
        finally:
            _kill_group(process)


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _page_socket(profile: Path, timeout_s: float) -> str:
    """The DevTools websocket of Chromium's first page (its port is written to the profile once it listens)."""
    port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + timeout_s
    while not port_file.is_file() or not port_file.read_text().strip():
        if time.monotonic() > deadline:
            raise TimeoutError("Chromium did not open its DevTools port")
        time.sleep(0.1)
    port = port_file.read_text().split()[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout_s) as response:
        targets = json.load(response)
    return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")


class _DevTools:
    """A minimal DevTools client: send commands, collect console and log errors while waiting for replies."""

    def __init__(self, url: str, timeout_s: float):
        import websocket

        self.socket = websocket.create_connection(url, timeout=timeout_s, suppress_origin=True)
        self.next_id, self.errors, self.events = 0, [], []

    def visit(self, url: str, screenshot: str | Path | None, width: int, height: int) -> dict:
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        facts = json.loads(self.call("Runtime.evaluate", expression=PAGE_FACTS, returnByValue=True)
                           ["result"]["value"])
        if screenshot:
            data = self.call("Page.captureScreenshot", format="png")["data"]
            with atomic_path(screenshot, suffix=".png") as tmp:
                Path(tmp).write_bytes(base64.b64decode(data))
        return {"console_errors": list(self.errors), **facts}

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = self._receive()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"DevTools {method}: {message['error']}")
                return message.get("result", {})

    def wait_for(self, event: str) -> None:
        while event not in self.events:
            self._receive()

    def _receive(self) -> dict:
        message = json.loads(self.socket.recv())
        method, params = message.get("method"), message.get("params", {})
        if method:
            self.events.append(method)
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            self.errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])
        return message

    def close(self) -> None:
        self.socket.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="render the report in headless Chromium")
    parser.add_argument("page")
    parser.add_argument("--screenshot")
    parser.add_argument("--height", type=int, default=2000)
    args = parser.parse_args(argv)
    facts = render(args.page, args.screenshot, height=args.height)
    print(json.dumps(facts, indent=1))
    return 1 if facts["console_errors"] or facts["broken"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
