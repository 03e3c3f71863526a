"""Candle intervals served by the exchange, with their length in milliseconds."""

from __future__ import annotations

INTERVALS_MS: dict[str, int] = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}
