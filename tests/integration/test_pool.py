"""A provider's connection pool: a burst beyond it waits briefly, then fails over or gets 503.

Never a silent queue behind the pool: past ``pool_wait_s`` the request moves to the
next candidate, or the client gets 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from tests.gateway import config, in_process, openai_provider, serving

ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi"},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def slow_upstream(delay: float) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.json_response(ANSWER)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def burst(base_url: str, n: int) -> list[tuple[int, dict[str, str], dict]]:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}

    async def one(s: aiohttp.ClientSession) -> tuple[int, dict[str, str], dict]:
        async with s.post(f"{base_url}/chat/completions", json=body) as r:
            return r.status, dict(r.headers), json.loads(await r.read())

    async with aiohttp.ClientSession() as s:
        return await asyncio.gather(*(one(s) for _ in range(n)))


async def test_beyond_the_pool_a_request_gets_503_with_retry_after(nats_server):
    async with serving(slow_upstream(1.0)) as base:
        prov = openai_provider("a", base, ["m"], max_connections=2, pool_wait_s=0.2)
        async with in_process(config(providers=[prov]), nats_server.url) as gw:
            results = await burst(gw.base_url, 5)
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 200, 503, 503, 503], statuses
    for status, headers, body in results:
        if status == 503:
            assert headers["Retry-After"] == "1"
            assert body["error"]["code"] == "server_is_overloaded"
            assert "connections" in body["error"]["message"]


async def test_beyond_the_pool_a_request_moves_to_the_next_candidate(nats_server):
    async with serving(slow_upstream(0.5)) as base_a, serving(slow_upstream(0.0)) as base_b:
        providers = [
            openai_provider("a", base_a, ["m"], max_connections=2, pool_wait_s=0.1),
            openai_provider("b", base_b, ["m"]),
        ]
        route = {"name": "m", "targets": [{"provider": "a", "model": "m"}, {"provider": "b", "model": "m"}]}
        async with in_process(config(providers=providers, models=[route]), nats_server.url) as gw:
            results = await burst(gw.base_url, 6)
    assert [s for s, _, _ in results] == [200] * 6
    served = sorted(h["x-switchman-provider"] for _, h, _ in results)
    assert served == ["a", "a", "b", "b", "b", "b"], served
