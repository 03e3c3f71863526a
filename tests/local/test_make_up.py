"""`make up` runs the whole exchange: the page is served and the book moves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil

from services.local.redis_cluster import free_ports
from tests.support.watcher import BookWatcher

ROOT = Path(__file__).resolve().parents[2]


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"make up exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{path} not written within {timeout} s"
        time.sleep(0.1)
    return json.loads(path.read_text())


async def test_make_up_serves_the_page_and_a_moving_book_then_stops_cleanly(tmp_path) -> None:
    api_port, ws_port = free_ports(2)
    env = {**os.environ, "EXCHANGE_API_PORT": str(api_port), "EXCHANGE_WS_PORT": str(ws_port),
           "EXCHANGE_REDIS_PORT": str(free_ports(1)[0]), "EXCHANGE_DATA_DIR": str(tmp_path),
           "EXCHANGE_SIMULATE_RATE": "40", "EXCHANGE_ADMIN_TOKEN": "smoke-test-token"}
    env.pop("REDIS_URL", None)
    log = open(tmp_path / "make-up.log", "wb")  # noqa: SIM115
    # A session of its own, like a terminal: Ctrl-C goes to the whole foreground group.
    make = subprocess.Popen(["make", "--no-print-directory", "up"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        endpoints = wait_for_file(tmp_path / "endpoints.json", make, timeout=120)
        assert endpoints["api_url"] == f"http://127.0.0.1:{api_port}"
        assert endpoints["ws_url"] == f"ws://127.0.0.1:{ws_port}/ws"
        assert endpoints["pairs"] == ["BTC-USD", "ETH-USD", "ETH-BTC"]
        assert len(endpoints["redis_nodes"]) == 6
        assert endpoints["admin_token"] == "smoke-test-token"

        async with httpx.AsyncClient(base_url=endpoints["api_url"]) as http:
            page = await http.get("/")
            assert page.status_code == 200 and "<html" in page.text.lower()
            assert (await http.get("/static/app.js")).status_code == 200
            assert (await http.get("/config.json")).json()["ws_url"] == endpoints["ws_url"]

        # The simulated market keeps the book moving: deltas arrive, in order.
        async with BookWatcher(endpoints["ws_url"], "BTC-USD") as watcher:
            first_seq = watcher.seq
            await watcher.wait_for(lambda w: w.seq >= first_seq + 3 and w.bids and w.asks,
                                   timeout=30, what="a two-sided book moving three times")
            assert watcher.violations == []

        descendants = psutil.Process(make.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in descendants)
        for command in ("engine --pair BTC-USD", "engine --pair ETH-USD",
                        "engine --pair ETH-BTC", "settlement", "api", "simulate"):
            assert command in names
        assert names.count(" gateway ") == 2
    finally:
        os.killpg(make.pid, signal.SIGINT)
        try:
            make.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            raise
    _, alive = psutil.wait_procs(descendants, timeout=15)
    assert alive == [], f"still running after Ctrl-C: {[p.cmdline() for p in alive]}"
