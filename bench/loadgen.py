"""Closed-loop HTTP load generator for bench/run.py (its own process, uvloop + aiohttp).

``concurrency`` workers each send one POST at a time, back to back, for ``warmup``
seconds (not recorded), then ``duration`` seconds (recorded). A request is counted
when it *completes* inside the measured window. Lines on stdout, for the parent:

    START            the measured window begins (the parent snapshots CPU counters)
    STOP             the measured window ends
    RESULT {...}     the JSON result

Non-stream mode records the latency of each complete response. Stream mode
(``--stream``) records the time to the first ``data:`` line (TTFT) and the time to
the end of the stream, and checks that the stream ended with ``data: [DONE]``.
Used for streaming always, and for non-stream load when ``wrk`` is not on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


def pct(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def summary_ms(values: list[float]) -> dict[str, float | None]:
    v = sorted(values)
    if not v:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None, "min": None}
    return {
        "min": v[0] * 1e3,
        "p50": pct(v, 50) * 1e3,
        "p90": pct(v, 90) * 1e3,
        "p99": pct(v, 99) * 1e3,
        "mean": sum(v) / len(v) * 1e3,
        "max": v[-1] * 1e3,
    }


async def main(a: argparse.Namespace, body: bytes) -> dict:
    import aiohttp

    headers = {"Content-Type": "application/json"}
    lat: list[float] = []
    ttft: list[float] = []
    errors: dict[str, int] = {}
    samples: list[str] = []
    state = {"measuring": False, "done": False}

    def error(kind: str, detail: str) -> None:
        if state["measuring"]:
            errors[kind] = errors.get(kind, 0) + 1
            if len(samples) < 5:
                samples.append(detail[:300])

    conn = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, force_close=False)
    timeout = aiohttp.ClientTimeout(total=a.timeout)
    perf = time.perf_counter
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, auto_decompress=False) as session:

        async def one_plain() -> None:
            t0 = perf()
            try:
                async with session.post(a.url, data=body, headers=headers) as r:
                    data = await r.read()
                    status = r.status
            except Exception as e:  # noqa: BLE001 - counted, the load goes on
                error(type(e).__name__, repr(e))
                await asyncio.sleep(0.01)
                return
            t1 = perf()
            if status != 200:
                error(f"status_{status}", data.decode(errors="replace"))
            elif state["measuring"]:
                lat.append(t1 - t0)

        async def one_stream() -> None:
            t0 = perf()
            first = None
            last = b""
            try:
                async with session.post(a.url, data=body, headers=headers) as r:
                    if r.status != 200:
                        error(f"status_{r.status}", (await r.read()).decode(errors="replace"))
                        return
                    async for line in r.content:
                        if line.startswith(b"data:"):
                            if first is None:
                                first = perf()
                            last = line
            except Exception as e:  # noqa: BLE001
                error(type(e).__name__, repr(e))
                await asyncio.sleep(0.01)
                return
            t1 = perf()
            if first is None or last.strip() != b"data: [DONE]":
                error("bad_stream", f"stream ended without [DONE]; last line {last[:200]!r}")
            elif state["measuring"]:
                ttft.append(first - t0)
                lat.append(t1 - t0)

        one = one_stream if a.stream else one_plain

        async def worker() -> None:
            while not state["done"]:
                await one()

        tasks = [asyncio.create_task(worker()) for _ in range(a.concurrency)]
        await asyncio.sleep(a.warmup)
        print("START", flush=True)
        state["measuring"] = True
        t_start = perf()
        await asyncio.sleep(a.duration)
        state["measuring"] = False
        elapsed = perf() - t_start
        print("STOP", flush=True)
        state["done"] = True
        await asyncio.wait(tasks, timeout=a.timeout)
        for t in tasks:
            t.cancel()

    res: dict = {
        "requests": len(lat),
        "duration_s": elapsed,
        "rps": len(lat) / elapsed if elapsed > 0 else 0.0,
        "errors": errors,
        "error_count": sum(errors.values()),
        "error_samples": samples,
        "lat_ms": summary_ms(lat),
    }
    if a.stream:
        res["ttft_ms"] = summary_ms(ttft)
    return res


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--body-file", required=True)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--stream", action="store_true")
    a = p.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - still works, with more client CPU
        uvloop = None
    with open(a.body_file, "rb") as f:
        body = f.read()
    res = uvloop.run(main(a, body)) if uvloop is not None else asyncio.run(main(a, body))
    sys.stdout.write("RESULT " + json.dumps(res) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    cli()
