"""Typed configuration: one YAML file decoded into msgspec Structs.

``${NAME}`` (or ``${NAME:-default}``) in any string is replaced from the environment
before decoding; a reference to an unset variable without a default, an unknown
field, or a value of the wrong type stops start-up with a message naming the field.
This is the only module that reads the environment.

No configuration, however wrong, gives a traceback: every mistake `switchman up`
would trip over later (an unknown preset, a provider id that cannot be a NATS
subject token, a misspelled capability, a negative limit, a route to nowhere) is a
one-line :class:`ConfigError` naming the field (``$.providers[0].preset``), and
broken YAML names the file and line. Numbers have sane bounds: timeouts are
seconds in (0, 1 day], counts are 1 to 2**31-1.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from . import yamlfile
from .profiles import PRESETS, Capabilities, presets_for
from .subjects import valid_token

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
    _check(cfg)
    return cfg


# -- semantic checks: what types cannot say -----------------------------------------------
def _err(what: str, path: str) -> ConfigError:
    return ConfigError(f"{what} - at `{path}`")


def _within(value: float | None, lo: float, hi: float, path: str) -> None:
    if value is not None and not lo <= value <= hi:  # NaN is never within
        raise _err(f"must be between {lo:g} and {hi:g}, got {value!r}", path)


def _url(value: str, path: str, schemes: tuple[str, ...] = ("http", "https")) -> None:
    try:
        u = urlsplit(value)
        ok = u.scheme in schemes and bool(u.hostname) and (u.port is None or u.port > 0)
    except ValueError:  # a port that is not a number
        ok = False
    if not ok:
        raise _err(f"must be a {'/'.join(schemes)} URL with a host, got {value!r}", path)


def _one_line(value: str, path: str) -> None:
    if "\r" in value or "\n" in value:  # would split the HTTP header it travels in
        raise _err("must not contain a line break", path)


def _check(cfg: Config) -> None:
    _check_listen(cfg.listen)
    ids = {p.id for p in cfg.providers}
    seen: set[str] = set()
    for i, p in enumerate(cfg.providers):
        if p.id in seen:
            raise _err(f"duplicate provider id {p.id!r}", f"$.providers[{i}].id")
        seen.add(p.id)
        _check_provider(p, f"$.providers[{i}]")
    _check_models(cfg.models, ids)
    _check_keys(cfg.keys)
    _check_limits(cfg.limits)
    _check_discovery(cfg.discovery)
    _check_services(cfg)


_HOST = re.compile(r"[A-Za-z0-9._:-]*")


def _check_listen(listen: str) -> None:
    try:
        host, port = split_listen(listen)
        ok = listen.rpartition(":")[2].isascii() and 0 <= port <= 65535
    except ValueError:
        ok = False
    if not ok:
        raise _err(f"listen must be host:port or [ipv6]:port (port 0-65535), got {listen!r}", "$.listen")
    if not _HOST.fullmatch(host):
        raise _err(f"listen host must be a name or an IP address, got {host!r}", "$.listen")


def _check_provider(p: ProviderConfig, at: str) -> None:
    if not valid_token(p.id):
        raise _err(
            f"provider id {p.id!r} cannot be a NATS subject token: no dots, spaces, '*' or '>'", f"{at}.id"
        )
    preset = _check_preset(p, at)
    if p.base_url is not None:
        _url(p.base_url, f"{at}.base_url")
    elif p.kind != "sim" and PRESETS[preset].base_url is None:
        raise _err(f"base_url is required: preset {preset!r} has no default address", f"{at}.base_url")
    if p.api_key is not None:
        _one_line(p.api_key, f"{at}.api_key")
    for name, value in p.headers.items():
        if not name or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise _err(f"{name!r} is not a valid HTTP header name", f"{at}.headers")
        _one_line(value, f"{at}.headers.{name}")
    if p.sim is not None:
        if p.kind != "sim":
            raise _err("sim settings are for kind sim only", f"{at}.sim")
        _check_sim(p.sim, f"{at}.sim")
    for model, price in p.price.items():
        _within(price.input_per_mtok, 0, 1e6, f"{at}.price.{model}.input_per_mtok")
        _within(price.output_per_mtok, 0, 1e6, f"{at}.price.{model}.output_per_mtok")
    for j, m in enumerate(p.models):
        if not m:
            raise _err("a model name must not be empty", f"{at}.models[{j}]")
    caps = p.capabilities
    if caps.max_n is not None and caps.max_n > 1 and caps.unsupported and "n" in caps.unsupported:
        raise _err(
            f"max_n {caps.max_n} contradicts `n` in capabilities.unsupported", f"{at}.capabilities.max_n"
        )


def _check_preset(p: ProviderConfig, at: str) -> str:
    """The preset ``p`` uses (its own or its kind's), known and of its kind."""
    valid = ", ".join(presets_for(p.kind))
    if p.preset is None:
        return p.kind
    profile = PRESETS.get(p.preset)
    if profile is None:
        raise _err(f"unknown preset {p.preset!r}; presets for kind {p.kind}: {valid}", f"{at}.preset")
    if profile.kind != p.kind:
        raise _err(
            f"preset {p.preset!r} is for kind {profile.kind}, not {p.kind}; presets for kind {p.kind}: {valid}",
            f"{at}.preset",
        )
    return p.preset


def _check_sim(sim: SimSettings, at: str) -> None:
    _within(sim.ttft_ms, 0, MAX_SECONDS * 1000, f"{at}.ttft_ms")
    _within(sim.tokens_per_s, 0, 1e9, f"{at}.tokens_per_s")
    _within(sim.failure_rate, 0, 1, f"{at}.failure_rate")
    _within(sim.max_tokens, 1, 1_000_000, f"{at}.max_tokens")
    _within(sim.embedding_dims, 1, 65_536, f"{at}.embedding_dims")


def _check_models(models: list[ModelRoute], ids: set[str]) -> None:
    names: set[str] = set()
    for i, m in enumerate(models):
        if not m.name:
            raise _err("a model name must not be empty", f"$.models[{i}].name")
        if m.name in names:
            raise _err(f"duplicate model name {m.name!r}", f"$.models[{i}].name")
        names.add(m.name)
        if not m.targets:
            raise _err("a model needs at least one target", f"$.models[{i}].targets")
        for j, t in enumerate(m.targets):
            at = f"$.models[{i}].targets[{j}]"
            if t.provider not in ids:
                raise _err(f"unknown provider {t.provider!r}", f"{at}.provider")
            if not t.model:
                raise _err("a target needs the provider's model name", f"{at}.model")
            _within(t.weight, 0, 1e9, f"{at}.weight")


def _check_keys(keys: list[KeyConfig]) -> None:
    seen: set[str] = set()
    for i, k in enumerate(keys):
        if any(c.isspace() for c in k.key):  # it would never match what a client sends
            raise _err("a key must contain no whitespace", f"$.keys[{i}].key")
        # An empty key is refused where a client could use it (open_gateway_error): the
        # compose config leaves it empty for the services that serve no HTTP.
        if k.key in seen:  # the secret itself is never echoed
            raise _err(f"key {k.name!r} repeats the secret of an earlier key", f"$.keys[{i}].key")
        seen.add(k.key)
        _within(k.budget_usd_per_month, 0, 1e12, f"$.keys[{i}].budget_usd_per_month")
        _within(k.rpm, 1, MAX_COUNT, f"$.keys[{i}].rpm")


_LIMIT_SECONDS = (
    "ack_timeout_s",
    "idle_timeout_s",
    "request_timeout_s",
    "header_timeout_s",
    "body_timeout_s",
)
_LIMIT_COUNTS = ("max_body_bytes", "max_in_flight")


def _check_limits(limits: Limits) -> None:
    for name in _LIMIT_SECONDS:
        value = getattr(limits, name)
        if not 0 < value <= MAX_SECONDS:  # NaN is never within
            raise _err(
                f"must be more than 0 and at most {MAX_SECONDS:g} seconds, got {value!r}", f"$.limits.{name}"
            )
    for name in _LIMIT_COUNTS:
        _within(getattr(limits, name), 1, MAX_COUNT, f"$.limits.{name}")


def _check_discovery(d: LocalDiscovery) -> None:
    valid = ", ".join(presets_for("openai"))
    for name, url in d.endpoints.items():
        if PRESETS.get(name) is None or PRESETS[name].kind != "openai":
            raise _err(
                f"unknown local server {name!r}; presets for kind openai: {valid}", "$.discovery.endpoints"
            )
        _url(url, f"$.discovery.endpoints.{name}")
    _within(d.timeout_s, 1e-3, 60, "$.discovery.timeout_s")


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _check_services(cfg: Config) -> None:
    if cfg.nats_url:
        for url in cfg.nats_url.split(","):
            _url(url.strip(), "$.nats_url", ("nats", "tls", "ws", "wss"))
    if not cfg.database.startswith(("sqlite:", "postgresql:", "postgres:")):
        raise _err(f"database must be sqlite:///PATH or postgresql://..., got {cfg.database!r}", "$.database")
    if cfg.log_level.lower() not in _LOG_LEVELS:
        raise _err(f"log_level must be one of {', '.join(_LOG_LEVELS)}, got {cfg.log_level!r}", "$.log_level")
    if cfg.data_dir is not None and Path(cfg.data_dir).exists() and not Path(cfg.data_dir).is_dir():
        raise _err(f"data_dir {cfg.data_dir!r} exists and is not a directory", "$.data_dir")
    exporter = cfg.tracing.exporter
    if exporter != "console":
        _url(exporter, "$.tracing.exporter")
        if cfg.tracing.enabled and not _importable(_OTLP):
            raise _err(f"an OTLP endpoint needs the package providing {_OTLP}", "$.tracing.exporter")


_OTLP = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


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
