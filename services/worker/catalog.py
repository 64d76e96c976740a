"""What a worker serves: its providers' models with their capabilities and prices.

Derived from the same :class:`~libs.common.profiles.Profile` entries the
adapters use; published on ``sw.catalog.update`` for the router (routes for
discovered models) and the ingress (``/v1/models``, ``/v1/capabilities``,
``/v1/extensions``).
"""

from __future__ import annotations

from libs.common.config import ProviderConfig
from libs.common.contracts import Extension, ModelInfo
from libs.common.profiles import Profile


def model_info(p: ProviderConfig, profile: Profile, model: str) -> ModelInfo:
    price = p.price.get(model)
    return ModelInfo(
        id=model,
        provider=p.id,
        owned_by=p.id,
        streaming=profile.streaming,
        tools=profile.tools,
        vision=profile.vision,
        json_mode=profile.json_mode,
        embeddings=profile.embeddings,
        chat=True,
        completions=profile.completions,
        context_window=profile.context_window,
        input_per_mtok=price.input_per_mtok if price else None,
        output_per_mtok=price.output_per_mtok if price else None,
    )


def extensions(p: ProviderConfig, profile: Profile) -> list[Extension]:
    return [Extension(provider=p.id, field=f, description=d) for f, d in sorted(profile.extensions.items())]
