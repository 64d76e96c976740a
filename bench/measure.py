"""How the end-to-end benchmark measures: load, CPU time, RSS and NATS message counts.

:class:`Sampler` samples the RSS of every target's processes in a thread; :class:`Bench`
runs one measured load (wrk or bench/loadgen.py) against a target, with CPU-time
snapshots (:class:`Snap`) of every process before and after, and turns them into a run
record: requests/s, latency, CPU per request and cores busy per process, the load
generator's and the upstream's share, the other load on the machine, and for ``split``
the NATS messages per request.
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil
from topology import HERE, PLAIN_BODY, STREAM_BODY, Target


class Sampler(threading.Thread):
    """RSS of every target's processes every ``interval``; peaks kept apart for 'under load'."""

    def __init__(self, targets: list[Target], interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.targets = targets
        self.interval = interval
        self.active: str | None = None
        self.stop_evt = threading.Event()
        self.peak: dict[str, dict[str, dict[str, float]]] = {
            t.name: {"load": defaultdict(float), "idle": defaultdict(float)} for t in targets
        }
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
    def run(
        self, t: Target, mode: str, c: int, duration: float | None = None, warmup: float | None = None
    ) -> dict[str, Any]:
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
            return [
                self.wrk,
                "-t1",
                f"-c{c}",
                f"-d{max(1, round(d))}s",
                "--timeout",
                "10s",
                "-s",
                str(HERE / "post.lua"),
                t.url,
                "--",
                str(self.plain),
            ]

        if warmup >= 0.5:  # wrk takes whole seconds
            subprocess.run(cmd(warmup), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        before = self._snap(None)
        out = subprocess.run(cmd(duration), capture_output=True, text=True, check=False)
        after = self._snap(None)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
        w = json.loads(line[len("BENCHJSON ") :])
        dur = w["duration_us"] / 1e6
        errors = {k: v for k, v in w["errors"].items() if v}
        ok = w["requests"] - errors.get("status", 0)
        lat = {k: v / 1e3 for k, v in w["lat_us"].items()}
        res = {
            "loadgen": "wrk",
            "requests": ok,
            "duration_s": dur,
            "rps": ok / dur,
            "errors": errors,
            "error_count": sum(errors.values()),
            "lat_ms": lat,
            "loadgen_cpu_s": None,
        }
        return before, after, res

    def _python(
        self, t: Target, mode: str, c: int, duration: float, warmup: float
    ) -> tuple[Snap, Snap, dict[str, Any]]:
        body = self.stream if mode == "stream" else self.plain
        cmd = [
            sys.executable,
            str(HERE / "loadgen.py"),
            "--url",
            t.url,
            "--body-file",
            str(body),
            "--concurrency",
            str(c),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
        ]
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
                    res = json.loads(line[len("RESULT ") :])
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

    def _account(
        self, t: Target, mode: str, c: int, before: Snap, after: Snap, res: dict[str, Any]
    ) -> dict[str, Any]:
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
        res.update(
            {
                "target": t.name,
                "mode": mode,
                "concurrency": c,
                "wall_s": wall,
                "cpu_us_per_req": {r: v / n * 1e6 for r, v in per_role.items()},
                "gateway_cpu_us_per_req": sw / n * 1e6 if t.gateway else None,
                "nats_cpu_us_per_req": nats / n * 1e6 if t.gateway else None,
                "upstream_cpu_us_per_req": upstream / n * 1e6,
                "loadgen_cpu_us_per_req": res["loadgen_cpu_s"] / n * 1e6,
                "cores": {r: v / wall for r, v in per_role.items()},
                "upstream_cores": upstream / wall,
                "loadgen_cores": res["loadgen_cpu_s"] / wall,
                "other_load_cores": max(0.0, (after.busy - before.busy) - ours) / wall,
            }
        )
        if before.varz and after.varz:  # NATS messages per request, as nats-server counts them
            res["nats_per_req"] = {k: (after.varz[k] - before.varz[k]) / n for k in before.varz}
        return res
