"""The Gemini adapter's translators (pure), then the adapter against the strict emulator."""

from __future__ import annotations

import base64
import json
import re
import struct
from typing import Any

import pytest

from libs.common.config import ProviderConfig
from libs.common.errors import (
    GatewayTimeout,
    InvalidRequest,
    Overloaded,
    RateLimited,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRejected,
)
from libs.common.profiles import PRESETS
from services.worker.adapters.gemini import GeminiProtocol
from services.worker.adapters.gemini_stream import split_tool_call_id
from services.worker.upstream import Upstream, new_session
from tests import schema

BASE = "https://generativelanguage.googleapis.com/v1beta"


def provider(**kw: Any) -> ProviderConfig:
    return ProviderConfig(**{"id": "gem", "kind": "gemini", "api_key": "sk-test", **kw})


def proto(**kw: Any) -> GeminiProtocol:
    return GeminiProtocol(provider(**kw), PRESETS["gemini"])


def body_of(req: dict[str, Any], stream: bool = False, model: str = "gemini-2.0-flash") -> dict[str, Any]:
    return json.loads(proto().chat_request(req, model, stream).body)


def chat(*messages: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"model": "alias", "messages": list(messages), **kw}


USER = {"role": "user", "content": "hi"}


@pytest.fixture
def validate() -> Any:
    return schema.validate


# -- request: URL, headers ------------------------------------------------------------
def test_url_headers_and_body() -> None:
    p = proto(headers={"x-extra": "1"})
    call = p.chat_request(chat(USER), "gemini-2.0-flash", False)
    assert (call.method, call.url, call.stream) == (
        "POST",
        f"{BASE}/models/gemini-2.0-flash:generateContent",
        False,
    )
    assert call.headers == {"content-type": "application/json", "x-goog-api-key": "sk-test", "x-extra": "1"}
    assert json.loads(call.body) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    call = p.chat_request(chat(USER), "models/gemini-2.0-flash", True)
    assert call.url == f"{BASE}/models/gemini-2.0-flash:streamGenerateContent?alt=sse" and call.stream


def test_base_url_override_and_query() -> None:
    call = proto(base_url="http://emu:1/v1beta/", query={"trace": "x"}).chat_request(chat(USER), "m", True)
    assert call.url == "http://emu:1/v1beta/models/m:streamGenerateContent?trace=x&alt=sse"


@pytest.mark.parametrize(
    ("base_url", "root"),
    [
        ("https://generativelanguage.googleapis.com", "https://generativelanguage.googleapis.com/v1beta"),
        ("https://generativelanguage.googleapis.com/", "https://generativelanguage.googleapis.com/v1beta"),
        ("https://generativelanguage.googleapis.com/v1", "https://generativelanguage.googleapis.com/v1"),
        (
            "https://generativelanguage.googleapis.com/v1alpha/",
            "https://generativelanguage.googleapis.com/v1alpha",
        ),
        ("https://proxy.example/google-ai", "https://proxy.example/google-ai/v1beta"),
    ],
)
def test_base_url_without_version_gets_v1beta(base_url: str, root: str) -> None:
    p = proto(base_url=base_url)
    assert p.chat_request(chat(USER), "m", False).url == f"{root}/models/m:generateContent"
    assert p.models_request().url.startswith(f"{root}/models?")


def test_model_argument_wins_over_request_model() -> None:
    call = proto().chat_request({**chat(USER), "model": "client-alias"}, "gemini-2.5-pro", False)
    assert "/models/gemini-2.5-pro:" in call.url and b"client-alias" not in call.body


# -- request: messages ----------------------------------------------------------------
def test_roles_and_system_instruction() -> None:
    body = body_of(
        chat(
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"},
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            {"role": "assistant", "content": ""},  # nothing to send: skipped
            {"role": "user", "content": "d"},
        )
    )
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use French."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
        {"role": "model", "parts": [{"text": "c"}]},
        {"role": "user", "parts": [{"text": "d"}]},
    ]


