"""What one upstream call cost, from the provider's configured price list.

A model without a configured price costs 0: the ledger still counts its tokens, and
the operator sees a zero-cost row rather than a guessed one.
"""

from __future__ import annotations

from collections.abc import Mapping

from libs.common.config import Price

from .chunks import Usage


def cost(prices: Mapping[str, Price], model: str, u: Usage) -> float:
    """US dollars for ``u`` tokens of ``model`` (0.0 when the model has no price)."""
    price = prices.get(model)
    if price is None:
        return 0.0
    return (u.prompt_tokens * price.input_per_mtok + u.completion_tokens * price.output_per_mtok) / 1e6
