"""``--profile``: where each gateway process spends its CPU under load, sampled by py-spy.

:func:`profile` records every Switchman (or proxy) process of a target with py-spy
during a concurrency-32 non-stream load; :func:`summarize_raw` reads py-spy's raw stacks
into shares by component (:func:`component`), by self time and inclusive time.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from topology import BIN, ROOT, Target

if TYPE_CHECKING:
    from measure import Bench


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
        cmd = [
            spy_cmd,
            "record",
            "--pid",
            str(p.pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "150",
            "--format",
            "raw",
            "--output",
            str(out),
        ]
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
    return {
        "samples": total,
        "by_component_pct": share(comp, 30),
        "self_pct": share(self_count),
        "inclusive_pct": share(incl),
    }


def component(frames: list[str]) -> str:
    """Who a sample works for: the deepest Switchman frame's service, else the library at the leaf."""
    for f in reversed(frames):
        for part in (
            "services/ingress",
            "services/router",
            "services/worker",
            "services/health",
            "services/ledger",
            "libs/common",
        ):
            if f"({part}/" in f:
                leaf = frames[-1]
                lib = (
                    "aiohttp"
                    if "aiohttp/" in leaf
                    else "nats-py"
                    if "nats/" in leaf
                    else ("own code" if "services/" in leaf or "libs/" in leaf else "other")
                )
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


def print_profiles(profiles: dict[str, Any]) -> None:
    for name, prof in profiles.items():
        for role, p in prof.items():
            if "self_pct" in p:
                print(f"\npy-spy {name}/{role} ({p['samples']} busy samples, {p.get('file')}); by component:")
                for f, pct in p["by_component_pct"][:12]:
                    print(f"  {pct:5.1f}%  {f}")
                print("  top self time:")
                for f, pct in p["self_pct"][:10]:
                    print(f"  {pct:5.1f}%  {f}")
