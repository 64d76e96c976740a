"""The OpenAI HTTP surface of the gateway, end to end, driven by the official openai SDK.

Five services in-process on a real nats-server, the strict OpenAI emulator as the
upstream. Every response body and stream chunk is validated against the OpenAI schemas;
what the upstream received is checked through the emulator's observations.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import openai
import pytest

from tests.emulators.openai_upstream import UpstreamState
from tests.gateway import Gateway, config, in_process, openai_provider
from tests.schema import assert_no_unknown_top_level, validate, validate_sse_chunks

CHAT_MODEL = "gpt-4o-mini"
INSTRUCT_MODEL = "gpt-3.5-turbo-instruct"
EMBED_MODEL = "text-embedding-3-small"
SLASH_MODEL = "org/model-x"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string"}, "offset": {"type": "integer", "minimum": 2}},
            "required": ["tz", "offset"],
        },
    },
}
TOOLS = [WEATHER, TIME]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def gw(nats_server, upstream) -> AsyncIterator[Gateway]:
    _, base = upstream
    cfg = config(
        providers=[openai_provider("a", base, [CHAT_MODEL, INSTRUCT_MODEL, EMBED_MODEL, SLASH_MODEL])],
        models=[
            {"name": "m", "targets": [{"provider": "a", "model": CHAT_MODEL}]},
            {"name": "instruct", "targets": [{"provider": "a", "model": INSTRUCT_MODEL}]},
            {"name": "emb", "targets": [{"provider": "a", "model": EMBED_MODEL}]},
        ],
    )
    async with in_process(cfg, nats_server.url) as g:
        try:
            yield g
        finally:
            client = getattr(g, "_sdk", None)
            if client is not None:
                await client.close()


@pytest.fixture
def state(upstream) -> UpstreamState:
    return upstream[0]


# --------------------------------------------------------------------------- helpers


def sdk(gw: Gateway) -> Any:
    """One AsyncOpenAI client per gateway (creating one costs ~0.2 s: its SSL context)."""
    client = getattr(gw, "_sdk", None)
    if client is None:
        client = gw._sdk = gw.openai()  # type: ignore[attr-defined]
    return client


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def chat(gw: Gateway, **kw: Any) -> tuple[dict[str, Any], Any]:
    """A non-stream chat completion: (raw JSON body validated against the schema, raw response)."""
    kw.setdefault("model", "m")
    raw = await sdk(gw).chat.completions.with_raw_response.create(**kw)
    body = json.loads(raw.content)
    validate("CreateChatCompletionResponse", body)
    assert_no_unknown_top_level("CreateChatCompletionResponse", body)
    parsed = raw.parse()  # the SDK understands it too
    assert parsed.id == body["id"] and len(parsed.choices) == len(body["choices"])
    return body, raw


async def chat_stream(gw: Gateway, **kw: Any) -> tuple[list[dict[str, Any]], Any]:
    """A streamed chat completion through the SDK: (validated chunks, raw response)."""
    kw.setdefault("model", "m")
    raw = await sdk(gw).chat.completions.with_raw_response.create(stream=True, **kw)
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = [c.model_dump(exclude_unset=True) async for c in raw.parse()]
    validate_sse_chunks(chunks)
    return chunks, raw


def content_of(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(
        ch["delta"].get("content") or "" for c in chunks for ch in c["choices"] if ch["index"] == index
    )


def finish_of(chunks: list[dict[str, Any]], index: int = 0) -> str | None:
    reasons = [
        ch["finish_reason"]
        for c in chunks
        for ch in c["choices"]
        if ch["index"] == index and ch.get("finish_reason")
    ]
    assert len(reasons) == 1, reasons
    return reasons[0]


def tool_calls_of(chunks: list[dict[str, Any]], index: int = 0) -> dict[int, dict[str, str]]:
    """Accumulate streamed tool-call fragments per tool-call index."""
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for ch in c["choices"]:
            if ch["index"] != index:
                continue
            for tc in ch["delta"].get("tool_calls") or []:
                assert isinstance(tc["index"], int)
                entry = calls.setdefault(tc["index"], {"id": "", "name": "", "arguments": ""})
                if tc.get("id"):
                    entry["id"] = tc["id"]
                fn = tc.get("function") or {}
                entry["name"] += fn.get("name") or ""
                entry["arguments"] += fn.get("arguments") or ""
    return calls


def validate_completion_chunk(chunk: dict[str, Any]) -> None:
    """A legacy completions stream chunk against CreateCompletionResponse.

    The spec's ``finish_reason`` enum has no null and its ``usage`` is not nullable, although
    OpenAI streams ``finish_reason: null`` until the last chunk of a choice and ``usage: null``
    on every chunk but the last when usage is included; those nulls are checked here and
    normalised before validation.
    """
    c = copy.deepcopy(chunk)
    if "usage" in c and c["usage"] is None:
        assert c["choices"], "a usage chunk must carry the usage"
        del c["usage"]
    for ch in c["choices"]:
        assert "finish_reason" in ch
        if ch["finish_reason"] is None:
            ch["finish_reason"] = "stop"
    validate("CreateCompletionResponse", c)


async def raw_get(gw: Gateway, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{gw.port}{path}", headers=headers or {}) as r,
    ):
        return r.status, r.headers, await r.json(content_type=None)


def floats_from_b64(b64: str) -> list[float]:
    raw = base64.b64decode(b64)
    assert len(raw) % 4 == 0
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


# --------------------------------------------------------------------------- chat: basics


async def test_chat_non_stream(gw, state):
    body, raw = await chat(gw, messages=user("hello there"))
    choice = body["choices"][0]
    assert body["object"] == "chat.completion"
    assert choice["message"] == {
        "role": "assistant",
        "content": "You said: hello there",
        "refusal": None,
        "annotations": [],
    }
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] > 0
    # The upstream got the target model (not the alias) and the client's messages untouched.
    sent = state.last_request_body
    assert sent["model"] == CHAT_MODEL
    assert sent["messages"] == user("hello there")
    assert "stream" not in sent
    assert (
        state.last_request_headers["Authorization"] == "Bearer sk-test"
    )  # the provider's key, not the client's
    assert state.counts["/v1/chat/completions"] == 1
    assert raw.headers["content-type"].startswith("application/json")


async def test_chat_stream(gw, state):
    chunks, raw = await chat_stream(gw, messages=user("hello streaming world"))
    assert content_of(chunks) == "You said: hello streaming world"
    assert finish_of(chunks) == "stop"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert raw.headers["x-switchman-provider"] == "a"
    assert raw.headers["x-switchman-attempts"] == "1"
    sent = state.last_request_body
    assert sent["model"] == CHAT_MODEL and sent["stream"] is True


async def test_upstream_receives_target_model_not_alias(gw, state):
    await chat(gw, model="m", messages=user("x"))
    assert state.last_request_body["model"] == CHAT_MODEL
    await chat(gw, model=f"a/{CHAT_MODEL}", messages=user("x"))  # provider-qualified spelling
    assert state.last_request_body["model"] == CHAT_MODEL
    await chat(gw, model=SLASH_MODEL, messages=user("x"))  # a provider model whose name has a "/"
    assert state.last_request_body["model"] == SLASH_MODEL
    await chat(gw, model=f"a/{SLASH_MODEL}", messages=user("x"))
    assert state.last_request_body["model"] == SLASH_MODEL


async def test_text_and_image_parts_reach_the_upstream(gw, state):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is in"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}", "detail": "low"}},
                {"type": "text", "text": "this picture"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        },
    ]
    body, _ = await chat(gw, messages=messages)
    assert body["choices"][0]["message"]["content"] == "You said: what is in this picture"
    assert state.last_request_body["messages"] == messages

    chunks, _ = await chat_stream(gw, messages=messages)
    assert content_of(chunks) == "You said: what is in this picture"
    assert state.last_request_body["messages"] == messages


async def test_headers_provider_attempts_reason_request_id(gw):
    _, raw = await chat(gw, messages=user("x"))
    assert raw.headers["x-switchman-provider"] == "a"
    assert raw.headers["x-switchman-attempts"] == "1"
    assert raw.headers["x-switchman-route-reason"] == "ordered"
    generated = raw.headers["x-request-id"]
    assert generated.startswith("req_") and len(generated) > 8
    assert "x-should-retry" not in raw.headers

    _, raw2 = await chat(gw, messages=user("x"))
    assert raw2.headers["x-request-id"] != generated  # one id per request

    _, raw3 = await chat(gw, messages=user("x"), extra_headers={"x-request-id": "client-req.42:abc"})
    assert raw3.headers["x-request-id"] == "client-req.42:abc"

    _, raw4 = await chat_stream(gw, messages=user("x"), extra_headers={"x-request-id": "stream-req-7"})
    assert raw4.headers["x-request-id"] == "stream-req-7"

    # An id that is not a safe token is replaced, never echoed.
    _, raw5 = await chat(gw, messages=user("x"), extra_headers={"x-request-id": "bad id <script>"})
    assert raw5.headers["x-request-id"].startswith("req_")


# --------------------------------------------------------------------------- tools


async def test_tools_parallel_non_stream(gw, state):
    body, _ = await chat(
        gw,
        messages=user("weather and time please #tools"),
        tools=TOOLS,
        tool_choice="auto",
        parallel_tool_calls=True,
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert len({c["id"] for c in calls}) == 2
    for c in calls:
        assert c["type"] == "function"
        jsonschema.validate(json.loads(c["function"]["arguments"]), PARAMS[c["function"]["name"]])
    sent = state.last_request_body
    assert sent["tools"] == TOOLS and sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is True


async def test_tools_parallel_stream_deltas(gw, state):
    chunks, _ = await chat_stream(
        gw,
        messages=user("weather and time please #tools"),
        tools=TOOLS,
        parallel_tool_calls=True,
    )
    assert finish_of(chunks) == "tool_calls"
    calls = tool_calls_of(chunks)
    assert sorted(calls) == [0, 1]
    assert [calls[0]["name"], calls[1]["name"]] == ["get_weather", "get_time"]
    assert calls[0]["id"] and calls[1]["id"] and calls[0]["id"] != calls[1]["id"]
    for entry in calls.values():
        jsonschema.validate(json.loads(entry["arguments"]), PARAMS[entry["name"]])
    # Arguments really were fragmented across several chunks (concatenation is exercised).
    fragments = sum(
        1
        for c in chunks
        for ch in c["choices"]
        for tc in ch["delta"].get("tool_calls") or []
        if (tc.get("function") or {}).get("arguments")
    )
    assert fragments > 2
    assert state.last_request_body["stream"] is True


async def test_tool_choice_named_and_not_parallel(gw, state):
    named = {"type": "function", "function": {"name": "get_time"}}
    body, _ = await chat(gw, messages=user("what time"), tools=TOOLS, tool_choice=named)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"  # OpenAI's quirk for a named tool_choice
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_time"]
    assert state.last_request_body["tool_choice"] == named

    body, _ = await chat(gw, messages=user("both #tools"), tools=TOOLS, parallel_tool_calls=False)
    assert len(body["choices"][0]["message"]["tool_calls"]) == 1
    assert state.last_request_body["parallel_tool_calls"] is False

    body, _ = await chat(gw, messages=user("no tools #tool"), tools=TOOLS, tool_choice="none")
    assert body["choices"][0]["message"]["content"] == "You said: no tools"
    assert "tool_calls" not in body["choices"][0]["message"]

    chunks, _ = await chat_stream(gw, messages=user("what time"), tools=TOOLS, tool_choice="required")
    calls = tool_calls_of(chunks)
    assert list(calls) == [0] and calls[0]["name"] == "get_weather"
    assert finish_of(chunks) == "tool_calls"


async def test_tool_results_round_trip(gw, state):
    first, _ = await chat(gw, messages=user("weather? #tool:get_weather"), tools=TOOLS)
    call = first["choices"][0]["message"]["tool_calls"][0]
    messages = [
        *user("weather? #tool:get_weather"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21C"},
    ]
    body, _ = await chat(gw, messages=messages, tools=TOOLS)
    assert body["choices"][0]["message"]["content"] == "Tool results: sunny, 21C"
    assert state.last_request_body["messages"] == messages


# --------------------------------------------------------------------------- response formats, sampling


async def test_response_format_json_object_and_schema(gw, state):
    body, _ = await chat(gw, messages=user("answer in json: hi"), response_format={"type": "json_object"})
    assert json.loads(body["choices"][0]["message"]["content"]) == {"reply": "You said: answer in json: hi"}
    assert state.last_request_body["response_format"] == {"type": "json_object"}

    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 3},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    body, _ = await chat(gw, messages=user("a person"), response_format=rf)
    jsonschema.validate(json.loads(body["choices"][0]["message"]["content"]), schema)
    assert state.last_request_body["response_format"] == rf

    chunks, _ = await chat_stream(gw, messages=user("a person"), response_format=rf)
    jsonschema.validate(json.loads(content_of(chunks)), schema)


async def test_n_two_choices(gw, state):
    body, _ = await chat(gw, messages=user("twice"), n=2)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in body["choices"]] == ["You said: twice", "You said: twice [1]"]
    assert state.last_request_body["n"] == 2

    chunks, _ = await chat_stream(gw, messages=user("twice"), n=2)
    assert content_of(chunks, 0) == "You said: twice"
    assert content_of(chunks, 1) == "You said: twice [1]"
    assert finish_of(chunks, 0) == "stop" and finish_of(chunks, 1) == "stop"


async def test_stop_seed_and_sampling_params_pass_through(gw, state):
    body, _ = await chat(
        gw,
        messages=user("hello there friend"),
        stop=["there", "zzz"],
        seed=1234,
        temperature=0.2,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        user="u-1",
        logit_bias={"50256": -100},
        metadata={"k": "v"},
        store=False,
    )
    assert body["choices"][0]["message"]["content"] == "You said: hello "
    assert body["choices"][0]["finish_reason"] == "stop"
    sent = state.last_request_body
    assert sent["stop"] == ["there", "zzz"]
    assert sent["seed"] == 1234
    assert (sent["temperature"], sent["top_p"]) == (0.2, 0.9)
    assert (sent["presence_penalty"], sent["frequency_penalty"]) == (0.5, -0.5)
    assert sent["user"] == "u-1" and sent["logit_bias"] == {"50256": -100} and sent["metadata"] == {"k": "v"}
    assert sent["store"] is False

    chunks, _ = await chat_stream(gw, messages=user("hello there friend"), stop="friend")
    assert content_of(chunks) == "You said: hello there "
    assert state.last_request_body["stop"] == "friend"


async def test_max_tokens_and_max_completion_tokens(gw, state):
    body, _ = await chat(gw, messages=user("one two three four"), max_tokens=2)
    assert body["choices"][0]["message"]["content"] == "You said:"
    assert body["choices"][0]["finish_reason"] == "length"
    assert state.last_request_body["max_tokens"] == 2
    assert "max_completion_tokens" not in state.last_request_body

    body, _ = await chat(gw, messages=user("one two three four"), max_completion_tokens=3)
    assert body["choices"][0]["message"]["content"] == "You said: one"
    assert body["choices"][0]["finish_reason"] == "length"
    assert state.last_request_body["max_completion_tokens"] == 3  # OpenAI itself knows the new name
    assert "max_tokens" not in state.last_request_body

    chunks, _ = await chat_stream(gw, messages=user("one two three four"), max_completion_tokens=4)
    assert content_of(chunks) == "You said: one two"
    assert finish_of(chunks) == "length"


async def test_logprobs_pass_through(gw, state):
    body, _ = await chat(gw, messages=user("a b"), logprobs=True, top_logprobs=2)
    lp = body["choices"][0]["logprobs"]["content"]
    assert "".join(e["token"] for e in lp) == "You said: a b"
    assert all(len(e["top_logprobs"]) == 2 for e in lp)
    assert state.last_request_body["logprobs"] is True and state.last_request_body["top_logprobs"] == 2

    chunks, _ = await chat_stream(gw, messages=user("a b"), logprobs=True, top_logprobs=3)
    entries = [
        e for c in chunks for ch in c["choices"] if ch.get("logprobs") for e in ch["logprobs"]["content"]
    ]
    assert "".join(e["token"] for e in entries) == "You said: a b"
    assert all(len(e["top_logprobs"]) == 3 for e in entries)


# --------------------------------------------------------------------------- stream usage


async def test_stream_include_usage_final_chunk(gw, state):
    chunks, _ = await chat_stream(gw, messages=user("count me"), stream_options={"include_usage": True})
    last = chunks[-1]
    assert last["choices"] == []
    u = last["usage"]
    assert u["prompt_tokens"] > 0 and u["completion_tokens"] > 0
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert all(c.get("usage") is None for c in chunks[:-1])
    assert state.last_request_body["stream_options"] == {"include_usage": True}


async def test_stream_gateway_asks_upstream_for_usage(gw, state):
    """The gateway always asks the upstream for stream usage (accounting), whatever the client said."""
    chunks, _ = await chat_stream(gw, messages=user("count me"))
    assert content_of(chunks) == "You said: count me"
    assert state.last_request_body["stream_options"]["include_usage"] is True

    chunks, _ = await chat_stream(gw, messages=user("count me"), stream_options={"include_usage": False})
    assert content_of(chunks) == "You said: count me"
    assert state.last_request_body["stream_options"]["include_usage"] is True


async def test_stream_without_include_usage_has_no_usage_chunk(gw, state):
    chunks, _ = await chat_stream(gw, messages=user("count me"))
    assert all(c["choices"] for c in chunks), "a usage-only chunk reached a client that did not ask"
    assert all(c.get("usage") is None for c in chunks)

    chunks, _ = await chat_stream(gw, messages=user("count me"), stream_options={"include_usage": False})
    assert all(c["choices"] for c in chunks), "a usage-only chunk reached a client that asked for none"

    raw = await sdk(gw).completions.with_raw_response.create(
        model="instruct", prompt="no usage", max_tokens=20, stream=True
    )
    chunks = [c.model_dump(exclude_unset=True) async for c in raw.parse()]
    assert all(c["choices"] for c in chunks), "a usage-only completions chunk reached the client"


# --------------------------------------------------------------------------- extensions


async def test_unknown_fields_pass_through(gw, state):
    state.accept_extra = {"my_extension", "other_ext"}
    ext = {"mode": "fast", "levels": [1, 2, {"deep": True}], "none": None}
    body, _ = await chat(gw, messages=user("ext"), extra_body={"my_extension": ext, "other_ext": 3.5})
    assert body["choices"][0]["message"]["content"] == "You said: ext"
    sent = state.last_request_body
    assert sent["my_extension"] == ext and sent["other_ext"] == 3.5

    chunks, _ = await chat_stream(gw, messages=user("ext"), extra_body={"my_extension": ext})
    assert content_of(chunks) == "You said: ext"
    assert state.last_request_body["my_extension"] == ext


# --------------------------------------------------------------------------- legacy completions


async def test_completions_non_stream(gw, state):
    client = sdk(gw)
    raw = await client.completions.with_raw_response.create(
        model="instruct", prompt="hello there", max_tokens=20
    )
    body = json.loads(raw.content)
    validate("CreateCompletionResponse", body)
    assert_no_unknown_top_level("CreateCompletionResponse", body)
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == " You said: hello there"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] > 0
    assert raw.headers["x-switchman-provider"] == "a"
    sent = state.last_request_body
    assert state.last_request.path == "/v1/completions"
    assert sent["model"] == INSTRUCT_MODEL and sent["prompt"] == "hello there" and sent["max_tokens"] == 20

    raw = await client.completions.with_raw_response.create(
        model="instruct", prompt=["p one", "p two"], max_tokens=2, n=2, echo=True, logprobs=1
    )
    body = json.loads(raw.content)
    validate("CreateCompletionResponse", body)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["choices"][0]["text"] == "p one You said:"
    assert body["choices"][0]["finish_reason"] == "length"
    lp = body["choices"][0]["logprobs"]
    assert "".join(lp["tokens"]) == body["choices"][0]["text"]
    assert len(lp["token_logprobs"]) == len(lp["tokens"]) == len(lp["text_offset"])
    assert state.last_request_body["echo"] is True and state.last_request_body["logprobs"] == 1


async def test_completions_stream(gw, state):
    client = sdk(gw)
    raw = await client.completions.with_raw_response.create(
        model="instruct",
        prompt="hello stream",
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = [c.model_dump(exclude_unset=True) async for c in raw.parse()]
    for c in chunks:
        validate_completion_chunk(c)
        assert c["object"] == "text_completion"
    assert len({c["id"] for c in chunks}) == 1
    assert "".join(ch["text"] for c in chunks for ch in c["choices"]) == " You said: hello stream"
    assert [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]] == ["stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert state.last_request_body["stream"] is True


# --------------------------------------------------------------------------- embeddings


async def test_embeddings_float_base64_and_dimensions(gw, state):
    client = sdk(gw)
    raw = await client.embeddings.with_raw_response.create(
        model="emb", input=["first text", "second"], encoding_format="float"
    )
    floats = json.loads(raw.content)
    validate("CreateEmbeddingResponse", floats)
    assert floats["object"] == "list" and [d["index"] for d in floats["data"]] == [0, 1]
    assert all(len(d["embedding"]) == 1536 for d in floats["data"])
    assert floats["usage"]["prompt_tokens"] > 0
    assert state.last_request_body["model"] == EMBED_MODEL
    assert state.last_request_body["encoding_format"] == "float"
    assert raw.headers["x-switchman-provider"] == "a"

    raw = await client.embeddings.with_raw_response.create(
        model="emb", input=["first text", "second"], encoding_format="base64"
    )
    b64 = json.loads(raw.content)
    assert all(isinstance(d["embedding"], str) for d in b64["data"])
    decoded = copy.deepcopy(b64)
    for d in decoded["data"]:
        d["embedding"] = floats_from_b64(d["embedding"])
    validate("CreateEmbeddingResponse", decoded)
    assert [d["embedding"] for d in decoded["data"]] == [d["embedding"] for d in floats["data"]]
    assert state.last_request_body["encoding_format"] == "base64"

    # The SDK's default (base64 on the wire, decoded by the SDK) agrees as well.
    resp = await client.embeddings.create(model="emb", input="first text")
    assert resp.data[0].embedding == floats["data"][0]["embedding"]

    raw = await client.embeddings.with_raw_response.create(
        model="emb", input="first text", dimensions=256, encoding_format="float"
    )
    small = json.loads(raw.content)
    validate("CreateEmbeddingResponse", small)
    vec = small["data"][0]["embedding"]
    assert len(vec) == 256
    assert math.isclose(math.sqrt(sum(v * v for v in vec)), 1.0, rel_tol=1e-5)
    assert state.last_request_body["dimensions"] == 256


# --------------------------------------------------------------------------- models and health


async def test_list_models(gw):
    client = sdk(gw)
    raw = await client.models.with_raw_response.list()
    body = json.loads(raw.content)
    validate("ListModelsResponse", body)
    for m in body["data"]:
        validate("Model", m)
        assert m["object"] == "model"
    ids = [m["id"] for m in body["data"]]
    assert len(ids) == len(set(ids))
    for name in ("m", "instruct", "emb", CHAT_MODEL, INSTRUCT_MODEL, EMBED_MODEL, SLASH_MODEL):
        assert name in ids
    assert f"a/{CHAT_MODEL}" not in ids  # the provider-qualified spelling is routable, not listed
    by_id = {m["id"]: m for m in body["data"]}
    assert by_id["m"]["owned_by"] == "a"
    page = await client.models.list()
    assert {m.id for m in page.data} == set(ids)


async def test_retrieve_model(gw):
    client = sdk(gw)
    for name in ("m", CHAT_MODEL, f"a/{CHAT_MODEL}"):
        raw = await client.models.with_raw_response.retrieve(name)
        body = json.loads(raw.content)
        validate("Model", body)
        assert body["id"] == name and body["object"] == "model"

    # An id containing "/": raw (unencoded slash) and through the SDK (which percent-encodes it).
    status, _, body = await raw_get(gw, f"/v1/models/{SLASH_MODEL}")
    assert status == 200
    validate("Model", body)
    assert body["id"] == SLASH_MODEL
    status, _, body = await raw_get(gw, f"/v1/models/a/{SLASH_MODEL}")
    assert status == 200 and body["id"] == f"a/{SLASH_MODEL}"
    model = await client.models.retrieve(SLASH_MODEL)
    assert model.id == SLASH_MODEL


async def test_retrieve_unknown_model_404(gw):
    client = sdk(gw)
    with pytest.raises(openai.NotFoundError) as exc:
        await client.models.retrieve("no-such-model")
    assert exc.value.status_code == 404
    body = exc.value.response.json()
    validate("ErrorResponse", body)
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["param"] == "model"
    assert "no-such-model" in body["error"]["message"]

    status, _, body = await raw_get(gw, "/v1/models/nope/deeper")
    assert status == 404
    validate("ErrorResponse", body)


async def test_healthz(gw):
    status, headers, body = await raw_get(gw, "/healthz")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert body == {"status": "ok", "nats": "connected"}
