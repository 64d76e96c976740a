"""The OpenAI upstream emulator, driven by the official openai SDK and checked against the spec."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time

import aiohttp
import openai

try:  # the HTTP library under the openai SDK (httpx2 in openai 3.x, httpx before)
    import httpx2 as _http
except ImportError:  # pragma: no cover - older SDKs
    import httpx as _http  # type: ignore[no-redef]
import pytest
from multidict import CIMultiDict
from openai import AsyncOpenAI

from tests.emulators.openai_upstream import UpstreamState, count_tokens, start
from tests.schema import assert_no_unknown_top_level, validate, validate_sse_chunks

KEY = "sk-test-emulator-0001"
MODEL = "gpt-4o-mini"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
    },
}


@pytest.fixture
async def upstream():
    state = UpstreamState(api_key=KEY)
    runner, base_url = await start(state)
    try:
        yield state, base_url
    finally:
        await runner.cleanup()


@pytest.fixture
def state(upstream) -> UpstreamState:
    return upstream[0]


@pytest.fixture
async def client(upstream):
    c = AsyncOpenAI(base_url=upstream[1], api_key=KEY, max_retries=0, timeout=10)
    try:
        yield c
    finally:
        await c.close()


async def raw_post(
    base_url: str, path: str, body, key: str | None = KEY
) -> tuple[int, CIMultiDict[str], bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as s:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with s.post(
            base_url + path, data=data, headers={**headers, "Content-Type": "application/json"}
        ) as r:
            return r.status, CIMultiDict(r.headers), await r.read()


def msgs(text: str = "hello world") -> list[dict]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


# ----------------------------------------------------------------------------- chat


async def test_chat_completion(client, state) -> None:
    resp = await client.chat.completions.create(model=MODEL, messages=msgs("hello world"))
    body = resp.to_dict()
    validate("CreateChatCompletionResponse", body)
    assert_no_unknown_top_level("CreateChatCompletionResponse", body, allowed_extra=())
    assert resp.choices[0].message.content == "You said: hello world"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens == 4  # "You", " said:", " hello", " world"
    assert resp.usage.prompt_tokens == 3 + (4 + count_tokens("be brief")) + (4 + count_tokens("hello world"))
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert state.request_count == 1 and state.counts["/v1/chat/completions"] == 1
    assert state.last_request_headers["Authorization"] == f"Bearer {KEY}"
    assert state.last_request_body == {"model": MODEL, "messages": msgs("hello world")}


async def test_chat_n_stop_and_length(client) -> None:
    resp = await client.chat.completions.create(
        model=MODEL, messages=msgs("alpha beta gamma"), n=3, stop=[" beta"]
    )
    validate("CreateChatCompletionResponse", resp.to_dict())
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert {c.message.content for c in resp.choices} == {"You said: alpha"}
    resp = await client.chat.completions.create(
        model=MODEL, messages=msgs("#words:10"), max_tokens=50, max_completion_tokens=3
    )  # both together are allowed; max_completion_tokens wins
    assert resp.choices[0].message.content == "w1 w2 w3"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 3


async def test_chat_logprobs(client) -> None:
    resp = await client.chat.completions.create(
        model=MODEL, messages=msgs("hi"), logprobs=True, top_logprobs=2
    )
    validate("CreateChatCompletionResponse", resp.to_dict())
    lp = resp.choices[0].logprobs.content
    assert "".join(t.token for t in lp) == resp.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 for t in lp)


async def test_stream_with_include_usage(client) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=msgs("stream me please"), stream=True, stream_options={"include_usage": True}
    )
    chunks = [c.to_dict() async for c in stream]
    validate_sse_chunks(chunks)
    for c in chunks:
        assert_no_unknown_top_level("CreateChatCompletionStreamResponse", c, allowed_extra=())
    first, *middle, finish, last = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert "".join(c["choices"][0]["delta"]["content"] for c in middle) == "You said: stream me please"
    assert finish["choices"][0]["finish_reason"] == "stop" and finish["choices"][0]["delta"] == {}
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == len(middle)
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_stream_without_usage_has_no_usage_key(client) -> None:
    stream = await client.chat.completions.create(model=MODEL, messages=msgs("x"), stream=True, n=2)
    chunks = [c.to_dict() async for c in stream]
    validate_sse_chunks(chunks)
    assert all("usage" not in c for c in chunks)
    assert [c["choices"][0]["index"] for c in chunks[:2]] == [0, 1]  # choices interleave
    finals = {
        c["choices"][0]["index"]: c["choices"][0]["finish_reason"]
        for c in chunks
        if c["choices"][0]["finish_reason"]
    }
    assert finals == {0: "stop", 1: "stop"}


async def test_stream_wire_format(upstream) -> None:
    _, base_url = upstream
    body = {
        "model": MODEL,
        "messages": msgs("wire"),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    status, headers, raw = await raw_post(base_url, "/chat/completions", body)
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    text = raw.decode()
    assert text.endswith("data: [DONE]\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    validate_sse_chunks(chunks)
    assert events[0][6:] == json.dumps(chunks[0], separators=(",", ":"))  # compact JSON like OpenAI


async def test_tools_stream(client) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=msgs("#tools Paris"),
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c.to_dict() async for c in stream]
    validate_sse_chunks(chunks)
    first = chunks[0]["choices"][0]["delta"]
    assert first["role"] == "assistant" and first["content"] is None
    assert first["tool_calls"][0]["index"] == 0 and first["tool_calls"][0]["id"].startswith("call_")
    assert first["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    args: dict[int, str] = {}
    for c in chunks:
        for ch in c["choices"]:
            for tc in ch["delta"].get("tool_calls") or []:
                args[tc["index"]] = args.get(tc["index"], "") + tc["function"].get("arguments", "")
    assert json.loads(args[0]) == {"city": "Paris", "unit": "c"}
    assert json.loads(args[1]) == {"tz": "Paris"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"

    # The SDK's own accumulator assembles the same calls from the deltas.
    async with client.chat.completions.stream(
        model=MODEL, messages=msgs("#tool:get_time UTC"), tools=[WEATHER_TOOL, TIME_TOOL]
    ) as s:
        async for _ in s:
            pass
        final = await s.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_time", {"tz": "UTC"})
    ]
    assert final.choices[0].finish_reason == "tool_calls"


async def test_tool_call_roundtrip_and_named_choice(client) -> None:
    resp = await client.chat.completions.create(
        model=MODEL,
        messages=msgs("weather in Oslo"),
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    validate("CreateChatCompletionResponse", resp.to_dict())
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"  # OpenAI's quirk for a forced (named) tool_choice
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    history = [
        *msgs("weather in Oslo"),
        {"role": "assistant", "content": None, "tool_calls": [call.to_dict()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    resp2 = await client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER_TOOL])
    assert resp2.choices[0].message.content == "Tool results: sunny, 21C"
    assert resp2.choices[0].message.tool_calls is None

    # auto without trigger -> plain text; "none" never calls
    resp3 = await client.chat.completions.create(
        model=MODEL, messages=msgs("#tool x"), tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert resp3.choices[0].message.tool_calls is None


async def test_json_modes(client) -> None:
    resp = await client.chat.completions.create(
        model=MODEL, messages=msgs("answer in json"), response_format={"type": "json_object"}
    )
    assert json.loads(resp.choices[0].message.content) == {"reply": "You said: answer in json"}
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 5},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    resp = await client.chat.completions.create(
        model=MODEL,
        messages=msgs("x"),
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    assert json.loads(resp.choices[0].message.content) == {"n": 5, "tags": ["You said: x"]}
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(
            model=MODEL, messages=msgs("no keyword"), response_format={"type": "json_object"}
        )
    assert exc.value.param == "messages"


# ----------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (
            {"model": MODEL, "messages": msgs(), "foo": 1},
            "foo",
            "Unrecognized request argument supplied: foo",
        ),
        (
            {"model": MODEL, "messages": msgs(), "stream_options": {"include_usage": True}},
            "stream_options",
            "only allowed when 'stream'",
        ),
        (
            {"model": MODEL, "messages": msgs(), "stream": False, "stream_options": {"include_usage": True}},
            "stream_options",
            "stream",
        ),
        ({"messages": msgs()}, "model", "model"),
        ({"model": MODEL}, "messages", "Missing required parameter: 'messages'"),
        ({"model": MODEL, "messages": []}, "messages", "empty array"),
        (
            {"model": MODEL, "messages": [{"role": "bot", "content": "x"}]},
            "messages[0].role",
            'Invalid value: "bot"',
        ),
        ({"model": MODEL, "messages": msgs(), "n": 0}, "n", "below minimum"),
        ({"model": MODEL, "messages": msgs(), "n": 129}, "n", "above maximum value. Expected a value <= 128"),
        (
            {"model": MODEL, "messages": msgs(), "temperature": 2.5},
            "temperature",
            "decimal above maximum value",
        ),
        ({"model": MODEL, "messages": msgs(), "temperature": "hot"}, "temperature", "Invalid type"),
        ({"model": MODEL, "messages": msgs(), "stop": ["a", "b", "c", "d", "e"]}, "stop", "array too long"),
        (
            {"model": MODEL, "messages": msgs(), "tool_choice": "auto"},
            "tool_choice",
            "only allowed when 'tools'",
        ),
        (
            {
                "model": MODEL,
                "messages": msgs(),
                "tools": [{"type": "function", "function": {"name": "bad name"}}],
            },
            "tools[0].function.name",
            "pattern",
        ),
        (
            {"model": MODEL, "messages": [*msgs(), {"role": "tool", "content": "r"}]},
            "messages[2].tool_call_id",
            "Missing required parameter",
        ),
        (
            {
                "model": MODEL,
                "messages": [*msgs(), {"role": "tool", "tool_call_id": "call_1", "content": "r"}],
            },
            "messages.[2].role",
            "must be a response to a preceeding message with 'tool_calls'",
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    *msgs(),
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_2", "content": "r"},
                ],
            },
            "messages.[3].role",
            "preceeding",
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    *msgs(),
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                        ],
                    },
                    {"role": "user", "content": "next"},
                ],
            },
            "messages.[2].role",
            "did not have response messages: call_1",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": 42}]},
            "messages[0].content",
            "Invalid value",
        ),
        ({"model": MODEL, "messages": msgs(), "logit_bias": {"1": "x"}}, "logit_bias.1", "Invalid value"),
    ],
)
async def test_rejects_like_openai(upstream, body, param, fragment) -> None:
    _, base_url = upstream
    status, _, raw = await raw_post(base_url, "/chat/completions", body)
    assert status == 400, raw
    err = json.loads(raw)
    validate("ErrorResponse", err)
    assert err["error"]["type"] == "invalid_request_error"
    assert err["error"]["param"] == param, err
    assert fragment in err["error"]["message"], err


async def test_sdk_sees_bad_request(client, state) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(model=MODEL, messages=msgs(), extra_body={"provider": "x"})
    assert exc.value.param == "provider"
    assert "Unrecognized request argument supplied: provider" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(
            model=MODEL, messages=msgs(), stream_options={"include_usage": True}
        )
    assert exc.value.param == "stream_options"
    state.accept_extra.add("provider")
    resp = await client.chat.completions.create(model=MODEL, messages=msgs(), extra_body={"provider": "x"})
    assert resp.choices[0].message.content


async def test_accepts_valid_variants(upstream) -> None:
    _, base_url = upstream
    tc = {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {
        "model": MODEL,
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}],
            },
            {"role": "assistant", "content": None, "tool_calls": [tc]},
            {"role": "tool", "tool_call_id": "call_a", "content": [{"type": "text", "text": "42"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "and now?"},
        ],
        "temperature": None,
        "stop": None,
        "seed": 1,
        "user": "u",
        "metadata": {"k": "v"},
        "parallel_tool_calls": True,
        "tools": [WEATHER_TOOL],
    }
    status, _, raw = await raw_post(base_url, "/chat/completions", body)
    assert status == 200, raw
    assert json.loads(raw)["choices"][0]["message"]["content"] == "You said: and now?"


async def test_invalid_json_and_unknown_route(upstream) -> None:
    _, base_url = upstream
    status, _, raw = await raw_post(base_url, "/chat/completions", b"{not json")
    assert status == 400 and "could not parse the JSON body" in json.loads(raw)["error"]["message"]
    status, _, raw = await raw_post(base_url, "/nope", {})
    assert status == 404
    validate("ErrorResponse", json.loads(raw))


# ----------------------------------------------------------------------------- auth


async def test_auth(upstream) -> None:
    state, base_url = upstream
    for key, code in ((None, None), ("sk-wrong-key-123456", "invalid_api_key")):
        status, _, raw = await raw_post(
            base_url, "/chat/completions", {"model": MODEL, "messages": msgs()}, key=key
        )
        assert status == 401
        err = json.loads(raw)
        validate("ErrorResponse", err)
        assert err["error"]["code"] == code
    async with AsyncOpenAI(base_url=base_url, api_key="sk-bad", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()
    state.api_key = None  # open emulator: any key works
    async with AsyncOpenAI(base_url=base_url, api_key="anything", max_retries=0) as c:
        assert (await c.models.list()).data


# ----------------------------------------------------------------------------- other endpoints


async def test_embeddings_float_and_base64(client, state) -> None:
    inputs = ["first text", "second text"]
    as_float = await client.embeddings.create(
        model="text-embedding-3-small", input=inputs, encoding_format="float"
    )
    validate("CreateEmbeddingResponse", as_float.to_dict())
    assert [len(d.embedding) for d in as_float.data] == [1536, 1536]
    assert math.isclose(math.fsum(v * v for v in as_float.data[0].embedding), 1.0, rel_tol=1e-5)
    assert as_float.usage.prompt_tokens == 4

    decoded = await client.embeddings.create(
        model="text-embedding-3-small", input=inputs
    )  # SDK asks base64 and decodes
    assert state.last_request_body["encoding_format"] == "base64"
    assert [d.embedding for d in decoded.data] == [d.embedding for d in as_float.data]

    raw = await client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="first text", encoding_format="base64"
    )
    payload = json.loads(raw.text)
    b64 = payload["data"][0]["embedding"]
    assert isinstance(b64, str)
    vec = list(struct.unpack(f"<{len(base64.b64decode(b64)) // 4}f", base64.b64decode(b64)))
    assert vec == as_float.data[0].embedding

    short = await client.embeddings.create(
        model="text-embedding-3-large", input="first text", dimensions=256, encoding_format="float"
    )
    assert len(short.data[0].embedding) == 256
    assert math.isclose(math.fsum(v * v for v in short.data[0].embedding), 1.0, rel_tol=1e-5)

    tokens = await client.embeddings.create(
        model="text-embedding-3-small", input=[[1, 2, 3], [4]], encoding_format="float"
    )
    assert len(tokens.data) == 2 and tokens.usage.prompt_tokens == 4

    with pytest.raises(openai.BadRequestError) as exc:
        await client.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=8)
    assert exc.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError) as exc:
        await client.embeddings.create(
            model="text-embedding-3-small", input="x", extra_body={"truncate": True}
        )
    assert exc.value.param == "truncate"


async def test_models(client) -> None:
    page = await client.models.list()
    validate("ListModelsResponse", page.to_dict())
    assert MODEL in [m.id for m in page.data]
    model = await client.models.retrieve(MODEL)
    validate("Model", model.to_dict())
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


async def test_legacy_completions(client) -> None:
    resp = await client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=["one", "two"], n=2, echo=True
    )
    validate("CreateCompletionResponse", resp.to_dict())
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    assert resp.choices[0].text == "one You said: one" and resp.choices[3].text == "two You said: two [1]"
    stream = await client.completions.create(
        model="gpt-3.5-turbo-instruct",
        prompt="abc",
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=2,
    )
    chunks = [c.to_dict() async for c in stream]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == " You said:"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2
    with pytest.raises(openai.BadRequestError) as exc:
        await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", best_of=21)
    assert exc.value.param == "best_of"


async def test_reject_unknown_models(client, state) -> None:
    state.reject_unknown_models = True
    with pytest.raises(openai.NotFoundError) as exc:
        await client.chat.completions.create(model="gpt-nope", messages=msgs())
    assert exc.value.code == "model_not_found"


# ----------------------------------------------------------------------------- faults


async def test_fail_next_then_success(upstream, state) -> None:
    _, base_url = upstream
    state.fail_next = [500, 503]
    async with AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=2) as c:
        resp = await c.with_options(timeout=10).chat.completions.create(model=MODEL, messages=msgs())
    assert resp.choices[0].message.content == "You said: hello world"
    assert state.request_count == 3 and state.fail_next == []
    bodies = [r.body for r in state.requests]
    assert bodies[0] == bodies[1] == bodies[2]  # every attempt is recorded, failed ones too

    state.fail_next = [502]
    status, _, raw = await raw_post(base_url, "/chat/completions", {"model": MODEL, "messages": msgs()})
    assert status == 502
    validate("ErrorResponse", json.loads(raw))


async def test_rate_limit_retry_after(upstream, client, state) -> None:
    _, base_url = upstream
    state.fail_next, state.retry_after = [429], 0.05
    status, headers, raw = await raw_post(base_url, "/chat/completions", {"model": MODEL, "messages": msgs()})
    assert status == 429 and headers["retry-after"] == "0.05" and headers["retry-after-ms"] == "50"
    assert json.loads(raw)["error"]["code"] == "rate_limit_exceeded"

    state.fail_next = [429]
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=MODEL, messages=msgs())
    state.fail_next = [429]
    async with AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=1) as c:
        t0 = time.monotonic()
        await c.chat.completions.create(model=MODEL, messages=msgs())
        assert time.monotonic() - t0 < 1.0  # honoured retry-after-ms instead of the default backoff


async def test_delay_first_byte(client, state) -> None:
    state.delay_first_byte_s = 0.3
    t0 = time.monotonic()
    await client.chat.completions.create(model=MODEL, messages=msgs())
    assert time.monotonic() - t0 >= 0.3
    with pytest.raises(openai.APITimeoutError):
        await client.with_options(timeout=0.1).chat.completions.create(model=MODEL, messages=msgs())


async def test_cut_stream(client, state) -> None:
    state.cut_stream_after_chunks = 2
    got = []
    stream = await client.chat.completions.create(model=MODEL, messages=msgs("a b c d e"), stream=True)
    with pytest.raises((_http.HTTPError, openai.APIError)):
        async for chunk in stream:
            got.append(chunk)
    assert len(got) == 2
    state.cut_stream_after_chunks = None
    stream = await client.chat.completions.create(model=MODEL, messages=msgs("a b c d e"), stream=True)
    assert len([c async for c in stream]) > 2


async def test_stream_chunk_delay_and_client_disconnect(client, state) -> None:
    state.chunk_delay_s = 0.05
    stream = await client.chat.completions.create(model=MODEL, messages=msgs("#words:50"), stream=True)
    async for _ in stream:
        break
    await stream.close()
    for _ in range(100):
        if state.disconnects:
            break
        await asyncio.sleep(0.02)
    assert state.disconnects == 1


async def test_hang(client, state) -> None:
    state.hang = True
    with pytest.raises(openai.APITimeoutError):
        await client.with_options(timeout=0.3).chat.completions.create(model=MODEL, messages=msgs())
    for _ in range(100):
        if state.cancelled:
            break
        await asyncio.sleep(0.02)
    assert state.cancelled == 1 and state.in_flight == 0
    state.hang = False
    assert (await client.chat.completions.create(model=MODEL, messages=msgs())).choices


async def test_drop_connection(client, state) -> None:
    state.fail_next = [0]
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model=MODEL, messages=msgs())
    assert (await client.chat.completions.create(model=MODEL, messages=msgs())).choices


async def test_concurrency_observed(client, state) -> None:
    state.delay_first_byte_s = 0.1
    await asyncio.gather(
        *(client.chat.completions.create(model=MODEL, messages=msgs(str(i))) for i in range(5))
    )
    assert state.max_in_flight == 5 and state.in_flight == 0
    assert sorted(r.body["messages"][-1]["content"] for r in state.requests) == [str(i) for i in range(5)]


async def test_stream_obfuscation_option(client, state) -> None:
    state.stream_obfuscation = True
    stream = await client.chat.completions.create(model=MODEL, messages=msgs("x"), stream=True)
    chunks = [c.to_dict() async for c in stream]
    validate_sse_chunks(chunks)
    assert all(isinstance(c["obfuscation"], str) for c in chunks)
    stream = await client.chat.completions.create(
        model=MODEL, messages=msgs("x"), stream=True, stream_options={"include_obfuscation": False}
    )
    assert all("obfuscation" not in c for c in [c.to_dict() async for c in stream])
