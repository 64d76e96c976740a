"""The Cohere and Replicate emulators, checked against clients, and the adapters run end to end.

* Cohere: the official ``cohere`` SDK (``ClientV2``) — chat, stream, tool call, embed, models,
  errors; raw HTTP for what the SDK cannot send (unknown fields, bad values).
* Replicate: raw aiohttp against the documented prediction / SSE shapes.
* ``CohereProtocol.run()`` (the base flow) and ``ReplicateProtocol.run()`` (create, stream,
  final GET) against the emulators through :class:`AioHttp`, a minimal ``Http`` on aiohttp.

The emulators run in a background thread with their own event loop, so the synchronous SDK
and the async tests can share them.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web

from libs.common.config import ProviderConfig
from libs.common.errors import RateLimited, SwitchmanError, UpstreamError, UpstreamRejected
from libs.common.profiles import PRESETS
from services.worker.adapters.base import HttpCall, HttpResponse, Protocol
from services.worker.adapters.cohere import CohereProtocol
from services.worker.adapters.replicate import ReplicateProtocol
from tests.emulators import cohere as cohere_emu
from tests.emulators import replicate as replicate_emu

try:  # written by another engineer
    from tests.schema import validate_sse_chunks
except ImportError:
    validate_sse_chunks = None

cohere_sdk = pytest.importorskip("cohere")
TOKEN = "test-token"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _serve(app: web.Application) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture(scope="module")
def cohere_url() -> Iterator[str]:
    yield from _serve(cohere_emu.make_app())


@pytest.fixture(scope="module")
def replicate_url() -> Iterator[str]:
    yield from _serve(replicate_emu.make_app())


@pytest.fixture
def co(cohere_url: str):
    return cohere_sdk.ClientV2(api_key=TOKEN, base_url=cohere_url, max_retries=0)


# -- Cohere emulator through the official SDK ----------------------------------------------


def test_sdk_chat(co):
    r = co.chat(model="command-a-03-2025", messages=[{"role": "user", "content": "hello there"}], p=0.5)
    assert r.finish_reason == "COMPLETE" and r.message.content[0].text == "Hello! You said: hello there"
    assert (
        r.usage.billed_units.input_tokens == 2
        and r.usage.tokens.input_tokens == 2 + cohere_emu.PROMPT_OVERHEAD
    )


def test_sdk_chat_stream_event_sequence(co):
    events = list(
        co.chat_stream(model="command-a-03-2025", messages=[{"role": "user", "content": "one two"}])
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message-start", "content-start"] and kinds[-2:] == ["content-end", "message-end"]
    text = "".join(e.delta.message.content.text for e in events if e.type == "content-delta")
    assert text == "Hello! You said: one two"
    assert events[-1].delta.finish_reason == "COMPLETE" and events[-1].delta.usage.tokens.output_tokens == 5


def test_sdk_tool_call(co):
    msgs = [{"role": "user", "content": "weather in Paris?"}]
    r = co.chat(model="command-a-03-2025", messages=msgs, tools=[WEATHER])
    assert r.finish_reason == "TOOL_CALL" and r.message.tool_plan
    call = r.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "emulated"}
    follow = [
        *msgs,
        {"role": "assistant", "tool_calls": [call.dict()], "tool_plan": r.message.tool_plan},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    r2 = co.chat(model="command-a-03-2025", messages=follow, tools=[WEATHER])
    assert r2.finish_reason == "COMPLETE" and r2.message.content[0].text == "The tool returned: sunny"
    kinds = [e.type for e in co.chat_stream(model="command-a-03-2025", messages=msgs, tools=[WEATHER])]
    assert {"tool-plan-delta", "tool-call-start", "tool-call-delta", "tool-call-end"} <= set(kinds)


def test_sdk_embed_and_models(co):
    r = co.embed(
        model="embed-v4.0", texts=["a b", "c"], input_type="search_document", embedding_types=["float"]
    )
    assert len(r.embeddings.float_) == 2 and len(r.embeddings.float_[0]) == 1024
    assert r.meta.billed_units.input_tokens == 3
    assert "command-a-03-2025" in [m.name for m in co.models.list(page_size=50).models]


def test_sdk_errors(co, cohere_url):
    bad = cohere_sdk.ClientV2(api_key="", base_url=cohere_url, max_retries=0)
    with pytest.raises(cohere_sdk.errors.UnauthorizedError):
        bad.chat(model="m", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(cohere_sdk.errors.TooManyRequestsError):
        co.chat(model="m", messages=[{"role": "user", "content": "x [fail:429]"}])
    with pytest.raises(cohere_sdk.errors.BadRequestError):
        co.chat(model="m", messages=[{"role": "user", "content": "x"}], p=1.0)


async def _post(url: str, body: dict, token: str = TOKEN) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status, await r.json(content_type=None)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 0.5},
        {"messages": [{"role": "user", "content": "x"}]},
        {"model": "m", "messages": []},
        {"model": "m", "messages": [{"role": "developer", "content": "x"}]},
        {"model": "m", "messages": [{"role": "user", "content": "x", "name": "bob"}]},
        {"model": "m", "messages": [{"role": "tool", "content": "x"}]},
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "k": 501},
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"},
    ],
)
async def test_cohere_emulator_is_strict(cohere_url, body):
    status, err = await _post(f"{cohere_url}/v2/chat", body)
    assert status == 400 and err["message"]


# -- Replicate emulator over raw HTTP -------------------------------------------------------


def _sse_events(raw: str) -> list[tuple[str, str]]:
    out = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln and not ln.startswith(":")]
        if lines:
            event = next((ln[7:] for ln in lines if ln.startswith("event: ")), "")
            out.append((event, "\n".join(ln[6:] for ln in lines if ln.startswith("data: "))))
    return out


async def test_replicate_prediction_lifecycle(replicate_url):
    create = f"{replicate_url}/v1/models/meta/meta-llama-3-8b-instruct/predictions"
    status, pred = await _post(
        create, {"input": {"prompt": "line one\nline two", "max_tokens": 50}, "stream": True}
    )
    assert status == 201 and pred["status"] == "starting" and set(pred["urls"]) >= {"get", "cancel", "stream"}
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
    async with aiohttp.ClientSession() as s:
        async with s.get(pred["urls"]["stream"], headers=headers) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            events = _sse_events(await r.text())
        async with s.get(pred["urls"]["get"], headers=headers) as r:
            final = await r.json()
    assert {e for e, _ in events} == {"output", "done"} and events[-1] == ("done", "{}")
    assert "".join(d for e, d in events if e == "output") == "You said: line one\nline two"
    assert final["status"] == "succeeded" and final["metrics"]["output_token_count"] == 5
    assert final["metrics"]["input_token_count"] == 4 and "".join(final["output"]).startswith("You said")


async def test_replicate_emulator_errors(replicate_url):
    url = f"{replicate_url}/v1/models/meta/meta-llama-3-8b-instruct/predictions"
    status, err = await _post(url, {"input": {"prompt": "x", "temperature": 9, "bogus": 1}})
    assert status == 422 and {f["field"] for f in err["invalid_fields"]} == {
        "input.temperature",
        "input.bogus",
    }
    assert err["title"] and err["status"] == 422 and "input.temperature" in err["detail"]
    assert (await _post(url, {"input": {"prompt": "x"}}, token=""))[0] == 401
    assert (await _post(f"{replicate_url}/v1/models/no/such/predictions", {"input": {"prompt": "x"}}))[
        0
    ] == 404
    status, pred = await _post(f"{replicate_url}/v1/predictions", {"version": f"meta/x:{next(iter(replicate_emu.VERSIONS))}", "input": {"prompt": "x"}})  # fmt: skip
    assert status == 201 and pred["model"] == "meta/meta-llama-3-8b-instruct"


# -- the adapters end to end ------------------------------------------------------------------


class AioHttp:
    """A minimal :class:`~services.worker.adapters.base.Http` on aiohttp, with an SSE parser."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol

    async def fetch(self, call: HttpCall) -> HttpResponse:
        try:
            async with aiohttp.ClientSession() as s:
                async with s.request(call.method, call.url, data=call.body, headers=call.headers) as r:
                    body = await r.read()
        except aiohttp.ClientError as e:
            raise UpstreamError(str(e)) from None
        if r.status >= 400:
            raise self.protocol.error(r.status, body, r.headers)
        return HttpResponse(r.status, r.headers, body)

    async def events(self, call: HttpCall) -> AsyncIterator[list[tuple[str, bytes]]]:
        async with aiohttp.ClientSession() as s:
            async with s.request(call.method, call.url, data=call.body, headers=call.headers) as r:
                if r.status >= 400:
                    raise self.protocol.error(r.status, await r.read(), r.headers)
                event, data = "", []
                async for raw in r.content:  # lines; an event ends at a blank line
                    line = raw.rstrip(b"\r\n")
                    if not line:
                        if data or event:
                            yield [(event, b"\n".join(data))]
                        event, data = "", []
                    elif not line.startswith(b":"):
                        name, _, value = line.partition(b":")
                        value = value[1:] if value.startswith(b" ") else value
                        if name == b"event":
                            event = value.decode()
                        elif name == b"data":
                            data.append(value)


