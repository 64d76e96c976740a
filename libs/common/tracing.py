"""OpenTelemetry spans for every hop, with the trace context carried in NATS headers.

Tracing is off unless the config turns it on (or a tracer provider was installed
by the host application); when off, :func:`span` is a shared no-op context so the
hot path pays nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

_enabled = False
_tracer = trace.get_tracer("switchman")
_NOOP = contextlib.nullcontext()

CLIENT, SERVER, PRODUCER, CONSUMER, INTERNAL = (
    SpanKind.CLIENT,
    SpanKind.SERVER,
    SpanKind.PRODUCER,
    SpanKind.CONSUMER,
    SpanKind.INTERNAL,
)


def setup(enabled: bool, exporter: str = "console", service_name: str = "switchman") -> None:
    """Install an SDK tracer provider (console or OTLP exporter) when enabled."""
    global _enabled, _tracer
    _enabled = enabled
    if not enabled:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:  # an OTLP/HTTP endpoint; the exporter package is optional
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=exporter)))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("switchman")


def use_provider(provider: Any) -> None:
    """Trace into an existing tracer provider (tests use an in-memory exporter)."""
    global _enabled, _tracer
    _enabled = True
    _tracer = provider.get_tracer("switchman")


@contextlib.contextmanager
def _span(
    name: str, kind: SpanKind, parent: Mapping[str, str] | None, attrs: dict[str, Any]
) -> Iterator[Any]:
    ctx = propagate.extract(parent) if parent else None
    with _tracer.start_as_current_span(name, context=ctx, kind=kind, attributes=attrs) as s:
        yield s


def span(
    name: str,
    kind: SpanKind = INTERNAL,
    parent: Mapping[str, str] | None = None,
    **attrs: Any,
) -> contextlib.AbstractContextManager[Any]:
    """A span continuing the trace in ``parent`` (NATS headers), or a no-op when off."""
    if not _enabled:
        return _NOOP
    return _span(name, kind, parent, attrs)


def carrier() -> dict[str, str] | None:
    """NATS headers carrying the current trace context, or None when tracing is off."""
    if not _enabled:
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers or None
