"""No configuration, however wrong, gives a traceback.

Every wrong config below goes through `switchman check-config` and through the load
path `switchman up` takes (``load_or_exit``): exit code 2, one line
``switchman: configuration error: ...`` naming the field (or the file and line), no
traceback. A sample also runs as real processes (`switchman check-config`,
`switchman up` with its embedded nats-server) to see what a user sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from libs.common.service import load_or_exit
from services.__main__ import main

ROOT = Path(__file__).resolve().parents[2]

P = "providers:\n  - id: p\n    kind: openai\n"  # a valid provider to add fields to
S = "providers:\n  - id: s\n    kind: sim\n"
M = P + "models:\n  - name: m\n    targets: [{provider: p, model: x}]\n"

# name -> (YAML text, what the message must contain)
CASES: dict[str, tuple[str | bytes, str]] = {
    # -- the document -----------------------------------------------------------------------
    "list at top": ("- a\n- b\n", "mapping"),
    "text at top": ("just text\n", "mapping"),
    "bad yaml": ("providers: [\n  - id: x\n", ".yaml:2:3: invalid YAML"),
    "tab indentation": ("providers:\n\t- id: x\n", ".yaml:2:1: invalid YAML"),
    "duplicate key": ("listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n", ".yaml:2:1: invalid YAML"),
    "not utf-8": (b"listen: \xff\xfe\n", "not UTF-8"),
    "deep nesting": ("a: " + "[" * 1200 + "]" * 1200 + "\n", "invalid YAML"),
    "billion laughs": (
        "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
        + "".join(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True)
        )
        + "bogus: *h\n",
        "more than",
    ),
    "unknown top-level": ("listn: 127.0.0.1:1\n", "listn"),
    "unset env": ("listen: ${SW_TEST_SURELY_UNSET}\n", "$.listen"),
    # -- top-level fields ---------------------------------------------------------------------
    "listen int": ("listen: 8080\n", "$.listen"),
    "listen null": ("listen:\n", "$.listen"),
    "listen no port": ("listen: nope\n", "$.listen"),
    "listen port range": ("listen: host:99999\n", "$.listen"),
    "listen space": ("listen: 'a b:80'\n", "$.listen"),
    "listen bare ipv6": ("listen: '::1:8080'\n", "$.listen"),
    "listen unicode port": ("listen: 'h:٨٠'\n", "$.listen"),
    "nats_url no scheme": ("nats_url: localhost:4222\n", "$.nats_url"),
    "nats_url int": ("nats_url: 42\n", "$.nats_url"),
    "database scheme": ("database: mysql://x/y\n", "$.database"),
    "database list": ("database: [1]\n", "$.database"),
    "sim_models word": ("sim_models: maybe\n", "$.sim_models"),
    "env_providers list": ("env_providers: [1]\n", "$.env_providers"),
    "log_level": ("log_level: loud\n", "$.log_level"),
    "tracing string": ("tracing: 'on'\n", "$.tracing"),
    "tracing exporter": ("tracing: {enabled: true, exporter: nowhere}\n", "$.tracing.exporter"),
    "providers map": ("providers: {id: p}\n", "$.providers"),
    "providers null": ("providers:\n", "$.providers"),
    "provider null": ("providers: [null]\n", "$.providers[0]"),
    "provider list": ("providers: [[1, 2]]\n", "$.providers[0]"),
    "models string": ("models: m\n", "$.models"),
    "keys map": ("keys: {a: 1}\n", "$.keys"),
    "limits list": ("limits: []\n", "$.limits"),
    "limits null": ("limits:\n", "$.limits"),
    "limits unknown": ("limits: {max_body: 1}\n", "max_body"),
    "max_in_flight negative": ("limits: {max_in_flight: -1}\n", "$.limits.max_in_flight"),
    "max_in_flight zero": ("limits: {max_in_flight: 0}\n", "$.limits.max_in_flight"),
    "max_in_flight huge": ("limits: {max_in_flight: 100000000000000000000000}\n", "$.limits.max_in_flight"),
    "max_body_bytes word": ("limits: {max_body_bytes: big}\n", "$.limits.max_body_bytes"),
    "max_body_bytes zero": ("limits: {max_body_bytes: 0}\n", "$.limits.max_body_bytes"),
    "ack timeout zero": ("limits: {ack_timeout_s: 0}\n", "$.limits.ack_timeout_s"),
    "idle timeout negative": ("limits: {idle_timeout_s: -5}\n", "$.limits.idle_timeout_s"),
    "request timeout inf": ("limits: {request_timeout_s: .inf}\n", "$.limits.request_timeout_s"),
    "request timeout nan": ("limits: {request_timeout_s: .nan}\n", "$.limits.request_timeout_s"),
    "discovery unknown server": ("discovery: {endpoints: {nosuch: 'http://x'}}\n", "$.discovery.endpoints"),
    "discovery bad url": ("discovery: {endpoints: {ollama: 'not a url'}}\n", "$.discovery.endpoints.ollama"),
    "discovery timeout": ("discovery: {timeout_s: -1}\n", "$.discovery.timeout_s"),
    # -- providers --------------------------------------------------------------------------
    "id with dot": ("providers:\n  - {id: a.b, kind: openai}\n", "$.providers[0].id"),
    "id with space": ("providers:\n  - {id: 'a b', kind: openai}\n", "$.providers[0].id"),
    "id with wildcard": ("providers:\n  - {id: 'a>', kind: openai}\n", "$.providers[0].id"),
    "id empty": ("providers:\n  - {id: '', kind: openai}\n", "$.providers[0].id"),
    "id int": ("providers:\n  - {id: 12, kind: openai}\n", "$.providers[0].id"),
    "id null": ("providers:\n  - {id: null, kind: openai}\n", "$.providers[0].id"),
    "kind missing": ("providers:\n  - {id: p}\n", "$.providers[0]"),
    "kind unknown": ("providers:\n  - {id: p, kind: nosuch}\n", "$.providers[0].kind"),
    "preset unknown": (P + "    preset: nosuch\n", "$.providers[0].preset"),
    "preset of another kind": (P + "    preset: anthropic\n", "$.providers[0].preset"),
    "preset on gemini": ("providers:\n  - {id: g, kind: gemini, preset: groq}\n", "$.providers[0].preset"),
    "preset int": (P + "    preset: 3\n", "$.providers[0].preset"),
    "azure without base_url": (P + "    preset: azure\n", "$.providers[0].base_url"),
    "base_url no scheme": (P + "    base_url: localhost:8000/v1\n", "$.providers[0].base_url"),
    "base_url bad port": (P + "    base_url: http://host:port/v1\n", "$.providers[0].base_url"),
    "base_url int": (P + "    base_url: 12\n", "$.providers[0].base_url"),
    "timeout zero": (P + "    timeout_s: 0\n", "$.providers[0].timeout_s"),
    "timeout negative": (P + "    timeout_s: -1\n", "$.providers[0].timeout_s"),
    "timeout huge": (P + "    timeout_s: 1.0e12\n", "$.providers[0].timeout_s"),
    "timeout list": (P + "    timeout_s: [1]\n", "$.providers[0].timeout_s"),
    "connect timeout nan": (P + "    connect_timeout_s: .nan\n", "$.providers[0].connect_timeout_s"),
    "max_connections zero": (P + "    max_connections: 0\n", "$.providers[0].max_connections"),
    "max_connections huge": (
        P + "    max_connections: 99999999999999999999\n",
        "$.providers[0].max_connections",
    ),
    "headers list": (P + "    headers: [a]\n", "$.providers[0].headers"),
    "header name": (P + "    headers: {'bad header': x}\n", "$.providers[0].headers"),
    "header value newline": (P + '    headers: {X-A: "a\\nb"}\n', "$.providers[0].headers.X-A"),
    "header value null": (P + "    headers: {X-A: null}\n", "$.providers[0].headers"),
    "api_key newline": (P + '    api_key: "a\\r\\nb"\n', "$.providers[0].api_key"),
    "api_key list": (P + "    api_key: [1]\n", "$.providers[0].api_key"),
    "price negative": (P + "    price: {m: {input_per_mtok: -1}}\n", "$.providers[0].price.m.input_per_mtok"),
    "price number": (P + "    price: {m: 3}\n", "$.providers[0].price"),
    "provider models string": (P + "    models: gpt\n", "$.providers[0].models"),
    "models empty name": (P + "    models: ['']\n", "$.providers[0].models[0]"),
    "capability misspelled": (P + "    capabilities: {max_m: 2}\n", "$.providers[0].capabilities"),
    "capability list": (P + "    capabilities: [max_n]\n", "$.providers[0].capabilities"),
    "capability max_n zero": (P + "    capabilities: {max_n: 0}\n", "$.providers[0].capabilities.max_n"),
    "capability huge": (
        P + "    capabilities: {context_window: 100000000000000000000}\n",
        "$.providers[0].capabilities.context_window",
    ),
    "capability type": (P + "    capabilities: {vision: sometimes}\n", "$.providers[0].capabilities.vision"),
    "capability chat_path": (
        P + "    capabilities: {chat_path: chat}\n",
        "$.providers[0].capabilities.chat_path",
    ),
    "capability contradiction": (
        P + "    capabilities: {max_n: 4, unsupported: [n]}\n",
        "$.providers[0].capabilities.max_n",
    ),
    "sim settings on openai": (P + "    sim: {ttft_ms: 1}\n", "$.providers[0].sim"),
    "sim failure rate": (S + "    sim: {failure_rate: 2}\n", "$.providers[0].sim.failure_rate"),
    "sim max_tokens": (S + "    sim: {max_tokens: -3}\n", "$.providers[0].sim.max_tokens"),
    "sim dims": (S + "    sim: {embedding_dims: 100000000}\n", "$.providers[0].sim.embedding_dims"),
    "sim unknown": (S + "    sim: {ttft: 1}\n", "$.providers[0].sim"),
    "provider weight": (P + "    weight: -1\n", "$.providers[0].weight"),
    "drop_params word": (P + "    drop_params: sometimes\n", "$.providers[0].drop_params"),
    "duplicate provider": (P + "  - {id: p, kind: sim}\n", "$.providers[1].id"),
    # -- models -----------------------------------------------------------------------------
    "duplicate model": (M + "  - name: m\n    targets: [{provider: p, model: y}]\n", "$.models[1].name"),
    "unknown target": (
        P + "models:\n  - name: m\n    targets: [{provider: ghost, model: x}]\n",
        "$.models[0].targets[0].provider",
    ),
    "no targets": (P + "models:\n  - {name: m, targets: []}\n", "$.models[0].targets"),
    "null targets": (P + "models:\n  - {name: m, targets: null}\n", "$.models[0].targets"),
    "target weight": (
        P + "models:\n  - name: m\n    targets: [{provider: p, model: x, weight: -2}]\n",
        "$.models[0].targets[0].weight",
    ),
    "target model empty": (
        P + "models:\n  - name: m\n    targets: [{provider: p, model: ''}]\n",
        "$.models[0].targets[0].model",
    ),
    "strategy": (M + "    strategy: random\n", "$.models[0].strategy"),
    "model name empty": (
        P + "models:\n  - name: ''\n    targets: [{provider: p, model: x}]\n",
        "$.models[0].name",
    ),
    # -- keys -------------------------------------------------------------------------------
    "key repeated": ("keys:\n  - {key: k1, name: a}\n  - {key: k1, name: b}\n", "$.keys[1].key"),
    "rpm negative": ("keys:\n  - {key: k1, name: a, rpm: -5}\n", "$.keys[0].rpm"),
    "budget negative": (
        "keys:\n  - {key: k1, name: a, budget_usd_per_month: -1}\n",
        "$.keys[0].budget_usd_per_month",
    ),
    "allow_models string": ("keys:\n  - {key: k1, name: a, allow_models: '*'}\n", "$.keys[0].allow_models"),
}

# What a user sees, as real processes (each takes ~0.5 s to start): the mistakes.
SAMPLE = {
    "check-config": ["preset unknown", "id with dot", "capability misspelled", "not utf-8", "bad yaml"],
    "up": ["preset unknown", "id with dot", "capability misspelled"],
}


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("SWITCHMAN_CONFIG", "NATS_URL", "SWITCHMAN_LISTEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SWITCHMAN_DATA_DIR", str(tmp_path / "data"))
    return monkeypatch


def write(tmp_path: Path, name: str) -> Path:
    text, _ = CASES[name]
    f = tmp_path / "switchman.yaml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    return f


def check_message(stderr: str, expected: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("switchman: configuration error: "), stderr
    assert expected in lines[0], stderr


@pytest.mark.parametrize("name", CASES)
def test_check_config_names_the_mistake(name, tmp_path, clean_env, capsys):
    f = write(tmp_path, name)
    with pytest.raises(SystemExit) as e:
        main(["check-config", str(f)])
    assert e.value.code == 2
    out = capsys.readouterr()
    assert out.out == ""
    check_message(out.err, CASES[name][1])


@pytest.mark.parametrize("name", CASES)
def test_up_load_path_names_the_mistake(name, tmp_path, clean_env, capsys):
    f = write(tmp_path, name)
    with pytest.raises(SystemExit) as e:
        load_or_exit(str(f))  # what `switchman up --config f` does first
    assert e.value.code == 2
    check_message(capsys.readouterr().err, CASES[name][1])


def test_a_directory_instead_of_a_file(tmp_path, clean_env, capsys):
    for argv in (["check-config", str(tmp_path)], ["up", "--config", str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        check_message(capsys.readouterr().err, str(tmp_path))


def test_a_missing_file(tmp_path, clean_env, capsys):
    with pytest.raises(SystemExit) as e:
        main(["check-config", str(tmp_path / "nope.yaml")])
    assert e.value.code == 2
    check_message(capsys.readouterr().err, "nope.yaml")


def test_data_dir_that_is_a_file(tmp_path, clean_env, capsys):
    clean_env.setenv("SWITCHMAN_DATA_DIR", str(ROOT / "pyproject.toml"))
    f = tmp_path / "c.yaml"
    f.write_text("listen: 127.0.0.1:1\n")
    with pytest.raises(SystemExit):
        load_or_exit(str(f))
    check_message(capsys.readouterr().err, "$.data_dir")


def test_the_cases_are_valid_without_the_mistake(tmp_path, clean_env):
    """The building blocks are valid, so each case fails for its own mistake."""
    from libs.common.config import load

    for text in (P, S, M, "keys:\n  - {key: k1, name: a, rpm: 5}\n"):
        f = tmp_path / "ok.yaml"
        f.write_text(text)
        load(f)


def _run(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("NATS_URL", "SWITCHMAN_LISTEN", "SWITCHMAN_CONFIG")
    }
    env["SWITCHMAN_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "services", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.e2e
def test_processes_die_with_the_message_not_a_traceback(tmp_path):
    runs = []
    for cmd, names in SAMPLE.items():
        for name in names:
            d = tmp_path / f"{cmd}-{name.replace(' ', '-')}"
            d.mkdir()
            f = write(d, name)
            args = (cmd, str(f)) if cmd == "check-config" else (cmd, "--config", str(f))
            runs.append((name, args, d))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda r: _run(*r[1], data_dir=r[2] / "data"), runs))
    for (name, args, _), r in zip(runs, results, strict=True):
        assert r.returncode == 2, (name, args, r.stderr)
        check_message(r.stderr, CASES[name][1])
