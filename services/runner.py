"""Starting services: all in one process (`switchman up`) or one alone (`python -m services.<name>`)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from libs.common import log, tracing
from libs.common.config import Config, ConfigError, load
from libs.common.service import Service, run, use_uvloop

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

        return Health()
    if name == "ledger":
        from services.ledger.service import Ledger

        return Ledger()
    raise ValueError(name)


def load_or_exit(path: str | None = None) -> Config:
    try:
        return load(path)
    except ConfigError as e:
        print(f"switchman: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def start(names: tuple[str, ...], cfg: Config, on_started: Callable[[], None] | None = None) -> None:
    log.setup(cfg.log_level)
    tracing.setup(cfg.tracing.enabled, cfg.tracing.exporter)
    if not cfg.nats_url:
        print("switchman: NATS_URL is not set (or use `switchman up`)", file=sys.stderr)
        raise SystemExit(2)
    use_uvloop()
    services = [build(n, cfg) for n in names]
    asyncio.run(run(services, cfg.nats_url, name="switchman-" + "+".join(names), started=on_started))


def run_one(name: str) -> None:
    """`python -m services.<name>`: one service against NATS_URL."""
    start((name,), load_or_exit())
