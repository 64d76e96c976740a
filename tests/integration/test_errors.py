"""Errors at the gateway's HTTP surface: statuses, OpenAI's error shape, failover, deadlines.

Every error body is validated against the OpenAI ``ErrorResponse`` schema (all four keys
message/type/param/code present). Requests go through the official openai SDK
(max_retries=0) unless the SDK cannot send them (malformed JSON, missing auth, chunked bodies).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from tests.emulators.openai_upstream import UpstreamState
from tests.gateway import Gateway, config, eventually, in_process, openai_provider, serving
from tests.schema import validate

MODEL = "gpt-4o-mini"
MSGS = [{"role": "user", "content": "hello"}]
SERVICES_WITHOUT_WORKER = ("ledger", "health", "router", "ingress")


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def state(upstream) -> UpstreamState:
    return upstream[0]


@contextlib.asynccontextmanager
async def gateway(
    nats_url: str,
    base: str,
    *,
    candidates: int = 1,
    limits: dict[str, Any] | None = None,
    names: tuple[str, ...] | None = None,
    provider_extra: dict[str, Any] | None = None,
    api_key: str = "sk-anything",
    **overrides: Any,
) -> AsyncIterator[Gateway]:
    """Model "m" -> gpt-4o-mini at providers a (, b, c ...), tried in that order."""
    pids = "abcd"[:candidates]
    cfg = config(
        providers=[openai_provider(p, base, [MODEL], **(provider_extra or {})) for p in pids],
        models=[{"name": "m", "targets": [{"provider": p, "model": MODEL} for p in pids]}],
        **({"limits": limits} if limits else {}),
        **overrides,
    )
    kw = {"names": names} if names else {}
    async with in_process(cfg, nats_url, **kw) as gw, gw.openai(api_key=api_key) as client:
        gw._sdk = client  # type: ignore[attr-defined]  # one client per gateway: creating one costs ~0.2 s
        yield gw


def sdk(gw: Gateway) -> openai.AsyncOpenAI:
    return gw._sdk  # type: ignore[attr-defined]


def check_error(body: Any, *, type: str | None = None, param: Any = ..., code: Any = ...) -> dict[str, Any]:  # noqa: A002
    """OpenAI's error shape: exactly {"error": {message, type, param, code}} with a message."""
    validate("ErrorResponse", body)
    err = body["error"]
    assert set(body) == {"error"}, body
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"].strip()
    if type is not None:
        assert err["type"] == type, err
    if param is not ...:
        assert err["param"] == param, err
    if code is not ...:
        assert err["code"] == code, err
    return err


async def sdk_error(aw: Awaitable[Any], status: int) -> tuple[openai.APIStatusError, dict[str, Any]]:
    """Await an SDK call that must fail with ``status``; (exception, validated error body)."""
    with pytest.raises(openai.APIStatusError) as exc:
        await aw
    e = exc.value
    assert e.status_code == status, (e.status_code, e.response.text)
    assert e.response.headers["content-type"].startswith("application/json")
    body = e.response.json()
    check_error(body)
    return e, body


_NO_BODY = object()


async def raw(
    gw: Gateway,
    method: str,
    path: str,
    data: Any = None,
    headers: dict[str, str] | None = None,
    *,
    js: Any = _NO_BODY,
) -> tuple[int, Any, Any]:
    """(status, headers, parsed JSON body) of one raw HTTP request to the ingress.

    ``data`` is sent as is (bytes, str, async iterable, or a dict/list as JSON); ``js`` is any
    JSON value (``None`` -> ``null``).
    """
    if js is not _NO_BODY:
        data = json.dumps(js).encode()
    elif isinstance(data, (dict, list)):
        data = json.dumps(data).encode()
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"http://127.0.0.1:{gw.port}{path}", data=data, headers=headers or {}) as r,
    ):
        text = await r.read()
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        return r.status, r.headers, body


