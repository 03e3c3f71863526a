"""OpenTelemetry in every service: one trace per order, from the REST request to the
gateway's write of the update it caused.

Setup. `setup_tracing(service)` installs, once per process, an SDK tracer provider if
the spans go somewhere (otherwise OpenTelemetry's no-op API stays: FastAPI's request
spans and the order spans cost next to nothing):
its resource comes from the environment (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`;
the service's own name when `OTEL_SERVICE_NAME` is not set), its sampler from
`OTEL_TRACES_SAMPLER` (default: parent-based, always on; the API's sampler decides for
the whole order, every later stage follows the sampled flag it carries), and it exports
- over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set and not empty (the other
  `OTEL_EXPORTER_OTLP_*` settings apply as usual);
- as JSON lines into `EXCHANGE_TRACE_DIR` when it is set and not empty (`exchange up`
  sets it to `<data dir>/traces`): one file per process, `<service>-<pid>.jsonl`, one
  `SpanRecord` per line, rotated at `ROTATE_BYTES`; the oldest files go once the
  directory holds more than `DIR_BUDGET_BYTES`. `exchange trace` reads them.
A process with neither records no order spans at all (`exporting()` is False), so the
engine's hot path costs nothing.

How the context travels. The API's span for the enqueue writes its W3C `traceparent`
into the command's stream entry (`tp`). The engine picks out the entries whose
traceparent is sampled (flags 01) and, for each, records spans parented to it; the
traceparent of each order's `engine.commit` span goes on, paired with the order id, in
the events entry (`tp`, msgpack list of (order_id, traceparent)) and in the batch's
market-data message (`MarketDataUpdate.traces`, which gateways never forward), so
settlement's and each gateway's spans for the order are its children. Per order: parent;
per batch: links (the `engine.batch` span links to each order's `engine.match`).

Spans (names and attributes are used by `exchange trace`, span metrics and dashboards;
this list is the one place they are defined):

span (service) <- parent: attributes
- `POST /api/v1/orders` etc. (api, kind server; FastAPI's own) <- the caller's
  traceparent, if any: http.request.method, http.route, http.response.status_code, ...
- `fastapi.dependencies`, `fastapi.endpoint` (api; FastAPI's own) <- the request; on order
  routes the endpoint span carries order_id, account_id, pair
- `order.validate` (api) <- `fastapi.endpoint`: pair
- `order.hold` (api) <- `fastapi.endpoint`: account_id
- `order.enqueue` (api) <- `fastapi.endpoint`: pair; its traceparent goes in the command
- `engine.match` (engine) <- `order.enqueue`: order_id, account_id, pair, input_id, batch_size
- `engine.commit` (engine) <- `order.enqueue`: order_id, pair, seq, md_seq
- `engine.batch` (engine) <- none; links to each order's `engine.match`: pair, batch_size,
  traced_orders, seq, md_seq
- `settlement.settle` (settlement) <- `engine.commit`: order_id, pair, seq
- `settlement.account` (settlement) <- `settlement.settle`, one per account the order
  touched (its own and each counterparty's: each side of its fills): account_id, pair, seq
- `gateway.write` (gateway) <- `engine.commit`, one per gateway watching the pair: its
  handling of the update (frames built once and queued to every watcher; each
  connection's writer sends them next): order_id, pair, md_seq, watchers

All exchange attributes are prefixed `exchange.`: `exchange.order_id`, `exchange.pair`,
`exchange.account_id`, `exchange.seq` (the pair's event seq after the batch: the events
entry's seq), `exchange.md_seq` (the market-data seq; 0: the batch published none),
`exchange.input_id`, `exchange.batch_size`, `exchange.traced_orders`, `exchange.watchers`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from services.common.messages import Command, Event, Trade, command_decoder

TRACE_DIR_ENV = "EXCHANGE_TRACE_DIR"
OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
ROTATE_BYTES = 16 * 1024 * 1024  # a process's file is rotated past this
DIR_BUDGET_BYTES = 256 * 1024 * 1024  # the trace dir's oldest files go past this
FILE_FLUSH_MS = 500  # spans reach the file within about this, so `exchange trace` sees them
# Sampled orders an engine batch records spans for, at most: each costs the engine about
# 0.1 ms (two SDK spans), so a sampler left at "always on" under full load slows matching
# by a bounded amount instead of tenfold; the rest of the batch's orders go untraced.
MAX_TRACED_PER_BATCH = 32

ORDER_ID = "exchange.order_id"
PAIR = "exchange.pair"
ACCOUNT_ID = "exchange.account_id"
SEQ = "exchange.seq"
MD_SEQ = "exchange.md_seq"
INPUT_ID = "exchange.input_id"
BATCH_SIZE = "exchange.batch_size"
TRACED_ORDERS = "exchange.traced_orders"
WATCHERS = "exchange.watchers"

_exporting = False
_SAMPLED_DIGITS = frozenset(b"13579bdf")  # a traceparent's flags end odd: sampled


# ---- the span file ------------------------------------------------------------------


class LinkRecord(msgspec.Struct, frozen=True):
    trace_id: str
    span_id: str


class SpanRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """One finished span, as a line of a trace file. Ids are lower-case hex; times are
    Unix nanoseconds; `status` is "", "ok" or "error"."""

    trace_id: str
    span_id: str
    name: str
    service: str
    start_ns: int
    end_ns: int
    parent_id: str = ""
    kind: str = "internal"
    status: str = ""
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    links: list[LinkRecord] = msgspec.field(default_factory=list)


def span_record(span: ReadableSpan) -> SpanRecord:
    """The file form of a finished SDK span."""
    ctx = span.get_span_context()
    parent = span.parent
    status = span.status.status_code.name.lower()
    return SpanRecord(
        trace_id=f"{ctx.trace_id:032x}", span_id=f"{ctx.span_id:016x}", name=span.name,
        service=str(span.resource.attributes.get(SERVICE_NAME, "")),
        start_ns=span.start_time or 0, end_ns=span.end_time or 0,
        parent_id=f"{parent.span_id:016x}" if parent else "",
        kind=span.kind.name.lower(), status="" if status == "unset" else status,
        attributes=dict(span.attributes or {}),
        links=[LinkRecord(f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}")
               for link in span.links],
    )


class JsonLinesSpanExporter(SpanExporter):
    """Appends spans to `<directory>/<service>-<pid>.jsonl`, one SpanRecord a line.

    A file past `rotate_bytes` is renamed `<service>-<pid>-<n>.jsonl` and a new one
    begun; then the oldest files of the directory (any process's) are deleted while it
    holds more than `budget_bytes`, so a long local run keeps a bounded history."""

    def __init__(self, directory: Path, service: str, *, rotate_bytes: int = ROTATE_BYTES,
                 budget_bytes: int = DIR_BUDGET_BYTES) -> None:
        self.directory = directory
        self.service = service
        self.rotate_bytes = rotate_bytes
        self.budget_bytes = budget_bytes
        self._encoder = msgspec.json.Encoder()
        self._lock = threading.Lock()
        self._file: Any = None
        self._pid = 0
        self._rotations = 0

    @property
    def path(self) -> Path:
        return self.directory / f"{self.service}-{os.getpid()}.jsonl"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = b"".join(self._encoder.encode(span_record(span)) + b"\n" for span in spans)
        try:
            with self._lock:
                # New, a forked child, or the file was pruned by another process's
                # rotation (the oldest go first, and an idle process's file is old).
                if self._file is None or self._pid != os.getpid() or not self.path.exists():
                    if self._file is not None:
                        self._file.close()
                    self.directory.mkdir(parents=True, exist_ok=True)
                    self._file = open(self.path, "ab")  # noqa: SIM115 - kept open
                    self._pid = os.getpid()
                self._file.write(lines)
                self._file.flush()
                if self._file.tell() > self.rotate_bytes:
                    self._rotate()
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _rotate(self) -> None:
        self._file.close()
        self._rotations += 1
        self.path.rename(self.path.with_name(
            f"{self.service}-{os.getpid()}-{self._rotations}.jsonl"))
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open
        files = sorted(self.directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for old in files:
            if total <= self.budget_bytes or old == self.path:
                break
            total -= old.stat().st_size
            old.unlink(missing_ok=True)

    def shutdown(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


# ---- setup --------------------------------------------------------------------------


def _resource(service_name: str) -> Resource:
    detected = Resource.create()  # reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: service_name}))
    return detected


def setup_tracing(service_name: str) -> trace.Tracer:
    """Install a tracer provider named for the service, with the exporters the
    environment asks for (once per process; later calls reuse it); none if it asks for
    none."""
    global _exporting
    otlp, trace_dir = os.environ.get(OTLP_ENDPOINT_ENV), os.environ.get(TRACE_DIR_ENV)
    if (otlp or trace_dir) and not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider(resource=_resource(service_name))
        if otlp:
            # Imported only when used: it brings protobuf and requests with it.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            _exporting = True
        if trace_dir:
            name = str(provider.resource.attributes.get(SERVICE_NAME, service_name))
            name = name.replace(os.sep, "_")  # a file name, whatever OTEL_SERVICE_NAME holds
            provider.add_span_processor(BatchSpanProcessor(
                JsonLinesSpanExporter(Path(trace_dir), name),
                schedule_delay_millis=FILE_FLUSH_MS))
            _exporting = True
        trace.set_tracer_provider(provider)
    return trace.get_tracer(service_name)


def exporting() -> bool:
    """Do this process's spans go anywhere? If not, stages skip their order spans."""
    return _exporting


# ---- trace context in stream entries --------------------------------------------------


def current_traceparent() -> bytes:
    """The W3C `traceparent` of the active span, for a stream entry (empty if none)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "").encode()


def context_from_traceparent(traceparent: bytes | str | None) -> Context:
    """The remote context a stream entry carried, to parent or link the consumer's span."""
    if not traceparent:
        return Context()
    if isinstance(traceparent, bytes):
        traceparent = traceparent.decode()
    return propagate.extract({"traceparent": traceparent})


def traceparent_of(span: trace.Span) -> str:
    """The W3C `traceparent` that makes a consumer's span a child of `span`."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _remote_parent(traceparent: bytes) -> Context:
    """The context of a version-00 traceparent, parsed directly: the propagator's
    general parser costs the engine more per traced order (ValueError if malformed)."""
    if traceparent[2:3] != b"-" or traceparent[35:36] != b"-" or traceparent[52:53] != b"-":
        raise ValueError("not a traceparent")
    flags = trace.TraceFlags(int(traceparent[53:], 16))
    span = trace.SpanContext(int(traceparent[3:35], 16), int(traceparent[36:52], 16),
                             is_remote=True, trace_flags=flags)
    if not span.is_valid:
        raise ValueError("an all-zero trace or span id")
    return trace.set_span_in_context(trace.NonRecordingSpan(span))


def is_sampled(traceparent: bytes) -> bool:
    """Was the trace of this traceparent sampled (its flags' low bit)? Cheap enough to
    ask of every input: the engine asks it only while exporting."""
    return len(traceparent) == 55 and traceparent[-1] in _SAMPLED_DIGITS


OrderTraces = list[tuple[str, str]]  # (order_id, traceparent of its engine.commit span)
_order_traces = msgspec.msgpack.Decoder(OrderTraces)


def encode_order_traces(traces: OrderTraces) -> bytes:
    """The events entry's `tp` field ("" when no order of the batch is traced)."""
    return msgspec.msgpack.encode(traces) if traces else b""


def order_traces(fields: dict[bytes, bytes]) -> OrderTraces:
    """The traced orders of an events entry (none when not exporting)."""
    raw = fields.get(b"tp")
    return _order_traces.decode(raw) if raw and _exporting else []


def _given(attributes: dict[str, Any]) -> dict[str, Any]:
    """Without the empty ones (a cancel-all names no order)."""
    return {key: value for key, value in attributes.items() if value != ""}


def _timed_span(tracer: trace.Tracer, name: str, parent: Context, start_ns: int, end_ns: int,
                attributes: dict[str, Any],
                links: Sequence[trace.Link] = ()) -> trace.Span:
    span = tracer.start_span(name, context=parent, attributes=_given(attributes), links=links,
                             start_time=start_ns)
    span.end(end_time=end_ns)
    return span


# ---- the engine -----------------------------------------------------------------------


class EngineBatchTrace:
    """The spans of one engine batch that holds sampled orders (see the module doc).

    `traced_inputs` picks the orders, `matched` records their match spans and begins
    their commit spans (whose traceparents travel on), `committed` ends them all."""

    def __init__(self, tracer: trace.Tracer, pair: str, batch_size: int,
                 orders: list[tuple[bytes, Command, Context]], started_ns: int) -> None:
        self.tracer = tracer
        self.pair = pair
        self.batch_size = batch_size
        self.orders = orders
        self.started_ns = started_ns
        self._matches: list[trace.Span] = []
        self._commits: list[trace.Span] = []

    @staticmethod
    def traced_inputs(entries: Iterable[tuple[bytes, dict[bytes, bytes]]],
                      ) -> list[tuple[bytes, Command, Context]]:
        """(entry id, command, its trace context) of each sampled, decodable input, for
        the first MAX_TRACED_PER_BATCH of them."""
        found: list[tuple[bytes, Command, Context]] = []
        for entry_id, fields in entries:
            if len(found) == MAX_TRACED_PER_BATCH:
                break
            tp = fields.get(b"tp", b"")
            if is_sampled(tp):
                try:
                    found.append((entry_id, command_decoder.decode(fields[b"c"]),
                                  _remote_parent(tp)))
                except (KeyError, ValueError, msgspec.DecodeError, msgspec.ValidationError):
                    continue
        return found

    def matched(self, ended_ns: int) -> OrderTraces:
        """Record each order's match; returns (order_id, traceparent) of each order's
        commit span, for the events entry and the market-data message."""
        traces: OrderTraces = []
        for entry_id, command, parent in self.orders:
            order_id = getattr(command, "order_id", "")
            self._matches.append(_timed_span(
                self.tracer, "engine.match", parent, self.started_ns, ended_ns,
                {ORDER_ID: order_id, ACCOUNT_ID: command.account_id, PAIR: self.pair,
                 INPUT_ID: entry_id.decode(), BATCH_SIZE: self.batch_size}))
            commit = self.tracer.start_span("engine.commit", context=parent, start_time=ended_ns,
                                            attributes=_given({ORDER_ID: order_id,
                                                               PAIR: self.pair}))
            self._commits.append(commit)
            traces.append((order_id, traceparent_of(commit)))
        return traces

    def committed(self, seq: int, md_seq: int) -> None:
        """End the commit spans and record the batch span, linked to each order's match."""
        now = time.time_ns()
        for commit in self._commits:
            commit.set_attributes({SEQ: seq, MD_SEQ: md_seq})
            commit.end(end_time=now)
        _timed_span(self.tracer, "engine.batch", Context(), self.started_ns, now,
                    {PAIR: self.pair, BATCH_SIZE: self.batch_size,
                     TRACED_ORDERS: len(self.orders), SEQ: seq, MD_SEQ: md_seq},
                    links=[trace.Link(span.get_span_context()) for span in self._matches])


# ---- settlement and gateways ------------------------------------------------------------


def _accounts_of(order_id: str, events: list[Event]) -> set[str]:
    """The accounts the order's events touch: its own, and each counterparty it traded
    with (settlement of each side)."""
    accounts: set[str] = set()
    for event in events:
        if type(event) is Trade:
            if order_id in (event.taker_order_id, event.maker_order_id):
                accounts.update((event.taker_account_id, event.maker_account_id))
        elif getattr(event, "order_id", None) == order_id:
            accounts.add(event.account_id)  # type: ignore[union-attr]
    return accounts


def record_settlement(tracer: trace.Tracer, pair: str, seq: int, traces: OrderTraces,
                      events: list[Event], started_ns: int, ended_ns: int,
                      accounts: dict[str, tuple[int, int]]) -> None:
    """Spans for each traced order of a settled events entry: the entry's settlement,
    and the settlement of each account the order touched (`accounts`: account ->
    (start, end) of its settle script)."""
    for order_id, tp in traces:
        settle = _timed_span(tracer, "settlement.settle", context_from_traceparent(tp),
                             started_ns, ended_ns, {ORDER_ID: order_id, PAIR: pair, SEQ: seq})
        inside = trace.set_span_in_context(settle)
        for account_id in sorted(_accounts_of(order_id, events)):
            if account_id in accounts:
                start, end = accounts[account_id]
                _timed_span(tracer, "settlement.account", inside, start, end,
                            {ACCOUNT_ID: account_id, PAIR: pair, SEQ: seq})


def record_gateway_write(tracer: trace.Tracer, pair: str, md_seq: int, traces: OrderTraces,
                         started_ns: int, watchers: int) -> None:
    """A span per traced order of a market-data update: the gateway's fan-out of it."""
    now = time.time_ns()
    for order_id, tp in traces:
        _timed_span(tracer, "gateway.write", context_from_traceparent(tp), started_ns, now,
                    {ORDER_ID: order_id, PAIR: pair, MD_SEQ: md_seq, WATCHERS: watchers})
