"""Streaming through the gateway: SSE framing, broken upstream streams, failover, client disconnects.

The official openai SDK drives the client side where it can; raw aiohttp reads the exact SSE
bytes and disconnects on purpose. Every chunk and error event is validated against the
OpenAI schemas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from tests.emulators.openai_upstream import UpstreamState, running
from tests.gateway import Gateway, config, eventually, in_process, openai_provider, serving
from tests.schema import validate, validate_sse_chunks

MODEL = "gpt-4o-mini"
SSE_EVENT = re.compile(rb"data: ([^\n]+)\n\n")


# --------------------------------------------------------------------------- fixtures and helpers


@contextlib.asynccontextmanager
async def emulator() -> AsyncIterator[tuple[UpstreamState, str]]:
    state = UpstreamState(api_key="sk-test")
    async with running(state) as base_url:
        yield state, base_url


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[UpstreamState, str]]:
    async with emulator() as u:
        yield u


@pytest.fixture
async def upstream_b() -> AsyncIterator[tuple[UpstreamState, str]]:
    """A second, independent upstream (for per-provider faults)."""
    async with emulator() as u:
        yield u


@contextlib.asynccontextmanager
async def gateway(nats_url: str, *bases: str, limits: dict[str, Any] | None = None) -> AsyncIterator[Gateway]:
    """Model "m" -> gpt-4o-mini at providers a, b, ... (one per base URL), tried in that order."""
    pids = "abcd"[: len(bases)]
    cfg = config(
        providers=[openai_provider(p, b, [MODEL]) for p, b in zip(pids, bases, strict=True)],
        models=[{"name": "m", "targets": [{"provider": p, "model": MODEL} for p in pids]}],
        **({"limits": limits} if limits else {}),
    )
    async with in_process(cfg, nats_url) as gw, gw.openai() as client:
        gw._sdk = client  # type: ignore[attr-defined]  # one client per gateway: creating one costs ~0.2 s
        yield gw


def sdk(gw: Gateway) -> openai.AsyncOpenAI:
    return gw._sdk  # type: ignore[attr-defined]


def chat_body(text: str, **kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "stream": True, **kw}


async def post_sse(
    gw: Gateway, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> tuple[int, Any, bytes]:
    """(status, headers, the whole raw body) of one raw streaming request."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{gw.port}{path}", json=body) as r,
    ):
        return r.status, r.headers, await r.read()


def split_events(raw: bytes) -> list[bytes]:
    """The data payloads of an SSE body that must consist of nothing but ``data: ...\\n\\n`` events."""
    events = SSE_EVENT.findall(raw)
    assert b"".join(b"data: " + e + b"\n\n" for e in events) == raw, (
        f"stray bytes in SSE body: {raw[-300:]!r}"
    )
    return events


def content_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(1, n + 1))


def check_error_body(body: Any) -> dict[str, Any]:
    validate("ErrorResponse", body)
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    return err


class Scripted:
    """A hand-written upstream: answers every chat request with ``pieces``, written one by one.

    With ``usage`` it behaves like OpenAI when asked for ``stream_options.include_usage``: a
    usage-only chunk goes out just before the last piece (``[DONE]``).
    """

    def __init__(
        self, pieces: list[bytes], content_type: str = "text/event-stream", usage: bool = False
    ) -> None:
        self.pieces, self.content_type, self.usage = pieces, content_type, usage
        self.bodies: list[Any] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        pieces = list(self.pieces)
        if self.usage and (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
            usage_chunk = json.loads(sse_chunk({}))
            usage_chunk["choices"], usage_chunk["usage"] = [], usage
            pieces.insert(-1, b"data: " + json.dumps(usage_chunk).encode() + b"\n\n")
        resp = web.StreamResponse(status=200, headers={"Content-Type": self.content_type})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):  # the gateway may hang up once it has what it needs
            for piece in pieces:
                await resp.write(piece)
                await asyncio.sleep(0.005)  # separate writes: the gateway must reassemble split events
            await resp.write_eof()
        return resp


@contextlib.asynccontextmanager
async def scripted_upstream(script: Scripted) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", script.handle)
    async with serving(app) as base:
        yield base


def sse_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        },
        ensure_ascii=False,
    ).encode()


ROLE = sse_chunk({"role": "assistant", "content": ""})
FINISH = sse_chunk({}, "stop")


# --------------------------------------------------------------------------- SSE framing