@pytest.mark.parametrize(
    ("url", "part"),
    [
        ("data:image/png;base64,iVBORw0K", {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}}),
        (
            "https://x.test/a/cat.PNG?size=2#f",
            {"fileData": {"mimeType": "image/png", "fileUri": "https://x.test/a/cat.PNG?size=2#f"}},
        ),
        (
            "https://x.test/photo.webp",
            {"fileData": {"mimeType": "image/webp", "fileUri": "https://x.test/photo.webp"}},
        ),
        ("http://x.test/image", {"fileData": {"mimeType": "image/jpeg", "fileUri": "http://x.test/image"}}),
    ],
)
def test_image_parts(url: str, part: dict[str, Any]) -> None:
    content = [{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": url}}]
    body = body_of(chat({"role": "user", "content": content}))
    assert body["contents"][0]["parts"] == [{"text": "what?"}, part]


def test_audio_and_file_parts() -> None:
    content = [
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
    ]
    parts = body_of(chat({"role": "user", "content": content}))["contents"][0]["parts"]
    assert parts == [
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
    ]


@pytest.mark.parametrize(
    ("part", "param"),
    [
        (
            {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}},
            "messages[0].content[1].image_url.url",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png,raw"}},
            "messages[0].content[1].image_url.url",
        ),
        ({"type": "file", "file": {"file_id": "file-1"}}, "messages[0].content[1]"),
    ],
)
def test_bad_parts_name_the_param(part: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        body_of(chat({"role": "user", "content": [{"type": "text", "text": "x"}, part]}))
    assert e.value.param == param and e.value.status == 400


def _tool_history() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "weather in Paris and time?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "system", "content": "Answer in one line."},  # hoisted: does not split the tool turn
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "12:00"}]},
        {"role": "user", "content": "thanks"},
    ]


def test_tool_calls_and_results() -> None:
    body = body_of(chat(*_tool_history()))
    assert body["systemInstruction"] == {"parts": [{"text": "Answer in one line."}]}
    assert body["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {"text": "Let me check."},
                {"functionCall": {"id": "call_1", "name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"id": "call_2", "name": "get_time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"id": "call_1", "name": "get_weather", "response": {"temp": 21}}},
                {"functionResponse": {"id": "call_2", "name": "get_time", "response": {"result": "12:00"}}},
            ],
        },
        {"role": "user", "parts": [{"text": "thanks"}]},
    ]


def test_legacy_function_messages() -> None:
    body = body_of(
        chat(
            USER,
            {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": '{"a": 1}'}},
            {"role": "function", "name": "f", "content": "[1, 2]"},
        )
    )
    assert body["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"result": "[1, 2]"}}}]},
    ]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
def test_bad_tool_arguments_name_the_param(arguments: str) -> None:
    history = _tool_history()
    history[1]["tool_calls"][0]["function"]["arguments"] = arguments
    history.insert(0, {"role": "system", "content": "x"})
    history.insert(1, USER)
    with pytest.raises(InvalidRequest) as e:
        body_of(chat(*history))
    assert e.value.param == "messages[3].tool_calls[0].function.arguments"


def test_tool_result_for_unknown_call() -> None:
    with pytest.raises(InvalidRequest) as e:
        body_of(chat(USER, {"role": "tool", "tool_call_id": "nope", "content": "x"}))
    assert e.value.param == "messages[1].tool_call_id"


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time"}},
]  # fmt: skip


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        (None, None),
        ("auto", {"functionCallingConfig": {"mode": "AUTO"}}),
        ("required", {"functionCallingConfig": {"mode": "ANY"}}),
        ("none", {"functionCallingConfig": {"mode": "NONE"}}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}},
        ),
    ],
)
def test_tools_and_tool_choice(choice: Any, config: Any) -> None:
    req = chat(USER, tools=TOOLS, parallel_tool_calls=False)
    if choice is not None:
        req["tool_choice"] = choice
    body = body_of(req)
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather",
                    "parametersJsonSchema": TOOLS[0]["function"]["parameters"],
                },
                {"name": "get_time"},
            ]
        }
    ]
    assert body.get("toolConfig") == config


