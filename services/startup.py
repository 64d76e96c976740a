"""What `switchman up` and `switchman run ingress` print to stderr once the gateway serves.

A few readable lines (the JSON logs are for machines): the URL, the models and
providers served, the local servers found, the client keys, and where NATS is (and its
log, when embedded). Discovered models and local servers reach the ingress in worker
catalogs (``sw.catalog.update``), so the report waits for them to settle, bounded:
until no new catalog came for ``QUIET_S`` after the first one, at most ``WAIT_S``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from libs.common.config import Config, is_loopback
from services.ingress.models import ModelView
from services.ingress.service import Ingress

WAIT_S = 3.0
QUIET_S = 0.2
MAX_NAMES = 12
LOCAL_PREFIX = "local-"  # the provider id a found local server gets (worker discovery)


async def settled(view: ModelView, wait_s: float = WAIT_S, quiet_s: float = QUIET_S) -> bool:
    """True once catalogs stopped arriving (at least one came); False when ``wait_s`` ran out."""
    deadline = time.monotonic() + wait_s
    seen = -1
    while time.monotonic() < deadline:
        if view.updates and view.updates == seen:
            return True
        seen = view.updates
        await asyncio.sleep(quiet_s)
    return False


def _names(items: list[str], more_hint: str) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:MAX_NAMES])
    return shown if len(items) <= MAX_NAMES else f"{shown}, … (+{len(items) - MAX_NAMES} more: {more_hint})"


def _local_servers(cfg: Config, providers: dict[str, int]) -> str:
    if not cfg.discovery.enabled:
        return "discovery off"
    found = [
        f"{pid[len(LOCAL_PREFIX) :]} at {cfg.discovery.endpoints.get(pid[len(LOCAL_PREFIX) :], '?')}"
        for pid in providers
        if pid.startswith(LOCAL_PREFIX)
    ]
    if found:
        return ", ".join(found)
    ports = ", ".join(f"{n} :{urlsplit(u).port}" for n, u in cfg.discovery.endpoints.items())
    return f"none found (probed {ports})"


def _keys(cfg: Config, host: str) -> str:
    if cfg.keys:
        return f"{len(cfg.keys)} ({', '.join(k.name for k in cfg.keys)}); clients send Authorization: Bearer <key>"
    if is_loopback(host):
        return "none: open to anyone on this machine (configure `keys:` before listening beyond loopback)"
    return "NONE — OPEN GATEWAY beyond loopback (allow_open_gateway: true): anyone who reaches it can use it"


def lines(view: ModelView, cfg: Config, url: str, nats_log: Path | None, catalogs_in: bool) -> list[str]:
    providers = view.providers()
    models = view.names()
    provs = [f"{p} ({n})" for p, n in providers.items()]
    nats = f"{cfg.nats_url} (embedded; log {nats_log})" if nats_log else f"{cfg.nats_url}"
    out = [
        f"switchman: serving the OpenAI API on {url}",
        f"  models ({len(models)}): {_names(models, 'GET /v1/models')}",
        f"  providers ({len(provs)}, models each): {_names(provs, 'GET /v1/capabilities')}",
        f"  local servers: {_local_servers(cfg, providers)}",
        f"  client keys: {_keys(cfg, cfg.host_port[0])}",
        f"  NATS: {nats}",
    ]
    if not catalogs_in:
        out.insert(1, "  (no worker catalog yet: discovered models appear as workers announce them)")
    return out


async def report(ingress: Ingress, cfg: Config, nats_log: Path | None = None) -> None:
    catalogs_in = await settled(ingress.view)
    host = cfg.host_port[0]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{ingress.port or cfg.host_port[1]}/v1"
    print("\n".join(lines(ingress.view, cfg, url, nats_log, catalogs_in)), file=sys.stderr, flush=True)
