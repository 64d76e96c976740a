"""ReplicateProtocol: prompt building, input mapping, stream events, metrics usage, errors, run()."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from libs.common.config import ProviderConfig
from libs.common.errors import (
    GatewayTimeout,
    InvalidRequest,
    Overloaded,
    RateLimited,
    SwitchmanError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRejected,
)
from libs.common.profiles import PRESETS
from services.worker.adapters.base import HttpCall, HttpResponse
from services.worker.adapters.replicate import (
    Prediction,
    ReplicateProtocol,
    ReplicateStream,
    build_input,
    build_prompt,
    parse_prediction,
)
from tests.schema import validate as _validate
from tests.schema import validate_sse_chunks as _validate_stream

MODEL = "meta/meta-llama-3-8b-instruct"
USER = [{"role": "user", "content": "Tell me a joke"}]


def proto(**kw: object) -> ReplicateProtocol:
    cfg = ProviderConfig(id="rep", kind="replicate", api_key="r8_test", **kw)  # type: ignore[arg-type]
    return ReplicateProtocol(cfg, PRESETS["replicate"])


def decoded(pieces: list[bytes]) -> list[dict]:
    out = [json.loads(p) for p in pieces]
    if out:
        _validate_stream(out)
    return out


# -- prompt and input ---------------------------------------------------------------------


def test_single_user_message_is_the_prompt():
    assert build_prompt(USER) == ("", "Tell me a joke")


def test_system_messages_go_to_system_prompt_and_turns_are_flattened():
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "No emojis."}]},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Joke "}, {"type": "text", "text": "please"}]},
    ]
    assert build_prompt(msgs) == (
        "Be brief.\n\nNo emojis.",
        "User: Hi\n\nAssistant: Hello!\n\nUser: Joke please",
    )


def test_tool_turn_and_lone_assistant_are_transcribed():
    assert build_prompt([{"role": "assistant", "content": "x"}]) == ("", "Assistant: x")
    msgs = [*USER, {"role": "tool", "tool_call_id": "c", "content": "42"}]
    assert build_prompt(msgs)[1] == "User: Tell me a joke\n\nTool: 42"


@pytest.mark.parametrize(
    "msg",
    [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]},
        {"role": "function", "name": "f", "content": "x"},
    ],
)
def test_unsupported_content_is_rejected(msg):
    with pytest.raises(InvalidRequest):
        build_prompt([msg])


def test_input_mapping():
    req = {
        "messages": [{"role": "system", "content": "sys"}, *USER],
        "max_completion_tokens": 64,
        "max_tokens": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.2,
        "stop": ["\n\n", "END"],
        "seed": 1,
        "user": "u",
    }
    assert build_input(req) == {
        "prompt": "Tell me a joke",
        "system_prompt": "sys",
        "max_tokens": 64,
        "max_new_tokens": 64,
        "temperature": 0.7,
        "top_p": 0.9,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.2,
        "stop_sequences": "\n\n,END",
    }
    assert build_input({"messages": USER, "stop": "END"})["stop_sequences"] == "END"
    with pytest.raises(InvalidRequest) as e:
        build_input({"messages": USER, "stop": ["a,b"]})
    assert e.value.param == "stop"


def test_create_call_for_official_model():
    call = proto().chat_request({"messages": USER, "max_tokens": 5}, MODEL, True)
    assert (call.method, call.url) == (
        "POST",
        "https://api.replicate.com/v1/models/meta/meta-llama-3-8b-instruct/predictions",
    )
    assert call.headers["Authorization"] == "Bearer r8_test" and "Prefer" not in call.headers
    assert json.loads(call.body) == {
        "input": {"prompt": "Tell me a joke", "max_tokens": 5, "max_new_tokens": 5},
        "stream": True,
    }
    assert not call.stream


@pytest.mark.parametrize("model", [f"{MODEL}:abc123", "abc123"])
def test_create_call_for_a_version(model):
    call = proto(base_url="http://127.0.0.1:1/v1/").chat_request({"messages": USER}, model, False)
    assert call.url == "http://127.0.0.1:1/v1/predictions"
    assert json.loads(call.body)["version"] == "abc123"


def test_stream_and_get_calls():
    p = proto(headers={"X-Extra": "1"})
    s = p.stream_call("https://stream.replicate.com/v1/files/abc")
    assert s.stream and s.method == "GET" and s.headers["Accept"] == "text/event-stream"
    assert s.headers["Authorization"] == "Bearer r8_test" and s.headers["X-Extra"] == "1"
    g = p.get_call("https://api.replicate.com/v1/predictions/abc")
    assert not g.stream and g.headers["Authorization"] == "Bearer r8_test"


# -- stream events and usage --------------------------------------------------------------


def final(**metrics: float) -> Prediction:
    body = {"id": "p1", "status": "succeeded", "output": ["a"], "metrics": {"predict_time": 1.0, **metrics}}
    return parse_prediction(json.dumps(body).encode(), "rep")


def test_output_events_become_content_chunks():
    tr = ReplicateStream("llama", True, "rep", max_tokens=10)
    out = tr.feed("output", b"Once") + tr.feed("output", b" upon\na") + tr.feed("logs", b"loading")
    assert tr.feed("done", b"{}") == [] and tr.done
    tr.settle(final(input_token_count=12, output_token_count=3))
    got = decoded(out + tr.tail())
    deltas = [c["choices"][0]["delta"] if c["choices"] else None for c in got]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Once"},
        {"content": " upon\na"},
        {},
        None,
    ]
    assert got[3]["choices"][0]["finish_reason"] == "stop"
    assert got[-1]["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


def test_length_when_output_tokens_reach_max_tokens():
    tr = ReplicateStream("llama", False, "rep", max_tokens=3)
    tr.feed("output", b"a b c")
    tr.feed("done", b"{}")
    tr.settle(final(input_token_count=1.0, output_token_count=3.0))
    assert tr.finish_reason == "length" and tr.usage.completion_tokens == 3
    assert decoded(tr.tail())[-1]["choices"][0]["finish_reason"] == "length"


def test_usage_is_estimated_without_metrics():
    tr = ReplicateStream("llama", False, "rep", max_tokens=1, prompt_bytes=40)
    tr.feed("output", b"12345678")
    tr.feed("done", b"")
    tr.settle(None)
    assert (tr.usage.prompt_tokens, tr.usage.completion_tokens, tr.usage.estimated) == (10, 2, True)
    assert tr.finish_reason == "stop"  # never "length" from an estimate
    tr.settle(final(output_token_count=5))  # per field: the prompt is still estimated
    assert (tr.usage.prompt_tokens, tr.usage.completion_tokens, tr.usage.estimated) == (10, 5, True)
    tr.settle(final(input_token_count=7, output_token_count=5))
    assert (tr.usage.prompt_tokens, tr.usage.estimated) == (7, False)


def test_done_without_output_still_sends_role_and_finish():
    tr = ReplicateStream("llama", False, "rep")
    tr.feed("done", b"{}")
    got = decoded(tr.close())
    assert (
        got[0]["choices"][0]["delta"]["role"] == "assistant"
        and got[-1]["choices"][0]["finish_reason"] == "stop"
    )
    assert tr.close() == []


@pytest.mark.parametrize(
    ("event", "data", "text"),
    [
        ("error", b'{"detail": "CUDA out of memory"}', "CUDA out of memory"),
        ("error", b"plain text failure", "plain text failure"),
        ("done", b'{"reason": "error"}', "error"),
        ("done", b'{"reason": "canceled"}', "canceled"),
    ],
)
def test_error_and_failed_done_raise(event, data, text):
    tr = ReplicateStream("llama", False, "rep")
    tr.feed("output", b"partial")
    with pytest.raises(UpstreamError, match=text):
        tr.feed(event, data)


def test_cut_stream_raises_on_close():
    tr = ReplicateStream("llama", True, "rep")
    tr.feed("output", b"partial")
    with pytest.raises(UpstreamError):
        tr.close()


def test_accumulated_completion():
    tr = ReplicateStream("llama", False, "rep", accumulate=True)
    assert tr.feed("output", b"Hello") == [] and tr.feed("output", b", world") == []
    tr.feed("done", b"{}")
    tr.settle(final(input_token_count=4, output_token_count=3))
    doc = json.loads(tr.completion())
    _validate("CreateChatCompletionResponse", doc)
    assert doc["choices"][0]["message"]["content"] == "Hello, world"
    assert doc["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}


def test_chat_response_from_a_prediction_object():
    body = {"id": "p", "status": "succeeded", "output": ["Hi", " there"], "metrics": {"input_token_count": 2, "output_token_count": 2}}  # fmt: skip
    out = proto().chat_response(json.dumps(body).encode(), "llama")
    doc = json.loads(out.body)
    assert doc["choices"][0]["message"]["content"] == "Hi there" and out.usage.total_tokens == 4
    for status in ("failed", "processing"):
        with pytest.raises(UpstreamError):
            proto().chat_response(json.dumps(body | {"status": status}).encode(), "llama")


def test_malformed_prediction_raises():
    with pytest.raises(UpstreamError):
        parse_prediction(b"<html>", "rep")


# -- errors -------------------------------------------------------------------------------


def problem(status: int, detail: str = "details here") -> bytes:
    return json.dumps({"title": "Some title", "detail": detail, "status": status}).encode()


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (401, UpstreamAuthError, True),
        (403, UpstreamAuthError, True),
        (402, UpstreamError, True),
        (404, UpstreamRejected, False),
        (422, UpstreamRejected, False),
        (429, RateLimited, True),
        (500, UpstreamError, True),
        (503, Overloaded, True),
        (504, GatewayTimeout, True),
    ],
)
def test_error_mapping(status, cls, retryable):
    err = proto().error(status, problem(status), {"Retry-After": "2"})
    assert type(err) is cls and err.retryable is retryable and err.provider == "rep"
    assert "details here" in err.message


def test_422_is_a_400_naming_the_detail_and_429_carries_retry_after():
    err = proto().error(422, problem(422, "- input.temperature: Must be between 0 and 5"), {})
    assert err.status == 400 and "input.temperature" in err.message
    assert proto().error(429, problem(429), {"Retry-After": "7"}).retry_after == 7.0
    assert "gateway down" in proto().error(502, b"gateway down", {}).message


# -- run() against an in-memory Http ------------------------------------------------------

CREATED = {
    "id": "p1",
    "status": "starting",
    "urls": {"get": "http://r/v1/predictions/p1", "cancel": "http://r/v1/predictions/p1/cancel", "stream": "http://s/p1"},
}  # fmt: skip


class FakeHttp:
    def __init__(
        self, events: list[tuple[str, bytes]], created: dict | None = None, final: object = None
    ) -> None:
        self.events_ = events
        self.created = CREATED if created is None else created
        self.final = final
        self.calls: list[HttpCall] = []

    async def fetch(self, call: HttpCall) -> HttpResponse:
        self.calls.append(call)
        if call.method == "POST" and call.url.endswith("/cancel"):
            return HttpResponse(200, {}, b"{}")
        if call.method == "POST":
            return HttpResponse(201, {}, json.dumps(self.created).encode())
        if isinstance(self.final, SwitchmanError):
            raise self.final
        return HttpResponse(200, {}, json.dumps(self.final).encode())

    async def events(self, call: HttpCall) -> AsyncIterator[list[tuple[str, bytes]]]:
        self.calls.append(call)
        for ev in self.events_:
            yield [ev]


class Sink:
    def __init__(self) -> None:
        self.started = False
        self.chunks: list[bytes] = []
        self.body: bytes | None = None

    async def chunk(self, *pieces: bytes) -> None:
        self.started = True
        self.chunks.extend(pieces)

    async def result(self, body: bytes) -> None:
        self.started = True
        self.body = body


DONE = [("output", b"Why "), ("output", b"not?"), ("done", b"{}")]
FINAL = {"id": "p1", "status": "succeeded", "output": ["Why ", "not?"], "metrics": {"input_token_count": 4, "output_token_count": 2}}  # fmt: skip
REQ = {"messages": USER, "max_tokens": 2, "stream_options": {"include_usage": True}}


async def test_run_stream():
    http, sink = FakeHttp(DONE, final=FINAL), Sink()
    usage = await proto().run(http, sink, "chat", REQ, MODEL, True)
    got = decoded(sink.chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in got if c["choices"]) == "Why not?"
    assert got[-2]["choices"][0]["finish_reason"] == "length" and got[-1]["usage"]["total_tokens"] == 6
    assert usage.prompt_tokens == 4 and usage.completion_tokens == 2
    assert [c.method for c in http.calls] == ["POST", "GET", "GET"]
    assert (
        http.calls[1].url == "http://s/p1"
        and http.calls[1].stream
        and http.calls[2].url == CREATED["urls"]["get"]
    )


async def test_run_non_stream_accumulates():
    sink = Sink()
    usage = await proto().run(FakeHttp(DONE, final=FINAL), sink, "chat", {"messages": USER}, MODEL, False)
    doc = json.loads(sink.body)
    assert sink.chunks == [] and doc["object"] == "chat.completion"
    assert (
        doc["choices"][0]["message"]["content"] == "Why not?" and doc["choices"][0]["finish_reason"] == "stop"
    )
    assert usage.total_tokens == 6


async def test_run_cut_stream_cancels_and_raises():
    http, sink = FakeHttp(DONE[:2], final=FINAL), Sink()
    with pytest.raises(UpstreamError):
        await proto().run(http, sink, "chat", REQ, MODEL, True)
    assert http.calls[-1].url.endswith("/cancel")
    assert not any(
        json.loads(c)["choices"] and json.loads(c)["choices"][0]["finish_reason"] for c in sink.chunks
    )


class StallingHttp(FakeHttp):
    """Streams one output event, then nothing: the client goes away meanwhile."""

    async def events(self, call: HttpCall) -> AsyncIterator[list[tuple[str, bytes]]]:
        self.calls.append(call)
        yield [("output", b"Why ")]
        await asyncio.Event().wait()


async def test_run_cancelled_mid_stream_cancels_the_prediction():
    http, sink = StallingHttp([]), Sink()
    task = asyncio.create_task(proto().run(http, sink, "chat", REQ, MODEL, True))
    for _ in range(100):  # until the first output reached the sink
        if sink.chunks:
            break
        await asyncio.sleep(0.001)
    assert sink.chunks
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert http.calls[-1].method == "POST" and http.calls[-1].url == CREATED["urls"]["cancel"]


async def test_run_error_before_output_leaves_the_sink_untouched():
    sink = Sink()
    with pytest.raises(UpstreamError) as e:
        await proto().run(FakeHttp([("error", b'{"detail":"boom"}')]), sink, "chat", REQ, MODEL, True)
    assert e.value.retryable and not sink.started


async def test_run_final_get_failure_falls_back_to_estimates():
    sink = Sink()
    usage = await proto().run(FakeHttp(DONE, final=UpstreamError("x")), sink, "chat", REQ, MODEL, True)
    assert usage.completion_tokens == 2 and usage.prompt_tokens == 4  # "Tell me a joke": 14 chars


@pytest.mark.parametrize(
    "created",
    [
        {"id": "p", "status": "starting", "urls": {"get": "x"}},
        {"id": "p", "status": "failed", "error": "bad"},
    ],
)
async def test_run_create_without_stream_or_failed_raises(created):
    with pytest.raises(UpstreamError):
        await proto().run(FakeHttp(DONE, created=created), Sink(), "chat", REQ, MODEL, True)


async def test_run_refuses_other_operations():
    with pytest.raises(InvalidRequest):
        await proto().run(FakeHttp(DONE), Sink(), "embeddings", {"input": "x"}, MODEL, False)


async def test_outputs_match_the_openai_schema():
    sink = Sink()
    await proto().run(FakeHttp(DONE, final=FINAL), sink, "chat", REQ, MODEL, True)
    _validate_stream([json.loads(c) for c in sink.chunks])
    await proto().run(FakeHttp(DONE, final=FINAL), sink, "chat", {"messages": USER}, MODEL, False)
    _validate("CreateChatCompletionResponse", json.loads(sink.body))
