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

The pieces: bench/topology.py starts the targets, bench/measure.py drives the load and
samples CPU, RSS and NATS counters, bench/report.py turns the runs into medians and
tables, bench/profiling.py runs py-spy for ``--profile``; this file is the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the sibling modules, also under ``python -m bench.run``
    sys.path.insert(0, str(HERE))

from measure import Bench, Sampler, system_busy  # noqa: E402
from profiling import print_profiles, profile  # noqa: E402
from report import TARGETS, aggregate, derive, fmt, print_errors, print_report  # noqa: E402
from topology import (  # noqa: E402
    PLAIN_BODY,
    ROOT,
    STARTERS,
    STREAM_BODY,
    Procs,
    Target,
    check_gateway,
    start_upstream,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Switchman end-to-end benchmark (see bench/README.md)")
    p.add_argument(
        "--duration", type=float, default=5.0, help="seconds measured per run (wrk: whole seconds)"
    )
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measured run")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported")
    p.add_argument(
        "--concurrency", default=None, help="non-stream concurrencies (default 1,32,128; quick: 1,32)"
    )
    p.add_argument("--stream-concurrency", default="1,32", help="streaming concurrencies")
    p.add_argument(
        "--topologies",
        default=None,
        help="targets besides direct: up, split, proxy (the bare aiohttp pass-through); "
        "default up,split,proxy (quick: up,split)",
    )
    p.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="non-stream load generator (auto: wrk when on PATH)",
    )
    p.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="afterwards, py-spy each gateway process during SECONDS of c=32 load",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the machine to be quiet (< 0.3 cores busy over 5 s)",
    )
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
            return subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
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
    calib = (
        min(timeit.repeat(lambda: sum(range(1000)), number=2000, repeat=5, timer=time.process_time))
        / 2000
        * 1e6
    )
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


@dataclass
class Plan:
    """What one run does, from the command line, and where it keeps its files."""

    args: argparse.Namespace
    cs: list[int]  # non-stream concurrencies
    scs: list[int]  # streaming concurrencies
    topologies: list[str]
    out_dir: Path
    stamp: str
    t_start: float
    tmp: Path


def start_targets(procs: Procs, tmp: Path, topologies: list[str]) -> list[Target]:
    upstream = start_upstream(procs)
    targets = [upstream]
    for name in topologies:
        targets.append(STARTERS[name](procs, tmp, upstream))
    return targets


def warm_up(bench: Bench, targets: list[Target], quick: bool) -> None:
    for t in targets:
        bench.run(t, "plain", 32, duration=1.0 if quick else 2.0, warmup=0)
        bench.run(t, "stream", 8, duration=0.5, warmup=0)


def measure_all(bench: Bench, procs: Procs, targets: list[Target], plan: Plan) -> list[dict[str, Any]]:
    """Every scenario on every target, interleaved; the order of the targets rotates every repeat."""
    scenarios = [("plain", c) for c in plan.cs] + [("stream", c) for c in plan.scs]
    runs: list[dict[str, Any]] = []
    total = plan.args.repeats * len(scenarios) * len(targets)
    for rep in range(plan.args.repeats):
        order = targets[rep % len(targets) :] + targets[: rep % len(targets)]
        for mode, c in scenarios:
            for t in order:
                r = bench.run(t, mode, c)
                r["repeat"] = rep
                runs.append(r)
                progress(len(runs), total, t, mode, c, r)
                procs.check()
    return runs


def progress(done: int, total: int, t: Target, mode: str, c: int, r: dict[str, Any]) -> None:
    lat = r["ttft_ms"] if mode == "stream" else r["lat_ms"]
    print(
        f"bench: [{done}/{total}] {t.name:6} {mode:6} c={c:<4} {r['rps']:8.0f}/s  "
        f"{'ttft' if mode == 'stream' else 'lat '} p50 {fmt(lat['p50'])} ms p99 "
        f"{fmt(lat['p99'])} ms  errors {r['error_count']}  other load "
        f"{r['other_load_cores']:.2f} cores",
        file=sys.stderr,
    )


