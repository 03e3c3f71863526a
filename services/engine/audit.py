"""`exchange audit export|verify PAIR`: a pair's audit log, exported and checked by replay.

The log is what the exchange keeps durably anyway: the pair's input stream (every
accepted command, acknowledged only once on a replica) and its event stream (one entry
per committed batch, the events it caused; never trimmed). The engine trims inputs
older than its snapshot before last, so once it has, the log starts from its latest
snapshot rather than from the pair's start; the header says which.

Export: JSON lines. A header (pair, epoch, the last committed input and event seq it
covers, the snapshot it starts from if any, base64), then inputs (`{"type":"input","id",
"command"}`) and event entries (`{"type":"events","id","seq","events"}`) merged in
stream-id order. Only what is committed is exported: inputs up to the engine's last
committed input, events up to its event seq.

Verify: replays every input through the pure book (services/engine/book.py), stamped
with its entry's time as the engine stamps it, and checks that the events it gives are
the recorded ones, entry by entry, byte for byte in the engine's encoding (msgpack of
the event structs), with nothing missing and nothing extra.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec
from redis.exceptions import ResponseError

from services.common import keys
from services.common.messages import Command, Event, command_decoder, encode, events_decoder
from services.common.pairs import Pair, load_markets
from services.common.redis_conn import DEFAULT_REDIS_URL, REDIS_URL_ENV, AnyRedis, connect
from services.engine.book import OrderBook
from services.engine.runner import entry_time_ms
from services.engine.snapshot import restore

PAGE = 1000  # stream entries per read


class LogHeader(msgspec.Struct, frozen=True, tag="header", tag_field="type"):
    pair: str
    epoch: str
    last_input_id: str  # the last committed input the log covers ("" = none yet)
    event_seq: int  # the last event seq it covers
    snapshot: bytes = b""  # the engine snapshot the log starts from; empty: the pair's start


class LogInput(msgspec.Struct, frozen=True, tag="input", tag_field="type"):
    id: str
    command: Command | None  # None: not a command (the engine skips it too)


class LogEvents(msgspec.Struct, frozen=True, tag="events", tag_field="type"):
    id: str
    seq: int  # the seq of the entry's last event
    events: list[Event]


LogRecord = LogHeader | LogInput | LogEvents
_record_decoder = msgspec.json.Decoder(LogRecord)
_json = msgspec.json.Encoder()


class AuditMismatch(Exception):
    """The log does not reproduce: the message says where and how."""


# ---- export -------------------------------------------------------------------------


def _id(entry_id: bytes) -> tuple[int, int]:
    ms, _, n = entry_id.partition(b"-")
    return int(ms), int(n or 0)


async def _entries(redis: AnyRedis, key: str, start: str,
                   end: str) -> AsyncIterator[tuple[bytes, dict[bytes, bytes]]]:
    while True:
        page = await redis.xrange(key, start, end, count=PAGE)
        for entry in page:
            yield entry
        if len(page) < PAGE:
            return
        start = "(" + page[-1][0].decode()


def _input(entry_id: bytes, fields: dict[bytes, bytes]) -> LogInput:
    try:
        command: Command | None = command_decoder.decode(fields[b"c"])
    except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
        command = None
    return LogInput(entry_id.decode(), command)


async def read_log(redis: AnyRedis, pair: Pair) -> AsyncIterator[LogRecord]:
    """The pair's committed log: header, then inputs and event entries by stream id."""
    k = keys.PairKeys(pair.symbol)
    snapshot = await redis.get(k.snapshot) or b""  # before the state: never newer than it
    epoch, last_input, event_seq = await redis.hmget(k.state, "epoch", "last_input_id",
                                                     "event_seq")
    last_input_id = (last_input or b"").decode()
    start_input, start_seq = "-", 0
    trimmed = await _removed(redis, k.inbox)
    if not trimmed:
        snapshot = b""  # every input since the pair began is there: replay from scratch
    else:
        if not snapshot:
            raise AuditMismatch(f"{pair.symbol}: inputs were trimmed and no snapshot exists")
        snap, _, _ = restore(snapshot, pair.market_band_bps)
        start_input, start_seq = "(" + snap.last_input_id, snap.last_seq
    yield LogHeader(pair.symbol, (epoch or b"").decode(), last_input_id, int(event_seq or 0),
                    snapshot)
    if not last_input_id:
        return
    inputs = _entries(redis, k.inbox, start_input, last_input_id)
    events = _entries(redis, k.events, "-", "+")
    nxt_input = await anext(inputs, None)
    nxt_events = await anext(events, None)
    while nxt_events is not None and int(nxt_events[1][b"seq"]) <= start_seq:
        nxt_events = await anext(events, None)
    while nxt_input is not None or nxt_events is not None:
        if nxt_events is not None and int(nxt_events[1][b"seq"]) > int(event_seq or 0):
            nxt_events = None  # committed after the state was read: not in this log
            continue
        if nxt_events is None or (nxt_input is not None
                                  and _id(nxt_input[0]) <= _id(nxt_events[0])):
            assert nxt_input is not None
            yield _input(*nxt_input)
            nxt_input = await anext(inputs, None)
        else:
            entry_id, fields = nxt_events
            yield LogEvents(entry_id.decode(), int(fields[b"seq"]),
                            events_decoder.decode(fields[b"e"]))
            nxt_events = await anext(events, None)
    if await _removed(redis, k.inbox) != trimmed:  # some read may have missed inputs
        raise AuditMismatch(f"{pair.symbol}: inputs were trimmed during the export; "
                            "run it again")


