"""Browser tests of the web pages: Debian's Chromium driven by Playwright.

The pages are served by an API process of their own whose page connects to two gateway
replicas sharing one port, as `make up` runs them, all fed by the session's exchange (its
engines, settlement and Redis). So a test can kill the gateway the page uses without
touching the gateways other tests use. One browser serves the whole package; each test
gets a fresh browser context (its own storage: a new demo account).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    WebSocketRoute,
    async_playwright,
)

from services.local.redis_cluster import free_ports
from services.local.up import LocalExchange, _exchange_command

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1440, "height": 900}


def chromium_path() -> str:
    """The system's Chromium; the browser tests fail (never skip) without one."""
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which(
        "chromium-browser")
    if not path or not Path(path).is_file():
        pytest.fail(f"Chromium is not installed{f' at {path}' if path else ''}, so the web "
                    "pages cannot be tested: `apt-get install -y chromium` (the set-up of "
                    "`make test` does it), or set CHROMIUM_PATH to a Chromium", pytrace=False)
    return path


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self) -> None:
        if not self.alive:
            return
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass
class WebExchange:
    """The pages' own API and gateway replicas (one shared port), on the session's stack."""

    api_url: str
    ws_port: int
    admin_token: str
    api: Process
    gateways: list[Process] = field(default_factory=list)

    def gateway_serving_the_page(self) -> Process:
        """The replica holding the page's WebSocket: the only connection to these
        gateways comes from the browser."""
        for gateway in self.gateways:
            if gateway.alive and any(
                    c.status == psutil.CONN_ESTABLISHED and c.laddr.port == self.ws_port
                    for c in psutil.Process(gateway.popen.pid).net_connections("tcp")):
                return gateway
        raise AssertionError("no gateway replica holds the page's connection")

    def listening(self, gateway: Process) -> bool:
        return gateway.alive and any(
            c.status == psutil.CONN_LISTEN and c.laddr.port == self.ws_port
            for c in psutil.Process(gateway.popen.pid).net_connections("tcp"))


def _wait(what: str, check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="package")
def web(stack: LocalExchange) -> Iterator[WebExchange]:
    api_port, ws_port = free_ports(2)
    exe = _exchange_command()
    env = {**stack._child_env(), "EXCHANGE_PUBLIC_WS_URL": f"ws://127.0.0.1:{ws_port}/ws"}
    logs = stack.options.log_dir or stack.options.data_dir
    logs.mkdir(parents=True, exist_ok=True)
    api = Process("web-api", [*exe, "api", "--host", "127.0.0.1", "--port", str(api_port)],
                  env, logs / "web-api.log")
    gateways = [Process(f"web-gateway-{n}", [*exe, "gateway", "--host", "127.0.0.1", "--port",
                                             str(ws_port), "--reuse-port"],
                        env, logs / f"web-gateway-{n}.log") for n in (1, 2)]
    exchange = WebExchange(f"http://127.0.0.1:{api_port}", ws_port,
                           stack.options.admin_token, api, gateways)
    for process in (api, *gateways):
        process.start()
    try:
        _wait("the pages' API to be ready", lambda: _http_ok(f"{exchange.api_url}/readyz"))
        for gateway in gateways:
            _wait(f"{gateway.name} to listen", lambda: exchange.listening(gateway))
        yield exchange
    finally:
        for process in (*gateways, api):
            process.stop()


@pytest.fixture(scope="package")
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable,
                                                    args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@dataclass
class OpenPage:
    """A page and what its console said: any error there fails the test that reads it."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text} at {message.location}")


@pytest.fixture
async def open_page(browser: Browser) -> AsyncIterator:
    """`await open_page(url)`: a page in a fresh context (its own storage), loaded."""
    contexts = []

    async def opener(url: str, *, websocket: Callable[[WebSocketRoute], Any] | None = None,
                     ) -> OpenPage:
        """`websocket`: a handler every WebSocket of the page goes through (to tamper)."""
        context = await browser.new_context(viewport=VIEWPORT)
        contexts.append(context)
        page = await context.new_page()
        opened = OpenPage(page)
        page.on("console", opened.on_console)
        page.on("pageerror", lambda exc: opened.errors.append(f"uncaught: {exc}"))
        if websocket is not None:
            await page.route_web_socket("**/ws", websocket)
        await page.goto(url)
        return opened

    yield opener
    await asyncio.gather(*(context.close() for context in contexts))


@pytest.fixture(scope="session")
def screenshots(request: pytest.FixtureRequest) -> Path:
    """Where the browser tests leave screenshots for a person to look at."""
    path = Path(request.config.rootpath) / "test-artifacts" / "web"
    path.mkdir(parents=True, exist_ok=True)
    return path
