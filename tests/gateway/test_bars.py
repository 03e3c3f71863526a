"""The gateway's pure candle and ticker state, and the client frame rate limit (no I/O)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.messages import CandleTick
from services.common.pairs import load_markets
from services.gateway.bars import (
    MINUTE_MS,
    CandleStream,
    RollingDay,
    parse_bar,
    window_start,
)
from services.gateway.protocol import FrameRateLimit

PAIR = load_markets().pair("BTC-USD")


def bar(t: int, n: int, o: int = 100, h: int = 100, low: int = 100, c: int = 100,
        v: int = 1, qv: int = 10, interval: str = "1m") -> CandleTick:
    return CandleTick(interval, t, o, h, low, c, v, qv, n)


def test_parse_bar_reads_the_stored_wire_json() -> None:
    member = (b'{"t":60000,"o":"67001.50","h":"67010.00","l":"67000.01","c":"67002.00",'
              b'"v":"1.2500","qv":"83752.50","n":3}')
    assert parse_bar(PAIR, "5m", member) == CandleTick(  # qv: USD has 6 decimals
        "5m", 60000, 6700150, 6701000, 6700001, 6700200, 12500, 83_752_500_000, 3)


def test_a_bar_closes_when_a_newer_one_starts_or_its_time_is_up() -> None:
    stream = CandleStream("1m", grace_ms=1000)
    assert stream.apply(bar(0, 1), now_ms=10) == [(bar(0, 1), False)]
    assert stream.apply(bar(0, 2), now_ms=20) == [(bar(0, 2), False)]
    assert stream.apply(bar(0, 1), now_ms=30) == []  # stale: an older state of the bar
    assert stream.closes_at == 61_000
    # A newer bar: the current one is sent once more, closed, then the new one.
    assert stream.apply(bar(60_000, 1), now_ms=60_500) == [(bar(0, 2), True),
                                                             (bar(60_000, 1), False)]
    assert stream.apply(bar(0, 3), now_ms=60_600) == []  # t never goes back
    assert stream.expire(120_999) is None  # within the grace
    assert stream.expire(121_000) == bar(60_000, 1)
    assert stream.expire(121_001) is None  # once
    # A trade of the bar that arrives after its close corrects it, still closed.
    assert stream.apply(bar(60_000, 2), now_ms=121_100) == [(bar(60_000, 2), True)]
    # The next bar after a closed one: nothing to close again.
    assert stream.apply(bar(180_000, 1), now_ms=190_000) == [(bar(180_000, 1), False)]


def test_an_old_bar_is_closed_from_the_start() -> None:
    stream = CandleStream("1m", grace_ms=1000)
    assert stream.apply(bar(0, 5), now_ms=3_600_000) == [(bar(0, 5), True)]
    assert stream.expire(3_600_000) is None


def test_window_start_is_the_rest_tickers() -> None:
    now = 1_767_225_645_123
    assert window_start(now) == now - now % 60_000 - 1439 * 60_000


# Steps of a pair's 1-minute bar history: (minutes forward, 0 = another trade in the same
# bar; how much the trade raises the high / lowers the low; lots).
steps = st.lists(st.tuples(st.integers(0, 400), st.integers(0, 3), st.integers(0, 3),
                           st.integers(1, 9)), min_size=1, max_size=60)


def history(trades: list[tuple[int, int, int, int]]) -> list[CandleTick]:
    """Every state of every bar, in the order the engine publishes them."""
    states: list[CandleTick] = []
    for forward, up, down, lots in trades:
        last = states[-1] if states else None
        if last is None or forward:
            t = (last.t if last else 0) + forward * MINUTE_MS
            states.append(bar(t, 1, o=100, h=100 + up, low=100 - down, v=lots, qv=lots * 7))
        else:
            states.append(bar(last.t, last.n + 1, o=100, h=last.h + up, low=last.l - down,
                              v=last.v + lots, qv=last.qv + lots * 7))
    return states


@settings(max_examples=300, deadline=None)
@given(trades=steps, marks=st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(0, 60)),
       nows=st.lists(st.integers(0, 30_000), min_size=1, max_size=6))
def test_rolling_day_matches_a_full_recount(trades: list, marks: tuple[int, int, int],
                                            nows: list[int]) -> None:
    """The gateway subscribes at position `s` of the history, reads Redis (all bars as of
    position `k` >= s) and gets the read's result after the stream delivered up to `j`:
    whatever the order, the figures are those of a full recount of the true bars."""
    states = history(trades)
    s, k = sorted(min(m, len(states)) for m in marks[:2])
    j = max(s, min(marks[2], len(states)))
    read = {b.t: b for b in states[:k]}  # the newest state of each bar as of k
    day = RollingDay()
    for b in states[s:j]:
        day.apply(b)
    day.merge(read.values())
    for b in states[j:]:
        day.apply(b)
    truth = {b.t: b for b in states}
    for now in sorted(nows):
        start = window_start(now * MINUTE_MS)
        window = [b for t, b in sorted(truth.items()) if t >= start]
        expected = None if not window else (window[0].o, max(b.h for b in window),
                                            min(b.l for b in window), sum(b.v for b in window),
                                            sum(b.qv for b in window))
        assert day.figures(start) == expected
        assert list(day.bars) == window


def test_frame_rate_limit_allows_a_burst_then_the_rate_then_calls_a_flood() -> None:
    limit = FrameRateLimit(per_s=10, burst=20, max_excess=50, now=0.0)
    assert [limit.check(0.0) for _ in range(20)] == ["ok"] * 20
    assert limit.check(0.0) == "refused"
    assert limit.check(0.1) == "ok"  # one token back after 0.1 s
    assert limit.check(0.1) == "refused"
    for _ in range(47):
        assert limit.check(0.1) == "refused"
    assert limit.check(0.1) == "refused"  # excess 50, forgiven at one a second
    assert limit.check(0.1) == "flood"
    calm = FrameRateLimit(per_s=10, burst=20, max_excess=50, now=0.0)
    # A steady 10 frames per second is always fine.
    assert all(calm.check(i / 10) == "ok" for i in range(1000))
