"""The native protocols end to end: the official openai SDK → gateway → Anthropic / Gemini / Cohere / Replicate.

One gateway (the five services in-process on the session's nats-server) and one emulator per
protocol serve the whole module (module-scoped event loop); every test talks to its own routes:

* ``<kind>``          → the native provider (single candidate);
* ``<kind>-badkey``   → the same emulator with a wrong API key;
* ``<kind>-failover`` → the native provider, then ``fallback`` (the OpenAI emulator).

Failures are scripted with the emulators' magic strings in the last user message (see each
emulator's module docstring). Every success is validated against the OpenAI schemas
(tests/schema.py), every error body against ``ErrorResponse``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
from aiohttp import web

from tests.emulators import anthropic as anthropic_emu
from tests.emulators import cohere as cohere_emu
from tests.emulators import gemini as gemini_emu
from tests.emulators import replicate as replicate_emu
from tests.emulators.openai_upstream import UpstreamState
from tests.emulators.openai_upstream import running as openai_running
from tests.gateway import Gateway, config, in_process, openai_provider
from tests.schema import validate, validate_sse_chunks

pytestmark = pytest.mark.asyncio(loop_scope="module")

KINDS = ["anthropic", "gemini", "cohere", "replicate"]
WITH_TOOLS = ["anthropic", "gemini", "cohere"]

MODEL = {
    "anthropic": "claude-sonnet-4-6",
    "gemini": "gemini-2.5-flash",
    "cohere": "command-a-03-2025",
    "replicate": "meta/meta-llama-3-8b-instruct",
}
GEMINI_3 = "gemini-3-pro-preview"  # signs its function calls (thoughtSignature)
REPLICATE_PINNED = "meta/meta-llama-3-8b-instruct:" + next(iter(replicate_emu.VERSIONS))
EXTRA_MODELS = {"gemini": [GEMINI_3], "replicate": [REPLICATE_PINNED]}
KEY = {
    "anthropic": "sk-ant-emulated",
    "gemini": gemini_emu.API_KEY,
    "cohere": "co-emulated",
    "replicate": "r8_emulated",
}
# The emulators' deterministic answer to a user turn.
REPLY = {
    "anthropic": "You said: {}",
    "gemini": "You said: {}",
    "cohere": "Hello! You said: {}",
    "replicate": "You said: {}",
}
# (prompt_tokens, completion_tokens) each emulator reports for the user text "hello there friend".
USAGE = {
    "anthropic": (7, 5),  # words of the JSON of the text block + 1; words of the answer
    "gemini": (3, 9),  # prompt words; answer words + 4 thought tokens (2.5 models think)
    "cohere": (10, 6),  # message words + 7 overhead; answer pieces
    "replicate": (3, 5),  # prompt words; output words
}
# Retry-After each emulator sends (or implies: Gemini's RetryInfo.retryDelay) with a 429.
RETRY_AFTER = {"anthropic": "2", "gemini": "7", "cohere": "1", "replicate": "1"}
CUT = {"anthropic": "[fail:cut]", "gemini": "[cut]", "cohere": "[cut]", "replicate": "[cut]"}
ERROR_EVENT = {
    "anthropic": "[fail:error_event]",
    "gemini": "[fail-mid:500]",
    "cohere": "[error-event]",
    "replicate": "[error-event]",
}

# A 1x1 PNG, and JPEG magic bytes (valid base64, not a PNG).
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
JPEG_B64 = base64.b64encode(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01").decode()
IMAGE_URL = "https://example.com/images/cat.png"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
# A prompt that makes each emulator call get_weather, and the arguments it fills in.
TOOL_PROMPT = {
    "anthropic": "What is the weather in Paris?",
    "gemini": "Please call get_weather for Paris.",
    "cohere": "What is the weather in Paris?",
}
TOOL_ARGS = {
    "anthropic": {"city": "Paris"},
    "gemini": {"city": "example"},
    "cohere": {"city": "emulated"},
}


def _gemini_after_tools(results: list[str]) -> str:
    names = ["get_weather", "get_time"][: len(results)]
    return "Results: " + "; ".join(
        f"{n}={json.dumps({'result': r})}" for n, r in zip(names, results, strict=True)
    )


# The emulators' answer once the tool results are in (results of get_weather, get_time).
AFTER_TOOLS = {
    "anthropic": lambda results: "Tool results: " + "; ".join(results),
    "gemini": _gemini_after_tools,
    "cohere": lambda results: "The tool returned: " + results[-1],
}


# --------------------------------------------------------------------------- the module's gateway


RECORDED = web.AppKey("recorded", list)


@web.middleware
async def _record(request: web.Request, handler: Any) -> web.StreamResponse:
    """Record every request the emulator gets (outermost: rejected ones too)."""
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw
    request.app[RECORDED].append({"method": request.method, "path": request.path, "body": body})
    return await handler(request)


def _app(kind: str) -> web.Application:
    if kind == "anthropic":
        app = anthropic_emu.make_app(api_key=KEY[kind])
    elif kind == "gemini":
        app = gemini_emu.make_app(api_key=KEY[kind])
    elif kind == "cohere":
        app = cohere_emu.make_app(token=KEY[kind])
    else:
        app = replicate_emu.make_app(token=KEY[kind])
    app[RECORDED] = []
    app.middlewares.insert(0, _record)
    return app


# How each protocol wants its base URL (see the adapters' constructors).
BASE_SUFFIX = {"anthropic": "", "gemini": "/v1beta", "cohere": "", "replicate": "/v1"}


@dataclass
class Env:
    gw: Gateway
    client: openai.AsyncOpenAI
    apps: dict[str, web.Application]
    fallback: UpstreamState
    runners: list[web.AppRunner] = field(default_factory=list)

    def recorded(self, kind: str, method: str = "POST") -> list[dict[str, Any]]:
        return [r for r in self.apps[kind][RECORDED] if r["method"] == method]

    def last_body(self, kind: str) -> Any:
        """The body of the last chat call the emulator got (Replicate: the create call)."""
        calls = [r for r in self.recorded(kind) if kind != "replicate" or r["path"].endswith("/predictions")]
        return calls[-1]["body"]

    def clear(self) -> None:
        for app in self.apps.values():
            app[RECORDED].clear()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(nats_server) -> AsyncIterator[Env]:
    apps = {kind: _app(kind) for kind in KINDS}
    runners: list[web.AppRunner] = []
    providers: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    fallback = UpstreamState(api_key="sk-test")
    async with contextlib.AsyncExitStack() as stack:
        fallback_base = await stack.enter_async_context(openai_running(fallback))
        providers.append(openai_provider("fallback", fallback_base, ["gpt-4o-mini"]))
        for kind, app in apps.items():
            runner, base = await anthropic_emu.serve(app)
            runners.append(runner)
            stack.push_async_callback(runner.cleanup)
            url = base + BASE_SUFFIX[kind]
            served = [MODEL[kind], *EXTRA_MODELS.get(kind, [])]
            providers.append(
                {"id": kind, "kind": kind, "base_url": url, "api_key": KEY[kind], "models": served}
            )
            providers.append(
                {
                    "id": f"{kind}-badkey",
                    "kind": kind,
                    "base_url": url,
                    "api_key": "definitely-wrong",
                    "models": served,
                }
            )
            models += [
                {"name": kind, "targets": [{"provider": kind, "model": MODEL[kind]}]},
                {"name": f"{kind}-badkey", "targets": [{"provider": f"{kind}-badkey", "model": MODEL[kind]}]},
                {
                    "name": f"{kind}-failover",
                    "targets": [
                        {"provider": kind, "model": MODEL[kind]},
                        {"provider": "fallback", "model": "gpt-4o-mini"},
                    ],
                },
            ]
        models.append({"name": "gemini-3", "targets": [{"provider": "gemini", "model": GEMINI_3}]})
        models.append(
            {"name": "replicate-pinned", "targets": [{"provider": "replicate", "model": REPLICATE_PINNED}]}
        )
        cfg = config(providers=providers, models=models)
        gw = await stack.enter_async_context(in_process(cfg, nats_server.url))
        yield Env(gw, gw.openai(), apps, fallback, runners)


@pytest.fixture
def e(env: Env) -> Env:
    env.clear()
    return env


# --------------------------------------------------------------------------- helpers


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def dump(obj: Any) -> dict[str, Any]:
    return obj.model_dump(exclude_unset=True)


def check_usage(usage: dict[str, Any], expected: tuple[int, int] | None = None) -> None:
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0, usage
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], usage
    if expected is not None:
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == expected, usage


async def stream_chunks(client: openai.AsyncOpenAI, **kw: Any) -> list[dict[str, Any]]:
    stream = await client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    return [dump(c) async for c in stream]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])


def finish_of(chunks: list[dict[str, Any]]) -> list[str]:
    return [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")]


def tool_calls_of(chunks: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Tool-call deltas merged per index: {index: {id, name, arguments, fragments}}."""
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        for ch in c["choices"]:
            for tc in ch["delta"].get("tool_calls") or ():
                assert isinstance(tc.get("index"), int), tc
                fn = tc.get("function") or {}
                slot = calls.get(tc["index"])
                if slot is None:
                    assert tc.get("id") and fn.get("name"), f"first fragment lacks id/name: {tc}"
                    assert tc.get("type") == "function", tc
                    slot = calls[tc["index"]] = {
                        "id": tc["id"],
                        "name": fn["name"],
                        "arguments": "",
                        "fragments": 0,
                    }
                slot["arguments"] += fn.get("arguments") or ""
                slot["fragments"] += 1
    return calls


