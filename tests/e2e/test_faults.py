"""Faults with every service in its own process: dead worker, missing worker, NATS restart."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from tests.gateway import Proc, config_dict, openai_provider, service_cmd, wait_http, wait_model, write_config

pytestmark = pytest.mark.e2e

IDLE_TIMEOUT = 2.0


class Cluster:
    def __init__(self, tmp_path, nats_url: str, base: str) -> None:
        data = config_dict(
            providers=[openai_provider("emu", base, ["gpt-4o-mini"])],
            limits={"idle_timeout_s": IDLE_TIMEOUT, "ack_timeout_s": 1.0},
        )
        self.port = int(data["listen"].rsplit(":", 1)[1])
        self.cfg = write_config(tmp_path / "switchman.yaml", data)
        self.env = {
            "NATS_URL": nats_url,
            "SWITCHMAN_CONFIG": str(self.cfg),
            "SWITCHMAN_DATA_DIR": str(tmp_path / "state"),
        }
        self.tmp = tmp_path
        self.procs: dict[str, Proc] = {}

    def start(self, *names: str) -> None:
        for n in names:
            self.procs[n] = Proc.start(service_cmd(n), self.env, self.tmp / f"{n}.log")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key="x", max_retries=0)

    async def ready(self) -> None:
        await wait_http(f"http://127.0.0.1:{self.port}/healthz", procs=list(self.procs.values()))

    def stop(self) -> dict[str, int]:
        return {n: p.terminate() for n, p in self.procs.items() if p.alive()}

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{p.output()[-2000:]}" for n, p in self.procs.items())


@pytest.fixture
def cluster(tmp_path, nats_server_fn, upstream):
    c = Cluster(tmp_path, nats_server_fn.url, upstream[1])
    yield c
    for p in c.procs.values():
        p.kill()


async def test_worker_killed_mid_stream_ends_with_error_event(cluster, upstream):
    state, _ = upstream
    cluster.start("ingress", "router", "worker")
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
    assert elapsed < IDLE_TIMEOUT + 1.5, elapsed
    assert "silent" in str(err.value)


async def test_no_worker_subscribed_is_503_within_a_second(cluster):
    cluster.start("ingress", "router")
    await cluster.ready()
    client = cluster.client()
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 503
    assert time.monotonic() - started < 1.0
    assert err.value.body["code"] == "no_provider_available"


async def test_services_reconnect_after_nats_restart(cluster, nats_server_fn):
    cluster.start("ingress", "router", "worker", "health", "ledger")
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
