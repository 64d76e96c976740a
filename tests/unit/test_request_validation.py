"""libs/common/openai.py decode(op, body): what the ingress accepts, and the 400s that name the field."""

from __future__ import annotations

import json

import pytest

from libs.common.errors import InvalidRequest
from libs.common.openai import ChatRequest, CompletionRequest, EmbeddingRequest, decode

USER = [{"role": "user", "content": "hi"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True,
    },
}


def chat(**kw: object) -> bytes:
    return json.dumps({"model": "gpt-4o", "messages": USER, **kw}).encode()


# -- valid bodies ------------------------------------------------------------------------


def test_full_chat_body_decodes():
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "system", "content": [{"type": "text", "text": "sys"}], "name": "boss"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ],
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True},
        },
        "n": 3,
        "stop": ["END", "STOP"],
        "seed": 42,
        "max_tokens": 100,
        "max_completion_tokens": 200,
        "logprobs": True,
        "top_logprobs": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.7,
        "top_p": 0.9,
        "frequency_penalty": -1.5,
        "presence_penalty": 2.0,
        "logit_bias": {"50256": -100},
        "user": "u1",
        "metadata": {"a": "b"},
    }
    req = decode("chat", json.dumps(body).encode())
    assert isinstance(req, ChatRequest)
    assert req.model == "gpt-4o" and len(req.messages) == 6
    assert [type(m).__name__ for m in req.messages] == [
        "DeveloperMessage",
        "SystemMessage",
        "UserMessage",
        "AssistantMessage",
        "ToolMessage",
        "AssistantMessage",
    ]
    parts = req.messages[2].content
    assert [type(p).__name__ for p in parts] == ["TextPart", "ImagePart", "ImagePart"]
    assert parts[1].image_url.url == "https://x/y.png" and parts[1].image_url.detail == "high"
    assert req.messages[3].tool_calls[0].function.name == "get_weather"
    assert req.messages[4].tool_call_id == "call_1"
    assert req.tools[0].function.name == "get_weather" and req.tools[0].function.strict is True
    assert req.tool_choice.function.name == "get_weather"
    assert req.parallel_tool_calls is False
    assert req.response_format.json_schema.name == "w"
    assert (req.n, req.stop, req.seed) == (3, ["END", "STOP"], 42)
    assert (req.max_tokens, req.max_completion_tokens) == (100, 200)
    assert (req.logprobs, req.top_logprobs) == (True, 5)
    assert req.stream is True and req.stream_options.include_usage is True


