"""CohereProtocol: the pure translators (request, response, stream, embeddings, errors, models)."""

from __future__ import annotations

import base64
import json
import struct

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
from services.worker.adapters.cohere import CohereProtocol
from tests.schema import validate as _validate
from tests.schema import validate_sse_chunks as _validate_stream


def check(name: str, obj: object) -> None:
    _validate(name, obj)


def proto(**kw: object) -> CohereProtocol:
    cfg = ProviderConfig(id="co", kind="cohere", api_key="sk-test", **kw)  # type: ignore[arg-type]
    return CohereProtocol(cfg, PRESETS["cohere"])


def body_of(req: dict, stream: bool = False) -> dict:
    return json.loads(proto().chat_request(req, "command-a-03-2025", stream).body)


def ev(kind: str, **fields: object) -> tuple[str, bytes]:
    return kind, json.dumps({"type": kind, **fields}).encode()


def chunks(pieces: list[bytes]) -> list[dict]:
    out = [json.loads(p) for p in pieces]
    for c in out:
        check("CreateChatCompletionStreamResponse", c)
    return out


USER = [{"role": "user", "content": "hi"}]

# -- request ------------------------------------------------------------------------------


def test_request_url_headers_and_stream_flag():
    call = proto().chat_request({"messages": USER}, "command-a-03-2025", False)
    assert (call.method, call.url, call.stream) == ("POST", "https://api.cohere.com/v2/chat", False)
    assert call.headers["Authorization"] == "Bearer sk-test"
    assert json.loads(call.body) == {"model": "command-a-03-2025", "messages": USER}
    s = proto().chat_request({"messages": USER}, "m", True)
    assert s.stream and json.loads(s.body)["stream"] is True and s.headers["Accept"] == "text/event-stream"


def test_base_url_with_version_suffix_and_extra_headers():
    p = proto(base_url="http://127.0.0.1:9/v1/", headers={"X-Client-Name": "switchman"})
    call = p.chat_request({"messages": USER}, "m", False)
    assert call.url == "http://127.0.0.1:9/v2/chat" and call.headers["X-Client-Name"] == "switchman"


def test_sampling_parameters():
    req = {
        "messages": USER,
        "temperature": 0.2,
        "top_p": 0.5,
        "top_k": 40,
        "max_completion_tokens": 77,
        "max_tokens": 5,
        "stop": "END",
        "seed": 7,
        "frequency_penalty": 0.3,
        "presence_penalty": 0.1,
        "logprobs": True,
        "documents": [{"data": {"text": "doc"}}],
        "safety_mode": "STRICT",
        "user": "u1",
        "n": 1,
        "metadata": {"a": "b"},
    }
    b = body_of(req)
    assert b["temperature"] == 0.2 and b["p"] == 0.5 and b["k"] == 40
    assert b["max_tokens"] == 77 and b["stop_sequences"] == ["END"] and b["seed"] == 7
    assert b["frequency_penalty"] == 0.3 and b["presence_penalty"] == 0.1 and b["logprobs"] is True
    assert b["documents"] == [{"data": {"text": "doc"}}] and b["safety_mode"] == "STRICT"
    assert not {"user", "n", "metadata", "top_p", "top_k", "stop", "max_completion_tokens"} & set(b)


@pytest.mark.parametrize(("top_p", "p"), [(1.0, 0.99), (0.0, 0.01), (0.995, 0.99), (0.3, 0.3)])
def test_top_p_is_clamped_to_cohere_range(top_p, p):
    assert body_of({"messages": USER, "top_p": top_p})["p"] == p


@pytest.mark.parametrize(("given", "sent"), [(-1.5, 0.0), (2.0, 1.0), (0.4, 0.4)])
def test_penalties_are_clamped_to_cohere_range(given, sent):
    b = body_of({"messages": USER, "frequency_penalty": given, "presence_penalty": given})
    assert b["frequency_penalty"] == sent and b["presence_penalty"] == sent


