#!/usr/bin/env python
"""Micro-benchmark of protocol translation: µs per request and µs per stream chunk.

For each adapter in services/worker/adapters that imports (openai passthrough,
anthropic, gemini, cohere, replicate; one that fails to import is skipped and
reported), times its pure Protocol methods, without any I/O:

* request  — ``chat_request(req, model, stream=False)`` on a 32 KB OpenAI chat request
  (a system prompt, a conversation of about 50 turns of 20–250 words, two tools and a tool call where the profile
  supports tools), already decoded and fitted as the worker hands it over; in English
  ASCII text, and again with about one word in twenty non-ASCII (accents, curly
  quotes, CJK), which costs msgspec a UTF-8 conversion of every such string;
* response — ``chat_response(body, model)`` on a realistic upstream body (about 300
  tokens of text, usage) in the provider's own shape;
* stream   — ``chat_stream(model, include_usage=True)`` fed a 500-chunk upstream stream
  in the provider's own events (OpenAI chunks, Anthropic SSE events, Gemini
  ``GenerateContentResponse`` events, Cohere v2 stream events, Replicate ``output``
  events), then ``close()``; reported per content chunk.

Each is timed with :mod:`timeit` (``--repeat`` repeats, median; by default with the
process's CPU time as the clock, so that other work on a shared machine does not
count — ``--timer wall`` for perf_counter), and every output is
checked once (the text comes through whole) so an error path is never what is
timed. Shared per-request costs of the request path (ingress validation, the
worker's decode and parameter fit) are shown for context. Targets: ≤ 100 µs per
request (request + response) and ≤ 5 µs per chunk.

The inputs (the request, upstream bodies and streams) are built by bench/translate_fixtures.py.

    .venv/bin/python bench/translate.py [--repeat 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:  # translate_fixtures, also under ``python -m bench.translate``
    sys.path.insert(0, str(HERE))

import msgspec  # noqa: E402
from translate_fixtures import (  # noqa: E402
    KINDS,
    MODELS,
    STREAM_CHUNKS,
    chat_request,
    text,
    tokens,
    upstream_response,
)
from translate_streams import upstream_stream  # noqa: E402

from libs.common.config import ProviderConfig  # noqa: E402
from libs.common.profiles import profile_for  # noqa: E402

TARGET_REQUEST_US = 100.0
TARGET_CHUNK_US = 5.0


# -- checks ---------------------------------------------------------------------------------
def stream_text(chunks: list[bytes]) -> str:
    out = []
    for c in chunks:
        d = json.loads(c)
        for ch in d.get("choices") or ():
            out.append((ch.get("delta") or {}).get("content") or "")
    return "".join(out)


def run_stream(proto: Any, model: str, events: list[tuple[str, bytes]]) -> list[bytes]:
    tr = proto.chat_stream(model, True)
    out: list[bytes] = []
    for name, data in events:
        out += tr.feed(name, data)
        if tr.done:
            break
    out += tr.close()
    return out


TIMER: Callable[[], float] = time.process_time


def timed(
    stmt: Callable[[], Any], number: int, repeat: int, setup: Callable[[], None] | None = None
) -> dict[str, float]:
    """Seconds per call: the median and the best over ``repeat`` timeit repeats."""
    t = timeit.Timer(stmt, setup=setup or (lambda: None), timer=TIMER)
    per = [x / number for x in t.repeat(repeat=repeat, number=number)]
    return {"median": statistics.median(per), "min": min(per)}


# -- per adapter --------------------------------------------------------------------------------
def bench_adapter(kind: str, repeat: int, number: int) -> dict[str, Any]:
    from services.worker.adapters import protocol_class
    from services.worker.params import fit

    cls = protocol_class(kind)  # ImportError etc. are caught by the caller
    provider = ProviderConfig(id=kind, kind=kind, api_key="k")
    profile = profile_for(kind, None)
    proto = cls(provider, profile)
    model = MODELS[kind]
    body = chat_request(tools=profile.tools)
    body_u = chat_request(tools=profile.tools, unicode=True)
    decode = msgspec.json.Decoder(dict).decode

    def fresh(n: int, b: bytes = body) -> list[dict[str, Any]]:
        return [fit(decode(b), profile, kind, True) for _ in range(n)]

    # Check once: the request builds, the response and stream translate with their text whole.
    call = proto.chat_request(fresh(1)[0], model, False)
    rng = random.Random(7)
    answer = text(rng, 300)
    resp_body = upstream_response(kind, model, answer)
    out = proto.chat_response(resp_body, model)
    got = json.loads(out.body)["choices"][0]["message"]["content"]
    if got != answer:
        raise AssertionError(f"{kind}: response text differs: {got[:80]!r}")
    toks = tokens(rng, STREAM_CHUNKS)
    events = upstream_stream(kind, model, toks)
    chunks = run_stream(proto, model, events)
    if stream_text(chunks) != "".join(toks):
        raise AssertionError(f"{kind}: stream text differs")

    inputs: list[dict[str, Any]] = []

    def setup() -> None:
        inputs[:] = fresh(number)

    def setup_u() -> None:
        inputs[:] = fresh(number, body_u)

    req_t = timed(lambda: proto.chat_request(inputs.pop(), model, False), number, repeat, setup)
    req_u_t = timed(lambda: proto.chat_request(inputs.pop(), model, False), number, repeat, setup_u)
    resp_t = timed(lambda: proto.chat_response(resp_body, model), number, repeat)
    stream_number = max(3, number // 25)
    stream_t = timed(lambda: run_stream(proto, model, events), stream_number, repeat)
    per_request = (req_t["median"] + resp_t["median"]) * 1e6
    per_chunk = stream_t["median"] / STREAM_CHUNKS * 1e6
    return {
        "class": f"{cls.__module__}.{cls.__name__}",
        "request_body_bytes": len(body),
        "request_messages": len(decode(body)["messages"]),
        "upstream_request_bytes": len(call.body or b""),
        "response_body_bytes": len(resp_body),
        "stream_events": len(events),
        "stream_chunks_out": len(chunks),
        "request_us": req_t["median"] * 1e6,
        "request_us_min": req_t["min"] * 1e6,
        "request_unicode_body_bytes": len(body_u),
        "request_unicode_us": req_u_t["median"] * 1e6,
        "per_request_unicode_us": (req_u_t["median"] + resp_t["median"]) * 1e6,
        "response_us": resp_t["median"] * 1e6,
        "response_us_min": resp_t["min"] * 1e6,
        "per_request_us": per_request,
        "per_chunk_us": per_chunk,
        "per_chunk_us_min": stream_t["min"] / STREAM_CHUNKS * 1e6,
        "stream_total_us": stream_t["median"] * 1e6,
        "pass_request": per_request <= TARGET_REQUEST_US,
        "pass_chunk": per_chunk <= TARGET_CHUNK_US,
    }


def bench_shared(repeat: int, number: int) -> dict[str, float]:
    """Per-request costs every adapter pays around translation (for context)."""
    from libs.common import openai
    from services.worker.params import fit

    profile = profile_for("openai", None)
    decode = msgspec.json.Decoder(dict).decode
    inputs: list[dict[str, Any]] = []
    out: dict[str, float] = {}
    for variant, body in (
        ("", chat_request(tools=True)),
        ("_unicode", chat_request(tools=True, unicode=True)),
    ):

        def setup(body: bytes = body) -> None:
            inputs[:] = [decode(body) for _ in range(number)]

        out["ingress_validate" + variant + "_us"] = (
            timed(lambda body=body: openai.decode("chat", body), number, repeat)["median"] * 1e6
        )
        out["worker_decode" + variant + "_us"] = (
            timed(lambda body=body: decode(body), number, repeat)["median"] * 1e6
        )
        out["worker_fit" + variant + "_us"] = (
            timed(lambda: fit(inputs.pop(), profile, "p", True), number, repeat, setup)["median"] * 1e6
        )
    return out


def calibration_us() -> float:
    """CPU µs of ``sum(range(1000))`` (best of 5): how fast this machine runs Python right now."""
    return (
        min(timeit.repeat(lambda: sum(range(1000)), number=2000, repeat=5, timer=time.process_time))
        / 2000
        * 1e6
    )


def fmt(v: float | None) -> str:
    return "—" if v is None else (f"{v:.1f}" if v < 100 else f"{v:.0f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Translation micro-benchmark (see bench/README.md)")
    p.add_argument("--repeat", type=int, default=7, help="timeit repeats (the median is reported)")
    p.add_argument("--number", type=int, default=200, help="calls per repeat (streams: number/25)")
    p.add_argument(
        "--timer",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: this process's CPU time (robust on a shared machine); wall: perf_counter",
    )
    p.add_argument("--json", action="store_true", help="also write bench/results/translate-<timestamp>.json")
    a = p.parse_args(argv)
    global TIMER
    TIMER = time.process_time if a.timer == "cpu" else time.perf_counter
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for kind in KINDS:
        try:
            results[kind] = bench_adapter(kind, a.repeat, a.number)
        except Exception as e:  # noqa: BLE001 - an adapter still being written is skipped
            skipped[kind] = f"{type(e).__name__}: {e}"[:300]
    shared = bench_shared(a.repeat, a.number)
    calib = calibration_us()
    print(
        f"## Translation cost ({time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}, "
        f"median of {a.repeat} timeit repeats, {a.timer} timer, GC off while timing)\n"
    )
    any_r = next(iter(results.values()), None)
    what = (
        f" ({any_r['request_body_bytes'] / 1024:.1f} KB, {any_r['request_messages']} messages)"
        if any_r
        else ""
    )
    print(
        f"32 KB chat request{what} → upstream request (build), upstream response → OpenAI (translate), "
        f"and a {STREAM_CHUNKS}-chunk stream.\n"
    )
    print(
        "| adapter | request build µs | response µs | per request µs (≤ 100) | per chunk µs (≤ 5) | "
        "request build µs, non-ASCII text | per request µs, non-ASCII |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind, r in results.items():
        ok_r = "✓" if r["pass_request"] else "✗"
        ok_c = "✓" if r["pass_chunk"] else "✗"
        ok_u = "✓" if r["per_request_unicode_us"] <= TARGET_REQUEST_US else "✗"
        print(
            f"| {kind} | {fmt(r['request_us'])} | {fmt(r['response_us'])} | {fmt(r['per_request_us'])} {ok_r} | "
            f"{r['per_chunk_us']:.2f} {ok_c} | {fmt(r['request_unicode_us'])} | "
            f"{fmt(r['per_request_unicode_us'])} {ok_u} |"
        )
    for kind, why in skipped.items():
        print(f"| {kind} | skipped: {why} | | | | | |")
    print(
        "\nShared per-request costs on the request path, same 32 KB request (ASCII / non-ASCII text): "
        f"ingress validation {fmt(shared['ingress_validate_us'])} / {fmt(shared['ingress_validate_unicode_us'])} µs, "
        f"worker decode {fmt(shared['worker_decode_us'])} / {fmt(shared['worker_decode_unicode_us'])} µs, "
        f"worker parameter fit {fmt(shared['worker_fit_us'])} / {fmt(shared['worker_fit_unicode_us'])} µs."
    )
    print(
        f"\nMachine speed now: sum(range(1000)) takes {calib:.1f} µs of CPU (a recent desktop: about 10–15 µs); "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs."
    )
    if a.json:
        out = HERE / "results"
        out.mkdir(exist_ok=True)
        path = out / f"translate-{time.strftime('%Y%m%dT%H%M%S')}.json"
        path.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "python": sys.version,
                    "repeat": a.repeat,
                    "number": a.number,
                    "timer": a.timer,
                    "results": results,
                    "skipped": skipped,
                    "shared": shared,
                    "calibration_sum_range_1000_us": calib,
                    "loadavg": os.getloadavg(),
                    "cpus": os.cpu_count(),
                    "targets": {"per_request_us": TARGET_REQUEST_US, "per_chunk_us": TARGET_CHUNK_US},
                },
                indent=2,
            )
        )
        print(f"\nresults: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
