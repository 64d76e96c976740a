"""deploy/: the Dockerfile, compose.yaml and the example config, checked without a Docker engine.

* The compose file's structure (a compact check against the Compose Specification's
  shape and Switchman's own needs), and ``docker compose config -q`` when a Compose v2
  CLI is installed (it needs no engine).
* The Dockerfile's instructions (base image, non-root user, HEALTHCHECK, CMD, ENV).
* The compose stack run as processes: a real nats-server stands in for the ``nats``
  service and every other service runs its compose ``command`` with its compose
  ``environment`` (plus the image's ENV), the worker twice for ``replicas: 2``. Only
  NATS_URL, SWITCHMAN_LISTEN, SWITCHMAN_CONFIG (the file compose mounts) and
  SWITCHMAN_DATA_DIR are pointed at this machine. The official ``openai`` SDK drives
  the ingress; both worker replicas must serve, one is SIGKILLed and the rest keeps
  serving, and SIGTERM drains everything to exit code 0.

``${VAR:-default}`` in the compose file is interpolated from an environment holding only
the client key ``SWITCHMAN_KEY`` (as ``docker compose`` with a minimal ``deploy/.env`` and
no provider keys exported), so no provider key of the machine leaks in.
``${VAR:?message}`` fails without the variable, as Compose does.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from libs.common import config as config_mod
from libs.common import registry
from tests import natsutil
from tests.natsutil import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
CONFIG_FILE = DEPLOY / "switchman.yaml"
APP_SERVICES = ("ingress", "router", "worker", "health", "ledger")
# The services that build the provider registry (registry.providers) and so need the keys.
REGISTRY_SERVICES = ("ingress", "router", "worker")
CONTAINER_NATS_URL = "nats://nats:4222"
ENV_EXAMPLE = DEPLOY / ".env.example"
# The client key a user puts in deploy/.env.
CLIENT_KEY = "sk-sw-compose-test"
USER_ENV = {"SWITCHMAN_KEY": CLIENT_KEY}

# -- the Compose Specification, compactly ------------------------------------------------

# Top-level and service keys of the Compose Specification (compose-spec.json).
TOP_LEVEL_KEYS = frozenset("version name include services networks volumes secrets configs models".split())
SERVICE_KEYS = frozenset(
    """
    annotations attach build blkio_config cap_add cap_drop cgroup cgroup_parent command configs
    container_name cpu_count cpu_percent cpu_shares cpu_quota cpu_period cpu_rt_period
    cpu_rt_runtime cpus cpuset credential_spec depends_on deploy develop device_cgroup_rules
    devices dns dns_opt dns_search domainname entrypoint env_file environment expose extends
    external_links extra_hosts gpus group_add healthcheck hostname image init ipc isolation labels
    links logging mac_address mem_limit mem_reservation mem_swappiness memswap_limit network_mode
    networks oom_kill_disable oom_score_adj pid pids_limit platform ports post_start pre_stop
    privileged profiles pull_policy read_only restart runtime scale secrets security_opt shm_size
    stdin_open stop_grace_period stop_signal storage_opt sysctls tmpfs tty ulimits user userns_mode
    uts volumes volumes_from working_dir
    """.split()
)
BUILD_KEYS = frozenset(
    """
    context dockerfile dockerfile_inline args ssh labels cache_from cache_to no_cache
    additional_contexts network pull target shm_size extra_hosts isolation privileged secrets tags
    ulimits platforms entitlements
    """.split()
)
HEALTHCHECK_KEYS = frozenset("disable interval retries test timeout start_period start_interval".split())
DEPENDS_ON_KEYS = frozenset("condition restart required".split())
CONDITIONS = frozenset("service_started service_healthy service_completed_successfully".split())
RESTART_POLICIES = frozenset("no always on-failure unless-stopped".split())
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$")
_NAME = re.compile(r"^[a-zA-Z0-9._-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Compose interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR.
_INTERP = re.compile(
    r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*)|(\{))"
)


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` without its variable: Compose stops with the message."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style ``${VAR:-default}`` interpolation of every string in ``value``."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1):
                return "$"
            if m.group(6):
                raise AssertionError(f"unsupported interpolation in compose value {value!r}")
            name, op, default = m.group(2) or m.group(5), m.group(3), m.group(4) or ""
            got = env.get(name)
            if op == ":-":
                return got if got else default
            if op == "-":
                return got if got is not None else default
            if (op == ":?" and not got) or (op == "?" and got is None):
                raise MissingVariable(f"required variable {name} is missing a value: {default}")
            return got or ""

        return _INTERP.sub(sub, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    return value


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())  # anchors and `<<` merge keys resolved here
    return interpolate(doc, USER_ENV if env is None else env)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment`` (mapping or ``KEY=VALUE`` list) as a dict; pass-through keys omitted."""
    env = service.get("environment") or {}
    out: dict[str, str] = {}
    if isinstance(env, dict):
        for k, v in env.items():
            if v is not None:
                out[str(k)] = str(v).lower() if isinstance(v, bool) else str(v)
    else:
        for item in env:
            k, sep, v = str(item).partition("=")
            if sep:
                out[k] = v
    return out


