"""The audit log: every committed command and event, exported and verified by replay.

`exchange audit export|verify` runs as a user runs it (its own process) on a pair whose
engine ran on the real cluster; the verify fails on a log with one event altered, one
event entry missing, or one command changed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from pathlib import Path

import pytest

from services.common import keys
from services.common.messages import CancelOrder, Command, PlaceOrder, encode
from services.common.pairs import Pair, load_markets
from services.common.redis_conn import AnyRedis
from services.engine.audit import AuditMismatch, export, read_file, verify, verify_live
from services.engine.runner import Engine
from services.engine.snapshot import restore

PAIRS_TOML = """
[assets]
{base} = { decimals = 8 }
USD = { decimals = 6 }

[[pairs]]
symbol = "{symbol}"
tick_size = "0.01"
lot_size = "0.001"
min_qty = "0.001"
max_qty = "1000"
min_notional = "1"
price_decimals = 2
qty_decimals = 3
"""


def pairs_file(tmp_path: Path, symbol: str) -> tuple[Path, Pair]:
    """A pairs file with one pair of the test's own (no engine of the stack touches it)."""
    path = tmp_path / "pairs.toml"
    path.write_text(PAIRS_TOML.replace("{symbol}", symbol)
                    .replace("{base}", symbol.split("-")[0]))
    return path, load_markets(path).pair(symbol)


def trading(n: int, seed: int) -> list[Command]:
    """Crossing limit orders around one price and cancels of earlier ones: trades,
    partial fills, cancels, expired IOCs and refused cancels all happen."""
    rnd = random.Random(seed)
    commands: list[Command] = []
    for i in range(n):
        if commands and rnd.random() < 0.2:
            placed = rnd.choice(commands)
            if isinstance(placed, PlaceOrder):
                commands.append(CancelOrder(placed.order_id, placed.account_id))
                continue
        commands.append(PlaceOrder(f"o{seed}-{i}", rnd.choice("abc"),
                                   rnd.choice(["buy", "sell"]),
                                   10_000 + rnd.randint(-15, 15), rnd.randint(1, 40),
                                   rnd.choice(["GTC", "GTC", "IOC"])))  # type: ignore[arg-type]
    return commands


async def trade(redis: AnyRedis, engine: Engine, commands: list[Command], batch: int) -> None:
    """Queue the commands as the API does and let the engine commit them in batches."""
    pipe = redis.pipeline(transaction=False)
    for command in commands:
        pipe.xadd(engine.keys.inbox, {"c": encode(command), "tp": b""})
    await pipe.execute()
    engine.batch_size = batch
    while entries := await engine.read_batch():
        await engine.process_batch(entries)


