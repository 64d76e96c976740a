"""Cohere v2: ``POST /v2/chat`` (JSON or SSE), ``POST /v2/embed``, ``GET /v1/models``.

Request mapping (OpenAI → Cohere), where it is not a plain rename:

* ``system``/``developer`` → ``system``; user parts ``text``/``image_url`` → Cohere content
  parts of the same names (other part kinds are rejected); assistant ``tool_calls`` pass
  through, its ``reasoning_content`` (echoed back by some clients) → ``tool_plan``;
  ``tool`` → ``{role: tool, tool_call_id, content}``.
* ``top_p`` → ``p`` clamped to Cohere's accepted 0.01–0.99 (OpenAI's default 1.0 becomes
  0.99, 0 becomes 0.01); ``frequency_penalty``/``presence_penalty`` clamped from OpenAI's
  −2..2 to Cohere's 0..1 (a negative penalty cannot be expressed); ``top_k`` → ``k``.
* ``tool_choice``: ``required`` → ``REQUIRED``, ``none`` → ``NONE``, ``auto`` → omitted;
  a named function → ``REQUIRED`` with only that tool sent (Cohere cannot name one).
  A tool with ``strict: true`` turns on Cohere's request-wide ``strict_tools``.
* ``response_format`` ``json_object`` → ``{type: json_object}``, ``json_schema`` →
  ``{type: json_object, json_schema: <schema>}``; ``stop`` → ``stop_sequences``;
  ``max_completion_tokens``/``max_tokens`` → ``max_tokens``; the ``documents`` and
  ``safety_mode`` extensions pass through.

Response: text parts are concatenated; ``tool_plan`` and ``thinking`` parts become
``reasoning_content``; ``finish_reason`` per the reference table (``ERROR``/``TIMEOUT``
raise :class:`UpstreamError`; unknown values → ``stop``); usage from ``usage.tokens``
with ``usage.billed_units`` as the fallback (numbers may be floats: cast to int).
Cohere logprobs items (``{text, token_ids, logprobs}``) become one OpenAI logprob entry
per item with the summed log probability and no ``top_logprobs``.

Embeddings: ``input_type`` is ``search_document``; floats are requested and base64 is
produced here (little-endian float32) when asked; at most 96 texts per call (Cohere's
limit; token-array inputs are rejected). Models: names whose ``endpoints`` include chat
or embed (one page of up to 1000).
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import msgspec

from libs.common.errors import InvalidRequest, SwitchmanError, UpstreamError, upstream_status_error

from ..chunks import ChunkWriter, Usage, chat_completion, embeddings_response
from .base import HttpCall, Protocol, StreamTranslator, Translated, retry_after

if TYPE_CHECKING:
    from libs.common.config import ProviderConfig

    from ..profiles import Profile


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
_CHOICE = {"required": "REQUIRED", "none": "NONE"}
_PASS = ("temperature", "seed", "documents", "safety_mode")
_PENALTIES = ("frequency_penalty", "presence_penalty")
_LITTLE = sys.byteorder == "little"
MAX_TEXTS = 96


# -- request ----------------------------------------------------------------------------
def _text(content: Any) -> str:
    """The text of an OpenAI content (a string or text/refusal parts)."""
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(p.get("text") or p.get("refusal") or "" for p in content)


def _user_content(content: Any) -> Any:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for p in content:
        kind = p.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": p["text"]})
        elif kind == "image_url":
            src = p["image_url"]
            img = {"url": src} if isinstance(src, str) else {"url": src["url"]}
            if isinstance(src, dict) and src.get("detail"):
                img["detail"] = src["detail"]
            parts.append({"type": "image_url", "image_url": img})
        else:
            raise InvalidRequest(f"Cohere does not accept '{kind}' content parts", param="messages")
    return parts


def _assistant(m: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "assistant"}
    calls = m.get("tool_calls")
    if calls:
        out["tool_calls"] = [
            _tc(c["id"], c["function"]["name"], c["function"].get("arguments") or "{}") for c in calls
        ]
        if m.get("reasoning_content"):
            out["tool_plan"] = m["reasoning_content"]
    text = _text(m.get("content"))
    if text or not calls:
        out["content"] = text
    return out


def _messages(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in msgs:
        role = m.get("role")
        if role == "user":
            out.append({"role": "user", "content": _user_content(m.get("content") or "")})
        elif role == "assistant":
            out.append(_assistant(m))
        elif role == "system" or role == "developer":
            out.append({"role": "system", "content": _text(m.get("content"))})
        elif role == "tool":
            out.append(
                {"role": "tool", "tool_call_id": m["tool_call_id"], "content": _text(m.get("content"))}
            )
        else:
            raise InvalidRequest(f"Cohere does not accept messages with role '{role}'", param="messages")
    return out


def _tools(body: dict[str, Any], tools: list[dict[str, Any]], choice: Any) -> None:
    if isinstance(choice, dict):  # a named function: REQUIRED, with only that tool
        name = choice.get("function", {}).get("name")
        tools = [t for t in tools if t["function"]["name"] == name]
        if not tools:
            raise InvalidRequest(f"tool_choice names unknown function {name!r}", param="tool_choice")
        body["tool_choice"] = "REQUIRED"
    elif choice in _CHOICE:
        body["tool_choice"] = _CHOICE[choice]
    out = []
    for t in tools:
        fn = t["function"]
        spec = {
            "name": fn["name"],
            "parameters": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            spec["description"] = fn["description"]
        if fn.get("strict"):
            body["strict_tools"] = True
        out.append({"type": "function", "function": spec})
    body["tools"] = out


def _sampling(body: dict[str, Any], req: dict[str, Any]) -> None:
    for key in _PASS:
        value = req.get(key)
        if value is not None:
            body[key] = value
    for key in _PENALTIES:  # OpenAI -2..2, Cohere 0..1
        if req.get(key) is not None:
            body[key] = min(1.0, max(0.0, float(req[key])))
    top_p = req.get("top_p")
    if top_p is not None:
        body["p"] = min(0.99, max(0.01, float(top_p)))
    if req.get("top_k") is not None:
        body["k"] = req["top_k"]
    limit = req.get("max_completion_tokens") or req.get("max_tokens")
    if limit is not None:
        body["max_tokens"] = limit
    stop = req.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    rf = req.get("response_format")
    if rf and rf.get("type") == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif rf and rf.get("type") == "json_schema":
        body["response_format"] = {"type": "json_object", "json_schema": rf["json_schema"]["schema"]}
    if req.get("logprobs"):
        body["logprobs"] = True


# -- response ---------------------------------------------------------------------------
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
class CohereProtocol(Protocol):
    kind = "cohere"
    ops = frozenset({"chat", "embeddings"})

    def __init__(self, provider: ProviderConfig, profile: Profile) -> None:
        super().__init__(provider, profile)
        base = (provider.base_url or profile.base_url or "https://api.cohere.com").rstrip("/")
        if base.endswith(("/v1", "/v2")):  # the API version is part of each path
            base = base[:-3]
        query = ("?" + urlencode(provider.query)) if provider.query else ""
        self._chat_url = f"{base}/v2/chat{query}"
        self._embed_url = f"{base}/v2/embed{query}"
        self._models_url = f"{base}/v1/models?" + urlencode({**provider.query, "page_size": 1000})
        head = {"Content-Type": "application/json", "Accept": "application/json"}
        if provider.api_key:
            head["Authorization"] = f"Bearer {provider.api_key}"
        self._headers = head | dict(provider.headers)
        self._sse_headers = self._headers | {"Accept": "text/event-stream"}

    def chat_request(self, req: dict[str, Any], model: str, stream: bool) -> HttpCall:
        body: dict[str, Any] = {"model": model, "messages": _messages(req["messages"])}
        tools = req.get("tools")
        if tools:
            _tools(body, tools, req.get("tool_choice"))
        _sampling(body, req)
        if stream:
            body["stream"] = True
        headers = self._sse_headers if stream else self._headers
        return HttpCall("POST", self._chat_url, dict(headers), _enc.encode(body), stream=stream)

    def chat_response(self, body: bytes, model: str) -> Translated:
        r = _object(body, "chat response")
        m = r.get("message") or {}
        texts: list[str] = []
        thoughts = [m["tool_plan"]] if m.get("tool_plan") else []
        for p in m.get("content") or ():
            if p.get("type") == "thinking":
                thoughts.append(p.get("thinking") or "")
            else:
                texts.append(p.get("text") or "")
        calls = [_tc(c.get("id"), *_fn(c.get("function"))) for c in m.get("tool_calls") or ()]
        text = "".join(texts)
        msg: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
        if calls:
            msg["tool_calls"] = calls
        if thoughts:
            msg["reasoning_content"] = "\n".join(thoughts)
        reason = _finish(r.get("finish_reason"), bool(calls), self.provider.id)
        choice: dict[str, Any] = {"index": 0, "message": msg, "finish_reason": reason}
        if r.get("logprobs"):
            choice["logprobs"] = {"content": [_logprob(i) for i in r["logprobs"]], "refusal": None}
        usage = _usage(r.get("usage"))
        return Translated(chat_completion(model, [choice], usage), usage)

    def chat_stream(self, model: str, include_usage: bool) -> StreamTranslator:
        return CohereStream(model, include_usage, self.provider.id)

    def embeddings_request(self, req: dict[str, Any], model: str) -> HttpCall:
        inp = req.get("input")
        texts = [inp] if isinstance(inp, str) else inp
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise InvalidRequest(
                "Cohere embeds text: 'input' must be a string or a list of strings", param="input"
            )
        if len(texts) > MAX_TEXTS:
            raise InvalidRequest(f"Cohere embeds at most {MAX_TEXTS} texts per request", param="input")
        body: dict[str, Any] = {
            "model": model,
            "texts": texts,
            "input_type": "search_document",
            "embedding_types": ["float"],
        }
        if req.get("dimensions"):
            body["output_dimension"] = req["dimensions"]
        return HttpCall("POST", self._embed_url, dict(self._headers), _enc.encode(body))

    def embeddings_response(self, body: bytes, model: str, req: dict[str, Any]) -> Translated:
        r = _object(body, "embed response")
        vectors: list[Any] = (r.get("embeddings") or {}).get("float") or []
        if req.get("encoding_format") == "base64":
            vectors = [_b64(v) for v in vectors]
        meta = r.get("meta") or {}
        billed, tokens = meta.get("billed_units") or {}, meta.get("tokens") or {}
        usage = Usage(prompt_tokens=_int(billed.get("input_tokens"), tokens.get("input_tokens")))
        return Translated(embeddings_response(model, vectors, usage), usage)

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> SwitchmanError:
        pid = self.provider.id
        msg = _error_message(body) or f"HTTP {status}"
        if status in (499, 500, 501):
            return UpstreamError(f"provider {pid!r} failed ({status}): {msg}", provider=pid)
        if status == 498:  # Cohere's "invalid token"
            status = 401
        wait = retry_after(headers) if status in (429, 503) else None
        return upstream_status_error(status, msg, provider=pid, retry_after=wait)

    def models_request(self) -> HttpCall | None:
        return HttpCall("GET", self._models_url, dict(self._headers))

    def models_response(self, body: bytes) -> list[str]:
        models = _object(body, "model list").get("models") or []
        return [
            m["name"]
            for m in models
            if m.get("name") and (m.get("endpoints") is None or {"chat", "embed"} & set(m["endpoints"]))
        ]


def _b64(vector: list[float]) -> str:
    packed = array("f", vector)
    if not _LITTLE:
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def _error_message(body: bytes) -> str:
    """Cohere error bodies vary by status and revision: take a message if there is one."""
    try:
        data = _dec_any.decode(body)
    except msgspec.DecodeError:
        return body[:500].decode(errors="replace").strip()
    if isinstance(data, dict):
        for key in ("message", "data", "detail", "error"):
            if isinstance(data.get(key), str):
                return data[key]
    return body[:500].decode(errors="replace")
