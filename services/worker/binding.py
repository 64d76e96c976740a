"""One provider as a worker serves it: its config, profile, protocol and HTTP session.

A data type shared by the worker's wiring (:mod:`.service`) and its logic
(:mod:`.attempt`, :mod:`.discovery`), so it lives here and not in ``service.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp

from libs.common.config import ProviderConfig
from libs.common.profiles import Profile

from . import pricing
from .adapters.base import Protocol
from .chunks import Usage
from .telemetry import Telemetry
from .upstream import Upstream


@dataclass(slots=True)
class Binding:
    """One provider as this worker serves it."""

    provider: ProviderConfig
    profile: Profile
    protocol: Protocol
    upstream: Upstream
    session: aiohttp.ClientSession
    log: Any
    telemetry: Telemetry
    models: list[str] = field(default_factory=list)

    def cost(self, model: str, u: Usage) -> float:
        return pricing.cost(self.provider.price, model, u)