class Sink:
    def __init__(self) -> None:
        self.started, self.chunks, self.body = False, [], None

    async def chunk(self, *pieces: bytes) -> None:
        self.started = True
        self.chunks.extend(json.loads(p) for p in pieces)

    async def result(self, body: bytes) -> None:
        self.started = True
        self.body = json.loads(body)


def text_of(chunks: list[dict]) -> str:
    if validate_sse_chunks is not None:
        validate_sse_chunks(chunks)
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def cohere(url: str) -> CohereProtocol:
    return CohereProtocol(
        ProviderConfig(id="co", kind="cohere", base_url=url, api_key=TOKEN), PRESETS["cohere"]
    )


def replicate(url: str) -> ReplicateProtocol:
    cfg = ProviderConfig(id="rep", kind="replicate", base_url=f"{url}/v1", api_key=TOKEN)
    return ReplicateProtocol(cfg, PRESETS["replicate"])


def chat(text: str, **kw: object) -> dict:
    return {"messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": text}], **kw}


async def test_cohere_run_end_to_end(cohere_url):
    p = cohere(cohere_url)
    sink = Sink()
    req = chat("hi there", top_p=1.0, stream_options={"include_usage": True})
    usage = await p.run(AioHttp(p), sink, "chat", req, "command-a-03-2025", True)
    assert text_of(sink.chunks) == "Hello! You said: hi there" and sink.chunks[-1]["usage"]["total_tokens"] == usage.total_tokens  # fmt: skip
    sink = Sink()
    await p.run(AioHttp(p), sink, "chat", chat("weather?", tools=[WEATHER]), "command-a-03-2025", True)
    assert text_of(sink.chunks) == "" and sink.chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    args = "".join(c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in sink.chunks if "tool_calls" in c["choices"][0]["delta"])  # fmt: skip
    assert json.loads(args) == {"city": "emulated"}
    sink = Sink()
    await p.run(AioHttp(p), sink, "chat", chat("weather?", tools=[WEATHER]), "command-a-03-2025", False)
    assert sink.body["choices"][0]["finish_reason"] == "tool_calls"
    assert sink.body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    sink = Sink()
    usage = await p.run(
        AioHttp(p), sink, "embeddings", {"input": ["a", "b c"], "dimensions": 256}, "embed-v4.0", False
    )
    assert len(sink.body["data"][1]["embedding"]) == 256 and usage.prompt_tokens == 3


