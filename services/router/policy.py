"""The routing decision: a pure function over an in-memory :class:`RouterState`.

Strategies for now: ``ordered`` (the targets in configured order), ``weighted``
(a weighted random first pick, the rest by weight) and ``cost`` (cheapest known
price first). ``latency``, ``quality`` and ``balanced`` need live health state and
are decided as ``weighted`` until the health service feeds it. Only providers with a
live worker (a heartbeat or catalog within ``LIVENESS_S``) are candidates, so a
request for a provider nobody serves fails at once with 503 instead of waiting for
an ack that cannot come.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from libs.common.config import ModelRoute, Price, Target
from libs.common.contracts import Candidate
from libs.common.errors import ModelNotFound, NoProvider

# A worker is alive while its last heartbeat is younger than this.
LIVENESS_S = 6.0


@dataclass(slots=True)
class RouterState:
    routes: dict[str, ModelRoute]
    prices: dict[tuple[str, str], Price] = field(default_factory=dict)
    # provider id -> monotonic time of the last heartbeat of any of its workers
    seen: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Plan:
    candidates: list[Candidate]
    reason: str


def _weighted_order(targets: list[Target], rng: random.Random) -> list[Target]:
    pool = list(targets)
    out: list[Target] = []
    while pool:
        total = sum(max(t.weight, 0.0) for t in pool)
        if total <= 0:
            out.extend(pool)
            break
        x = rng.random() * total
        for i, t in enumerate(pool):
            x -= max(t.weight, 0.0)
            if x < 0:
                out.append(pool.pop(i))
                break
        else:
            out.append(pool.pop())
    return out


def _cost(state: RouterState, t: Target) -> float:
    p = state.prices.get((t.provider, t.model))
    if p is None:
        return float("inf")
    return p.input_per_mtok + p.output_per_mtok


def decide(state: RouterState, model: str, strategy: str | None, now: float, rng: random.Random) -> Plan:
    route = state.routes.get(model)
    if route is None:
        raise ModelNotFound(
            f"The model '{model}' does not exist or you do not have access to it.", param="model"
        )
    chosen = strategy or route.strategy
    if chosen == "ordered":
        ordered, why = list(route.targets), "ordered"
    elif chosen == "cost":
        ordered, why = sorted(route.targets, key=lambda t: _cost(state, t)), "cost: cheapest first"
    else:
        ordered = _weighted_order(route.targets, rng)
        why = "weighted" if chosen == "weighted" else f"weighted ({chosen} needs health state)"
    picked = [t for t in ordered if now - state.seen.get(t.provider, -LIVENESS_S * 2) <= LIVENESS_S]
    if not picked:
        raise NoProvider(f"No provider for model '{model}' has a worker running.")
    if not route.fallback:
        picked = picked[:1]
    return Plan([Candidate(t.provider, t.model) for t in picked], why)