def test_max_tokens_and_stop_list():
    b = body_of({"messages": USER, "max_tokens": 9, "stop": ["a", "b"]})
    assert b["max_tokens"] == 9 and b["stop_sequences"] == ["a", "b"]


def test_response_format():
    assert body_of({"messages": USER, "response_format": {"type": "text"}}).get("response_format") is None
    b = body_of({"messages": USER, "response_format": {"type": "json_object"}})
    assert b["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert body_of({"messages": USER, "response_format": rf})["response_format"] == {
        "type": "json_object",
        "json_schema": schema,
    }


def test_messages_mapping():
    msgs = [
        {"role": "developer", "content": "dev rules"},
        {"role": "system", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
        {
            "role": "user",
            "name": "bob",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "look it up",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "result"}]},
        {"role": "assistant", "content": "It is a cat."},
    ]
    got = body_of({"messages": msgs})["messages"]
    assert got[0] == {"role": "system", "content": "dev rules"}
    assert got[1] == {"role": "system", "content": "be brief"}
    assert got[2] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
        ],
    }
    assert got[3] == {
        "role": "assistant",
        "tool_plan": "look it up",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"x"}'}}
        ],
    }
    assert got[4] == {"role": "tool", "tool_call_id": "c1", "content": "result"}
    assert got[5] == {"role": "assistant", "content": "It is a cat."}


@pytest.mark.parametrize(
    "msg",
    [
        {"role": "function", "name": "f", "content": "x"},
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]},
    ],
)
def test_unsupported_messages_are_rejected(msg):
    with pytest.raises(InvalidRequest):
        body_of({"messages": [msg]})


TOOLS = [
    {"type": "function", "function": {"name": "a", "description": "A", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "b", "strict": True}},
]


@pytest.mark.parametrize(
    ("choice", "sent"), [("required", "REQUIRED"), ("none", "NONE"), ("auto", None), (None, None)]
)
def test_tool_choice(choice, sent):
    b = body_of({"messages": USER, "tools": TOOLS, "tool_choice": choice})
    assert b.get("tool_choice") == sent
    assert [t["function"]["name"] for t in b["tools"]] == ["a", "b"]
    assert b["tools"][0] == {
        "type": "function",
        "function": {"name": "a", "description": "A", "parameters": {"type": "object"}},
    }
    assert b["tools"][1]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert b["strict_tools"] is True


def test_named_tool_choice_sends_only_that_tool():
    b = body_of(
        {"messages": USER, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "a"}}}
    )
    assert b["tool_choice"] == "REQUIRED" and [t["function"]["name"] for t in b["tools"]] == ["a"]
    assert "strict_tools" not in b
    with pytest.raises(InvalidRequest) as e:
        body_of(
            {"messages": USER, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "z"}}}
        )
    assert e.value.param == "tool_choice"


# -- response -----------------------------------------------------------------------------


def response(**kw: object) -> bytes:
    base = {
        "id": "abc",
        "finish_reason": "COMPLETE",
        "message": {"role": "assistant", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]},
        "usage": {"billed_units": {"input_tokens": 5, "output_tokens": 2}, "tokens": {"input_tokens": 12.0, "output_tokens": 2.0}},
    }  # fmt: skip
    return json.dumps(base | kw).encode()


def parse(body: bytes) -> tuple[dict, object]:
    out = proto().chat_response(body, "command-a")
    doc = json.loads(out.body)
    check("CreateChatCompletionResponse", doc)
    return doc, out.usage


