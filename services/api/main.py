"""`exchange api`: the REST API and web page under uvicorn."""

from __future__ import annotations

import argparse
import dataclasses

import uvicorn

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.common.process import configure_logging


def main(argv: list[str] | None = None) -> int:
    settings = ApiSettings.from_env()
    parser = argparse.ArgumentParser(prog="exchange api")
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--redis-url", default=settings.redis_url)
    args = parser.parse_args(argv)
    settings = dataclasses.replace(settings, host=args.host, port=args.port,
                                   redis_url=args.redis_url)
    configure_logging("api")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                loop="uvloop", http="httptools", log_level="warning", access_log=False)
    return 0
