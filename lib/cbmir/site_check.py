"""Open a built report site in headless Chromium and check what a reader would see.

`check_site(site_dir, screenshot=...)` starts Chromium (the Debian `chromium` package, or the binary named by
`$CBMIR_CHROMIUM`) with its DevTools protocol on a local port, drives it over a websocket (`websocket-client`),
and visits every page reachable from `index.html`. A page has a problem when it logs a console error or throws,
asks for anything over the network (the site must work offline), shows an image that did not load, links to a
file or anchor that does not exist, or shows a truncated table (a "..." row, column or cell, or pandas' "N rows ×
M columns" footer). Links to other sites are listed, not followed. A screenshot of the landing page is written
for a person to look at. Nothing is downloaded: no driver, no browser.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag, urlparse

NO_CHROMIUM = (
    "Chromium not found (install the Debian package with `apt-get install chromium`, "
    "or name the binary in $CBMIR_CHROMIUM)"
)
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
VIEWPORT = (1280, 900)
MAX_SCREENSHOT_HEIGHT = 4000

# Collected in the page after it has loaded (one round trip per page).
_INSPECT = r"""
(() => {
  const text = (el) => (el.textContent || "").replace(/\s+/g, " ").trim();
  const tables = [...document.querySelectorAll("table")].map((t, i) => {
    const cap = t.querySelector("caption");
    const label = cap ? text(cap).slice(0, 80) : `table ${i + 1}`;
    const cells = [...t.querySelectorAll("th, td")].map(text);
    return {
      label,
      rows: t.querySelectorAll("tbody tr").length,
      ellipsis: cells.filter((c) => c === "..." || c === "…" || c.endsWith("...")).slice(0, 3),
    };
  });
  const footer = (document.body.innerText.match(/\b\d+ rows × \d+ columns\b/) || [null])[0];
  return {
    title: document.title,
    ids: [...document.querySelectorAll("[id]")].map((e) => e.id),
    links: [...document.querySelectorAll("a[href]")].map((a) => a.href),
    images: [...document.images].map((img) => ({src: img.currentSrc || img.src,
                                                ok: img.complete && img.naturalWidth > 0})),
    tables,
    footer,
    height: Math.ceil(document.documentElement.scrollHeight),
  };
})()
"""


class BrowserError(RuntimeError):
    """Chromium could not be started or stopped answering."""


@dataclass
class PageResult:
    """What one page showed: its console errors, broken images and links, truncated tables."""

    path: Path
    title: str = ""
    problems: list[str] = field(default_factory=list)
    tables: int = 0
    images: int = 0
    links: int = 0


@dataclass
class SiteCheck:
    """The pages visited, every problem found (each names its page), links to other sites (not followed)."""

    pages: list[PageResult]
    external_links: list[str]
    screenshot: Path | None

    @property
    def problems(self) -> list[str]:
        return [f"{p.path.name}: {msg}" for p in self.pages for msg in p.problems]

    @property
    def ok(self) -> bool:
        return not self.problems


def find_chromium() -> str | None:
    """The Chromium binary: `$CBMIR_CHROMIUM`, else the first of chromium, chromium-browser, google-chrome."""
    named = os.environ.get("CBMIR_CHROMIUM")
    if named:
        return named if shutil.which(named) or Path(named).is_file() else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def check_site(
    site_dir: str | Path,
    screenshot: str | Path | None = None,
    chromium: str | None = None,
    timeout: float = 30.0,
) -> SiteCheck:
    """Visit every page reachable from `site_dir/index.html`; write a screenshot of the landing page."""
    site_dir = Path(site_dir).resolve()
    start = site_dir / "index.html"
    if not start.exists():
        raise FileNotFoundError(f"{start}: no landing page to check")
    chromium = chromium or find_chromium()
    if chromium is None:
        raise BrowserError(NO_CHROMIUM)
    results: list[PageResult] = []
    external: set[str] = set()
    anchors: dict[Path, set[str]] = {}
    pending_fragments: list[tuple[PageResult, Path, str]] = []
    with Chromium(chromium, timeout=timeout) as browser:
        queue, seen = [start], {start}
        while queue:
            path = queue.pop(0)
            result, info = browser.inspect(path)
            results.append(result)
            anchors[path] = set(info.get("ids", []))
            for url in info.get("links", []):
                target, fragment = _file_target(url)
                if target is None:
                    external.add(url)
                    continue
                if not target.exists():
                    result.problems.append(f"broken link to {_rel(target, site_dir)}")
                    continue
                if fragment:
                    pending_fragments.append((result, target, fragment))
                if target.suffix == ".html" and _inside(target, site_dir) and target not in seen:
                    seen.add(target)
                    queue.append(target)
        shot = None
        if screenshot is not None:
            shot = browser.screenshot(start, Path(screenshot))
    for result, target, fragment in pending_fragments:
        if target in anchors and fragment not in anchors[target]:
            result.problems.append(f"link to a missing anchor {_rel(target, site_dir)}#{fragment}")
    return SiteCheck(results, sorted(external), shot)


class Chromium:
    """A headless Chromium driven over the DevTools protocol; use as a context manager."""

    def __init__(self, binary: str, timeout: float = 30.0) -> None:
        self.binary, self.timeout = binary, timeout
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        import websocket

        self._profile = tempfile.TemporaryDirectory(prefix="cbmir-chromium-")
        args = [
            self.binary,
            "--headless",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            f"--user-data-dir={self._profile.name}",
            f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
            "about:blank",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        try:
            self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as err:
            self._profile.cleanup()
            raise BrowserError(f"{self.binary}: could not start ({err})") from err
        try:
            url = self._wait_for_endpoint()
            self._ws = websocket.create_connection(url, timeout=self.timeout, suppress_origin=True)
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.send(f"{domain}.enable", session=True)
            width, height = VIEWPORT
            self.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=True,
            )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        ws = getattr(self, "_ws", None)
        if ws is not None:
            try:
                self.send("Browser.close")
            except Exception:  # it may already be gone; it is killed below
                pass
            ws.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._profile.cleanup()

    def _wait_for_endpoint(self) -> str:
        port_file = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrowserError(f"{self.binary}: exited with status {self._proc.returncode} at start")
            if port_file.exists():
                lines = port_file.read_text().split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            time.sleep(0.05)
        raise BrowserError(f"{self.binary}: no DevTools endpoint after {self.timeout:.0f} s")

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: bool = False
    ) -> dict[str, Any]:
        """Send one DevTools command and return its result; events that arrive meanwhile are kept."""
        import websocket

        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                reply = json.loads(self._ws.recv())
            except websocket.WebSocketTimeoutException:
                break
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)
        raise BrowserError(f"{method}: no answer from Chromium within {self.timeout:.0f} s")

    def _wait_for_event(self, name: str) -> None:
        import websocket

        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if any(e.get("method") == name for e in self._events):
                return
            self._ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                self._events.append(json.loads(self._ws.recv()))
            except websocket.WebSocketTimeoutException:
                break
            finally:
                self._ws.settimeout(self.timeout)
        raise BrowserError(f"{name}: not reached within {self.timeout:.0f} s")

    def open(self, path: Path) -> None:
        self._events = []
        reply = self.send("Page.navigate", {"url": path.as_uri()}, session=True)
        if reply.get("errorText"):
            raise BrowserError(f"{path}: {reply['errorText']}")
        self._wait_for_event("Page.loadEventFired")
        self.send("Runtime.evaluate", {"expression": "1"}, session=True)  # flush events logged during load

    def inspect(self, path: Path) -> tuple[PageResult, dict[str, Any]]:
        """Load one page and collect its problems and its links."""
        result = PageResult(path)
        try:
            self.open(path)
        except BrowserError as err:
            result.problems.append(f"did not load: {err}")
            return result, {}
        info = self.evaluate(_INSPECT)
        result.title = info.get("title", "")
        result.problems += _event_problems(self._events)
        for image in info.get("images", []):
            if not image.get("ok"):
                result.problems.append(f"image did not load: {_short(image.get('src', ''))}")
        for table in info.get("tables", []):
            if table.get("ellipsis"):
                result.problems.append(f"truncated table ({table['label']!r}): cells {table['ellipsis']}")
        if info.get("footer"):
            result.problems.append(f"truncated table: pandas footer {info['footer']!r}")
        result.tables, result.images = len(info.get("tables", [])), len(info.get("images", []))
        result.links = len(info.get("links", []))
        return result, info

    def evaluate(self, expression: str) -> Any:
        reply = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=True,
        )
        if "exceptionDetails" in reply:
            raise BrowserError(f"page script failed: {reply['exceptionDetails'].get('text')}")
        return reply.get("result", {}).get("value", {})

    def screenshot(self, path: Path, out: Path) -> Path:
        """A PNG of the page at the viewport's width, as tall as its content (up to a limit)."""
        self.open(path)
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)") or VIEWPORT[1])
        height = max(VIEWPORT[1], min(height, MAX_SCREENSHOT_HEIGHT))
        shot = self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": VIEWPORT[0], "height": height, "scale": 1},
            },
            session=True,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_small_png(base64.b64decode(shot["data"]), out)
        return out


def _write_small_png(data: bytes, out: Path) -> None:
    """The screenshot as a 256-colour PNG: text and plots stay legible at a third of the size."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(out, optimize=True)


def _event_problems(events: list[dict[str, Any]]) -> list[str]:
    problems = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            problems.append(f"script error: {_short(text)}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            problems.append(f"console error: {_short(args)}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            problems.append(
                f"console error: {_short(entry.get('text', ''))} {_short(entry.get('url', ''))}".strip()
            )
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if urlparse(url).scheme in ("http", "https", "ws", "wss"):
                problems.append(f"network request (the site must work offline): {_short(url)}")
    return problems


def _file_target(url: str) -> tuple[Path | None, str]:
    """The file a link points to and its fragment; (None, '') for links to other sites."""
    base, fragment = urldefrag(url)
    parsed = urlparse(base)
    if parsed.scheme != "file":
        return None, ""
    return Path(unquote(parsed.path)), fragment


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
    except ValueError:
        return False
    return True


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(path, base)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