def test_response_text_and_usage():
    doc, usage = parse(response())
    assert doc["object"] == "chat.completion" and doc["model"] == "command-a"
    choice = doc["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello there", "refusal": None}
    assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert doc["usage"] == {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
    assert type(doc["usage"]["prompt_tokens"]) is int and usage.prompt_tokens == 12


def test_usage_falls_back_to_billed_units_and_cached_tokens():
    doc, _ = parse(
        response(usage={"billed_units": {"input_tokens": 5.0, "output_tokens": 3.0}, "cached_tokens": 4.0})
    )
    assert doc["usage"]["prompt_tokens"] == 5 and doc["usage"]["completion_tokens"] == 3
    assert doc["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    doc, usage = parse(response(usage=None))
    assert doc["usage"]["total_tokens"] == 0 and usage.prompt_tokens == 0


def test_response_tool_calls_and_plan():
    message = {
        "role": "assistant",
        "tool_plan": "I will look up the weather.",
        "tool_calls": [{"id": "w_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}],
    }  # fmt: skip
    doc, _ = parse(response(message=message, finish_reason="TOOL_CALL"))
    choice = doc["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["reasoning_content"] == "I will look up the weather."
    assert choice["message"]["tool_calls"] == [
        {"id": "w_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
    ]


def test_response_thinking_parts_are_reasoning():
    content = [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "42"}]
    doc, _ = parse(response(message={"role": "assistant", "content": content}))
    assert doc["choices"][0]["message"]["content"] == "42"
    assert doc["choices"][0]["message"]["reasoning_content"] == "hmm"


@pytest.mark.parametrize(
    ("reason", "mapped"),
    [
        ("COMPLETE", "stop"),
        ("STOP_SEQUENCE", "stop"),
        ("MAX_TOKENS", "length"),
        ("TOOL_CALL", "tool_calls"),
        ("NEW", "stop"),
    ],
)
def test_finish_reasons(reason, mapped):
    assert parse(response(finish_reason=reason))[0]["choices"][0]["finish_reason"] == mapped


@pytest.mark.parametrize("reason", ["ERROR", "TIMEOUT"])
def test_failed_generation_raises(reason):
    with pytest.raises(UpstreamError):
        parse(response(finish_reason=reason))


def test_response_logprobs():
    lp = [{"text": "Hel", "token_ids": [1, 2], "logprobs": [-0.25, -0.5]}]
    doc, _ = parse(response(logprobs=lp))
    content = doc["choices"][0]["logprobs"]["content"]
    assert content == [{"token": "Hel", "logprob": -0.75, "bytes": [72, 101, 108], "top_logprobs": []}]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]"])
def test_malformed_response_raises(body):
    with pytest.raises(UpstreamError):
        proto().chat_response(body, "m")


# -- stream -------------------------------------------------------------------------------

START = ev("message-start", id="m1", delta={"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}})  # fmt: skip
END_USAGE = {
    "billed_units": {"input_tokens": 3, "output_tokens": 2},
    "tokens": {"input_tokens": 10.0, "output_tokens": 2.0},
}


def text_events() -> list[tuple[str, bytes]]:
    return [
        START,
        ev("content-start", index=0, delta={"message": {"content": {"type": "text", "text": ""}}}),
        ev("content-delta", index=0, delta={"message": {"content": {"text": "Hel"}}}),
        ev("content-delta", index=0, delta={"message": {"content": {"text": "lo"}}}),
        ev("content-end", index=0),
        ev("message-end", id="m1", delta={"finish_reason": "COMPLETE", "usage": END_USAGE}),
    ]


def run_stream(events: list[tuple[str, bytes]], include_usage: bool = False) -> tuple[list[dict], object]:
    tr = proto().chat_stream("command-a", include_usage)
    out: list[bytes] = []
    for name, data in events:
        out += tr.feed(name, data)
    out += tr.close()
    got = chunks(out)
    _validate_stream(got)
    return got, tr


def test_stream_text():
    got, tr = run_stream(text_events())
    assert [c["choices"][0]["delta"] for c in got] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert got[-1]["choices"][0]["finish_reason"] == "stop"
    assert len({c["id"] for c in got}) == 1 and all(c["object"] == "chat.completion.chunk" for c in got)
    assert "usage" not in got[0] and tr.done
    assert (tr.usage.prompt_tokens, tr.usage.completion_tokens) == (10, 2)


def test_stream_usage_chunk_when_asked():
    got, _ = run_stream(text_events(), include_usage=True)
    assert all(c["usage"] is None for c in got[:-1])
    assert got[-1]["choices"] == [] and got[-1]["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "total_tokens": 12,
    }


def test_stream_tool_calls():
    def call(i: int, cid: str, name: str) -> tuple[str, bytes]:
        start = {"id": cid, "type": "function", "function": {"name": name, "arguments": ""}}
        return ev("tool-call-start", index=i, delta={"message": {"tool_calls": start}})

    def arg(i: int, a: str) -> tuple[str, bytes]:
        return ev(
            "tool-call-delta", index=i, delta={"message": {"tool_calls": {"function": {"arguments": a}}}}
        )

    events = [
        START,
        ev("tool-plan-delta", delta={"message": {"tool_plan": "I will "}}),
        ev("tool-plan-delta", delta={"message": {"tool_plan": "check."}}),
        call(0, "t1", "weather"),
        arg(0, '{"city":'),
        arg(0, '"Paris"}'),
        ev("tool-call-end", index=0),
        call(1, "t2", "time"),
        arg(1, "{}"),
        ev("tool-call-end", index=1),
        ev("message-end", delta={"finish_reason": "TOOL_CALL", "usage": END_USAGE}),
    ]
    got, _ = run_stream(events)
    deltas = [c["choices"][0]["delta"] for c in got]
    assert deltas[1:3] == [{"reasoning_content": "I will "}, {"reasoning_content": "check."}]
    assert deltas[3] == {"tool_calls": [{"index": 0, "id": "t1", "type": "function", "function": {"name": "weather", "arguments": ""}}]}  # fmt: skip
    assert deltas[4] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}
    assert deltas[6]["tool_calls"][0]["index"] == 1 and deltas[6]["tool_calls"][0]["id"] == "t2"
    assert deltas[7] == {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}
    assert got[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_content_before_message_start_gets_a_role_chunk():
    got, _ = run_stream(text_events()[2:])
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert got[1]["choices"][0]["delta"] == {"content": "Hel"}


def test_stream_ignores_other_events_and_empty_data():
    tr = proto().chat_stream("m", False)
    assert (
        tr.feed("citation-start", json.dumps({"type": "citation-start", "index": 0, "delta": {}}).encode())
        == []
    )
    assert tr.feed("debug", b'{"type":"debug","prompt":"x"}') == []
    assert tr.feed("", b"") == [] and tr.feed("", b"[DONE]") == []


def test_stream_type_comes_from_event_name_when_missing():
    tr = proto().chat_stream("m", False)
    out = tr.feed("content-delta", b'{"delta":{"message":{"content":{"text":"x"}}}}')
    assert json.loads(out[-1])["choices"][0]["delta"] == {"content": "x"}


def test_stream_logprobs():
    tr = proto().chat_stream("m", False)
    lp = {"text": "Hi", "token_ids": [5], "logprobs": [-0.1]}
    out = tr.feed(*ev("content-delta", index=0, delta={"message": {"content": {"text": "Hi"}}}, logprobs=lp))
    got = chunks(out)[-1]["choices"][0]
    assert got["delta"] == {"content": "Hi"}
    entry = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}
    assert got["logprobs"] == {"content": [entry], "refusal": None}


def test_stream_error_in_message_end_raises():
    tr = proto().chat_stream("m", True)
    for e in text_events()[:3]:
        tr.feed(*e)
    with pytest.raises(UpstreamError, match="boom"):
        tr.feed(*ev("message-end", delta={"error": "boom", "finish_reason": "ERROR"}))
    with pytest.raises(UpstreamError):
        proto().chat_stream("m", True).feed(*ev("message-end", delta={"finish_reason": "TIMEOUT"}))


def test_stream_cut_before_message_end_raises():
    tr = proto().chat_stream("m", True)
    for e in text_events()[:-1]:
        tr.feed(*e)
    with pytest.raises(UpstreamError):
        tr.close()


def test_stream_malformed_event_raises():
    with pytest.raises(UpstreamError):
        proto().chat_stream("m", False).feed("content-delta", b"{oops")


# -- embeddings ---------------------------------------------------------------------------


def test_embeddings_request():
    call = proto().embeddings_request({"input": ["a", "b"], "dimensions": 512}, "embed-v4.0")
    assert call.url == "https://api.cohere.com/v2/embed" and not call.stream
    assert json.loads(call.body) == {
        "model": "embed-v4.0",
        "texts": ["a", "b"],
        "input_type": "search_document",
        "embedding_types": ["float"],
        "output_dimension": 512,
    }
    assert json.loads(proto().embeddings_request({"input": "one"}, "e").body)["texts"] == ["one"]


@pytest.mark.parametrize("inp", [[1, 2, 3], [[1, 2]], [], ["x"] * 97, None])
def test_embeddings_bad_input(inp):
    with pytest.raises(InvalidRequest):
        proto().embeddings_request({"input": inp}, "e")


EMBED = json.dumps(
    {
        "id": "e1",
        "embeddings": {"float": [[0.5, -1.0, 0.25], [1.0, 2.0, 3.0]]},
        "texts": ["a", "b"],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 4.0}},
        "response_type": "embeddings_by_type",
    }
).encode()


def test_embeddings_response_float_and_base64():
    out = proto().embeddings_response(EMBED, "embed-v4.0", {"input": ["a", "b"]})
    doc = json.loads(out.body)
    check("CreateEmbeddingResponse", doc)
    assert doc["object"] == "list" and doc["model"] == "embed-v4.0"
    assert [d["embedding"] for d in doc["data"]] == [[0.5, -1.0, 0.25], [1.0, 2.0, 3.0]]
    assert [d["index"] for d in doc["data"]] == [0, 1]
    assert doc["usage"] == {"prompt_tokens": 4, "total_tokens": 4} and out.usage.prompt_tokens == 4
    b64 = json.loads(proto().embeddings_response(EMBED, "e", {"encoding_format": "base64"}).body)
    raw = base64.b64decode(b64["data"][0]["embedding"])
    assert struct.unpack("<3f", raw) == (0.5, -1.0, 0.25)


# -- errors and models --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, UpstreamRejected),
        (401, UpstreamAuthError),
        (403, UpstreamAuthError),
        (498, UpstreamAuthError),
        (404, UpstreamRejected),
        (429, RateLimited),
        (499, UpstreamError),
        (500, UpstreamError),
        (501, UpstreamError),
        (503, Overloaded),
        (504, GatewayTimeout),
    ],
)
def test_error_mapping(status, cls):
    err = proto().error(status, b'{"id":"x","message":"nope"}', {"Retry-After": "3"})
    assert type(err) is cls and err.provider == "co"
    if cls is UpstreamRejected:
        assert err.status == status and err.message == "nope"
    if status in (429, 503):
        assert err.retry_after == 3.0
    assert err.retryable == (status not in (400, 404))


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b'{"message":"bad p"}', "bad p"),
        (b'{"data":"slow down"}', "slow down"),
        (b"plain failure", "plain failure"),
    ],
)
def test_error_message_extraction(body, text):
    assert text in proto().error(400, body, {}).message


def test_models():
    call = proto().models_request()
    assert (
        call is not None
        and call.method == "GET"
        and call.url == "https://api.cohere.com/v1/models?page_size=1000"
    )
    body = {
        "models": [
            {"name": "command-a", "endpoints": ["chat", "generate"]},
            {"name": "embed-v4.0", "endpoints": ["embed"]},
            {"name": "rerank-v3.5", "endpoints": ["rerank"]},
            {"name": "mystery"},
        ]
    }
    assert proto().models_response(json.dumps(body).encode()) == ["command-a", "embed-v4.0", "mystery"]


# -- schema (skipped until tests/schema.py exists) ---------------------------------------


def test_outputs_match_the_openai_schema():
    parse(response())
    run_stream(text_events(), include_usage=True)
    check("CreateEmbeddingResponse", json.loads(proto().embeddings_response(EMBED, "e", {}).body))