def profile_all(bench: Bench, targets: list[Target], plan: Plan) -> dict[str, Any]:
    profiles: dict[str, Any] = {}
    if plan.args.profile > 0:
        for t in targets:
            if t.gateway:
                print(f"bench: py-spy on {t.name} for {plan.args.profile:g}s", file=sys.stderr)
                profiles[t.name] = profile(bench, t, plan.args.profile, plan.out_dir, plan.stamp)
    return profiles


def bench_run(plan: Plan, procs: Procs, samplers: list[Sampler]) -> None:
    """Start the targets, measure, write the JSON and print the report."""
    args = plan.args
    quiet = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    print(
        f"bench: starting the upstream and {', '.join(plan.topologies)} (logs in {plan.tmp})", file=sys.stderr
    )
    targets = start_targets(procs, plan.tmp, plan.topologies)
    checks = {t.name: check_gateway(t) for t in targets if t.gateway}
    sampler = Sampler(targets)
    samplers.append(sampler)
    sampler.start()
    bench = Bench(args, plan.tmp, targets, sampler)
    m = meta(args, bench.wrk)
    m["checks"] = checks
    m["load_before_start_cores"] = quiet
    # Idle RSS before any load (the sampler's "idle" peaks cover the whole run).
    time.sleep(0.3)
    m["rss_idle_mb"] = {
        t.name: {r: round(p.memory_info().rss / 2**20, 1) for r, p in t.procs.items()} for t in targets
    }
    print(f"bench: warm-up (non-stream load: {m['loadgen_plain']})", file=sys.stderr)
    warm_up(bench, targets, args.quick)
    runs = measure_all(bench, procs, targets, plan)
    profiles = profile_all(bench, targets, plan)
    sampler.stop_evt.set()
    sampler.join()
    rss = {
        name: {ph: {k: round(v, 1) for k, v in d.items()} for ph, d in phases.items()}
        for name, phases in sampler.peak.items()
    }
    names = [t.name for t in targets]
    agg = aggregate(runs)
    summary = derive(agg, [n for n in names if n != "direct"], plan.cs, plan.scs, rss)
    m["loadavg_end"] = os.getloadavg()
    m["elapsed_s"] = round(time.monotonic() - plan.t_start, 1)
    result = {
        "meta": m,
        "targets": TARGETS,
        "summary": summary,
        "aggregate": agg,
        "rss_mb": rss,
        "runs": runs,
        "profiles": profiles,
    }
    path = plan.out_dir / f"{plan.stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print_report(m, args, agg, summary, rss, names, plan.cs, plan.scs)
    print_profiles(profiles)
    print_errors(agg)
    print(
        f"\nresults: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({m['elapsed_s']:.0f} s)"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    topologies = [x for x in args.topologies.split(",") if x]
    bad = set(topologies) - {"up", "split", "proxy"}
    if bad:
        raise SystemExit(f"unknown topology {sorted(bad)[0]!r}: choose up, split, proxy")
    plan = Plan(
        args=args,
        cs=[int(x) for x in args.concurrency.split(",") if x],
        scs=[int(x) for x in args.stream_concurrency.split(",") if x],
        topologies=topologies,
        out_dir=Path(args.out),
        stamp=time.strftime("%Y%m%dT%H%M%S"),
        t_start=time.monotonic(),
        tmp=Path(tempfile.mkdtemp(prefix="switchman-bench-")),
    )
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    procs = Procs(plan.tmp)
    samplers: list[Sampler] = []
    interrupted = ok = False

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        bench_run(plan, procs, samplers)
        ok = True
    except KeyboardInterrupt:
        interrupted = True
        print("bench: interrupted", file=sys.stderr)
    finally:
        for sampler in samplers:
            sampler.stop_evt.set()
        procs.stop_all()
        if ok:
            shutil.rmtree(plan.tmp, ignore_errors=True)
        else:
            print(f"bench: logs kept in {plan.tmp}", file=sys.stderr)
    if interrupted:
        raise SystemExit(130)


if __name__ == "__main__":
    main()