# --------------------------------------------------------------------------- 400: the client's body


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
async def test_malformed_json_400(nats_server, upstream, path):
    state, base = upstream
    async with gateway(nats_server.url, base) as gw:
        for data in (
            b'{"model": "m", "messages": [',
            b"not json at all",
            b'{"model": "m",}',
            b"\xff\xfe\x00garbage",
            b"",
            b'\xef\xbb\xbf{"model": "m"}',  # a BOM is not JSON
            b"{'model': 'm'}",
            b'{"model": "m", "input": "x", "prompt": "x", "messages": [{"role": "user", "content": "x"}]} trailing',
        ):
            status, headers, body = await raw(gw, "POST", path, data, {"Content-Type": "application/json"})
            assert status == 400, (data, status, body)
            check_error(body, type="invalid_request_error", param=None, code="invalid_json")
            assert headers["x-request-id"]
    assert state.request_count == 0


async def test_invalid_parameters_name_param(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base) as gw:
        chat = sdk(gw).chat.completions
        cases: list[tuple[dict[str, Any], str]] = [
            ({"messages": MSGS, "temperature": 3}, "temperature"),
            ({"messages": MSGS, "top_p": 1.5}, "top_p"),
            ({"messages": MSGS, "presence_penalty": -2.5}, "presence_penalty"),
            ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
            ({"messages": [MSGS[0], {"role": "bogus", "content": "y"}]}, "messages[1].role"),
            ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
            ({"messages": []}, "messages"),
            ({"messages": MSGS, "stream_options": {"include_usage": True}}, "stream_options"),
            ({"messages": MSGS, "n": 0}, "n"),
            ({"messages": MSGS, "n": 129}, "n"),
            ({"messages": MSGS, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
            ({"messages": MSGS, "tool_choice": "auto"}, "tool_choice"),
            ({"messages": MSGS, "parallel_tool_calls": True}, "parallel_tool_calls"),
            ({"messages": MSGS, "top_logprobs": 2}, "top_logprobs"),
            ({"messages": MSGS, "max_tokens": 0}, "max_tokens"),
            ({"messages": MSGS, "max_completion_tokens": 0}, "max_completion_tokens"),
            ({"messages": MSGS, "response_format": {"type": "xml"}}, "response_format.type"),
            (
                {"messages": MSGS, "tools": [{"type": "function", "function": {"name": "bad name!"}}]},
                "tools[0].function.name",
            ),
        ]
        for kw, param in cases:
            _, body = await sdk_error(chat.create(model="m", **kw), 400)
            check_error(body, type="invalid_request_error", param=param)

        # Fields the SDK insists on: sent raw.
        for data, param in (
            ({"model": "m"}, "messages"),
            ({"messages": MSGS}, "model"),
            ({"model": "m", "messages": MSGS, "stream": "yes"}, "stream"),
        ):
            status, _, body = await raw(gw, "POST", "/v1/chat/completions", data)
            assert status == 400
            check_error(body, type="invalid_request_error", param=param)

        _, body = await sdk_error(sdk(gw).completions.create(model="m", prompt="x", n=0), 400)
        check_error(body, param="n")
        status, _, body = await raw(gw, "POST", "/v1/completions", {"model": "m"})
        assert status == 400
        check_error(body, param="prompt")
        _, body = await sdk_error(sdk(gw).embeddings.create(model="m", input=""), 400)
        check_error(body, param="input")
        _, body = await sdk_error(sdk(gw).embeddings.create(model="m", input="x", dimensions=0), 400)
        check_error(body, param="dimensions")
        status, _, body = await raw(
            gw, "POST", "/v1/embeddings", {"model": "m", "input": "x", "encoding_format": "hex"}
        )
        assert status == 400
        check_error(body, param="encoding_format")
    assert state.request_count == 0  # all rejected at the ingress


FUZZ_BODIES: list[Any] = [
    [],
    "str",
    1,
    None,
    True,
    {},
    {"model": 1},
    {"model": "m", "messages": "x"},
    {"model": "m", "messages": [[]]},
    {"model": "m", "messages": [{}]},
    {"model": "m", "messages": [{"role": "user"}]},
    {"model": "m", "messages": [{"role": None, "content": "x"}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]},
    {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]}],
    },
    {"model": "m", "messages": [{"role": "tool", "content": "x"}]},
    {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"type": "function"}]}]},
    {"model": ["m"], "messages": MSGS},
    {"model": {"$ne": 1}, "messages": MSGS},
    {"model": "m", "messages": MSGS, "temperature": "hot"},
    {"model": "m", "messages": MSGS, "temperature": 1e400},
    {"model": "m", "messages": MSGS, "n": 1.5},
    {"model": "m", "messages": MSGS, "stop": [1, 2]},
    {"model": "m", "messages": MSGS, "stop": []},
    {"model": "m", "messages": MSGS, "logit_bias": {"1": 1000}},
    {"model": "m", "messages": MSGS, "tools": "all"},
    {
        "model": "m",
        "messages": MSGS,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}],
    },
    {"model": "m", "messages": MSGS, "tool_choice": {"type": "function"}},
    {"model": "m", "messages": MSGS, "stream": True, "stream_options": "usage"},
    {"model": "m", "messages": [{"role": "user", "content": [[[[[[[[[[[[["deep"]]]]]]]]]]]]]}]},
]


