"""The ingress's access log: one `request` line per request, once its response has finished."""

from __future__ import annotations

import logging

import aiohttp
import openai
import pytest
import structlog
from structlog.testing import capture_logs

from services.ingress import access
from tests.gateway import config, in_process, openai_provider

SECRET = "the secret prompt text"


@pytest.fixture
async def gw(nats_server, upstream):
    _, base = upstream
    cfg = config(
        providers=[openai_provider("emu", base, ["gpt-4o-mini", "text-embedding-3-small"])],
        keys=[{"key": "sk-gw", "name": "team-a"}],
    )
    async with in_process(cfg, nats_server.url) as gw:
        yield gw


def requests(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] == "request"]


async def test_one_line_per_request_with_route_tokens_and_latency(gw):
    with capture_logs() as logs:
        async with gw.openai(api_key="sk-gw") as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": SECRET}]
            )
            completion = raw.parse()
            await client.embeddings.create(model="text-embedding-3-small", input=SECRET)
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(
                    model="nope", messages=[{"role": "user", "content": "x"}]
                )
            await client.models.list()
        async with gw.openai(api_key="wrong") as bad:
            with pytest.raises(openai.AuthenticationError):
                await bad.models.list()
    lines = requests(logs)
    assert [(e["method"], e["path"], e["status"]) for e in lines] == [
        ("POST", "/v1/chat/completions", 200),
        ("POST", "/v1/embeddings", 200),
        ("POST", "/v1/chat/completions", 404),
        ("GET", "/v1/models", 200),
        ("GET", "/v1/models", 401),
    ]
    chat, emb, missing = lines[:3]
    assert chat["log_level"] == "info" and chat["service"] == "ingress"
    assert chat["model"] == "gpt-4o-mini" and chat["provider"] == "emu" and chat["attempts"] == 1
    assert chat["key"] == "team-a"
    assert chat["request_id"] == raw.headers["x-request-id"]
    assert chat["prompt_tokens"] == completion.usage.prompt_tokens
    assert chat["completion_tokens"] == completion.usage.completion_tokens
    assert 0 < chat["latency_ms"] < 10_000
    assert emb["prompt_tokens"] > 0 and "completion_tokens" not in emb
    assert missing["model"] == "nope" and missing["error"] == "model_not_found"
    assert SECRET not in repr(logs)


async def test_a_stream_is_logged_when_it_ends(gw, upstream):
    upstream[0].chunk_delay_s = 0.05
    with capture_logs() as logs:
        async with gw.openai(api_key="sk-gw") as client:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": SECRET}],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = stream.__aiter__()
            await chunks.__anext__()
            assert requests(logs) == []  # still streaming: not logged yet
            text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    assert text
    (line,) = requests(logs)
    assert line["status"] == 200 and line["provider"] == "emu" and "error" not in line
    assert line["latency_ms"] > 50
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0  # from the worker's Done frame
    assert SECRET not in repr(logs)


async def test_health_probes_stay_out_of_the_info_log(gw):
    with capture_logs() as logs:
        async with aiohttp.ClientSession() as s, s.get(gw.base_url.removesuffix("/v1") + "/healthz") as r:
            assert r.status == 200
    (line,) = requests(logs)
    assert line["log_level"] == "debug" and line["path"] == "/healthz"


def test_nothing_is_formatted_when_info_is_filtered_out():
    quiet = structlog.wrap_logger(
        structlog.PrintLogger(), wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
    )
    loud = structlog.wrap_logger(
        structlog.PrintLogger(), wrapper_class=structlog.make_filtering_bound_logger(logging.INFO)
    )
    assert access.enabled(quiet) is False and access.enabled(loud) is True


def test_usage_of_a_large_body_is_read_from_its_tail():
    body = b'{"data":[' + b"0.125," * 100_000 + b'0.5],"usage":{"prompt_tokens":7,"total_tokens":7}}'
    u = access._from_tail(body[-access._TAIL :])
    assert u is not None and (u.prompt_tokens, u.completion_tokens) == (7, None)


async def test_a_stream_cut_after_its_first_byte_is_logged_with_its_error(gw, upstream):
    upstream[0].cut_stream_after_chunks = 2
    with capture_logs() as logs:
        async with gw.openai(api_key="sk-gw") as client:
            with pytest.raises(openai.APIError):
                async for _ in await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "cut"}], stream=True
                ):
                    pass
    (line,) = requests(logs)
    assert line["status"] == 200 and line["error"], line  # the status sent; the error event it ended with
