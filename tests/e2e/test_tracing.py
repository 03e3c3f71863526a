"""One order, one trace: the REST request, the engine, settlement of each side and a
gateway's write, each in its own process, joined by the traceparent the order carries.

The stack is the one `make up` runs; its processes write spans to the trace directory
`exchange up` gives them, and `exchange trace` reads them back.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from services.common.client import ExchangeClient
from services.common.trace_view import main as trace_main
from services.common.trace_view import read_spans, traces_of_order
from services.common.tracing import (
    ACCOUNT_ID,
    ORDER_ID,
    TRACE_DIR_ENV,
    JsonLinesSpanExporter,
    SpanRecord,
)
from services.local.up import LocalExchange
from tests.support.accounts import trade_inside_the_spread
from tests.support.waiting import eventually
from tests.support.watcher import BookWatcher

SYMBOL = "ETH-USD"


def trace_dir(stack: LocalExchange) -> Path:
    """Where the stack's processes write spans: what `exchange up` gives its children."""
    return Path(os.environ.get(TRACE_DIR_ENV) or stack.options.data_dir.resolve() / "traces")


def ancestors(span: SpanRecord, spans: list[SpanRecord]) -> list[SpanRecord]:
    """The span's parent, its parent's parent, ... up to the trace's root."""
    by_id = {s.span_id: s for s in spans}
    chain = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


def one(spans: list[SpanRecord], name: str) -> SpanRecord:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


