"""Building OpenAI response bodies and stream chunks as bytes.

Every adapter that translates a foreign protocol produces its output through these
helpers, so the OpenAI shapes (which keys are always present, which may be null) are
written down once. Encoders are built once at module level.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from array import array
from typing import Any

import msgspec

_enc = msgspec.json.Encoder()
encode = _enc.encode


class Usage(msgspec.Struct, kw_only=True):
    """Token usage of one upstream call, in OpenAI's terms.

    ``estimated``: some count was estimated (:mod:`services.worker.tokens`), not
    reported by the provider.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cached_tokens or self.cache_write_tokens:
            details: dict[str, int] = {"cached_tokens": self.cached_tokens}
            if self.cache_write_tokens:
                details["cache_write_tokens"] = self.cache_write_tokens
            out["prompt_tokens_details"] = details
        if self.reasoning_tokens:
            out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return out


def new_id(prefix: str = "chatcmpl-") -> str:
    return prefix + os.urandom(12).hex()


def now() -> int:
    return int(time.time())


class ChunkWriter:
    """Writes the chunks of one chat completion stream (same id/created/model on each)."""

    __slots__ = ("_head", "include_usage")

    def __init__(self, model: str, *, include_usage: bool, id: str | None = None) -> None:
        self.include_usage = include_usage
        # The constant prefix of every chunk, encoded once per stream.
        self._head = (
            b'{"id":'
            + _enc.encode(id or new_id())
            + b',"object":"chat.completion.chunk","created":'
            + str(now()).encode()
            + b',"model":'
            + _enc.encode(model)
        )

    def _tail(self) -> bytes:
        return b',"usage":null}' if self.include_usage else b"}"

    def delta(self, delta: dict[str, Any], *, index: int = 0, finish_reason: str | None = None) -> bytes:
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return self._head + b',"choices":[' + _enc.encode(choice) + b"]" + self._tail()

    def role(self, index: int = 0) -> bytes:
        return self.delta({"role": "assistant", "content": ""}, index=index)

    def content(self, text: str, index: int = 0) -> bytes:
        if index:
            return self.delta({"content": text}, index=index)
        # The hot path of every text stream: bytes templates, one string encode.
        return (
            self._head
            + b',"choices":[{"index":0,"delta":{"content":'
            + _enc.encode(text)
            + b'},"finish_reason":null,"logprobs":null}]'
            + self._tail()
        )

    def finish(self, finish_reason: str, index: int = 0) -> bytes:
        return self.delta({}, index=index, finish_reason=finish_reason)

    def usage(self, usage: Usage) -> bytes:
        return self._head + b',"choices":[],"usage":' + _enc.encode(usage.to_openai()) + b"}"


def chat_completion(
    model: str,
    choices: list[dict[str, Any]],
    usage: Usage | None,
    *,
    id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A complete ``chat.completion`` body.

    Each choice: ``{"index", "message": {"role", "content", ...}, "finish_reason"}``;
    ``logprobs`` and ``message.refusal`` are filled in when missing (both required).
    """
    for c in choices:
        c.setdefault("logprobs", None)
        c["message"].setdefault("refusal", None)
    body: dict[str, Any] = {
        "id": id or new_id(),
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage.to_openai()
    if extra:
        body.update(extra)
    return _enc.encode(body)


def pack_base64(values: list[float]) -> str:
    """OpenAI's base64 embedding: little-endian float32, base64-encoded."""
    packed = array("f", values)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def embeddings_response(
    model: str, vectors: list[list[float]], usage: Usage, encoding_format: str | None = "float"
) -> bytes:
    """An OpenAI ``list`` of embeddings, base64-packed when the client asked for it."""
    data: list[Any] = vectors
    if encoding_format == "base64":
        data = [pack_base64(v) for v in vectors]
    return _enc.encode(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(data)],
            "model": model,
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
        }
    )