async def test_fuzz_client_mistakes_are_400_never_500(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base) as gw:
        for data in FUZZ_BODIES:
            status, _, body = await raw(gw, "POST", "/v1/chat/completions", js=data)
            assert status == 400, (data, status, body)
            check_error(body, type="invalid_request_error")
        for path, data in (
            ("/v1/completions", {"model": "m", "prompt": ["a", 1]}),
            ("/v1/completions", {"model": "m", "prompt": []}),
            ("/v1/completions", {"model": "m", "prompt": {"text": "x"}}),
            ("/v1/embeddings", {"model": "m", "input": ["a", ""]}),
            ("/v1/embeddings", {"model": "m", "input": [[1, 2], "x"]}),
            ("/v1/embeddings", {"model": "m", "input": None}),
            ("/v1/embeddings", {"model": "m", "input": ["x"] * 2049}),
        ):
            status, _, body = await raw(gw, "POST", path, data)
            assert status == 400, (path, data, status, body)
            check_error(body, type="invalid_request_error")
        assert state.request_count == 0
        # Out of int64 range: the gateway forwards it, the upstream's 400 comes back (still a 400).
        big_seed = {"model": "m", "messages": MSGS, "seed": 123456789012345678901234567890}
        status, _, body = await raw(gw, "POST", "/v1/chat/completions", js=big_seed)
        assert status == 400, (status, body)
        check_error(body, type="invalid_request_error", param="seed")


async def test_fuzz_deeply_nested_junk_is_400(nats_server, upstream):
    state, base = upstream
    deep = "[" * 5000 + "]" * 5000
    deep_obj = '{"a":' * 5000 + "1" + "}" * 5000
    msgs = json.dumps(MSGS)
    async with gateway(nats_server.url, base) as gw:
        for data in (
            f'{{"model": "m", "messages": {msgs}, "my_extension": {deep}}}',
            f'{{"model": "m", "messages": {msgs}, "metadata": {deep_obj}}}',
            f'{{"model": "m", "messages": {msgs}, "tools": [{{"type": "function", "function": '
            f'{{"name": "f", "parameters": {{"x": {deep}}}}}}}]}}',
        ):
            status, _, body = await raw(gw, "POST", "/v1/chat/completions", data.encode())
            assert status == 400, (data[:80], status, body)
            check_error(body, type="invalid_request_error")
    assert state.request_count == 0


@pytest.mark.parametrize(
    "model", ["m\r\nX-Injected: 1", "m\nx", "m x", "*", ">", "sw.route.chat", "m" * 5000, "ü-模型"]
)
async def test_unknown_or_odd_model_names_are_404(nats_server, upstream, model):
    """Model names end up in NATS headers and subjects' neighbourhood: odd ones are just unknown."""
    state, base = upstream
    async with gateway(nats_server.url, base) as gw:
        start = time.monotonic()
        _, body = await sdk_error(sdk(gw).chat.completions.create(model=model, messages=MSGS), 404)
        assert time.monotonic() - start < 1.5
        check_error(body, type="invalid_request_error", param="model", code="model_not_found")
    assert state.request_count == 0


# --------------------------------------------------------------------------- 401 / 403