def test_generation_config() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    req = chat(
        USER,
        max_tokens=10,
        max_completion_tokens=20,
        stop="END",
        temperature=0.3,
        top_p=0.9,
        n=3,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        logprobs=True,
        top_logprobs=4,
        reasoning_effort="low",
        top_k=40,
        safety_settings=[{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        user="u1",
        metadata={"a": "b"},
    )
    body = body_of(req)
    assert body["generationConfig"] == {
        "maxOutputTokens": 20,
        "stopSequences": ["END"],
        "temperature": 0.3,
        "topP": 0.9,
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "topK": 40,
        "candidateCount": 3,
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
        "responseLogprobs": True,
        "logprobs": 4,
        "thinkingConfig": {"thinkingBudget": 1024},
    }
    assert body["safetySettings"] == [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]
    assert set(body) == {"contents", "generationConfig", "safetySettings"}


def test_generation_config_small_cases() -> None:
    g = body_of(chat(USER, max_tokens=5, n=1, stop=["a", "b"], response_format={"type": "json_object"}))
    assert g["generationConfig"] == {
        "maxOutputTokens": 5,
        "stopSequences": ["a", "b"],
        "responseMimeType": "application/json",
    }
    assert "generationConfig" not in body_of(chat(USER, response_format={"type": "text"}, n=1))


# -- response ---------------------------------------------------------------------------
def _resp(parts: list[dict[str, Any]], finish: str = "STOP", **extra: Any) -> bytes:
    cand = {"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}
    return json.dumps(
        {"candidates": [cand], "responseId": "r1", "modelVersion": "gemini-2.0-flash-001", **extra}
    ).encode()


USAGE = {
    "promptTokenCount": 100,
    "toolUsePromptTokenCount": 7,
    "candidatesTokenCount": 20,
    "thoughtsTokenCount": 30,
    "cachedContentTokenCount": 40,
    "totalTokenCount": 157,
}


def test_response_text_reasoning_and_usage() -> None:
    body = _resp(
        [{"text": "Let me think", "thought": True}, {"text": "Hello"}, {"text": " world"}],
        usageMetadata=USAGE,
    )
    out = proto().chat_response(body, "alias")
    doc = json.loads(out.body)
    assert doc["id"] == "chatcmpl-r1" and doc["model"] == "alias" and doc["object"] == "chat.completion"
    assert doc["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello world",
                "reasoning_content": "Let me think",
                "refusal": None,
            },
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert doc["usage"] == {
        "prompt_tokens": 107,
        "completion_tokens": 50,
        "total_tokens": 157,  # equals Gemini's totalTokenCount
        "prompt_tokens_details": {"cached_tokens": 40},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.reasoning_tokens) == (107, 50, 30)


def test_response_tool_calls() -> None:
    parts = [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "units": ["c"]}}},
        {"functionCall": {"id": "fc-9", "name": "get_time"}},
    ]
    doc = json.loads(proto().chat_response(_resp(parts), "m").body)
    choice = doc["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    first, second = choice["message"]["tool_calls"]
    assert re.fullmatch(r"call_[0-9a-f]{24}", first["id"])
    assert first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": '{"city":"Paris","units":["c"]}'}
    assert second["id"] == "fc-9" and second["function"] == {"name": "get_time", "arguments": "{}"}


def test_thought_signature_survives_the_round_trip() -> None:
    sig = base64.b64encode(bytes(range(200, 256)) + b"??>>").decode()
    parts = [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": sig}]
    call = json.loads(proto().chat_response(_resp(parts), "m").body)["choices"][0]["message"]["tool_calls"][0]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", call["id"])  # safe for any provider's id rules
    assert split_tool_call_id(call["id"]) == (call["id"].split("__ts_")[0], sig)
    history = chat(
        USER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "ok"},
    )
    model_turn, tool_turn = body_of(history)["contents"][1:]
    plain_id = call["id"].split("__ts_")[0]
    assert model_turn["parts"] == [
        {"functionCall": {"id": plain_id, "name": "f", "args": {}}, "thoughtSignature": sig}
    ]
    assert tool_turn["parts"][0]["functionResponse"]["id"] == plain_id


def test_google_compat_signature_field_is_accepted() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    call["extra_content"] = {"google": {"thought_signature": "c2ln"}}
    body = body_of(chat(USER, {"role": "assistant", "tool_calls": [call]}))
    assert body["contents"][1]["parts"][0]["thoughtSignature"] == "c2ln"


FINISH_TABLE = [
    ("STOP", False, "stop"),
    ("STOP", True, "tool_calls"),
    ("FINISH_REASON_UNSPECIFIED", False, "stop"),
    ("MAX_TOKENS", False, "length"),
    ("MAX_TOKENS", True, "length"),
    *[
        (r, False, "content_filter")
        for r in ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "LANGUAGE", "OTHER"]
    ],
    *[
        (r, False, "content_filter")
        for r in ["IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "IMAGE_OTHER"]
    ],
    ("SOMETHING_NEW", False, "stop"),
]


@pytest.mark.parametrize(("raw", "tools", "expected"), FINISH_TABLE)
def test_finish_reason_table(raw: str, tools: bool, expected: str) -> None:
    parts = [{"functionCall": {"name": "f", "args": {}}}] if tools else [{"text": "x"}]
    doc = json.loads(proto().chat_response(_resp(parts, raw), "m").body)
    assert doc["choices"][0]["finish_reason"] == expected


@pytest.mark.parametrize("raw", ["MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"])
def test_failed_function_calls_are_upstream_errors(raw: str) -> None:
    with pytest.raises(UpstreamError) as e:
        proto().chat_response(_resp([], raw), "m")
    assert e.value.retryable and e.value.code == raw.lower()


def test_prompt_blocked() -> None:
    body = json.dumps(
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}}
    ).encode()
    with pytest.raises(InvalidRequest) as e:
        proto().chat_response(body, "m")
    assert (e.value.status, e.value.code, e.value.param, e.value.type) == (
        400,
        "content_filter",
        "messages",
        "invalid_request_error",
    )


@pytest.mark.parametrize("body", [b"{}", b'{"candidates": [', b"<html>"])
def test_empty_or_unreadable_response(body: bytes) -> None:
    with pytest.raises(UpstreamError):
        proto().chat_response(body, "m")


