"""Typed configuration: one YAML file decoded into msgspec Structs.

``${NAME}`` (or ``${NAME:-default}``) in any string is replaced from the environment
before decoding; a reference to an unset variable without a default, an unknown
field, or a value of the wrong type stops start-up with a message naming the field.
This is the only module that reads the environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

ProviderKind = Literal["openai", "anthropic", "gemini", "cohere", "replicate", "sim"]
Strategy = Literal["cost", "latency", "quality", "balanced", "ordered", "weighted", "custom"]


class ConfigError(Exception):
    """The configuration is invalid; the message names the field."""


class _Base(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class Price(_Base):
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0


class SimSettings(_Base):
    """The built-in simulated provider's behaviour."""

    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0  # 0: all tokens at once
    failure_rate: float = 0.0  # probability of a 500 before the first byte
    max_tokens: int = 64  # default completion length
    embedding_dims: int = 256


class ProviderConfig(_Base):
    id: str
    kind: ProviderKind
    # An OpenAI-compatible preset (groq, together, ollama, azure, ...) for kind openai.
    preset: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    headers: dict[str, str] = {}
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    max_connections: int = 256
    price: dict[str, Price] = {}
    # Upstream model names this provider serves; exposed as models of the same name
    # when no `models:` entry names them. Discovery adds to this list.
    models: list[str] = []
    # Unsupported parameters: drop them silently (true) or answer 400 (false).
    drop_params: bool = True
    # Extra query parameters (Azure api-version, ...).
    query: dict[str, str] = {}
    discover_models: bool = False
    sim: SimSettings | None = None
    # Capability overrides on top of the preset's profile.
    capabilities: dict[str, Any] = {}
    weight: float = 1.0


class Target(_Base):
    provider: str
    model: str
    weight: float = 1.0


class ModelRoute(_Base):
    name: str
    targets: list[Target]
    strategy: Strategy = "ordered"
    fallback: bool = True


class KeyConfig(_Base):
    key: str
    name: str
    budget_usd_per_month: float | None = None
    rpm: int | None = None
    allow_models: list[str] = msgspec.field(default_factory=lambda: ["*"])


class Limits(_Base):
    max_body_bytes: int = 4 * 1024 * 1024
    # A worker must acknowledge a routed request within this time.
    ack_timeout_s: float = 2.0
    # A stream with no frame from its worker for this long is failed.
    idle_timeout_s: float = 30.0
    # Whole-request deadline (also the default upstream timeout cap).
    request_timeout_s: float = 600.0
    # Concurrent requests per worker process / router process.
    max_in_flight: int = 1024


class LocalDiscovery(_Base):
    enabled: bool = True
    # kind/preset -> base URL probed at start-up.
    endpoints: dict[str, str] = msgspec.field(
        default_factory=lambda: {
            "ollama": "http://127.0.0.1:11434/v1",
            "lmstudio": "http://127.0.0.1:1234/v1",
            "vllm": "http://127.0.0.1:8000/v1",
            "llamacpp": "http://127.0.0.1:8081/v1",
            "localai": "http://127.0.0.1:8080/v1",
        }
    )
    timeout_s: float = 0.3


class TracingConfig(_Base):
    enabled: bool = False
    # "console" or an OTLP/HTTP endpoint handled by an installed exporter.
    exporter: str = "console"


class UsageConfig(_Base):
    """The JetStream stream ``SW_USAGE`` that keeps usage records until the ledger has them.

    Limits keep an embedded install from growing without bound: records older than
    ``max_age_s`` or beyond ``max_bytes`` are discarded, oldest first. A retried
    publish within ``duplicate_window_s`` (same attempt id) is stored once.
    ``max_pending`` bounds the records a worker holds while NATS is unreachable.
    """

    max_age_s: Annotated[float, msgspec.Meta(gt=0)] = 30 * 24 * 3600.0
    max_bytes: Annotated[int, msgspec.Meta(gt=0)] = 1024**3
    duplicate_window_s: Annotated[float, msgspec.Meta(gt=0)] = 24 * 3600.0
    max_pending: Annotated[int, msgspec.Meta(gt=0)] = 100_000


class Config(_Base):
    listen: str = "127.0.0.1:8080"
    nats_url: str | None = None
    database: str = "sqlite:///switchman.db"
    data_dir: str | None = None
    # Register the built-in simulated models (sim-fast, sim-cheap, sim-smart).
    sim_models: bool = True
    providers: list[ProviderConfig] = []
    models: list[ModelRoute] = []
    keys: list[KeyConfig] = []
    limits: Limits = msgspec.field(default_factory=Limits)
    discovery: LocalDiscovery = msgspec.field(default_factory=LocalDiscovery)
    # Real providers found from API keys in the environment (OPENAI_API_KEY, ...).
    env_providers: bool = True
    log_level: str = "info"
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)
    usage: UsageConfig = msgspec.field(default_factory=UsageConfig)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host or "127.0.0.1", int(port)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, env: dict[str, str], path: str) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{path}: environment variable ${{{name}}} is not set")

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, env, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def parse(data: Any, env: dict[str, str] | None = None) -> Config:
    """Build a Config from decoded YAML (a dict), expanding ``${ENV}`` first."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("$: the configuration must be a mapping")
    data = _expand(data, dict(os.environ) if env is None else env, "$")
    try:
        # strict=False: "${PORT}" may fill a number field ("8080" -> 8080).
        cfg = msgspec.convert(data, Config, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(str(e)) from None
    _check(cfg)
    return cfg


def _check(cfg: Config) -> None:
    ids = set()
    for i, p in enumerate(cfg.providers):
        if p.id in ids:
            raise ConfigError(f"duplicate provider id {p.id!r} - at `$.providers[{i}].id`")
        ids.add(p.id)
        if p.kind != "sim" and p.kind != "openai" and p.preset:
            raise ConfigError(f"preset is only for kind openai - at `$.providers[{i}].preset`")
    for i, m in enumerate(cfg.models):
        if not m.targets:
            raise ConfigError(f"a model needs at least one target - at `$.models[{i}].targets`")
        for j, t in enumerate(m.targets):
            if t.provider not in ids:
                raise ConfigError(
                    f"unknown provider {t.provider!r} - at `$.models[{i}].targets[{j}].provider`"
                )
    try:
        port = cfg.host_port[1]
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"listen must be host:port (port 0-65535), got {cfg.listen!r} - at `$.listen`")


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the config from ``path``, else ``$SWITCHMAN_CONFIG``, else defaults.

    ``NATS_URL`` and ``SWITCHMAN_LISTEN`` in the environment override the file.
    """
    path = path or os.environ.get("SWITCHMAN_CONFIG")
    data: Any = {}
    if path:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping")
    if os.environ.get("NATS_URL"):
        data["nats_url"] = os.environ["NATS_URL"]
    if os.environ.get("SWITCHMAN_LISTEN"):
        data["listen"] = os.environ["SWITCHMAN_LISTEN"]
    if os.environ.get("SWITCHMAN_DATA_DIR"):
        data["data_dir"] = os.environ["SWITCHMAN_DATA_DIR"]
    return parse(data)


def environ() -> dict[str, str]:
    """The process environment, for the few places that look up provider API keys."""
    return dict(os.environ)
