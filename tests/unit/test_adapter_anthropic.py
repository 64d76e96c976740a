"""Unit tests of the Anthropic protocol's pure translators (no network)."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import pytest

from libs.common.config import ProviderConfig
from libs.common.errors import (
    GatewayTimeout,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRejected,
)
from libs.common.profiles import PRESETS
from services.worker.adapters.anthropic import JSON_OBJECT_INSTRUCTION, AnthropicProtocol
from tests import schema
from tests.emulators import anthropic as emulator

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()


def provider(**kw: Any) -> ProviderConfig:
    return ProviderConfig(**({"id": "anth", "kind": "anthropic", "api_key": "sk-ant-test"} | kw))


def proto(profile: Any = None, **kw: Any) -> AnthropicProtocol:
    return AnthropicProtocol(provider(**kw), profile or PRESETS["anthropic"])


def req(*messages: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"model": "my-alias", "messages": list(messages), **kw}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def build(r: dict[str, Any], stream: bool = False, p: AnthropicProtocol | None = None) -> dict[str, Any]:
    call = (p or proto()).chat_request(r, "claude-sonnet-4-5", stream)
    assert call.body is not None
    return json.loads(call.body)


def call_tool(id: str, name: str, args: str) -> dict[str, Any]:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": args}}


# -- request: transport ------------------------------------------------------------------


def test_http_call_url_headers_and_model() -> None:
    p = proto(headers={"anthropic-beta": "x-2025"})
    call = p.chat_request(req(user("hi")), "claude-sonnet-4-5", False)
    assert call.method == "POST"
    assert call.url == "https://api.anthropic.com/v1/messages"
    assert call.headers["x-api-key"] == "sk-ant-test"
    assert call.headers["anthropic-version"] == "2023-06-01"
    assert call.headers["content-type"] == "application/json"
    assert call.headers["anthropic-beta"] == "x-2025"
    assert call.stream is False
    body = json.loads(call.body or b"")
    assert body["model"] == "claude-sonnet-4-5"  # the model argument, not the client's alias
    assert "stream" not in body


@pytest.mark.parametrize("base", ["http://127.0.0.1:9/", "http://127.0.0.1:9/v1", "http://127.0.0.1:9"])
def test_base_url_with_or_without_v1(base: str) -> None:
    call = proto(base_url=base).chat_request(req(user("hi")), "m", False)
    assert call.url == "http://127.0.0.1:9/v1/messages"


def test_stream_flag() -> None:
    call = proto().chat_request(req(user("hi")), "m", True)
    assert call.stream is True
    assert json.loads(call.body or b"")["stream"] is True


# -- request: messages -------------------------------------------------------------------


def test_system_and_developer_join_in_order() -> None:
    body = build(
        req(
            {"role": "system", "content": "Be brief."},
            user("hi"),
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            {"role": "assistant", "content": "Salut"},
            user("again"),
        )
    )
    assert body["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use French."}]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


def test_single_system_is_a_string() -> None:
    assert build(req({"role": "system", "content": "Be brief."}, user("hi")))["system"] == "Be brief."
    assert "system" not in build(req(user("hi")))


def test_user_text_and_images() -> None:
    body = build(
        req(
            user(
                [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"},
                    },
                    {"type": "image_url", "image_url": {"url": f"data:image/jpg;base64,{PNG}"}},
                ]
            )
        )
    )
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}},
            ],
        }
    ]


@pytest.mark.parametrize(
    "url",
    [
        "data:image/bmp;base64,AAAA",
        "data:image/png,rawdata",
        "ftp://example.com/a.png",
        "data:text/plain;base64,QQ==",
    ],
)
def test_bad_images_are_rejected_naming_the_part(url: str) -> None:
    r = req(
        user("first"),
        {"role": "assistant", "content": "ok"},
        user([{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": url}}]),
    )
    with pytest.raises(InvalidRequest) as e:
        build(r)
    assert e.value.status == 400
    assert e.value.param == "messages[2].content[1].image_url"


def test_unsupported_part_rejected() -> None:
    part = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(InvalidRequest) as e:
        build(req(user([part])))
    assert e.value.param == "messages[0].content[0].type"


def test_pdf_file_part_becomes_document() -> None:
    part = {
        "type": "file",
        "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"},
    }
    body = build(req(user([part])))
    assert body["messages"][0]["content"][0] == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
    }


def test_tool_calls_and_results() -> None:
    body = build(
        req(
            user("weather in Paris and London?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    call_tool("call_1", "get_weather", '{"city": "Paris"}'),
                    call_tool("call_2", "get_weather", '{"city":"London"}'),
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "12C"}]},
            user("thanks, and Tokyo?"),
        )
    )
    assert body["messages"] == [
        {"role": "user", "content": "weather in Paris and London?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "London"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "12C"}],
                },
                {"type": "text", "text": "thanks, and Tokyo?"},
            ],
        },
    ]


def test_assistant_text_before_tool_use_and_empty_arguments() -> None:
    body = build(
        req(
            user("go"),
            {"role": "assistant", "content": "Let me check.", "tool_calls": [call_tool("c1", "now", "")]},
            {"role": "tool", "tool_call_id": "c1", "content": ""},
        )
    )
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "c1", "name": "now", "input": {}},
    ]
    assert body["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "c1"}]


@pytest.mark.parametrize("args", ["{not json", "[1, 2]", '"text"', '{"a": 1} trailing', {"a": 1}])
def test_bad_tool_arguments_rejected(args: Any) -> None:
    r = req(
        user("go"),
        {"role": "assistant", "tool_calls": [call_tool("c0", "f", "{}"), call_tool("c1", "f", args)]},
    )
    with pytest.raises(InvalidRequest) as e:
        build(r)
    assert e.value.param == "messages[1].tool_calls[1].function.arguments"


def test_nested_tool_arguments_survive() -> None:
    args = '{"a": {"b": [1, 2.5, null]}, "c": "x\\n\\u00e9", "d": true}'
    body = build(req(user("go"), {"role": "assistant", "tool_calls": [call_tool("c1", "f", args)]}))
    assert body["messages"][1]["content"][0]["input"] == json.loads(args)


def test_same_role_turns_are_merged() -> None:
    body = build(
        req(user("one"), user([{"type": "text", "text": "two"}]), {"role": "assistant", "content": "ok"})
    )
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "ok"},
    ]


def test_empty_text_is_never_sent() -> None:
    body = build(
        req(
            user("first"),
            user(""),
            user(
                [
                    {"type": "text", "text": "  "},
                    {"type": "text", "text": ""},
                    {"type": "text", "text": "second"},
                ]
            ),
            {"role": "assistant", "content": "   "},
            {"role": "system", "content": ""},
        )
    )
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]}
    ]
    assert "system" not in body
    texts = [b for m in body["messages"] for b in m["content"] if isinstance(b, dict) and b["type"] == "text"]
    assert all(t["text"].strip() for t in texts)


def test_prefill_trailing_whitespace_is_stripped() -> None:
    body = build(req(user("count"), {"role": "assistant", "content": "1, 2, "}))
    assert body["messages"][-1] == {"role": "assistant", "content": "1, 2,"}


def test_unknown_role_and_empty_conversation_rejected() -> None:
    with pytest.raises(InvalidRequest) as e:
        build(req({"role": "function", "name": "f", "content": "x"}))
    assert e.value.param == "messages[0].role"
    with pytest.raises(InvalidRequest) as e:
        build(req({"role": "system", "content": "only a system prompt"}))
    assert e.value.param == "messages"


# -- request: options ----------------------------------------------------------------------

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_tools_mapping_and_default_schema() -> None:
    bare = {"type": "function", "function": {"name": "now"}}
    body = build(req(user("hi"), tools=[TOOL, bare]))
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather of a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        (None, True, None),
    ],
)
def test_tool_choice(choice: Any, parallel: Any, expected: Any) -> None:
    r = req(user("hi"), tools=[TOOL])
    if choice is not None:
        r["tool_choice"] = choice
    if parallel is not None:
        r["parallel_tool_calls"] = parallel
    assert build(r).get("tool_choice") == expected


def test_tool_choice_without_tools_not_sent() -> None:
    assert "tool_choice" not in build(req(user("hi"), tool_choice="auto", parallel_tool_calls=False))


def test_max_tokens() -> None:
    assert build(req(user("hi")))["max_tokens"] == 4096
    assert build(req(user("hi"), max_tokens=100))["max_tokens"] == 100
    assert build(req(user("hi"), max_tokens=100, max_completion_tokens=200))["max_tokens"] == 200
    small = msgspec.structs.replace(PRESETS["anthropic"], max_output_tokens=1000)
    assert build(req(user("hi")), p=proto(small))["max_tokens"] == 1000


def test_sampling_stop_and_user() -> None:
    body = build(req(user("hi"), temperature=1.7, top_p=0.9, stop="END", user="u-1"))
    assert body["temperature"] == 1.0
    assert body["top_p"] == 0.9
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-1"}
    body = build(req(user("hi"), temperature=0.2, stop=["a", "b"], user="u-1", safety_identifier="s-1"))
    assert body["temperature"] == 0.2
    assert body["stop_sequences"] == ["a", "b"]
    assert body["metadata"] == {"user_id": "s-1"}


def test_response_format() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    body = build(req(user("hi"), response_format=fmt))
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    body = build(
        req({"role": "system", "content": "Be brief."}, user("hi"), response_format={"type": "json_object"})
    )
    assert body["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": JSON_OBJECT_INSTRUCTION},
    ]
    assert "output_config" not in build(req(user("hi"), response_format={"type": "text"}))


def test_extensions_pass_through_only_listed() -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    body = build(req(user("hi"), thinking=thinking, top_k=5, not_an_extension=1, seed=3))
    assert body["thinking"] == thinking
    assert body["top_k"] == 5
    assert "not_an_extension" not in body and "seed" not in body


def test_translated_requests_pass_the_strict_emulator() -> None:
    r = req(
        {"role": "system", "content": "Be brief."},
        user("hi"),
        user([{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]),
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [call_tool("c1", "get_weather", '{"city":"Paris"}')],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        user("and now?"),
        {"role": "assistant", "content": "It is "},
        tools=[TOOL],
        tool_choice="auto",
        parallel_tool_calls=False,
        temperature=2,
        stop=["\n\n"],
        user="u",
        response_format={"type": "json_object"},
    )
    for stream in (False, True):
        emulator.validate(build(r, stream))


# -- response ----------------------------------------------------------------------------


def message(content: list[dict[str, Any]], stop: str = "end_turn", **usage: int) -> bytes:
    u = {"input_tokens": 10, "output_tokens": 5} | usage
    msg = {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x", "content": content}
    return json.dumps(msg | {"stop_reason": stop, "stop_sequence": None, "usage": u}).encode()


def test_response_text() -> None:
    out = proto().chat_response(
        message([{"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}]), "m"
    )
    body = json.loads(out.body)
    assert body["id"] == "chatcmpl-msg_01"
    assert body["object"] == "chat.completion"
    assert body["model"] == "m"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello world", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert out.usage.prompt_tokens == 10 and out.usage.completion_tokens == 5


def test_response_tool_use_only_has_null_content() -> None:
    blocks = [
        {
            "type": "tool_use",
            "id": "toolu_1",
            "name": "get_weather",
            "input": {"city": "Paris", "days": [1, 2]},
        },
        {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
    ]
    msg = json.loads(proto().chat_response(message(blocks, "tool_use"), "m").body)["choices"][0]
    assert msg["finish_reason"] == "tool_calls"
    assert msg["message"]["content"] is None
    assert msg["message"]["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris","days":[1,2]}'},
        },
        {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]


def test_response_thinking_and_text_with_tools() -> None:
    blocks = [
        {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
        {"type": "redacted_thinking", "data": "xx"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}},
    ]
    msg = json.loads(proto().chat_response(message(blocks, "tool_use"), "m").body)["choices"][0]["message"]
    assert msg["content"] == "Checking."
    assert msg["reasoning_content"] == "Hmm."
    assert len(msg["tool_calls"]) == 1


def test_response_empty_content_is_empty_string() -> None:
    msg = json.loads(proto().chat_response(message([], "max_tokens"), "m").body)["choices"][0]
    assert msg["message"]["content"] == ""
    assert msg["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ],
)
def test_stop_reason_table(stop: str, finish: str) -> None:
    body = proto().chat_response(message([{"type": "text", "text": "x"}], stop), "m").body
    assert json.loads(body)["choices"][0]["finish_reason"] == finish


def test_usage_with_cache_tokens() -> None:
    out = proto().chat_response(
        message(
            [{"type": "text", "text": "x"}],
            input_tokens=10,
            cache_creation_input_tokens=200,
            cache_read_input_tokens=3000,
            output_tokens=7,
        ),
        "m",
    )
    assert json.loads(out.body)["usage"] == {
        "prompt_tokens": 3210,
        "completion_tokens": 7,
        "total_tokens": 3217,
        "prompt_tokens_details": {"cached_tokens": 3000, "cache_write_tokens": 200},
    }
    assert (out.usage.cached_tokens, out.usage.cache_write_tokens) == (3000, 200)


def test_usage_thinking_tokens_are_reasoning_tokens() -> None:
    body = json.loads(message([{"type": "text", "text": "x"}]))
    body["usage"]["output_tokens_details"] = {"thinking_tokens": 4}
    out = proto().chat_response(json.dumps(body).encode(), "m")
    assert out.usage.reasoning_tokens == 4
    assert json.loads(out.body)["usage"]["completion_tokens_details"] == {"reasoning_tokens": 4}


@pytest.mark.parametrize("raw", [b"not json", b'{"content": 5}', b"[]"])
def test_invalid_response_is_upstream_error(raw: bytes) -> None:
    with pytest.raises(UpstreamError):
        proto().chat_response(raw, "m")


# -- stream ------------------------------------------------------------------------------


def ev(kind: str, **fields: Any) -> tuple[str, bytes]:
    return kind, json.dumps({"type": kind, **fields}).encode()


def start(**usage: int) -> tuple[str, bytes]:
    u = {"input_tokens": 25, "output_tokens": 1} | usage
    msg = {"id": "msg_7", "type": "message", "role": "assistant", "model": "claude-x", "content": []}
    return ev("message_start", message=msg | {"stop_reason": None, "stop_sequence": None, "usage": u})


def block(index: int, **content_block: Any) -> tuple[str, bytes]:
    return ev("content_block_start", index=index, content_block=content_block)


def delta(index: int, **d: Any) -> tuple[str, bytes]:
    return ev("content_block_delta", index=index, delta=d)


def stop(index: int) -> tuple[str, bytes]:
    return ev("content_block_stop", index=index)


def message_delta(reason: str | None, **usage: int) -> tuple[str, bytes]:
    return ev("message_delta", delta={"stop_reason": reason, "stop_sequence": None}, usage=usage)


def run(events: list[tuple[str, bytes]], include_usage: bool = True) -> tuple[list[dict[str, Any]], Any]:
    t = proto().chat_stream("m", include_usage)
    chunks = [c for e, d in events for c in t.feed(e, d)]
    chunks += t.close()
    return [json.loads(c) for c in chunks], t


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


TEXT_STREAM = [
    start(cache_read_input_tokens=100, cache_creation_input_tokens=20),
    ev("ping"),
    block(0, type="text", text=""),
    delta(0, type="text_delta", text="Hello"),
    ev("ping"),
    delta(0, type="text_delta", text=" world"),
    stop(0),
    message_delta("end_turn", output_tokens=12),
    ev("message_stop"),
]


def test_text_stream_with_usage() -> None:
    chunks, t = run(TEXT_STREAM)
    assert deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"content": "Hello"},
        {"content": " world"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, None, "stop"]
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        ("chatcmpl-msg_7", chunks[0]["created"], "m", "chat.completion.chunk")
    }
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 145,
        "completion_tokens": 12,
        "total_tokens": 157,
        "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 20},
    }
    assert t.done and t.usage.prompt_tokens == 145


def test_text_stream_without_include_usage() -> None:
    chunks, t = run(TEXT_STREAM, include_usage=False)
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert t.usage.completion_tokens == 12  # still reported to the worker


def test_parallel_tool_calls_with_interleaved_arguments() -> None:
    chunks, _ = run(
        [
            start(),
            block(0, type="text", text=""),
            delta(0, type="text_delta", text="Checking both."),
            stop(0),
            block(1, type="tool_use", id="toolu_a", name="get_weather", input={}),
            block(2, type="tool_use", id="toolu_b", name="get_time", input={}),
            delta(1, type="input_json_delta", partial_json=""),
            delta(2, type="input_json_delta", partial_json='{"tz": '),
            delta(1, type="input_json_delta", partial_json='{"city": '),
            delta(2, type="input_json_delta", partial_json='"UTC"}'),
            delta(1, type="input_json_delta", partial_json='"Paris"}'),
            stop(1),
            stop(2),
            message_delta("tool_use", output_tokens=40),
            ev("message_stop"),
        ]
    )
    calls: dict[int, dict[str, str]] = {}
    for d in deltas(chunks):
        for tc in d.get("tool_calls", []):
            slot = calls.setdefault(tc["index"], {"id": "", "name": "", "arguments": ""})
            if "id" in tc:
                assert tc["type"] == "function"
                slot["id"] = tc["id"]
                slot["name"] = tc["function"]["name"]
            slot["arguments"] += tc["function"]["arguments"]
    assert calls == {
        0: {"id": "toolu_a", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        1: {"id": "toolu_b", "name": "get_time", "arguments": '{"tz": "UTC"}'},
    }
    first = deltas(chunks)[2]["tool_calls"][0]
    assert first == {
        "index": 0,
        "id": "toolu_a",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    finish = [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert finish == ["tool_calls"]


def test_tool_without_argument_deltas_gets_empty_object() -> None:
    chunks, _ = run(
        [
            start(),
            block(0, type="tool_use", id="t", name="now", input={}),
            stop(0),
            message_delta("tool_use", output_tokens=3),
            ev("message_stop"),
        ]
    )
    args = "".join(tc["function"]["arguments"] for d in deltas(chunks) for tc in d.get("tool_calls", []))
    assert args == "{}"


def test_thinking_signature_citations_and_server_tools() -> None:
    chunks, _ = run(
        [
            start(),
            block(0, type="thinking", thinking="", signature=""),
            delta(0, type="thinking_delta", thinking="Let me think."),
            delta(0, type="signature_delta", signature="EqQBCgIYAhIM"),
            stop(0),
            block(1, type="server_tool_use", id="srvtoolu_1", name="web_search", input={}),
            delta(1, type="input_json_delta", partial_json='{"query": "x"}'),
            stop(1),
            block(2, type="text", text=""),
            delta(2, type="citations_delta", citation={"type": "char_location", "cited_text": "x"}),
            delta(2, type="text_delta", text="Answer"),
            stop(2),
            ev("some_future_event", foo=1),
            message_delta("end_turn", output_tokens=9),
            ev("message_stop"),
        ],
        include_usage=False,
    )
    assert deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "Let me think."},
        {"content": "Answer"},
        {},
    ]


def test_usage_is_cumulative_latest_wins() -> None:
    _, t = run(
        [
            start(input_tokens=10),
            block(0, type="text", text=""),
            delta(0, type="text_delta", text="x"),
            message_delta(None, output_tokens=5),
            message_delta("max_tokens", output_tokens=9, input_tokens=12, cache_read_input_tokens=4),
            ev("message_stop"),
        ]
    )
    assert (t.usage.prompt_tokens, t.usage.completion_tokens, t.usage.cached_tokens) == (16, 9, 4)


@pytest.mark.parametrize(
    ("etype", "cls"),
    [
        ("overloaded_error", Overloaded),
        ("rate_limit_error", RateLimited),
        ("api_error", UpstreamError),
        ("invalid_request_error", UpstreamRejected),
        ("timeout_error", GatewayTimeout),
        ("brand_new_error", UpstreamError),
    ],
)
def test_error_event_raises_mapped_error(etype: str, cls: type) -> None:
    t = proto().chat_stream("m", True)
    t.feed(*start())
    t.feed(*delta(0, type="text_delta", text="par"))
    with pytest.raises(cls) as e:
        t.feed(*ev("error", error={"type": etype, "message": "Overloaded"}))
    assert type(e.value) is cls
    assert "Overloaded" in e.value.message


def test_cut_stream_is_an_error() -> None:
    t = proto().chat_stream("m", True)
    for e, d in TEXT_STREAM[:4]:
        t.feed(e, d)
    with pytest.raises(UpstreamError):
        t.close()
    t2 = proto().chat_stream("m", True)
    for e, d in TEXT_STREAM[:-1]:  # message_delta came, message_stop did not
        t2.feed(e, d)
    with pytest.raises(UpstreamError):
        t2.close()


def test_invalid_event_is_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        proto().chat_stream("m", False).feed("message_start", b"{oops")


def test_emulator_stream_translates_like_its_message() -> None:
    body = {
        "model": "claude-x",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "weather in Paris and Tokyo?"}],
        "tools": [
            {
                "name": "get_weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
    }
    app = emulator.make_app()
    msg = emulator._answer(app, body, emulator.validate(body), "")
    events = []
    for raw in emulator.stream_events(msg):
        lines = raw.decode().strip().split("\n")
        events.append((lines[0].removeprefix("event: "), lines[1].removeprefix("data: ").encode()))
    chunks, t = run(events)
    whole = json.loads(proto().chat_response(json.dumps(msg).encode(), "m").body)["choices"][0]["message"]
    calls: dict[int, str] = {}
    for d in deltas(chunks):
        for tc in d.get("tool_calls", []):
            calls[tc["index"]] = calls.get(tc["index"], "") + tc["function"]["arguments"]
    assert [json.loads(a) for a in calls.values()] == [
        json.loads(c["function"]["arguments"]) for c in whole["tool_calls"]
    ]
    assert "".join(d.get("content") or "" for d in deltas(chunks)) == whole["content"]
    assert t.usage == proto().chat_response(json.dumps(msg).encode(), "m").usage


# -- errors ------------------------------------------------------------------------------


def error_body(etype: str, message: str = "boom") -> bytes:
    return json.dumps(
        {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_1"}
    ).encode()


@pytest.mark.parametrize(
    ("status", "etype", "cls", "out_status"),
    [
        (529, "overloaded_error", Overloaded, 503),
        (500, "overloaded_error", Overloaded, 503),
        (429, "rate_limit_error", RateLimited, 429),
        (401, "authentication_error", UpstreamAuthError, 502),
        (403, "permission_error", UpstreamAuthError, 502),
        (413, "request_too_large", PayloadTooLarge, 413),
        (400, "invalid_request_error", UpstreamRejected, 400),
        (404, "not_found_error", UpstreamRejected, 404),
        (402, "billing_error", UpstreamError, 502),
        (500, "api_error", UpstreamError, 502),
        (504, "timeout_error", GatewayTimeout, 504),
        (503, "", Overloaded, 503),
    ],
)
def test_error_mapping_table(status: int, etype: str, cls: type, out_status: int) -> None:
    err = proto().error(status, error_body(etype), {})
    assert type(err) is cls
    assert err.status == out_status
    assert err.provider == "anth"


def test_error_keeps_message_and_retry_after() -> None:
    err = proto().error(400, error_body("invalid_request_error", "messages.0: bad things"), {})
    assert err.message == "messages.0: bad things"
    assert err.type == "invalid_request_error"
    err = proto().error(429, error_body("rate_limit_error"), {"retry-after": "7"})
    assert err.retry_after == 7.0
    err = proto().error(529, error_body("overloaded_error"), {"Retry-After": "2"})
    assert err.retry_after == 2.0
    err = proto().error(401, error_body("authentication_error", "invalid x-api-key"), {})
    assert "'anth'" in err.message and err.code == "upstream_authentication_error"


def test_error_is_not_mapped_by_substring() -> None:
    err = proto().error(
        400, error_body("invalid_request_error", "the model is overloaded with rate limit"), {}
    )
    assert type(err) is UpstreamRejected and err.status == 400


def test_error_without_anthropic_shape() -> None:
    err = proto().error(502, b"<html>Bad Gateway</html>", {})
    assert type(err) is UpstreamError and "Bad Gateway" in err.message
    err = proto().error(500, b"", {})
    assert type(err) is UpstreamError


# -- models ------------------------------------------------------------------------------


def test_models_request_and_response() -> None:
    call = proto().models_request()
    assert call is not None
    assert call.method == "GET"
    assert call.url == "https://api.anthropic.com/v1/models?limit=1000"
    assert call.headers["x-api-key"] == "sk-ant-test" and "content-type" not in call.headers
    body = {
        "data": [
            {
                "type": "model",
                "id": "claude-opus-4-5",
                "display_name": "Opus",
                "created_at": "2025-11-01T00:00:00Z",
            },
            {
                "type": "model",
                "id": "claude-haiku-4-5",
                "display_name": "Haiku",
                "created_at": "2025-10-01T00:00:00Z",
            },
        ],
        "has_more": False,
        "first_id": "claude-opus-4-5",
        "last_id": "claude-haiku-4-5",
    }
    assert proto().models_response(json.dumps(body).encode()) == ["claude-opus-4-5", "claude-haiku-4-5"]
    with pytest.raises(UpstreamError):
        proto().models_response(b"nope")


# -- OpenAI schema conformance (tests/schema.py) ------------------------------


def test_outputs_validate_against_openai_schemas() -> None:
    blocks = [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    for raw in (message(blocks, "tool_use", cache_read_input_tokens=5), message([], "refusal")):
        schema.validate("CreateChatCompletionResponse", json.loads(proto().chat_response(raw, "m").body))
    events = [
        *TEXT_STREAM[:-2],
        block(1, type="tool_use", id="toolu_a", name="f", input={}),
        delta(1, type="input_json_delta", partial_json='{"a": 1}'),
        stop(1),
        *TEXT_STREAM[-2:],
    ]
    for include_usage in (True, False):
        chunks, _ = run(events, include_usage)
        for chunk in chunks:
            schema.validate("CreateChatCompletionStreamResponse", chunk)
        if hasattr(schema, "validate_sse_chunks"):
            schema.validate_sse_chunks(chunks)