def check_error(body: Any, *, type: str | None = None, code: Any = ...) -> dict[str, Any]:  # noqa: A002
    validate("ErrorResponse", body)
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"].strip(), err
    if type is not None:
        assert err["type"] == type, err
    if code is not ...:
        assert err["code"] == code, err
    return err


async def sdk_error(aw: Any, status: int) -> tuple[openai.APIStatusError, dict[str, Any]]:
    with pytest.raises(openai.APIStatusError) as exc:
        await aw
    err = exc.value
    assert err.status_code == status, (err.status_code, err.response.text)
    body = err.response.json()
    check_error(body)
    return err, body


async def raw_sse(gw: Gateway, model: str, content: str) -> tuple[int, list[str]]:
    """(status, the ``data:`` payloads) of a raw streamed chat request."""
    req = {
        "model": model,
        "messages": [user(content)],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(gw.base_url + "/chat/completions", json=req, headers={"Authorization": "Bearer x"}) as r,
    ):
        text = (await r.read()).decode()
    data = [line[len("data:") :].strip() for line in text.splitlines() if line.startswith("data:")]
    return r.status, data


# --------------------------------------------------------------------------- text and streams


@pytest.mark.parametrize("kind", KINDS)
async def test_text_non_stream(e: Env, kind: str) -> None:
    raw = await e.client.chat.completions.with_raw_response.create(
        model=kind, messages=[user("hello there friend")]
    )
    body = json.loads(raw.content)
    validate("CreateChatCompletionResponse", body)
    assert raw.headers["x-switchman-provider"] == kind
    assert raw.headers["x-switchman-attempts"] == "1"
    assert body["object"] == "chat.completion" and len(body["choices"]) == 1
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == REPLY[kind].format("hello there friend")
    assert choice["finish_reason"] == "stop"
    check_usage(body["usage"], USAGE[kind])
    if kind == "gemini":  # thought tokens are reasoning tokens, counted in the completion
        assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 4
    assert len(e.recorded(kind)) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_with_usage(e: Env, kind: str) -> None:
    chunks = await stream_chunks(e.client, model=kind, messages=[user("hello there friend")])
    validate_sse_chunks(chunks)
    assert text_of(chunks) == REPLY[kind].format("hello there friend")
    assert finish_of(chunks) == ["stop"]
    assert sum(1 for c in chunks for ch in c["choices"] if ch["delta"].get("content")) >= 2, "not streamed"
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"] is not None
    check_usage(last["usage"], USAGE[kind])
    assert all(c.get("usage") is None for c in chunks[:-1])

    # Without include_usage: no usage chunk.
    stream = await e.client.chat.completions.create(
        model=kind, messages=[user("hello there friend")], stream=True
    )
    plain = [dump(c) async for c in stream]
    validate_sse_chunks(plain)
    assert text_of(plain) == REPLY[kind].format("hello there friend")
    assert all(c["choices"] for c in plain)

    # On the wire: chunks, then data: [DONE] (what the broken-stream tests check is absent).
    status, data = await raw_sse(e.gw, kind, "hello there friend")
    assert status == 200 and data[-1] == "[DONE]", data
    assert text_of([json.loads(d) for d in data[:-1]]) == REPLY[kind].format("hello there friend")