def test_candidates_become_indexed_choices() -> None:
    cands = [
        {"content": {"parts": [{"text": "B"}]}, "finishReason": "MAX_TOKENS", "index": 1},
        {"content": {"parts": [{"text": "A"}]}, "finishReason": "STOP"},  # index 0 omitted (proto default)
    ]
    doc = json.loads(proto().chat_response(json.dumps({"candidates": cands}).encode(), "m").body)
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in doc["choices"]] == [
        (0, "A", "stop"),
        (1, "B", "length"),
    ]
    assert "usage" not in doc


def test_logprobs() -> None:
    result = {
        "chosenCandidates": [{"token": "Hi", "logProbability": -0.1}, {"token": "!", "logProbability": -0.5}],
        "topCandidates": [
            {
                "candidates": [
                    {"token": "Hi", "logProbability": -0.1},
                    {"token": "Hey", "logProbability": -2.0},
                ]
            },
            {"candidates": [{"token": "!", "logProbability": -0.5}]},
        ],
    }
    cand = {"content": {"parts": [{"text": "Hi!"}]}, "finishReason": "STOP", "logprobsResult": result}
    doc = json.loads(proto().chat_response(json.dumps({"candidates": [cand]}).encode(), "m").body)
    content = doc["choices"][0]["logprobs"]["content"]
    assert content[0] == {
        "token": "Hi",
        "logprob": -0.1,
        "bytes": [72, 105],
        "top_logprobs": [
            {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
            {"token": "Hey", "logprob": -2.0, "bytes": [72, 101, 121]},
        ],
    }
    assert content[1]["token"] == "!" and len(content[1]["top_logprobs"]) == 1


# -- streams ------------------------------------------------------------------------------
def _event(
    parts: list[dict[str, Any]] | None = None, finish: str | None = None, index: int = 0, **extra: Any
) -> bytes:
    cand: dict[str, Any] = {"index": index} if index else {}
    if parts is not None:
        cand["content"] = {"role": "model", "parts": parts}
    if finish:
        cand["finishReason"] = finish
    return json.dumps({"candidates": [cand], **extra}).encode()


def _chunks(out: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(c) for c in out]


def test_stream_text_and_usage() -> None:
    t = proto().chat_stream("alias", include_usage=True)
    out = t.feed("", _event([{"text": "Hel"}], usageMetadata={"promptTokenCount": 5, "totalTokenCount": 5}))
    out += t.feed("", _event([{"text": "lo"}, {"text": "!"}]))
    out += t.feed("", _event([{"text": " Bye"}], "STOP", usageMetadata=USAGE))
    assert not t.done
    out += t.close()
    assert t.done
    chunks = _chunks(out)
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1 and chunks[0]["model"] == "alias"
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo!"},
        {"content": " Bye"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 4 + ["stop"]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 107
    assert chunks[-1]["usage"]["completion_tokens"] == 50 and chunks[-1]["usage"]["total_tokens"] == 157
    assert t.usage is not None and t.usage.reasoning_tokens == 30


def test_stream_without_include_usage() -> None:
    t = proto().chat_stream("m", include_usage=False)
    out = t.feed("", _event([{"text": "x"}], "STOP", usageMetadata=USAGE)) + t.close()
    assert all("usage" not in c for c in _chunks(out))
    assert t.usage is not None and t.usage.prompt_tokens == 107  # still reported to the worker


def test_stream_tool_calls() -> None:
    t = proto().chat_stream("m", include_usage=False)
    out = t.feed("", _event([{"text": "Checking."}]))
    out += t.feed(
        "",
        _event(
            [{"functionCall": {"name": "a", "args": {"x": 1}}}, {"functionCall": {"name": "b", "args": {}}}]
        ),
    )
    out += t.feed("", _event([{"functionCall": {"id": "c3", "name": "c", "args": {"y": "z"}}}], "STOP"))
    out += t.close()
    chunks = _chunks(out)
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if "tool_calls" in c["choices"][0]["delta"]
    ]
    assert [(c["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        (0, "a", '{"x":1}'),
        (1, "b", "{}"),
        (2, "c", '{"y":"z"}'),
    ]
    assert all(c["type"] == "function" and c["id"] for c in calls) and calls[2]["id"] == "c3"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_thoughts_become_reasoning_content() -> None:
    t = proto().chat_stream("m", include_usage=False)
    out = t.feed(
        "",
        _event([{"text": "hmm", "thought": True}, {"text": "ok", "thought": True}, {"text": "Yes"}], "STOP"),
    )
    deltas = [c["choices"][0]["delta"] for c in _chunks(out)]
    assert deltas[1:] == [{"reasoning_content": "hmmok"}, {"content": "Yes"}, {}]


@pytest.mark.parametrize("events", [[], [_event([{"text": "partial"}])], [_event(None, usageMetadata=USAGE)]])
def test_cut_stream_is_an_error(events: list[bytes]) -> None:
    t = proto().chat_stream("m", include_usage=True)
    for e in events:
        t.feed("", e)
    with pytest.raises(UpstreamError):
        t.close()
    assert not t.done


def test_stream_multiple_candidates_each_need_a_finish() -> None:
    t = proto().chat_stream("m", include_usage=False)
    out = t.feed("", _event([{"text": "a"}]))
    out += t.feed("", _event([{"text": "b"}], index=1))
    out += t.feed("", _event([{"text": "!"}], "STOP"))
    with pytest.raises(UpstreamError):
        t.close()
    out += t.feed("", _event(None, "MAX_TOKENS", index=1))
    t.close()
    chunks = _chunks(out)
    assert [
        (c["choices"][0]["index"], c["choices"][0]["finish_reason"])
        for c in chunks
        if c["choices"][0]["finish_reason"]
    ] == [
        (0, "stop"),
        (1, "length"),
    ]
    assert [c["choices"][0]["delta"] for c in chunks if c["choices"][0]["index"] == 1][0] == {
        "role": "assistant",
        "content": "",
    }


def test_stream_safety_mid_stream() -> None:
    t = proto().chat_stream("m", include_usage=False)
    t.feed("", _event([{"text": "Sure, here"}]))
    out = t.feed("", _event(None, "SAFETY", safetyRatings=[]))
    assert _chunks(out)[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert t.close() == []


def test_stream_prompt_blocked() -> None:
    t = proto().chat_stream("m", include_usage=False)
    with pytest.raises(InvalidRequest) as e:
        t.feed("", json.dumps({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}).encode())
    assert e.value.code == "content_filter" and e.value.param == "messages"


@pytest.mark.parametrize(
    ("code", "status", "cls"),
    [
        (503, "UNAVAILABLE", Overloaded),
        (500, "INTERNAL", UpstreamError),
        (429, "RESOURCE_EXHAUSTED", RateLimited),
    ],
)
def test_stream_error_event(code: int, status: str, cls: type) -> None:
    t = proto().chat_stream("m", include_usage=False)
    t.feed("", _event([{"text": "a"}]))
    with pytest.raises(cls):
        t.feed("", json.dumps({"error": {"code": code, "message": "boom", "status": status}}).encode())


def test_stream_malformed_function_call_and_garbage() -> None:
    t = proto().chat_stream("m", include_usage=False)
    with pytest.raises(UpstreamError):
        t.feed("", _event(None, "MALFORMED_FUNCTION_CALL"))
    with pytest.raises(UpstreamError):
        proto().chat_stream("m", include_usage=False).feed("", b"{not json")


# -- errors ---------------------------------------------------------------------------------
def _rpc(code: int, status: str, message: str = "msg", details: list[dict[str, Any]] | None = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        err["details"] = details
    return json.dumps({"error": err}).encode()


KEY_INVALID = [
    {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
    },
    {
        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
        "locale": "en-US",
        "message": "API key not valid.",
    },
]
RETRY = [
    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "m"}]},
    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"},
]
ERROR_TABLE = [
    # (status, body, headers, class, gateway status, retry_after, code)
    (400, _rpc(400, "INVALID_ARGUMENT", "API key not valid.", KEY_INVALID), {}, UpstreamAuthError, 502, None, "upstream_authentication_error"),
    (401, _rpc(401, "UNAUTHENTICATED"), {}, UpstreamAuthError, 502, None, "upstream_authentication_error"),
    (403, _rpc(403, "PERMISSION_DENIED"), {}, UpstreamAuthError, 502, None, "upstream_authentication_error"),
    (429, _rpc(429, "RESOURCE_EXHAUSTED", "quota", RETRY), {}, RateLimited, 429, 12.0, "rate_limit_exceeded"),
    (429, _rpc(429, "RESOURCE_EXHAUSTED", "quota", RETRY), {"Retry-After": "3"}, RateLimited, 429, 3.0, "rate_limit_exceeded"),
    (429, _rpc(429, "RESOURCE_EXHAUSTED"), {}, RateLimited, 429, None, "rate_limit_exceeded"),
    (503, _rpc(503, "UNAVAILABLE", "overloaded"), {}, Overloaded, 503, None, "server_is_overloaded"),
    (504, _rpc(504, "DEADLINE_EXCEEDED"), {}, GatewayTimeout, 504, None, "timeout"),
    (400, _rpc(400, "INVALID_ARGUMENT", "bad field"), {}, UpstreamRejected, 400, None, "invalid_argument"),
    (400, _rpc(400, "FAILED_PRECONDITION", "region"), {}, UpstreamRejected, 400, None, "failed_precondition"),
    # "API key" in the message but no structured reason: a plain 400 (no substring matching)
    (400, _rpc(400, "INVALID_ARGUMENT", "API key not valid."), {}, UpstreamRejected, 400, None, "invalid_argument"),
    (404, _rpc(404, "NOT_FOUND", "models/x is not found"), {}, UpstreamRejected, 404, None, "not_found"),
    (500, _rpc(500, "INTERNAL"), {}, UpstreamError, 502, None, "internal"),
    (502, b"<html>Bad Gateway</html>", {}, UpstreamError, 502, None, None),
    (503, b"[" + _rpc(503, "UNAVAILABLE") + b"]", {}, Overloaded, 503, None, "server_is_overloaded"),
]  # fmt: skip


@pytest.mark.parametrize(("status", "body", "headers", "cls", "gw", "retry", "code"), ERROR_TABLE)
def test_error_table(
    status: int, body: bytes, headers: dict[str, str], cls: type, gw: int, retry: Any, code: Any
) -> None:
    err = proto().error(status, body, headers)
    assert type(err) is cls
    assert (err.status, err.retry_after, err.code, err.provider) == (gw, retry, code, "gem")


def test_rejected_error_keeps_the_upstream_message() -> None:
    err = proto().error(400, _rpc(400, "INVALID_ARGUMENT", "* contents: must not be empty"), {})
    assert err.message == "* contents: must not be empty" and err.type == "invalid_request_error"
    assert not err.retryable


# -- embeddings -----------------------------------------------------------------------------
def test_embeddings_request() -> None:
    call = proto().embeddings_request(
        {"model": "e", "input": ["a", "bb"], "dimensions": 8}, "text-embedding-004"
    )
    assert call.url == f"{BASE}/models/text-embedding-004:batchEmbedContents" and call.method == "POST"
    assert json.loads(call.body) == {
        "requests": [
            {
                "model": "models/text-embedding-004",
                "content": {"parts": [{"text": "a"}]},
                "outputDimensionality": 8,
            },
            {
                "model": "models/text-embedding-004",
                "content": {"parts": [{"text": "bb"}]},
                "outputDimensionality": 8,
            },
        ]
    }
    single = json.loads(proto().embeddings_request({"model": "e", "input": "x"}, "e").body)
    assert single == {"requests": [{"model": "models/e", "content": {"parts": [{"text": "x"}]}}]}


@pytest.mark.parametrize("value", [[1, 2, 3], [[1, 2]]])
def test_embeddings_reject_token_input(value: Any) -> None:
    with pytest.raises(InvalidRequest) as e:
        proto().embeddings_request({"model": "e", "input": value}, "e")
    assert e.value.param == "input"


VECS = {"embeddings": [{"values": [0.5, -0.25, 1.0]}, {"values": [0.0, 0.125, -1.5]}]}


def test_embeddings_float_and_usage_estimate() -> None:
    req = {"model": "e", "input": ["hello world", "é" * 5]}  # 11 bytes -> 3, 10 bytes -> 3
    out = proto().embeddings_response(json.dumps(VECS).encode(), "alias", req)
    doc = json.loads(out.body)
    assert doc["object"] == "list" and doc["model"] == "alias"
    assert [d["embedding"] for d in doc["data"]] == [[0.5, -0.25, 1.0], [0.0, 0.125, -1.5]]
    assert [d["index"] for d in doc["data"]] == [0, 1]
    assert doc["usage"] == {"prompt_tokens": 6, "total_tokens": 6} and out.usage.prompt_tokens == 6
    assert out.usage.estimated


def test_embeddings_usage_metadata_when_present() -> None:
    body = json.dumps({**VECS, "usageMetadata": {"promptTokenCount": 9}}).encode()
    out = proto().embeddings_response(body, "e", {"model": "e", "input": ["a", "b"]})
    assert out.usage.prompt_tokens == 9 and not out.usage.estimated


def test_embeddings_base64() -> None:
    req = {"model": "e", "input": ["a", "b"], "encoding_format": "base64"}
    doc = json.loads(proto().embeddings_response(json.dumps(VECS).encode(), "e", req).body)
    decoded = [struct.unpack("<3f", base64.b64decode(d["embedding"])) for d in doc["data"]]
    assert decoded == [(0.5, -0.25, 1.0), (0.0, 0.125, -1.5)]


def test_embeddings_dimensions_are_normalized() -> None:
    req = {"model": "e", "input": ["a", "b"], "dimensions": 3}
    doc = json.loads(proto().embeddings_response(json.dumps(VECS).encode(), "e", req).body)
    for d in doc["data"]:
        assert sum(v * v for v in d["embedding"]) == pytest.approx(1.0)


def test_embeddings_count_mismatch() -> None:
    with pytest.raises(UpstreamError):
        proto().embeddings_response(json.dumps(VECS).encode(), "e", {"model": "e", "input": "one"})


# -- discovery ------------------------------------------------------------------------------
def test_models_request_and_response() -> None:
    call = proto().models_request()
    assert call is not None and call.method == "GET" and call.url == f"{BASE}/models?pageSize=1000"
    assert call.headers == {"x-goog-api-key": "sk-test"}
    listing = {
        "models": [
            {
                "name": "models/gemini-2.0-flash",
                "supportedGenerationMethods": ["generateContent", "countTokens"],
            },
            {"name": "models/text-embedding-004", "supportedGenerationMethods": ["embedContent"]},
            {"name": "models/imagen-3.0-generate-002", "supportedGenerationMethods": ["predict"]},
            {"name": "models/aqa", "supportedGenerationMethods": ["generateAnswer"]},
        ]
    }
    assert proto().models_response(json.dumps(listing).encode()) == ["gemini-2.0-flash", "text-embedding-004"]


# -- OpenAI schema validation (tests/schema.py, written by another engineer) ------------------
def test_outputs_match_openai_schemas(validate: Any) -> None:
    p = proto()
    resp = json.loads(
        p.chat_response(
            _resp([{"text": "hi"}, {"functionCall": {"name": "f", "args": {"a": 1}}}], usageMetadata=USAGE),
            "m",
        ).body
    )
    validate("CreateChatCompletionResponse", resp)
    t = p.chat_stream("m", include_usage=True)
    out = t.feed(
        "", _event([{"text": "a"}, {"functionCall": {"name": "f", "args": {}}}], "STOP", usageMetadata=USAGE)
    )
    for chunk in _chunks(out + t.close()):
        validate("CreateChatCompletionStreamResponse", chunk)
    # float only: the spec types `embedding` as a number array although OpenAI sends a string for base64
    emb = p.embeddings_response(json.dumps(VECS).encode(), "e", {"model": "e", "input": ["a", "b"]})
    validate("CreateEmbeddingResponse", json.loads(emb.body))


# -- the adapter against the strict emulator, through the worker's HTTP part (upstream.py) --
class Sink:
    def __init__(self) -> None:
        self.started = False
        self.chunks: list[dict[str, Any]] = []
        self.body: dict[str, Any] | None = None

    async def chunk(self, *pieces: bytes) -> None:
        self.started = True
        self.chunks.extend(json.loads(p) for p in pieces)

    async def result(self, body: bytes) -> None:
        self.started = True
        self.body = json.loads(body)


@pytest.fixture
async def emu() -> Any:
    from aiohttp.test_utils import TestServer

    from tests.emulators.gemini import API_KEY, REQUESTS, make_app

    app = make_app()
    server = TestServer(app)
    await server.start_server()
    base = str(server.make_url("/v1beta"))

    async def run(op: str, req: dict[str, Any], model: str = "gemini-2.0-flash", key: str = API_KEY) -> Sink:
        p = proto(base_url=base, api_key=key)
        sink = Sink()
        async with new_session(p.provider) as session:  # the worker's real HTTP part
            usage = await p.run(
                Upstream(p.provider, p, session), sink, op, req, model, bool(req.get("stream"))
            )
        sink.usage = usage  # type: ignore[attr-defined]
        return sink

    run.requests = app[REQUESTS]  # type: ignore[attr-defined]
    run.base = base  # type: ignore[attr-defined]
    yield run
    await server.close()


async def test_emulator_chat_with_every_parameter(emu: Any) -> None:
    req = chat(
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": [
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp"}},
        ]},
        max_completion_tokens=50, stop=["zzz"], temperature=0.2, top_p=0.9, n=2, seed=1,
        presence_penalty=0.1, frequency_penalty=0.1, logprobs=True, top_logprobs=2, top_k=20,
        safety_settings=[{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}],
        reasoning_effort="medium", user="u", tools=TOOLS, tool_choice="auto",
    )  # fmt: skip
    sink = await emu("chat", req, "gemini-2.5-flash")
    assert sink.body is not None
    contents = [c["message"]["content"] for c in sink.body["choices"]]
    assert contents == [
        "You said: describe [images: image/png, image/webp]",
        "You said: describe [images: image/png, image/webp] (candidate 1)",
    ]
    assert sink.body["usage"]["prompt_tokens"] == 2 + 1 + 2 * 258
    assert sink.body["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


async def test_emulator_json_schema(emu: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "s": {"type": "string"}},
        "required": ["n", "s"],
    }
    req = chat(USER, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    sink = await emu("chat", req)
    assert json.loads(sink.body["choices"][0]["message"]["content"]) == {"n": 1, "s": "example"}  # type: ignore[index]


async def test_emulator_stream(emu: Any) -> None:
    req = chat(
        {"role": "user", "content": "one two three four five six seven"},
        stream=True,
        stream_options={"include_usage": True},
    )
    sink = await emu("chat", req)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in sink.chunks if c["choices"])
    assert text == "You said: one two three four five six seven"
    assert [c["choices"][0]["finish_reason"] for c in sink.chunks if c["choices"]][-1] == "stop"
    assert sink.chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}
    assert sink.usage.completion_tokens == 9  # type: ignore[attr-defined]