async def _removed(redis: AnyRedis, stream: str) -> int:
    """How many entries were ever trimmed or deleted from the stream."""
    try:
        info = await redis.xinfo_stream(stream)
    except ResponseError as exc:  # no such stream: nothing was ever removed
        if "no such key" in str(exc).lower():
            return 0
        raise
    return int(info["entries-added"]) - int(info["length"])


def record_line(record: LogRecord) -> bytes:
    return _json.encode(record) + b"\n"


async def export(redis: AnyRedis, pair: Pair, out: IO[bytes]) -> int:
    """Write the pair's log as JSON lines; returns the records written."""
    written = 0
    async for record in read_log(redis, pair):
        out.write(record_line(record))
        written += 1
    return written


def read_file(lines: Iterable[bytes]) -> Iterator[LogRecord]:
    """The records of an exported log (AuditMismatch on a line that is not one)."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield _record_decoder.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise AuditMismatch(f"line {number} is not an audit record: {exc}") from exc


# ---- verify -------------------------------------------------------------------------


@dataclass
class Verified:
    pair: str
    from_snapshot: bool
    inputs: int
    skipped: int  # inputs that are not commands (the engine skipped them too)
    entries: int
    events: int


class Verifier:
    """Replays a log's records as they come; raises AuditMismatch at the first
    difference. Order-tolerant: an event entry may come before the inputs that made it."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.book: OrderBook | None = None
        self.replayed: deque[Event] = deque()
        self.recorded: deque[LogEvents] = deque()
        self.result = Verified(pair.symbol, False, 0, 0, 0, 0)

    def feed(self, record: LogRecord) -> None:
        if isinstance(record, LogHeader):
            if record.pair != self.pair.symbol:
                raise AuditMismatch(f"the log is of {record.pair}, not {self.pair.symbol}")
            if record.snapshot:
                _, self.book, _ = restore(record.snapshot, self.pair.market_band_bps)
                self.result.from_snapshot = True
            else:
                self.book = OrderBook(band_bps=self.pair.market_band_bps)
            return
        if self.book is None:
            raise AuditMismatch("the log does not begin with its header")
        if isinstance(record, LogInput):
            self.result.inputs += 1
            if record.command is None:
                self.result.skipped += 1
            else:
                self.replayed.extend(self.book.apply(record.command,
                                                     entry_time_ms(record.id.encode())))
        else:
            self.recorded.append(record)
        self._compare()

    def _compare(self) -> None:
        while self.recorded and len(self.recorded[0].events) <= len(self.replayed):
            entry = self.recorded.popleft()
            if not entry.events:
                raise AuditMismatch(f"events entry {entry.id} holds no event")
            mine = [self.replayed.popleft() for _ in entry.events]
            if encode(mine) != encode(entry.events) or entry.seq != mine[-1].seq:
                for theirs, ours in zip(entry.events, mine, strict=True):
                    if encode(theirs) != encode(ours):
                        raise AuditMismatch(
                            f"events entry {entry.id}: event seq {ours.seq} differs from "
                            f"the replay: recorded {_json.encode(theirs).decode()}, "
                            f"replayed {_json.encode(ours).decode()}")
                raise AuditMismatch(f"events entry {entry.id} says seq {entry.seq}, "
                                    f"its last event is seq {mine[-1].seq}")
            self.result.entries += 1
            self.result.events += len(mine)

    def finish(self) -> Verified:
        if self.book is None:
            raise AuditMismatch("the log is empty")
        if self.recorded:
            entry = self.recorded[0]
            raise AuditMismatch(f"events entry {entry.id} (seq {entry.seq}) has no inputs "
                                "that make its events")
        if self.replayed:
            first, last = self.replayed[0].seq, self.replayed[-1].seq
            raise AuditMismatch(f"the inputs make events seq {first}..{last}, which the log "
                                "does not hold")
        return self.result