def argv_of(command: str | list[Any]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def seconds(duration: str) -> float:
    """A Compose duration ("1m30s", "40s", "500ms") in seconds."""
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    assert _DURATION.match(str(duration)), duration
    return sum(float(n) * units[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)(ns|us|ms|s|m|h)", str(duration)))


def healthcheck_argv(test: str | list[Any]) -> list[str]:
    """A healthcheck ``test`` as the argv the engine runs in the container."""
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    kind, *rest = (str(t) for t in test)
    if kind == "CMD":
        return rest
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(rest)]
    raise AssertionError(f"healthcheck test must start with CMD or CMD-SHELL, got {kind!r}")


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume entry, short or long syntax."""
    out = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            out.append((str(v.get("source", "")), str(v["target"])))
        else:
            parts = str(v).split(":")
            out.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return out


def compose_problems(doc: dict[str, Any]) -> list[str]:
    """Every way ``doc`` departs from the Compose Specification's structure (compactly)."""
    bad: list[str] = []
    for k in doc:
        if k not in TOP_LEVEL_KEYS and not str(k).startswith("x-"):
            bad.append(f"unknown top-level key {k!r}")
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        return [*bad, "no services"]
    declared_volumes = set((doc.get("volumes") or {}).keys())
    for name, svc in services.items():
        where = f"services.{name}"
        if not _NAME.match(name):
            bad.append(f"{where}: invalid service name")
        if not isinstance(svc, dict):
            bad.append(f"{where}: must be a mapping")
            continue
        for k in svc:
            if k not in SERVICE_KEYS and not str(k).startswith("x-"):
                bad.append(f"{where}: unknown key {k!r}")
        if "image" not in svc and "build" not in svc:
            bad.append(f"{where}: needs image or build")
        build = svc.get("build")
        if isinstance(build, dict):
            bad += [f"{where}.build: unknown key {k!r}" for k in build if k not in BUILD_KEYS]
        elif build is not None and not isinstance(build, str):
            bad.append(f"{where}.build: must be a string or a mapping")
        cmd = svc.get("command")
        if cmd is not None and not (isinstance(cmd, str) or all(isinstance(c, str) for c in cmd)):
            bad.append(f"{where}.command: must be a string or a list of strings")
        env = svc.get("environment")
        if isinstance(env, dict):
            for k, v in env.items():
                if not _ENV_NAME.match(str(k)):
                    bad.append(f"{where}.environment: bad name {k!r}")
                if v is not None and not isinstance(v, str | int | float | bool):
                    bad.append(f"{where}.environment.{k}: must be a scalar")
        elif env is not None and not isinstance(env, list):
            bad.append(f"{where}.environment: must be a mapping or a list")
        deps = svc.get("depends_on") or {}
        for dep, spec in deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps):
            if dep not in services:
                bad.append(f"{where}.depends_on: unknown service {dep!r}")
                continue
            if dep == name:
                bad.append(f"{where}.depends_on: depends on itself")
            if isinstance(deps, dict):
                bad += [
                    f"{where}.depends_on.{dep}: unknown key {k!r}" for k in spec if k not in DEPENDS_ON_KEYS
                ]
                cond = spec.get("condition")
                if cond not in CONDITIONS:
                    bad.append(
                        f"{where}.depends_on.{dep}: condition {cond!r} not one of {sorted(CONDITIONS)}"
                    )
                hc = services[dep].get("healthcheck") or {}
                if cond == "service_healthy" and (hc.get("disable") or not hc.get("test")):
                    bad.append(f"{where}.depends_on.{dep}: service_healthy but {dep} has no healthcheck")
        hc = svc.get("healthcheck")
        if hc is not None:
            bad += [f"{where}.healthcheck: unknown key {k!r}" for k in hc if k not in HEALTHCHECK_KEYS]
            for k in ("interval", "timeout", "start_period", "start_interval"):
                if k in hc and not _DURATION.match(str(hc[k])):
                    bad.append(f"{where}.healthcheck.{k}: {hc[k]!r} is not a duration")
            if "retries" in hc and not (isinstance(hc["retries"], int) and hc["retries"] > 0):
                bad.append(f"{where}.healthcheck.retries: must be a positive integer")
            if not hc.get("disable"):
                test = hc.get("test")
                if not test or (isinstance(test, list) and test[0] not in ("CMD", "CMD-SHELL", "NONE")):
                    bad.append(f"{where}.healthcheck.test: must be a string or start with CMD/CMD-SHELL/NONE")
        if "stop_grace_period" in svc and not _DURATION.match(str(svc["stop_grace_period"])):
            bad.append(f"{where}.stop_grace_period: not a duration")
        if "restart" in svc and str(svc["restart"]).split(":")[0] not in RESTART_POLICIES:
            bad.append(f"{where}.restart: {svc['restart']!r}")
        deploy = svc.get("deploy") or {}
        if "replicas" in deploy and not (isinstance(deploy["replicas"], int) and deploy["replicas"] >= 0):
            bad.append(f"{where}.deploy.replicas: must be a non-negative integer")
        if deploy.get("replicas", 1) != 1 and "container_name" in svc:
            bad.append(f"{where}: container_name cannot be used with several replicas")
        for p in svc.get("ports") or []:
            if not re.match(r"^((\d{1,3}\.){3}\d{1,3}:)?(\d+(-\d+)?:)?\d+(-\d+)?(/(tcp|udp))?$", str(p)):
                bad.append(f"{where}.ports: bad entry {p!r}")
        for source, target in volume_mounts(svc):
            if not target.startswith("/"):
                bad.append(f"{where}.volumes: target {target!r} is not absolute")
            if source and not source.startswith(("/", ".", "~")) and source not in declared_volumes:
                bad.append(f"{where}.volumes: named volume {source!r} is not declared at the top level")
    return bad