async def test_a_crossing_order_is_one_trace_from_rest_through_engine_settlement_and_gateway(
        stack: LocalExchange, admin: ExchangeClient, capsys: pytest.CaptureFixture[str]) -> None:
    directory = trace_dir(stack)
    async with BookWatcher(stack.ws_urls[0], SYMBOL) as watcher:
        cross = await trade_inside_the_spread(admin, watcher)
    seller, buyer, order_id = cross.seller, cross.buyer, str(cross.taker["order_id"])

    wanted = {"POST /api/v1/orders", "order.validate", "order.hold", "order.enqueue",
              "engine.match", "engine.commit", "settlement.settle", "gateway.write"}
    spans: list[SpanRecord] = []

    def order_trace_complete() -> bool:
        nonlocal spans
        spans = read_spans(directory, [order_id.encode()])
        ids = traces_of_order(spans, order_id)
        if len(ids) != 1:
            return False
        spans = read_spans(directory, [ids[0].encode()])
        names = {s.name for s in spans if s.trace_id == ids[0]}
        return wanted <= names and sum(s.name == "settlement.account" and s.trace_id == ids[0]
                                       for s in spans) == 2

    await eventually(order_trace_complete, "the order's spans from every service", timeout=15)
    (trace_id,) = traces_of_order(spans, order_id)
    mine = [s for s in spans if s.trace_id == trace_id]
    assert {s.service for s in mine} == {"exchange-api", "exchange-engine",
                                         "exchange-settlement", "exchange-gateway"}

    # REST request (FastAPI's server span) -> its handler -> validate, hold, enqueue
    request = one(mine, "POST /api/v1/orders")
    assert request.parent_id == "" and request.kind == "server"
    assert request.attributes["http.response.status_code"] == 201
    validate, hold, enqueue = (one(mine, n) for n in ("order.validate", "order.hold",
                                                      "order.enqueue"))
    assert validate.parent_id == hold.parent_id == enqueue.parent_id
    handler = next(s for s in mine if s.span_id == enqueue.parent_id)
    assert handler.service == "exchange-api" and handler.attributes[ORDER_ID] == order_id
    assert handler.attributes[ACCOUNT_ID] == buyer.credentials.account_id
    assert ancestors(handler, mine)[-1] is request
    assert validate.end_ns <= hold.start_ns and hold.end_ns <= enqueue.start_ns
    # -> the engine's match and commit of the order, children of its enqueue
    match, commit = one(mine, "engine.match"), one(mine, "engine.commit")
    assert match.parent_id == commit.parent_id == enqueue.span_id
    assert match.attributes[ORDER_ID] == commit.attributes[ORDER_ID] == order_id
    assert enqueue.start_ns <= match.start_ns <= match.end_ns <= commit.start_ns
    assert commit.attributes["exchange.seq"] > 0 and commit.attributes["exchange.md_seq"] > 0
    # -> settlement of the entry, and of each side of the fill
    settle = one(mine, "settlement.settle")
    assert settle.parent_id == commit.span_id and settle.start_ns >= commit.start_ns
    assert settle.attributes["exchange.seq"] == commit.attributes["exchange.seq"]
    sides = [s for s in mine if s.name == "settlement.account"]
    assert {s.parent_id for s in sides} == {settle.span_id}
    assert {s.attributes[ACCOUNT_ID] for s in sides} == {
        buyer.credentials.account_id, seller.credentials.account_id}
    # -> the gateway's write of the update the commit published
    writes = [s for s in mine if s.name == "gateway.write"]
    assert writes and {w.parent_id for w in writes} == {commit.span_id}
    assert all(w.attributes["exchange.md_seq"] == commit.attributes["exchange.md_seq"]
               and w.attributes["exchange.watchers"] >= 1 for w in writes)
    # The engine's batch span is its own trace, linked to the order's match.
    batches = [s for s in spans if s.name == "engine.batch"
               and any(link.span_id == match.span_id for link in s.links)]
    assert len(batches) == 1 and batches[0].trace_id != trace_id
    assert batches[0].attributes["exchange.traced_orders"] >= 1

    # `exchange trace ORDER_ID` prints it as one tree, across the services.
    capsys.readouterr()
    assert trace_main([order_id, "--dir", str(directory)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"trace {trace_id}  order {order_id}  pair {SYMBOL}")
    lines = printed.splitlines()
    order = ["POST /api/v1/orders", "order.enqueue", "engine.match", "engine.commit",
             "settlement.settle", "settlement.account", "gateway.write"]
    positions = [next(i for i, line in enumerate(lines) if name in line) for name in order]
    assert positions[:4] == sorted(positions[:4])  # parents before their children
    assert all(p > positions[3] for p in positions[4:])
    assert any("↔ linked by engine.batch" in line for line in lines)
    # And the slowest order traces (at least this order's and the resting one's).
    assert trace_main(["--slowest", "2", "--dir", str(directory)]) == 0
    assert capsys.readouterr().out.count("\ntrace ") == 1  # two trees


class _Collector(BaseHTTPRequestHandler):
    """Takes OTLP/HTTP trace exports as a collector does."""

    received: ClassVar[list[ExportTraceServiceRequest]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/v1/traces":
            _Collector.received.append(ExportTraceServiceRequest.FromString(body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def test_spans_go_to_the_otlp_endpoint_named_by_the_environment_with_its_resource(
        tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    probe = ("from services.common.tracing import setup_tracing\n"
             "setup_tracing('exchange-engine').start_span('probe').end()\n")
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", probe, cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT":
                 f"http://127.0.0.1:{server.server_port}", TRACE_DIR_ENV: "",
                 "OTEL_SERVICE_NAME": "engine-btc-usd",
                 "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging"})
        assert await asyncio.wait_for(process.wait(), 30) == 0  # it exports as it exits
    finally:
        server.shutdown()
    spans = [(resource.resource, span) for request in _Collector.received
             for resource in request.resource_spans
             for scope in resource.scope_spans for span in scope.spans]
    assert [span.name for _, span in spans] == ["probe"]
    attributes = {a.key: a.value.string_value for a in spans[0][0].attributes}
    assert attributes["service.name"] == "engine-btc-usd"
    assert attributes["deployment.environment"] == "staging"


def test_span_files_rotate_and_keep_the_newest_spans_within_their_budget(
        tmp_path: Path) -> None:
    exporter = JsonLinesSpanExporter(tmp_path, "exchange-engine", rotate_bytes=4_000,
                                     budget_bytes=12_000)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    for n in range(300):
        tracer.start_span("engine.match", attributes={ORDER_ID: f"order-{n}"}).end()
    provider.shutdown()
    files = list(tmp_path.glob("*.jsonl"))
    assert len(files) > 1  # rotated
    assert sum(f.stat().st_size for f in files) <= 12_000 + 4_000 + 1_000
    kept = {s.attributes[ORDER_ID] for s in read_spans(tmp_path)}
    assert "order-299" in kept and "order-0" not in kept  # the oldest went first
    assert all(f"order-{n}" in kept for n in range(280, 300))
