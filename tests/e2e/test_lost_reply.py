"""A write whose reply is lost (the connection breaks after the server ran it, as when a
master is killed mid-request) is sent again without being applied twice.

A relay between the exchange's writer and a real Redis passes every byte, except that
it cuts the connection instead of returning the reply to the first order command: the
server has appended the command, and the writer cannot know. Sending the command again
must leave it in the engine's input stream once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from redis.asyncio.client import Pipeline

from services.common import keys
from services.common.durable import DurableWriter
from services.common.messages import PlaceOrder, encode
from services.common.redis_conn import AnyRedis, connect
from tests.support.servers import single_node


class LoseOneReply:
    """A TCP relay to a Redis server that drops the reply to the first request carrying
    `marker` by closing the client's connection in its place."""

    def __init__(self, target_port: int, marker: bytes) -> None:
        self.target_port = target_port
        self.marker = marker
        self.dropped = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, client_in: asyncio.StreamReader,
                     client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        cut = asyncio.Event()

        async def requests() -> None:
            while data := await client_in.read(65536):
                if not self.dropped and self.marker in data:
                    self.dropped += 1
                    cut.set()  # whatever the server answers now is lost
                server_out.write(data)
                await server_out.drain()

        async def replies() -> None:
            while data := await server_in.read(65536):
                if cut.is_set():
                    break
                client_out.write(data)
                await client_out.drain()
            client_out.transport.abort()
            server_out.close()

        await asyncio.gather(requests(), replies(), return_exceptions=True)


@pytest_asyncio.fixture(loop_scope="session")
async def relayed(tmp_path: Path) -> AsyncIterator[tuple[AnyRedis, AnyRedis, LoseOneReply]]:
    """(a client through the relay, a direct client, the relay) on one real server."""
    with single_node(tmp_path) as url:
        relay = LoseOneReply(int(url.rsplit(":", 1)[1]), marker=b"XADD")
        await relay.start()
        through, direct = await connect(f"redis://127.0.0.1:{relay.port}"), await connect(url)
        try:
            yield through, direct, relay
        finally:
            await through.aclose()
            await direct.aclose()
            await relay.close()


async def test_an_order_command_whose_reply_was_lost_is_appended_once(relayed) -> None:
    through, direct, relay = relayed
    inbox = keys.PairKeys("BTC-USD").inbox
    command = encode(PlaceOrder("o1", "7", "buy", 6_000_000, 5))
    writer = DurableWriter(through, replicas=0)

    async def append(pipe: Pipeline) -> None:
        pipe.xadd(inbox, {"c": command, "tp": b""})

    try:
        [entry_id] = await writer.run(inbox, append)
    finally:
        await writer.aclose()
    assert relay.dropped == 1  # the first reply never arrived
    entries = await direct.xrange(inbox)
    assert [(e, f[b"c"]) for e, f in entries] == [(entry_id, command)]
