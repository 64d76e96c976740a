#!/usr/bin/env python
"""Switchman end-to-end benchmark: throughput, added latency, streaming TTFT and memory.

One run starts the 0 ms simulated upstream (``switchman sim-upstream``) and Switchman
in two topologies side by side, against that upstream:

* ``up``    — ``switchman up``: all five services in one process, embedded nats-server;
* ``split`` — a nats-server started here, and ingress, router, worker and
  health+ledger as four ``switchman run`` processes (as deploy/compose would).

and, as a second reference, ``aiohttp-proxy`` (bench/passthrough.py: a bare aiohttp
pass-through, the floor for any single-process Python gateway). It then drives load
at each target — ``direct`` (the upstream itself: the baseline), ``up``, ``split`` and
``aiohttp-proxy`` — interleaved (the order rotates every repeat), and reports the
median over ``--repeats`` of: non-stream requests/s and p50/p99 latency at each
``--concurrency``; streaming time to the first ``data:`` chunk (TTFT) at each
``--stream-concurrency``; the added latency (gateway − direct) at concurrency 1; the
peak RSS of the Switchman processes and of nats-server under load; the CPU each
process spends per request; and how busy the machine was with other work.

Load: ``wrk`` (one thread, bench/post.lua) for non-stream requests when it is on PATH,
else bench/loadgen.py (aiohttp + uvloop, its own process); streaming always uses
bench/loadgen.py. Results: bench/results/<timestamp>.json and a markdown table.

    .venv/bin/python bench/run.py            # the full run (about 8 minutes)
    .venv/bin/python bench/run.py --quick    # a smoke run (about 30 s: up and split, c=1 and 32)
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
MODEL = "bench-model"
CHAT_PATH = "/v1/chat/completions"

TARGETS = {
    "rps_c32": 2000.0,  # non-stream req/s at concurrency 32, at least
    "added_p50_c1_ms": 1.0,  # at most
    "added_p99_c1_ms": 3.0,
    "added_ttft_p50_c1_ms": 2.0,
    "rss_total_mb": 150.0,
}

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


# -- processes ------------------------------------------------------------------------------
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
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=ROOT, start_new_session=True)
        log.close()
        self.items.append((role, p))
        return p

    def check(self) -> None:
        for role, p in self.items:
            if p.poll() is not None:
                tail = (self.logdir / f"{role}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{role} exited with {p.returncode}:\n{tail}")

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


def write_config(path: Path, listen_port: int, upstream_port: int) -> None:
    cfg = {
        "listen": f"127.0.0.1:{listen_port}",
        "log_level": "warning",
        "sim_models": False,
        "env_providers": False,
        "discovery": {"enabled": False},
        "providers": [{
            "id": "up", "kind": "openai", "preset": "vllm",
            "base_url": f"http://127.0.0.1:{upstream_port}/v1", "models": [MODEL],
        }],
        "limits": {"max_in_flight": 1024, "ack_timeout_s": 2.0, "idle_timeout_s": 30.0,
                   "request_timeout_s": 60.0},
    }
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML


def start_upstream(procs: Procs) -> Target:
    port = free_port()
    p = procs.start("upstream", switchman_cmd("sim-upstream", "--host", "127.0.0.1", "--port", str(port)),
                    base_env())
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
    nats = procs.start("split-nats", [binary, "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", str(store),
                                      "-m", str(varz_port)], base_env())
    wait_port(nats_port, 20, procs)
    port = free_port()
    cfg = tmp / "split.yaml"
    write_config(cfg, port, upstream.port)
    env = base_env() | {"SWITCHMAN_DATA_DIR": str(tmp / "split-data"), "NATS_URL": f"nats://127.0.0.1:{nats_port}"}
    roles: dict[str, psutil.Process] = {"nats": psutil.Process(nats.pid)}
    for role, services in (("health+ledger", ["health", "ledger"]), ("worker", ["worker"]),
                           ("router", ["router"]), ("ingress", ["ingress"])):
        p = procs.start(f"split-{role}", switchman_cmd("run", *services, "--config", str(cfg)), env)
        roles[role] = psutil.Process(p.pid)
    wait_ready(port, 30, procs)
    t = Target("split", port, roles)
    t.varz_port = varz_port
    return t


def start_proxy(procs: Procs, tmp: Path, upstream: Target) -> Target:
    port = free_port()
    p = procs.start("aiohttp-proxy", [sys.executable, str(HERE / "passthrough.py"), "--port", str(port),
                                      "--upstream", f"http://127.0.0.1:{upstream.port}"], base_env())
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


# -- measurement ----------------------------------------------------------------------------
class Sampler(threading.Thread):
    """RSS of every target's processes every ``interval``; peaks kept apart for 'under load'."""

    def __init__(self, targets: list[Target], interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.targets = targets
        self.interval = interval
        self.active: str | None = None
        self.stop_evt = threading.Event()
        self.peak: dict[str, dict[str, dict[str, float]]] = {
            t.name: {"load": defaultdict(float), "idle": defaultdict(float)} for t in targets}
        self.samples = 0

    def run(self) -> None:
        while not self.stop_evt.wait(self.interval):
            for t in self.targets:
                phase = "load" if self.active == t.name else "idle"
                peak = self.peak[t.name][phase]
                sw = nats = 0
                for role, p in t.procs.items():
                    try:
                        rss = p.memory_info().rss
                    except psutil.Error:
                        continue
                    peak[role] = max(peak[role], rss / 2**20)
                    if role == "nats":
                        nats += rss
                    else:
                        sw += rss
                peak["_switchman"] = max(peak["_switchman"], sw / 2**20)
                peak["_nats"] = max(peak["_nats"], nats / 2**20)
                peak["_total"] = max(peak["_total"], (sw + nats) / 2**20)
            self.samples += 1


def varz(port: int | None) -> dict[str, int] | None:
    """nats-server's message counters (its /varz monitoring endpoint)."""
    if port is None:
        return None
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/varz")
        v = json.loads(conn.getresponse().read())
        conn.close()
        return {k: v[k] for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")}
    except (OSError, ValueError, KeyError):
        return None


def cpu_of(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def system_busy() -> float:
    t = psutil.cpu_times()
    total = sum(t)
    idle = t.idle + getattr(t, "iowait", 0.0)
    guest = getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)  # already in user/nice
    return total - idle - guest


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Snap:
    def __init__(self, all_procs: dict[str, psutil.Process], loadgen: psutil.Process | None) -> None:
        self.t = time.perf_counter()
        self.procs = {k: cpu_of(p) for k, p in all_procs.items()}
        self.busy = system_busy()
        self.self_cpu = self_cpu()
        self.children = children_cpu()
        self.loadgen = cpu_of(loadgen) if loadgen is not None else 0.0
        self.varz: dict[str, int] | None = None


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, targets: list[Target], sampler: Sampler) -> None:
        self.a = args
        self.tmp = tmp
        self.targets = targets
        self.sampler = sampler
        self.wrk = None if args.loadgen == "python" else shutil.which("wrk")
        if args.loadgen == "wrk" and self.wrk is None:
            raise SystemExit("--loadgen wrk: wrk is not on PATH")
        self.plain = tmp / "plain.json"
        self.plain.write_text(json.dumps(PLAIN_BODY))
        self.stream = tmp / "stream.json"
        self.stream.write_text(json.dumps(STREAM_BODY))
        # Every long-lived process, for the "other load on the machine" estimate.
        self.all_procs = {f"{t.name}/{r}": p for t in targets for r, p in t.procs.items()}
        self._varz_port: int | None = None

    def _snap(self, loadgen: psutil.Process | None) -> Snap:
        snap = Snap(self.all_procs, loadgen)
        snap.varz = varz(self._varz_port)
        return snap

    # one measured run ---------------------------------------------------------------------
    def run(self, t: Target, mode: str, c: int, duration: float | None = None,
            warmup: float | None = None) -> dict[str, Any]:
        duration = self.a.duration if duration is None else duration
        warmup = self.a.warmup if warmup is None else warmup
        self.sampler.active = t.name
        self._varz_port = t.varz_port
        try:
            if mode == "plain" and self.wrk:
                before, after, res = self._wrk(t, c, duration, warmup)
            else:
                before, after, res = self._python(t, mode, c, duration, warmup)
        finally:
            self.sampler.active = None
        return self._account(t, mode, c, before, after, res)

    def _wrk(self, t: Target, c: int, duration: float, warmup: float) -> tuple[Snap, Snap, dict[str, Any]]:
        def cmd(d: float) -> list[str]:
            return [self.wrk, "-t1", f"-c{c}", f"-d{max(1, round(d))}s", "--timeout", "10s", "-s",
                    str(HERE / "post.lua"), t.url, "--", str(self.plain)]

        if warmup >= 0.5:  # wrk takes whole seconds
            subprocess.run(cmd(warmup), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        before = self._snap(None)
        out = subprocess.run(cmd(duration), capture_output=True, text=True, check=False)
        after = self._snap(None)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
        w = json.loads(line[len("BENCHJSON "):])
        dur = w["duration_us"] / 1e6
        errors = {k: v for k, v in w["errors"].items() if v}
        ok = w["requests"] - errors.get("status", 0)
        lat = {k: v / 1e3 for k, v in w["lat_us"].items()}
        res = {"loadgen": "wrk", "requests": ok, "duration_s": dur, "rps": ok / dur, "errors": errors,
               "error_count": sum(errors.values()), "lat_ms": lat, "loadgen_cpu_s": None}
        return before, after, res

    def _python(self, t: Target, mode: str, c: int, duration: float,
                warmup: float) -> tuple[Snap, Snap, dict[str, Any]]:
        body = self.stream if mode == "stream" else self.plain
        cmd = [sys.executable, str(HERE / "loadgen.py"), "--url", t.url, "--body-file", str(body),
               "--concurrency", str(c), "--duration", str(duration), "--warmup", str(warmup)]
        if mode == "stream":
            cmd.append("--stream")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lp = psutil.Process(p.pid)
        before = after = None
        res = None
        assert p.stdout is not None
        try:
            for line in p.stdout:
                if line.startswith("START"):
                    before = self._snap(lp)
                elif line.startswith("STOP"):
                    after = self._snap(lp)
                elif line.startswith("RESULT "):
                    res = json.loads(line[len("RESULT "):])
            err = p.stderr.read() if p.stderr else ""
            p.wait()
        finally:
            if p.poll() is None:  # interrupted: stop the load too
                p.kill()
                p.wait()
        if res is None or before is None or after is None:
            raise RuntimeError(f"loadgen failed ({p.returncode}): {err[-1500:]}")
        res["loadgen"] = "python"
        res["loadgen_cpu_s"] = after.loadgen - before.loadgen
        return before, after, res

    def _account(self, t: Target, mode: str, c: int, before: Snap, after: Snap,
                 res: dict[str, Any]) -> dict[str, Any]:
        wall = after.t - before.t
        n = max(res["requests"], 1)
        delta = {k: after.procs[k] - before.procs[k] for k in before.procs}
        ours = sum(delta.values()) + (after.self_cpu - before.self_cpu)
        if res["loadgen_cpu_s"] is None:  # wrk: reaped between the snapshots
            res["loadgen_cpu_s"] = after.children - before.children
        ours += res["loadgen_cpu_s"]
        per_role = {r: delta[f"{t.name}/{r}"] for r in t.procs}
        sw = sum(v for r, v in per_role.items() if r != "nats")
        nats = per_role.get("nats", 0.0)
        upstream = delta["direct/upstream"]
        res.update({
            "target": t.name, "mode": mode, "concurrency": c, "wall_s": wall,
            "cpu_us_per_req": {r: v / n * 1e6 for r, v in per_role.items()},
            "gateway_cpu_us_per_req": sw / n * 1e6 if t.gateway else None,
            "nats_cpu_us_per_req": nats / n * 1e6 if t.gateway else None,
            "upstream_cpu_us_per_req": upstream / n * 1e6,
            "loadgen_cpu_us_per_req": res["loadgen_cpu_s"] / n * 1e6,
            "cores": {r: v / wall for r, v in per_role.items()},
            "upstream_cores": upstream / wall,
            "loadgen_cores": res["loadgen_cpu_s"] / wall,
            "other_load_cores": max(0.0, (after.busy - before.busy) - ours) / wall,
        })
        if before.varz and after.varz:  # NATS messages per request, as nats-server counts them
            res["nats_per_req"] = {k: (after.varz[k] - before.varz[k]) / n for k in before.varz}
        return res


# -- aggregation and report -------------------------------------------------------------------
def med(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["target"], r["mode"], r["concurrency"])].append(r)
    out: dict[str, Any] = {}
    for (target, mode, c), rs in sorted(groups.items()):
        agg: dict[str, Any] = {
            "repeats": len(rs),
            "rps": med([r["rps"] for r in rs]),
            "rps_all": [round(r["rps"], 1) for r in rs],
            "errors": sum(r["error_count"] for r in rs),
            "requests": sum(r["requests"] for r in rs),
            "lat_ms": {k: med([r["lat_ms"].get(k) for r in rs]) for k in ("p50", "p90", "p99", "mean", "max")},
            "gateway_cpu_us_per_req": med([r["gateway_cpu_us_per_req"] for r in rs]),
            "nats_cpu_us_per_req": med([r["nats_cpu_us_per_req"] for r in rs]),
            "upstream_cpu_us_per_req": med([r["upstream_cpu_us_per_req"] for r in rs]),
            "loadgen_cpu_us_per_req": med([r["loadgen_cpu_us_per_req"] for r in rs]),
            "cpu_us_per_req": {k: med([r["cpu_us_per_req"][k] for r in rs]) for k in rs[0]["cpu_us_per_req"]},
            "cores": {k: med([r["cores"][k] for r in rs]) for k in rs[0]["cores"]},
            "upstream_cores": med([r["upstream_cores"] for r in rs]),
            "loadgen_cores": med([r["loadgen_cores"] for r in rs]),
            "other_load_cores": med([r["other_load_cores"] for r in rs]),
        }
        if all("nats_per_req" in r for r in rs):
            agg["nats_per_req"] = {k: med([r["nats_per_req"][k] for r in rs]) for k in rs[0]["nats_per_req"]}
        if mode == "stream":
            agg["ttft_ms"] = {k: med([r["ttft_ms"].get(k) for r in rs]) for k in ("p50", "p90", "p99", "mean")}
        out[f"{target}/{mode}/c{c}"] = agg
    return out


def derive(agg: dict[str, Any], gateways: list[str], cs: list[int], scs: list[int],
           rss: dict[str, Any]) -> dict[str, Any]:
    def get(target: str, mode: str, c: int) -> dict[str, Any] | None:
        return agg.get(f"{target}/{mode}/c{c}")

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    s: dict[str, Any] = {}
    for g in gateways:
        d: dict[str, Any] = {}
        for c in cs:
            gw, di = get(g, "plain", c), get("direct", "plain", c)
            if gw and di:
                d[f"added_p50_c{c}_ms"] = diff(gw["lat_ms"]["p50"], di["lat_ms"]["p50"])
                d[f"added_p99_c{c}_ms"] = diff(gw["lat_ms"]["p99"], di["lat_ms"]["p99"])
            if gw:
                d[f"rps_c{c}"] = gw["rps"]
        for c in scs:
            gw, di = get(g, "stream", c), get("direct", "stream", c)
            if gw and di:
                d[f"added_ttft_p50_c{c}_ms"] = diff(gw["ttft_ms"]["p50"], di["ttft_ms"]["p50"])
                d[f"added_ttft_p99_c{c}_ms"] = diff(gw["ttft_ms"]["p99"], di["ttft_ms"]["p99"])
        d["rss_total_mb"] = rss[g]["load"].get("_total")
        checks = {}
        for key, limit in TARGETS.items():
            v = d.get(key)
            if v is None:
                continue
            checks[key] = {"value": v, "target": limit,
                           "pass": v >= limit if key.startswith("rps") else v <= limit}
        d["checks"] = checks
        s[g] = d
    return s


def fmt(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def table(agg: dict[str, Any], summary: dict[str, Any], rss: dict[str, Any], names: list[str],
          cs: list[int], scs: list[int]) -> str:
    gateways = [n for n in names if n != "direct"]
    head = "| metric | " + " | ".join(names) + " | target |"
    rows = [head, "|" + "---|" * (len(names) + 2)]

    def cell(name: str, mode: str, c: int, path: tuple[str, ...], digits: int = 2) -> str:
        a = agg.get(f"{name}/{mode}/c{c}")
        v: Any = a
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        return fmt(v, digits)

    def row(label: str, cells: list[str], target: str = "") -> None:
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {target} |")

    for c in cs:
        row(f"non-stream req/s, c={c}", [cell(n, "plain", c, ("rps",), 0) for n in names],
            "≥ 2,000 (Switchman)" if c == 32 else "")
        row(f"non-stream p50 / p99 ms, c={c}",
            [f"{cell(n, 'plain', c, ('lat_ms', 'p50'))} / {cell(n, 'plain', c, ('lat_ms', 'p99'))}" for n in names])
    for c in cs[:1]:
        row(f"added latency p50 / p99 ms, c={c}",
            ["—"] + [f"{fmt(summary[g].get(f'added_p50_c{c}_ms'))} / {fmt(summary[g].get(f'added_p99_c{c}_ms'))}"
                     for g in gateways], "≤ 1 / ≤ 3")
    for c in scs:
        row(f"stream TTFT p50 / p99 ms, c={c}",
            [f"{cell(n, 'stream', c, ('ttft_ms', 'p50'))} / {cell(n, 'stream', c, ('ttft_ms', 'p99'))}" for n in names])
        row(f"added TTFT p50 / p99 ms, c={c}",
            ["—"] + [f"{fmt(summary[g].get(f'added_ttft_p50_c{c}_ms'))} / "
                     f"{fmt(summary[g].get(f'added_ttft_p99_c{c}_ms'))}" for g in gateways],
            "p50 ≤ 2" if c == scs[0] else "")
        row(f"streams/s, c={c}", [cell(n, "stream", c, ("rps",), 0) for n in names])
    c_load = 32 if 32 in cs else cs[-1]
    row(f"gateway CPU µs/req (excl. nats-server), c={c_load}",
        ["—"] + [cell(g, "plain", c_load, ("gateway_cpu_us_per_req",), 0) for g in gateways])
    row(f"nats-server CPU µs/req, c={c_load}",
        ["—"] + [cell(g, "plain", c_load, ("nats_cpu_us_per_req",), 0) if g in ("up", "split") else "—"
                 for g in gateways])
    row(f"upstream CPU µs/req, c={c_load}", [cell(n, "plain", c_load, ("upstream_cpu_us_per_req",), 0) for n in names])
    row(f"load generator CPU µs/req, c={c_load}",
        [cell(n, "plain", c_load, ("loadgen_cpu_us_per_req",), 0) for n in names])
    row("peak RSS gateway processes (excl. nats-server) MB", ["—"] + [fmt(rss[g]["load"].get("_switchman"), 1) for g in gateways])
    row("peak RSS nats-server MB", ["—"] + [fmt(rss[g]["load"].get("_nats"), 1) if rss[g]["load"].get("_nats")
                                            else "—" for g in gateways])
    row("peak RSS total MB (under load)", ["—"] + [fmt(rss[g]["load"].get("_total"), 1) for g in gateways],
        "≤ 150")
    row("upstream RSS MB", [fmt(rss["direct"]["load"].get("_total"), 1)] + ["" for _ in gateways])
    others = [a["other_load_cores"] for a in agg.values() if a.get("other_load_cores") is not None]
    rows.append("")
    rows.append(f"Other load on the machine during the runs (cores busy with processes not ours): "
                f"median {fmt(med(others))}, max {fmt(max(others) if others else None)}.")
    return "\n".join(rows)


def per_process_table(agg: dict[str, Any], rss: dict[str, Any], target: str, c: int) -> str:
    a = agg.get(f"{target}/plain/c{c}")
    if a is None:
        return ""
    rows = [f"| {target} process | CPU µs/req (c={c}) | cores busy (c={c}) | peak RSS MB |", "|---|---|---|---|"]
    for role in a["cpu_us_per_req"]:
        rows.append(f"| {role} | {fmt(a['cpu_us_per_req'][role], 0)} | {fmt(a['cores'][role])} | "
                    f"{fmt(rss[target]['load'].get(role), 1)} |")
    lines = []
    for mode, cc in (("plain", 1), ("plain", c), ("stream", 1), ("stream", c)):
        m = agg.get(f"{target}/{mode}/c{cc}", {}).get("nats_per_req")
        if m:
            lines.append(f"{'non-stream' if mode == 'plain' else 'stream'} c={cc}: {m['in_msgs']:.1f} in / "
                         f"{m['out_msgs']:.1f} out ({m['in_bytes'] / 1024:.1f} KB in)")
    if lines:
        rows.append("")
        rows.append("NATS messages per request (nats-server /varz): " + "; ".join(lines) + ".")
    return "\n".join(rows)


# -- profiling (optional) -----------------------------------------------------------------------
def profile(bench: Bench, t: Target, seconds: float, out_dir: Path, stamp: str) -> dict[str, Any]:
    """py-spy each Switchman process of ``t`` during a c=32 non-stream load; top frames by self time.

    Blocking mode (the process is paused for each sample, 150 Hz): --nonblocking reads
    torn stacks under load and over-attributes time to whatever frame is on top.
    """
    spy = BIN / "py-spy"
    spy_cmd = str(spy) if spy.exists() else shutil.which("py-spy")
    if spy_cmd is None:
        return {"error": "py-spy not found"}
    spies = []
    for role, p in t.procs.items():
        if role == "nats":
            continue
        out = out_dir / f"{stamp}-pyspy-{t.name}-{role.replace('+', '-')}.txt"
        cmd = [spy_cmd, "record", "--pid", str(p.pid), "--duration", str(int(seconds)), "--rate", "150",
               "--format", "raw", "--output", str(out)]
        spies.append((role, out, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    time.sleep(0.5)
    bench.run(t, "plain", 32, duration=seconds, warmup=0)
    result: dict[str, Any] = {}
    for role, out, sp in spies:
        try:
            sp.wait(30)
        except subprocess.TimeoutExpired:
            sp.kill()
        result[role] = summarize_raw(out) if out.exists() else {"error": sp.stderr.read().decode()[-500:]}
        result[role]["file"] = str(out.relative_to(ROOT)) if out.exists() else None
    return result


def summarize_raw(path: Path, top: int = 20) -> dict[str, Any]:
    self_count: dict[str, int] = defaultdict(int)
    incl: dict[str, int] = defaultdict(int)
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = [f for f in stack.split(";") if "(" in f and (".py" in f or ".pyx" in f)]
        if not frames:
            continue
        total += count
        self_count[frames[-1]] += count
        for f in set(frames):
            incl[f] += count

    def share(d: dict[str, int], n: int = top) -> list[list[Any]]:
        return [[f, round(100 * v / total, 1)] for f, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]]

    comp: dict[str, int] = defaultdict(int)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if n.isdigit():
            comp[component(stack.split(";"))] += int(n)
    return {"samples": total, "by_component_pct": share(comp, 30), "self_pct": share(self_count),
            "inclusive_pct": share(incl)}


def component(frames: list[str]) -> str:
    """Who a sample works for: the deepest Switchman frame's service, else the library at the leaf."""
    for f in reversed(frames):
        for part in ("services/ingress", "services/router", "services/worker", "services/health",
                     "services/ledger", "libs/common"):
            if f"({part}/" in f:
                leaf = frames[-1]
                lib = "aiohttp" if "aiohttp/" in leaf else "nats-py" if "nats/" in leaf else (
                    "own code" if "services/" in leaf or "libs/" in leaf else "other")
                return f"{part.split('/')[1]} ({lib})"
    leaf = frames[-1] if frames else ""
    if "_flusher" in " ".join(frames):
        return "nats-py flusher (socket writes)"
    if "nats/" in leaf:
        return "nats-py reader/parser"
    if "aiohttp/" in leaf:
        joined = " ".join(frames)
        if "aiohttp/client" in joined:
            return "aiohttp client (upstream HTTP), no Switchman frame"
        if "aiohttp/web" in joined:
            return "aiohttp server (client HTTP), no Switchman frame"
        return "aiohttp (either side), no Switchman frame"
    if leaf.startswith("Runner.run") or leaf.startswith("run (asyncio"):
        return "event loop (uvloop C code: I/O, callbacks)"
    if "asyncio/" in leaf:
        return "asyncio (queues, timeouts, streams)"
    return "other"


# -- main ---------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Switchman end-to-end benchmark (see bench/README.md)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per run (wrk: whole seconds)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measured run")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported")
    p.add_argument("--concurrency", default=None, help="non-stream concurrencies (default 1,32,128; quick: 1,32)")
    p.add_argument("--stream-concurrency", default="1,32", help="streaming concurrencies")
    p.add_argument("--topologies", default=None,
                   help="targets besides direct: up, split, proxy (the bare aiohttp pass-through); "
                        "default up,split,proxy (quick: up,split)")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto",
                   help="non-stream load generator (auto: wrk when on PATH)")
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                   help="afterwards, py-spy each gateway process during SECONDS of c=32 load")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="first wait up to SECONDS for the machine to be quiet (< 0.3 cores busy over 5 s)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 repeat of 1 s runs (~30 s)")
    p.add_argument("--out", default=str(HERE / "results"), help="directory for the JSON results")
    a = p.parse_args(argv)
    if a.quick:
        a.duration, a.warmup, a.repeats = 1.0, 0.3, 1
    if a.concurrency is None:
        a.concurrency = "1,32" if a.quick else "1,32,128"
    if a.topologies is None:
        a.topologies = "up,split" if a.quick else "up,split,proxy"
    return a


