"""Faults with every service in its own process: dead worker, missing worker, NATS restart."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from tests.cluster import Cluster
from tests.gateway import wait_model

pytestmark = pytest.mark.e2e

IDLE_TIMEOUT = 30.0  # a dead worker is noticed by its missing heartbeats, not by this


@pytest.fixture
def cluster(tmp_path, nats_server_fn, upstream):
    limits = {"idle_timeout_s": IDLE_TIMEOUT, "ack_timeout_s": 1.0}
    c = Cluster(tmp_path, nats_server_fn.url, upstream[1], limits=limits)
    yield c
    c.kill()


async def test_worker_killed_mid_stream_ends_with_error_event(cluster, upstream):
    state, _ = upstream
    for name in ("ingress", "router", "worker"):
        cluster.start(name)
    await cluster.ready()
    await wait_model(cluster.base_url, "gpt-4o-mini")
    state.chunk_delay_s = 0.05
    stream = await cluster.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "#words:400"}], stream=True
    )
    got = 0
    killed_at = None
    with pytest.raises(openai.APIError) as err:
        async for _ in stream:
            got += 1
            if got == 3:
                cluster.procs["worker"].kill()
                killed_at = time.monotonic()
    assert killed_at is not None
    elapsed = time.monotonic() - killed_at
    assert elapsed < 3.0, elapsed  # its missing heartbeats tell, well before the idle timeout
    assert "stopped responding" in str(err.value)


async def test_no_worker_subscribed_is_503_within_a_second(cluster):
    for name in ("ingress", "router"):
        cluster.start(name)
    await cluster.ready()
    client = cluster.client()
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 503
    assert time.monotonic() - started < 1.0
    assert err.value.body["code"] == "no_provider_available"


async def test_services_reconnect_after_nats_restart(cluster, nats_server_fn):
    for name in ("ingress", "router", "worker", "health", "ledger"):
        cluster.start(name)
    await cluster.ready()
    await wait_model(cluster.base_url, "gpt-4o-mini")
    nats_server_fn.kill()
    await asyncio.sleep(1.0)
    nats_server_fn.start()
    await wait_model(cluster.base_url, "gpt-4o-mini", timeout=20)
    resp = await cluster.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "after restart"}]
    )
    assert resp.choices[0].message.content == "You said: after restart"
    codes = cluster.stop()
    assert all(c == 0 for c in codes.values()), (codes, cluster.logs())