def verify(pair: Pair, records: Iterable[LogRecord]) -> Verified:
    """Replay `records`; the counts if they reproduce, else AuditMismatch."""
    verifier = Verifier(pair)
    for record in records:
        verifier.feed(record)
    return verifier.finish()


async def verify_live(redis: AnyRedis, pair: Pair) -> Verified:
    """Verify the pair's log as it stands in Redis."""
    verifier = Verifier(pair)
    async for record in read_log(redis, pair):
        verifier.feed(record)
    return verifier.finish()


# ---- the command --------------------------------------------------------------------


def describe(result: Verified) -> str:
    start = "its latest snapshot" if result.from_snapshot else "the pair's start"
    skipped = f" ({result.skipped} not commands, skipped)" if result.skipped else ""
    return (f"{result.pair}: log verified from {start}: {result.inputs} inputs"
            f"{skipped} replayed; {result.events} events in {result.entries} entries "
            "reproduced byte for byte")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exchange audit", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["export", "verify"])
    parser.add_argument("pair", help="the trading pair, e.g. BTC-USD")
    parser.add_argument("--redis-url", default=os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL))
    parser.add_argument("--out", type=Path, help="export: write here (default: stdout)")
    parser.add_argument("--file", type=Path,
                        help="verify: an exported log (default: the log in Redis)")
    args = parser.parse_args(argv)
    pair = load_markets().pair(args.pair)

    async def live(redis_url: str) -> Verified | int:
        redis = await connect(redis_url)
        try:
            if args.action == "verify":
                return await verify_live(redis, pair)
            if args.out:
                with args.out.open("wb") as out:
                    return await export(redis, pair, out)
            return await export(redis, pair, sys.stdout.buffer)
        finally:
            await redis.aclose()

    try:
        if args.action == "verify" and args.file:
            with args.file.open("rb") as lines:
                result: Verified | int = verify(pair, read_file(lines))
        else:
            result = asyncio.run(live(args.redis_url))
    except AuditMismatch as exc:
        print(f"{pair.symbol}: audit log does NOT verify: {exc}", file=sys.stderr)
        return 1
    if isinstance(result, Verified):
        print(describe(result))
    elif args.out:
        print(f"{pair.symbol}: {result} records written to {args.out}", file=sys.stderr)
    return 0
