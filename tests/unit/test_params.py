"""services/worker/params.py fit(): drop or reject what a provider's profile does not accept."""

from __future__ import annotations

import copy

import msgspec
import pytest

from libs.common.errors import InvalidRequest
from libs.common.profiles import Capabilities, profile_for
from services.worker.params import fit

USER = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
IMAGE_MSG = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "what"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
        ],
    }
]

OPENAI = profile_for("openai", "openai")
GROQ = profile_for("openai", "groq")
OLLAMA = profile_for("openai", "ollama")
PERPLEXITY = profile_for("openai", "perplexity")
HF_ENDPOINT = profile_for("openai", "huggingface-endpoint")


def req(**kw: object) -> dict:
    return {"model": "m", "messages": copy.deepcopy(USER), **kw}


def rejected(r: dict, profile, drop: bool) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as e:
        fit(r, profile, "prov", drop)
    assert e.value.code == "unsupported_parameter" and e.value.status == 400
    assert "'prov'" in e.value.message
    return e.value


def test_everything_supported_is_untouched():
    r = req(
        n=2,
        logprobs=True,
        top_logprobs=5,
        tools=TOOLS,
        tool_choice="auto",
        parallel_tool_calls=False,
        logit_bias={"1": 2},
        seed=1,
        stop=["a", "b"],
        response_format={"type": "json_object"},
    )
    before = copy.deepcopy(r)
    assert fit(r, OPENAI, "prov", False) == before


def test_unsupported_dropped_when_drop():
    r = req(logprobs=True, top_logprobs=3, logit_bias={"1": 2}, temperature=0.5)
    out = fit(r, GROQ, "prov", True)
    assert out is r
    assert "logprobs" not in r and "top_logprobs" not in r and "logit_bias" not in r
    assert r["temperature"] == 0.5 and r["messages"] == USER


@pytest.mark.parametrize(
    ("profile", "field", "value"),
    [(GROQ, "logit_bias", {"1": 2}), (GROQ, "logprobs", True), (profile_for("openai", "mistral"), "seed", 7)],
)
def test_unsupported_rejected_when_not_drop(profile, field, value):
    r = req(**{field: value})
    assert rejected(r, profile, False).param == field


def test_unsupported_none_value_is_dropped_even_without_drop():
    r = req(logit_bias=None)
    fit(r, GROQ, "prov", False)
    assert "logit_bias" not in r


@pytest.mark.parametrize("drop", [True, False])
def test_n_over_max_n_always_rejected(drop):
    assert rejected(req(n=2), GROQ, drop).param == "n"
    assert rejected(req(n=3), profile_for("openai", "openai", Capabilities(max_n=2)), drop).param == "n"


@pytest.mark.parametrize("drop", [True, False])
@pytest.mark.parametrize("preset", ["ollama", "lmstudio", "deepseek", "tgi"])
def test_n_over_one_to_a_one_choice_provider_is_never_dropped(preset, drop):
    # "n" unsupported means one choice: asking for more is a 400 naming n, never one answer
    assert "n" in profile_for("openai", preset).unsupported
    assert rejected(req(n=2), profile_for("openai", preset), drop).param == "n"


@pytest.mark.parametrize("drop", [True, False])
def test_n_unsupported_with_a_larger_max_n_still_rejected(drop):
    # a profile built around the config check (n unsupported, max_n 4) still never drops n
    p = msgspec.structs.replace(profile_for("openai", "ollama"), max_n=4)
    assert rejected(req(n=2), p, drop).param == "n"


def test_max_n_override_makes_n_supported():
    p = profile_for("openai", "ollama", Capabilities(max_n=4))
    r = req(n=3)
    fit(r, p, "prov", True)
    assert r["n"] == 3
    assert rejected(req(n=5), p, True).param == "n"


def test_llamacpp_gives_several_choices():
    r = req(n=4)
    fit(r, profile_for("openai", "llamacpp"), "prov", False)
    assert r["n"] == 4


def test_n_within_max_n_kept():
    r = req(n=1)
    fit(r, GROQ, "prov", False)
    assert r["n"] == 1


