"""services/worker/adapters/openai.py: OpenAI-compatible request building, stream passthrough, errors, models."""

from __future__ import annotations

import json

import pytest

from libs.common.config import ProviderConfig
from libs.common.errors import (
    GatewayTimeout,
    Overloaded,
    RateLimited,
    UpstreamAuthError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRejected,
)
from libs.common.profiles import PRESETS, profile_for
from services.worker.adapters.openai import OpenAIProtocol, PassthroughStream
from tests.schema import validate, validate_sse_chunks

USER = [{"role": "user", "content": "hi"}]


def proto(preset: str = "openai", **kw: object) -> OpenAIProtocol:
    cfg = ProviderConfig(id=kw.pop("id", "up"), kind="openai", preset=preset, **kw)  # type: ignore[arg-type]
    return OpenAIProtocol(cfg, profile_for("openai", preset))


# -- request building ---------------------------------------------------------------------


def test_chat_request_replaces_model_and_keeps_unknown_fields():
    p = proto(api_key="sk-1")
    req = {"model": "client-alias", "messages": USER, "top_k": 5, "x_vendor": {"a": [1]}, "temperature": 0.3}
    call = p.chat_request(req, "gpt-4o-mini", False)
    assert (call.method, call.url, call.stream) == (
        "POST",
        "https://api.openai.com/v1/chat/completions",
        False,
    )
    body = json.loads(call.body)
    assert body == {
        "model": "gpt-4o-mini",
        "messages": USER,
        "top_k": 5,
        "x_vendor": {"a": [1]},
        "temperature": 0.3,
    }
    assert call.headers["Authorization"] == "Bearer sk-1"
    assert call.headers["Content-Type"] == "application/json"


def test_no_auth_header_without_key_and_extra_headers():
    p = proto("ollama", headers={"X-Org": "o"})
    call = p.chat_request({"messages": USER}, "llama3", False)
    assert "Authorization" not in call.headers and "api-key" not in call.headers
    assert call.headers["X-Org"] == "o"
    assert call.url == "http://127.0.0.1:11434/v1/chat/completions"


NO_AUTH_PRESETS = sorted(name for name, p in PRESETS.items() if p.auth == "none" and p.kind == "openai")


@pytest.mark.parametrize("preset", NO_AUTH_PRESETS)
def test_key_on_a_keyless_preset_is_sent_as_bearer(preset):
    # vLLM, llama.cpp, LM Studio, TGI, ... can be started with an API key
    call = proto(preset, api_key="local-secret").chat_request({"messages": USER}, "m", False)
    assert call.headers["Authorization"] == "Bearer local-secret"
    assert proto(preset).models_request().headers.get("Authorization") is None


def test_keyless_presets_are_the_local_servers():
    assert {"ollama", "vllm", "llamacpp", "lmstudio", "localai", "tgi", "textgen-webui"} <= set(
        NO_AUTH_PRESETS
    )


def test_base_url_override_and_trailing_slash():
    call = proto(base_url="http://127.0.0.1:9999/v1/").chat_request({"messages": USER}, "m", False)
    assert call.url == "http://127.0.0.1:9999/v1/chat/completions"


def test_legacy_max_tokens_for_ollama():
    body = json.loads(
        proto("ollama").chat_request({"messages": USER, "max_completion_tokens": 42}, "m", False).body
    )
    assert body["max_tokens"] == 42 and "max_completion_tokens" not in body
    # not for servers that know max_completion_tokens
    body2 = json.loads(
        proto("openai").chat_request({"messages": USER, "max_completion_tokens": 42}, "m", False).body
    )
    assert body2["max_completion_tokens"] == 42 and "max_tokens" not in body2


def test_stream_forces_include_usage_when_profile_streams_usage():
    body = json.loads(proto().chat_request({"messages": USER}, "m", True).body)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    body2 = json.loads(
        proto()
        .chat_request(
            {"messages": USER, "stream_options": {"include_usage": False, "include_obfuscation": False}},
            "m",
            True,
        )
        .body
    )
    assert body2["stream_options"] == {"include_usage": True, "include_obfuscation": False}


