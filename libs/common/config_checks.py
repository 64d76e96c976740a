"""What the configuration's types cannot say: the semantic checks of a parsed Config.

Every mistake `switchman up` would trip over later (an unknown preset, a provider id
that cannot be a NATS subject token, a negative limit, a route to nowhere, a key with
whitespace) is a one-line :class:`~libs.common.config.ConfigError` naming the field.
Numbers have sane bounds: timeouts are seconds in (0, 1 day], counts 1 to 2**31-1.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from urllib.parse import urlsplit

from .config import (
    MAX_COUNT,
    MAX_SECONDS,
    Config,
    ConfigError,
    KeyConfig,
    Limits,
    LocalDiscovery,
    ModelRoute,
    ProviderConfig,
    SimSettings,
    split_listen,
)
from .profiles import PRESETS, presets_for
from .subjects import valid_token


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


def check(cfg: Config) -> None:
    """Raise ConfigError naming the field of the first mistake in ``cfg``."""
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