@pytest.mark.parametrize("kind", KINDS)
async def test_system_prompt_and_multi_turn(e: Env, kind: str) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        user("first question"),
        {"role": "assistant", "content": "first answer"},
        user("second question"),
    ]
    sent_prompt = "User: first question\n\nAssistant: first answer\n\nUser: second question"
    expected = REPLY[kind].format(sent_prompt if kind == "replicate" else "second question")
    resp = await e.client.chat.completions.create(model=kind, messages=messages)
    assert resp.choices[0].message.content == expected
    sent = e.last_body(kind)
    if kind == "anthropic":
        assert sent["system"] == "Be brief."
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    elif kind == "gemini":
        assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert [c["role"] for c in sent["contents"]] == ["user", "model", "user"]
    elif kind == "cohere":
        assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    else:  # a transcript; Replicate streams its newlines as multi-line SSE data
        assert sent["input"] == {"prompt": sent_prompt, "system_prompt": "Be brief."}
    chunks = await stream_chunks(e.client, model=kind, messages=messages)
    validate_sse_chunks(chunks)
    assert text_of(chunks) == expected


@pytest.mark.parametrize("kind", KINDS)
async def test_unicode_text(e: Env, kind: str) -> None:
    text = "héllo wörld 日本語 🎉 ok"
    resp = await e.client.chat.completions.create(model=kind, messages=[user(text)])
    assert resp.choices[0].message.content == REPLY[kind].format(text)
    chunks = await stream_chunks(e.client, model=kind, messages=[user(text)])
    validate_sse_chunks(chunks)
    assert text_of(chunks) == REPLY[kind].format(text)


