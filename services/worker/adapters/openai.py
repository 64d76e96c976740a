"""Any OpenAI-compatible HTTP API (OpenAI, Azure, Groq, ..., Ollama, vLLM, llama.cpp).

The request is the client's body with ``model`` replaced (and the profile's fixes:
``max_completion_tokens`` → ``max_tokens`` for servers that only know the latter,
usage requested in streams for accounting); unknown client fields pass through.
Responses and stream chunks pass through byte for byte; only the chunks that carry
usage or an error are decoded. The usage chunk is removed when the gateway asked
for it and the client did not; it is synthesized when the client asked and the
server does not send one: its completion tokens estimated from the streamed text
(:mod:`services.worker.tokens`), flagged ``estimated`` (the worker adds the
prompt's estimate to the usage record).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import msgspec

from libs.common.errors import SwitchmanError, UpstreamError, UpstreamProtocolError, upstream_status_error

from .. import tokens
from ..chunks import Usage, new_id, now
from .base import HttpCall, Protocol, StreamTranslator, Translated, retry_after

_enc = msgspec.json.Encoder()


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None


class _WithUsage(msgspec.Struct):
    usage: _Usage | None = None


class _StreamChunk(msgspec.Struct):
    choices: list[dict[str, Any]] = []
    usage: _Usage | None = None
    error: Any = None
    model: str = ""
    id: str = ""
    object: str = "chat.completion.chunk"
    created: int = 0


class _Err(msgspec.Struct):
    message: str = ""
    type: str | None = None
    param: str | None = None
    code: Any = None


class _ErrBody(msgspec.Struct):
    error: _Err | str | None = None
    # vLLM (older) flat shape: {"object": "error", "message", "type", "param", "code"}
    message: str | None = None
    type: str | None = None
    param: str | None = None
    code: Any = None
    # TGI: {"error": "...", "error_type": "..."}
    error_type: str | None = None


_usage_dec = msgspec.json.Decoder(_WithUsage)
_chunk_dec = msgspec.json.Decoder(_StreamChunk)


class _AnyObject(msgspec.Struct):
    """Any JSON object (its fields are skipped): checks a forwarded chunk is one."""


_object_dec = msgspec.json.Decoder(_AnyObject)
_err_dec = msgspec.json.Decoder(_ErrBody)


def _usage(u: _Usage | None) -> Usage:
    if u is None:
        return Usage()
    pd = u.prompt_tokens_details or {}
    cd = u.completion_tokens_details or {}
    return Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        cached_tokens=pd.get("cached_tokens") or 0,
        reasoning_tokens=cd.get("reasoning_tokens") or 0,
    )


class OpenAIProtocol(Protocol):
    kind = "openai"

    def __init__(self, provider: Any, profile: Any) -> None:
        super().__init__(provider, profile)
        base = (provider.base_url or profile.base_url or "").rstrip("/")
        self.base = base
        self.headers = {"Content-Type": "application/json", **provider.headers}
        auth = profile.auth_header(provider.api_key)
        if auth is not None:
            self.headers[auth[0]] = auth[1]
        query = f"?{urlencode(provider.query)}" if provider.query else ""
        self.query = query
        # URL per operation, built once; Azure's has a {model} (deployment) slot.
        chat = profile.chat_path
        self._urls = {
            op: base + chat.replace("chat/completions", path) + query
            for op, path in (
                ("chat", "chat/completions"),
                ("completions", "completions"),
                ("embeddings", "embeddings"),
            )
        }

    def _url(self, op: str, model: str) -> str:
        url = self._urls[op]
        return url.replace("{model}", model) if "{" in url else url

    def _body(self, req: dict[str, Any], model: str, stream: bool) -> bytes:
        req["model"] = model
        if self.profile.legacy_max_tokens and "max_completion_tokens" in req:
            mct = req.pop("max_completion_tokens")
            req.setdefault("max_tokens", mct)
        if stream:
            req["stream"] = True
            if self.profile.stream_usage:
                opts = dict(req.get("stream_options") or {})
                opts["include_usage"] = True
                req["stream_options"] = opts
        return _enc.encode(req)

    # -- chat / completions: same wire shape, different path ------------------------------
    def chat_request(self, req: dict[str, Any], model: str, stream: bool) -> HttpCall:
        return HttpCall(
            "POST",
            self._url("chat", model),
            self.headers,
            self._body(req, model, stream),
            stream,
        )

    def completions_request(self, req: dict[str, Any], model: str, stream: bool) -> HttpCall:
        return HttpCall(
            "POST", self._url("completions", model), self.headers, self._body(req, model, stream), stream
        )

    def chat_response(self, body: bytes, model: str) -> Translated:
        try:
            parsed = _usage_dec.decode(body)
        except msgspec.DecodeError:
            raise UpstreamError(
                f"provider {self.provider.id!r} sent an invalid JSON body", provider=self.provider.id
            ) from None
        return Translated(body, _usage(parsed.usage))

    completions_response = chat_response

    def chat_stream(self, model: str, include_usage: bool) -> StreamTranslator:
        return PassthroughStream(self.provider.id, model, include_usage)

    completions_stream = chat_stream

    # -- embeddings ---------------------------------------------------------------------
    def embeddings_request(self, req: dict[str, Any], model: str) -> HttpCall:
        req["model"] = model
        return HttpCall("POST", self._url("embeddings", model), self.headers, _enc.encode(req))

    def embeddings_response(self, body: bytes, model: str, req: dict[str, Any]) -> Translated:
        return self.chat_response(body, model)

    # -- errors and models ----------------------------------------------------------------
    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> SwitchmanError:
        message, etype, param, code = _error_fields(body)
        return upstream_status_error(
            status,
            message or f"HTTP {status}",
            provider=self.provider.id,
            param=param,
            code=code,
            retry_after=retry_after(headers),
            error_type=etype if status < 500 else None,
        )

    def models_request(self) -> HttpCall | None:
        if self.profile.models_endpoint == "ollama":
            root = self.base[: -len("/v1")] if self.base.endswith("/v1") else self.base
            return HttpCall("GET", root + "/api/tags", self.headers)
        if self.profile.models_endpoint == "openai":
            return HttpCall("GET", self.base + "/models" + self.query, self.headers)
        return None

    def models_response(self, body: bytes) -> list[str]:
        data = msgspec.json.decode(body)
        if isinstance(data, dict) and isinstance(data.get("models"), list):  # Ollama /api/tags
            return [str(m.get("name") or m.get("model")) for m in data["models"] if isinstance(m, dict)]
        items = data.get("data", []) if isinstance(data, dict) else []
        return [m["id"] for m in items if isinstance(m, dict) and isinstance(m.get("id"), str)]


def _error_fields(body: bytes) -> tuple[str, str | None, str | None, str | None]:
    try:
        e = _err_dec.decode(body)
    except msgspec.DecodeError:
        return body[:500].decode(errors="replace").strip(), None, None, None
    if isinstance(e.error, _Err):
        code = e.error.code
        return e.error.message, e.error.type, e.error.param, None if code is None else str(code)
    if isinstance(e.error, str):  # TGI
        return e.error, None, None, e.error_type
    code = e.code
    return e.message or "", e.type, e.param, None if code is None else str(code)


def _carries_usage(data: bytes) -> bool:
    """Does a chunk carry a usage object? (``"usage":null`` rides on every chunk once asked.)"""
    at = data.find(b'"usage"')
    return at >= 0 and not data[at + 7 : at + 16].lstrip(b" :").startswith(b"null")


class PassthroughStream(StreamTranslator):
    """Forward OpenAI chunks as they are; watch for usage, errors and the end."""

    __slots__ = ("provider", "include_usage", "usage", "done", "_streamed", "_model", "_sent_usage", "_first")

    def __init__(self, provider: str, model: str, include_usage: bool) -> None:
        self.provider = provider
        self.include_usage = include_usage
        self.usage: Usage | None = None
        self.done = False
        # Only a usage the client asked for is ever synthesized from the stream.
        self._streamed = tokens.Streamed() if include_usage else None
        self._model = model
        self._sent_usage = False
        self._first: _StreamChunk | None = None  # id/created/model for a synthesized usage chunk

    def feed(self, event: str, data: bytes) -> list[bytes]:
        if data == b"[DONE]":
            self.done = True
            return []
        if not data:  # an empty data field: keep-alive
            return []
        if b"\n" in data:  # a multi-line SSE data field: JSON whitespace, never inside strings
            data = data.replace(b"\n", b" ")
        if _carries_usage(data) or b'"error"' in data:
            return self._inspect(data)
        if self._first is None and self._streamed is not None:
            self._first = self._decode(data)  # id/created/model for a synthesized usage chunk
        else:  # forwarded untouched, so it must be what the client can parse: a JSON object
            try:
                _object_dec.decode(data)
            except msgspec.DecodeError:
                raise self._broken(data) from None
        if self._streamed is not None:
            self._streamed.add((data,))
        return [data]

    def _decode(self, data: bytes) -> _StreamChunk:
        try:
            return _chunk_dec.decode(data)
        except msgspec.DecodeError:
            raise self._broken(data) from None

    def _broken(self, data: bytes) -> UpstreamProtocolError:
        return UpstreamProtocolError(
            f"provider {self.provider!r} sent a stream chunk that is not a JSON chunk object: "
            f"{data[:80].decode(errors='replace')!r}",
            provider=self.provider,
        )

    def _inspect(self, data: bytes) -> list[bytes]:
        chunk = self._decode(data)
        if self._first is None:
            self._first = chunk
        if chunk.error is not None:
            err = chunk.error if isinstance(chunk.error, dict) else {"message": str(chunk.error)}
            raise UpstreamError(
                f"provider {self.provider!r} failed mid-stream: {err.get('message') or err}",
                provider=self.provider,
            )
        if chunk.usage is not None:
            self.usage = _usage(chunk.usage)
            if not chunk.choices:
                if not self.include_usage:
                    return []
                self._sent_usage = True
        return [data]

    def close(self) -> list[bytes]:
        if not self.done:
            raise UpstreamError(
                f"stream from provider {self.provider!r} ended before [DONE]", provider=self.provider
            )
        if self.include_usage and not self._sent_usage:
            if self.usage is None:
                streamed = self._streamed.tokens() if self._streamed is not None else 0
                self.usage = Usage(completion_tokens=streamed, estimated=True)
            first = self._first or _StreamChunk(id=new_id(), created=now(), model=self._model)
            return [
                _enc.encode(
                    {
                        "id": first.id,
                        "object": first.object,
                        "created": first.created,
                        "model": first.model,
                        "choices": [],
                        "usage": self.usage.to_openai(),
                    }
                )
            ]
        return []
