"""Running Switchman for tests: in-process on a real nats-server, or as real processes.

cfg = config(providers=[...], models=[...])
async with in_process(cfg, nats_url) as gw:       # the five services in this event loop
    client = gw.openai()                            # official AsyncOpenAI against the ingress

proc = Proc.start(["switchman", "up", "--config", path], env, log_dir)   # e2e
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import yaml
from aiohttp import web

from libs.common import config as config_mod
from libs.common.config import Config
from libs.common.service import run
from services.runner import NAMES, build
from tests.natsutil import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def config_dict(**overrides: Any) -> dict[str, Any]:
    """A test config: no sim models, no discovery, no environment providers, quiet logs."""
    data: dict[str, Any] = {
        "listen": f"127.0.0.1:{free_port()}",
        "sim_models": False,
        "env_providers": False,
        "discovery": {"enabled": False},
        "log_level": "warning",
        "limits": {"ack_timeout_s": 2.0, "idle_timeout_s": 5.0, "request_timeout_s": 30.0},
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return data


def config(**overrides: Any) -> Config:
    return config_mod.parse(config_dict(**overrides), env={})


def openai_provider(pid: str, base_url: str, models: Sequence[str], **extra: Any) -> dict[str, Any]:
    return {
        "id": pid,
        "kind": "openai",
        "preset": "openai",
        "base_url": base_url,
        "api_key": "sk-test",
        "models": list(models),
        **extra,
    }


@dataclass
class Gateway:
    cfg: Config
    port: int
    services: dict[str, Any]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def openai(self, api_key: str = "sk-anything", **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, **kw)


@contextlib.asynccontextmanager
async def in_process(cfg: Config, nats_url: str, names: Sequence[str] = NAMES) -> AsyncIterator[Gateway]:
    services = [build(n, cfg) for n in NAMES if n in names]
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(run(services, nats_url, stop=stop, started=ready.set))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()  # raises the start-up error
    by_name = {s.name: s for s in services}
    port = by_name["ingress"].port if "ingress" in by_name else cfg.host_port[1]
    try:
        if "worker" in by_name and "router" in by_name:
            await _wait_routable(by_name)
        yield Gateway(cfg, port, by_name)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def _wait_routable(services: dict[str, Any]) -> None:
    """Until the router has heard from the worker and the ingress has its catalog."""
    router, worker, ingress = services["router"], services["worker"], services.get("ingress")
    models = {(pid, m) for pid, b in worker.bindings.items() for m in b.models}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if all(p in router.state.seen for p in worker.bindings) and (
            ingress is None or models <= set(ingress.view.infos)
        ):
            return
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve an ad-hoc aiohttp app on a free port: yields its base URL ending in /v1."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


class Proc:
    """A Switchman process with its output in a log file."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.popen = popen
        self.log = log

    @classmethod
    def start(cls, args: Sequence[str], env: dict[str, str], log: Path) -> Proc:
        full_env = {**os.environ, **env}
        out = open(log, "wb")  # noqa: SIM115 - closed with the process
        popen = subprocess.Popen(list(args), env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        return cls(popen, log)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)

    def terminate(self, timeout: float = 15) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
                raise AssertionError(f"process did not exit on SIGTERM:\n{self.output()[-3000:]}") from None
        return self.popen.returncode


def service_cmd(name: str) -> list[str]:
    return [sys.executable, "-m", f"services.{name}"]


def switchman_cmd(*args: str) -> list[str]:
    return [str(BIN / "switchman"), *args]


async def eventually(predicate: Any, timeout: float, what: str) -> float:
    """Poll until ``predicate()``; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def wait_http(url: str, timeout: float = 20.0, procs: Sequence[Proc] = ()) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            for p in procs:
                if not p.alive():
                    raise AssertionError(f"process exited early:\n{p.output()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer in {timeout}s")


async def wait_model(base_url: str, model: str, timeout: float = 20.0) -> None:
    """Until a chat request for ``model`` succeeds (router and worker have met)."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "ping"}])
            return
        except openai.APIError as e:
            last = e
            await asyncio.sleep(0.1)
    raise AssertionError(f"model {model} never became servable: {last!r}")