async def exchange_cli(*args: str, pairs: Path) -> tuple[int, str]:
    """Run `exchange ARGS` in its own process; (exit code, stdout + stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args,
        env={**os.environ, "EXCHANGE_PAIRS_FILE": str(pairs)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode()


def rewrite(source: Path, target: Path, change) -> None:
    """Copy an exported log, passing each record (a dict) through `change`, which
    returns it (changed or not) or None to drop it."""
    lines = []
    for line in source.read_text().splitlines():
        record = change(json.loads(line))
        if record is not None:
            lines.append(json.dumps(record))
    target.write_text("\n".join(lines) + "\n")


async def test_exchange_audit_verifies_a_runs_log_and_fails_on_one_altered_event(
        redis: AnyRedis, redis_cluster, tmp_path: Path) -> None:
    pairs, pair = pairs_file(tmp_path, "AUDA-USD")
    engine = Engine(redis, pair)
    await engine.recover()
    await trade(redis, engine, trading(400, seed=7), batch=37)
    k = keys.PairKeys(pair.symbol)
    event_seq = int(await redis.hget(k.state, "event_seq"))
    entries = await redis.xlen(k.events)

    log = tmp_path / "audit.jsonl"
    code, out = await exchange_cli("audit", "export", pair.symbol, "--out", str(log),
                                   "--redis-url", redis_cluster.url, pairs=pairs)
    assert code == 0, out
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0]["type"] == "header" and records[0]["snapshot"] == ""
    assert sum(r["type"] == "input" for r in records) == 400
    assert sum(r["type"] == "events" for r in records) == entries
    assert sum(len(r["events"]) for r in records if r["type"] == "events") == event_seq
    assert any(e["k"] == "trade" for r in records if r["type"] == "events" for e in r["events"])

    for source in (["--file", str(log)], []):  # the exported file, and the log in Redis
        code, out = await exchange_cli("audit", "verify", pair.symbol, *source,
                                       "--redis-url", redis_cluster.url, pairs=pairs)
        assert code == 0, out
        assert (f"{pair.symbol}: log verified from the pair's start: 400 inputs replayed; "
                f"{event_seq} events in {entries} entries reproduced byte for byte") in out

    # One trade's quantity altered: the replay names the entry and the event.
    altered = tmp_path / "altered.jsonl"
    target: dict[str, int] = {}

    def alter_one_trade(record: dict) -> dict:
        if not target and record["type"] == "events":
            for event in record["events"]:
                if event["k"] == "trade":
                    event["qty"] += 1
                    target["seq"] = event["seq"]
                    break
        return record

    rewrite(log, altered, alter_one_trade)
    code, out = await exchange_cli("audit", "verify", pair.symbol, "--file", str(altered),
                                   pairs=pairs)
    assert code == 1, out
    assert "does NOT verify" in out and f"event seq {target['seq']} differs" in out


async def test_verify_fails_on_a_missing_event_entry_or_a_changed_command(
        redis: AnyRedis, tmp_path: Path) -> None:
    _, pair = pairs_file(tmp_path, "AUDB-USD")
    engine = Engine(redis, pair)
    await engine.recover()
    await trade(redis, engine, trading(150, seed=11), batch=20)
    log = tmp_path / "audit.jsonl"
    with log.open("wb") as out:
        await export(redis, pair, out)
    with log.open("rb") as lines:
        assert verify(pair, read_file(lines)).inputs == 150

    dropped = tmp_path / "dropped.jsonl"
    seen = {"events": 0}

    def drop_third_entry(record: dict) -> dict | None:
        if record["type"] == "events":
            seen["events"] += 1
            if seen["events"] == 3:
                return None
        return record

    rewrite(log, dropped, drop_third_entry)
    with dropped.open("rb") as lines, pytest.raises(AuditMismatch, match="differs"):
        verify(pair, read_file(lines))

    repriced = tmp_path / "repriced.jsonl"
    changed: dict[str, bool] = {}

    def reprice_one_order(record: dict) -> dict:
        command = record.get("command") or {}
        if not changed and command.get("k") == "place" and command.get("tif", "GTC") == "GTC":
            command["price"] += 5
            changed["done"] = True
        return record

    rewrite(log, repriced, reprice_one_order)
    assert changed
    with repriced.open("rb") as lines, pytest.raises(AuditMismatch, match="differs"):
        verify(pair, read_file(lines))


async def test_a_log_trimmed_behind_snapshots_verifies_from_the_latest_snapshot(
        redis: AnyRedis, tmp_path: Path) -> None:
    _, pair = pairs_file(tmp_path, "AUDC-USD")
    engine = Engine(redis, pair)
    await engine.recover()
    commands = trading(900, seed=5)
    await trade(redis, engine, commands[:400], batch=50)
    await engine.snapshot()
    await trade(redis, engine, commands[400:800], batch=50)
    await engine.snapshot()  # trims the inputs before the first snapshot
    await trade(redis, engine, commands[800:], batch=50)
    inbox = keys.PairKeys(pair.symbol).inbox
    assert await redis.xlen(inbox) < 900  # the log no longer goes back to the start

    k = keys.PairKeys(pair.symbol)
    snapshot, _, _ = restore(await redis.get(k.snapshot), pair.market_band_bps)
    result = await verify_live(redis, pair)
    assert result.from_snapshot
    assert result.inputs == 100  # the inputs committed after the latest snapshot
    assert result.events == int(await redis.hget(k.state, "event_seq")) - snapshot.last_seq
