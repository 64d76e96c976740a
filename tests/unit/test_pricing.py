"""services/worker/pricing.py: the cost of one upstream call from the configured prices."""

from __future__ import annotations

import pytest

from libs.common.config import Price
from services.worker.chunks import Usage
from services.worker.pricing import cost

PRICES = {"m": Price(input_per_mtok=3.0, output_per_mtok=15.0)}


def test_cost_per_million_tokens():
    assert cost(PRICES, "m", Usage(prompt_tokens=1_000_000, completion_tokens=0)) == pytest.approx(3.0)
    assert cost(PRICES, "m", Usage(prompt_tokens=1000, completion_tokens=2000)) == pytest.approx(0.033)


def test_unpriced_model_costs_nothing():
    assert cost(PRICES, "other", Usage(prompt_tokens=10, completion_tokens=10)) == 0.0
