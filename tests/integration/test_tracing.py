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


async def test_failover_stays_in_the_requests_trace(nats_server, spans):
    """The first candidate answers 500 before its first byte, the second answers: one trace."""
    broken, healthy = UpstreamState(api_key="sk-test", fail_next=[500]), UpstreamState(api_key="sk-test")
    async with running(broken) as base1, running(healthy) as base2:
        cfg = config(
            providers=[
                openai_provider("first", base1, ["gpt-4o-mini"]),
                openai_provider("second", base2, ["gpt-4o-mini"]),
            ],
            models=[
                {
                    "name": "gpt-4o-mini",
                    "strategy": "ordered",
                    "targets": [
                        {"provider": "first", "model": "gpt-4o-mini"},
                        {"provider": "second", "model": "gpt-4o-mini"},
                    ],
                }
            ],
        )
        async with in_process(cfg, nats_server.url) as gw:
            resp = await gw.openai().chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "fail over"}]
            )
    assert resp.headers["x-switchman-provider"] == "second"
    assert (broken.request_count, healthy.request_count) == (1, 1)
    finished = spans.get_finished_spans()
    attempts = sorted(
        (s for s in finished if s.name == "worker.attempt"), key=lambda s: s.attributes["provider"]
    )
    assert [a.attributes["provider"] for a in attempts] == ["first", "second"]
    (root,) = [s for s in finished if s.name == "ingress.chat"]
    request_spans = [s for s in finished if s.context.trace_id == root.context.trace_id]
    assert {s.name for s in finished} == {s.name for s in request_spans}
    assert len(request_spans) == len(finished), sorted(s.name for s in finished)
    # The second attempt's parent chain leads back to the ingress span.
    by_id = {s.context.span_id: s for s in finished}
    chain, node = [], attempts[1]
    while node.parent is not None:
        node = by_id[node.parent.span_id]
        chain.append(node.name)
    assert chain[-1] == "ingress.chat", chain
    assert "worker.attempt" in chain  # handed on from inside the first attempt's span