@pytest.mark.parametrize("kind", KINDS)
async def test_developer_messages_anywhere_are_system(e: Env, kind: str) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        user("first question"),
        {"role": "developer", "content": "Be kind."},
        user("second question"),
    ]
    resp = await e.client.chat.completions.create(model=kind, messages=messages)
    content = resp.choices[0].message.content
    sent = e.last_body(kind)
    if kind == "anthropic":  # turns of the same role merged; system hoisted in order
        assert sent["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}]
        assert [m["role"] for m in sent["messages"]] == ["user"]
        assert content == "You said: first question second question"
    elif kind == "gemini":
        assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Be kind."}]}
        assert [c["role"] for c in sent["contents"]] == ["user", "user"]
        assert content == "You said: second question"
    elif kind == "cohere":
        assert [m["role"] for m in sent["messages"]] == ["system", "user", "system", "user"]
        assert content == "Hello! You said: second question"
    else:
        assert sent["input"]["system_prompt"] == "Be brief.\n\nBe kind."
        assert sent["input"]["prompt"] == "User: first question\n\nUser: second question"


async def test_replicate_version_pinned_model(e: Env) -> None:
    resp = await e.client.chat.completions.create(model="replicate-pinned", messages=[user("hello")])
    assert resp.choices[0].message.content == "You said: hello"
    create = [r for r in e.recorded("replicate") if r["path"].endswith("/predictions")][-1]
    assert create["path"] == "/v1/predictions"
    assert create["body"]["version"] == REPLICATE_PINNED.partition(":")[2]


async def test_concurrent_requests_across_protocols(e: Env) -> None:
    async def one(kind: str, i: int, stream: bool) -> None:
        text = f"request number {i}"
        if stream:
            chunks = await stream_chunks(e.client, model=kind, messages=[user(text)])
            validate_sse_chunks(chunks)
            got = text_of(chunks)
        else:
            got = (
                (await e.client.chat.completions.create(model=kind, messages=[user(text)]))
                .choices[0]
                .message.content
            )
        assert got == REPLY[kind].format(text), (kind, i, stream, got)

    await asyncio.gather(*(one(kind, i, i % 2 == 0) for kind in KINDS for i in range(8)))


@pytest.mark.parametrize("kind", KINDS)
async def test_max_tokens_is_length(e: Env, kind: str) -> None:
    full = REPLY[kind].format("hello there friend")
    resp = await e.client.chat.completions.create(
        model=kind, messages=[user("hello there friend")], max_completion_tokens=3
    )
    body = dump(resp)
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"].split() == full.split()[:3]
    assert body["choices"][0]["finish_reason"] == "length"
    chunks = await stream_chunks(e.client, model=kind, messages=[user("hello there friend")], max_tokens=3)
    validate_sse_chunks(chunks)
    assert text_of(chunks).split() == full.split()[:3]
    assert finish_of(chunks) == ["length"]


async def test_sampling_parameters_fit_each_api(e: Env) -> None:
    """OpenAI's ranges are wider than some native ones: clamped or dropped, never sent to fail."""
    kw: dict[str, Any] = {
        "temperature": 1.5,
        "top_p": 1.0,
        "presence_penalty": -1.0,
        "frequency_penalty": 1.5,
        "seed": 7,
    }
    for kind in KINDS:
        resp = await e.client.chat.completions.create(model=kind, messages=[user("hello there friend")], **kw)
        assert resp.choices[0].message.content == REPLY[kind].format("hello there friend"), kind
    a = e.last_body("anthropic")
    assert a["temperature"] == 1.0 and a["top_p"] == 1.0  # Anthropic's range is 0-1
    assert not {"seed", "presence_penalty", "frequency_penalty"} & set(a)
    g = e.last_body("gemini")["generationConfig"]
    assert (g["temperature"], g["topP"], g["seed"]) == (1.5, 1.0, 7)
    assert (g["presencePenalty"], g["frequencyPenalty"]) == (-1.0, 1.5)
    c = e.last_body("cohere")
    assert (c["temperature"], c["p"], c["seed"]) == (1.5, 0.99, 7)  # p: 0.01-0.99
    assert (c["presence_penalty"], c["frequency_penalty"]) == (0.0, 1.0)  # penalties: 0-1
    r = e.last_body("replicate")["input"]
    assert (r["temperature"], r["top_p"]) == (1.5, 1.0) and "seed" not in r


async def test_anthropic_cache_and_thinking_usage(e: Env) -> None:
    resp = await e.client.chat.completions.create(model="anthropic", messages=[user("hello [cache:5:3]")])
    body = dump(resp)
    validate("CreateChatCompletionResponse", body)
    u = body["usage"]
    check_usage(u)
    assert u["prompt_tokens_details"]["cached_tokens"] == 5
    assert u["prompt_tokens"] >= 5 + 3
    chunks = await stream_chunks(e.client, model="anthropic", messages=[user("hello [cache:5:3]")])
    assert chunks[-1]["usage"] == u

    thinking = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    resp = await e.client.chat.completions.create(
        model="anthropic", messages=[user("think about it")], extra_body=thinking
    )
    body = dump(resp)
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"] == "You said: think about it"
    assert json.loads(resp.model_dump_json())["choices"][0]["message"]["reasoning_content"] == (
        "The user wrote 3 words."
    )
    assert e.last_body("anthropic")["thinking"] == thinking["thinking"]
    chunks = await stream_chunks(
        e.client, model="anthropic", messages=[user("think about it")], extra_body=thinking
    )
    validate_sse_chunks(chunks)
    reasoning = "".join(ch["delta"].get("reasoning_content") or "" for c in chunks for ch in c["choices"])
    assert reasoning == "The user wrote 3 words."
    assert text_of(chunks) == "You said: think about it"


async def test_gemini_several_candidates(e: Env) -> None:
    resp = await e.client.chat.completions.create(model="gemini", messages=[user("hello there")], n=2)
    body = dump(resp)
    validate("CreateChatCompletionResponse", body)
    assert [c["message"]["content"] for c in body["choices"]] == [
        "You said: hello there",
        "You said: hello there (candidate 1)",
    ]
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert e.last_body("gemini")["generationConfig"]["candidateCount"] == 2
    chunks = await stream_chunks(e.client, model="gemini", messages=[user("hello there")], n=2)
    validate_sse_chunks(chunks)
    texts = {
        i: "".join(
            ch["delta"].get("content") or "" for c in chunks for ch in c["choices"] if ch["index"] == i
        )
        for i in (0, 1)
    }
    assert texts == {0: "You said: hello there", 1: "You said: hello there (candidate 1)"}
    assert sorted(ch["index"] for c in chunks for ch in c["choices"] if ch.get("finish_reason")) == [0, 1]
    # Anthropic serves one choice: asking for two is the client's 400, not fewer choices.
    _, err = await sdk_error(
        e.client.chat.completions.create(model="anthropic", messages=[user("x")], n=2), 400
    )
    assert err["error"]["param"] == "n"


async def test_replicate_usage_without_metrics_is_estimated(e: Env) -> None:
    resp = await e.client.chat.completions.create(model="replicate", messages=[user("hello [no-metrics]")])
    body = dump(resp)
    validate("CreateChatCompletionResponse", body)
    check_usage(body["usage"])
    # 4 characters per token: "hello [no-metrics]" (18 chars) and "You said: hello [no-metrics]" (28).
    assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (5, 7)


# --------------------------------------------------------------------------- tools


def _assistant_turn(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": message.get("content"),
        "tool_calls": [
            {"id": tc["id"], "type": "function", "function": tc["function"]} for tc in message["tool_calls"]
        ],
    }


def _check_upstream_round_trip(e: Env, kind: str, call_ids: list[str], results: list[str]) -> None:
    """What the native API received with the tool results."""
    body = e.last_body(kind)
    if kind == "anthropic":
        asked, answered = body["messages"][-2], body["messages"][-1]
        uses = [b for b in asked["content"] if b["type"] == "tool_use"]
        assert [b["id"] for b in uses] == call_ids
        assert [b["tool_use_id"] for b in answered["content"]] == call_ids
        assert [b["content"] for b in answered["content"]] == results
    elif kind == "gemini":
        calls, responses = body["contents"][-2], body["contents"][-1]
        assert calls["role"] == "model" and all("functionCall" in p for p in calls["parts"])
        assert [p["functionResponse"]["response"] for p in responses["parts"]] == [
            {"result": r} for r in results
        ]
    else:
        tool = body["messages"][-1]
        assert tool == {"role": "tool", "tool_call_id": call_ids[-1], "content": results[-1]}
        assert body["messages"][-2]["tool_calls"][0]["id"] == call_ids[0]


@pytest.mark.parametrize("kind", WITH_TOOLS)
async def test_tool_round_trip_non_stream(e: Env, kind: str) -> None:
    messages: list[dict[str, Any]] = [user(TOOL_PROMPT[kind])]
    resp = await e.client.chat.completions.create(model=kind, messages=messages, tools=[WEATHER])
    body = dump(resp)
    validate("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    assert len(calls) == 1
    assert calls[0]["type"] == "function" and calls[0]["id"]
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == TOOL_ARGS[kind]
    check_usage(body["usage"])
    if kind == "anthropic":
        assert choice["message"]["content"] == "Let me look that up."

    messages += [
        _assistant_turn(choice["message"]),
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18C and sunny"},
    ]
    resp = await e.client.chat.completions.create(model=kind, messages=messages, tools=[WEATHER])
    body = dump(resp)
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == AFTER_TOOLS[kind](["18C and sunny"])
    assert not body["choices"][0]["message"].get("tool_calls")
    _check_upstream_round_trip(e, kind, [calls[0]["id"]], ["18C and sunny"])


# Streamed: several calls where the emulator makes them in parallel.
PARALLEL_PROMPT = {
    "anthropic": "What is the weather in Paris and in London?",
    "gemini": "Please call get_weather and get_time.",
    "cohere": "What is the weather in Paris?",
}
PARALLEL_CALLS = {
    "anthropic": [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "London"})],
    "gemini": [("get_weather", {"city": "example"}), ("get_time", {"zone": "UTC"})],
    "cohere": [("get_weather", {"city": "emulated"})],
}


