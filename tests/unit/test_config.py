"""libs/common/config.py: parse() with ${ENV} expansion and field-naming errors, load(), the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from libs.common.config import Config, ConfigError, load, parse

ROOT = Path(__file__).resolve().parents[2]

PROVIDER = {"id": "p", "kind": "openai", "preset": "groq", "api_key": "k"}


def route(*targets: dict) -> dict:
    return {"name": "m", "targets": list(targets)}


# -- defaults and ${ENV} expansion --------------------------------------------------------


def test_empty_and_none_give_defaults():
    for data in (None, {}):
        cfg = parse(data, env={})
        assert isinstance(cfg, Config)
        assert cfg.listen == "127.0.0.1:8080" and cfg.host_port == ("127.0.0.1", 8080)
        assert cfg.providers == [] and cfg.models == [] and cfg.sim_models is True
        assert cfg.limits.max_body_bytes == 8 * 1024 * 1024 - 64 * 1024


def test_env_expansion_in_nested_strings():
    data = {
        "listen": "${HOST:-0.0.0.0}:${PORT}",
        "providers": [
            {
                "id": "p",
                "kind": "openai",
                "api_key": "${KEY}",
                "base_url": "http://${UPSTREAM:-localhost}:9/v1",
                "headers": {"X-Tag": "a-${KEY}-b"},
                "models": ["${MODEL:-llama3}", "fixed"],
            }
        ],
    }
    cfg = parse(data, env={"PORT": "9000", "KEY": "sekret", "UPSTREAM": "up.example"})
    assert cfg.listen == "0.0.0.0:9000" and cfg.host_port == ("0.0.0.0", 9000)
    p = cfg.providers[0]
    assert p.api_key == "sekret"
    assert p.base_url == "http://up.example:9/v1"
    assert p.headers == {"X-Tag": "a-sekret-b"}
    assert p.models == ["llama3", "fixed"]


def test_env_set_but_empty_wins_over_default():
    cfg = parse({"providers": [{"id": "p", "kind": "openai", "api_key": "${K:-fallback}"}]}, env={"K": ""})
    assert cfg.providers[0].api_key == ""


def test_env_empty_default_is_allowed():
    cfg = parse({"providers": [{"id": "p", "kind": "openai", "api_key": "${K:-}"}]}, env={})
    assert cfg.providers[0].api_key == ""


def test_explicit_env_is_used_not_process_env(monkeypatch):
    monkeypatch.setenv("SW_TEST_ONLY_IN_PROCESS", "from-process")
    with pytest.raises(ConfigError, match="SW_TEST_ONLY_IN_PROCESS"):
        parse({"providers": [{"id": "p", "kind": "openai", "api_key": "${SW_TEST_ONLY_IN_PROCESS}"}]}, env={})


def test_text_without_reference_is_untouched():
    cfg = parse({"providers": [{"id": "p", "kind": "openai", "api_key": "$NOT_A_REF {x} $"}]}, env={})
    assert cfg.providers[0].api_key == "$NOT_A_REF {x} $"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"providers": [{"id": "p", "kind": "openai", "api_key": "${NOPE}"}]}, "$.providers[0].api_key"),
        ({"listen": "${NOPE}"}, "$.listen"),
        (
            {"providers": [PROVIDER], "models": [route({"provider": "p", "model": "${NOPE}"})]},
            "$.models[0].targets[0].model",
        ),
        (
            {"providers": [{"id": "p", "kind": "openai", "headers": {"X-A": "${NOPE}"}}]},
            "$.providers[0].headers.X-A",
        ),
    ],
)
def test_unset_env_without_default_names_variable_and_path(data, path):
    with pytest.raises(ConfigError) as e:
        parse(data, env={"OTHER": "1"})
    msg = str(e.value)
    assert "NOPE" in msg
    assert path in msg


def test_env_reference_in_numeric_and_bool_fields():
    data = {
        "providers": [
            {"id": "p", "kind": "openai", "timeout_s": "${T:-30}", "drop_params": "${DROP:-false}"}
        ],
        "limits": {"max_in_flight": "${MAX_IN_FLIGHT}"},
    }
    cfg = parse(data, env={"MAX_IN_FLIGHT": "64"})
    assert cfg.providers[0].timeout_s == 30.0
    assert cfg.providers[0].drop_params is False
    assert cfg.limits.max_in_flight == 64


# -- unknown fields, wrong types: the message names the field and where ---------------------


@pytest.mark.parametrize(
    ("data", "field", "path"),
    [
        ({"bogus": 1}, "bogus", None),
        ({"providers": [{"id": "p", "kind": "openai", "apikey": "x"}]}, "apikey", "$.providers[0]"),
        (
            {"providers": [PROVIDER], "models": [route({"provider": "p", "model": "x", "wieght": 2})]},
            "wieght",
            "$.models[0].targets[0]",
        ),
        (
            {"providers": [PROVIDER], "models": [{**route({"provider": "p", "model": "x"}), "fallbak": 1}]},
            "fallbak",
            "$.models[0]",
        ),
        ({"limits": {"max_body": 10}}, "max_body", "$.limits"),
        ({"providers": [{"id": "s", "kind": "sim", "sim": {"ttft": 1}}]}, "ttft", "$.providers[0].sim"),
        ({"keys": [{"key": "k", "name": "n", "budget": 1}]}, "budget", "$.keys[0]"),
        ({"discovery": {"enable": False}}, "enable", "$.discovery"),
    ],
)
def test_unknown_field_is_named_with_its_path(data, field, path):
    with pytest.raises(ConfigError) as e:
        parse(data, env={})
    msg = str(e.value)
    assert f"unknown field `{field}`" in msg
    if path is not None:
        assert f"`{path}`" in msg


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"providers": [{"id": "p", "kind": "openai", "timeout_s": "soon"}]}, "$.providers[0].timeout_s"),
        ({"limits": {"max_in_flight": "lots"}}, "$.limits.max_in_flight"),
        ({"providers": [{"id": "p", "kind": "nosuchkind"}]}, "$.providers[0].kind"),
        (
            {
                "providers": [PROVIDER],
                "models": [{**route({"provider": "p", "model": "x"}), "strategy": "random"}],
            },
            "$.models[0].strategy",
        ),
        (
            {"providers": [PROVIDER], "models": [route({"provider": "p", "model": "x", "weight": "heavy"})]},
            "$.models[0].targets[0].weight",
        ),
        ({"providers": {"id": "p"}}, "$.providers"),
        ({"sim_models": "maybe"}, "$.sim_models"),
    ],
)
def test_wrong_type_names_the_path(data, path):
    with pytest.raises(ConfigError) as e:
        parse(data, env={})
    assert f"`{path}`" in str(e.value)


def test_missing_required_field_names_it():
    with pytest.raises(ConfigError) as e:
        parse({"providers": [{"kind": "openai"}]}, env={})
    assert "`id`" in str(e.value) and "$.providers[0]" in str(e.value)


# -- cross-field checks -----------------------------------------------------------------


def test_duplicate_provider_id():
    with pytest.raises(ConfigError) as e:
        parse({"providers": [PROVIDER, {"id": "q", "kind": "sim"}, {"id": "p", "kind": "sim"}]}, env={})
    assert "duplicate provider id 'p'" in str(e.value)
    assert "$.providers[2].id" in str(e.value)


def test_target_with_unknown_provider():
    data = {
        "providers": [PROVIDER],
        "models": [
            route({"provider": "p", "model": "a"}),
            {**route({"provider": "p", "model": "a"}, {"provider": "ghost", "model": "b"}), "name": "m2"},
        ],
    }
    with pytest.raises(ConfigError) as e:
        parse(data, env={})
    assert "'ghost'" in str(e.value)
    assert "$.models[1].targets[1].provider" in str(e.value)


def test_model_without_targets():
    with pytest.raises(ConfigError, match=r"\$\.models\[0\]\.targets"):
        parse({"models": [{"name": "m", "targets": []}]}, env={})


def test_valid_route_parses():
    data = {
        "providers": [PROVIDER, {"id": "s", "kind": "sim"}],
        "models": [
            {
                "name": "m",
                "strategy": "weighted",
                "fallback": False,
                "targets": [{"provider": "p", "model": "a", "weight": 3}, {"provider": "s", "model": "b"}],
            }
        ],
    }
    cfg = parse(data, env={})
    m = cfg.models[0]
    assert (m.name, m.strategy, m.fallback) == ("m", "weighted", False)
    assert [(t.provider, t.model, t.weight) for t in m.targets] == [("p", "a", 3.0), ("s", "b", 1.0)]


@pytest.mark.parametrize("listen", ["nope", "host:abc", "host:", "127.0.0.1:80:x", "::1:8080", "[::1]:x"])
def test_bad_listen(listen):
    with pytest.raises(ConfigError) as e:
        parse({"listen": listen}, env={})
    assert "$.listen" in str(e.value) and listen in str(e.value)


@pytest.mark.parametrize(
    ("listen", "host_port"),
    [
        ("0.0.0.0:9000", ("0.0.0.0", 9000)),
        (":8081", ("127.0.0.1", 8081)),
        ("[::]:8080", ("::", 8080)),
        ("[::1]:0", ("::1", 0)),
    ],
)
def test_good_listen(listen, host_port):
    assert parse({"listen": listen}, env={}).host_port == host_port


@pytest.mark.parametrize("listen", ["host:99999", "host:-1"])
def test_listen_port_out_of_range(listen):
    with pytest.raises(ConfigError, match=r"\$\.listen"):
        parse({"listen": listen}, env={})


@pytest.mark.parametrize("kind", ["anthropic", "gemini", "cohere", "replicate"])
def test_preset_on_non_openai_kind(kind):
    with pytest.raises(ConfigError) as e:
        parse(
            {
                "providers": [
                    {"id": "ok", "kind": "openai", "preset": "groq"},
                    {"id": "x", "kind": kind, "preset": "groq"},
                ]
            },
            env={},
        )
    assert "preset" in str(e.value) and "$.providers[1].preset" in str(e.value)


def test_preset_on_openai_kind_is_fine():
    assert (
        parse({"providers": [{"id": "x", "kind": "openai", "preset": "ollama"}]}, env={}).providers[0].preset
        == "ollama"
    )


def test_non_mapping_is_rejected():
    for data in ([1, 2], "text", 3):
        with pytest.raises(ConfigError, match="mapping"):
            parse(data, env={})


# -- load() -----------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("SWITCHMAN_CONFIG", "NATS_URL", "SWITCHMAN_LISTEN", "SWITCHMAN_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_load_file(tmp_path, clean_env):
    clean_env.setenv("SW_TEST_KEY", "from-env")
    f = tmp_path / "c.yaml"
    f.write_text(
        "listen: 127.0.0.1:9999\n"
        "providers:\n"
        "  - id: g\n"
        "    kind: openai\n"
        "    preset: groq\n"
        "    api_key: ${SW_TEST_KEY}\n"
        "models:\n"
        "  - name: fast\n"
        "    targets: [{provider: g, model: llama}]\n"
    )
    cfg = load(f)
    assert cfg.host_port == ("127.0.0.1", 9999)
    assert cfg.providers[0].api_key == "from-env"
    assert cfg.models[0].targets[0].provider == "g"
    assert cfg.nats_url is None


def test_load_path_from_switchman_config(tmp_path, clean_env):
    f = tmp_path / "c.yaml"
    f.write_text("listen: 127.0.0.1:7001\n")
    clean_env.setenv("SWITCHMAN_CONFIG", str(f))
    assert load().host_port == ("127.0.0.1", 7001)


def test_load_without_path_gives_defaults(clean_env):
    assert load().listen == "127.0.0.1:8080"


def test_load_empty_file_gives_defaults(tmp_path, clean_env):
    f = tmp_path / "empty.yaml"
    f.write_text("# nothing\n")
    assert load(f).listen == "127.0.0.1:8080"


def test_load_env_overrides(tmp_path, clean_env):
    f = tmp_path / "c.yaml"
    f.write_text("listen: 127.0.0.1:9999\nnats_url: nats://file:4222\n")
    clean_env.setenv("NATS_URL", "nats://env:4222")
    clean_env.setenv("SWITCHMAN_LISTEN", "0.0.0.0:1234")
    clean_env.setenv("SWITCHMAN_DATA_DIR", str(tmp_path / "d"))
    cfg = load(f)
    assert cfg.nats_url == "nats://env:4222"
    assert cfg.host_port == ("0.0.0.0", 1234)
    assert cfg.data_dir == str(tmp_path / "d")


def test_load_bad_listen_override_names_listen(clean_env):
    clean_env.setenv("SWITCHMAN_LISTEN", "garbage")
    with pytest.raises(ConfigError, match=r"\$\.listen"):
        load()


def test_load_invalid_yaml(tmp_path, clean_env):
    f = tmp_path / "bad.yaml"
    f.write_text("providers: [\n  - id: x\n")
    with pytest.raises(ConfigError) as e:
        load(f)
    assert "invalid YAML" in str(e.value) and str(f) in str(e.value)


def test_load_non_mapping(tmp_path, clean_env):
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load(f)


def test_load_missing_file(tmp_path, clean_env):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as e:
        load(missing)
    assert str(missing) in str(e.value)


def test_load_unknown_field_in_file(tmp_path, clean_env):
    f = tmp_path / "c.yaml"
    f.write_text("providers:\n  - id: p\n    kind: openai\n    base_ulr: http://x\n")
    with pytest.raises(ConfigError) as e:
        load(f)
    assert "base_ulr" in str(e.value) and "$.providers[0]" in str(e.value)


# -- the CLI ------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("NATS_URL", "SWITCHMAN_LISTEN", "SWITCHMAN_CONFIG")
    }
    return subprocess.run(
        [sys.executable, "-m", "services", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_check_config_names_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers:\n  - id: p\n    kind: openai\n    tiemout_s: 3\n")
    r = _cli("check-config", str(bad))
    assert r.returncode == 2, r.stderr
    assert "tiemout_s" in r.stderr and "$.providers[0]" in r.stderr
    assert "valid" not in r.stdout


@pytest.mark.parametrize("key", [" sk-a", "sk-a ", "sk-a\n", "sk a", "\tsk-a"])
def test_a_key_with_whitespace_is_refused(key):
    with pytest.raises(ConfigError, match=r"\$\.keys\[1\]\.key"):
        parse({"keys": [{"key": "sk-ok", "name": "ok"}, {"key": key, "name": "bad"}]}, env={})


# -- presets, provider ids, capabilities ----------------------------------------------------


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        parse({"providers": [{"id": "p", "kind": "openai", "preset": "nosuch"}]}, env={})
    msg = str(e.value)
    assert "`$.providers[0].preset`" in msg and "'nosuch'" in msg
    assert "groq" in msg and "ollama" in msg and "anthropic" not in msg


@pytest.mark.parametrize(("kind", "preset"), [("openai", "anthropic"), ("openai", "sim"), ("sim", "groq")])
def test_preset_of_another_kind(kind, preset):
    with pytest.raises(ConfigError, match=r"is for kind .* - at `\$\.providers\[0\]\.preset`"):
        parse({"providers": [{"id": "p", "kind": kind, "preset": preset}]}, env={})


@pytest.mark.parametrize("kind", ["anthropic", "gemini", "cohere", "replicate", "sim"])
def test_native_kind_may_name_its_own_preset(kind):
    assert (
        parse({"providers": [{"id": "p", "kind": kind, "preset": kind}]}, env={}).providers[0].preset == kind
    )


@pytest.mark.parametrize("pid", ["a.b", "a b", "a*", "a>", "", "tab\there"])
def test_provider_id_must_be_a_subject_token(pid):
    with pytest.raises(ConfigError, match=r"\$\.providers\[0\]\.id"):
        parse({"providers": [{"id": pid, "kind": "sim"}]}, env={})


def test_capabilities_are_typed():
    cfg = parse(
        {"providers": [{"id": "p", "kind": "openai", "preset": "ollama", "capabilities": {"max_n": 4}}]},
        env={},
    )
    caps = cfg.providers[0].capabilities
    assert caps.max_n == 4 and caps.vision is None
    with pytest.raises(ConfigError, match=r"unknown field `visoin` - at `\$\.providers\[0\]\.capabilities`"):
        parse({"providers": [{"id": "p", "kind": "openai", "capabilities": {"visoin": True}}]}, env={})


def test_base_url_required_when_the_preset_has_none():
    with pytest.raises(ConfigError, match=r"preset 'azure' .* `\$\.providers\[0\]\.base_url`"):
        parse({"providers": [{"id": "p", "kind": "openai", "preset": "azure"}]}, env={})
    ok = {"id": "p", "kind": "openai", "preset": "azure", "base_url": "https://x.openai.azure.com"}
    assert parse({"providers": [ok]}, env={}).providers[0].base_url


def test_duplicate_model_name():
    data = {"providers": [PROVIDER], "models": [route({"provider": "p", "model": "a"})] * 2}
    with pytest.raises(ConfigError, match=r"duplicate model name 'm' - at `\$\.models\[1\]\.name`"):
        parse(data, env={})


def test_repeated_key_secret_is_not_echoed():
    with pytest.raises(ConfigError) as e:
        parse({"keys": [{"key": "sk-secret", "name": "a"}, {"key": "sk-secret", "name": "b"}]}, env={})
    assert "$.keys[1].key" in str(e.value) and "sk-secret" not in str(e.value)


def test_errors_are_one_line():
    with pytest.raises(ConfigError) as e:
        parse({"providers": [{"id": "a\nb", "kind": "sim"}]}, env={})
    assert "\n" not in str(e.value)


def test_load_invalid_yaml_names_file_and_line(tmp_path, clean_env):
    f = tmp_path / "bad.yaml"
    f.write_text("listen: 127.0.0.1:1\nproviders:\n  - id: p\n   kind: sim\n")
    with pytest.raises(ConfigError) as e:
        load(f)
    assert f"{f}:4:" in str(e.value) and "invalid YAML" in str(e.value)


def test_load_duplicate_key_names_its_line(tmp_path, clean_env):
    f = tmp_path / "dup.yaml"
    f.write_text("listen: 127.0.0.1:1\nsim_models: false\nlisten: 127.0.0.1:2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:3:1: invalid YAML: duplicate key 'listen'"):
        load(f)


def test_load_error_names_the_file(tmp_path, clean_env):
    f = tmp_path / "c.yaml"
    f.write_text("providers:\n  - id: p\n    kind: openai\n    preset: nosuch\n")
    with pytest.raises(ConfigError, match=rf"^{f}: unknown preset"):
        load(f)