def wait_quiet(limit: float, threshold: float = 0.3, window: float = 5.0) -> float:
    """Wait until other processes keep fewer than ``threshold`` cores busy; returns that load."""
    deadline = time.monotonic() + limit
    while True:
        b0, t0 = system_busy(), time.monotonic()
        time.sleep(window)
        load = (system_busy() - b0) / (time.monotonic() - t0)
        if load < threshold or time.monotonic() >= deadline:
            print(f"bench: machine load {load:.2f} cores", file=sys.stderr)
            return load
        print(f"bench: machine busy ({load:.2f} cores), waiting", file=sys.stderr)


def meta(args: argparse.Namespace, wrk: str | None) -> dict[str, Any]:
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    wrk_version = ""
    if wrk:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            out = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=5)
            wrk_version = (out.stdout + out.stderr).strip().splitlines()[0]
    calib = min(timeit.repeat(lambda: sum(range(1000)), number=2000, repeat=5, timer=time.process_time)) / 2000 * 1e6
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "calibration_sum_range_1000_us": round(calib, 1),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_mb": psutil.virtual_memory().total // 2**20,
        "python": platform.python_version(),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "loadgen_plain": "wrk" if wrk else "python (bench/loadgen.py)",
        "wrk": wrk_version,
        "loadgen_stream": "python (bench/loadgen.py)",
        "args": vars(args),
        "loadavg_start": os.getloadavg(),
        "plain_body": PLAIN_BODY,
        "stream_body": STREAM_BODY,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cs = [int(x) for x in args.concurrency.split(",") if x]
    scs = [int(x) for x in args.stream_concurrency.split(",") if x]
    topologies = [x for x in args.topologies.split(",") if x]
    bad = set(topologies) - {"up", "split", "proxy"}
    if bad:
        raise SystemExit(f"unknown topology {sorted(bad)[0]!r}: choose up, split, proxy")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="switchman-bench-"))
    procs = Procs(tmp)
    sampler: Sampler | None = None
    interrupted = ok = False

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        quiet = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
        print(f"bench: starting the upstream and {', '.join(topologies)} (logs in {tmp})", file=sys.stderr)
        upstream = start_upstream(procs)
        targets = [upstream]
        starters = {"up": start_up, "split": start_split, "proxy": start_proxy}
        for name in topologies:
            targets.append(starters[name](procs, tmp, upstream))
        checks = {t.name: check_gateway(t) for t in targets if t.gateway}
        sampler = Sampler(targets)
        sampler.start()
        bench = Bench(args, tmp, targets, sampler)
        m = meta(args, bench.wrk)
        m["checks"] = checks
        m["load_before_start_cores"] = quiet
        # Idle RSS before any load (the sampler's "idle" peaks cover the whole run).
        time.sleep(0.3)
        m["rss_idle_mb"] = {t.name: {r: round(p.memory_info().rss / 2**20, 1) for r, p in t.procs.items()}
                            for t in targets}
        print(f"bench: warm-up (non-stream load: {m['loadgen_plain']})", file=sys.stderr)
        for t in targets:
            bench.run(t, "plain", 32, duration=1.0 if args.quick else 2.0, warmup=0)
            bench.run(t, "stream", 8, duration=0.5, warmup=0)
        scenarios = [("plain", c) for c in cs] + [("stream", c) for c in scs]
        runs: list[dict[str, Any]] = []
        total = args.repeats * len(scenarios) * len(targets)
        done = 0
        for rep in range(args.repeats):
            order = targets[rep % len(targets):] + targets[:rep % len(targets)]
            for mode, c in scenarios:
                for t in order:
                    r = bench.run(t, mode, c)
                    r["repeat"] = rep
                    runs.append(r)
                    done += 1
                    lat = r["ttft_ms"] if mode == "stream" else r["lat_ms"]
                    print(f"bench: [{done}/{total}] {t.name:6} {mode:6} c={c:<4} {r['rps']:8.0f}/s  "
                          f"{'ttft' if mode == 'stream' else 'lat '} p50 {fmt(lat['p50'])} ms p99 "
                          f"{fmt(lat['p99'])} ms  errors {r['error_count']}  other load "
                          f"{r['other_load_cores']:.2f} cores", file=sys.stderr)
                    procs.check()
        profiles: dict[str, Any] = {}
        if args.profile > 0:
            for t in targets:
                if t.gateway:
                    print(f"bench: py-spy on {t.name} for {args.profile:g}s", file=sys.stderr)
                    profiles[t.name] = profile(bench, t, args.profile, out_dir, stamp)
        sampler.stop_evt.set()
        sampler.join()
        rss = {name: {ph: {k: round(v, 1) for k, v in d.items()} for ph, d in phases.items()}
               for name, phases in sampler.peak.items()}
        names = [t.name for t in targets]
        gateways = [n for n in names if n != "direct"]
        agg = aggregate(runs)
        summary = derive(agg, gateways, cs, scs, rss)
        m["loadavg_end"] = os.getloadavg()
        m["elapsed_s"] = round(time.monotonic() - t_start, 1)
        result = {"meta": m, "targets": TARGETS, "summary": summary, "aggregate": agg, "rss_mb": rss,
                  "runs": runs, "profiles": profiles}
        path = out_dir / f"{stamp}.json"
        path.write_text(json.dumps(result, indent=2, default=str))
        md = table(agg, summary, rss, names, cs, scs)
        print()
        print(f"## Switchman benchmark {m['date']} ({m['cpus']} CPUs, {m['cpu_model']}; "
              f"non-stream load: {m['loadgen_plain']}; {args.repeats} repeat(s) x {args.duration:g} s, median)")
        print()
        print(md)
        c_load = 32 if 32 in cs else cs[-1]
        if "split" in names:
            print()
            print(per_process_table(agg, rss, "split", c_load))
        for g in gateways:
            if g not in ("up", "split"):
                continue
            failed = [k for k, v in summary[g]["checks"].items() if not v["pass"]]
            print(f"\n{g}: targets {'all met' if not failed else 'missed: ' + ', '.join(failed)}")
        for name, prof in profiles.items():
            for role, p in prof.items():
                if "self_pct" in p:
                    print(f"\npy-spy {name}/{role} ({p['samples']} busy samples, {p.get('file')}); by component:")
                    for f, pct in p["by_component_pct"][:12]:
                        print(f"  {pct:5.1f}%  {f}")
                    print("  top self time:")
                    for f, pct in p["self_pct"][:10]:
                        print(f"  {pct:5.1f}%  {f}")
        bad = {k: v["errors"] for k, v in agg.items() if v["errors"]}
        if bad:
            print(f"\nWARNING: errors during the runs: {bad}")
        print(f"\nresults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
              f"({m['elapsed_s']:.0f} s)")
        ok = True
    except KeyboardInterrupt:
        interrupted = True
        print("bench: interrupted", file=sys.stderr)
    finally:
        if sampler is not None:
            sampler.stop_evt.set()
        procs.stop_all()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"bench: logs kept in {tmp}", file=sys.stderr)
    if interrupted:
        raise SystemExit(130)


if __name__ == "__main__":
    main()
