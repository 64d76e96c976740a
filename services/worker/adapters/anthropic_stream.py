"""Anthropic Messages API, response side: wire structs, responses, usage, errors, SSE stream.

Shared by :mod:`.anthropic` (request building, non-stream responses, HTTP errors) and the
stream translator below. Only the fields the gateway reads are declared; everything else
in Anthropic's payloads is ignored by msgspec, so new upstream fields never break decoding.

Stream state machine (protocols.md §3.8), one :class:`AnthropicStream` per request:

=========================  =====================================================
``message_start``          role chunk ``{"role": "assistant", "content": ""}``;
                           usage (input + cache fields) remembered
``content_block_start``    ``tool_use``: tool-call delta ``{index: k, id, type,
                           function{name, arguments: ""}}`` with ``k`` the next
                           *tool* index (not the block index); text/thinking
                           blocks that start non-empty emit their text
``content_block_delta``    ``text_delta`` → content; ``input_json_delta`` →
                           arguments fragment of the block's ``k``;
                           ``thinking_delta`` → ``reasoning_content``;
                           ``signature_delta`` / ``citations_delta`` dropped
``content_block_stop``     nothing, except a tool block that received no
                           argument bytes gets ``arguments: "{}"`` (so the
                           accumulated arguments always parse, as non-stream)
``message_delta``          finish chunk (mapped ``stop_reason``); usage is
                           cumulative, the latest non-null value wins
``message_stop``           ``done``; the usage chunk when ``include_usage``
``ping`` / unknown         nothing
``error``                  raises the mapped :class:`SwitchmanError`
=========================  =====================================================

Blocks of server tools (``server_tool_use``, ``web_search_tool_result``, ...) and
``redacted_thinking`` have no OpenAI equivalent and are dropped, including their deltas.
"""

from __future__ import annotations

from typing import Any

import msgspec

from libs.common.errors import (
    Overloaded,
    PayloadTooLarge,
    SwitchmanError,
    UpstreamError,
    upstream_status_error,
)

from ..chunks import ChunkWriter, Usage, chat_completion
from .base import StreamTranslator, Translated

# -- wire structs (decoding only) --------------------------------------------------------


class OutputDetails(msgspec.Struct):
    thinking_tokens: int | None = None


class WireUsage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    output_tokens_details: OutputDetails | None = None


class Block(msgspec.Struct):
    type: str
    text: str | None = None
    thinking: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class Message(msgspec.Struct):
    id: str = ""
    content: list[Block] = []
    stop_reason: str | None = None
    usage: WireUsage | None = None


class Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    stop_reason: str | None = None


class ErrorBody(msgspec.Struct):
    type: str = ""
    message: str = ""


class Event(msgspec.Struct):
    """Any SSE event; which fields are set depends on ``type``."""

    type: str
    index: int = 0
    message: Message | None = None
    content_block: Block | None = None
    delta: Delta | None = None
    usage: WireUsage | None = None
    error: ErrorBody | None = None


decode_event = msgspec.json.Decoder(Event).decode
decode_message = msgspec.json.Decoder(Message).decode
_encode = msgspec.json.Encoder().encode

# -- stop reasons and usage ----------------------------------------------------------------

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: str | None) -> str:
    """OpenAI ``finish_reason`` of an Anthropic ``stop_reason`` (unknown ones: ``stop``)."""
    return FINISH_REASONS.get(stop_reason or "", "stop")


def to_usage(u: WireUsage) -> Usage:
    """Anthropic usage in OpenAI terms: prompt = input + cache writes + cache reads."""
    written = u.cache_creation_input_tokens or 0
    read = u.cache_read_input_tokens or 0
    details = u.output_tokens_details
    return Usage(
        prompt_tokens=(u.input_tokens or 0) + written + read,
        completion_tokens=u.output_tokens or 0,
        cached_tokens=read,
        cache_write_tokens=written,
        reasoning_tokens=(details.thinking_tokens or 0) if details is not None else 0,
    )


def merge_usage(into: WireUsage, u: WireUsage) -> None:
    """Stream usage is cumulative: every non-null field replaces the previous value."""
    if u.input_tokens is not None:
        into.input_tokens = u.input_tokens
    if u.output_tokens is not None:
        into.output_tokens = u.output_tokens
    if u.cache_creation_input_tokens is not None:
        into.cache_creation_input_tokens = u.cache_creation_input_tokens
    if u.cache_read_input_tokens is not None:
        into.cache_read_input_tokens = u.cache_read_input_tokens
    if u.output_tokens_details is not None:
        into.output_tokens_details = u.output_tokens_details


# -- errors ------------------------------------------------------------------------------

# The HTTP status each Anthropic error type is documented with (for in-stream `error`
# events, which have no status of their own).
STATUS_OF_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def map_error(
    status: int | None,
    error_type: str,
    message: str,
    *,
    provider: str,
    retry_after: float | None = None,
) -> SwitchmanError:
    """Map an Anthropic error (HTTP status and/or ``error.type``) onto the hierarchy."""
    if status is None:
        status = STATUS_OF_TYPE.get(error_type, 500)
    message = message or f"HTTP {status}"
    if status == 529 or error_type == "overloaded_error":
        return Overloaded(message, retry_after=retry_after, provider=provider)
    if status == 413 or error_type == "request_too_large":
        return PayloadTooLarge(message, provider=provider)
    if status == 402 or error_type == "billing_error":
        # Our account's problem, not the client's: let the request move on.
        return UpstreamError(
            f"provider {provider!r} refused the request (billing): {message}", provider=provider
        )
    return upstream_status_error(
        status,
        message,
        provider=provider,
        retry_after=retry_after,
        error_type="invalid_request_error" if status < 500 else None,
    )


