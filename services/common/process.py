"""Running a service process: logging, uvloop, and a clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable


def configure_logging(service: str) -> None:
    logging.basicConfig(
        level=os.environ.get("EXCHANGE_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
    # Per-request lines from client and server libraries drown what matters.
    for noisy in ("httpx", "websockets.server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_service(service: str, body: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run `body(stop)` on uvloop until it returns; SIGINT/SIGTERM set `stop`."""
    configure_logging(service)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await body(stop)

    try:
        import uvloop
    except ImportError:  # uvloop is optional off Linux/macOS
        asyncio.run(main())
    else:
        uvloop.run(main())
    return 0
