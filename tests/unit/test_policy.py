"""services/router/policy.py decide(): strategies, fallback, liveness."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from libs.common.config import ModelRoute, Price, Target
from libs.common.contracts import Candidate
from libs.common.errors import ModelNotFound, NoProvider
from services.router.policy import LIVENESS_S, RouterState, decide

NOW = 1000.0


def state(
    strategy: str = "ordered",
    fallback: bool = True,
    targets: list[tuple[str, str, float]] | None = None,
    **kw,
) -> RouterState:
    targets = targets or [("a", "ma", 1.0), ("b", "mb", 1.0), ("c", "mc", 1.0)]
    route = ModelRoute(
        name="m",
        strategy=strategy,
        fallback=fallback,
        targets=[Target(provider=p, model=m, weight=w) for p, m, w in targets],
    )
    seen = kw.pop("seen", {p: NOW for p, _, _ in targets})
    return RouterState(routes={"m": route}, seen=seen, **kw)


def providers(plan) -> list[str]:
    return [c.provider for c in plan.candidates]


def test_ordered_keeps_config_order():
    plan = decide(state(), "m", None, NOW, random.Random(0))
    assert plan.candidates == [Candidate("a", "ma"), Candidate("b", "mb"), Candidate("c", "mc")]
    assert plan.reason == "ordered"


def test_ordered_is_independent_of_rng():
    s = state()
    assert {tuple(providers(decide(s, "m", None, NOW, random.Random(i)))) for i in range(20)} == {
        ("a", "b", "c")
    }


def test_weighted_first_pick_follows_weights():
    s = state("weighted", targets=[("a", "x", 6.0), ("b", "x", 3.0), ("c", "x", 1.0)])
    rng = random.Random(1234)
    draws = 5000
    first = Counter(decide(s, "m", None, NOW, rng).candidates[0].provider for _ in range(draws))
    for p, w in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
        assert abs(first[p] / draws - w) < 0.03, (p, first)


def test_weighted_plan_is_a_permutation_and_second_pick_by_weight():
    s = state("weighted", targets=[("a", "x", 8.0), ("b", "x", 1.0), ("c", "x", 1.0)])
    rng = random.Random(7)
    seconds = Counter()
    for _ in range(3000):
        plan = decide(s, "m", None, NOW, rng)
        assert sorted(providers(plan)) == ["a", "b", "c"]
        if plan.candidates[0].provider == "a":
            seconds[plan.candidates[1].provider] += 1
    # after a, b and c have equal weight
    total = seconds["b"] + seconds["c"]
    assert abs(seconds["b"] / total - 0.5) < 0.06


def test_weighted_zero_weight_is_never_first():
    s = state("weighted", targets=[("a", "x", 0.0), ("b", "x", 1.0)])
    rng = random.Random(3)
    for _ in range(500):
        assert providers(decide(s, "m", None, NOW, rng)) == ["b", "a"]


def test_weighted_is_reproducible_with_same_seed():
    s = state("weighted")
    a = [providers(decide(s, "m", None, NOW, r)) for r in [random.Random(99)] for _ in range(50)]
    b = [providers(decide(s, "m", None, NOW, r)) for r in [random.Random(99)] for _ in range(50)]
    assert a == b and len({tuple(x) for x in a}) > 1


@pytest.mark.parametrize("strategy", ["latency", "quality", "balanced"])
def test_health_strategies_fall_back_to_weighted(strategy):
    s = state(strategy, targets=[("a", "x", 1.0), ("b", "x", 0.0)])
    plan = decide(s, "m", None, NOW, random.Random(0))
    assert providers(plan) == ["a", "b"]
    assert "weighted" in plan.reason and strategy in plan.reason


def test_cost_orders_by_price_unknown_last():
    prices = {
        ("a", "ma"): Price(input_per_mtok=5.0, output_per_mtok=15.0),
        ("c", "mc"): Price(input_per_mtok=0.1, output_per_mtok=0.4),
        ("d", "md"): Price(input_per_mtok=1.0, output_per_mtok=2.0),
    }
    s = state("cost", targets=[("a", "ma", 1), ("b", "mb", 1), ("c", "mc", 1), ("d", "md", 1)], prices=prices)
    plan = decide(s, "m", None, NOW, random.Random(0))
    assert providers(plan) == ["c", "d", "a", "b"]
    assert "cost" in plan.reason


def test_cost_price_is_per_provider_and_model():
    prices = {("a", "other"): Price(input_per_mtok=0.0), ("b", "mb"): Price(input_per_mtok=1.0)}
    s = state("cost", targets=[("a", "ma", 1), ("b", "mb", 1)], prices=prices)
    assert providers(decide(s, "m", None, NOW, random.Random(0))) == ["b", "a"]


def test_strategy_override():
    prices = {("c", "mc"): Price(input_per_mtok=0.1), ("b", "mb"): Price(input_per_mtok=1.0)}
    s = state("ordered", prices=prices)
    assert providers(decide(s, "m", "cost", NOW, random.Random(0))) == ["c", "b", "a"]
    assert providers(decide(s, "m", None, NOW, random.Random(0))) == ["a", "b", "c"]
    s2 = state("cost", prices=prices)
    assert providers(decide(s2, "m", "ordered", NOW, random.Random(0))) == ["a", "b", "c"]


def test_fallback_false_gives_one_candidate():
    s = state("ordered", fallback=False)
    plan = decide(s, "m", None, NOW, random.Random(0))
    assert plan.candidates == [Candidate("a", "ma")]


def test_fallback_false_skips_dead_first_target():
    s = state("ordered", fallback=False, seen={"a": NOW - 60, "b": NOW, "c": NOW})
    assert providers(decide(s, "m", None, NOW, random.Random(0))) == ["b"]


def test_liveness_only_live_providers_are_candidates():
    # a: seen long ago (dead); b: never seen (no worker ever announced it); c: alive
    s = state("ordered", seen={"a": NOW - 3600, "c": NOW - 1})
    assert providers(decide(s, "m", None, NOW, random.Random(0))) == ["c"]


def test_liveness_applies_after_weighting_and_cost():
    s = state("weighted", seen={"b": NOW}, targets=[("a", "x", 100.0), ("b", "x", 1.0)])
    rng = random.Random(5)
    assert {tuple(providers(decide(s, "m", None, NOW, rng))) for _ in range(50)} == {("b",)}


def test_never_seen_only_is_no_provider():
    s = state("ordered", seen={})
    with pytest.raises(NoProvider):
        decide(s, "m", None, NOW, random.Random(0))
    with pytest.raises(NoProvider):  # however small the clock
        decide(s, "m", None, 0.0, random.Random(0))


def test_liveness_boundary():
    s = state("ordered", seen={"a": NOW - LIVENESS_S, "b": NOW - LIVENESS_S - 0.01, "c": NOW})
    assert providers(decide(s, "m", None, NOW, random.Random(0))) == ["a", "c"]


def test_all_dead_is_no_provider():
    s = state("ordered", seen={"a": NOW - 100, "b": NOW - 100, "c": NOW - 100})
    with pytest.raises(NoProvider) as e:
        decide(s, "m", None, NOW, random.Random(0))
    assert e.value.status == 503 and "'m'" in e.value.message


def test_unknown_model():
    with pytest.raises(ModelNotFound) as e:
        decide(state(), "gpt-9", None, NOW, random.Random(0))
    assert e.value.param == "model" and e.value.status == 404 and e.value.code == "model_not_found"
    assert "gpt-9" in e.value.message