def test_stream_without_stream_usage_profile_asks_nothing():
    body = json.loads(proto("tgi").chat_request({"messages": USER}, "m", True).body)
    assert body["stream"] is True and "stream_options" not in body


def test_non_stream_body_has_no_stream_options_added():
    body = json.loads(proto().chat_request({"messages": USER}, "m", False).body)
    assert "stream" not in body and "stream_options" not in body


def test_azure_request():
    p = proto(
        "azure",
        base_url="https://res.openai.azure.com",
        api_key="az-key",
        query={"api-version": "2024-10-21"},
    )
    call = p.chat_request({"messages": USER}, "gpt4o-deploy", False)
    assert (
        call.url
        == "https://res.openai.azure.com/openai/deployments/gpt4o-deploy/chat/completions?api-version=2024-10-21"
    )
    assert call.headers["api-key"] == "az-key" and "Authorization" not in call.headers
    emb = p.embeddings_request({"input": "x"}, "emb-deploy")
    assert (
        emb.url
        == "https://res.openai.azure.com/openai/deployments/emb-deploy/embeddings?api-version=2024-10-21"
    )
    cmp = p.completions_request({"prompt": "x"}, "inst", False)
    assert (
        cmp.url == "https://res.openai.azure.com/openai/deployments/inst/completions?api-version=2024-10-21"
    )


def test_completions_and_embeddings_paths():
    p = proto("together", api_key="t")
    call = p.completions_request({"prompt": "x", "model": "a"}, "b", True)
    assert call.url == "https://api.together.xyz/v1/completions" and call.stream
    assert json.loads(call.body)["model"] == "b"
    emb = p.embeddings_request({"input": ["x"], "model": "a", "dimensions": 3}, "e")
    assert emb.url == "https://api.together.xyz/v1/embeddings" and emb.method == "POST"
    assert json.loads(emb.body) == {"input": ["x"], "model": "e", "dimensions": 3}


def test_chat_response_passes_body_through_and_reads_usage():
    body = json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hey", "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": 3,
                "completion_tokens": 2,
                "total_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 1},
                "completion_tokens_details": {"reasoning_tokens": 1},
            },
            "vendor_extra": True,
        }
    ).encode()
    out = proto().chat_response(body, "m")
    assert out.body is body
    assert (
        out.usage.prompt_tokens,
        out.usage.completion_tokens,
        out.usage.cached_tokens,
        out.usage.reasoning_tokens,
    ) == (3, 2, 1, 1)


def test_chat_response_invalid_json():
    with pytest.raises(UpstreamError):
        proto().chat_response(b"<html>", "m")


# -- PassthroughStream ------------------------------------------------------------------------

CHUNK_HEAD = '{"id":"chatcmpl-9","object":"chat.completion.chunk","created":1700000000,"model":"m",'


def chunk(delta: dict, finish: str | None = None, with_usage_null: bool = False) -> bytes:
    c = (
        CHUNK_HEAD
        + '"choices":'
        + json.dumps(
            [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], separators=(",", ":")
        )
    )
    return (c + (',"usage":null}' if with_usage_null else "}")).encode()


USAGE_CHUNK = (
    CHUNK_HEAD + '"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}'
).encode()


def run_stream(s: PassthroughStream, events: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for data in events:
        out.extend(s.feed("", data))
    out.extend(s.close())
    return out


def test_chunks_pass_through_byte_identical():
    pieces = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo \u00e9"}),
        chunk({}, "stop"),
    ]
    s = PassthroughStream("up", "m", include_usage=False)
    out = run_stream(s, [*pieces, b"[DONE]"])
    assert out == pieces
    assert all(a is b for a, b in zip(out, pieces, strict=True))
    validate_sse_chunks([json.loads(p) for p in out])


def test_keepalive_noise_is_skipped():
    # SSE comments (": ping") never reach the translator: the parser drops them.
    s = PassthroughStream("up", "m", include_usage=False)
    assert s.feed("", b"") == []


