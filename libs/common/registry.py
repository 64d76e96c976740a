"""The provider and model registry every service derives from the same config.

* providers: the configured ones, the built-in simulated ones (``sim_models``), and
  real providers whose API keys are in the environment (``env_providers``);
* routes: model names clients ask for → ordered candidate targets. Configured
  ``models:`` entries win; every model a provider lists (or a worker discovers and
  announces in its catalog) is also reachable under its own name and as
  ``<provider>/<model>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .config import Config, ModelRoute, Price, ProviderConfig, ProviderKind, SimSettings, Target
from .contracts import ModelInfo

SIM_MODELS: dict[str, tuple[SimSettings, Price]] = {
    "sim-fast": (SimSettings(ttft_ms=5, tokens_per_s=400), Price(input_per_mtok=0.5, output_per_mtok=1.5)),
    "sim-cheap": (SimSettings(ttft_ms=40, tokens_per_s=80), Price(input_per_mtok=0.05, output_per_mtok=0.2)),
    "sim-smart": (SimSettings(ttft_ms=120, tokens_per_s=60), Price(input_per_mtok=3.0, output_per_mtok=15.0)),
}

# Environment variable → (provider id, kind, preset). Read through config.environ().
ENV_KEYS: dict[str, tuple[str, ProviderKind, str | None]] = {
    "OPENAI_API_KEY": ("openai", "openai", "openai"),
    "ANTHROPIC_API_KEY": ("anthropic", "anthropic", None),
    "GEMINI_API_KEY": ("gemini", "gemini", None),
    "COHERE_API_KEY": ("cohere", "cohere", None),
    "GROQ_API_KEY": ("groq", "openai", "groq"),
    "TOGETHER_API_KEY": ("together", "openai", "together"),
    "FIREWORKS_API_KEY": ("fireworks", "openai", "fireworks"),
    "MISTRAL_API_KEY": ("mistral", "openai", "mistral"),
    "DEEPSEEK_API_KEY": ("deepseek", "openai", "deepseek"),
    "OPENROUTER_API_KEY": ("openrouter", "openai", "openrouter"),
    "XAI_API_KEY": ("xai", "openai", "xai"),
    "PERPLEXITY_API_KEY": ("perplexity", "openai", "perplexity"),
    "REPLICATE_API_TOKEN": ("replicate", "replicate", None),
}


def providers(cfg: Config, env: Mapping[str, str] | None = None) -> list[ProviderConfig]:
    out = list(cfg.providers)
    ids = {p.id for p in out}
    if cfg.sim_models:
        for name, (sim, price) in SIM_MODELS.items():
            if name not in ids:
                out.append(ProviderConfig(id=name, kind="sim", models=[name], sim=sim, price={name: price}))
                ids.add(name)
    if cfg.env_providers and env:
        for var, (pid, kind, preset) in ENV_KEYS.items():
            if env.get(var) and pid not in ids:
                out.append(
                    ProviderConfig(
                        id=pid,
                        kind=kind,
                        preset=preset,
                        api_key=env[var],
                        discover_models=True,
                    )
                )
                ids.add(pid)
    return out


def routes(cfg: Config, provs: Iterable[ProviderConfig]) -> dict[str, ModelRoute]:
    """Configured routes plus one single-target route per listed provider model."""
    table: dict[str, ModelRoute] = {}
    for p in provs:
        for m in p.models:
            qualified = f"{p.id}/{m}"
            table[qualified] = ModelRoute(name=qualified, targets=[Target(provider=p.id, model=m)])
            if m not in table:
                table[m] = ModelRoute(name=m, targets=[Target(provider=p.id, model=m)])
            else:  # the same model name at several providers: every one is a candidate
                existing = table[m]
                table[m] = ModelRoute(
                    name=m,
                    targets=[*existing.targets, Target(provider=p.id, model=m)],
                    strategy=existing.strategy,
                )
    for r in cfg.models:
        table[r.name] = r
    return table


def add_catalog(table: dict[str, ModelRoute], models: Iterable[ModelInfo], configured: set[str]) -> None:
    """Add routes for models workers discovered, never overriding configured names."""
    for info in models:
        qualified = f"{info.provider}/{info.id}"
        target = Target(provider=info.provider, model=info.id)
        table.setdefault(qualified, ModelRoute(name=qualified, targets=[target]))
        if info.id in configured:
            continue
        existing = table.get(info.id)
        if existing is None:
            table[info.id] = ModelRoute(name=info.id, targets=[target])
        elif all(t.provider != info.provider or t.model != info.id for t in existing.targets):
            table[info.id] = ModelRoute(name=info.id, targets=[*existing.targets, target])