async def test_auth_401_when_keys_configured(nats_server, upstream):
    state, base = upstream
    keys = [{"key": "sk-gw", "name": "team"}]
    async with gateway(nats_server.url, base, keys=keys) as gw:
        for headers in (
            {},
            {"Authorization": "sk-gw"},
            {"Authorization": "Basic c2stZ3c6"},
            {"Authorization": "Bearer "},
        ):
            status, h, body = await raw(
                gw, "POST", "/v1/chat/completions", {"model": "m", "messages": MSGS}, headers
            )
            assert status == 401, (headers, status, body)
            check_error(body, type="invalid_request_error", code="invalid_api_key")
            assert h["x-request-id"]
        _, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS), 401)
        check_error(body, code="invalid_api_key")
        assert "sk-anything" not in body["error"]["message"]  # never echo a secret
        for path in ("/v1/models", "/v1/models/m"):
            status, _, body = await raw(gw, "GET", path, headers={"Authorization": "Bearer nope"})
            assert status == 401
            check_error(body, code="invalid_api_key")
        with pytest.raises(openai.AuthenticationError):
            await sdk(gw).embeddings.create(model="m", input="x")
        assert state.request_count == 0

        async with gw.openai(api_key="sk-gw") as good:
            resp = await good.chat.completions.create(model="m", messages=MSGS)
            assert resp.choices[0].message.content == "You said: hello"
            assert (await good.models.retrieve("m")).id == "m"
        # The client's key never reaches the upstream: the provider's own key does.
        assert state.last_request_headers["Authorization"] == "Bearer sk-test"


async def test_healthz_needs_no_key(nats_server, upstream):
    _, base = upstream
    async with gateway(nats_server.url, base, keys=[{"key": "sk-gw", "name": "team"}]) as gw:
        status, _, body = await raw(gw, "GET", "/healthz")
        assert status == 200 and body["status"] == "ok"


async def test_forbidden_403_allow_models(nats_server, upstream):
    state, base = upstream
    keys = [{"key": "sk-gw", "name": "team", "allow_models": ["m", "gpt-*"]}]
    async with gateway(nats_server.url, base, keys=keys, api_key="sk-gw") as gw:
        client = sdk(gw)
        for model in ("other", "a/gpt-4o-mini", "M"):
            _, body = await sdk_error(client.chat.completions.create(model=model, messages=MSGS), 403)
            check_error(body, type="invalid_request_error", param="model")
            assert "team" in body["error"]["message"] and model in body["error"]["message"]
        _, body = await sdk_error(client.embeddings.create(model="emb-x", input="x"), 403)
        check_error(body, param="model")
        assert state.request_count == 0
        ok = await client.chat.completions.create(model="m", messages=MSGS)
        assert ok.choices[0].message.content == "You said: hello"
        ok = await client.chat.completions.create(model=MODEL, messages=MSGS)  # matches gpt-*
        assert ok.choices[0].message.content == "You said: hello"


# --------------------------------------------------------------------------- 404 / 405 / 413


async def test_unknown_model_404(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base) as gw:
        e, body = await sdk_error(sdk(gw).chat.completions.create(model="nope", messages=MSGS), 404)
        assert isinstance(e, openai.NotFoundError)
        check_error(body, type="invalid_request_error", param="model", code="model_not_found")
        assert "nope" in body["error"]["message"]
        assert e.response.headers["x-request-id"]
        # A stream for an unknown model is a 404 too, not a 200 stream with an error in it.
        _, body = await sdk_error(
            sdk(gw).chat.completions.create(model="nope", messages=MSGS, stream=True), 404
        )
        check_error(body, code="model_not_found")
        _, body = await sdk_error(sdk(gw).embeddings.create(model="nope", input="x"), 404)
        check_error(body, code="model_not_found")
        _, body = await sdk_error(sdk(gw).completions.create(model="nope", prompt="x"), 404)
        check_error(body, code="model_not_found")
    assert state.request_count == 0


async def test_unknown_path_404_and_wrong_method_405(nats_server, upstream):
    _, base = upstream
    async with gateway(nats_server.url, base) as gw:
        for method, path in (
            ("GET", "/v1/nope"),
            ("POST", "/v1/chat/completion"),
            ("POST", "/v2/chat/completions"),
            ("GET", "/"),
            ("POST", "/v1/responses"),
        ):
            status, headers, body = await raw(gw, method, path, b"{}")
            assert status == 404, (method, path, status)
            check_error(body, type="invalid_request_error", code="unknown_url")
            assert headers["Content-Type"].startswith("application/json")
        for method, path in (
            ("GET", "/v1/chat/completions"),
            ("PUT", "/v1/completions"),
            ("DELETE", "/v1/models"),
            ("POST", "/v1/models"),
            ("POST", "/healthz"),
        ):
            status, _, body = await raw(gw, method, path, b"{}")
            assert status == 405, (method, path, status)
            check_error(body, type="invalid_request_error", code="method_not_allowed")
        with pytest.raises(openai.NotFoundError) as exc:
            await sdk(gw).post("/nope", cast_to=object, body={})
        check_error(exc.value.response.json(), code="unknown_url")