@pytest.mark.parametrize("data", [b": ping", b"garbage", b"[1]", b'"text"', b"{not json", b'{"a": 1} x'])
def test_a_data_line_that_is_not_a_json_object_breaks_the_stream(data):
    for include_usage in (False, True):
        s = PassthroughStream("up", "m", include_usage=include_usage)
        with pytest.raises(UpstreamProtocolError):
            s.feed("", data)


def test_usage_chunk_dropped_when_client_did_not_ask():
    s = PassthroughStream("up", "m", include_usage=False)
    pieces = [chunk({"content": "x"}), chunk({}, "stop")]
    out = run_stream(s, [*pieces, USAGE_CHUNK, b"[DONE]"])
    assert out == pieces
    assert (s.usage.prompt_tokens, s.usage.completion_tokens) == (7, 3)


def test_usage_chunk_kept_when_asked():
    s = PassthroughStream("up", "m", include_usage=True)
    pieces = [
        chunk({"content": "x"}, with_usage_null=True),
        chunk({}, "stop", with_usage_null=True),
        USAGE_CHUNK,
    ]
    out = run_stream(s, [*pieces, b"[DONE]"])
    assert out == pieces
    assert (s.usage.prompt_tokens, s.usage.completion_tokens) == (7, 3)
    validate_sse_chunks([json.loads(p) for p in out])


def test_usage_synthesized_when_asked_and_upstream_sent_none():
    # a TGI-like server: the profile does not ask for usage, the client did
    assert profile_for("openai", "tgi").stream_usage is False
    s = proto("tgi").chat_stream("served-model", include_usage=True)
    pieces = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": " world!"}),
        chunk({}, "stop"),
    ]
    out = run_stream(s, [*pieces, b"[DONE]"])
    assert out[:4] == pieces and len(out) == 5
    last, first = json.loads(out[4]), json.loads(pieces[0])
    # The synthesized usage chunk belongs to the stream: same id, created and model.
    assert last["choices"] == [] and last["object"] == "chat.completion.chunk"
    assert (last["id"], last["created"], last["model"]) == (first["id"], first["created"], first["model"])
    # Estimated from the streamed text: 12 bytes, 4 bytes a token.
    assert (
        last["usage"]["completion_tokens"] == 3
        and last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 3
    )
    validate("CreateChatCompletionStreamResponse", last)
    assert s.usage is not None and s.usage.completion_tokens == 3 and s.usage.estimated


def test_no_synthesized_usage_when_not_asked():
    s = PassthroughStream("up", "m", include_usage=False)
    assert run_stream(s, [chunk({"content": "a"}), b"[DONE]"]) == [chunk({"content": "a"})]


def test_usage_chunk_with_spaced_json():
    spaced = json.dumps(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        }
    ).encode()
    assert b'"usage": {' in spaced
    s = PassthroughStream("up", "m", include_usage=False)
    out = run_stream(s, [chunk({"content": "x"}), spaced, b"[DONE]"])
    assert out == [chunk({"content": "x"})]
    assert s.usage is not None and s.usage.completion_tokens == 3


@pytest.mark.parametrize(
    "data",
    [
        b'{"error":{"message":"overloaded mid-stream","type":"server_error"}}',
        b'{"object":"error","error":"boom"}',
        b'{"id":"x","choices":[],"error":{"message":"oops","code":500}}',
    ],
)
def test_error_chunk_raises(data):
    s = PassthroughStream("up", "m", include_usage=True)
    s.feed("", chunk({"content": "partial"}))
    with pytest.raises(UpstreamError) as e:
        s.feed("", data)
    assert e.value.provider == "up" and "'up'" in e.value.message


def test_invalid_json_chunk_with_error_marker_raises():
    s = PassthroughStream("up", "m", include_usage=False)
    with pytest.raises(UpstreamError):
        s.feed("", b'{"error": truncated')


def test_close_without_done_raises():
    s = PassthroughStream("up", "m", include_usage=True)
    s.feed("", chunk({"content": "a"}))
    assert not s.done
    with pytest.raises(UpstreamError) as e:
        s.close()
    assert "[DONE]" in e.value.message and e.value.provider == "up"