@pytest.mark.parametrize(
    "choice", ["none", "auto", "required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_tool_choice_variants(choice):
    req = decode("chat", chat(tools=[TOOL], tool_choice=choice))
    if isinstance(choice, str):
        assert req.tool_choice == choice
    else:
        assert req.tool_choice.function.name == "get_weather"


def test_tool_choice_none_without_tools_is_accepted():
    assert decode("chat", chat(tool_choice="none")).tool_choice == "none"


@pytest.mark.parametrize(
    ("fmt", "cls"),
    [
        ({"type": "text"}, "FormatText"),
        ({"type": "json_object"}, "FormatJsonObject"),
        ({"type": "json_schema", "json_schema": {"name": "out"}}, "FormatJsonSchema"),
    ],
)
def test_response_format_variants(fmt, cls):
    assert type(decode("chat", chat(response_format=fmt)).response_format).__name__ == cls


@pytest.mark.parametrize("stop", ["\n", ["a"], ["a", "b", "c", "d"]])
def test_stop_str_or_list(stop):
    assert decode("chat", chat(stop=stop)).stop == stop


@pytest.mark.parametrize("n", [1, 128])
def test_n_bounds_inclusive(n):
    assert decode("chat", chat(n=n)).n == n


def test_unknown_fields_are_accepted():
    req = decode(
        "chat",
        chat(
            top_k=40,
            safe_prompt=True,
            provider={"order": ["x"]},
            messages=[{"role": "user", "content": "x", "extra": 1}],
        ),
    )
    assert isinstance(req, ChatRequest)


def test_completions_bodies():
    for prompt in ["hello", ["a", "b"], [1, 2, 3], [[1, 2], [3]]]:
        req = decode(
            "completions",
            json.dumps({"model": "m", "prompt": prompt, "max_tokens": 0, "echo": True}).encode(),
        )
        assert isinstance(req, CompletionRequest) and req.prompt == prompt
    req = decode(
        "completions",
        json.dumps(
            {
                "model": "m",
                "prompt": "x",
                "stream": True,
                "stream_options": {"include_usage": True},
                "logprobs": 5,
                "suffix": "s",
                "best_of": 2,
            }
        ).encode(),
    )
    assert req.stream_options.include_usage is True and req.logprobs == 5


def test_embeddings_bodies():
    for inp in ["hello", ["a", "b"], [1, 2], [[1], [2, 3]]]:
        req = decode("embeddings", json.dumps({"model": "e", "input": inp}).encode())
        assert isinstance(req, EmbeddingRequest) and req.input == inp and req.encoding_format == "float"
    req = decode(
        "embeddings",
        json.dumps(
            {"model": "e", "input": "x", "encoding_format": "base64", "dimensions": 8, "unknown": 1}
        ).encode(),
    )
    assert (req.encoding_format, req.dimensions) == ("base64", 8)


# -- invalid bodies: InvalidRequest naming the field ----------------------------------------

CHAT_INVALID = [
    ("temperature 2.5", {"temperature": 2.5}, "temperature"),
    ("temperature negative", {"temperature": -0.1}, "temperature"),
    ("top_p 1.5", {"top_p": 1.5}, "top_p"),
    ("n 0", {"n": 0}, "n"),
    ("n 129", {"n": 129}, "n"),
    ("stop 5 items", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("stop empty list", {"stop": []}, "stop"),
    ("frequency_penalty", {"frequency_penalty": 2.5}, "frequency_penalty"),
    ("max_tokens 0", {"max_tokens": 0}, "max_tokens"),
    ("max_completion_tokens str", {"max_completion_tokens": "10"}, "max_completion_tokens"),
    ("top_logprobs 21", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("bad role", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ("missing content", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("content of wrong type", {"messages": [USER[0], {"role": "user", "content": 5}]}, "messages[1].content"),
    (
        "tool message without tool_call_id",
        {"messages": [{"role": "tool", "content": "x"}]},
        "messages[0].tool_call_id",
    ),
    (
        "image part without url",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "low"}}]}]},
        "messages[0].content[0].image_url.url",
    ),
    (
        "unknown content part type",
        {"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]},
        "messages[0].content[0].type",
    ),
    ("no messages", {"messages": []}, "messages"),
    (
        "tool with bad function name",
        {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
        "tools[0].function.name",
    ),
    ("response_format unknown type", {"response_format": {"type": "xml"}}, "response_format.type"),
    (
        "json_schema without name",
        {"response_format": {"type": "json_schema", "json_schema": {}}},
        "response_format.json_schema.name",
    ),
    ("stream_options without stream", {"stream_options": {"include_usage": True}}, "stream_options"),
    (
        "stream_options with stream false",
        {"stream": False, "stream_options": {"include_usage": True}},
        "stream_options",
    ),
    ("top_logprobs without logprobs", {"top_logprobs": 3}, "top_logprobs"),
    ("tool_choice without tools", {"tool_choice": "required"}, "tool_choice"),
    (
        "named tool_choice without tools",
        {"tool_choice": {"type": "function", "function": {"name": "f"}}},
        "tool_choice",
    ),
    ("tool_choice bad string", {"tools": [TOOL], "tool_choice": "always"}, "tool_choice"),
    ("parallel_tool_calls without tools", {"parallel_tool_calls": True}, "parallel_tool_calls"),
    ("model empty", {"model": ""}, "model"),
]


@pytest.mark.parametrize(("fields", "param"), [c[1:] for c in CHAT_INVALID], ids=[c[0] for c in CHAT_INVALID])
def test_chat_invalid(fields, param):
    with pytest.raises(InvalidRequest) as e:
        decode("chat", chat(**fields))
    err = e.value
    assert err.param == param
    assert err.status == 400 and err.type == "invalid_request_error"
    assert err.code != "invalid_json"


def test_missing_model_and_messages_are_named():
    with pytest.raises(InvalidRequest) as e:
        decode("chat", json.dumps({"messages": USER}).encode())
    assert e.value.param == "model"
    with pytest.raises(InvalidRequest) as e:
        decode("chat", json.dumps({"model": "m"}).encode())
    assert e.value.param == "messages"


OTHER_INVALID = [
    ("embeddings empty string", "embeddings", {"model": "e", "input": ""}, "input"),
    ("embeddings empty list", "embeddings", {"model": "e", "input": []}, "input"),
    ("embeddings empty string item", "embeddings", {"model": "e", "input": ["a", ""]}, "input"),
    ("embeddings mixed", "embeddings", {"model": "e", "input": ["a", 1]}, "input"),
    ("embeddings dimensions 0", "embeddings", {"model": "e", "input": "x", "dimensions": 0}, "dimensions"),
    (
        "embeddings dimensions 1e9",
        "embeddings",
        {"model": "e", "input": "x", "dimensions": 10**9},
        "dimensions",
    ),
    (
        "embeddings dimensions 5e6",
        "embeddings",
        {"model": "e", "input": "x", "dimensions": 5_000_000},
        "dimensions",
    ),
    ("embeddings 2,049 inputs", "embeddings", {"model": "e", "input": ["x"] * 2049}, "input"),
    ("chat n 129", "chat", {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 129}, "n"),
    (
        "chat max_tokens 0",
        "chat",
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        "max_tokens",
    ),
    (
        "embeddings encoding_format",
        "embeddings",
        {"model": "e", "input": "x", "encoding_format": "int8"},
        "encoding_format",
    ),
    ("completions mixed str/list", "completions", {"model": "m", "prompt": ["a", [1, 2]]}, "prompt"),
    ("completions mixed int/str", "completions", {"model": "m", "prompt": [1, "a"]}, "prompt"),
    ("completions empty list", "completions", {"model": "m", "prompt": []}, "prompt"),
    (
        "completions stream_options without stream",
        "completions",
        {"model": "m", "prompt": "x", "stream_options": {}},
        "stream_options",
    ),
    ("completions logprobs 6", "completions", {"model": "m", "prompt": "x", "logprobs": 6}, "logprobs"),
    ("completions missing prompt", "completions", {"model": "m"}, "prompt"),
]


@pytest.mark.parametrize(
    ("op", "body", "param"), [c[1:] for c in OTHER_INVALID], ids=[c[0] for c in OTHER_INVALID]
)
def test_completions_and_embeddings_invalid(op, body, param):
    with pytest.raises(InvalidRequest) as e:
        decode(op, json.dumps(body).encode())
    assert e.value.param == param and e.value.status == 400


@pytest.mark.parametrize("body", [b"{not json", b"", b'{"model": "m", "messages": [', b"\xff\xfe"])
def test_malformed_json(body):
    with pytest.raises(InvalidRequest) as e:
        decode("chat", body)
    assert e.value.code == "invalid_json"
    assert e.value.param is None


@pytest.mark.parametrize("op", ["chat", "completions", "embeddings"])
@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_non_object_json_body(op, body):
    with pytest.raises(InvalidRequest) as e:
        decode(op, body)
    assert e.value.status == 400
    assert e.value.code != "invalid_json"  # it parsed; it is the wrong shape
    assert "object" in e.value.message


def test_error_message_names_the_field():
    with pytest.raises(InvalidRequest) as e:
        decode("chat", chat(temperature=2.5))
    assert "temperature" in e.value.message
