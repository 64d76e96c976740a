"""An upstream that breaks the SSE protocol never gets a clean finish past the gateway.

Each case streams a good first chunk, then misbehaves; the client must see the good
chunk and then an error event naming the protocol failure, and never ``data: [DONE]``.
"""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web

from tests.gateway import config, in_process, openai_provider, serving

FIRST = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}],
}


def upstream(tail: bytes, repeat: int = 1) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: " + json.dumps(FIRST).encode() + b"\n\n")
        for _ in range(repeat):
            await resp.write(tail)
        await resp.write(b"\n\ndata: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def stream_through(app: web.Application, nats_url: str, limits: dict | None = None) -> list[str]:
    async with serving(app) as base:
        cfg = config(providers=[openai_provider("hostile", base, ["m"])], limits=limits or {})
        async with in_process(cfg, nats_url) as gw:
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
            async with (
                aiohttp.ClientSession() as s,
                s.post(f"{gw.base_url}/chat/completions", json=body) as r,
            ):
                assert r.status == 200
                text = (await r.read()).decode()
    return [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]


def assert_failed(events: list[str], code: str) -> None:
    assert "[DONE]" not in events, events[-3:]
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "ok"
    err = json.loads(events[-1])["error"]
    assert err["code"] == code, err


async def test_an_unending_event_ends_with_an_error(nats_server):
    # 40 MB of one data line, past the 32 MB bound, in 1 MB writes.
    events = await stream_through(upstream(b"data: " + b"x" * (1 << 20), repeat=40), nats_server.url)
    assert_failed(events, "upstream_protocol_error")


@pytest.mark.parametrize("line", [b"data: garbage", b"data: [1, 2]", b'data: "text"', b"data: {not json"])
async def test_a_data_line_that_is_not_a_json_object_is_never_forwarded(nats_server, line):
    events = await stream_through(upstream(line), nats_server.url)
    assert all(line[6:].decode() != e for e in events)
    assert_failed(events, "upstream_protocol_error")