# -- the Dockerfile -------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#") or (not s and not buf):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, args = buf.partition(" ")
        out.append((word.upper(), args.strip()))
        buf = ""
    return out


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in instructions:
        if word == "ENV":
            for token in shlex.split(args):
                k, sep, v = token.partition("=")
                assert sep, f"use ENV KEY=VALUE, got {token!r}"
                env[k] = v
    return env


def healthcheck_cmd(args: str) -> list[str]:
    """The exec-form command of ``HEALTHCHECK [--options] CMD [...]``."""
    _, sep, cmd = args.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {args!r}"
    return json.loads(cmd)


def image_python(argv: list[str]) -> list[str]:
    """Run an argv meant for the image with this interpreter (which has the project installed)."""
    assert argv, "empty command"
    if argv[0] in ("python", "python3", "/usr/local/bin/python"):
        return [sys.executable, *argv[1:]]
    return argv


# -- static checks ------------------------------------------------------------------------------


def test_compose_file_structure() -> None:
    doc = load_compose()
    assert compose_problems(doc) == []
    services = doc["services"]
    assert set(services) == {"nats", *APP_SERVICES}

    nats = services["nats"]
    assert str(nats["image"]).startswith("nats:2.10")
    nats_cmd = argv_of(nats["command"])
    assert "-js" in nats_cmd
    store = nats_cmd[nats_cmd.index("-sd") + 1]
    assert store in {t for _, t in volume_mounts(nats)}, "the JetStream store must be on a volume"
    monitor = nats_cmd[nats_cmd.index("-m") + 1]
    probe = " ".join(healthcheck_argv(nats["healthcheck"]["test"]))
    assert f":{monitor}/healthz" in probe and "wget" in probe

    images = {services[n]["image"] for n in APP_SERVICES}
    assert len(images) == 1, f"one image for every Switchman service, got {images}"
    for name in APP_SERVICES:
        svc = services[name]
        build = svc["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT, f"{name}: build context {context} is not the repository root"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        assert argv_of(svc["command"]) == ["python", "-m", f"services.{name}"]
        assert importlib.util.find_spec(f"services.{name}.__main__") is not None
        assert svc["restart"] == "unless-stopped"
        assert svc["depends_on"] == {"nats": {"condition": "service_healthy"}}
        env = env_of(svc)
        assert env["NATS_URL"] == CONTAINER_NATS_URL
        # The config compose mounts is deploy/switchman.yaml, at SWITCHMAN_CONFIG.
        mounted = {t: s for s, t in volume_mounts(svc)}
        assert env["SWITCHMAN_CONFIG"] in mounted, f"{name}: SWITCHMAN_CONFIG is not a mounted file"
        assert (DEPLOY / mounted[env["SWITCHMAN_CONFIG"]]).resolve() == CONFIG_FILE
        if name in REGISTRY_SERVICES:
            # Every provider key the registry knows passes through, empty when unset.
            missing = set(registry.ENV_KEYS) - set(env)
            assert not missing, f"{name}: provider keys not passed through: {sorted(missing)}"
            assert all(env[k] == "" for k in registry.ENV_KEYS)
        hc = svc["healthcheck"]
        if name != "ingress":
            assert hc == {"disable": True}, f"{name} serves no HTTP: the image's /healthz probe must be off"

    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    for k in registry.ENV_KEYS:  # passthrough as ${KEY:-}
        assert env_of(raw["services"]["worker"])[k] == f"${{{k}:-}}"
    exported = load_compose({**USER_ENV, "OPENAI_API_KEY": "sk-from-shell"})["services"]
    assert all(env_of(exported[n])["OPENAI_API_KEY"] == "sk-from-shell" for n in REGISTRY_SERVICES)

    ingress = services["ingress"]
    assert [str(p) for p in ingress["ports"]] == ["127.0.0.1:8080:8080"], "published on loopback only"
    assert env_of(ingress)["SWITCHMAN_LISTEN"] == "0.0.0.0:8080"
    probe = healthcheck_argv(ingress["healthcheck"]["test"])
    assert probe[0] == "python" and "/healthz" in " ".join(probe)
    assert services["worker"]["deploy"]["replicas"] == 2
    ledger_mounts = {t for _, t in volume_mounts(services["ledger"])}
    assert env_of(services["ledger"]).get("SWITCHMAN_DATA_DIR", "/data") in ledger_mounts
    # On SIGTERM a worker finishes in-flight upstream calls for up to limits.idle_timeout_s:
    # compose must wait longer than that before its SIGKILL.
    cfg = config_mod.parse(yaml.safe_load(CONFIG_FILE.read_text()), env={})
    assert seconds(services["worker"].get("stop_grace_period", "10s")) > cfg.limits.idle_timeout_s


def test_compose_problems_catches_mistakes() -> None:
    """The structural check is not vacuous: typical mistakes are reported."""
    doc = load_compose()
    svcs = doc["services"]
    svcs["router"]["depend_on"] = ["nats"]
    svcs["worker"]["depends_on"] = {"natz": {"condition": "service_healthy"}}
    svcs["health"]["depends_on"] = {"router": {"condition": "service_healthy"}}
    svcs["ledger"]["healthcheck"] = {"test": ["RUN", "true"], "interval": "5 seconds"}
    svcs["ledger"]["volumes"] = ["undeclared:/data"]
    doc["servics"] = {}
    text = "\n".join(compose_problems(doc))
    for needle in (
        "unknown top-level key 'servics'",
        "services.router: unknown key 'depend_on'",
        "unknown service 'natz'",
        "service_healthy but router has no healthcheck",
        "healthcheck.interval",
        "healthcheck.test",
        "named volume 'undeclared'",
    ):
        assert needle in text, f"{needle!r} not reported in:\n{text}"


def _compose_cli() -> tuple[list[str], bool] | None:
    """(argv prefix, is_v1) of a Compose CLI that runs here, or None."""
    if shutil.which("docker"):
        r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
        if r.returncode == 0:
            return ["docker", "compose"], False
    if shutil.which("docker-compose"):
        r = subprocess.run(
            ["docker-compose", "version", "--short"], capture_output=True, text=True, timeout=30
        )
        if r.returncode == 0:
            return ["docker-compose"], r.stdout.strip().lstrip("v").startswith("1.")
    return None


def test_docker_compose_config(tmp_path: Path) -> None:
    """``docker compose config -q`` parses and validates the file without an engine."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose CLI: neither `docker compose` (v2 plugin) nor `docker-compose` is installed")
    prefix, v1 = cli
    path = COMPOSE_FILE
    if v1:
        # Compose 1.x predates the specification's top-level `name`; validate the rest.
        path = tmp_path / "compose.yaml"
        path.write_text(re.sub(r"(?m)^name:.*$", "", COMPOSE_FILE.read_text()))
    env = {k: v for k, v in os.environ.items() if k not in registry.ENV_KEYS and k != "SWITCHMAN_KEY"}
    # An empty --env-file: a deploy/.env on this machine must not fill in the key.
    (tmp_path / "empty.env").write_text("")
    argv = [*prefix, "-f", str(path), "--project-directory", str(DEPLOY)]
    argv += ["--env-file", str(tmp_path / "empty.env"), "config", "-q"]

    def config_q(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=60, env={**env, **extra}, cwd=DEPLOY
        )

    r = config_q(USER_ENV)
    assert r.returncode == 0, f"{' '.join(prefix)} config -q failed:\n{r.stdout}\n{r.stderr}"
    r = config_q({})
    assert r.returncode != 0 and "SWITCHMAN_KEY" in r.stderr, "compose must refuse to start without a key"


def test_dockerfile() -> None:
    ins = dockerfile_instructions(DOCKERFILE.read_text())
    words = [w for w, _ in ins]
    args = {w: [a for x, a in ins if x == w] for w in words}
    assert args["FROM"] == ["python:3.11-slim"]
    env = dockerfile_env(ins)
    assert env["SWITCHMAN_CONFIG"] == "/etc/switchman/switchman.yaml"
    assert any("pip install" in a for a in args["RUN"])
    # The default config lands where SWITCHMAN_CONFIG points; every COPY source exists.
    copies = [shlex.split(a) for a in args["COPY"]]
    assert ["deploy/switchman.yaml", env["SWITCHMAN_CONFIG"]] in copies
    for *sources, _dest in copies:
        sources = [s for s in sources if not s.startswith("--")]
        assert any(list(ROOT.glob(s)) for s in sources), f"COPY {sources}: nothing in the build context"
    user = args["USER"][-1].split(":")[0]
    assert user not in ("root", "0"), "the image must not run as root"
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN"), "USER after the last RUN"
    assert "8080" in " ".join(args["EXPOSE"]).split()
    assert json.loads(args["CMD"][-1]) == ["switchman", "up"]
    probe = healthcheck_cmd(args["HEALTHCHECK"][-1])
    assert probe[:2] == ["python", "-c"] and "/healthz" in probe[2]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["switchman"] == "services.__main__:main"


def test_example_config() -> None:
    data = yaml.safe_load(CONFIG_FILE.read_text())
    cfg = config_mod.parse(data, env={})
    assert cfg.listen == "0.0.0.0:8080"
    assert cfg.sim_models and cfg.env_providers
    assert not cfg.discovery.enabled, "nothing to discover on 127.0.0.1 inside a container"
    assert cfg.nats_url is None, "NATS_URL comes from compose"
    assert cfg.database == "sqlite:////data/switchman.db"
    assert config_mod.parse(data, env={"SWITCHMAN_DATA_DIR": "/x"}).database == "sqlite:////x/switchman.db"

    def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHMAN_")}
        return subprocess.run(
            [sys.executable, "-m", "services", "check-config", str(CONFIG_FILE)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**base, "PYTHONPATH": str(ROOT), **env},
        )

    r = check_config(USER_ENV)
    assert r.returncode == 0, r.stderr
    r = check_config({})  # listening on 0.0.0.0 in the container: the key is not optional
    assert r.returncode == 2 and "keys[0].key" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_compose_is_secure_by_default() -> None:
    """Published on the host's loopback, a client key required, and the key from deploy/.env."""
    with pytest.raises(MissingVariable, match="SWITCHMAN_KEY"):
        load_compose({})  # `docker compose up` without the key stops before anything runs
    ingress = load_compose()["services"]["ingress"]
    assert [str(p) for p in ingress["ports"]] == ["127.0.0.1:8080:8080"]
    opened = load_compose({**USER_ENV, "SWITCHMAN_PUBLISH": "0.0.0.0"})["services"]["ingress"]
    assert [str(p) for p in opened["ports"]] == ["0.0.0.0:8080:8080"]
    env = env_of(ingress)
    assert env["SWITCHMAN_KEY"] == CLIENT_KEY

    # The mounted config turns the key into a client key; the ingress listens on 0.0.0.0
    # inside its container, so without a key it refuses to start.
    data = yaml.safe_load(CONFIG_FILE.read_text())
    cfg = config_mod.parse(data, env=env)
    assert cfg.host_port[0] == "0.0.0.0" and not cfg.allow_open_gateway
    assert [k.key for k in cfg.keys] == [CLIENT_KEY]
    assert config_mod.open_gateway_error(cfg) is None
    without = config_mod.parse(data, env={})
    assert config_mod.open_gateway_error(without) is not None
    assert config_mod.open_gateway_error(msgspec.structs.replace(without, keys=[])) is not None

    # deploy/.env.example names every variable compose reads; the real .env stays out of git and the image.
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    referenced = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))
    assert referenced <= set(example), sorted(referenced - set(example))
    assert example["SWITCHMAN_KEY"] == "", "no usable default key: compose must make the user set one"
    assert "deploy/.env" in (ROOT / ".gitignore").read_text().split()
    assert "**/.env" in (DEPLOY / "Dockerfile.dockerignore").read_text().split()


