"""Client -> server frames: parse and validate, or refuse with a stable error code.

A request is validated whole before anything happens, so an op with one bad argument
changes nothing (DESIGN §9: bad input gets a clear error and changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from services.common.errors import ExchangeError
from services.common.intervals import INTERVALS_MS
from services.common.pairs import Markets

BOOK_DEPTHS = (10, 50, 200)
DEFAULT_BOOK_DEPTH = 50
MAX_ID_LENGTH = 64

Channel = Literal["book", "trades", "candles", "ticker", "orders", "fills", "balances"]
PUBLIC_CHANNELS: tuple[Channel, ...] = ("book", "trades", "candles", "ticker")
# The logged-in account's channels: no symbol, one subscription each per connection.
PRIVATE_CHANNELS: tuple[Channel, ...] = ("orders", "fills", "balances")
CHANNELS: tuple[Channel, ...] = PUBLIC_CHANNELS + PRIVATE_CHANNELS
# (channel, symbol, interval): one subscription per pair and channel (and candle interval);
# a private channel's key is (channel, "", "").
TopicKey = tuple[str, str, str]
MAX_API_KEY_LENGTH = 128
MAX_SIGNATURE_LENGTH = 128

_decode = msgspec.json.decode


@dataclass(frozen=True, slots=True)
class Topic:
    """One subscription argument; `depth` is 0 and `interval` "" for channels without."""

    ch: Channel
    symbol: str
    depth: int = 0
    interval: str = ""

    @property
    def key(self) -> TopicKey:
        return (self.ch, self.symbol, self.interval)

    @property
    def private(self) -> bool:
        return self.ch in PRIVATE_CHANNELS


@dataclass(frozen=True, slots=True)
class Credentials:
    """A `login` op's fields (API.md): signature = hex HMAC-SHA256(secret,
    timestamp + "GET" + "/ws")."""

    api_key: str
    timestamp: int  # Unix ms
    signature: str


@dataclass(frozen=True, slots=True)
class Request:
    op: Literal["subscribe", "unsubscribe", "ping", "login"]
    id: int | str | None
    topics: tuple[Topic, ...] = ()
    credentials: Credentials | None = None  # login only


class RequestError(ExchangeError):
    """A refused frame, with the op and id to echo when they could be read."""

    def __init__(self, code: str, message: str, op: str | None = None,
                 request_id: int | str | None = None) -> None:
        super().__init__(code, message)
        self.op = op
        self.request_id = request_id


def parse_request(frame: str | bytes, markets: Markets) -> Request:
    """The validated request in `frame`, or RequestError (INVALID_JSON, INVALID_REQUEST,
    UNKNOWN_OP, UNKNOWN_CHANNEL, UNKNOWN_SYMBOL, INVALID_DEPTH, INVALID_INTERVAL). A login's
    credentials are only checked for form here; the gateway verifies them."""
    if isinstance(frame, bytes):
        raise RequestError("INVALID_REQUEST", "frames must be JSON text, not binary")
    try:
        doc = _decode(frame)
    except msgspec.DecodeError as exc:
        raise RequestError("INVALID_JSON", f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RequestError("INVALID_REQUEST", "a request must be a JSON object")
    request_id = doc.get("id")
    if not (request_id is None or (isinstance(request_id, str) and len(request_id) <= MAX_ID_LENGTH)
            or (isinstance(request_id, int) and not isinstance(request_id, bool))):
        raise RequestError("INVALID_REQUEST",
                           f"id must be an integer or a string of at most {MAX_ID_LENGTH}")
    op = doc.get("op")
    if not isinstance(op, str):
        raise RequestError("INVALID_REQUEST", "op must be a string", None, request_id)
    if op == "ping":
        return Request("ping", request_id)
    if op == "login":
        return Request("login", request_id, credentials=_credentials(doc, request_id))
    if op not in ("subscribe", "unsubscribe"):
        raise RequestError("UNKNOWN_OP", f"unknown op {op[:32]!r}", op[:32], request_id)
    try:
        topics = _parse_topics(doc.get("args"), markets, with_depth=op == "subscribe")
    except ExchangeError as exc:
        raise RequestError(exc.code, exc.message, op, request_id) from None
    return Request(op, request_id, topics)


def _parse_topics(args: object, markets: Markets, with_depth: bool) -> tuple[Topic, ...]:
    if not isinstance(args, list) or not args:
        raise ExchangeError("INVALID_REQUEST", "args must be a non-empty list")
    topics: dict[TopicKey, Topic] = {}  # a repeated topic counts once, the last one wins
    for arg in args:
        if not isinstance(arg, dict):
            raise ExchangeError("INVALID_REQUEST", "each arg must be an object")
        ch = arg.get("ch")
        if ch not in CHANNELS:
            raise ExchangeError("UNKNOWN_CHANNEL", f"unknown channel {str(ch)[:32]!r}")
        if ch in PRIVATE_CHANNELS:
            if "symbol" in arg:
                raise ExchangeError("INVALID_REQUEST",
                                    f"{ch} is an account channel: it takes no symbol")
            topic = Topic(ch, "")
            topics[topic.key] = topic
            continue
        symbol = markets.pair(arg.get("symbol")).symbol
        depth = _depth(arg.get("depth", DEFAULT_BOOK_DEPTH)) if ch == "book" and with_depth else 0
        interval = _interval(arg.get("interval")) if ch == "candles" else ""
        topic = Topic(ch, symbol, depth, interval)
        topics[topic.key] = topic
    return tuple(topics.values())


def _credentials(doc: dict, request_id: int | str | None) -> Credentials:
    api_key, timestamp, signature = doc.get("api_key"), doc.get("timestamp"), doc.get("signature")
    if not isinstance(api_key, str) or not api_key:
        message = "api_key must be a non-empty string"
    elif type(timestamp) is not int:  # not true, not 1.7e12, not "1767225600000"
        message = "timestamp must be an integer (Unix ms)"
    elif not isinstance(signature, str) or not signature:
        message = "signature must be a non-empty string"
    elif len(api_key) > MAX_API_KEY_LENGTH or len(signature) > MAX_SIGNATURE_LENGTH:
        message = (f"api_key and signature are at most {MAX_API_KEY_LENGTH} and "
                   f"{MAX_SIGNATURE_LENGTH} characters")
    else:
        return Credentials(api_key, timestamp, signature)
    raise RequestError("INVALID_REQUEST", message, "login", request_id)


def _interval(value: object) -> str:
    if not isinstance(value, str) or value not in INTERVALS_MS:
        raise ExchangeError("INVALID_INTERVAL",
                            f"interval must be one of {', '.join(INTERVALS_MS)}")
    return value


def _depth(value: object) -> int:
    # type() rather than isinstance(): JSON true or 50.0 is not a depth.
    if type(value) is not int or value not in BOOK_DEPTHS:
        raise ExchangeError("INVALID_DEPTH",
                            f"depth must be one of {', '.join(map(str, BOOK_DEPTHS))}")
    return value


class FrameRateLimit:
    """Client frames per second: a token bucket (`per_s`, `burst`). A frame without a
    token is refused; refused frames accumulate as excess, forgiven at
    `forgive_per_s`, and excess above `max_excess` means the client keeps flooding."""

    __slots__ = ("burst", "excess", "forgive_per_s", "max_excess", "per_s", "stamp", "tokens")

    def __init__(self, per_s: float, burst: int, max_excess: int, now: float,
                 forgive_per_s: float = 1.0) -> None:
        self.per_s = per_s
        self.burst = burst
        self.max_excess = max_excess
        self.forgive_per_s = forgive_per_s
        self.tokens = float(burst)
        self.excess = 0.0
        self.stamp = now

    def check(self, now: float) -> Literal["ok", "refused", "flood"]:
        """Count one frame at monotonic time `now`."""
        elapsed, self.stamp = now - self.stamp, now
        self.tokens = min(self.burst, self.tokens + elapsed * self.per_s)
        self.excess = max(0.0, self.excess - elapsed * self.forgive_per_s)
        if self.tokens >= 1:
            self.tokens -= 1
            return "ok"
        self.excess += 1
        return "flood" if self.excess > self.max_excess else "refused"