def test_n_one_to_provider_without_n_is_not_rejected():
    r = req(n=1)
    fit(r, OLLAMA, "prov", False)
    assert r.get("n", 1) == 1


@pytest.mark.parametrize("drop", [True, False])
def test_tools_to_provider_without_tools_always_rejected(drop):
    assert rejected(req(tools=TOOLS, tool_choice="auto"), PERPLEXITY, drop).param == "tools"


def test_tool_fields_without_tools_dropped_for_toolless_provider():
    r = req(tool_choice="none", parallel_tool_calls=True)
    fit(r, PERPLEXITY, "prov", True)
    assert "tool_choice" not in r and "parallel_tool_calls" not in r


def test_tool_choice_dropped_for_profile_without_tool_choice():
    r = req(tools=TOOLS, tool_choice="required")
    fit(r, OLLAMA, "prov", True)
    assert "tool_choice" not in r and r["tools"] == TOOLS


def test_tool_choice_dropped_when_only_the_profile_lacks_it():
    # not in `unsupported`; only the capability flag says no
    p = profile_for("openai", "openai", Capabilities(tool_choice=False))
    r = req(tools=TOOLS, tool_choice="required")
    fit(r, p, "prov", True)
    assert "tool_choice" not in r and r["tools"] == TOOLS
    assert rejected(req(tools=TOOLS, tool_choice="required"), p, False).param == "tool_choice"


def test_parallel_tool_calls_dropped_or_rejected():
    p = profile_for("openai", "openai", Capabilities(parallel_tool_calls=False))
    r = req(tools=TOOLS, parallel_tool_calls=False)
    fit(r, p, "prov", True)
    assert "parallel_tool_calls" not in r and r["tools"] == TOOLS
    assert rejected(req(tools=TOOLS, parallel_tool_calls=True), p, False).param == "parallel_tool_calls"


@pytest.mark.parametrize("drop", [True, False])
def test_stop_over_max_stop_rejected(drop):
    p = profile_for("openai", "openai", Capabilities(max_stop=2))
    assert rejected(req(stop=["a", "b", "c"]), p, drop).param == "stop"
    ok = req(stop=["a", "b"])
    fit(ok, p, "prov", drop)
    assert ok["stop"] == ["a", "b"]
    s = req(stop="abc")
    fit(s, p, "prov", drop)
    assert s["stop"] == "abc"


def test_top_logprobs_clamped_when_drop():
    r = req(logprobs=True, top_logprobs=10)
    fit(r, HF_ENDPOINT, "prov", True)
    assert r["top_logprobs"] == 5 and r["logprobs"] is True


def test_top_logprobs_rejected_when_not_drop():
    assert rejected(req(logprobs=True, top_logprobs=10), HF_ENDPOINT, False).param == "top_logprobs"
    r = req(logprobs=True, top_logprobs=5)
    fit(r, HF_ENDPOINT, "prov", False)
    assert r["top_logprobs"] == 5


@pytest.mark.parametrize("drop", [True, False])
def test_images_to_non_vision_provider_rejected(drop):
    r = {"model": "m", "messages": copy.deepcopy(IMAGE_MSG)}
    assert rejected(r, GROQ, drop).param == "messages"


def test_images_to_vision_provider_and_text_parts_to_non_vision_ok():
    r = {"model": "m", "messages": copy.deepcopy(IMAGE_MSG)}
    assert fit(r, OPENAI, "prov", False)["messages"] == IMAGE_MSG
    text_only = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}
    fit(text_only, GROQ, "prov", False)


def test_response_format_for_non_json_provider():
    p = profile_for("openai", "openai", Capabilities(json_mode=False))
    r = req(response_format={"type": "json_object"})
    fit(r, p, "prov", True)
    assert "response_format" not in r
    err = rejected(req(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), p, False)
    assert err.param == "response_format"
    text = req(response_format={"type": "text"})
    fit(text, p, "prov", False)
    assert text["response_format"] == {"type": "text"}


def test_unsupported_override_list():
    p = profile_for("openai", "openai", Capabilities(unsupported=frozenset({"seed", "user"})))
    r = req(seed=1, user="u", temperature=1)
    fit(r, p, "prov", True)
    assert "seed" not in r and "user" not in r and r["temperature"] == 1
