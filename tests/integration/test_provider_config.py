"""Provider settings as an operator writes them, end to end through the gateway.

Five services in-process on a real nats-server; the strict emulators as upstreams:

* a Gemini ``base_url`` with or without its version segment;
* an ``api_key`` on a keyless preset (vLLM, llama.cpp, ...) is sent as a bearer token,
  and nothing is sent without one;
* ``n`` choices: every one streamed and billed, a ``max_n`` override honoured, and never
  fewer choices than asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
import pytest_asyncio
from aiohttp import web

from tests.emulators import anthropic as anthropic_emu
from tests.emulators import gemini as gemini_emu
from tests.emulators.openai_upstream import UpstreamState
from tests.emulators.openai_upstream import running as openai_running
from tests.gateway import Gateway, config, in_process

GEMINI_MODEL = "gemini-2.0-flash"
CHAT_MODEL = "gpt-4o-mini"
USER = [{"role": "user", "content": "hello there"}]


@dataclass
class Env:
    gw: Gateway
    client: openai.AsyncOpenAI
    gemini: web.Application
    keyed: UpstreamState
    open: UpstreamState


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(nats_server) -> AsyncIterator[Env]:
    gemini = gemini_emu.make_app()
    keyed = UpstreamState(api_key="local-secret")  # a vLLM started with --api-key
    unkeyed = UpstreamState()
    async with contextlib.AsyncExitStack() as stack:
        runner, root = await anthropic_emu.serve(gemini)
        stack.push_async_callback(runner.cleanup)
        keyed_base = await stack.enter_async_context(openai_running(keyed))
        open_base = await stack.enter_async_context(openai_running(unkeyed))
        gem = {"kind": "gemini", "api_key": gemini_emu.API_KEY, "models": [GEMINI_MODEL]}
        local = {"kind": "openai", "preset": "vllm", "models": [CHAT_MODEL]}
        providers: list[dict[str, Any]] = [
            {"id": "gem-bare", "base_url": root, **gem},
            {"id": "gem-slash", "base_url": root + "/", **gem},
            {"id": "gem-versioned", "base_url": root + "/v1beta", **gem},
            {"id": "vllm-keyed", "base_url": keyed_base, "api_key": "local-secret", **local},
            {"id": "vllm-open", "base_url": open_base, **local},
            {
                "id": "ollama",
                "kind": "openai",
                "preset": "ollama",
                "base_url": open_base,
                "models": [CHAT_MODEL],
            },
            {
                "id": "ollama-n4",
                "kind": "openai",
                "preset": "ollama",
                "base_url": open_base,
                "models": [CHAT_MODEL],
                "capabilities": {"max_n": 4},
            },
            {"id": "sim-n", "kind": "sim", "models": ["sim-n"], "sim": {"max_tokens": 5}},
        ]
        models = [
            {"name": p["id"], "targets": [{"provider": p["id"], "model": p["models"][0]}]} for p in providers
        ]
        cfg = config(providers=providers, models=models)
        gw = await stack.enter_async_context(in_process(cfg, nats_server.url))
        client = gw.openai()
        stack.push_async_callback(client.close)
        yield Env(gw, client, gemini, keyed, unkeyed)


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.parametrize("provider", ["gem-bare", "gem-slash", "gem-versioned"])
async def test_gemini_base_url_with_or_without_version(env: Env, provider: str) -> None:
    resp = await env.client.chat.completions.create(model=provider, messages=USER)
    assert resp.choices[0].message.content == "You said: hello there"
    stream = await env.client.chat.completions.create(model=provider, messages=USER, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "You said: hello there"


async def test_key_on_a_keyless_preset_reaches_the_server(env: Env) -> None:
    resp = await env.client.chat.completions.create(model="vllm-keyed", messages=USER)
    assert resp.choices[0].message.content == "You said: hello there"
    headers = {k.lower(): v for k, v in (env.keyed.last_request_headers or {}).items()}
    assert headers["authorization"] == "Bearer local-secret"


async def test_keyless_preset_without_key_sends_no_authorization(env: Env) -> None:
    resp = await env.client.chat.completions.create(model="vllm-open", messages=USER)
    assert resp.choices[0].message.content == "You said: hello there"
    headers = {k.lower() for k in env.open.last_request_headers or {}}
    assert "authorization" not in headers


async def test_sim_streams_every_choice_and_bills_them_all(env: Env) -> None:
    one = await env.client.chat.completions.create(model="sim-n", messages=USER)
    stream = await env.client.chat.completions.create(
        model="sim-n", messages=USER, n=3, stream=True, stream_options={"include_usage": True}
    )
    texts: dict[int, str] = {}
    finishes: dict[int, list[str]] = {}
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finishes.setdefault(c.index, []).append(c.finish_reason)
    assert sorted(texts) == [0, 1, 2]
    assert all(t == one.choices[0].message.content for t in texts.values())
    assert finishes == {0: ["stop"], 1: ["stop"], 2: ["stop"]}
    assert usage is not None and one.usage is not None
    assert usage.completion_tokens == 3 * one.usage.completion_tokens


async def test_max_n_override_gives_every_choice(env: Env) -> None:
    resp = await env.client.chat.completions.create(model="ollama-n4", messages=USER, n=3)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert (env.open.last_request_body or {})["n"] == 3


async def test_one_choice_provider_never_answers_n_with_one(env: Env) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        await env.client.chat.completions.create(model="ollama", messages=USER, n=2)
    assert e.value.status_code == 400
    assert (e.value.body or {}).get("param") == "n"