async def test_raw_sse_framing(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base) as gw:
        status, headers, raw = await post_sse(
            gw, chat_body("frame me #words:12", stream_options={"include_usage": True})
        )
        assert status == 200
        assert headers["Content-Type"].startswith("text/event-stream")
        assert headers["Cache-Control"] == "no-cache"
        assert headers["x-switchman-provider"] == "a" and headers["x-request-id"]
        assert raw.endswith(b"data: [DONE]\n\n")
        events = split_events(raw)
        assert events[-1] == b"[DONE]" and events.count(b"[DONE]") == 1
        assert b"\r" not in raw and b"event:" not in raw and not raw.startswith(b":")
        chunks = [json.loads(e) for e in events[:-1]]
        validate_sse_chunks(chunks)
        assert content_of(chunks) == words(12)
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12

        # Legacy completions stream the same way.
        status, headers, raw = await post_sse(
            gw, {"model": "m", "prompt": "legacy", "stream": True, "max_tokens": 30}, "/v1/completions"
        )
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        events = split_events(raw)
        assert events[-1] == b"[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["object"] == "text_completion" for c in chunks)
        assert "".join(ch["text"] for c in chunks for ch in c["choices"]) == " You said: legacy"


async def test_many_concurrent_streams_do_not_mix(nats_server, upstream):
    state, base = upstream
    state.chunk_delay_s = 0.005
    async with gateway(nats_server.url, base) as gw:

        async def one(i: int) -> None:
            stream = await sdk(gw).chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"stream number {i}"}], stream=True
            )
            chunks = [c.model_dump(exclude_unset=True) async for c in stream]
            validate_sse_chunks(chunks)
            assert content_of(chunks) == f"You said: stream number {i}"

        await asyncio.gather(*(one(i) for i in range(20)))
        assert state.max_in_flight > 1  # they really overlapped


# --------------------------------------------------------------------------- broken upstream streams


async def test_stream_cut_midway_sdk_gets_chunks_then_error(nats_server, upstream, upstream_b):
    state, base = upstream
    state_b, base_b = upstream_b
    async with gateway(nats_server.url, base, base_b) as gw:
        state.cut_stream_after_chunks = 3
        stream = await sdk(gw).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "#words:20"}], stream=True
        )
        chunks: list[dict[str, Any]] = []
        with pytest.raises(openai.APIError) as exc:
            async for c in stream:
                chunks.append(c.model_dump(exclude_unset=True))
        assert len(chunks) == 3
        validate_sse_chunks(chunks)
        assert content_of(chunks) == "w1 w2"
        assert all(ch["finish_reason"] is None for c in chunks for ch in c["choices"])  # never a clean finish
        err = exc.value.body
        assert isinstance(err, dict)
        validate("Error", err)
        assert "'a'" in err["message"]
        # After the first byte there is no failover: b never saw the request.
        assert state_b.request_count == 0 and state.request_count == 1


async def test_stream_cut_midway_raw_sse_ends_with_error_event(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base) as gw:
        state.cut_stream_after_chunks = 3
        status, headers, raw = await post_sse(gw, chat_body("#words:20"))
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        assert b"[DONE]" not in raw
        events = split_events(raw)
        assert len(events) == 4
        chunks = [json.loads(e) for e in events[:-1]]
        validate_sse_chunks(chunks)
        last = json.loads(events[-1])
        err = check_error_body(last)
        assert err["type"] == "api_error"
        assert raw.endswith(b"\n\n")

        # The same for a legacy completions stream.
        status, _, raw = await post_sse(
            gw,
            {"model": "m", "prompt": "a b c d e f g h", "stream": True, "max_tokens": 50},
            "/v1/completions",
        )
        assert status == 200 and b"[DONE]" not in raw
        events = split_events(raw)
        check_error_body(json.loads(events[-1]))
        assert all("error" not in json.loads(e) for e in events[:-1])


async def test_stream_error_before_first_byte_is_an_http_status(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base) as gw:
        for fault, status in ((500, 502), (0, 502), (503, 503), (429, 429), (400, 400)):
            state.fail_next = [fault]
            got, headers, raw = await post_sse(gw, chat_body("x"))
            assert got == status, (fault, got, raw)
            assert headers["Content-Type"].startswith("application/json")
            check_error_body(json.loads(raw))
        # 200 + headers from the upstream but the connection drops before any chunk.
        state.cut_stream_after_chunks = 0
        got, headers, raw = await post_sse(gw, chat_body("x"))
        assert got == 502 and headers["Content-Type"].startswith("application/json")
        check_error_body(json.loads(raw))
        with pytest.raises(openai.InternalServerError):
            await sdk(gw).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], stream=True
            )


