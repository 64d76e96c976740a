"""Provider protocols by kind. Native ones are imported on first use."""

from __future__ import annotations

import importlib

from .base import Protocol

_MODULES = {
    "openai": ("openai", "OpenAIProtocol"),
    "sim": ("sim", "SimProtocol"),
    "anthropic": ("anthropic", "AnthropicProtocol"),
    "gemini": ("gemini", "GeminiProtocol"),
    "cohere": ("cohere", "CohereProtocol"),
    "replicate": ("replicate", "ReplicateProtocol"),
}


def protocol_class(kind: str) -> type[Protocol]:
    module, name = _MODULES[kind]
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