def test_done_sets_done():
    s = PassthroughStream("up", "m", include_usage=False)
    assert s.feed("", b"[DONE]") == [] and s.done


# -- error mapping ----------------------------------------------------------------------------


def err(status: int, body: bytes, headers: dict[str, str] | None = None):
    return proto(id="prov").error(status, body, headers or {})


def test_error_openai_shape():
    body = json.dumps(
        {
            "error": {
                "message": "Unknown parameter: 'foo'.",
                "type": "invalid_request_error",
                "param": "foo",
                "code": "unknown_parameter",
            }
        }
    ).encode()
    e = err(400, body)
    assert type(e) is UpstreamRejected
    assert (e.status, e.type, e.message, e.param, e.code, e.provider) == (
        400,
        "invalid_request_error",
        "Unknown parameter: 'foo'.",
        "foo",
        "unknown_parameter",
        "prov",
    )


def test_error_openai_shape_429_with_retry_after():
    body = json.dumps(
        {
            "error": {
                "message": "Rate limit reached",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
    ).encode()
    e = err(429, body, {"Retry-After": "12"})
    assert type(e) is RateLimited and e.retry_after == 12.0 and e.message == "Rate limit reached"
    e2 = err(429, body, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert type(e2) is RateLimited and e2.retry_after is None


def test_error_vllm_flat_shape_int_code():
    body = json.dumps(
        {
            "object": "error",
            "message": "max_tokens is too large",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    ).encode()
    e = err(400, body)
    assert type(e) is UpstreamRejected
    assert (e.message, e.type, e.code) == ("max_tokens is too large", "BadRequestError", "400")
    assert isinstance(e.code, str)


def test_error_openai_shape_int_code_becomes_str():
    e = err(404, json.dumps({"error": {"message": "nope", "type": "not_found", "code": 404}}).encode())
    assert e.code == "404" and e.status == 404


def test_error_tgi_shape():
    e = err(
        422,
        json.dumps(
            {
                "error": "Input validation error: `inputs` must have less than 4096 tokens",
                "error_type": "validation",
            }
        ).encode(),
    )
    assert type(e) is UpstreamRejected and e.status == 422
    assert e.message.startswith("Input validation error") and e.code == "validation"


def test_error_non_json_body():
    e = err(502, b"<html><body>Bad Gateway</body></html>")
    assert type(e) is UpstreamError and "Bad Gateway" in e.message
    e2 = err(400, b"plain text complaint\n")
    assert type(e2) is UpstreamRejected and e2.message == "plain text complaint"
    e3 = err(500, b"")
    assert type(e3) is UpstreamError and "HTTP 500" in e3.message


def test_error_statuses_map_through_common_table():
    body = json.dumps({"error": {"message": "m", "type": "t"}}).encode()
    assert type(err(401, body)) is UpstreamAuthError
    assert type(err(503, body)) is Overloaded
    assert type(err(504, body)) is GatewayTimeout
    e = err(500, body)
    assert type(e) is UpstreamError and e.type == "api_error"  # the upstream's type is not kept for 5xx


# -- models ---------------------------------------------------------------------------------


def test_models_openai_shape():
    p = proto(api_key="k")
    call = p.models_request()
    assert (
        call.method == "GET"
        and call.url == "https://api.openai.com/v1/models"
        and call.headers["Authorization"] == "Bearer k"
    )
    body = json.dumps(
        {
            "object": "list",
            "data": [{"id": "gpt-4o", "object": "model"}, {"id": "o3"}, {"object": "model"}, "junk"],
        }
    ).encode()
    assert p.models_response(body) == ["gpt-4o", "o3"]


def test_models_ollama_shape():
    p = proto("ollama")
    call = p.models_request()
    assert call.url == "http://127.0.0.1:11434/api/tags"
    body = json.dumps(
        {
            "models": [
                {"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 1},
                {"model": "qwen2:7b"},
            ]
        }
    ).encode()
    assert p.models_response(body) == ["llama3.2:latest", "qwen2:7b"]
