"""Secure by default: no ingress beyond loopback without client keys, unless the config opts in."""

from __future__ import annotations

import os
import subprocess
import sys

import msgspec
import pytest

from libs.common.config import Config, ConfigError, is_loopback, load, open_gateway_error, parse
from tests.gateway import ROOT

KEY = {"key": "sk-1", "name": "team"}


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("LocalHost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("[::]", False),
        ("192.168.1.10", False),
        ("10.0.0.1", False),
        ("myhost.example", False),
        ("", False),
    ],
)
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "192.168.1.10:8080", "[::]:8080", "gateway.lan:80"])
def test_beyond_loopback_without_keys_is_refused(listen):
    problem = open_gateway_error(parse({"listen": listen}, env={}))
    assert problem is not None and "\n" not in problem
    for way_out in ("keys", "127.0.0.1", "allow_open_gateway: true", "SWITCHMAN_ALLOW_OPEN_GATEWAY"):
        assert way_out in problem
    assert listen in problem


@pytest.mark.parametrize(
    "data",
    [
        {},  # the default listen is 127.0.0.1:8080
        {"listen": "localhost:8080"},
        {"listen": "127.0.0.2:9000"},
        {"listen": "[::1]:8080"},
        {"listen": "0.0.0.0:8080", "keys": [KEY]},
        {"listen": "0.0.0.0:8080", "allow_open_gateway": True},
    ],
)
def test_allowed(data):
    assert open_gateway_error(parse(data, env={})) is None


def test_an_empty_client_key_is_refused_even_on_loopback():
    cfg = parse({"keys": [{"key": "${K:-}", "name": "team"}]}, env={})
    problem = open_gateway_error(cfg)
    assert problem is not None and "keys[0].key" in problem and "team" in problem


def test_the_setting_defaults_to_off():
    assert "allow_open_gateway" in {f.name for f in msgspec.structs.fields(Config)}
    assert Config().allow_open_gateway is False


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("1", True), ("yes", True), ("false", False)]
)
def test_env_override(monkeypatch, value, expected):
    for name in ("SWITCHMAN_CONFIG", "NATS_URL", "SWITCHMAN_LISTEN", "SWITCHMAN_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SWITCHMAN_ALLOW_OPEN_GATEWAY", value)
    assert load().allow_open_gateway is expected


def test_env_override_must_be_a_boolean(monkeypatch):
    monkeypatch.delenv("SWITCHMAN_CONFIG", raising=False)
    monkeypatch.setenv("SWITCHMAN_ALLOW_OPEN_GATEWAY", "maybe")
    with pytest.raises(ConfigError, match="SWITCHMAN_ALLOW_OPEN_GATEWAY"):
        load()


def test_check_config_reports_it(tmp_path):
    path = tmp_path / "open.yaml"
    path.write_text("listen: 0.0.0.0:8080\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHMAN_") and k != "NATS_URL"}
    cmd = [sys.executable, "-m", "services", "check-config", str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert r.returncode == 2 and "allow_open_gateway" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "SWITCHMAN_ALLOW_OPEN_GATEWAY": "1"},
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