@pytest.mark.parametrize("kind", WITH_TOOLS)
async def test_tool_round_trip_streamed(e: Env, kind: str) -> None:
    messages: list[dict[str, Any]] = [user(PARALLEL_PROMPT[kind])]
    chunks = await stream_chunks(e.client, model=kind, messages=messages, tools=[WEATHER, TIME])
    validate_sse_chunks(chunks)
    assert finish_of(chunks) == ["tool_calls"]
    calls = tool_calls_of(chunks)
    assert sorted(calls) == list(range(len(PARALLEL_CALLS[kind])))
    got = [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in sorted(calls)]
    assert got == PARALLEL_CALLS[kind]
    assert len({c["id"] for c in calls.values()}) == len(calls), "tool call ids must be distinct"
    if kind in ("anthropic", "cohere"):  # these stream the arguments in fragments
        assert all(c["fragments"] > 2 for c in calls.values()), calls
    if kind == "anthropic":
        assert text_of(chunks) == "Let me look that up."
    check_usage(chunks[-1]["usage"])

    results = [f"result {i}" for i in range(len(calls))]
    content = text_of(chunks) or None
    assistant = {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {
                "id": calls[i]["id"],
                "type": "function",
                "function": {"name": calls[i]["name"], "arguments": calls[i]["arguments"]},
            }
            for i in sorted(calls)
        ],
    }
    messages.append(assistant)
    messages += [
        {"role": "tool", "tool_call_id": calls[i]["id"], "content": results[i]} for i in sorted(calls)
    ]
    chunks = await stream_chunks(e.client, model=kind, messages=messages, tools=[WEATHER, TIME])
    validate_sse_chunks(chunks)
    assert finish_of(chunks) == ["stop"]
    assert not tool_calls_of(chunks)
    assert text_of(chunks) == AFTER_TOOLS[kind](results)
    _check_upstream_round_trip(e, kind, [calls[i]["id"] for i in sorted(calls)], results)


# tool_choice → (expected calls, or None for a text answer); the prompt names no tool.
TOOL_CHOICE_CALLS: dict[str, dict[str, Any]] = {
    "anthropic": {"named": [("get_time", {"zone": "UTC"})], "required": [("get_weather", {"city": "Paris"})]},
    "gemini": {"named": [("get_time", {"zone": "UTC"})], "required": [("get_weather", {"city": "example"})]},
    "cohere": {
        "named": [("get_time", {"zone": "emulated"})],
        "required": [("get_weather", {"city": "emulated"})],
    },
}


@pytest.mark.parametrize("kind", WITH_TOOLS)
async def test_tool_choice(e: Env, kind: str) -> None:
    msgs = [user("tell me something")]
    choices = {
        "named": {"type": "function", "function": {"name": "get_time"}},
        "required": "required",
    }
    for label, choice in choices.items():
        resp = await e.client.chat.completions.create(
            model=kind, messages=msgs, tools=[WEATHER, TIME], tool_choice=choice
        )
        body = dump(resp)
        validate("CreateChatCompletionResponse", body)
        calls = body["choices"][0]["message"].get("tool_calls") or []
        got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]
        assert got == TOOL_CHOICE_CALLS[kind][label], (label, body)
        assert body["choices"][0]["finish_reason"] in ("tool_calls", "stop"), body
    if kind != "cohere":  # Cohere always calls when given tools (unless NONE): checked below
        resp = await e.client.chat.completions.create(
            model=kind,
            messages=[user("what is the weather in Paris? call get_weather")],
            tools=[WEATHER],
            tool_choice="none",
        )
        assert not resp.choices[0].message.tool_calls
        assert resp.choices[0].finish_reason == "stop"
    else:
        resp = await e.client.chat.completions.create(
            model=kind, messages=msgs, tools=[WEATHER], tool_choice="none"
        )
        assert not resp.choices[0].message.tool_calls
        assert resp.choices[0].message.content == "Hello! You said: tell me something"


async def test_parallel_tool_calls_false(e: Env) -> None:
    prompt = "What is the weather in Paris and in London?"
    resp = await e.client.chat.completions.create(
        model="anthropic", messages=[user(prompt)], tools=[WEATHER], parallel_tool_calls=False
    )
    calls = resp.choices[0].message.tool_calls or []
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}]
    assert e.last_body("anthropic")["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    resp = await e.client.chat.completions.create(
        model="cohere", messages=[user(prompt)], tools=[WEATHER], parallel_tool_calls=False
    )
    assert len(resp.choices[0].message.tool_calls or []) == 1
    assert "parallel_tool_calls" not in e.last_body("cohere")  # not a Cohere field: dropped


async def test_gemini_json_tool_result_is_the_response_object(e: Env) -> None:
    messages: list[dict[str, Any]] = [user("Please call get_weather for Paris.")]
    resp = await e.client.chat.completions.create(model="gemini", messages=messages, tools=[WEATHER])
    call = dump(resp.choices[0].message.tool_calls[0])
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temp": 18, "sky": "clear"}'},
    ]
    resp = await e.client.chat.completions.create(model="gemini", messages=messages, tools=[WEATHER])
    assert resp.choices[0].message.content == 'Results: get_weather={"sky": "clear", "temp": 18}'


