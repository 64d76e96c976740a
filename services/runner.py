"""Starting services together: all five in one process (`switchman up`) or a chosen few (`switchman run`).

A process that serves HTTP (the ingress) refuses an open gateway beyond loopback
(:func:`libs.common.config.open_gateway_error`): exit 2 with one line naming the way out.
Once started, it prints what it serves (:mod:`services.startup`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from libs.common import service as lifecycle
from libs.common.config import Config, open_gateway_error
from libs.common.service import Service, serve

__all__ = ["NAMES", "build", "load_or_exit", "refuse_open_gateway", "start"]

NAMES = ("ledger", "health", "worker", "router", "ingress")


def refuse_open_gateway(cfg: Config) -> None:
    problem = open_gateway_error(cfg)
    if problem is not None:
        print(f"switchman: configuration error: {problem}", file=sys.stderr)
        raise SystemExit(2)


def load_or_exit(path: str | None = None, *, serves_http: bool = False) -> Config:
    """The config, or exit 2 naming the problem; ``serves_http``: also the open-gateway check."""
    cfg = lifecycle.load_or_exit(path)
    if serves_http:
        refuse_open_gateway(cfg)
    return cfg


def build(name: str, cfg: Config) -> Service:
    if name == "ingress":
        from services.ingress.service import Ingress

        return Ingress(cfg)
    if name == "router":
        from services.router.service import Router

        return Router(cfg)
    if name == "worker":
        from services.worker.service import Worker

        return Worker(cfg)
    if name == "health":
        from services.health.service import Health

        return Health(cfg)
    if name == "ledger":
        from services.ledger.service import Ledger

        return Ledger(cfg)
    raise ValueError(name)


def start(names: tuple[str, ...], cfg: Config, nats_log: Path | None = None) -> None:
    """Run ``names`` until a signal; with an ingress, report what it serves once it listens."""
    services = [build(n, cfg) for n in names]
    ingress = next((s for s in services if s.name == "ingress"), None)

    async def started() -> None:
        if ingress is not None:
            from services.ingress.service import Ingress
            from services.startup import report

            assert isinstance(ingress, Ingress)
            await report(ingress, cfg, nats_log)

    serve(services, cfg, started)