def test_nats_service_command(tmp_path: Path) -> None:
    """The nats service's command runs on a real nats-server, and its healthcheck URL answers."""
    binary = natsutil.find_nats_server()
    if binary is None:
        pytest.skip("no nats-server binary")
    nats = load_compose()["services"]["nats"]
    cmd = argv_of(nats["command"])
    client_port, monitor_port = free_port(), free_port()
    cmd[cmd.index("-sd") + 1] = str(tmp_path / "store")
    cmd[cmd.index("-m") + 1] = str(monitor_port)
    conf = cmd[cmd.index("-c") + 1]  # mounted from deploy/: run it from there
    host_conf = next(src for src, target in volume_mounts(nats) if target == conf)
    cmd[cmd.index("-c") + 1] = str(COMPOSE_FILE.parent / host_conf)
    probe = healthcheck_argv(nats["healthcheck"]["test"])
    url = next(a for a in probe if a.startswith("http")).replace(":8222/", f":{monitor_port}/")
    with open(tmp_path / "nats.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, *cmd, "-a", "127.0.0.1", "-p", str(client_port)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        natsutil.wait_for_nats("127.0.0.1", client_port, 15, proc)
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    assert r.status == 200
                    assert json.loads(r.read()) == {"status": "ok"}
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        varz = url.replace("/healthz", "/varz")
        with urllib.request.urlopen(varz, timeout=2) as r:
            assert json.loads(r.read())["max_payload"] == 8 * 1024 * 1024  # multi-MB bodies cross the bus
    finally:
        proc.terminate()
        proc.wait(10)
    assert (tmp_path / "store" / "jetstream").is_dir(), (tmp_path / "nats.log").read_text()


# -- the stack as processes ----------------------------------------------------------------------


@dataclass
class ServiceProc:
    name: str
    replica: int
    argv: list[str]
    env: dict[str, str]
    out: Path
    err: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def label(self) -> str:
        return f"{self.name}.{self.replica}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, cwd: Path) -> None:
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=cwd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.err.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if isinstance(ev, dict):
                    out.append(ev)
        return out


class Stack:
    """The compose services as local processes around a test nats-server."""

    def __init__(self, compose: dict[str, Any], nats_url: str, tmp: Path) -> None:
        self.compose = compose
        self.nats_url = nats_url
        self.port = free_port()
        self.tmp = tmp
        self.image_env = dockerfile_env(dockerfile_instructions(DOCKERFILE.read_text()))
        self.procs: list[ServiceProc] = []
        (tmp / "logs").mkdir()
        (tmp / "home").mkdir()
        (tmp / "workdir").mkdir()

    def env_for(self, service: dict[str, Any]) -> dict[str, str]:
        """A container's environment: the image's ENV, then the service's, with local addresses."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.tmp / "home"),
            "LANG": "C.UTF-8",
            # What `pip install .` is to the image: this checkout's code.
            "PYTHONPATH": str(ROOT),
            **self.image_env,
            **env_of(service),
        }
        assert env["NATS_URL"] == CONTAINER_NATS_URL
        env["NATS_URL"] = self.nats_url
        env["SWITCHMAN_LISTEN"] = f"127.0.0.1:{self.port}"
        mounted = {t: s for s, t in volume_mounts(service)}
        env["SWITCHMAN_CONFIG"] = str((DEPLOY / mounted[env["SWITCHMAN_CONFIG"]]).resolve())
        env["SWITCHMAN_DATA_DIR"] = str(self.tmp / "data")
        return env

    def start(self) -> None:
        cfg = config_mod.parse(yaml.safe_load(CONFIG_FILE.read_text()), env={})
        assert not cfg.discovery.enabled  # otherwise this machine's local model servers would join in
        services = self.compose["services"]
        for name in APP_SERVICES:
            svc = services[name]
            for i in range((svc.get("deploy") or {}).get("replicas", 1)):
                p = ServiceProc(
                    name,
                    i,
                    image_python(argv_of(svc["command"])),
                    self.env_for(svc),
                    self.tmp / "logs" / f"{name}.{i}.out",
                    self.tmp / "logs" / f"{name}.{i}.err",
                )
                p.start(self.tmp / "workdir")
                self.procs.append(p)

    def by_name(self, name: str) -> list[ServiceProc]:
        return [p for p in self.procs if p.name == name]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def check_alive(self) -> None:
        dead = [p for p in self.procs if not p.alive()]
        assert not dead, "exited early: " + ", ".join(
            f"{p.label} ({p.proc.returncode})" for p in dead if p.proc
        )

    async def wait_started(self, timeout: float = 30.0) -> None:
        """Until every process logged service_started (the lifecycle's own signal)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            waiting = [
                p.label
                for p in self.procs
                if not any(
                    e.get("event") == "service_started" and e.get("name") == p.name for e in p.events()
                )
            ]
            if not waiting:
                return
            assert time.monotonic() < deadline, f"not started after {timeout}s: {waiting}"
            await asyncio.sleep(0.1)

    async def probe(self, argv: list[str], env: dict[str, str], timeout: float) -> int:
        proc = await asyncio.create_subprocess_exec(
            *image_python(argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            return await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return -1

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until the ingress's compose healthcheck (its own probe, in its own env) passes."""
        ingress = self.by_name("ingress")[0]
        probe = healthcheck_argv(self.compose["services"]["ingress"]["healthcheck"]["test"])
        deadline = time.monotonic() + timeout
        while await self.probe(probe, ingress.env, 10) != 0:
            self.check_alive()
            assert time.monotonic() < deadline, f"ingress healthcheck not passing after {timeout}s"
            await asyncio.sleep(0.2)

    def dump(self) -> str:
        return "\n".join(
            f"===== {p.label} (pid {p.proc.pid if p.proc else '-'}, "
            f"rc {p.proc.poll() if p.proc else '-'})\n{p.logs()[-6000:]}"
            for p in self.procs
        )

    def terminate_all(self, timeout: float = 10.0) -> dict[str, int | None]:
        """SIGTERM to every live process at once (like `docker compose stop`), then their exit codes."""
        live = [p for p in self.procs if p.alive()]
        for p in live:
            assert p.proc is not None
            p.proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for p in live:
            assert p.proc is not None
            try:
                codes[p.label] = p.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[p.label] = None
        return codes

    def kill_all(self) -> None:
        for p in self.procs:
            if p.alive():
                assert p.proc is not None
                p.proc.kill()
                p.proc.wait(10)


def worker_pid(worker_id: str) -> int:
    """The pid inside a worker id (``<host>-<pid>-<random>``, libs.common.service.process_id)."""
    return int(worker_id.rsplit("-", 2)[1])


class BusWatch:
    """Watches the bus: which worker acked each request (its inbox frames), and worker heartbeats."""

    def __init__(self) -> None:
        self.acks: list[str] = []
        self.heartbeats: set[str] = set()
        self.nc: Any = None

    async def start(self, url: str) -> None:
        import nats

        from libs.common import contracts, subjects

        async def on_frame(msg: Any) -> None:
            data = msg.data
            if data[:1] == b"A":  # the worker's ack names the worker
                self.acks.append(contracts.ack_decoder.decode(data[contracts.HEADER_SIZE :]).worker)

        async def on_heartbeat(msg: Any) -> None:
            self.heartbeats.add(contracts.heartbeat_decoder.decode(msg.data).worker)

        self.nc = await nats.connect(url, name="test-compose-watch")
        await self.nc.subscribe(subjects.INBOX_PREFIX + ">", cb=on_frame)
        await self.nc.subscribe(subjects.WORKER_HEARTBEAT, cb=on_heartbeat)
        await self.nc.flush()
        # Workers answer a catalog request with their catalog and a heartbeat.
        await self.nc.publish(subjects.CATALOG_REQUEST, b"")
        await self.nc.flush()

    async def wait_workers(self, pids: set[int], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while {worker_pid(w) for w in self.heartbeats} < pids:
            assert time.monotonic() < deadline, f"heartbeats only from {self.heartbeats}, want pids {pids}"
            await asyncio.sleep(0.05)

    async def wait_acks(self, n: int, timeout: float = 5.0) -> list[str]:
        """The acks seen, once there are ``n`` (the watcher may see a frame after the client's response)."""
        await self.nc.flush()
        deadline = time.monotonic() + timeout
        while True:
            if len(self.acks) >= n or time.monotonic() > deadline:
                return list(self.acks)
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self.nc is not None:
            await self.nc.close()


@pytest.fixture
async def stack(nats_server_fn: Any, tmp_path: Path) -> Any:
    s = Stack(load_compose(), nats_server_fn.url, tmp_path)
    try:
        s.start()
        yield s
    finally:
        s.kill_all()
        print(s.dump())  # pytest shows it when the test failed


async def _chat(client: Any, i: int, stream: bool = False) -> str:
    messages = [{"role": "user", "content": f"request {i}"}]
    if stream:
        text = ""
        async for chunk in await client.chat.completions.create(
            model="sim-fast", messages=messages, max_tokens=4, stream=True
        ):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        return text
    resp = await client.chat.completions.create(model="sim-fast", messages=messages, max_tokens=4)
    return resp.choices[0].message.content or ""


async def test_compose_stack_as_processes(stack: Stack) -> None:
    import openai

    from tests.schema import validate, validate_sse_chunks

    workers = stack.by_name("worker")
    assert len(workers) == 2, "worker runs with replicas: 2"
    watch = BusWatch()
    client = openai.AsyncOpenAI(base_url=stack.base_url, api_key=CLIENT_KEY, max_retries=0)
    try:
        # The probes fail while nothing listens (they can fail at all) ...
        dead_env = {**stack.by_name("ingress")[0].env, "SWITCHMAN_LISTEN": f"127.0.0.1:{free_port()}"}
        ingress_probe = healthcheck_argv(stack.compose["services"]["ingress"]["healthcheck"]["test"])
        image_probe = healthcheck_cmd(dict(dockerfile_instructions(DOCKERFILE.read_text()))["HEALTHCHECK"])
        assert await stack.probe(ingress_probe, dead_env, 10) != 0
        assert await stack.probe(image_probe, dead_env, 10) != 0
        # ... and pass once the ingress is up: compose's probe and the image's HEALTHCHECK.
        await stack.wait_started()
        await stack.wait_healthy()
        assert await stack.probe(image_probe, stack.by_name("ingress")[0].env, 10) == 0
        await watch.start(stack.nats_url)
        await watch.wait_workers({w.pid for w in workers})

        models = await client.models.list()
        ids = {m.id for m in models.data}
        assert {"sim-fast", "sim-cheap", "sim-smart"} <= ids, ids
        async with openai.AsyncOpenAI(base_url=stack.base_url, api_key="sk-wrong", max_retries=0) as other:
            with pytest.raises(openai.AuthenticationError):  # the compose key is required
                await other.models.list()

        raw = await client.chat.completions.with_raw_response.create(
            model="sim-fast", messages=[{"role": "user", "content": "hello compose"}], max_tokens=8
        )
        assert raw.http_response.status_code == 200
        assert raw.headers["x-switchman-provider"] == "sim-fast"
        completion = raw.parse()
        validate("CreateChatCompletionResponse", completion.model_dump(exclude_unset=True))
        assert completion.choices[0].message.content

        raw_stream = await client.chat.completions.with_raw_response.create(
            model="sim-fast",
            messages=[{"role": "user", "content": "stream compose"}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        assert raw_stream.headers["x-switchman-provider"] == "sim-fast"
        assert raw_stream.headers["content-type"].startswith("text/event-stream")
        chunks = [c.model_dump(exclude_unset=True) async for c in raw_stream.parse()]
        validate_sse_chunks(chunks)
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])

        # Both replicas serve: the worker id in each ack frame names the worker's pid.
        watch.acks.clear()
        texts = await asyncio.gather(*(_chat(client, i, stream=i % 3 == 0) for i in range(30)))
        assert all(texts)
        served = Counter(worker_pid(w) for w in await watch.wait_acks(30))
        assert sum(served.values()) == 30, served
        assert set(served) == {w.pid for w in workers}, (
            f"acks by pid {served}, workers {[w.pid for w in workers]}"
        )

        # One replica crashes (SIGKILL): the other keeps serving every request.
        victim, survivor = workers
        assert victim.proc is not None
        victim.proc.kill()
        assert victim.proc.wait(10) == -signal.SIGKILL
        await asyncio.sleep(0.5)  # the server notices the closed connection and drops its queue member
        watch.acks.clear()
        for i in range(10):
            assert await _chat(client, 100 + i, stream=i % 2 == 0)
        acks = await watch.wait_acks(10)
        assert len(acks) == 10 and {worker_pid(w) for w in acks} == {survivor.pid}, acks
        rest = [p for p in stack.procs if p is not victim]
        assert all(p.alive() for p in rest)

        # SIGTERM to everything while a stream is in flight: the stream still completes
        # (the same text as before), then every process exits 0 within 10 s.
        slow = {"model": "sim-smart", "messages": [{"role": "user", "content": "drain me"}], "max_tokens": 48}
        expected = (await client.chat.completions.create(**slow)).choices[0].message.content
        assert expected
        stream = await client.chat.completions.create(**slow, stream=True)
        chunks = stream.__aiter__()
        first = await chunks.__anext__()  # the request is in the worker now
        text = first.choices[0].delta.content or "" if first.choices else ""
        stopping = asyncio.create_task(asyncio.to_thread(stack.terminate_all, 10))
        finish = None
        async for chunk in chunks:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        codes = await stopping
    finally:
        await client.close()
        await watch.stop()

    assert text == expected and finish is not None, (text, expected, finish)
    assert codes == {p.label: 0 for p in rest}, codes
    for p in rest:
        assert "Traceback" not in p.logs(), p.label
        errors = [e for e in p.events() if e.get("level") == "error"]
        assert not errors, f"{p.label} logged errors: {errors}"
