"""No silent loss: bus outages, dead workers, dead ingresses.

* nats-server killed (SIGKILL) under streaming load and restarted 0.1 s to 3 s later:
  every stream is complete and exactly what the provider sent, or ends with an error
  event — never ``[DONE]`` after a lost chunk, never a hang past the deadline;
* (a worker killed mid-stream: tests/e2e/test_faults.py);
* an ingress killed mid-stream: its worker stops the upstream call within 3 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import aiohttp
import pytest

from tests.cluster import Cluster, Load, expected
from tests.gateway import eventually, wait_model

pytestmark = pytest.mark.e2e

IDLE = {"idle_timeout_s": 30.0, "ack_timeout_s": 2.0, "request_timeout_s": 60.0}


async def stream_text(session: aiohttp.ClientSession, url: str, words: int) -> tuple[str, float]:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"#words:{words}"}],
        "stream": True,
    }
    async with asyncio.timeout(40), session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        text = await resp.text()
    return text, time.monotonic()


async def started(cluster: Cluster) -> None:
    """Ingress, router and worker, each its own process, serving."""
    for name in ("ingress", "router", "worker"):
        cluster.start(name)
    await cluster.ready()
    await wait_model(cluster.base_url, "gpt-4o-mini")


def outcome(text: str, words: int) -> str:
    """'complete' or 'error'; anything else (a truncated success, garbage) fails the test."""
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    if events[-1:] == ["[DONE]"]:
        got = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert got == expected(words), f"[DONE] after a damaged stream: {got[-60:]!r}"
        return "complete"
    assert chunks and "error" in chunks[-1], f"neither [DONE] nor an error event: {text[-300:]!r}"
    assert all("error" not in c for c in chunks[:-1])
    return "error"


@pytest.mark.parametrize("outage_s", [0.1, 0.5, 1.0, 3.0])
async def test_a_bus_outage_never_gives_a_damaged_stream_a_clean_finish(
    tmp_path, nats_server_fn, upstream, outage_s
):
    # Separate processes, each with its own connection: after the restart a worker's
    # buffered frames can reach the server before the ingress has re-subscribed.
    state, base = upstream
    cluster = Cluster(tmp_path, nats_server_fn.url, base, limits=IDLE)
    try:
        await started(cluster)
        state.chunk_delay_s = 0.03  # 60 words: ~1.8 s per stream
        async with aiohttp.ClientSession() as session:
            streams = [asyncio.create_task(stream_text(session, cluster.url, 60)) for _ in range(6)]
            await eventually(lambda: state.in_flight == 6, 5, "six streams at the upstream")
            await asyncio.sleep(0.3)
            nats_server_fn.kill()
            await asyncio.sleep(outage_s)
            await asyncio.to_thread(nats_server_fn.start)
            done = await asyncio.wait_for(asyncio.gather(*streams), 45)
            outcomes = [outcome(text, 60) for text, _ in done]
            print(f"outage {outage_s}s: {sorted(outcomes)}")
            # Afterwards the gateway serves again.
            await wait_model(cluster.base_url, "gpt-4o-mini")
            text, _ = await stream_text(session, cluster.url, 5)
            assert outcome(text, 5) == "complete", cluster.logs()
    finally:
        cluster.kill()


async def test_an_ingress_killed_mid_stream_stops_the_upstream_call_within_3_s(
    tmp_path, nats_server_fn, upstream
):
    state, base = upstream
    cluster = Cluster(tmp_path, nats_server_fn.url, base, limits=IDLE)
    try:
        await started(cluster)
        state.chunk_delay_s = 0.1  # 100 words: 10 s, if nobody stops it
        async with aiohttp.ClientSession() as session:
            stream = asyncio.create_task(stream_text(session, cluster.url, 100))
            await eventually(lambda: state.in_flight == 1, 10, "the stream at the upstream")
            await asyncio.sleep(0.5)
            os.kill(cluster.procs["ingress"].pid, signal.SIGKILL)
            took = await eventually(lambda: state.in_flight == 0, 3.0, "the upstream call stopped")
            stream.cancel()
        assert took < 3.0
        assert "client_ingress_gone" in cluster.procs["worker"].output()
        # The worker lives on and serves the next ingress.
        cluster.procs.pop("ingress")
        cluster.start("ingress-2", "ingress")
        await cluster.ready()
        state.chunk_delay_s = 0.0
        load = Load(cluster.url)
        async with aiohttp.ClientSession() as session:
            assert await load.one(session, stream=True)
    finally:
        cluster.kill()
