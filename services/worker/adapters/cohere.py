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

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import msgspec

from libs.common.errors import InvalidRequest, SwitchmanError, UpstreamError, upstream_status_error

from ..chunks import Usage, chat_completion, embeddings_response
from .base import HttpCall, Protocol, StreamTranslator, Translated, retry_after

if TYPE_CHECKING:
    from libs.common.config import ProviderConfig
    from libs.common.profiles import Profile


from .cohere_stream import CohereStream, _dec_any, _enc, _finish, _fn, _int, _logprob, _object, _tc, _usage

_CHOICE = {"required": "REQUIRED", "none": "NONE"}
_PASS = ("temperature", "seed", "documents", "safety_mode")
_PENALTIES = ("frequency_penalty", "presence_penalty")
_LITTLE = sys.byteorder == "little"
MAX_TEXTS = 96
_PLAIN_ROLES = frozenset({"user", "assistant", "system"})


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


def _message(m: dict[str, Any]) -> dict[str, Any]:
    role = m.get("role")
    if role == "user":
        return {"role": "user", "content": _user_content(m.get("content") or "")}
    if role == "assistant":
        return _assistant(m)
    if role == "system" or role == "developer":
        return {"role": "system", "content": _text(m.get("content"))}
    if role == "tool":
        return {"role": "tool", "tool_call_id": m["tool_call_id"], "content": _text(m.get("content"))}
    raise InvalidRequest(f"Cohere does not accept messages with role '{role}'", param="messages")


def _messages(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A message that is exactly {role: user/assistant/system, content: <string>} already
    # is its Cohere message (the common case): it is sent as is, not copied.
    return [
        m
        if len(m) == 2 and m.get("content").__class__ is str and m.get("role") in _PLAIN_ROLES
        else _message(m)
        for m in msgs
    ]


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
        vectors: list[list[float]] = (r.get("embeddings") or {}).get("float") or []
        meta = r.get("meta") or {}
        billed, tokens = meta.get("billed_units") or {}, meta.get("tokens") or {}
        usage = Usage(prompt_tokens=_int(billed.get("input_tokens"), tokens.get("input_tokens")))
        return Translated(embeddings_response(model, vectors, usage, req.get("encoding_format")), usage)

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
