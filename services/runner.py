"""Starting services together: all five in one process (`switchman up`) or a chosen few (`switchman run`).

A process that serves HTTP (the ingress) refuses an open gateway beyond loopback
(``load_or_exit(serves_http=True)``): exit 2 with one line naming the way out.
Once started, it prints what it serves (:mod:`services.startup`).
"""

from __future__ import annotations

from pathlib import Path

from libs.common.config import Config
from libs.common.service import Service, load_or_exit, serve

__all__ = ["NAMES", "build", "load_or_exit", "start"]

NAMES = ("ledger", "health", "worker", "router", "ingress")


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