async def test_gemini_3_signed_tool_calls_round_trip(e: Env) -> None:
    """Gemini 3 rejects a history whose function calls lost their thoughtSignature."""
    for stream in (False, True):
        messages: list[dict[str, Any]] = [user("Please call get_weather and get_time.")]
        if stream:
            chunks = await stream_chunks(e.client, model="gemini-3", messages=messages, tools=[WEATHER, TIME])
            validate_sse_chunks(chunks)
            merged = tool_calls_of(chunks)
            calls = [
                {"id": merged[i]["id"], "type": "function",
                 "function": {"name": merged[i]["name"], "arguments": merged[i]["arguments"]}}
                for i in sorted(merged)
            ]  # fmt: skip
        else:
            resp = await e.client.chat.completions.create(
                model="gemini-3", messages=messages, tools=[WEATHER, TIME]
            )
            validate("CreateChatCompletionResponse", dump(resp))
            calls = [dump(c) for c in resp.choices[0].message.tool_calls or ()]
        assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
        messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        messages += [
            {"role": "tool", "tool_call_id": c["id"], "content": f"r{i}"} for i, c in enumerate(calls)
        ]
        resp = await e.client.chat.completions.create(
            model="gemini-3", messages=messages, tools=[WEATHER, TIME]
        )
        assert (
            resp.choices[0].message.content
            == 'Results: get_weather={"result": "r0"}; get_time={"result": "r1"}'
        )
        parts = e.last_body("gemini")["contents"][1]["parts"]
        assert parts[0]["thoughtSignature"], parts
        assert all("__ts_" not in p["functionCall"].get("id", "") for p in parts), parts


async def test_replicate_rejects_tools_with_400(e: Env) -> None:
    for stream in (False, True):
        _, body = await sdk_error(
            e.client.chat.completions.create(
                model="replicate",
                messages=[user("What is the weather in Paris?")],
                tools=[WEATHER],
                stream=stream,
            ),
            400,
        )
        err = check_error(body, type="invalid_request_error")
        assert err["param"] == "tools" and "tools" in err["message"], err
    assert e.recorded("replicate") == []  # never sent to fail upstream


# --------------------------------------------------------------------------- images, JSON, stop


def _image_message(text: str, data_b64: str = PNG_B64, mime: str = "image/png") -> dict[str, Any]:
    return user(
        [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data_b64}"}},
            {"type": "image_url", "image_url": {"url": IMAGE_URL}},
        ]
    )


@pytest.mark.parametrize("kind", ["anthropic", "gemini", "cohere"])
async def test_images(e: Env, kind: str) -> None:
    resp = await e.client.chat.completions.create(model=kind, messages=[_image_message("describe these")])
    body = dump(resp)
    validate("CreateChatCompletionResponse", body)
    content = body["choices"][0]["message"]["content"]
    sent = e.last_body(kind)
    if kind == "anthropic":
        assert content == "You said: describe these [2 image(s)]"
        blocks = sent["messages"][0]["content"]
        assert blocks[1] == {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
        }
        assert blocks[2] == {"type": "image", "source": {"type": "url", "url": IMAGE_URL}}
    elif kind == "gemini":
        assert content == "You said: describe these [images: image/png, image/png]"
        parts = sent["contents"][0]["parts"]
        assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": PNG_B64}}
        assert parts[2] == {"fileData": {"mimeType": "image/png", "fileUri": IMAGE_URL}}
    else:
        assert content.rstrip() == "Hello! You said: describe these"
        parts = sent["messages"][0]["content"]
        assert parts[1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}
        assert parts[2] == {"type": "image_url", "image_url": {"url": IMAGE_URL}}
    check_usage(body["usage"])


async def test_replicate_rejects_images_with_400(e: Env) -> None:
    _, body = await sdk_error(
        e.client.chat.completions.create(model="replicate", messages=[_image_message("describe these")]), 400
    )
    err = check_error(body, type="invalid_request_error")
    assert err["param"] == "messages" and "image" in err["message"], err
    assert e.recorded("replicate") == []


SCHEMA = {
    "name": "person",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
}


