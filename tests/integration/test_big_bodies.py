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

from tests import natsutil
from tests.emulators.openai_upstream import UpstreamState, running
from tests.gateway import config, in_process, openai_provider

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
