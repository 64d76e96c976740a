"""The request path end to end on a real nats-server, services in-process, official openai SDK."""

from __future__ import annotations

import openai
import pytest

from tests.gateway import config, in_process, openai_provider
from tests.schema import validate, validate_sse_chunks


async def test_chat_stream_and_failover(nats_server, upstream):
    state, base = upstream
    cfg = config(
        providers=[openai_provider("a", base, ["gpt-4o-mini"]), openai_provider("b", base, ["gpt-4o-mini"])],
        models=[
            {
                "name": "m",
                "targets": [
                    {"provider": "a", "model": "gpt-4o-mini"},
                    {"provider": "b", "model": "gpt-4o-mini"},
                ],
            }
        ],
    )
    async with in_process(cfg, nats_server.url) as gw:
        client = gw.openai()
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hello there"}]
        )
        body = raw.parse()
        validate("CreateChatCompletionResponse", body.model_dump(exclude_unset=True))
        assert body.choices[0].message.content == "You said: hello there"
        assert raw.headers["x-switchman-provider"] == "a"

        chunks = []
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for c in stream:
            chunks.append(c.model_dump(exclude_unset=True))
        validate_sse_chunks(chunks)
        assert chunks[-1]["usage"]["total_tokens"] > 0

        state.fail_next = [500]
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "again"}]
        )
        assert raw.headers["x-switchman-provider"] == "b"
        assert raw.headers["x-switchman-attempts"] == "2"

        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