async def test_body_over_limit_413(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base, limits={"max_body_bytes": 2048}) as gw:
        big = [{"role": "user", "content": "x" * 4000}]
        e, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=big), 413)
        check_error(body, type="invalid_request_error", code="request_too_large")
        assert "2048" in body["error"]["message"]

        # Chunked (no Content-Length): the limit still holds while reading.
        async def chunks():
            head = b'{"model": "m", "messages": [{"role": "user", "content": "'
            yield head
            for _ in range(8):
                yield b"y" * 512
            yield b'"}]}'

        status, _, body = await raw(gw, "POST", "/v1/chat/completions", chunks())
        assert status == 413, status
        check_error(body, code="request_too_large")
        _, body = await sdk_error(sdk(gw).embeddings.create(model="m", input="z" * 3000), 413)
        check_error(body, code="request_too_large")
        assert state.request_count == 0

        # Just under the limit is fine.
        ok = await sdk(gw).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "w" * 1500}]
        )
        assert ok.choices[0].finish_reason == "stop"


# --------------------------------------------------------------------------- upstream errors


async def test_upstream_429_passed_through_with_retry_after(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base) as gw:
        state.fail_next, state.retry_after = [429], 7
        e, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS), 429)
        assert isinstance(e, openai.RateLimitError)
        assert e.response.headers["retry-after"] == "7"
        check_error(body, type="rate_limit_error", code="rate_limit_exceeded")
        assert "Rate limit reached" in body["error"]["message"]
        assert e.response.headers["x-switchman-provider"] == "a"

        # A fractional Retry-After is rounded up to whole seconds, and streams get the same status.
        state.fail_next, state.retry_after = [429], 1.5
        e, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS, stream=True), 429)
        assert e.response.headers["retry-after"] == "2"
        check_error(body, code="rate_limit_exceeded")
        assert state.request_count == 2


async def test_upstream_400_passed_through_with_message_and_param(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base, candidates=2) as gw:
        # json_object without the word "json": the upstream (not the gateway) rejects it.
        _, body = await sdk_error(
            sdk(gw).chat.completions.create(
                model="m", messages=MSGS, response_format={"type": "json_object"}
            ),
            400,
        )
        check_error(body, type="invalid_request_error", param="messages")
        assert "must contain the word 'json'" in body["error"]["message"]
        assert state.request_count == 1  # the client's mistake is not retried on the next candidate

        # An unknown field the upstream does not accept: its message and param come back as they were.
        e, body = await sdk_error(
            sdk(gw).chat.completions.create(model="m", messages=MSGS, extra_body={"bogus_field": 1}), 400
        )
        check_error(body, type="invalid_request_error", param="bogus_field")
        assert body["error"]["message"] == "Unrecognized request argument supplied: bogus_field"
        assert e.response.headers["x-switchman-attempts"] == "1"
        assert state.request_count == 2

        state.fail_next = [404]  # other 4xx pass through too, without failover
        _, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS), 404)
        check_error(body)
        assert state.request_count == 3


async def test_upstream_500_single_candidate_is_502(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base) as gw:
        state.fail_next = [500]
        e, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS), 502)
        assert isinstance(e, openai.InternalServerError)
        check_error(body, type="api_error")
        assert "'a'" in body["error"]["message"]
        for status in (0, 502):  # a dropped connection and a 502 from the upstream alike
            state.fail_next = [status]
            _, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS), 502)
            check_error(body, type="api_error")
        state.fail_next = [503]
        e, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS), 503)
        check_error(body, type="service_unavailable_error")
        assert e.response.headers["retry-after"]
        state.fail_next = [504]
        _, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS), 504)
        check_error(body)
        assert state.request_count == 5