# -- a complete response -----------------------------------------------------------------


def translate_message(body: bytes, model: str, provider: str) -> Translated:
    """An Anthropic ``Message`` body → an OpenAI ``chat.completion`` body.

    Text blocks are concatenated into ``content`` (null when there are only tool calls),
    ``tool_use`` blocks become ``tool_calls`` (arguments: compact JSON of ``input``),
    ``thinking`` blocks ``reasoning_content``; other block types are dropped.
    """
    try:
        msg = decode_message(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise UpstreamError(
            f"provider {provider!r} returned an invalid Messages response: {e}", provider=provider
        ) from None
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for b in msg.content:
        if b.type == "text":
            texts.append(b.text or "")
        elif b.type == "tool_use":
            arguments = _encode(b.input if b.input is not None else {}).decode()
            calls.append(
                {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": arguments}}
            )
        elif b.type == "thinking":
            thinking.append(b.thinking or "")
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else (None if calls else ""),
    }
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    usage = to_usage(msg.usage) if msg.usage is not None else None
    choice = {"index": 0, "message": message, "finish_reason": finish_reason(msg.stop_reason)}
    out = chat_completion(model, [choice], usage, id="chatcmpl-" + msg.id if msg.id else None)
    return Translated(out, usage) if usage is not None else Translated(out)


# -- the stream translator -------------------------------------------------------------------


class AnthropicStream(StreamTranslator):
    """Anthropic SSE events → OpenAI ``chat.completion.chunk`` bytes (see module doc)."""

    def __init__(self, model: str, include_usage: bool, provider: str) -> None:
        self.model = model
        self.include_usage = include_usage
        self.provider = provider
        self.writer = ChunkWriter(model, include_usage=include_usage)
        self.tools: dict[int, list[Any]] = {}  # block index -> [tool index k, got arguments]
        self.next_tool = 0
        self.acc = WireUsage(0, 0, 0, 0)
        self.finished = False
        self.usage: Usage | None = None
        self.done = False

    def feed(self, event: str, data: bytes) -> list[bytes]:
        try:
            ev = decode_event(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise UpstreamError(
                f"provider {self.provider!r} sent an invalid stream event: {e}", provider=self.provider
            ) from None
        kind = ev.type
        if kind == "content_block_delta":
            return self._delta(ev)
        if kind == "content_block_start":
            return self._block_start(ev)
        if kind == "content_block_stop":
            return self._block_stop(ev.index)
        if kind == "message_start":
            return self._message_start(ev)
        if kind == "message_delta":
            return self._message_delta(ev)
        if kind == "message_stop":
            return self._message_stop()
        if kind == "error":
            err = ev.error or ErrorBody()
            raise map_error(None, err.type, err.message, provider=self.provider)
        return []  # ping, and event types added after this was written

    def _delta(self, ev: Event) -> list[bytes]:
        d = ev.delta
        if d is None:
            return []
        kind = d.type
        if kind == "text_delta":
            return [self.writer.content(d.text)] if d.text else []
        if kind == "input_json_delta":
            slot = self.tools.get(ev.index)
            if slot is None or not d.partial_json:
                return []
            slot[1] = True
            return [self._arguments(slot[0], d.partial_json)]
        if kind == "thinking_delta" and d.thinking:
            return [self.writer.delta({"reasoning_content": d.thinking})]
        return []  # signature_delta, citations_delta

    def _arguments(self, k: int, fragment: str) -> bytes:
        return self.writer.delta({"tool_calls": [{"index": k, "function": {"arguments": fragment}}]})

    def _block_start(self, ev: Event) -> list[bytes]:
        b = ev.content_block
        if b is None:
            return []
        if b.type == "tool_use":
            k = self.next_tool
            self.next_tool = k + 1
            self.tools[ev.index] = [k, False]
            call = {"index": k, "id": b.id, "type": "function", "function": {"name": b.name, "arguments": ""}}
            return [self.writer.delta({"tool_calls": [call]})]
        if b.type == "text" and b.text:
            return [self.writer.content(b.text)]
        if b.type == "thinking" and b.thinking:
            return [self.writer.delta({"reasoning_content": b.thinking})]
        return []

    def _block_stop(self, index: int) -> list[bytes]:
        slot = self.tools.get(index)
        if slot is None or slot[1]:
            return []
        slot[1] = True
        return [self._arguments(slot[0], "{}")]

    def _message_start(self, ev: Event) -> list[bytes]:
        m = ev.message
        if m is not None:
            if m.id:
                self.writer = ChunkWriter(self.model, include_usage=self.include_usage, id="chatcmpl-" + m.id)
            if m.usage is not None:
                merge_usage(self.acc, m.usage)
        return [self.writer.role()]

    def _message_delta(self, ev: Event) -> list[bytes]:
        if ev.usage is not None:
            merge_usage(self.acc, ev.usage)
        self.usage = to_usage(self.acc)
        stop = ev.delta.stop_reason if ev.delta is not None else None
        if stop is None or self.finished:
            return []
        self.finished = True
        return [self.writer.finish(finish_reason(stop))]

    def _message_stop(self) -> list[bytes]:
        self.done = True
        self.usage = to_usage(self.acc)
        out = []
        if not self.finished:  # a message_delta with the stop reason never came
            self.finished = True
            out.append(self.writer.finish("stop"))
        if self.include_usage:
            out.append(self.writer.usage(self.usage))
        return out

    def close(self) -> list[bytes]:
        if not self.done:
            raise UpstreamError(
                f"provider {self.provider!r} stream ended before message_stop", provider=self.provider
            )
        return []
