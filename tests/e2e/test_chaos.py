"""Chaos, bounded to a minute: load through separate processes while the parts fail.

Streaming and non-stream clients run through ingress, router and two workers (each a
`switchman run` process) while the test, at random moments (seeded; the seed is
printed), SIGKILLs and restarts a worker, SIGKILLs and restarts the router, cuts the
ingress's NATS connection, and SIGKILLs nats-server and restarts it. For every request:
a complete and correct answer, or an explicit error (a 4xx/5xx body, or a stream's
error event without ``[DONE]``) — never a damaged or truncated success, never a hang
past the deadline. Afterwards the gateway serves again, and the processes that lived
through it (the ingress, the worker never killed) are back within 10% of their RSS
and open files from before the chaos.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import psutil
import pytest

from tests.cluster import Cluster, Load, TcpProxy
from tests.gateway import wait_model

pytestmark = pytest.mark.e2e

CHAOS_S = 30.0
LIMITS = {"idle_timeout_s": 10.0, "ack_timeout_s": 2.0, "request_timeout_s": 15.0}


def footprint(proc: psutil.Process) -> tuple[int, int]:
    return proc.memory_info().rss, proc.num_fds()


async def settle(cluster: Cluster) -> None:
    await asyncio.sleep(1.0)
    await wait_model(cluster.base_url, "gpt-4o-mini", timeout=30)


async def run_load(cluster: Cluster, seconds: float, load: Load) -> None:
    load.stopping = False
    clients = [asyncio.create_task(load.client(stream=i % 3 != 2)) for i in range(6)]
    await asyncio.sleep(seconds)
    load.stopping = True
    await asyncio.wait_for(asyncio.gather(*clients), 40)


async def test_chaos(tmp_path, nats_server_fn, upstream):
    seed = int(os.environ.get("SWITCHMAN_CHAOS_SEED") or time.time())
    print(f"chaos seed {seed} (SWITCHMAN_CHAOS_SEED={seed} repeats it)")
    rng = random.Random(seed)
    state, base = upstream
    state.chunk_delay_s = 0.01  # ~0.4 s a stream
    proxy = TcpProxy("127.0.0.1", nats_server_fn.port)
    cluster = Cluster(tmp_path, nats_server_fn.url, base, limits=LIMITS)
    try:
        cluster.start("ingress", nats_url=await proxy.start())
        for label, service in (("router", "router"), ("worker-a", "worker"), ("worker-b", "worker")):
            cluster.start(label, service)
        await cluster.ready()
        await wait_model(cluster.base_url, "gpt-4o-mini")

        warm = Load(cluster.url, errors_allowed=True)
        await run_load(cluster, 3.0, warm)  # pools and caches filled before "before"
        assert not warm.failures and warm.errors == 0, (warm.failures[:3], warm.error_samples[:3])
        lived = {n: psutil.Process(cluster.procs[n].pid) for n in ("ingress", "worker-b")}
        before = {n: footprint(p) for n, p in lived.items()}

        load = Load(cluster.url, errors_allowed=True)
        clients = [asyncio.create_task(load.client(stream=i % 3 != 2)) for i in range(6)]
        events: list[str] = []
        deadline = time.monotonic() + CHAOS_S
        while time.monotonic() < deadline:
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            event = rng.choice(["worker", "router", "ingress-link", "nats"])
            events.append(event)
            if event == "worker":
                os.kill(cluster.procs["worker-a"].pid, signal.SIGKILL)
                await asyncio.sleep(rng.uniform(0.1, 1.5))
                cluster.start("worker-a", "worker")
            elif event == "router":
                os.kill(cluster.procs["router"].pid, signal.SIGKILL)
                await asyncio.sleep(rng.uniform(0.1, 1.5))
                cluster.start("router")
            elif event == "ingress-link":
                proxy.cut()
            else:
                nats_server_fn.kill()
                await asyncio.sleep(rng.uniform(0.1, 2.0))
                await asyncio.to_thread(nats_server_fn.start)
        load.stopping = True
        await asyncio.wait_for(asyncio.gather(*clients), 40)
        print(f"chaos events {events}: {load.ok} complete, {load.errors} explicit errors")
        assert not load.failures, (load.failures[:5], cluster.logs())
        assert load.ok > 20, (load.ok, load.errors)

        # It serves again, cleanly, and what lived through it did not grow.
        await settle(cluster)
        after_load = Load(cluster.url)
        await run_load(cluster, 3.0, after_load)
        assert not after_load.failures and after_load.ok > 5, (after_load.failures[:3], cluster.logs())
        await asyncio.sleep(1.0)
        for name, proc in lived.items():
            (rss0, fds0), (rss1, fds1) = before[name], footprint(proc)
            assert rss1 <= rss0 * 1.1, f"{name}: RSS {rss0} -> {rss1}"
            assert fds1 <= fds0 * 1.1 + 2, f"{name}: open files {fds0} -> {fds1}"
    finally:
        cluster.kill()
        await proxy.stop()
