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
import itertools
import json
from dataclasses import dataclass, field

import aiohttp
import nats
import pytest

from libs.common import contracts, subjects
from tests.gateway import (
    Proc,
    config_dict,
    eventually,
    openai_provider,
    switchman_cmd,
    wait_http,
    wait_model,
    write_config,
)

pytestmark = pytest.mark.e2e

WORDS = 40  # words per answer; one chunk each
CHUNK_DELAY_S = 0.02  # ~0.8 s per answer: always some in flight
REQUEST_TIMEOUT_S = 20.0


def expected(n: int) -> str:
    return " ".join(f"w{i}" for i in range(1, n + 1))


@dataclass
class Load:
    """Concurrent clients sending requests until told to stop; records every outcome."""

    url: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stopping: bool = False
    seq: itertools.count = field(default_factory=itertools.count)

    async def one(self, session: aiohttp.ClientSession, stream: bool) -> None:
        n = WORDS + next(self.seq) % 7
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"#words:{n}"}],
            "stream": stream,
        }
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            async with session.post(self.url, json=body) as resp:
                text = await resp.text()
        if resp.status != 200:
            raise AssertionError(f"status {resp.status}: {text[:300]}")
        if stream:
            events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
            if events[-1:] != ["[DONE]"]:
                raise AssertionError(f"stream did not end with [DONE]: {text[-300:]}")
            chunks = [json.loads(e) for e in events[:-1]]
            got = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        else:
            got = json.loads(text)["choices"][0]["message"]["content"]
        if got != expected(n):
            raise AssertionError(f"damaged content: {got[-80:]!r}")

    async def client(self, stream: bool) -> None:
        # A new connection per request: a request is either accepted by the ingress or refused.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            while not self.stopping:
                try:
                    await self.one(session, stream)
                    self.ok += 1
                except Exception as e:  # noqa: BLE001 - every failure is reported
                    self.failures.append(f"{'stream' if stream else 'json'}: {type(e).__name__}: {e}")


class Cluster:
    def __init__(self, tmp_path, nats_url: str, base: str) -> None:
        data = config_dict(
            providers=[openai_provider("emu", base, ["gpt-4o-mini"])],
            limits={"idle_timeout_s": 8.0, "ack_timeout_s": 2.0},
            log_level="info",
        )
        self.port = int(data["listen"].rsplit(":", 1)[1])
        cfg = write_config(tmp_path / "switchman.yaml", data)
        self.env = {"NATS_URL": nats_url, "SWITCHMAN_CONFIG": str(cfg), "SWITCHMAN_DATA_DIR": str(tmp_path)}
        self.tmp = tmp_path
        self.procs: dict[str, Proc] = {}

    def start(self, label: str, service: str) -> Proc:
        proc = Proc.start(switchman_cmd("run", service), self.env, self.tmp / f"{label}.log")
        self.procs[label] = proc
        return proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{p.output()[-1500:]}" for n, p in self.procs.items())


@pytest.fixture
def cluster(tmp_path, nats_server_fn, upstream):
    c = Cluster(tmp_path, nats_server_fn.url, upstream[1])
    yield c
    for p in c.procs.values():
        p.kill()


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
    await wait_http(f"http://127.0.0.1:{cluster.port}/healthz", procs=list(cluster.procs.values()))
    await wait_model(cluster.url.removesuffix("/chat/completions"), "gpt-4o-mini")
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
        assert [r for r in results if r is not None] == [], cluster.logs()
        with pytest.raises(aiohttp.ClientConnectionError):  # it stopped accepting
            await ingress.one(session, stream=False)
