"""Bodies of several megabytes cross the bus; beyond what it carries, 413 naming the limit.

The test nats-server runs with the 8 MB max_payload of the embedded and compose
servers (tests/natsutil.py); a server with a small max_payload caps the ingress's body
limit instead of failing with 500.
"""

from __future__ import annotations

import base64
import json

import aiohttp
import pytest
from aiohttp import web

from tests import natsutil
from tests.emulators.openai_upstream import UpstreamState, running
from tests.gateway import config, in_process, openai_provider, serving

MB = 1024 * 1024


def long_prompt(size: int) -> dict:
    words = ("the quick brown fox jumps over a lazy dog " * (size // 43 + 1))[:size]
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": words}], "max_tokens": 5}


def image_request(size: int) -> dict:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * (size * 3 // 4)).decode()
    parts = [
        {"type": "text", "text": "what is in this image?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
    ]
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": parts}], "max_tokens": 5}


async def post(base_url: str, body: dict) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{base_url}/chat/completions", data=json.dumps(body).encode()) as r,
    ):
        return r.status, await r.read()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "body",
    [long_prompt(int(1.5 * MB)), long_prompt(6 * MB), image_request(4 * MB)],
    ids=["1.5MB", "6MB", "image"],
)
async def test_a_request_of_several_megabytes_is_served(nats_server, body, stream):
    state = UpstreamState(api_key="sk-test")
    async with running(state) as upstream:
        cfg = config(providers=[openai_provider("emu", upstream, ["gpt-4o-mini"])])
        async with in_process(cfg, nats_server.url) as gw:
            status, reply = await post(gw.base_url, {**body, "stream": stream})
    assert status == 200, reply[:300]
    assert reply.rstrip().endswith(b"data: [DONE]") if stream else json.loads(reply)["choices"]
    # The upstream got the client's body whole.
    assert state.last_request_body["messages"] == body["messages"]


async def test_a_small_bus_caps_the_body_limit_with_413_never_500(tmp_path):
    small = natsutil.start_nats_server(tmp_path / "nats", max_payload=512 * 1024)
    try:
        state = UpstreamState(api_key="sk-test")
        async with running(state) as upstream:
            cfg = config(providers=[openai_provider("emu", upstream, ["gpt-4o-mini"])])
            async with in_process(cfg, small.url) as gw:
                limit = gw.services["ingress"].body_limit
                assert limit == 512 * 1024 - 64 * 1024
                status, reply = await post(gw.base_url, long_prompt(400 * 1024))
                assert status == 200, reply[:300]
                status, reply = await post(gw.base_url, long_prompt(600 * 1024))
                assert status == 413, reply[:300]
                err = json.loads(reply)["error"]
                assert str(limit) in err["message"] and err["type"] == "invalid_request_error"
    finally:
        natsutil.shutdown(small)


def big_answer_upstream(size: int) -> web.Application:
    """A provider answering ``size`` bytes of text: in one body, or in one SSE chunk."""
    text = ("0123456789abcdef" * (size // 16 + 1))[:size]

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
            return web.json_response(
                {"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [choice]}
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for delta, finish in (({"role": "assistant", "content": text}, None), ({}, "stop")):
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
            chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.mark.parametrize("stream", [False, True])
async def test_answers_larger_than_one_bus_message_arrive_whole(tmp_path, stream):
    small = natsutil.start_nats_server(tmp_path / "nats", max_payload=256 * 1024)
    size = 2 * MB
    try:
        async with serving(big_answer_upstream(size)) as base:
            cfg = config(providers=[openai_provider("big", base, ["m"])])
            async with in_process(cfg, small.url) as gw:
                body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": stream}
                status, reply = await post(gw.base_url, body)
    finally:
        natsutil.shutdown(small)
    assert status == 200, reply[:300]
    if stream:
        events = [e[6:] for e in reply.decode().split("\n\n") if e.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    else:
        text = json.loads(reply)["choices"][0]["message"]["content"]
    assert len(text) == size and text.startswith("0123456789abcdef")


async def test_an_embeddings_batch_of_2048_inputs(nats_server):
    state = UpstreamState(api_key="sk-test")
    inputs = [f"document number {i}" for i in range(2048)]
    async with running(state) as upstream:
        # The emulator computes the 6.3 million floats in this test's event loop, stalling
        # the in-process gateway for seconds: a generous idle timeout for that.
        limits = {"idle_timeout_s": 60.0}
        cfg = config(providers=[openai_provider("emu", upstream, ["text-embedding-3-large"])], limits=limits)
        async with in_process(cfg, nats_server.url) as gw:
            client = gw.openai(timeout=120)
            resp = await client.embeddings.create(model="text-embedding-3-large", input=inputs)
    assert [d.index for d in resp.data] == list(range(2048))
    assert {len(d.embedding) for d in resp.data} == {3072}  # tens of MB of JSON, many bus messages
    assert resp.usage.prompt_tokens > 2048
