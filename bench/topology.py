"""What the end-to-end benchmark measures: the upstream, Switchman in each topology, the bare proxy.

Each target is started as its own process (or processes) by :class:`Procs`, which stops
them by pid in reverse order:

* ``direct``        — ``switchman sim-upstream``, the 0 ms simulated provider (the baseline);
* ``up``            — ``switchman up``: all five services in one process, embedded nats-server;
* ``split``         — a nats-server started here and four ``switchman run`` processes against it;
* ``aiohttp-proxy`` — bench/passthrough.py, a bare aiohttp pass-through.

The gateways get a config routing ``bench-model`` to the upstream (:func:`write_config`).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
MODEL = "bench-model"
CHAT_PATH = "/v1/chat/completions"

# A small chat request; the upstream answers 16 tokens (non-stream) or streams 8.
PLAIN_BODY = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Say hello to the benchmark in a few words."},
    ],
    "max_tokens": 16,
    "temperature": 0.2,
}
STREAM_BODY = {**PLAIN_BODY, "max_tokens": 8, "stream": True}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def switchman_cmd(*args: str) -> list[str]:
    exe = BIN / "switchman"
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-m", "services", *args]


def nats_binary() -> str | None:
    here = BIN / "nats-server"
    return str(here) if here.exists() else shutil.which("nats-server")


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("NATS_URL", "SWITCHMAN_LISTEN", "SWITCHMAN_CONFIG", "SWITCHMAN_DATA_DIR"):
        env.pop(k, None)
    return env


class Procs:
    """The processes this benchmark started; stopped by pid in reverse order."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.items: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, role: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{role}.log", "ab")  # noqa: SIM115 - owned by the child
        p = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        log.close()
        self.items.append((role, p))
        return p

    def check(self) -> None:
        for role, p in self.items:
            if p.poll() is not None:
                tail = (self.logdir / f"{role}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{role} exited with {p.returncode}:\n{tail}")

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop one process on purpose: :meth:`check` no longer counts it."""
        proc.terminate()
        proc.wait(30)
        self.items = [(r, p) for r, p in self.items if p is not proc]

    def stop_all(self) -> None:
        for _role, p in reversed(self.items):
            if p.poll() is not None:
                continue
            try:
                kids = psutil.Process(p.pid).children(recursive=True)
            except psutil.Error:
                kids = []
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
            for k in kids:  # e.g. the embedded nats-server, should its parent not stop it
                with contextlib.suppress(psutil.Error):
                    if k.is_running():
                        k.terminate()
                        k.wait(5)
        self.items.clear()


def wait_port(port: int, timeout: float, procs: Procs) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:g}s")


def post(port: int, body: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", CHAT_PATH, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def wait_ready(port: int, timeout: float, procs: Procs) -> dict[str, str]:
    """Until a chat request through ``port`` answers 200 (the model catalog is known)."""
    body = json.dumps(PLAIN_BODY).encode()
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        procs.check()
        try:
            status, headers, data = post(port, body)
            if status == 200:
                return headers
            last = f"{status} {data[:200]!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.1)
    raise RuntimeError(f"port {port} not ready after {timeout:g}s: {last}")


class Target:
    def __init__(self, name: str, port: int, procs: dict[str, psutil.Process]) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}{CHAT_PATH}"
        self.procs = procs  # role -> process; role "nats" is nats-server
        self.varz_port: int | None = None  # nats-server monitoring, when we started it

    @property
    def gateway(self) -> bool:
        """Between the client and the upstream (everything but the direct baseline)."""
        return self.name != "direct"

    @property
    def switchman(self) -> bool:
        return self.name in ("up", "split")


def write_config(
    path: Path,
    listen_port: int,
    upstream_port: int,
    provider: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
) -> None:
    """The bench's gateway config; ``provider`` and ``limits`` add to its defaults."""
    cfg: dict[str, Any] = {
        "listen": f"127.0.0.1:{listen_port}",
        "log_level": "warning",
        "sim_models": False,
        "env_providers": False,
        "discovery": {"enabled": False},
        "providers": [
            {
                "id": "up",
                "kind": "openai",
                "preset": "vllm",
                "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                "models": [MODEL],
            }
        ],
        "limits": {
            "max_in_flight": 1024,
            "ack_timeout_s": 2.0,
            "idle_timeout_s": 30.0,
            "request_timeout_s": 60.0,
        },
    }
    cfg["providers"][0].update(provider or {})
    cfg["limits"].update(limits or {})
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML


