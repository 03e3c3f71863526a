"""`exchange trace`: an order's trace as a tree with timings, from the local span files.

    exchange trace ORDER_ID        every trace of the order (its placement, cancel, amend)
    exchange trace --slowest N     the N order traces that took longest end to end

Reads the JSON-lines span files each service writes into `EXCHANGE_TRACE_DIR` (`exchange
up` sets `<data dir>/traces`; see services/common/tracing.py for the format, the span
names and their attributes). Times are offsets from the trace's first span, so the
tree shows where an order spent its time across the API, the engine, settlement and
the gateways. A span another trace links to (an order's `engine.match`, linked by its
batch's `engine.batch`) shows that batch under it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

from services.common.tracing import ORDER_ID, PAIR, TRACE_DIR_ENV, SpanRecord

_decoder = msgspec.json.Decoder(SpanRecord)
PREFIX = "exchange."


def default_dir() -> Path:
    """EXCHANGE_TRACE_DIR, else the traces folder of `exchange up`'s data dir."""
    configured = os.environ.get(TRACE_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(os.environ.get("EXCHANGE_DATA_DIR") or ".exchange") / "traces"


def read_spans(directory: Path, needles: Sequence[bytes] = ()) -> list[SpanRecord]:
    """Every span in the directory's files (with `needles`, only lines holding one of
    them: a cheap filter before decoding). A line being written is skipped."""
    spans = []
    for path in sorted(directory.glob("*.jsonl")):
        try:
            with path.open("rb") as lines:
                for line in lines:
                    if needles and not any(needle in line for needle in needles):
                        continue
                    try:
                        spans.append(_decoder.decode(line))
                    except msgspec.DecodeError:
                        continue
        except FileNotFoundError:  # rotated away meanwhile
            continue
    return spans


def by_trace(spans: Iterable[SpanRecord]) -> dict[str, list[SpanRecord]]:
    traces: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        traces[span.trace_id].append(span)
    return traces


def traces_of_order(spans: Iterable[SpanRecord], order_id: str) -> list[str]:
    """Ids of the traces that hold a span of the order, oldest first."""
    first: dict[str, int] = {}
    for span in spans:
        if span.attributes.get(ORDER_ID) == order_id:
            first[span.trace_id] = min(first.get(span.trace_id, span.start_ns), span.start_ns)
    return sorted(first, key=first.__getitem__)


def duration_ns(spans: Sequence[SpanRecord]) -> int:
    return max(s.end_ns for s in spans) - min(s.start_ns for s in spans)


def slowest(traces: dict[str, list[SpanRecord]], n: int) -> list[str]:
    """The n order traces (those with an order id) that took longest, slowest first."""
    orders = [tid for tid, spans in traces.items()
              if any(ORDER_ID in s.attributes for s in spans)]
    return sorted(orders, key=lambda tid: duration_ns(traces[tid]), reverse=True)[:n]


def _ms(ns: int) -> str:
    return f"{ns / 1e6:9.3f}"


def _details(span: SpanRecord, shown: dict[str, object]) -> str:
    parts = [f"{key.removeprefix(PREFIX)}={value}" for key, value in span.attributes.items()
             if key.startswith(PREFIX) and shown.get(key) != value]
    if "http.response.status_code" in span.attributes:
        parts.append(f"status={span.attributes['http.response.status_code']}")
    if span.status == "error":
        parts.append("ERROR")
    return ("  " + " ".join(parts)) if parts else ""


def render(trace_id: str, spans: Sequence[SpanRecord],
           linked_by: dict[str, list[SpanRecord]]) -> list[str]:
    """The trace as a tree: offset and duration (ms), service, span and its attributes.
    `linked_by` maps a span id to the spans (of any trace) that link to it."""
    ids = {s.span_id for s in spans}
    children: dict[str, list[SpanRecord]] = defaultdict(list)
    roots = []
    for span in sorted(spans, key=lambda s: (s.start_ns, s.end_ns)):
        if span.parent_id in ids:
            children[span.parent_id].append(span)
        else:
            roots.append(span)  # the trace's root, or a span whose parent is not recorded
    start = min(s.start_ns for s in spans)
    order_ids = sorted({str(s.attributes[ORDER_ID]) for s in spans if ORDER_ID in s.attributes})
    pairs = sorted({str(s.attributes[PAIR]) for s in spans if PAIR in s.attributes})
    services = sorted({s.service for s in spans})
    shown: dict[str, object] = {}
    if len(order_ids) == 1:
        shown[ORDER_ID] = order_ids[0]
    if len(pairs) == 1:
        shown[PAIR] = pairs[0]
    lines = [f"trace {trace_id}  order {', '.join(order_ids) or '-'}  pair "
             f"{', '.join(pairs) or '-'}  {duration_ns(spans) / 1e6:.3f} ms  "
             f"{len(spans)} spans from {', '.join(services)}",
             f"{'start ms':>9} {'took ms':>9}  {'service':<20} span"]
    width = max(len(s.service) for s in spans)

    def walk(span: SpanRecord, lead: str, branch: str) -> None:
        lines.append(f"{_ms(span.start_ns - start)} {_ms(span.end_ns - span.start_ns)}  "
                     f"{span.service:<{max(width, 20)}} {lead}{branch}{span.name}"
                     f"{_details(span, shown)}")
        inner = lead + ("   " if branch in ("└─ ", "") else "│  ")
        for linker in linked_by.get(span.span_id, []):
            lines.append(f"{'':9} {'':9}  {'':<{max(width, 20)}} {inner}"
                         f"↔ linked by {linker.name} of trace {linker.trace_id} "
                         f"({linker.service}, {_ms(linker.end_ns - linker.start_ns).strip()} ms)"
                         f"{_details(linker, shown)}")
        kids = children.get(span.span_id, [])
        for i, child in enumerate(kids):
            walk(child, inner, "└─ " if i == len(kids) - 1 else "├─ ")

    for root in roots:
        walk(root, "", "")
    return lines


def links_to(spans: Iterable[SpanRecord]) -> dict[str, list[SpanRecord]]:
    """Span id -> the spans that link to it."""
    found: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        for link in span.links:
            found[link.span_id].append(span)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="exchange trace", description="an order's trace as a tree with timings")
    parser.add_argument("order_id", nargs="?", help="the order whose traces to print")
    parser.add_argument("--slowest", type=int, metavar="N",
                        help="print the N slowest order traces instead")
    parser.add_argument("--dir", type=Path, default=None,
                        help=f"span files (default: ${TRACE_DIR_ENV}, else .exchange/traces)")
    args = parser.parse_args(argv)
    if (args.order_id is None) == (args.slowest is None):
        parser.error("give an ORDER_ID or --slowest N")
    directory = args.dir or default_dir()
    if not directory.is_dir():
        print(f"no span files in {directory} (is the exchange running with "
              f"{TRACE_DIR_ENV} set? `exchange up` sets it)", file=sys.stderr)
        return 1
    if args.order_id is not None:
        # Two cheap passes: the order's trace ids, then every line naming one of them
        # (its spans, and the batch spans linking to them).
        tagged = read_spans(directory, [args.order_id.encode()])
        trace_ids = traces_of_order(tagged, args.order_id)
        if not trace_ids:
            print(f"no spans of order {args.order_id} in {directory}", file=sys.stderr)
            return 1
        spans = read_spans(directory, [tid.encode() for tid in trace_ids])
    else:
        spans = read_spans(directory)
        trace_ids = slowest(by_trace(spans), args.slowest)
    traces, linked_by = by_trace(spans), links_to(spans)
    for i, trace_id in enumerate(trace_ids):
        if i:
            print()
        print("\n".join(render(trace_id, traces[trace_id], linked_by)))
    return 0
