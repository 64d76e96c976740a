"""`switchman` — the command line.

``switchman up [--config FILE]``   run all five services in one process (starts an
                                   embedded nats-server unless NATS_URL is set)
``switchman run SERVICE...``      run some services in one process against NATS_URL
``switchman check-config FILE``   validate a config file and exit
``switchman sim-upstream``        serve the simulated provider over OpenAI HTTP
``switchman --version``           the installed package's version

Shutdown order of `up`: a signal stops the services (in-flight requests finish), the
NATS connection drains and closes, and only then does the embedded nats-server stop —
it runs in its own session, so a terminal's Ctrl-C reaches it only through us.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

import msgspec

from services.runner import NAMES, load_or_exit, start

CONFIG_HELP = "configuration file (YAML); default: $SWITCHMAN_CONFIG, else built-in defaults"


def _up(args: argparse.Namespace) -> None:
    cfg = load_or_exit(args.config, serves_http=True)
    if cfg.nats_url:
        start(NAMES, cfg)
        return
    from services.embedded import EmbeddedNats, data_dir

    embedded = EmbeddedNats(data_dir(cfg.data_dir))
    try:
        cfg = msgspec.structs.replace(cfg, nats_url=embedded.start())
    except (RuntimeError, OSError) as e:  # data dir busy or not writable, no binary, ...
        embedded.stop()
        print(f"switchman: cannot start the embedded nats-server: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        start(NAMES, cfg, embedded.log_path)
    finally:
        embedded.stop()


def _run(args: argparse.Namespace) -> None:
    bad = [n for n in args.services if n not in NAMES]
    if bad:
        print(f"switchman: unknown service {bad[0]!r}; choose from {', '.join(NAMES)}", file=sys.stderr)
        raise SystemExit(2)
    order = tuple(n for n in NAMES if n in args.services)
    start(order, load_or_exit(args.config, serves_http="ingress" in order))


def _check(args: argparse.Namespace) -> None:
    load_or_exit(args.config, serves_http=True)
    print("switchman: configuration is valid")


def _sim(args: argparse.Namespace) -> None:
    from services.worker.sim_server import serve

    serve(args.host, args.port, args.ttft_ms, args.tokens_per_s)


def version() -> str:
    try:
        return metadata.version("switchman")
    except metadata.PackageNotFoundError:  # run from a checkout without `pip install`
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="switchman", description="OpenAI-compatible LLM gateway over NATS")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="run every service in one process", description=_up_description())
    up.add_argument("--config", "-c", default=None, metavar="FILE", help=CONFIG_HELP)
    up.set_defaults(fn=_up)
    run = sub.add_parser("run", help="run the named services against NATS_URL")
    run.add_argument("services", nargs="+", metavar="SERVICE", help=f"any of: {', '.join(NAMES)}")
    run.add_argument("--config", "-c", default=None, metavar="FILE", help=CONFIG_HELP)
    run.set_defaults(fn=_run)
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("config", metavar="FILE", help="the configuration file to check")
    check.set_defaults(fn=_check)
    sim = sub.add_parser("sim-upstream", help="serve the simulated provider over OpenAI HTTP")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    sim.add_argument("--port", type=int, default=9000, help="port to listen on (default: %(default)s)")
    sim.add_argument(
        "--ttft-ms", type=float, default=0.0, help="delay before the first token, ms (default: %(default)s)"
    )
    sim.add_argument(
        "--tokens-per-s",
        type=float,
        default=0.0,
        help="streaming speed; 0 sends all tokens at once (default: %(default)s)",
    )
    sim.set_defaults(fn=_sim)
    return p


def _up_description() -> str:
    return (
        "Run the ingress, router, worker, health and ledger in one process. Without NATS_URL "
        "(or nats_url in the config) it starts its own nats-server with JetStream in the data dir."
    )


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