@pytest.mark.parametrize("fault", [500, 0, 429])
async def test_stream_failover_before_first_byte(nats_server, upstream, fault):
    state, base = upstream
    async with gateway(nats_server.url, base, base) as gw:
        state.fail_next = [fault]
        raw = await sdk(gw).chat.completions.with_raw_response.create(
            model="m",
            messages=[{"role": "user", "content": "fail over"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        assert raw.headers["x-switchman-provider"] == "b"
        assert raw.headers["x-switchman-attempts"] == "2"
        chunks = [c.model_dump(exclude_unset=True) async for c in raw.parse()]
        validate_sse_chunks(chunks)
        assert content_of(chunks) == "You said: fail over"
        assert chunks[-1]["usage"]["total_tokens"] > 0
        assert state.request_count == 2


async def test_stream_failover_when_first_upstream_drops_before_any_chunk(nats_server, upstream, upstream_b):
    state, base = upstream
    state_b, base_b = upstream_b
    async with gateway(nats_server.url, base, base_b) as gw:
        state.cut_stream_after_chunks = 0  # 200 and headers, then the connection closes
        status, headers, raw = await post_sse(gw, chat_body("second try"))
        assert status == 200
        assert headers["x-switchman-provider"] == "b" and headers["x-switchman-attempts"] == "2"
        events = split_events(raw)
        assert events[-1] == b"[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        validate_sse_chunks(chunks)
        assert content_of(chunks) == "You said: second try"
        assert (state.request_count, state_b.request_count) == (1, 1)


async def test_stream_deadline_after_first_byte_ends_with_error_event(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base, limits={"request_timeout_s": 1.0}) as gw:
        state.chunk_delay_s = 0.2
        start = time.monotonic()
        status, _, raw = await post_sse(gw, chat_body("#words:30"))
        assert time.monotonic() - start < 1.6
        assert status == 200 and b"[DONE]" not in raw
        events = split_events(raw)
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks
        validate_sse_chunks(chunks)
        err = check_error_body(json.loads(events[-1]))
        assert err["code"] == "timeout"
        await eventually(lambda: state.in_flight == 0, 1.0, "upstream stream abandoned")


async def test_slow_stream_survives_idle_timeout(nats_server, upstream):
    """Chunks slower than idle_timeout_s: the worker's keep-alives keep the stream alive."""
    state, base = upstream
    async with gateway(nats_server.url, base, limits={"idle_timeout_s": 0.4}) as gw:
        state.chunk_delay_s = 0.6
        state.delay_first_byte_s = 0.6
        stream = await sdk(gw).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "#words:1"}], stream=True
        )
        chunks = [c.model_dump(exclude_unset=True) async for c in stream]
        validate_sse_chunks(chunks)
        assert content_of(chunks) == "w1"


# --------------------------------------------------------------------------- clients that go away


async def test_stream_client_disconnect_cancels_upstream(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base) as gw:
        state.chunk_delay_s = 0.05  # 200 words: ~10 s if nobody stops it
        worker = gw.services["worker"]
        async with aiohttp.ClientSession() as s:
            resp = await s.post(
                f"http://127.0.0.1:{gw.port}/v1/chat/completions", json=chat_body("#words:200")
            )
            assert resp.status == 200
            got = b""
            while got.count(b"\n\n") < 2:
                got += await resp.content.readany()
            assert state.in_flight == 1 and len(worker.active) == 1
            resp.close()  # drop the connection mid-stream
        took = await eventually(
            lambda: state.in_flight == 0 and state.disconnects + state.cancelled >= 1,
            2.0,
            "upstream disconnect",
        )
        assert took < 2.0
        await eventually(lambda: not worker.active, 1.0, "worker forgets the request")
        assert state.request_count == 1  # the abandoned request did not fail over anywhere
        ingress = gw.services["ingress"]
        await eventually(lambda: not ingress.bus.calls, 1.0, "ingress forgets the call")


async def test_non_stream_client_disconnect_cancels_upstream(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base) as gw:
        state.delay_first_byte_s = 3
        start = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            await sdk(gw).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "slow"}], timeout=0.5
            )
        await eventually(lambda: state.cancelled == 1 and state.in_flight == 0, 1.5, "upstream cancel")
        assert time.monotonic() - start < 2.5  # well before the upstream would have answered (3 s)
        await eventually(lambda: not gw.services["worker"].active, 1.0, "worker forgets the request")
        assert state.request_count == 1


async def test_client_gone_before_first_byte_is_not_handed_to_the_next_candidate(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base, base) as gw:  # two candidates, same upstream
        state.delay_first_byte_s = 3
        with pytest.raises(openai.APITimeoutError):
            await sdk(gw).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "slow"}], timeout=0.5
            )
        await eventually(lambda: state.cancelled == 1 and state.in_flight == 0, 1.5, "upstream cancel")
        await asyncio.sleep(0.3)  # a hand-over would reach the upstream by now
        assert state.request_count == 1  # nobody waits for the answer: no second attempt