@pytest.mark.parametrize(("script", "stream", "err"), [("[cut]", True, UpstreamError), ("[cut]", False, UpstreamError), ("[error-event]", True, UpstreamError), ("[error-event]", False, UpstreamError), ("[fail:429]", True, RateLimited), ("[fail:503]", False, SwitchmanError)])  # fmt: skip
async def test_cohere_run_failures(cohere_url, script, stream, err):
    p = cohere(cohere_url)
    with pytest.raises(err) as e:
        await p.run(AioHttp(p), Sink(), "chat", chat(f"hi {script}"), "command-a-03-2025", stream)
    assert e.value.retryable


async def test_replicate_run_stream_and_non_stream(replicate_url):
    p = replicate(replicate_url)
    sink = Sink()
    req = chat("tell me\na story", max_tokens=3, stream_options={"include_usage": True})
    usage = await p.run(AioHttp(p), sink, "chat", req, "meta/meta-llama-3-8b-instruct", True)
    assert (
        text_of(sink.chunks) == "You said: tell "
        and sink.chunks[-2]["choices"][0]["finish_reason"] == "length"
    )
    assert (
        usage.completion_tokens == 3
        and usage.prompt_tokens == 6
        and sink.chunks[-1]["usage"]["total_tokens"] == 9
    )
    sink = Sink()
    version = next(iter(replicate_emu.VERSIONS))
    await p.run(AioHttp(p), sink, "chat", chat("short"), f"meta/meta-llama-3-8b-instruct:{version}", False)
    assert sink.body["choices"][0]["message"]["content"] == "You said: short"
    assert sink.body["choices"][0]["finish_reason"] == "stop" and sink.body["usage"]["completion_tokens"] == 3


async def test_replicate_run_without_metrics_estimates(replicate_url):
    p = replicate(replicate_url)
    usage = await p.run(
        AioHttp(p), Sink(), "chat", chat("hi [no-metrics]"), "meta/meta-llama-3-8b-instruct", False
    )
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("script", "err", "started"),
    [
        ("[fail:429]", RateLimited, False),
        ("[fail:500]", UpstreamError, False),
        ("[stream-fail:500]", UpstreamError, False),
        ("[cut]", UpstreamError, True),
        ("[error-event]", UpstreamError, True),
    ],
)
async def test_replicate_run_failures(replicate_url, script, err, started):
    p = replicate(replicate_url)
    sink = Sink()
    with pytest.raises(err) as e:
        await p.run(AioHttp(p), sink, "chat", chat(f"a b {script}"), "meta/meta-llama-3-8b-instruct", True)
    assert e.value.retryable and sink.started is started
    assert not any(c["choices"] and c["choices"][0]["finish_reason"] for c in sink.chunks)


async def test_replicate_run_bad_input_is_a_400(replicate_url):
    p = replicate(replicate_url)
    with pytest.raises(UpstreamRejected) as e:
        await p.run(
            AioHttp(p), Sink(), "chat", chat("x", temperature=7), "meta/meta-llama-3-8b-instruct", False
        )
    assert e.value.status == 400 and "input.temperature" in e.value.message
