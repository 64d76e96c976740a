"""services/worker/adapters/sim.py: the deterministic simulated provider."""

from __future__ import annotations

import base64
import json
import math
import struct

import pytest

from libs.common.config import ProviderConfig, SimSettings
from libs.common.errors import UpstreamError
from libs.common.profiles import PRESETS
from services.worker.adapters.sim import (
    SimProtocol,
    count_tokens,
    plan_answer,
    prompt_text,
    vector,
    words,
)
from services.worker.chunks import pack_base64
from tests.schema import validate, validate_sse_chunks

USER = [{"role": "user", "content": "Tell me about gateways"}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
SETTINGS = SimSettings()  # max_tokens 64, no delays, no failures


class Sink:
    def __init__(self) -> None:
        self.started = False
        self.chunks: list[bytes] = []
        self.results: list[bytes] = []

    async def chunk(self, *pieces: bytes) -> None:
        self.started = True
        self.chunks.extend(pieces)

    async def result(self, body: bytes) -> None:
        self.started = True
        self.results.append(body)

    def decoded(self) -> list[dict]:
        return [json.loads(c) for c in self.chunks]


def proto(**settings: object) -> SimProtocol:
    cfg = ProviderConfig(id="sim-test", kind="sim", sim=SimSettings(**settings))  # type: ignore[arg-type]
    return SimProtocol(cfg, PRESETS["sim"])


# -- the pure engine -----------------------------------------------------------------------


def test_words_deterministic_per_prompt():
    a = words("hello there", 20)
    assert a == words("hello there", 20)
    assert a != words("hello where", 20)
    assert len(a) == 20
    assert a[0][0].isupper() and not a[0].startswith(" ")
    assert all(w.startswith(" ") for w in a[1:])
    assert words("x", 0) == []
    assert words("hello there", 5) == a[:5]


def test_prompt_text_and_count_tokens():
    req = {
        "messages": [
            {"role": "system", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
        ]
    }
    assert prompt_text(req) == "a\nb"
    assert prompt_text({"prompt": "p"}) == "p"
    assert prompt_text({"prompt": ["x", "y"]}) == "x y"
    assert count_tokens("") == 1 and count_tokens("abcd") == 1 and count_tokens("abcde") == 2


def test_plan_answer_same_prompt_same_answer():
    toks1, call1, fin1 = plan_answer({"messages": USER}, SETTINGS)
    toks2, _, _ = plan_answer({"messages": USER}, SETTINGS)
    other, _, _ = plan_answer({"messages": [{"role": "user", "content": "something else"}]}, SETTINGS)
    assert toks1 == toks2 and toks1 != other
    assert call1 is None and fin1 == "stop" and len(toks1) == SETTINGS.max_tokens


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_gives_length(field):
    toks, _, finish = plan_answer({"messages": USER, field: 5}, SETTINGS)
    assert len(toks) == 5 and finish == "length"
    full, _, _ = plan_answer({"messages": USER}, SETTINGS)
    assert toks == full[:5]


def test_max_tokens_above_sim_limit_stops_naturally():
    toks, _, finish = plan_answer({"messages": USER, "max_tokens": 1000}, SimSettings(max_tokens=10))
    assert len(toks) == 10 and finish == "stop"


def test_stop_sequence_cuts_output():
    full = "".join(plan_answer({"messages": USER}, SETTINGS)[0])
    stop = full[30:36]
    toks, _, finish = plan_answer({"messages": USER, "stop": [stop, "zzz-never"]}, SETTINGS)
    text = "".join(toks)
    assert text == full[: full.find(stop)]
    assert stop not in text and finish == "stop"
    # a plain-string stop, and one that wins over max_tokens
    toks2, _, finish2 = plan_answer({"messages": USER, "stop": stop, "max_tokens": 40}, SETTINGS)
    assert "".join(toks2) == text and finish2 == "stop"


def test_stop_sequence_absent_keeps_everything():
    full, _, _ = plan_answer({"messages": USER}, SETTINGS)
    toks, _, _ = plan_answer({"messages": USER, "stop": ["\u2603"]}, SETTINGS)
    assert toks == full


def test_tool_choice_required_gives_tool_call():
    toks, call, finish = plan_answer({"messages": USER, "tools": TOOLS, "tool_choice": "required"}, SETTINGS)
    assert toks == [] and finish == "tool_calls"
    assert call["type"] == "function" and call["function"] == {"name": "lookup", "arguments": "{}"}
    assert call["id"].startswith("call_")
    named = [*TOOLS, {"type": "function", "function": {"name": "other"}}]
    _, call2, _ = plan_answer(
        {
            "messages": USER,
            "tools": named,
            "tool_choice": {"type": "function", "function": {"name": "other"}},
        },
        SETTINGS,
    )
    assert call2["function"]["name"] == "other"


def test_tool_choice_auto_gives_text():
    toks, call, finish = plan_answer({"messages": USER, "tools": TOOLS, "tool_choice": "auto"}, SETTINGS)
    assert call is None and toks and finish == "stop"


@pytest.mark.parametrize(
    "fmt", [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x"}}]
)
def test_json_mode_gives_valid_json(fmt):
    toks, call, finish = plan_answer({"messages": USER, "response_format": fmt}, SETTINGS)
    obj = json.loads("".join(toks))
    assert isinstance(obj, dict) and obj and call is None and finish == "stop"


def test_vector_unit_norm_and_deterministic():
    v = vector("hello", 64)
    assert len(v) == 64
    assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-9)
    assert v == vector("hello", 64)
    assert v != vector("hellp", 64)


def test_pack_base64_round_trip():
    v = vector("abc", 16)
    raw = base64.b64decode(pack_base64(v))
    assert len(raw) == 16 * 4
    back = struct.unpack("<16f", raw)
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(back, v, strict=True))


# -- SimProtocol.run --------------------------------------------------------------------------


async def test_chat_stream_with_usage():
    sink = Sink()
    req = {"messages": USER, "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}}
    usage = await proto().run(None, sink, "chat", req, "sim-x", True)  # type: ignore[arg-type]
    chunks = sink.decoded()
    validate_sse_chunks(chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(content) == 6 and "".join(content) == "".join(words(prompt_text(req), 6))
    assert chunks[-2]["choices"][0]["finish_reason"] == "length" and chunks[-2]["choices"][0]["delta"] == {}
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 6
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 6
    assert all(c["usage"] is None for c in chunks[:-1])
    assert all(c["model"] == "sim-x" for c in chunks)
    assert usage.completion_tokens == 6 and usage.prompt_tokens == last["usage"]["prompt_tokens"]
    assert sink.results == []


async def test_chat_stream_without_usage():
    sink = Sink()
    await proto().run(None, sink, "chat", {"messages": USER, "max_tokens": 3}, "sim-x", True)  # type: ignore[arg-type]
    chunks = sink.decoded()
    validate_sse_chunks(chunks)
    assert len(chunks) == 1 + 3 + 1
    assert all("usage" not in c for c in chunks) and chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_chat_stream_tool_call():
    sink = Sink()
    req = {"messages": USER, "tools": TOOLS, "tool_choice": "required"}
    await proto().run(None, sink, "chat", req, "sim-x", True)  # type: ignore[arg-type]
    chunks = sink.decoded()
    validate_sse_chunks(chunks)
    tc = chunks[1]["choices"][0]["delta"]["tool_calls"][0]
    assert tc["index"] == 0 and tc["function"]["name"] == "lookup"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_chat_non_stream_body():
    sink = Sink()
    usage = await proto().run(None, sink, "chat", {"messages": USER, "n": 2, "max_tokens": 4}, "sim-x", False)  # type: ignore[arg-type]
    assert sink.chunks == [] and len(sink.results) == 1
    body = json.loads(sink.results[0])
    validate("CreateChatCompletionResponse", body)
    assert body["object"] == "chat.completion" and body["model"] == "sim-x"
    assert [c["index"] for c in body["choices"]] == [0, 1]
    text = "".join(words(prompt_text({"messages": USER}), 4))
    assert all(c["message"]["content"] == text and c["finish_reason"] == "length" for c in body["choices"])
    assert body["usage"]["completion_tokens"] == 8 == usage.completion_tokens


def by_choice(chunks: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for c in chunks:
        for choice in c["choices"]:
            out.setdefault(choice["index"], []).append(choice)
    return out


async def test_chat_stream_gives_every_choice_and_bills_them_all():
    sink = Sink()
    req = {"messages": USER, "n": 3, "max_tokens": 4, "stream_options": {"include_usage": True}}
    usage = await proto(tokens_per_s=1000).run(None, sink, "chat", req, "sim-x", True)  # type: ignore[arg-type]
    chunks = sink.decoded()
    validate_sse_chunks(chunks)
    choices = by_choice(chunks)
    text = "".join(words(prompt_text(req), 4))
    assert sorted(choices) == [0, 1, 2]
    for pieces in choices.values():
        assert pieces[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(p["delta"].get("content") or "" for p in pieces) == text
        assert [p["finish_reason"] for p in pieces].count("length") == 1 and pieces[-1][
            "finish_reason"
        ] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 12 == usage.completion_tokens


async def test_chat_stream_tool_call_in_every_choice():
    sink = Sink()
    req = {"messages": USER, "n": 2, "tools": TOOLS, "tool_choice": "required"}
    usage = await proto().run(None, sink, "chat", req, "sim-x", True)  # type: ignore[arg-type]
    choices = by_choice(sink.decoded())
    assert sorted(choices) == [0, 1]
    for pieces in choices.values():
        assert pieces[1]["delta"]["tool_calls"][0]["function"]["name"] == "lookup"
        assert pieces[-1]["finish_reason"] == "tool_calls"
    assert usage.completion_tokens == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_completions_give_every_choice(stream):
    sink = Sink()
    req = {"prompt": "Once upon", "max_tokens": 3, "n": 2, "stream_options": {"include_usage": True}}
    usage = await proto().run(None, sink, "completions", req, "sim-c", stream)  # type: ignore[arg-type]
    bodies = sink.decoded() if stream else [json.loads(sink.results[0])]
    for b in bodies:  # the schema has no null finish_reason: the pieces before the last are not checked
        if all(c["finish_reason"] for c in b["choices"]):
            validate("CreateCompletionResponse", b)
    choices = by_choice(bodies)
    assert sorted(choices) == [0, 1]
    for pieces in choices.values():
        assert "".join(p["text"] for p in pieces) == "".join(words("Once upon", 3))
        assert pieces[-1]["finish_reason"] == "length"
    assert bodies[-1]["usage"]["completion_tokens"] == 6 == usage.completion_tokens


async def test_chat_non_stream_tool_call_and_json():
    sink = Sink()
    await proto().run(
        None, sink, "chat", {"messages": USER, "tools": TOOLS, "tool_choice": "required"}, "m", False
    )  # type: ignore[arg-type]
    body = json.loads(sink.results[0])
    validate("CreateChatCompletionResponse", body)
    msg = body["choices"][0]["message"]
    assert msg["content"] is None and msg["tool_calls"][0]["function"]["name"] == "lookup"
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    sink2 = Sink()
    await proto().run(
        None, sink2, "chat", {"messages": USER, "response_format": {"type": "json_object"}}, "m", False
    )  # type: ignore[arg-type]
    body2 = json.loads(sink2.results[0])
    validate("CreateChatCompletionResponse", body2)
    assert isinstance(json.loads(body2["choices"][0]["message"]["content"]), dict)


@pytest.mark.parametrize("fmt", ["float", "base64"])
async def test_embeddings_with_dimensions(fmt):
    sink = Sink()
    req = {"input": ["one", "two", "three"], "dimensions": 12, "encoding_format": fmt}
    usage = await proto(embedding_dims=256).run(None, sink, "embeddings", req, "emb", False)  # type: ignore[arg-type]
    body = json.loads(sink.results[0])
    if fmt == "float":  # the spec types embedding as an array only, though OpenAI sends base64 strings
        validate("CreateEmbeddingResponse", body)
    assert body["object"] == "list" and all(d["object"] == "embedding" for d in body["data"])
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and body["model"] == "emb"
    for d, text in zip(body["data"], ["one", "two", "three"], strict=True):
        emb = d["embedding"]
        if fmt == "base64":
            emb = list(struct.unpack("<12f", base64.b64decode(emb)))
            assert all(
                math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
                for a, b in zip(emb, vector(text, 12), strict=True)
            )
        else:
            assert emb == vector(text, 12)
    expected = sum(count_tokens(t) for t in ("one", "two", "three"))
    assert body["usage"]["prompt_tokens"] == usage.prompt_tokens == expected
    assert body["usage"]["total_tokens"] == expected


async def test_embeddings_default_dims_and_string_input():
    sink = Sink()
    await proto(embedding_dims=32).run(None, sink, "embeddings", {"input": "solo"}, "emb", False)  # type: ignore[arg-type]
    body = json.loads(sink.results[0])
    validate("CreateEmbeddingResponse", body)
    assert len(body["data"]) == 1 and len(body["data"][0]["embedding"]) == 32


async def test_completions_non_stream():
    sink = Sink()
    usage = await proto().run(
        None, sink, "completions", {"prompt": "Once upon", "max_tokens": 5}, "sim-c", False
    )  # type: ignore[arg-type]
    body = json.loads(sink.results[0])
    validate("CreateCompletionResponse", body)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "".join(words("Once upon", 5))
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5 == usage.completion_tokens


async def test_completions_stream_with_usage():
    sink = Sink()
    req = {"prompt": "Once upon", "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    await proto().run(None, sink, "completions", req, "sim-c", True)  # type: ignore[arg-type]
    chunks = sink.decoded()
    assert len(chunks) == 3 + 1 + 1
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks[:3]) == "".join(words("Once upon", 3))
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:3])
    validate("CreateCompletionResponse", chunks[3])
    assert chunks[3]["choices"][0]["finish_reason"] == "length"
    validate("CreateCompletionResponse", chunks[4])
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["completion_tokens"] == 3


async def test_completions_stream_without_usage_has_no_usage_chunk():
    sink = Sink()
    await proto().run(None, sink, "completions", {"prompt": "x", "max_tokens": 2}, "sim-c", True)  # type: ignore[arg-type]
    chunks = sink.decoded()
    assert len(chunks) == 3 and all(c["choices"] for c in chunks)


async def test_failure_rate_one_fails_before_first_byte():
    sink = Sink()
    with pytest.raises(UpstreamError) as e:
        await proto(failure_rate=1.0).run(None, sink, "chat", {"messages": USER}, "m", True)  # type: ignore[arg-type]
    assert e.value.retryable and e.value.provider == "sim-test" and e.value.status == 502
    assert not sink.started and sink.chunks == [] and sink.results == []


async def test_failure_rate_zero_never_fails():
    p = proto(failure_rate=0.0)
    for _ in range(20):
        await p.run(None, Sink(), "chat", {"messages": USER, "max_tokens": 1}, "m", False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("op", "req", "param"),
    [
        (
            "chat",
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9},
            "max_tokens",
        ),
        (
            "chat",
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 40000},
            "max_completion_tokens",
        ),
        ("embeddings", {"model": "m", "input": ["x"] * 2048, "dimensions": 4096}, "dimensions"),
    ],
)
def test_sizes_a_client_controls_are_bounded(op, req, param):
    from libs.common.errors import InvalidRequest
    from services.worker.adapters.sim import check_sizes

    with pytest.raises(InvalidRequest) as e:
        check_sizes(req, op, 32768)
    assert e.value.param == param and e.value.status == 400
    check_sizes({**req, param: 8}, op, 32768)  # a sane size passes
