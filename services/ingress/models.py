"""The model catalog the ingress serves: GET /v1/models, /v1/capabilities, /v1/extensions.

Built from the same registry as the router (configured routes, sim and environment
providers) plus the catalogs workers announce (discovered models, capability
profiles, prices, provider extensions).

A key with ``allow_models`` patterns sees only the models it may use: the lists take
an ``allowed`` predicate over the listed name (the same name the request check uses).
"""

from __future__ import annotations

import fnmatch
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from libs.common import registry
from libs.common.config import Config, ModelRoute, environ
from libs.common.contracts import Catalog, Extension, ModelInfo

Allowed = Callable[[str], bool]


def allowed_by(patterns: Sequence[str] | None) -> Allowed | None:
    """The predicate for a key's ``allow_models`` globs; None (everything) without a key or for ``*``."""
    if patterns is None or "*" in patterns:
        return None
    pats = tuple(patterns)
    return lambda name: any(fnmatch.fnmatchcase(name, p) for p in pats)


class ModelView:
    def __init__(self, cfg: Config) -> None:
        provs = registry.providers(cfg, environ())
        self.provider_ids = [p.id for p in provs]
        self.configured = {r.name for r in cfg.models}
        self.routes: dict[str, ModelRoute] = registry.routes(cfg, provs)
        self.infos: dict[tuple[str, str], ModelInfo] = {}
        self.extensions: dict[tuple[str, str], Extension] = {}
        self.created = int(time.time())
        self.workers: set[str] = set()  # workers whose catalog arrived
        self.updates = 0  # catalogs received, for start-up to see them settle

    def add(self, cat: Catalog) -> None:
        self.workers.add(cat.worker)
        self.updates += 1
        for m in cat.models:
            self.infos[(m.provider, m.id)] = m
        for e in cat.extensions:
            self.extensions[(e.provider, e.field)] = e
        registry.add_catalog(self.routes, cat.models, self.configured)

    def _owner(self, route: ModelRoute) -> str:
        providers = {t.provider for t in route.targets}
        return providers.pop() if len(providers) == 1 else "switchman"

    def model(self, name: str) -> dict[str, Any] | None:
        route = self.routes.get(name)
        if route is None:
            return None
        return {"id": name, "object": "model", "created": self.created, "owned_by": self._owner(route)}

    def _alias(self, name: str) -> bool:
        """``<provider>/<model>`` spellings are routable but not listed when the plain name is."""
        route = self.routes[name]
        if len(route.targets) != 1:
            return False
        t = route.targets[0]
        return name == f"{t.provider}/{t.model}" and t.model in self.routes

    def names(self, allowed: Allowed | None = None) -> list[str]:
        """The listed model names (aliases left out), those ``allowed`` permits."""
        return [n for n in sorted(self.routes) if not self._alias(n) and (allowed is None or allowed(n))]

    def list(self, allowed: Allowed | None = None) -> dict[str, Any]:
        return {"object": "list", "data": [self.model(n) for n in self.names(allowed)]}

    def providers(self) -> dict[str, int]:
        """Every provider known (configured, built-in, from the environment, from catalogs) → models it serves."""
        served = {(t.provider, t.model) for r in self.routes.values() for t in r.targets}
        counts = Counter(p for p, _ in served)
        return {p: counts.get(p, 0) for p in dict.fromkeys([*self.provider_ids, *sorted(counts)])}

    def capabilities(self, allowed: Allowed | None = None) -> dict[str, Any]:
        data = []
        for name in sorted(self.routes):
            if allowed is not None and not allowed(name):
                continue
            route = self.routes[name]
            targets = []
            for t in route.targets:
                info = self.infos.get((t.provider, t.model))
                entry: dict[str, Any] = {"provider": t.provider, "model": t.model, "known": info is not None}
                if info is not None:
                    entry.update(_caps(info))
                targets.append(entry)
            known = [t for t in targets if t["known"]]
            summary = {
                # A fallback may land on any target: the route can do what all of them can.
                k: all(t[k] for t in known) if known else None
                for k in ("streaming", "tools", "vision", "json_mode", "embeddings")
            }
            windows = [t["context_window"] for t in known if t.get("context_window")]
            summary["context_window"] = min(windows) if windows else None
            data.append({"model": name, "strategy": route.strategy, **summary, "targets": targets})
        return {"object": "list", "data": data}

    def extension_list(self) -> dict[str, Any]:
        data = [
            {"provider": e.provider, "field": e.field, "description": e.description}
            for e in sorted(self.extensions.values(), key=lambda e: (e.provider, e.field))
        ]
        return {"object": "list", "data": data}


def _caps(info: ModelInfo) -> dict[str, Any]:
    return {
        "streaming": info.streaming,
        "tools": info.tools,
        "vision": info.vision,
        "json_mode": info.json_mode,
        "embeddings": info.embeddings,
        "completions": info.completions,
        "context_window": info.context_window,
        "price": None
        if info.input_per_mtok is None
        else {"input_per_mtok": info.input_per_mtok, "output_per_mtok": info.output_per_mtok},
    }
