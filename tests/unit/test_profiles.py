"""libs/common/profiles.py: the presets and profile_for()."""

from __future__ import annotations

from urllib.parse import urlparse

import msgspec
import pytest

from libs.common.profiles import PRESETS, Capabilities, Profile, presets_for, profile_for

PUBLIC = {
    "openai": "https://api.openai.com/v1",
    "groq": "https://api.groq.com/openai/v1",
    "together": "https://api.together.xyz/v1",
    "fireworks": "https://api.fireworks.ai/inference/v1",
    "mistral": "https://api.mistral.ai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "perplexity": "https://api.perplexity.ai",
    "xai": "https://api.x.ai/v1",
    "huggingface": "https://router.huggingface.co/v1",
    "anyscale": "https://api.endpoints.anyscale.com/v1",
}
# Per-deployment endpoints: no base URL a preset could know.
PER_DEPLOYMENT = ("azure", "huggingface-endpoint", "modal-vllm")
LOCAL = ("ollama", "lmstudio", "localai", "vllm", "tgi", "textgen-webui", "llamacpp")
ALL = (*PUBLIC, *PER_DEPLOYMENT, *LOCAL)


def test_every_named_preset_exists_as_openai_kind():
    assert len(ALL) == 21
    for name in ALL:
        p = PRESETS[name]
        assert isinstance(p, Profile) and p.name == name and p.kind == "openai"


@pytest.mark.parametrize(("name", "url"), PUBLIC.items())
def test_public_presets_base_url(name, url):
    p = PRESETS[name]
    assert p.base_url == url
    assert urlparse(p.base_url).scheme == "https" and not p.base_url.endswith("/")
    assert p.auth == "bearer" and not p.local


@pytest.mark.parametrize("name", PER_DEPLOYMENT)
def test_per_deployment_presets_have_no_base_url(name):
    assert PRESETS[name].base_url is None


@pytest.mark.parametrize("name", LOCAL)
def test_local_presets(name):
    p = PRESETS[name]
    u = urlparse(p.base_url)
    assert p.local and p.auth == "none"
    assert u.scheme == "http" and u.hostname in ("127.0.0.1", "localhost") and u.port
    assert u.path == "/v1"


def test_azure_preset():
    p = PRESETS["azure"]
    assert p.auth == "api-key" and "{model}" in p.chat_path and p.chat_path.endswith("/chat/completions")


def test_native_kinds_and_sim():
    for kind in ("anthropic", "gemini", "cohere", "replicate", "sim"):
        p = profile_for(kind, None)
        assert p.kind == kind and p is PRESETS[kind]


def test_specific_capabilities():
    assert PRESETS["ollama"].legacy_max_tokens and PRESETS["ollama"].models_endpoint == "ollama"
    assert not PRESETS["ollama"].tool_choice and PRESETS["ollama"].tools
    assert not PRESETS["tgi"].stream_usage and not PRESETS["openai"].legacy_max_tokens
    assert not PRESETS["perplexity"].tools and not PRESETS["groq"].vision
    assert PRESETS["groq"].max_n == 1 and PRESETS["openai"].max_n == 128
    assert PRESETS["openai"].embeddings and PRESETS["openai"].completions


def test_profiles_are_consistent():
    for name, p in PRESETS.items():
        assert p.max_n >= 1 and p.max_stop >= 1 and p.max_top_logprobs >= 0, name
        if not p.tools:
            assert not p.tool_choice, name  # tool_choice without tools is meaningless
        assert all(isinstance(v, str) and v for v in p.extensions.values()), name


def test_profile_for_preset_wins_over_kind():
    assert profile_for("openai", "groq") is PRESETS["groq"]
    assert profile_for("openai", None) is PRESETS["openai"]


def test_profile_for_unknown_preset():
    with pytest.raises(KeyError):
        profile_for("openai", "no-such-preset")


def test_profile_for_overrides():
    p = profile_for("openai", "groq", Capabilities(max_n=4, vision=True, context_window=8192))
    assert (p.max_n, p.vision, p.context_window) == (4, True, 8192)
    assert p.base_url == PRESETS["groq"].base_url and p.unsupported == PRESETS["groq"].unsupported
    assert PRESETS["groq"].max_n == 1 and PRESETS["groq"].vision is False  # the preset is not mutated


def test_profile_for_unsupported_override_replaces_the_list():
    p = profile_for("openai", "openai", Capabilities(unsupported=frozenset({"seed", "user"})))
    assert p.unsupported == frozenset({"seed", "user"})


def test_profile_for_empty_overrides_is_the_preset():
    assert profile_for("openai", "mistral", Capabilities()) is PRESETS["mistral"]
    assert profile_for("openai", "mistral", None) is PRESETS["mistral"]


def test_max_n_override_makes_n_supported():
    assert "n" in PRESETS["ollama"].unsupported
    p = profile_for("openai", "ollama", Capabilities(max_n=4))
    assert p.max_n == 4 and "n" not in p.unsupported
    assert p.unsupported == PRESETS["ollama"].unsupported - {"n"}
    assert "n" in profile_for("openai", "ollama", Capabilities(max_n=1)).unsupported


def test_capabilities_mirror_profile_fields():
    profile_fields = dict(zip(Profile.__struct_fields__, msgspec.structs.fields(Profile), strict=True))
    for f in msgspec.structs.fields(Capabilities):
        assert f.name in profile_fields, f.name
        assert f.default is None, f.name
    # what a preset *is* stays the preset's
    assert not {"name", "kind", "base_url", "auth", "local"} & set(Capabilities.__struct_fields__)


def test_capabilities_are_typed_and_strict():
    with pytest.raises(msgspec.ValidationError, match="unknown field `visoin`"):
        msgspec.convert({"visoin": True}, Capabilities)
    with pytest.raises(msgspec.ValidationError, match=r"max_n"):
        msgspec.convert({"max_n": "many"}, Capabilities)
    with pytest.raises(msgspec.ValidationError, match=r">= 1 - at `\$.max_n`"):
        msgspec.convert({"max_n": 0}, Capabilities)


def test_n_unsupported_means_one_choice():
    for name, p in PRESETS.items():
        if "n" in p.unsupported:
            assert p.max_n == 1, name


def test_llamacpp_allows_n():
    p = PRESETS["llamacpp"]
    assert "n" not in p.unsupported and p.max_n > 1


def test_presets_for_kind():
    assert presets_for("gemini") == ["gemini"]
    assert "groq" in presets_for("openai") and "anthropic" not in presets_for("openai")


def test_auth_header_per_style():
    assert PRESETS["openai"].auth_header("k") == ("Authorization", "Bearer k")
    assert PRESETS["vllm"].auth_header("k") == ("Authorization", "Bearer k")
    assert PRESETS["azure"].auth_header("k") == ("api-key", "k")
    assert PRESETS["gemini"].auth_header("k") == ("x-goog-api-key", "k")
    assert PRESETS["vllm"].auth_header(None) is None and PRESETS["openai"].auth_header("") is None
