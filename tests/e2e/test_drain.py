"""SIGTERM under load loses no accepted request, in any service.

Every service in its own process (``switchman run <service>``) on a test nats-server,
two routers and two workers; streaming and non-stream requests run through the
ingress while each kind of process gets SIGTERM in turn: a worker while streams are
in flight (the other worker alive), a router (the other router alive), then the
ingress itself with requests in flight. Every request the ingress accepted must end
correctly — a stream with its full content and ``[DONE]`` — none lost, none hung.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import nats
import pytest

from libs.common import contracts, subjects
from tests.cluster import REQUEST_TIMEOUT_S, Cluster, Load
from tests.gateway import Proc, eventually, wait_model

pytestmark = pytest.mark.e2e

CHUNK_DELAY_S = 0.02  # ~0.8 s per answer: always some in flight


@pytest.fixture
def cluster(tmp_path, nats_server_fn, upstream):
    c = Cluster(
        tmp_path,
        nats_server_fn.url,
        upstream[1],
        limits={"idle_timeout_s": 8.0, "ack_timeout_s": 2.0},
        log_level="info",
    )
    yield c
    c.kill()


def in_flight_at_stop(proc: Proc) -> int:
    for line in proc.output().splitlines():
        if '"draining"' in line:
            return json.loads(line)["in_flight"]
    raise AssertionError(f"no draining line:\n{proc.output()[-2000:]}")


async def busy(cluster: Cluster, label: str) -> None:
    """Until the worker process ``label`` reports streams in flight in its heartbeat."""
    pid = f"-{cluster.procs[label].pid}-"
    nc = await nats.connect(cluster.env["NATS_URL"])
    try:
        sub = await nc.subscribe(subjects.WORKER_HEARTBEAT)
        async with asyncio.timeout(10):
            while True:
                hb = contracts.heartbeat_decoder.decode((await sub.next_msg(timeout=5)).data)
                if pid in hb.worker and hb.in_flight >= 2:
                    return
    finally:
        await nc.close()


async def terminate(proc: Proc) -> int:
    return await asyncio.to_thread(proc.terminate, 20)


async def test_sigterm_under_load_loses_no_accepted_request(cluster, upstream):
    state, _ = upstream
    for label, service in (("worker-a", "worker"), ("worker-b", "worker"), ("router-a", "router")):
        cluster.start(label, service)
    cluster.start("router-b", "router")
    cluster.start("ingress", "ingress")
    await cluster.ready()
    await wait_model(cluster.base_url, "gpt-4o-mini")
    state.chunk_delay_s = CHUNK_DELAY_S

    load = Load(cluster.url)
    clients = [asyncio.create_task(load.client(stream=i % 4 != 3)) for i in range(8)]
    try:
        # A worker while streams are in flight, the other worker alive.
        await busy(cluster, "worker-a")
        assert await terminate(cluster.procs["worker-a"]) == 0, cluster.logs()
        # A router, the other router alive.
        await asyncio.sleep(1.0)
        assert await terminate(cluster.procs["router-a"]) == 0, cluster.logs()
        await asyncio.sleep(1.5)
    finally:
        load.stopping = True
        await asyncio.wait_for(asyncio.gather(*clients), REQUEST_TIMEOUT_S + 5)
    assert not load.failures, (load.failures[:5], cluster.logs())
    assert load.ok >= 20, load.ok
    # The stopped worker really had streams in flight and finished them.
    assert in_flight_at_stop(cluster.procs["worker-a"]) > 0, cluster.procs["worker-a"].output()[-2000:]

    # The ingress itself, with streaming and non-stream requests in flight.
    ingress = Load(cluster.url)
    ingress.stopping = True  # exactly one request per client
    state.delay_first_byte_s = 2.0  # every request is still in flight when the SIGTERM comes
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        batch = [asyncio.create_task(ingress.one(session, stream=i % 2 == 0)) for i in range(8)]
        await eventually(lambda: state.in_flight == 8, 1.5, "8 requests at the upstream")
        sigterm = asyncio.create_task(terminate(cluster.procs["ingress"]))
        results = await asyncio.gather(*batch, return_exceptions=True)
        assert await sigterm == 0, cluster.logs()
        assert results == [True] * 8, (results, cluster.logs())
        with pytest.raises(aiohttp.ClientConnectionError):  # it stopped accepting
            await ingress.one(session, stream=False)
