"""Starting services together: all five in one process (`switchman up`) or a chosen few (`switchman run`)."""

from __future__ import annotations

from collections.abc import Callable

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


def start(names: tuple[str, ...], cfg: Config, on_started: Callable[[], None] | None = None) -> None:
    serve([build(n, cfg) for n in names], cfg, on_started)
