"""One trace shows ingress, router, worker and the upstream call, linked through NATS headers."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.common import tracing
from tests.emulators.openai_upstream import UpstreamState, running
from tests.gateway import config, in_process, openai_provider


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = (tracing._enabled, tracing._tracer)
    tracing.use_provider(provider)
    yield exporter
    tracing._enabled, tracing._tracer = previous


async def test_one_trace_spans_every_hop(nats_server, spans):
    async with running(UpstreamState(api_key="sk-test")) as base:
        cfg = config(providers=[openai_provider("emu", base, ["gpt-4o-mini"])])
        async with in_process(cfg, nats_server.url) as gw:
            await gw.openai().chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "trace me"}]
            )
    by_name = {s.name: s for s in spans.get_finished_spans()}
    hops = ["ingress.chat", "router.decide", "worker.attempt", "upstream POST"]
    assert set(hops) <= set(by_name), sorted(by_name)
    trace_ids = {by_name[h].context.trace_id for h in hops}
    assert len(trace_ids) == 1
    # Each hop is the child of the one before it.
    for parent, child in zip(hops, hops[1:], strict=False):
        assert by_name[child].parent is not None
        assert by_name[child].parent.span_id == by_name[parent].context.span_id, (parent, child)