async def test_upstream_401_is_502_naming_the_provider(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base, provider_extra={"api_key": "sk-wrong-key"}) as gw:
        e, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS), 502)
        check_error(body, type="api_error", code="upstream_authentication_error")
        assert "'a'" in body["error"]["message"]
        assert e.response.headers["x-switchman-provider"] == "a"
        _, body = await sdk_error(sdk(gw).embeddings.create(model="m", input="x"), 502)
        check_error(body, code="upstream_authentication_error")
        _, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS, stream=True), 502)
        check_error(body, code="upstream_authentication_error")
        state.fail_next = [403]
        _, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS), 502)
        check_error(body, code="upstream_authentication_error")
    assert state.request_count == 4


# --------------------------------------------------------------------------- failover


@pytest.mark.parametrize("fault", [500, 429, 503, 0, 401])
async def test_failover_to_next_candidate(nats_server, upstream, fault):
    state, base = upstream
    async with gateway(nats_server.url, base, candidates=2) as gw:
        state.fail_next, state.retry_after = [fault], 30
        raw_resp = await sdk(gw).chat.completions.with_raw_response.create(model="m", messages=MSGS)
        body = json.loads(raw_resp.content)
        validate("CreateChatCompletionResponse", body)
        assert body["choices"][0]["message"]["content"] == "You said: hello"
        assert raw_resp.headers["x-switchman-provider"] == "b"
        assert raw_resp.headers["x-switchman-attempts"] == "2"
        assert raw_resp.headers["x-switchman-route-reason"] == "ordered"
        assert state.request_count == 2
        assert [r.body["model"] for r in state.requests] == [MODEL, MODEL]


async def test_all_candidates_fail(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base, candidates=3) as gw:
        state.fail_next = [500, 503, 502]
        e, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS), 502)
        check_error(body, type="api_error")
        assert "'c'" in body["error"]["message"]  # the last candidate's error
        h = e.response.headers
        assert h["x-should-retry"] == "false"
        assert h["x-switchman-attempts"] == "3" and h["x-switchman-provider"] == "c"
        assert state.request_count == 3

        # The official SDK honours x-should-retry: false even with retries enabled.
        state.fail_next = [500, 500, 500]
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="x", max_retries=2) as retrying:
            with pytest.raises(openai.InternalServerError):
                await retrying.chat.completions.create(model="m", messages=MSGS)
        assert state.request_count == 6

        state.fail_next = [429, 429, 429]
        state.retry_after = 3
        e, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS), 429)
        check_error(body, code="rate_limit_exceeded")
        assert e.response.headers["x-should-retry"] == "false"
        assert e.response.headers["retry-after"] == "3"


async def test_no_provider_503_fast(nats_server, upstream):
    _, base = upstream
    cfg = config(
        providers=[openai_provider("nobody-serves-this", base, [MODEL])],
        models=[{"name": "m", "targets": [{"provider": "nobody-serves-this", "model": MODEL}]}],
    )
    async with in_process(cfg, nats_server.url, names=SERVICES_WITHOUT_WORKER) as gw, gw.openai() as client:
        for stream in (False, True):
            start = time.monotonic()
            e, body = await sdk_error(
                client.chat.completions.create(model="m", messages=MSGS, stream=stream), 503
            )
            elapsed = time.monotonic() - start
            assert elapsed < 1.0, f"no-provider took {elapsed:.2f}s (ack timeout is 2 s)"
            check_error(body, type="service_unavailable_error", code="no_provider_available")
            assert e.response.headers["retry-after"]


async def test_no_router_503_fast(nats_server, upstream):
    _, base = upstream
    cfg = config(providers=[openai_provider("a", base, [MODEL])])
    async with in_process(cfg, nats_server.url, names=("ingress",)) as gw, gw.openai() as client:
        start = time.monotonic()
        _, body = await sdk_error(client.chat.completions.create(model=MODEL, messages=MSGS), 503)
        assert time.monotonic() - start < 1.0
        check_error(body, type="service_unavailable_error", code="no_provider_available")


# --------------------------------------------------------------------------- deadlines and timeouts


