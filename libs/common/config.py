"""Typed configuration: one YAML file decoded into msgspec Structs.

``${NAME}`` (or ``${NAME:-default}``) in any string is replaced from the environment
before decoding; a reference to an unset variable without a default, an unknown
field, or a value of the wrong type stops start-up with a message naming the field.
This is the only module that reads the environment.

No configuration, however wrong, gives a traceback: every mistake `switchman up`
would trip over later (an unknown preset, a provider id that cannot be a NATS
subject token, a misspelled capability, a negative limit, a route to nowhere) is a
one-line :class:`ConfigError` naming the field (``$.providers[0].preset``), and
broken YAML names the file and line. What the types cannot say is checked in
:mod:`libs.common.config_checks`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Annotated, Any, Literal

import msgspec

from . import yamlfile
from .profiles import Capabilities

ProviderKind = Literal["openai", "anthropic", "gemini", "cohere", "replicate", "sim"]
Strategy = Literal["cost", "latency", "quality", "balanced", "ordered", "weighted", "custom"]


class ConfigError(Exception):
    """The configuration is invalid; the message (always one line) names the field."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


# Bounds every number of the configuration lives within (NaN and infinity never do).
MAX_SECONDS = 86_400.0
MAX_COUNT = 2**31 - 1
Seconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]
Count = Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)]
Weight = Annotated[float, msgspec.Meta(ge=0, le=1e9)]


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
    # One NATS subject token: no dots, spaces, `*` or `>`.
    id: str
    kind: ProviderKind
    # A preset of the kind (openai: groq, together, ollama, azure, ...); none: the kind's own.
    preset: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    headers: dict[str, str] = {}
    timeout_s: Seconds = 60.0
    connect_timeout_s: Seconds = 5.0
    # Concurrent calls to this provider (the connection pool); a call beyond them waits
    # at most pool_wait_s for a free one, then moves to the next candidate (or 503).
    max_connections: Count = 1024
    pool_wait_s: Seconds = 0.5
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
    # Capability overrides on top of the preset's profile (None: the preset's value).
    capabilities: Capabilities = msgspec.field(default_factory=Capabilities)
    weight: Weight = 1.0


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
    # At most what one bus message carries (max_payload: 8 MB embedded) less 64 KB for the
    # routing envelope; a larger value is capped at start (with a warning).
    max_body_bytes: int = 8 * 1024 * 1024 - 64 * 1024
    # A worker must acknowledge a routed request within this time.
    ack_timeout_s: float = 2.0
    # A stream with no frame from its worker for this long is failed.
    idle_timeout_s: float = 30.0
    # Whole-request deadline (also the default upstream timeout cap).
    request_timeout_s: float = 600.0
    # Concurrent requests per worker process / router process.
    max_in_flight: int = 1024
    # A client has this long to send a request's headers (from their first byte), and
    # then its body: past it, 408 and the connection is closed (slow clients hold nothing).
    header_timeout_s: float = 30.0
    body_timeout_s: float = 120.0


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
    # Serve without client keys on an address beyond loopback (see open_gateway_error).
    allow_open_gateway: bool = False
    usage: UsageConfig = msgspec.field(default_factory=UsageConfig)

    @property
    def host_port(self) -> tuple[str, int]:
        return split_listen(self.listen)


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` -> (host, port); ValueError when it is neither."""
    host, _, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]") and ":" in host:
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets, as in [::1]:8080")
    return host or "127.0.0.1", int(port)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# YAML aliases can make a small file expand to billions of values.
MAX_VALUES = 1_000_000


class _Expander:
    """``${ENV}`` references replaced in every string, with a budget on the values visited."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.left = MAX_VALUES

    def __call__(self, value: Any, path: str) -> Any:
        self.left -= 1
        if self.left < 0:
            raise ConfigError(f"the configuration expands to more than {MAX_VALUES} values (YAML aliases?)")
        if isinstance(value, str):
            return _ENV_REF.sub(lambda m: self._lookup(m, path), value)
        if isinstance(value, dict):
            return {k: self(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    def _lookup(self, m: re.Match[str], path: str) -> str:
        name, default = m.group(1), m.group(2)
        if name in self.env:
            return self.env[name]
        if default is not None:
            return default
        raise ConfigError(f"{path}: environment variable ${{{name}}} is not set")


def parse(data: Any, env: dict[str, str] | None = None) -> Config:
    """Build a Config from decoded YAML (a dict), expanding ``${ENV}`` first."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("$: the configuration must be a mapping")
    try:
        data = _Expander(dict(os.environ) if env is None else env)(data, "$")
        # strict=False: "${PORT}" may fill a number field ("8080" -> 8080).
        cfg = msgspec.convert(data, Config, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(str(e)) from None
    except RecursionError:
        raise ConfigError("the configuration is nested too deeply") from None
    from .config_checks import check  # it needs this module's types: imported once they exist

    check(cfg)
    return cfg


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the config from ``path``, else ``$SWITCHMAN_CONFIG``, else defaults.

    ``NATS_URL`` and ``SWITCHMAN_LISTEN`` in the environment override the file.
    """
    path = path or os.environ.get("SWITCHMAN_CONFIG")
    try:
        data: Any = yamlfile.read(path) if path else {}
    except yamlfile.YamlError as e:
        raise ConfigError(str(e)) from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping")
    if os.environ.get("NATS_URL"):
        data["nats_url"] = os.environ["NATS_URL"]
    if os.environ.get("SWITCHMAN_LISTEN"):
        data["listen"] = os.environ["SWITCHMAN_LISTEN"]
    if os.environ.get("SWITCHMAN_DATA_DIR"):
        data["data_dir"] = os.environ["SWITCHMAN_DATA_DIR"]
    if os.environ.get("SWITCHMAN_ALLOW_OPEN_GATEWAY"):
        data["allow_open_gateway"] = _env_bool("SWITCHMAN_ALLOW_OPEN_GATEWAY")
    try:
        return parse(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def _env_bool(name: str) -> bool:
    value = os.environ[name].strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {os.environ[name]!r}")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost; any other name or address may be reachable from outside."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_gateway_error(cfg: Config) -> str | None:
    """Why an ingress with this config must not start, or None.

    Listening beyond loopback without client keys lets anyone who reaches the port spend
    the operator's provider keys, so it takes an explicit ``allow_open_gateway: true``.
    An empty client key (an unset variable behind ``${NAME:-}``) would let in any
    ``Authorization: Bearer`` header, so it is refused everywhere.
    """
    for i, k in enumerate(cfg.keys):
        if not k.key.strip():
            return (
                f"client key {k.name!r} is empty (an unset variable?): give it a value - at `$.keys[{i}].key`"
            )
    host = cfg.host_port[0]
    if cfg.keys or cfg.allow_open_gateway or is_loopback(host):
        return None
    return (
        f"refusing to serve on {cfg.listen} without client keys: anyone who reaches it could spend "
        "your provider keys. Configure `keys:`, listen on 127.0.0.1, or set "
        "`allow_open_gateway: true` (SWITCHMAN_ALLOW_OPEN_GATEWAY=true) - at `$.allow_open_gateway`"
    )


def environ() -> dict[str, str]:
    """The process environment, for the few places that look up provider API keys."""
    return dict(os.environ)