async def test_stream_client_disconnect_before_first_byte_cancels_upstream(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base) as gw:
        state.delay_first_byte_s = 3
        async with aiohttp.ClientSession() as s:
            task = asyncio.create_task(
                s.post(f"http://127.0.0.1:{gw.port}/v1/chat/completions", json=chat_body("never mind"))
            )
            await eventually(lambda: state.in_flight == 1, 1.0, "upstream request")
            task.cancel()  # the client gives up while the gateway still waits for the first byte
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await eventually(lambda: state.in_flight == 0 and state.cancelled == 1, 1.5, "upstream cancel")
        await eventually(lambda: not gw.services["worker"].active, 1.0, "worker forgets the request")


# --------------------------------------------------------------------------- odd upstream streams


async def test_upstream_sse_variants_are_reframed(nats_server):
    """CRLF line ends, comments, "data:" without a space, events split across writes (even inside
    a UTF-8 sequence): the client still gets exact ``data: {json}\n\n`` framing."""
    text = sse_chunk({"content": "héllo 🌍"})
    cut = text.index("🌍".encode()) + 2  # inside the 4-byte emoji
    script = Scripted(
        [
            b": connected\r\n\r\n",
            b"data:" + ROLE + b"\r",
            b"\n\r\n",
            b"data: " + text[:cut],
            text[cut:] + b"\n",
            b"\n: keep-alive\n\n",
            b"event: message\ndata: " + sse_chunk({"content": " world"}) + b"\n\n",
            b"data: " + FINISH + b"\n\n",
            b"data: [DONE]\n\n",
        ],
        usage=True,
    )
    async with scripted_upstream(script) as base, gateway(nats_server.url, base) as gw:
        status, headers, raw = await post_sse(gw, chat_body("x"))
        assert status == 200
        events = split_events(raw)
        assert events[-1] == b"[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        validate_sse_chunks(chunks)
        assert content_of(chunks) == "héllo 🌍 world"
        assert [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]] == ["stop"]


async def test_upstream_error_event_mid_stream(nats_server):
    err = {
        "error": {
            "message": "The server is overloaded right now",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    script = Scripted(
        [
            b"data: " + ROLE + b"\n\n",
            b"data: " + sse_chunk({"content": "partial"}) + b"\n\n",
            b"data: " + json.dumps(err).encode() + b"\n\n",
        ]
    )
    async with scripted_upstream(script) as base, gateway(nats_server.url, base) as gw:
        status, _, raw = await post_sse(gw, chat_body("x"))
        assert status == 200 and b"[DONE]" not in raw
        events = split_events(raw)
        chunks = [json.loads(e) for e in events[:-1]]
        validate_sse_chunks(chunks)
        assert content_of(chunks) == "partial"
        got = check_error_body(json.loads(events[-1]))
        assert "overloaded" in got["message"]

        stream = await sdk(gw).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
        with pytest.raises(openai.APIError, match="overloaded"):
            async for _ in stream:
                pass


async def test_upstream_ignoring_stream_is_an_error_not_a_hang(nats_server):
    """A server that answers a stream request with a plain JSON body: 502 before any byte."""
    body = {
        "id": "chatcmpl-plain",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
    }
    script = Scripted([json.dumps(body).encode()], content_type="application/json")
    async with scripted_upstream(script) as base, gateway(nats_server.url, base) as gw:
        start = time.monotonic()
        status, headers, raw = await post_sse(gw, chat_body("x"))
        assert time.monotonic() - start < 2
        assert status == 502 and headers["Content-Type"].startswith("application/json")
        check_error_body(json.loads(raw))


async def test_synthesized_usage_chunk_belongs_to_the_stream(nats_server):
    """An OpenAI-compatible server that ignores stream_options: the gateway adds the usage chunk."""
    script = Scripted(
        [
            b"data: " + ROLE + b"\n\n",
            b"data: " + sse_chunk({"content": "a b c"}) + b"\n\n",
            b"data: " + FINISH + b"\n\n",
            b"data: [DONE]\n\n",
        ]
    )
    async with scripted_upstream(script) as base, gateway(nats_server.url, base) as gw:
        status, _, raw = await post_sse(gw, chat_body("x", stream_options={"include_usage": True}))
        assert status == 200
        events = split_events(raw)
        assert events[-1] == b"[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        last = chunks[-1]
        assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0
        validate_sse_chunks(chunks)  # same id / created / model on every chunk
