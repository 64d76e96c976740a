from __future__ import annotations

import copy
import json

import pytest

from tests import schema
from tests.schema import assert_no_unknown_top_level, validate, validate_sse_chunks

CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def chunk(choices, usage=None, with_usage_key=True):
    c = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": choices,
    }
    if with_usage_key:
        c["usage"] = usage
    return c


def test_document_metadata() -> None:
    doc = schema.schema_document()
    src = doc["x-source"]
    assert len(src["sha256"]) == 64 and src["info.version"]
    for root in doc["x-roots"]:
        assert root in doc["$defs"]
    assert '"nullable"' not in json.dumps(doc["$defs"]).replace('"nullable_rewritten"', "")
    assert "#/components/" not in json.dumps(doc["$defs"])


def test_valid_chat_completion() -> None:
    validate("CreateChatCompletionResponse", CHAT)
    assert_no_unknown_top_level("CreateChatCompletionResponse", CHAT)


def test_chunk_with_null_finish_reason_and_null_usage() -> None:
    c = chunk(
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
    )
    validate("CreateChatCompletionStreamResponse", c)


def test_usage_only_final_chunk() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    c = chunk([], usage=usage)
    validate("CreateChatCompletionStreamResponse", c)
    stream = [
        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        c,
    ]
    validate_sse_chunks(stream)


def test_error_missing_param_rejected() -> None:
    good = {"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}}
    validate("ErrorResponse", good)
    bad = copy.deepcopy(good)
    del bad["error"]["param"]
    with pytest.raises(AssertionError, match=r"\$\.error: 'param' is a required property"):
        validate("ErrorResponse", bad)
    with pytest.raises(AssertionError, match="'param' is a required property"):
        validate("Error", bad["error"])


def test_finish_reason_end_turn_rejected() -> None:
    bad = copy.deepcopy(CHAT)
    bad["choices"][0]["finish_reason"] = "end_turn"
    with pytest.raises(AssertionError, match=r"\$\.choices\[0\]\.finish_reason: 'end_turn' is not one of"):
        validate("CreateChatCompletionResponse", bad)
    c = chunk([{"index": 0, "delta": {}, "finish_reason": "end_turn"}])
    with pytest.raises(AssertionError, match="end_turn"):
        validate("CreateChatCompletionStreamResponse", c)


def test_tool_call_chunk_without_index_rejected() -> None:
    tc = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    c = chunk([{"index": 0, "delta": {"role": "assistant", "tool_calls": [tc]}, "finish_reason": None}])
    with pytest.raises(AssertionError, match=r"tool_calls\[0\]: 'index' is a required property"):
        validate("CreateChatCompletionStreamResponse", c)
    validate(
        "CreateChatCompletionStreamResponse",
        chunk([{"index": 0, "delta": {"tool_calls": [{**tc, "index": 0}]}, "finish_reason": None}]),
    )


def test_all_errors_are_listed() -> None:
    bad = copy.deepcopy(CHAT)
    bad["object"] = "chat.completions"
    bad["created"] = "yesterday"
    del bad["id"]
    with pytest.raises(AssertionError) as exc:
        validate("CreateChatCompletionResponse", bad)
    text = str(exc.value)
    assert "3 schema error(s)" in text
    assert "'id' is a required property" in text and "'yesterday' is not of type 'integer'" in text
    assert "'chat.completions' is not one of" in text


def test_nullable_rewrites() -> None:
    # 3.0 `nullable: true` on a $ref / oneOf / plain type must accept null after conversion.
    validate(
        "CreateChatCompletionRequest",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "stop": None,
            "n": None,
            "prediction": None,
            "stream": None,
        },
    )
    validate(
        "CreateChatCompletionRequest",
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b"]},
    )
    with pytest.raises(AssertionError, match="stop"):
        validate(
            "CreateChatCompletionRequest",
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": list("abcde")},
        )
    with pytest.raises(AssertionError, match=r"\$\.n"):
        validate(
            "CreateChatCompletionRequest",
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0},
        )


def test_validate_sse_chunks_stream_rules() -> None:
    start = chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    end = chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    usage = chunk([], usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    with pytest.raises(AssertionError, match="not the last chunk"):
        validate_sse_chunks([start, usage, end])
    with pytest.raises(AssertionError, match="continues after its finish_reason"):
        validate_sse_chunks([start, end, end])
    with pytest.raises(AssertionError, match="choices is \\[\\] but usage"):
        validate_sse_chunks([start, end, chunk([])])
    other = copy.deepcopy(end)
    other["id"] = "chatcmpl-2"
    with pytest.raises(AssertionError, match="id='chatcmpl-2' differs"):
        validate_sse_chunks([start, other])
    no_id = chunk(
        [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
                "finish_reason": None,
            }
        ]
    )
    with pytest.raises(AssertionError, match="lacks id or function.name"):
        validate_sse_chunks([start, no_id])
    with pytest.raises(AssertionError, match="chunk 1: .*end_turn"):
        validate_sse_chunks([start, chunk([{"index": 0, "delta": {}, "finish_reason": "end_turn"}])])
    with pytest.raises(AssertionError, match="no chunks"):
        validate_sse_chunks([])


def test_allow_list() -> None:
    req = {"model": "m", "messages": [], "temperature": 1, "top_p": 1, "metadata": {}, "x_switchman": {}}
    assert_no_unknown_top_level("CreateChatCompletionRequest", req)  # allOf/$ref properties are followed
    with pytest.raises(AssertionError, match=r"unknown top-level key\(s\) \['x_switchman'\]"):
        assert_no_unknown_top_level("CreateChatCompletionRequest", req, allowed_extra=())
    with pytest.raises(AssertionError, match="provider"):
        assert_no_unknown_top_level("CreateChatCompletionResponse", {**CHAT, "provider": "x"})


def test_unknown_schema_name() -> None:
    with pytest.raises(KeyError, match="unknown schema"):
        validate("NoSuchSchema", {})