async def test_request_deadline_504(nats_server, upstream):
    state, base = upstream
    async with gateway(nats_server.url, base, limits={"request_timeout_s": 1.0}) as gw:
        state.delay_first_byte_s = 3
        for stream in (False, True):
            state.reset_observations()
            start = time.monotonic()
            e, body = await sdk_error(
                sdk(gw).chat.completions.create(model="m", messages=MSGS, stream=stream), 504
            )
            elapsed = time.monotonic() - start
            assert 0.9 <= elapsed < 1.6, elapsed
            check_error(body, type="api_error", code="timeout")
            assert e.response.headers["x-request-id"]
            # The abandoned upstream call is cancelled, not left running until it answers.
            await eventually(lambda: state.cancelled == 1 and state.in_flight == 0, 1.0, "upstream cancel")


async def test_deadline_does_not_fail_over(nats_server, upstream):
    """A timeout at the deadline ends the request: no candidate gets a request it cannot finish."""
    state, base = upstream
    async with gateway(nats_server.url, base, candidates=2, limits={"request_timeout_s": 1.0}) as gw:
        state.delay_first_byte_s = 3
        start = time.monotonic()
        _, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS), 504)
        assert time.monotonic() - start < 1.6
        check_error(body, code="timeout")
        await asyncio.sleep(0.3)
        assert state.request_count == 1


async def test_slow_upstream_is_not_killed_by_idle_timeout(nats_server, upstream):
    """Workers send keep-alives while the upstream is silent: idle_timeout only catches dead workers."""
    state, base = upstream
    async with gateway(nats_server.url, base, limits={"idle_timeout_s": 0.6}) as gw:
        state.delay_first_byte_s = 1.5
        start = time.monotonic()
        raw_resp = await sdk(gw).chat.completions.with_raw_response.create(model="m", messages=MSGS)
        assert time.monotonic() - start >= 1.5
        body = json.loads(raw_resp.content)
        validate("CreateChatCompletionResponse", body)
        assert body["choices"][0]["message"]["content"] == "You said: hello"
        assert raw_resp.headers["x-switchman-attempts"] == "1"
        assert state.request_count == 1

        stream = await sdk(gw).chat.completions.create(model="m", messages=MSGS, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "You said: hello"


async def test_dead_worker_hits_idle_timeout(nats_server, upstream):
    """A worker that acked and then went silent (no keep-alives) fails the request with 504."""
    state, base = upstream
    async with gateway(nats_server.url, base, limits={"idle_timeout_s": 0.6}) as gw:
        worker = gw.services["worker"]
        state.hang = True
        # Silence the worker's keep-alives as if its process had frozen after the ack.
        worker.heartbeats.cancel()
        worker.keepalives.cancel()
        start = time.monotonic()
        _, body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS), 504)
        assert 0.5 <= time.monotonic() - start < 1.5
        check_error(body, type="api_error", code="timeout")
        await eventually(lambda: state.in_flight == 0, 1.0, "upstream cancel")
        state.hang = False


# --------------------------------------------------------------------------- upstreams that misbehave


@contextlib.asynccontextmanager
async def odd_upstream(status: int, body: bytes, content_type: str) -> AsyncIterator[str]:
    """An upstream that answers every request with one fixed (non-OpenAI) response."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=body, content_type=content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with serving(app) as base:
        yield base


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected"),
    [
        (200, b"this is not json", "application/json", 502),
        (200, b"<html>ok</html>", "text/html", 502),
        (502, b"<html><body>502 Bad Gateway (nginx)</body></html>", "text/html", 502),
        (500, b"", "text/plain", 502),
        (
            400,
            b'{"object": "error", "message": "flat vLLM error", "type": "BadRequestError", "param": "x"}',
            "application/json",
            400,
        ),
        (429, b"slow down", "text/plain", 429),
    ],
)
async def test_non_openai_upstream_answers_become_openai_errors(
    nats_server, status, body, content_type, expected
):
    async with odd_upstream(status, body, content_type) as base, gateway(nats_server.url, base) as gw:
        e, err_body = await sdk_error(sdk(gw).chat.completions.create(model="m", messages=MSGS), expected)
        err = check_error(err_body)
        if expected == 502:
            assert "'a'" in err["message"]
        if status == 502:
            assert "Bad Gateway" in err["message"]
        if status == 400:
            assert err["message"] == "flat vLLM error" and err["param"] == "x"
        assert e.response.headers["x-switchman-provider"] == "a"
