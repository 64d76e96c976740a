"""The end-to-end benchmark's numbers: medians over the repeats, what they mean, the tables.

:func:`aggregate` takes the median of each measurement over its repeats; :func:`derive`
computes the added latency and TTFT (gateway − direct) and checks them, requests/s and
RSS against :data:`TARGETS`; :func:`table` and :func:`per_process_table` render markdown,
and :func:`print_report` prints it all.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

TARGETS = {
    "rps_c32": 2000.0,  # non-stream req/s at concurrency 32, at least
    "added_p50_c1_ms": 1.0,  # at most
    "added_p99_c1_ms": 3.0,
    "added_ttft_p50_c1_ms": 2.0,
    "rss_total_mb": 150.0,
}


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
            "lat_ms": {
                k: med([r["lat_ms"].get(k) for r in rs]) for k in ("p50", "p90", "p99", "mean", "max")
            },
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
            agg["ttft_ms"] = {
                k: med([r["ttft_ms"].get(k) for r in rs]) for k in ("p50", "p90", "p99", "mean")
            }
        out[f"{target}/{mode}/c{c}"] = agg
    return out


def derive(
    agg: dict[str, Any], gateways: list[str], cs: list[int], scs: list[int], rss: dict[str, Any]
) -> dict[str, Any]:
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
            checks[key] = {
                "value": v,
                "target": limit,
                "pass": v >= limit if key.startswith("rps") else v <= limit,
            }
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


class _Table:
    """A markdown table with a column per target, built row by row."""

    def __init__(self, agg: dict[str, Any], names: list[str]) -> None:
        self.agg = agg
        self.names = names
        self.gateways = [n for n in names if n != "direct"]
        head = "| metric | " + " | ".join(names) + " | target |"
        self.rows = [head, "|" + "---|" * (len(names) + 2)]

    def cell(self, name: str, mode: str, c: int, path: tuple[str, ...], digits: int = 2) -> str:
        v: Any = self.agg.get(f"{name}/{mode}/c{c}")
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        return fmt(v, digits)

    def pair(self, name: str, mode: str, c: int, key: str) -> str:
        """``p50 / p99`` of ``key`` (lat_ms or ttft_ms)."""
        return f"{self.cell(name, mode, c, (key, 'p50'))} / {self.cell(name, mode, c, (key, 'p99'))}"

    def row(self, label: str, cells: list[str], target: str = "") -> None:
        self.rows.append(f"| {label} | " + " | ".join(cells) + f" | {target} |")


def _latency_rows(t: _Table, summary: dict[str, Any], cs: list[int], scs: list[int]) -> None:
    names, gateways = t.names, t.gateways

    def added(g: str, p50: str, p99: str) -> str:
        return f"{fmt(summary[g].get(p50))} / {fmt(summary[g].get(p99))}"

    for c in cs:
        t.row(
            f"non-stream req/s, c={c}",
            [t.cell(n, "plain", c, ("rps",), 0) for n in names],
            "≥ 2,000 (Switchman)" if c == 32 else "",
        )
        t.row(f"non-stream p50 / p99 ms, c={c}", [t.pair(n, "plain", c, "lat_ms") for n in names])
    for c in cs[:1]:
        t.row(
            f"added latency p50 / p99 ms, c={c}",
            ["—"] + [added(g, f"added_p50_c{c}_ms", f"added_p99_c{c}_ms") for g in gateways],
            "≤ 1 / ≤ 3",
        )
    for c in scs:
        t.row(f"stream TTFT p50 / p99 ms, c={c}", [t.pair(n, "stream", c, "ttft_ms") for n in names])
        t.row(
            f"added TTFT p50 / p99 ms, c={c}",
            ["—"] + [added(g, f"added_ttft_p50_c{c}_ms", f"added_ttft_p99_c{c}_ms") for g in gateways],
            "p50 ≤ 2" if c == scs[0] else "",
        )
        t.row(f"streams/s, c={c}", [t.cell(n, "stream", c, ("rps",), 0) for n in names])


def _resource_rows(t: _Table, rss: dict[str, Any], c_load: int) -> None:
    names, gateways = t.names, t.gateways

    def cpu(n: str, key: str) -> str:
        return t.cell(n, "plain", c_load, (key,), 0)

    def peak(g: str, key: str) -> str:
        return fmt(rss[g]["load"].get(key), 1)

    t.row(
        f"gateway CPU µs/req (excl. nats-server), c={c_load}",
        ["—"] + [cpu(g, "gateway_cpu_us_per_req") for g in gateways],
    )
    t.row(
        f"nats-server CPU µs/req, c={c_load}",
        ["—"] + [cpu(g, "nats_cpu_us_per_req") if g in ("up", "split") else "—" for g in gateways],
    )
    t.row(f"upstream CPU µs/req, c={c_load}", [cpu(n, "upstream_cpu_us_per_req") for n in names])
    t.row(f"load generator CPU µs/req, c={c_load}", [cpu(n, "loadgen_cpu_us_per_req") for n in names])
    t.row(
        "peak RSS gateway processes (excl. nats-server) MB", ["—"] + [peak(g, "_switchman") for g in gateways]
    )
    t.row(
        "peak RSS nats-server MB",
        ["—"] + [peak(g, "_nats") if rss[g]["load"].get("_nats") else "—" for g in gateways],
    )
    t.row("peak RSS total MB (under load)", ["—"] + [peak(g, "_total") for g in gateways], "≤ 150")
    t.row("upstream RSS MB", [peak("direct", "_total")] + ["" for _ in gateways])


def load_cores(cs: list[int]) -> int:
    """The concurrency whose CPU and per-process numbers the tables show."""
    return 32 if 32 in cs else cs[-1]


def table(
    agg: dict[str, Any],
    summary: dict[str, Any],
    rss: dict[str, Any],
    names: list[str],
    cs: list[int],
    scs: list[int],
) -> str:
    t = _Table(agg, names)
    _latency_rows(t, summary, cs, scs)
    _resource_rows(t, rss, load_cores(cs))
    others = [a["other_load_cores"] for a in agg.values() if a.get("other_load_cores") is not None]
    t.rows.append("")
    t.rows.append(
        f"Other load on the machine during the runs (cores busy with processes not ours): "
        f"median {fmt(med(others))}, max {fmt(max(others) if others else None)}."
    )
    return "\n".join(t.rows)


def per_process_table(agg: dict[str, Any], rss: dict[str, Any], target: str, c: int) -> str:
    a = agg.get(f"{target}/plain/c{c}")
    if a is None:
        return ""
    rows = [
        f"| {target} process | CPU µs/req (c={c}) | cores busy (c={c}) | peak RSS MB |",
        "|---|---|---|---|",
    ]
    for role in a["cpu_us_per_req"]:
        rows.append(
            f"| {role} | {fmt(a['cpu_us_per_req'][role], 0)} | {fmt(a['cores'][role])} | "
            f"{fmt(rss[target]['load'].get(role), 1)} |"
        )
    lines = []
    for mode, cc in (("plain", 1), ("plain", c), ("stream", 1), ("stream", c)):
        m = agg.get(f"{target}/{mode}/c{cc}", {}).get("nats_per_req")
        if m:
            lines.append(
                f"{'non-stream' if mode == 'plain' else 'stream'} c={cc}: {m['in_msgs']:.1f} in / "
                f"{m['out_msgs']:.1f} out ({m['in_bytes'] / 1024:.1f} KB in)"
            )
    if lines:
        rows.append("")
        rows.append("NATS messages per request (nats-server /varz): " + "; ".join(lines) + ".")
    return "\n".join(rows)


def print_report(
    m: dict[str, Any],
    args: Any,
    agg: dict[str, Any],
    summary: dict[str, Any],
    rss: dict[str, Any],
    names: list[str],
    cs: list[int],
    scs: list[int],
) -> None:
    """The markdown tables on stdout, and whether each Switchman topology met its targets."""
    print()
    print(
        f"## Switchman benchmark {m['date']} ({m['cpus']} CPUs, {m['cpu_model']}; "
        f"non-stream load: {m['loadgen_plain']}; {args.repeats} repeat(s) x {args.duration:g} s, median)"
    )
    print()
    print(table(agg, summary, rss, names, cs, scs))
    if "split" in names:
        print()
        print(per_process_table(agg, rss, "split", load_cores(cs)))
    for g in names:
        if g not in ("up", "split"):
            continue
        failed = [k for k, v in summary[g]["checks"].items() if not v["pass"]]
        print(f"\n{g}: targets {'all met' if not failed else 'missed: ' + ', '.join(failed)}")


def print_errors(agg: dict[str, Any]) -> None:
    bad = {k: v["errors"] for k, v in agg.items() if v["errors"]}
    if bad:
        print(f"\nWARNING: errors during the runs: {bad}")
