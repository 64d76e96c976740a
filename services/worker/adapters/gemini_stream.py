"""Gemini → OpenAI, the response side: wire shapes, whole responses and SSE streams.

Gemini answers ``generateContent`` with one ``GenerateContentResponse`` and
``streamGenerateContent?alt=sse`` with a series of them, one per SSE ``data:`` event,
each a complete record carrying the *new* parts only. There is no terminal sentinel:
the stream simply ends after the event carrying ``finishReason``.

Decisions recorded here (see also :mod:`.gemini`):

* ``finishReason`` → ``finish_reason`` per protocols.md §3.7; ``STOP`` becomes
  ``tool_calls`` when the candidate produced function calls. Unknown future values map
  to ``stop``. ``MALFORMED_FUNCTION_CALL`` / ``UNEXPECTED_TOOL_CALL`` /
  ``TOO_MANY_TOOL_CALLS`` raise :class:`UpstreamError` (retryable): before the first
  byte the request moves to the next candidate; mid-stream the client's stream ends
  with that error (never a silent ``stop``).
* Tool-call ids: ``functionCall.id`` when Gemini sends one, else ``call_<24 hex>``.
  When the part carries a ``thoughtSignature`` (thinking models; Gemini 3 rejects a
  request whose current-turn function calls lost it) the signature is appended to the
  id as ``<id>__ts_<urlsafe base64>``; OpenAI clients echo ids back verbatim, and
  :func:`split_tool_call_id` recovers both when the history is sent again.
* Usage: prompt = promptTokenCount + toolUsePromptTokenCount; completion =
  candidatesTokenCount + thoughtsTokenCount (OpenAI counts reasoning inside completion
  tokens); reasoning = thoughtsTokenCount; cached = cachedContentTokenCount.
* ``logprobsResult`` is translated for whole responses only; stream chunks carry
  ``logprobs: null``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import msgspec

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

from ..chunks import ChunkWriter, Usage
from .base import StreamTranslator, retry_after


# -- wire shapes (only the fields we read; unknown fields are ignored) ----------------
class FunctionCall(msgspec.Struct):
    name: str = ""
    args: dict[str, Any] | None = None
    id: str | None = None


class Part(msgspec.Struct, rename="camel"):
    text: str | None = None
    thought: bool = False
    thought_signature: str | None = None
    function_call: FunctionCall | None = None


class Content(msgspec.Struct):
    parts: list[Part] = []


class TokenLogprob(msgspec.Struct, rename="camel"):
    token: str = ""
    log_probability: float = 0.0


class TopCandidates(msgspec.Struct):
    candidates: list[TokenLogprob] = []


class LogprobsResult(msgspec.Struct, rename="camel"):
    top_candidates: list[TopCandidates] = []
    chosen_candidates: list[TokenLogprob] = []


class Candidate(msgspec.Struct, rename="camel"):
    content: Content | None = None
    finish_reason: str | None = None
    index: int = 0
    logprobs_result: LogprobsResult | None = None


class UsageMetadata(msgspec.Struct, rename="camel"):
    prompt_token_count: int = 0
    candidates_token_count: int = 0
    thoughts_token_count: int = 0
    tool_use_prompt_token_count: int = 0
    cached_content_token_count: int = 0
    total_token_count: int = 0


class PromptFeedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None
    block_reason_message: str | None = None


class ErrorDetail(msgspec.Struct, rename={"type": "@type", "retry_delay": "retryDelay"}):
    type: str = ""
    reason: str | None = None
    retry_delay: str | None = None


class RpcError(msgspec.Struct):
    code: int = 0
    message: str = ""
    status: str = ""
    details: list[ErrorDetail] = []


class ErrorBody(msgspec.Struct):
    error: RpcError | None = None


class Response(msgspec.Struct, rename="camel"):
    candidates: list[Candidate] = []
    prompt_feedback: PromptFeedback | None = None
    usage_metadata: UsageMetadata | None = None
    response_id: str | None = None
    error: RpcError | None = None


decode_response = msgspec.json.Decoder(Response).decode
_decode_error = msgspec.json.Decoder(ErrorBody | list[ErrorBody]).decode
_encode = msgspec.json.Encoder().encode

# -- finish reasons -------------------------------------------------------------------
_FINISH = {
    "STOP": "stop",
    "FINISH_REASON_UNSPECIFIED": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(
        ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "LANGUAGE", "OTHER"),
        "content_filter",
    ),
}
FAILED_FINISH = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"})


def finish_reason(raw: str | None, has_tool_calls: bool, provider: str) -> str:
    """The OpenAI finish_reason of a Gemini ``finishReason`` (raises for the failure ones)."""
    if raw in FAILED_FINISH:
        raise UpstreamError(
            f"provider {provider!r} ended the candidate with finishReason {raw}",
            code=raw.lower(),  # type: ignore[union-attr]
            provider=provider,
        )
    reason = _FINISH.get(raw or "STOP")
    if reason is None:
        reason = "content_filter" if raw.startswith("IMAGE_") else "stop"  # type: ignore[union-attr]
    if reason == "stop" and has_tool_calls:
        return "tool_calls"
    return reason


def blocked(feedback: PromptFeedback | None, provider: str) -> SwitchmanError:
    """A response without candidates: the prompt was blocked, or the upstream misbehaved."""
    if feedback is not None and feedback.block_reason:
        detail = f": {feedback.block_reason_message}" if feedback.block_reason_message else ""
        return InvalidRequest(
            f"The prompt was blocked by the provider's safety filter ({feedback.block_reason}){detail}",
            param="messages",
            code="content_filter",
            provider=provider,
        )
    return UpstreamError(f"provider {provider!r} returned no candidates", provider=provider)


def usage_of(u: UsageMetadata) -> Usage:
    return Usage(
        prompt_tokens=u.prompt_token_count + u.tool_use_prompt_token_count,
        completion_tokens=u.candidates_token_count + u.thoughts_token_count,
        reasoning_tokens=u.thoughts_token_count,
        cached_tokens=u.cached_content_token_count,
    )


# -- errors ---------------------------------------------------------------------------
_AUTH_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED"})
_AUTH_STATUSES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})


def _delay(detail: ErrorDetail) -> float | None:
    """Seconds of a ``google.rpc.RetryInfo`` detail (``retryDelay`` is a Duration like "12.5s")."""
    if not detail.type.endswith("google.rpc.RetryInfo") or not detail.retry_delay:
        return None
    try:
        return max(0.0, float(detail.retry_delay.removesuffix("s")))
    except ValueError:
        return None


def rpc_error(status: int, rpc: RpcError, headers: Mapping[str, str], provider: str) -> SwitchmanError:
    """Map a Google RPC error by HTTP status and the structured ``status``/``details[].reason``.

    An invalid key arrives as 400 INVALID_ARGUMENT with reason API_KEY_INVALID: that is
    the gateway's misconfiguration (UpstreamAuthError), never the client's 400.
    """
    message = rpc.message or rpc.status or f"HTTP {status}"
    reasons = {d.reason for d in rpc.details if d.reason}
    if status in (401, 403) or reasons & _AUTH_REASONS or rpc.status in _AUTH_STATUSES:
        return UpstreamAuthError(
            f"provider {provider!r} rejected the gateway's credentials ({status} {rpc.status}): {message}",
            provider=provider,
        )
    wait = retry_after(headers)
    if wait is None:
        wait = next((d for d in map(_delay, rpc.details) if d is not None), None)
    if status == 429 or rpc.status == "RESOURCE_EXHAUSTED":
        return RateLimited(message, retry_after=wait, provider=provider)
    if status == 503 or rpc.status == "UNAVAILABLE":
        return Overloaded(message, retry_after=wait, provider=provider)
    if status == 504 or rpc.status == "DEADLINE_EXCEEDED":
        return GatewayTimeout(f"provider {provider!r} timed out: {message}", provider=provider)
    code = rpc.status.lower() or None
    if 400 <= status < 500 and rpc.status not in ("INTERNAL", "UNKNOWN"):
        return UpstreamRejected(status, message, code=code, provider=provider)
    return UpstreamError(f"provider {provider!r} failed ({status}): {message}", code=code, provider=provider)


def error_of(status: int, body: bytes, headers: Mapping[str, str], provider: str) -> SwitchmanError:
    """The error of a response with status >= 400 (an RPC error object, or a list of one)."""
    try:
        decoded = _decode_error(body)
    except msgspec.DecodeError:
        decoded = None
    if isinstance(decoded, list):
        decoded = decoded[0] if decoded else None
    rpc = decoded.error if decoded is not None else None
    if rpc is None:
        rpc = RpcError(code=status, message=body[:300].decode("utf-8", "replace").strip())
    return rpc_error(status, rpc, headers, provider)


# -- tool calls -----------------------------------------------------------------------
_SIG = "__ts_"


def tool_call_id(fc: FunctionCall, signature: str | None) -> str:
    base = fc.id or "call_" + os.urandom(12).hex()
    if not signature:
        return base
    return base + _SIG + signature.replace("+", "-").replace("/", "_").rstrip("=")


def split_tool_call_id(value: str) -> tuple[str, str | None]:
    """(the id to send to Gemini, the thought signature in standard base64 or None)."""
    base, sep, sig = value.partition(_SIG)
    if not sep or not sig:
        return value, None
    sig = sig.replace("-", "+").replace("_", "/")
    return base, sig + "=" * (-len(sig) % 4)


def tool_call(part: Part) -> dict[str, Any]:
    fc = part.function_call
    assert fc is not None
    return {
        "id": tool_call_id(fc, part.thought_signature),
        "type": "function",
        "function": {"name": fc.name, "arguments": _encode(fc.args or {}).decode()},
    }


# -- whole responses ------------------------------------------------------------------
def _logprobs(r: LogprobsResult) -> dict[str, Any]:
    tops = r.top_candidates
    content = []
    for i, c in enumerate(r.chosen_candidates):
        alts = tops[i].candidates if i < len(tops) else []
        content.append(
            {
                "token": c.token,
                "logprob": c.log_probability,
                "bytes": list(c.token.encode()),
                "top_logprobs": [
                    {"token": a.token, "logprob": a.log_probability, "bytes": list(a.token.encode())}
                    for a in alts
                ],
            }
        )
    return {"content": content, "refusal": None}


def choice_of(c: Candidate, provider: str) -> dict[str, Any]:
    """One OpenAI ``choices[]`` entry from one Gemini candidate."""
    text: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in c.content.parts if c.content is not None else ():
        if part.function_call is not None:
            calls.append(tool_call(part))
        elif part.text:
            (thoughts if part.thought else text).append(part.text)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    choice: dict[str, Any] = {
        "index": c.index,
        "message": message,
        "finish_reason": finish_reason(c.finish_reason, bool(calls), provider),
    }
    if c.logprobs_result is not None:
        choice["logprobs"] = _logprobs(c.logprobs_result)
    return choice


def parse_response(body: bytes, provider: str) -> Response:
    try:
        return decode_response(body)
    except msgspec.DecodeError as e:
        raise UpstreamError(
            f"provider {provider!r} sent an unreadable response: {e}", provider=provider
        ) from None


# -- streams --------------------------------------------------------------------------
class GeminiStream(StreamTranslator):
    """``streamGenerateContent?alt=sse`` events → ``chat.completion.chunk`` bytes.

    ``done`` turns true in :meth:`close` only: Gemini has no end event, so the stream
    is read to EOF, and an EOF before every started candidate saw its ``finishReason``
    is a cut stream (:class:`UpstreamError`), never a clean finish.
    """

    def __init__(self, model: str, include_usage: bool, provider: str, id: str | None = None) -> None:
        self._w = ChunkWriter(model, include_usage=include_usage, id=id)
        self._include_usage = include_usage
        self._provider = provider
        self._tools: dict[int, int] = {}  # candidate index -> tool calls emitted
        self._finished: set[int] = set()
        self._meta: UsageMetadata | None = None
        self.done = False

    @property
    def usage(self) -> Usage | None:  # type: ignore[override]
        """The latest ``usageMetadata`` (each event repeats the running totals)."""
        return usage_of(self._meta) if self._meta is not None else None

    def feed(self, event: str, data: bytes) -> list[bytes]:
        resp = parse_response(data, self._provider)
        if resp.error is not None:
            raise rpc_error(resp.error.code or 500, resp.error, {}, self._provider)
        if resp.usage_metadata is not None:
            self._meta = resp.usage_metadata
        if not resp.candidates:
            feedback = resp.prompt_feedback
            if not self._tools and feedback is not None and feedback.block_reason:
                raise blocked(feedback, self._provider)
            return []
        out: list[bytes] = []
        for c in resp.candidates:
            self._candidate(c, out)
        return out

    def _candidate(self, c: Candidate, out: list[bytes]) -> None:
        w, idx = self._w, c.index
        if idx not in self._tools:
            self._tools[idx] = 0
            out.append(w.role(idx))
        parts = c.content.parts if c.content is not None else ()
        if len(parts) == 1:  # the common cases: one text part, or one function call
            part = parts[0]
            if part.function_call is not None:
                self._call(part, idx, out)
            elif part.text and not part.thought:
                out.append(w.content(part.text, idx))
            elif part.text:
                self._flush([part.text], True, idx, out)
        elif parts:
            self._parts(parts, idx, out)
        if c.finish_reason and idx not in self._finished:
            self._finished.add(idx)
            reason = finish_reason(c.finish_reason, self._tools[idx] > 0, self._provider)
            out.append(w.finish(reason, idx))

    def _parts(self, parts: list[Part], idx: int, out: list[bytes]) -> None:
        text: list[str] = []
        thought = False
        for part in parts:
            if part.function_call is not None:
                self._flush(text, thought, idx, out)
                self._call(part, idx, out)
            elif part.text:
                if part.thought != thought:
                    self._flush(text, thought, idx, out)
                    thought = part.thought
                text.append(part.text)
        self._flush(text, thought, idx, out)

    def _call(self, part: Part, idx: int, out: list[bytes]) -> None:
        call = tool_call(part)
        call["index"] = n = self._tools[idx]
        self._tools[idx] = n + 1
        out.append(self._w.delta({"tool_calls": [call]}, index=idx))

    def _flush(self, text: list[str], thought: bool, idx: int, out: list[bytes]) -> None:
        if not text:
            return
        joined = "".join(text)
        text.clear()
        if thought:
            out.append(self._w.delta({"reasoning_content": joined}, index=idx))
        else:
            out.append(self._w.content(joined, idx))

    def close(self) -> list[bytes]:
        if self.done:
            return []
        if not self._tools or len(self._finished) < len(self._tools):
            raise UpstreamError(
                f"provider {self._provider!r} stream ended before its finishReason",
                provider=self._provider,
            )
        self.done = True
        if self._include_usage and self.usage is not None:
            return [self._w.usage(self.usage)]
        return []