async def test_emulator_parallel_tool_round_trip(emu: Any) -> None:
    first = await emu("chat", chat({"role": "user", "content": "use get_weather and get_time"}, tools=TOOLS))
    message = first.body["choices"][0]["message"]  # type: ignore[index]
    assert first.body["choices"][0]["finish_reason"] == "tool_calls"  # type: ignore[index]
    assert [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]
    ] == [
        ("get_weather", {"city": "example"}),
        ("get_time", {}),
    ]
    history = [
        {"role": "user", "content": "use get_weather and get_time"},
        {"role": "assistant", "content": None, "tool_calls": message["tool_calls"]},
        *(
            {"role": "tool", "tool_call_id": c["id"], "content": f"result {i}"}
            for i, c in enumerate(message["tool_calls"])
        ),
    ]
    second = await emu("chat", chat(*history, tools=TOOLS, stream=True))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in second.chunks)
    assert text == 'Results: get_weather={"result": "result 0"}; get_time={"result": "result 1"}'


async def test_emulator_gemini3_thought_signatures(emu: Any) -> None:
    req = chat({"role": "user", "content": "call get_time"}, tools=TOOLS, tool_choice="required", stream=True)
    first = await emu("chat", req, "gemini-3-pro-preview")
    call = next(
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in first.chunks
        if "tool_calls" in c["choices"][0]["delta"]
    )
    assert "__ts_" in call["id"]
    call.pop("index")
    history = [
        {"role": "user", "content": "call get_time"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"time": "noon"}'},
    ]
    second = await emu("chat", chat(*history, tools=TOOLS), "gemini-3-pro-preview")
    assert second.body["choices"][0]["message"]["content"] == 'Results: get_time={"time": "noon"}'  # type: ignore[index]
    call["id"] = call["id"].split("__ts_")[0]  # a client that lost the signature
    history[1]["tool_calls"] = [call]
    history[2]["tool_call_id"] = call["id"]
    with pytest.raises(UpstreamRejected) as e:
        await emu("chat", chat(*history, tools=TOOLS), "gemini-3-pro-preview")
    assert "thought_signature" in e.value.message


