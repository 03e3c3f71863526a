"""OpenTelemetry setup and W3C trace-context propagation through stream entries."""

from __future__ import annotations

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider


def setup_tracing(service_name: str) -> trace.Tracer:
    """Install a tracer provider named for the service (once per process)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(
            TracerProvider(resource=Resource.create({"service.name": service_name}))
        )
    return trace.get_tracer(service_name)


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