def start_upstream(procs: Procs) -> Target:
    port = free_port()
    p = procs.start(
        "upstream", switchman_cmd("sim-upstream", "--host", "127.0.0.1", "--port", str(port)), base_env()
    )
    wait_port(port, 20, procs)
    return Target("direct", port, {"upstream": psutil.Process(p.pid)})


def start_up(procs: Procs, tmp: Path, upstream: Target) -> Target:
    port = free_port()
    cfg = tmp / "up.yaml"
    write_config(cfg, port, upstream.port)
    env = base_env() | {"SWITCHMAN_DATA_DIR": str(tmp / "up-data")}
    p = procs.start("up", switchman_cmd("up", "--config", str(cfg)), env)
    wait_ready(port, 30, procs)
    main = psutil.Process(p.pid)
    roles = {"switchman": main}
    for k in main.children(recursive=True):
        roles["nats" if "nats" in k.name() else f"child-{k.pid}"] = k
    return Target("up", port, roles)


def start_split(procs: Procs, tmp: Path, upstream: Target) -> Target:
    binary = nats_binary()
    if binary is None:
        raise RuntimeError("nats-server not found next to the Python executable nor on PATH")
    nats_port = free_port()
    store = tmp / "split-nats"
    store.mkdir(parents=True, exist_ok=True)
    varz_port = free_port()
    nats = procs.start(
        "split-nats",
        [binary, "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", str(store), "-m", str(varz_port)],
        base_env(),
    )
    wait_port(nats_port, 20, procs)
    port = free_port()
    cfg = tmp / "split.yaml"
    write_config(cfg, port, upstream.port)
    env = base_env() | {
        "SWITCHMAN_DATA_DIR": str(tmp / "split-data"),
        "NATS_URL": f"nats://127.0.0.1:{nats_port}",
    }
    roles: dict[str, psutil.Process] = {"nats": psutil.Process(nats.pid)}
    for role, services in (
        ("health+ledger", ["health", "ledger"]),
        ("worker", ["worker"]),
        ("router", ["router"]),
        ("ingress", ["ingress"]),
    ):
        p = procs.start(f"split-{role}", switchman_cmd("run", *services, "--config", str(cfg)), env)
        roles[role] = psutil.Process(p.pid)
    wait_ready(port, 30, procs)
    t = Target("split", port, roles)
    t.varz_port = varz_port
    return t


def start_proxy(procs: Procs, tmp: Path, upstream: Target) -> Target:
    port = free_port()
    p = procs.start(
        "aiohttp-proxy",
        [
            sys.executable,
            str(HERE / "passthrough.py"),
            "--port",
            str(port),
            "--upstream",
            f"http://127.0.0.1:{upstream.port}",
        ],
        base_env(),
    )
    wait_ready(port, 20, procs)
    return Target("aiohttp-proxy", port, {"proxy": psutil.Process(p.pid)})


def check_gateway(t: Target) -> dict[str, Any]:
    """One request of each kind through the gateway: routed to the upstream, stream well formed."""
    status, headers, _ = post(t.port, json.dumps(PLAIN_BODY).encode())
    if status != 200 or (t.switchman and headers.get("x-switchman-provider") != "up"):
        raise RuntimeError(f"{t.name}: unexpected answer {status} {headers}")
    status, _, data = post(t.port, json.dumps(STREAM_BODY).encode())
    lines = [ln for ln in data.split(b"\n") if ln.startswith(b"data: ")]
    if status != 200 or not lines or lines[-1] != b"data: [DONE]":
        raise RuntimeError(f"{t.name}: bad stream {status} {data[:300]!r}")
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    unasked_usage = any(c.get("usage") and not c.get("choices") for c in chunks)
    return {"stream_chunks": len(chunks), "usage_chunk_without_include_usage": unasked_usage}


# Starters of the gateways by --topologies name (the upstream is always started first).
STARTERS = {"up": start_up, "split": start_split, "proxy": start_proxy}