@pytest.mark.parametrize(
    ("text", "stream", "cls", "retry"),
    [
        ("[fail:429]", False, RateLimited, 7.0),
        ("[fail:503]", True, Overloaded, None),
        ("[fail:500]", False, UpstreamError, None),
        ("[fail:504]", False, GatewayTimeout, None),
        ("[fail:404]", False, UpstreamRejected, None),
        ("[fail-mid:503]", True, Overloaded, None),
        ("[cut]", True, UpstreamError, None),
        ("[cut]", False, UpstreamError, None),
        ("[malformed]", False, UpstreamError, None),
        ("[block]", True, InvalidRequest, None),
    ],
)
async def test_emulator_failures(emu: Any, text: str, stream: bool, cls: type, retry: Any) -> None:
    with pytest.raises(cls) as e:
        await emu("chat", chat({"role": "user", "content": f"hello {text}"}, stream=stream))
    assert type(e.value) is cls and e.value.retry_after == retry


async def test_emulator_wrong_key_is_upstream_auth(emu: Any) -> None:
    with pytest.raises(UpstreamAuthError):
        await emu("chat", chat(USER), key="wrong")


async def test_emulator_safety_stream(emu: Any) -> None:
    sink = await emu("chat", chat({"role": "user", "content": "tell me [unsafe] things"}, stream=True))
    assert sink.chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


async def test_emulator_embeddings_split_into_batches(emu: Any) -> None:
    texts = [f"text {i}" for i in range(150)]
    sink = await emu(
        "embeddings",
        {"model": "e", "input": texts, "dimensions": 16, "encoding_format": "base64"},
        "gemini-embedding-001",
    )
    assert sink.body is not None and [d["index"] for d in sink.body["data"]] == list(range(150))
    vec = struct.unpack("<16f", base64.b64decode(sink.body["data"][0]["embedding"]))
    assert sum(v * v for v in vec) == pytest.approx(1.0, rel=1e-5)
    assert [r[0] for r in emu.requests] == ["batchEmbedContents"] * 2
    assert sink.body["usage"]["prompt_tokens"] == sum(-(-len(t) // 4) for t in texts)


async def test_emulator_models(emu: Any) -> None:
    p = proto(base_url=emu.base, api_key="test-gemini-key")
    call = p.models_request()
    async with new_session(p.provider) as session:
        resp = await Upstream(p.provider, p, session).fetch(call)
    names = p.models_response(resp.body)
    assert "gemini-2.0-flash" in names and "text-embedding-004" in names
    assert "imagen-3.0-generate-002" not in names