@pytest.mark.parametrize("kind", ["anthropic", "gemini", "cohere"])
async def test_json_mode(e: Env, kind: str) -> None:
    messages = [user("give me json about Ada")]
    resp = await e.client.chat.completions.create(
        model=kind, messages=messages, response_format={"type": "json_object"}
    )
    body = dump(resp)
    validate("CreateChatCompletionResponse", body)
    parsed = json.loads(body["choices"][0]["message"]["content"])
    assert isinstance(parsed, dict) and parsed, parsed
    sent = e.last_body(kind)
    if kind == "anthropic":  # no native json_object: an instruction in the system prompt
        assert "JSON" in sent["system"]
        assert parsed == {"echo": "give me json about Ada"}
    elif kind == "gemini":
        assert sent["generationConfig"]["responseMimeType"] == "application/json"
    else:
        assert sent["response_format"] == {"type": "json_object"}

    resp = await e.client.chat.completions.create(
        model=kind, messages=messages, response_format={"type": "json_schema", "json_schema": SCHEMA}
    )
    body = dump(resp)
    validate("CreateChatCompletionResponse", body)
    parsed = json.loads(body["choices"][0]["message"]["content"])
    assert isinstance(parsed, dict), parsed
    sent = e.last_body(kind)
    if kind == "anthropic":
        assert sent["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA["schema"]}}
        assert set(parsed) == {"name", "age"} and isinstance(parsed["age"], int)
    elif kind == "gemini":
        assert sent["generationConfig"]["responseJsonSchema"] == SCHEMA["schema"]
        assert parsed == {"name": "example", "age": 1}
    else:
        assert sent["response_format"] == {"type": "json_object", "json_schema": SCHEMA["schema"]}

    # Streamed JSON mode: the pieces concatenate to the same JSON.
    chunks = await stream_chunks(
        e.client, model=kind, messages=messages, response_format={"type": "json_object"}
    )
    validate_sse_chunks(chunks)
    assert isinstance(json.loads(text_of(chunks)), dict)


async def test_replicate_drops_json_mode(e: Env) -> None:
    """Replicate has no JSON mode (profile json_mode=False): dropped under the default drop_params."""
    resp = await e.client.chat.completions.create(
        model="replicate", messages=[user("give me json")], response_format={"type": "json_object"}
    )
    assert resp.choices[0].message.content == "You said: give me json"
    assert "response_format" not in json.dumps(e.last_body("replicate"))


@pytest.mark.parametrize("kind", KINDS)
async def test_stop_sequences(e: Env, kind: str) -> None:
    text = "alpha beta gamma delta"
    full = REPLY[kind].format(text)
    cut = full[: full.index("gamma")]
    resp = await e.client.chat.completions.create(model=kind, messages=[user(text)], stop=["gamma", "zeta"])
    body = dump(resp)
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"] == cut
    assert body["choices"][0]["finish_reason"] == "stop"
    check_usage(body["usage"])
    sent = e.last_body(kind)
    if kind == "anthropic":
        assert sent["stop_sequences"] == ["gamma", "zeta"]
    elif kind == "gemini":
        assert sent["generationConfig"]["stopSequences"] == ["gamma", "zeta"]
    elif kind == "cohere":
        assert sent["stop_sequences"] == ["gamma", "zeta"]
    else:
        assert sent["input"]["stop_sequences"] == "gamma,zeta"

    chunks = await stream_chunks(e.client, model=kind, messages=[user(text)], stop="gamma")
    validate_sse_chunks(chunks)
    assert text_of(chunks) == cut
    assert finish_of(chunks) == ["stop"]


# --------------------------------------------------------------------------- upstream errors


# Something each emulator rejects with a 400 but the gateway accepts, and the upstream's message.
def _bad_request(kind: str) -> tuple[dict[str, Any], str]:
    if kind == "anthropic":  # JPEG bytes declared as PNG
        wrong = _image_message("look", JPEG_B64)
        return {"messages": [wrong]}, "does not match the provided media type image/png"
    if kind == "cohere":  # an extension field passed through with a value Cohere rejects
        return {"messages": [user("hi")], "extra_body": {"safety_mode": "BOGUS"}}, "invalid safety_mode"
    if kind == "gemini":
        return {"messages": [user("hi [fail:400]")]}, "Request contains an invalid argument."
    return {"messages": [user("hi [fail:400]")]}, "emulated failure 400"


@pytest.mark.parametrize("kind", KINDS)
async def test_upstream_400_reaches_the_client(e: Env, kind: str) -> None:
    kw, message = _bad_request(kind)
    for stream in (False, True):
        err, body = await sdk_error(
            e.client.chat.completions.create(model=f"{kind}-failover", stream=stream, **kw), 400
        )
        assert isinstance(err, openai.BadRequestError)
        check_error(body, type="invalid_request_error")
        assert message in body["error"]["message"], body
        # The client's mistake is not retried on the next candidate.
        assert err.response.headers["x-switchman-attempts"] == "1"
        assert err.response.headers["x-switchman-provider"] == kind
    assert e.fallback.request_count == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_upstream_429_with_retry_after(e: Env, kind: str) -> None:
    for stream in (False, True):
        err, body = await sdk_error(
            e.client.chat.completions.create(model=kind, messages=[user("hi [fail:429]")], stream=stream), 429
        )
        assert isinstance(err, openai.RateLimitError)
        check_error(body, type="rate_limit_error", code="rate_limit_exceeded")
        assert err.response.headers["retry-after"] == RETRY_AFTER[kind]
        assert err.response.headers["x-switchman-provider"] == kind


@pytest.mark.parametrize("kind", KINDS)
async def test_upstream_500_is_502(e: Env, kind: str) -> None:
    for stream in (False, True):
        err, body = await sdk_error(
            e.client.chat.completions.create(model=kind, messages=[user("hi [fail:500]")], stream=stream), 502
        )
        assert isinstance(err, openai.InternalServerError)
        check_error(body, type="api_error")
        assert f"'{kind}'" in body["error"]["message"], body
        assert err.response.headers["x-switchman-attempts"] == "1"


@pytest.mark.parametrize("kind", KINDS)
async def test_failover_to_the_next_provider(e: Env, kind: str) -> None:
    before = e.fallback.request_count
    raw = await e.client.chat.completions.with_raw_response.create(
        model=f"{kind}-failover", messages=[user("hello [fail:500]")]
    )
    body = json.loads(raw.content)
    validate("CreateChatCompletionResponse", body)
    assert body["choices"][0]["message"]["content"] == "You said: hello [fail:500]"
    assert raw.headers["x-switchman-attempts"] == "2"
    assert raw.headers["x-switchman-provider"] == "fallback"
    assert len(e.recorded(kind)) >= 1  # the native provider was tried first

    chunks = await stream_chunks(e.client, model=f"{kind}-failover", messages=[user("again [fail:500]")])
    validate_sse_chunks(chunks)
    assert text_of(chunks) == "You said: again [fail:500]"
    assert e.fallback.request_count == before + 2


@pytest.mark.parametrize("kind", KINDS)
async def test_upstream_401_is_502_naming_the_provider(e: Env, kind: str) -> None:
    for stream in (False, True):
        err, body = await sdk_error(
            e.client.chat.completions.create(model=f"{kind}-badkey", messages=[user("hi")], stream=stream),
            502,
        )
        check_error(body, type="api_error", code="upstream_authentication_error")
        assert f"'{kind}-badkey'" in body["error"]["message"], body
        assert "definitely-wrong" not in body["error"]["message"]
        assert err.response.headers["x-switchman-provider"] == f"{kind}-badkey"


# A non-stream request whose upstream breaks (cut body, error finish): (kind, magic, status).
NON_STREAM_FAILURES = [
    ("anthropic", "[fail:cut]", 502),
    ("anthropic", "[fail:error_event]", 503),  # non-stream: a 529
    ("gemini", "[cut]", 502),
    ("gemini", "[fail-mid:500]", 502),
    ("gemini", "[malformed]", 502),
    ("cohere", "[cut]", 502),
    ("cohere", "[error-event]", 502),
    ("replicate", "[cut]", 502),
    ("replicate", "[error-event]", 502),
    ("replicate", "[stream-fail:500]", 502),
]


@pytest.mark.parametrize(("kind", "magic", "status"), NON_STREAM_FAILURES)
async def test_non_stream_upstream_breakage(e: Env, kind: str, magic: str, status: int) -> None:
    err, body = await sdk_error(
        e.client.chat.completions.create(model=kind, messages=[user(f"hello {magic}")]), status
    )
    check_error(body)
    assert err.response.headers["x-switchman-provider"] == kind
    # Nothing reached the client yet: the next candidate serves it.
    before = e.fallback.request_count
    raw = await e.client.chat.completions.with_raw_response.create(
        model=f"{kind}-failover", messages=[user(f"hello {magic}")]
    )
    assert raw.headers["x-switchman-provider"] == "fallback"
    assert raw.headers["x-switchman-attempts"] == "2"
    assert json.loads(raw.content)["choices"][0]["message"]["content"] == f"You said: hello {magic}"
    assert e.fallback.request_count == before + 1


@pytest.mark.parametrize("stream", [False, True])
async def test_content_filter_finish_reasons(e: Env, stream: bool) -> None:
    for kind, magic in (("anthropic", "[stop:refusal]"), ("gemini", "[unsafe]")):
        msgs = [user(f"hello {magic}")]
        if stream:
            chunks = await stream_chunks(e.client, model=kind, messages=msgs)
            validate_sse_chunks(chunks)
            assert finish_of(chunks) == ["content_filter"], (kind, chunks)
        else:
            resp = await e.client.chat.completions.create(model=kind, messages=msgs)
            validate("CreateChatCompletionResponse", dump(resp))
            assert resp.choices[0].finish_reason == "content_filter", (kind, resp)
    # A prompt Gemini blocks outright: the client's 400, not the gateway's failure.
    _, body = await sdk_error(
        e.client.chat.completions.create(model="gemini", messages=[user("hello [block]")], stream=stream), 400
    )
    check_error(body, type="invalid_request_error", code="content_filter")
    assert "SAFETY" in body["error"]["message"]


# --------------------------------------------------------------------------- broken streams


async def _sdk_stream_fails(e: Env, kind: str, content: str) -> list[dict[str, Any]]:
    """Iterate a stream that must fail mid-way: the chunks received before the APIError."""
    stream = await e.client.chat.completions.create(
        model=kind, messages=[user(content)], stream=True, stream_options={"include_usage": True}
    )
    got: list[dict[str, Any]] = []
    with pytest.raises(openai.APIError) as exc:
        async for c in stream:
            got.append(dump(c))
    assert not isinstance(exc.value, openai.APIStatusError)  # a 200 stream that then failed
    assert exc.value.message, exc.value
    assert got, "the failure should come after some chunks"
    assert text_of(got).startswith(REPLY[kind].format("")[:3]), got
    assert not finish_of(got), f"a broken stream must not finish cleanly: {got}"
    return got


async def _raw_stream_fails(e: Env, model: str, content: str, provider: str | None) -> dict[str, Any]:
    """A raw stream that fails mid-way: chunks, then ``data: {"error": ...}``, and no ``[DONE]``."""
    status, data = await raw_sse(e.gw, model, content)
    assert status == 200
    assert "[DONE]" not in data, data
    assert len(data) >= 2, data
    events = [json.loads(d) for d in data]
    *chunks, last = events
    assert "error" in last, data
    err = check_error(last)
    if provider is not None:
        assert f"'{provider}'" in err["message"], err
    assert not any("error" in c for c in chunks)
    validate_sse_chunks(chunks)
    assert not finish_of(chunks)
    return err


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_cut_midway_ends_with_an_error_event(e: Env, kind: str) -> None:
    await _sdk_stream_fails(e, kind, f"hello there friend {CUT[kind]}")
    if kind == "replicate":  # the billed prediction is cancelled
        assert any(r["path"].endswith("/cancel") for r in e.recorded(kind))
    before = e.fallback.request_count
    # Through a route with a second candidate: after the first byte there is no failover.
    err = await _raw_stream_fails(e, f"{kind}-failover", f"hello there friend {CUT[kind]}", kind)
    assert err["type"] == "api_error"
    assert e.fallback.request_count == before


@pytest.mark.parametrize("kind", KINDS)
async def test_in_stream_error_event_ends_with_an_error_event(e: Env, kind: str) -> None:
    await _sdk_stream_fails(e, kind, f"hello there friend {ERROR_EVENT[kind]}")
    if kind == "anthropic":  # an overloaded_error event: Anthropic's own message, mapped like a 529
        err = await _raw_stream_fails(e, kind, f"hello there friend {ERROR_EVENT[kind]}", None)
        assert (err["type"], err["code"], err["message"]) == (
            "service_unavailable_error",
            "server_is_overloaded",
            "Overloaded",
        )
    else:
        err = await _raw_stream_fails(e, kind, f"hello there friend {ERROR_EVENT[kind]}", kind)
        assert err["type"] == "api_error"


@pytest.mark.parametrize("kind", ["anthropic", "gemini"])
async def test_tool_call_stream_cut_midway(e: Env, kind: str) -> None:
    """A stream cut while it carries a tool call never finishes with tool_calls."""
    stream = await e.client.chat.completions.create(
        model=kind,
        messages=[user(f"Please call get_weather for Paris. {CUT[kind]}")],
        tools=[WEATHER],
        tool_choice="required",
        stream=True,
    )
    got: list[dict[str, Any]] = []
    with pytest.raises(openai.APIError) as exc:
        async for c in stream:
            got.append(dump(c))
    assert not isinstance(exc.value, openai.APIStatusError)
    assert got and not finish_of(got), got
    assert tool_calls_of(got), got  # the call had started


OVERLOADED = {
    "anthropic": "[fail:529]",
    "gemini": "[fail:503]",
    "cohere": "[fail:503]",
    "replicate": "[fail:503]",
}


@pytest.mark.parametrize(
    "kind",
    [
        "anthropic",
        "gemini",
        "cohere",
        "replicate",
    ],
)
async def test_upstream_overloaded_is_503(e: Env, kind: str) -> None:
    for stream in (False, True):
        err, body = await sdk_error(
            e.client.chat.completions.create(
                model=kind, messages=[user(f"hi {OVERLOADED[kind]}")], stream=stream
            ),
            503,
        )
        check_error(body, type="service_unavailable_error", code="server_is_overloaded")
        assert err.response.headers["retry-after"], err.response.headers
    # Retryable: the next candidate serves it.
    raw = await e.client.chat.completions.with_raw_response.create(
        model=f"{kind}-failover", messages=[user(f"hi {OVERLOADED[kind]}")]
    )
    assert raw.headers["x-switchman-provider"] == "fallback"
