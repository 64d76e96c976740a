"""`switchman` — the command line.

``switchman up [--config FILE]``   run all five services in one process (starts an
                                   embedded nats-server unless NATS_URL is set)
``switchman run SERVICE...``      run some services in one process against NATS_URL
``switchman check-config FILE``   validate a config file and exit
``switchman sim-upstream``        serve the simulated provider over OpenAI HTTP
"""

from __future__ import annotations

import argparse
import sys

import msgspec

from services.runner import NAMES, load_or_exit, start


def _up(args: argparse.Namespace) -> None:
    cfg = load_or_exit(args.config)
    embedded = None
    if not cfg.nats_url:
        from services.embedded import EmbeddedNats, data_dir

        embedded = EmbeddedNats(data_dir(cfg.data_dir))
        try:
            cfg = msgspec.structs.replace(cfg, nats_url=embedded.start())
        except RuntimeError as e:
            print(f"switchman: {e}", file=sys.stderr)
            raise SystemExit(1) from None
    host, port = cfg.host_port

    def ready() -> None:
        print(
            f"switchman: serving the OpenAI API on http://{host}:{port}/v1 (NATS {cfg.nats_url})",
            file=sys.stderr,
            flush=True,
        )

    try:
        start(NAMES, cfg, ready)
    finally:
        if embedded is not None:
            embedded.stop()


def _run(args: argparse.Namespace) -> None:
    bad = [n for n in args.services if n not in NAMES]
    if bad:
        print(f"switchman: unknown service {bad[0]!r}; choose from {', '.join(NAMES)}", file=sys.stderr)
        raise SystemExit(2)
    order = tuple(n for n in NAMES if n in args.services)
    start(order, load_or_exit(args.config))


def _check(args: argparse.Namespace) -> None:
    load_or_exit(args.config)
    print("switchman: configuration is valid")


def _sim(args: argparse.Namespace) -> None:
    from services.worker.sim_server import serve

    serve(args.host, args.port, args.ttft_ms, args.tokens_per_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="switchman", description="OpenAI-compatible LLM gateway over NATS")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="run every service in one process")
    up.add_argument("--config", "-c", default=None)
    up.set_defaults(fn=_up)
    run = sub.add_parser("run", help="run the named services against NATS_URL")
    run.add_argument("services", nargs="+")
    run.add_argument("--config", "-c", default=None)
    run.set_defaults(fn=_run)
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("config")
    check.set_defaults(fn=_check)
    sim = sub.add_parser("sim-upstream", help="serve the simulated provider over OpenAI HTTP")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=9000)
    sim.add_argument("--ttft-ms", type=float, default=0.0)
    sim.add_argument("--tokens-per-s", type=float, default=0.0)
    sim.set_defaults(fn=_sim)
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
