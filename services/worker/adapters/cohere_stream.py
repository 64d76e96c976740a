"""Cohere v2 responses and stream events → OpenAI (see :mod:`.cohere` for the mapping)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from libs.common.errors import UpstreamError

from ..chunks import ChunkWriter, Usage
from .base import StreamTranslator

if TYPE_CHECKING:
    pass


# -- stream event shapes (the hot path; unknown fields are ignored) -----------------------
class _Fn(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    id: str | None = None
    function: _Fn | None = None


class _Part(msgspec.Struct):
    text: str | None = None
    thinking: str | None = None


class _DeltaMessage(msgspec.Struct):
    # Objects in content-/tool-call- events, lists in message-start.
    content: _Part | list[Any] | None = None
    tool_calls: _ToolCall | list[Any] | None = None
    tool_plan: str | None = None


class _Delta(msgspec.Struct):
    message: _DeltaMessage | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None


class _Event(msgspec.Struct):
    type: str | None = None
    index: int | None = None
    delta: _Delta | None = None
    logprobs: dict[str, Any] | None = None


_enc = msgspec.json.Encoder()
_dec_event = msgspec.json.Decoder(_Event)
_dec_any = msgspec.json.Decoder()

_FINISH = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length", "TOOL_CALL": "tool_calls"}
_FAILED = frozenset({"ERROR", "TIMEOUT"})


def _int(*values: Any) -> int:
    """The first number present (Cohere types token counts as floats), as an int."""
    for v in values:
        if isinstance(v, int | float):
            return int(v)
    return 0


def _usage(u: Mapping[str, Any] | None) -> Usage:
    """From ``usage.tokens``, falling back to ``usage.billed_units`` field by field."""
    if not u:
        return Usage()
    tok, billed = u.get("tokens") or {}, u.get("billed_units") or {}
    return Usage(
        prompt_tokens=_int(tok.get("input_tokens"), billed.get("input_tokens")),
        completion_tokens=_int(tok.get("output_tokens"), billed.get("output_tokens")),
        cached_tokens=_int(u.get("cached_tokens")),
    )


def _finish(reason: str | None, tools: bool, provider: str) -> str:
    if reason in _FAILED:
        raise UpstreamError(f"provider {provider!r} ended the generation with {reason}", provider=provider)
    mapped = _FINISH.get(reason or "", "stop")
    return "tool_calls" if tools and mapped == "stop" else mapped


def _logprob(item: Mapping[str, Any]) -> dict[str, Any]:
    text = item.get("text") or ""
    return {
        "token": text,
        "logprob": float(sum(item.get("logprobs") or ())),
        "bytes": list(text.encode()),
        "top_logprobs": [],
    }


def _tc(id: str | None, name: str | None, arguments: str | None, **extra: Any) -> dict[str, Any]:
    """A function tool call (the same shape in OpenAI and Cohere v2)."""
    args = "{}" if arguments is None else arguments
    return {**extra, "id": id, "type": "function", "function": {"name": name, "arguments": args}}


def _with_logprobs(piece: bytes, item: Mapping[str, Any]) -> bytes:
    """Put one Cohere logprobs item into a chunk written with ``"logprobs":null``."""
    cut = piece.rfind(b'"logprobs":null')
    lp = _enc.encode({"content": [_logprob(item)], "refusal": None})
    return piece[:cut] + b'"logprobs":' + lp + piece[cut + 15 :]


def _fn(fn: Mapping[str, Any] | None) -> tuple[Any, Any]:
    return (fn.get("name"), fn.get("arguments")) if fn else (None, None)


def _object(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = _dec_any.decode(body)
    except msgspec.DecodeError as e:
        raise UpstreamError(f"malformed Cohere {what}: {e}") from None
    if not isinstance(data, dict):
        raise UpstreamError(f"malformed Cohere {what}: not a JSON object")
    return data


# -- stream -----------------------------------------------------------------------------
class CohereStream(StreamTranslator):
    """Cohere v2 chat SSE events → OpenAI chunks (see the reference state machine)."""

    def __init__(self, model: str, include_usage: bool, provider: str) -> None:
        self.writer = ChunkWriter(model, include_usage=include_usage)
        self.include_usage = include_usage
        self.provider = provider
        self.started = False
        self.tools: dict[int, int] = {}  # Cohere tool-call index -> OpenAI index

    def _out(self, piece: bytes) -> list[bytes]:
        if self.started:
            return [piece]
        self.started = True
        return [self.writer.role(), piece]

    def feed(self, event: str, data: bytes) -> list[bytes]:
        if not data or data == b"[DONE]":
            return []
        try:
            ev: _Event = _dec_event.decode(data)
        except msgspec.DecodeError as e:
            raise UpstreamError(f"malformed Cohere stream event: {e}", provider=self.provider) from None
        kind = ev.type or event
        msg = ev.delta.message if ev.delta else None
        if kind == "content-delta":  # the hot path
            part = msg.content if msg else None
            if not isinstance(part, _Part):
                return []
            if part.thinking:
                return self._out(self.writer.delta({"reasoning_content": part.thinking}))
            piece = self.writer.content(part.text or "")
            if ev.logprobs:
                piece = _with_logprobs(piece, ev.logprobs)
            return [piece] if self.started else self._out(piece)
        if kind == "tool-call-delta":
            call = msg.tool_calls if msg else None
            args = call.function.arguments if isinstance(call, _ToolCall) and call.function else None
            if not args:
                return []
            index = self.tools.get(ev.index or 0, len(self.tools) - 1)
            return self._out(
                self.writer.delta({"tool_calls": [{"index": index, "function": {"arguments": args}}]})
            )
        if kind == "tool-plan-delta":
            plan = msg.tool_plan if msg else None
            return self._out(self.writer.delta({"reasoning_content": plan})) if plan else []
        if kind == "tool-call-start":
            return self._tool_start(ev, msg)
        if kind == "message-start":
            if self.started:
                return []
            self.started = True
            return [self.writer.role()]
        if kind == "message-end":
            return self._end(ev.delta)
        return []  # content-start/-end, tool-call-end, citations, debug

    def _tool_start(self, ev: _Event, msg: _DeltaMessage | None) -> list[bytes]:
        call = msg.tool_calls if msg else None
        if not isinstance(call, _ToolCall):
            return []
        index = self.tools[ev.index or 0] = len(self.tools)
        fn = call.function or _Fn()
        entry = _tc(call.id, fn.name, "", index=index)
        pieces = self._out(self.writer.delta({"tool_calls": [entry]}))
        if fn.arguments:  # arguments sent whole at the start: pass them on
            pieces.append(
                self.writer.delta({"tool_calls": [{"index": index, "function": {"arguments": fn.arguments}}]})
            )
        return pieces

    def close(self) -> list[bytes]:
        if not self.done:
            msg = f"stream from provider {self.provider!r} ended before message-end"
            raise UpstreamError(msg, provider=self.provider)
        return []

    def _end(self, delta: _Delta | None) -> list[bytes]:
        if delta and delta.error:
            raise UpstreamError(
                f"provider {self.provider!r} stream failed: {delta.error}", provider=self.provider
            )
        reason = _finish(delta.finish_reason if delta else None, bool(self.tools), self.provider)
        self.usage = _usage(delta.usage if delta else None)
        self.done = True
        pieces = self._out(self.writer.finish(reason))
        if self.include_usage:
            pieces.append(self.writer.usage(self.usage))
        return pieces


# -- the protocol -----------------------------------------------------------------------
