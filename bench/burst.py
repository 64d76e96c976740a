"""Burst benchmark: many concurrent streams to one provider, by upstream pool size.

Starts `switchman sim-upstream` streaming slowly (``--ttft-ms``, ``--tokens-per-s``,
so each stream lasts about a second, as LLM streams do), then for each pool size a
`switchman up` whose one provider has ``max_connections`` = that size, and keeps
``--concurrency`` streams in flight (bench/loadgen.py, closed loop) for
``--duration`` seconds. Reports streams/s, time to first token p50/p99, errors
(503s when the pool is saturated past ``pool_wait_s``), next to the same load sent
directly to the upstream. Used to size the default pool (bench/README.md).

    .venv/bin/python bench/burst.py [--concurrency 1000] [--pools 256,1024] [--pool-wait 60]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from topology import (
    HERE,
    MODEL,
    Procs,
    base_env,
    free_port,
    switchman_cmd,
    wait_port,
    wait_ready,
    write_config,
)

BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "A burst of streams."}],
    "max_tokens": 16,
    "stream": True,
}


def load(url: str, body: Path, a: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(HERE / "loadgen.py"),
        "--url",
        url,
        "--body-file",
        str(body),
        "--concurrency",
        str(a.concurrency),
        "--duration",
        str(a.duration),
        "--warmup",
        str(a.warmup),
        "--timeout",
        "120",
        "--stream",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def row(name: str, r: dict[str, Any]) -> str:
    t = r["ttft_ms"]
    fmt = lambda v: "—" if v is None else f"{v:,.0f}"  # noqa: E731
    return (
        f"| {name} | {r['rps']:,.0f} | {fmt(t['p50'])} | {fmt(t['p99'])} | {fmt(t['max'])} | "
        f"{r['error_count']} {json.dumps(r['errors']) if r['errors'] else ''} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=1000)
    p.add_argument("--pools", default="256,1024")
    p.add_argument("--pool-wait", type=float, default=None, help="pool_wait_s (default: the config's)")
    p.add_argument("--ttft-ms", type=float, default=100.0)
    p.add_argument("--tokens-per-s", type=float, default=20.0)
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--warmup", type=float, default=2.0)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        body = tmp / "body.json"
        body.write_text(json.dumps(BODY))
        procs = Procs(tmp)
        rows = []
        try:
            up_port = free_port()
            cmd = ["sim-upstream", "--port", str(up_port), "--ttft-ms", str(a.ttft_ms)]
            procs.start("upstream", switchman_cmd(*cmd, "--tokens-per-s", str(a.tokens_per_s)), base_env())
            wait_port(up_port, 20, procs)
            rows.append(row("direct", load(f"http://127.0.0.1:{up_port}/v1/chat/completions", body, a)))
            for pool in (int(x) for x in a.pools.split(",")):
                port = free_port()
                cfg = tmp / f"pool-{pool}.yaml"
                wait = 600.0 if a.pool_wait is None and pool < a.concurrency else (a.pool_wait or 0.5)
                provider = {"max_connections": pool, "pool_wait_s": wait}
                limits = {"max_in_flight": 4096, "idle_timeout_s": 60.0, "request_timeout_s": 120.0}
                write_config(cfg, port, up_port, provider, limits)
                env = base_env() | {"SWITCHMAN_DATA_DIR": str(tmp / f"data-{pool}")}
                gw = procs.start(f"up-{pool}", switchman_cmd("up", "--config", str(cfg)), env)
                wait_ready(port, 30, procs)
                res = load(f"http://127.0.0.1:{port}/v1/chat/completions", body, a)
                rows.append(row(f"up, pool {pool} (pool_wait_s {wait:g})", res))
                procs.stop(gw)
        finally:
            procs.stop_all()
    print(
        f"{a.concurrency} concurrent streams, {a.ttft_ms:g} ms TTFT, {a.tokens_per_s:g} tokens/s upstream\n"
    )
    print("| target | streams/s | TTFT p50 ms | TTFT p99 ms | TTFT max ms | errors |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
