"""A strict, deterministic emulator of the Anthropic Messages API (a test double).

``make_app(script=None, *, api_key=None)`` returns an ``aiohttp.web.Application`` serving
``POST /v1/messages``, ``GET /v1/models`` and ``GET /v1/models/{id}``; ``await serve(app)``
runs it on a free port. It imports nothing
from ``services/``: it plays the external API, written from Anthropic's published
reference (error shapes, field rules, SSE event sequence).

Strictness (each a 400 ``invalid_request_error`` in Anthropic's shape
``{"type": "error", "error": {"type", "message"}, "request_id"}``; every response also
carries a ``request-id`` header):

* ``x-api-key`` missing (or not ``api_key`` when given) → 401 ``authentication_error``;
  ``anthropic-version`` missing → 400.
* missing ``model`` / ``messages`` / ``max_tokens``; unknown top-level fields (also inside
  ``metadata``, messages and blocks); ``temperature`` / ``top_p`` outside 0–1; a model
  not named ``claude-*`` → 404 ``not_found_error``.
* a message role other than user/assistant (``system`` gets the API's own message);
  empty content; empty or whitespace-only text blocks; unknown block types; base64
  images with a media type other than jpeg/png/gif/webp, invalid base64 or bytes that do
  not match the media type; ``tool_use`` blocks not answered by ``tool_result`` blocks at
  the start of the next user turn, or ``tool_result`` blocks without a matching
  ``tool_use``; bad tools / tool_choice / thinking / output_config.
* consecutive turns of the same role are combined, as the API documents.

Answers (deterministic):

* text: ``"You said: <last user text>"`` (directives removed; `` [N image(s)]`` appended
  when the last user turn holds images). After tool results:
  ``"Tool results: <content>; ..."``. A final assistant turn (prefill) is continued with
  ``" and that is all."``.
* tools: when tools are given, ``tool_choice`` is not ``none`` and either the choice is
  ``any``/``tool`` or the last user text contains ``weather``, the answer is ``tool_use``
  blocks (after a short text block when the choice is ``auto``): one per city among
  Paris, London, Tokyo, Berlin named in the text (Paris when none), only the first when
  ``disable_parallel_tool_use``. The input fills the tool's schema: the first string
  property gets the city, other properties a default of their type.
* JSON: ``output_config.format`` → a JSON object filling the schema (strings get the
  last user text); a system prompt containing ``JSON`` → ``{"echo": <last user text>}``.
* ``thinking: {"type": "enabled"}`` → a thinking block (with signature) comes first.
* tokens are whitespace-separated words; ``stop_sequences`` cut the text
  (``stop_reason: stop_sequence``), ``max_tokens`` truncates it (``max_tokens``).
* ``cache_control`` markers: the prefix up to the last marker is written to an
  in-memory cache on first sight (``cache_creation_input_tokens``) and read afterwards
  (``cache_read_input_tokens``).
* streaming: ``message_start``, ``ping``, per block ``content_block_start`` /
  deltas / ``content_block_stop``, ``message_delta`` (cumulative usage), ``message_stop``.

Directives, per request: a magic string in the last user text, or the next entry of
``script`` (a list consumed one entry per ``POST /v1/messages``, or a callable taking
the request body and returning an entry or None). Entries are written without brackets
(``"fail:529"``); ``"ok"`` means no directive.

* ``[fail:NNN]`` — answer HTTP NNN with the documented error type (400, 401, 402, 403,
  404, 413, 429, 500, 504, 529); 429 and 529 carry ``retry-after: 2``.
* ``[fail:error_event]`` — streams: an ``error`` event (``overloaded_error``) after the
  first text delta; non-stream: 529.
* ``[fail:cut]`` — streams: the connection is dropped after the first text delta;
  non-stream: dropped before any response.
* ``[cache:R:W]`` — report ``cache_read_input_tokens`` R and ``cache_creation_input_tokens`` W.
* ``[stop:REASON]`` — report that ``stop_reason`` (e.g. refusal, pause_turn).

``app[REQUESTS]`` records every ``POST /v1/messages`` as ``{"headers", "body"}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ERROR_MESSAGES = {
    429: "Number of requests has exceeded your rate limit",
    500: "Internal server error",
    529: "Overloaded",
}
TOP_LEVEL = frozenset(
    {
        "model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature",
        "top_p", "top_k", "tools", "tool_choice", "thinking", "metadata", "service_tier",
        "output_config", "cache_control", "container", "inference_geo", "speed", "diagnostics",
        "user_profile_id", "workspace_id",
    }
)  # fmt: skip
BLOCK_KEYS = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control"},
    "document": {"type", "source", "cache_control", "title", "context", "citations"},
    "tool_use": {"type", "id", "name", "input", "cache_control"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
}
TOOL_KEYS = {"name", "description", "input_schema", "cache_control", "strict", "type", "input_examples"}
IMAGE_MAGIC = {
    "image/jpeg": lambda b: b.startswith(b"\xff\xd8\xff"),
    "image/png": lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"),
    "image/gif": lambda b: b.startswith((b"GIF87a", b"GIF89a")),
    "image/webp": lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
}
CITIES = ("Paris", "London", "Tokyo", "Berlin")
MODELS = [
    ("claude-opus-4-6", "Claude Opus 4.6", "2026-02-05T00:00:00Z"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
]
DIRECTIVE = re.compile(r"\[(fail|cache|stop):([^\]]*)\]")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")

Script = list[str] | Callable[[dict[str, Any]], str | None] | None

# Application state keys; tests read ``app[REQUESTS]``.
REQUESTS = web.AppKey("requests", list)
SCRIPT = web.AppKey("script", object)
API_KEY = web.AppKey("api_key", object)
CACHE = web.AppKey("cache", set)
SEQ = web.AppKey("seq", list)
REQUEST_ID = web.RequestKey("request_id", str)


class Invalid(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- helpers -------------------------------------------------------------------------------


def _error(
    request: web.Request, status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": request[REQUEST_ID],
    }
    return web.json_response(body, status=status, headers=headers)


def _words(text: str) -> int:
    return len(text.split())


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _number(body: dict[str, Any], key: str, low: float, high: float) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"{key}: Input should be a valid number")
    if value < low:
        raise Invalid(f"{key}: Input should be greater than or equal to {low:g}")
    if value > high:
        raise Invalid(f"{key}: Input should be less than or equal to {high:g}")


def _extra(obj: dict[str, Any], allowed: set[str] | frozenset[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise Invalid(f"{where}{key}: Extra inputs are not permitted")


# -- validation ----------------------------------------------------------------------------


def _text_block(block: dict[str, Any], where: str) -> None:
    text = block.get("text")
    if not isinstance(text, str):
        raise Invalid(f"{where}.text: Field required")
    if not text:
        raise Invalid("messages: text content blocks must be non-empty")
    if text.isspace():
        raise Invalid("messages: text content blocks must contain non-whitespace text")


def _source(block: dict[str, Any], where: str) -> None:
    src = block.get("source")
    if not isinstance(src, dict):
        raise Invalid(f"{where}.source: Field required")
    if src.get("type") == "url":
        if not str(src.get("url", "")).startswith(("http://", "https://")):
            raise Invalid(f"{where}.source.url: Input should be a valid URL")
        return
    if src.get("type") != "base64" or block["type"] != "image":
        if block["type"] == "document":
            return
        raise Invalid(f"{where}.source.type: Input should be 'base64' or 'url'")
    mime = src.get("media_type")
    if mime not in IMAGE_MAGIC:
        raise Invalid(
            f"{where}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
        )
    try:
        raw = base64.b64decode(src.get("data", ""), validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise Invalid(f"{where}.source.base64.data: invalid base64 data") from None
    if not IMAGE_MAGIC[mime](raw):
        raise Invalid(f"{where}.source.base64.data: the image does not match the provided media type {mime}")


def _block(block: Any, role: str, where: str) -> None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind not in BLOCK_KEYS:
        raise Invalid(
            f"{where}: Input tag '{kind}' found using 'type' does not match any of the expected tags"
        )
    _extra(block, BLOCK_KEYS[kind], where + ".")
    if kind == "text":
        _text_block(block, where)
    elif kind in ("image", "document"):
        _source(block, where)
    elif kind in ("tool_use", "thinking", "redacted_thinking") and role != "assistant":
        raise Invalid(f"{where}: `{kind}` blocks are only allowed in assistant messages")
    elif kind == "tool_use" and not (
        isinstance(block.get("id"), str)
        and isinstance(block.get("name"), str)
        and isinstance(block.get("input"), dict)
    ):
        raise Invalid(f"{where}: tool_use blocks need a string id, a string name and an object input")
    elif kind == "tool_result":
        if role != "user":
            raise Invalid(f"{where}: `tool_result` blocks are only allowed in user messages")
        if not isinstance(block.get("tool_use_id"), str):
            raise Invalid(f"{where}.tool_use_id: Field required")
        content = block.get("content")
        if content is not None and not isinstance(content, str):
            for k, inner in enumerate(content):
                _block(inner, "user", f"{where}.content.{k}")


def _turns(messages: Any) -> list[dict[str, Any]]:
    """Validate the messages; return them with consecutive same-role turns combined."""
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: at least one message is required")
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise Invalid(f"messages.{i}: Input should be a valid dictionary")
        _extra(m, {"role", "content"}, f"messages.{i}.")
        role = m.get("role")
        if role == "system":
            raise Invalid(
                'messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                'parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = m.get("content")
        final_assistant = i == len(messages) - 1 and role == "assistant"
        if not content and not final_assistant:
            raise Invalid(
                f"messages.{i}: all messages must have non-empty content except for the optional final assistant message"
            )
        if isinstance(content, str):
            if content and content.isspace():
                raise Invalid("messages: text content blocks must contain non-whitespace text")
        elif isinstance(content, list):
            for j, block in enumerate(content):
                _block(block, role, f"messages.{i}.content.{j}")
        else:
            raise Invalid(f"messages.{i}.content: Input should be a valid string or list")
        if final_assistant and isinstance(content, str) and content != content.rstrip():
            raise Invalid("messages: final assistant content cannot end with trailing whitespace")
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += _blocks(content)
        else:
            turns.append({"role": role, "content": _blocks(content)})
    _check_tool_pairs(turns)
    return turns


def _check_tool_pairs(turns: list[dict[str, Any]]) -> None:
    for n, turn in enumerate(turns):
        if turn["role"] != "user":
            continue
        prev = turns[n - 1] if n else None
        asked = [b["id"] for b in prev["content"] if b.get("type") == "tool_use"] if prev else []
        results = [(j, b) for j, b in enumerate(turn["content"]) if b.get("type") == "tool_result"]
        for j, b in results:
            if b["tool_use_id"] not in asked:
                raise Invalid(
                    f"messages.{n}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{b['tool_use_id']}. Each `tool_result` block must have a corresponding `tool_use` block "
                    "in the previous message."
                )
        if asked and [j for j, _ in results] != list(range(len(results))):
            raise Invalid(f"messages.{n}: `tool_result` blocks must come first in the user message")
    for n, turn in enumerate(turns):
        asked = [
            b["id"] for b in turn["content"] if turn["role"] == "assistant" and b.get("type") == "tool_use"
        ]
        nxt = turns[n + 1]["content"] if n + 1 < len(turns) else None
        answered = {b.get("tool_use_id") for b in nxt or () if b.get("type") == "tool_result"}
        missing = [i for i in asked if i not in answered]
        if missing and nxt is not None:
            raise Invalid(
                f"messages.{n + 1}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block "
                "in the next message."
            )


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools") or []
    names = []
    for i, tool in enumerate(tools):
        _extra(tool, TOOL_KEYS, f"tools.{i}.")
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise Invalid(f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise Invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        names.append(name)
    if len(set(names)) != len(names):
        raise Invalid("tools: Tool names must be unique.")
    choice = body.get("tool_choice")
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    allowed = {
        "none": {"type"},
        "auto": {"type", "disable_parallel_tool_use"},
        "any": {"type", "disable_parallel_tool_use"},
    }
    allowed["tool"] = {"type", "name", "disable_parallel_tool_use"}
    if kind not in allowed:
        raise Invalid(
            "tool_choice: Input tag found using 'type' does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
        )
    _extra(choice, allowed[kind], "tool_choice.")
    if kind == "tool" and choice.get("name") not in names:
        raise Invalid(f"tool_choice: Tool '{choice.get('name')}' not found in tools")


def _check_options(body: dict[str, Any]) -> None:
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    top_k = body.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise Invalid("top_k: Input should be a valid non-negative integer")
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise Invalid("stop_sequences: Input should be a valid list of strings")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise Invalid("stream: Input should be a valid boolean")
    meta = body.get("metadata")
    if meta is not None:
        _extra(meta, {"user_id"}, "metadata.")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        for j, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise Invalid(f"system.{j}.type: Input should be 'text'")
            _text_block(block, f"system.{j}")
    thinking = body.get("thinking")
    if thinking is not None:
        kind = thinking.get("type")
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or budget < 1024:
                raise Invalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
            if body["max_tokens"] <= budget:
                raise Invalid("`max_tokens` must be greater than `thinking.budget_tokens`")
        elif kind not in ("disabled", "adaptive"):
            raise Invalid("thinking.type: Input should be 'enabled', 'disabled' or 'adaptive'")
    fmt = (body.get("output_config") or {}).get("format")
    if fmt is not None and (fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict)):
        raise Invalid("output_config.format: Input should be {type: 'json_schema', schema: object}")


def validate(body: Any) -> list[dict[str, Any]]:
    """Check a Messages request like the API does; return its combined turns."""
    if not isinstance(body, dict):
        raise Invalid("Input should be a valid dictionary")
    _extra(body, TOP_LEVEL, "")
    for key in ("max_tokens", "messages", "model"):
        if key not in body:
            raise Invalid(f"{key}: Field required")
    if not isinstance(body["model"], str) or not body["model"].startswith("claude-"):
        raise Invalid(f"model: {body['model']}", status=404)
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        raise Invalid("max_tokens: Input should be a valid non-negative integer")
    turns = _turns(body["messages"])
    _check_options(body)
    _check_tools(body)
    return turns


# -- answering ----------------------------------------------------------------------------


def _text_of(blocks: list[dict[str, Any]]) -> str:
    return " ".join(b["text"] for b in blocks if b.get("type") == "text")


def _fill(schema: Any, text: str) -> Any:
    """A deterministic value of a JSON schema: strings get ``text``."""
    if not isinstance(schema, dict):
        return text
    kind = schema.get("type")
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: _fill(sub, text) for name, sub in props.items()}
    return {"string": text, "integer": 1, "number": 1.5, "boolean": True, "array": [], "null": None}.get(
        kind, text
    )


def _tool_input(tool: dict[str, Any], city: str) -> dict[str, Any]:
    out = _fill(tool.get("input_schema"), "x")
    for name, sub in (tool.get("input_schema", {}).get("properties") or {}).items():
        if isinstance(sub, dict) and sub.get("type") == "string" and "enum" not in sub:
            out[name] = city
            break
    return out


def _wants_tools(body: dict[str, Any], text: str) -> bool:
    choice = (body.get("tool_choice") or {}).get("type", "auto")
    if not body.get("tools") or choice == "none":
        return False
    return choice in ("any", "tool") or "weather" in text.lower()


def _tool_blocks(body: dict[str, Any], text: str, seq: int) -> list[dict[str, Any]]:
    choice = body.get("tool_choice") or {"type": "auto"}
    tools = body["tools"]
    tool = next((t for t in tools if t["name"] == choice.get("name")), tools[0])
    found = sorted((text.lower().find(c.lower()), c) for c in CITIES if c.lower() in text.lower())
    cities = [c for _, c in found] or ["Paris"]
    if choice.get("disable_parallel_tool_use"):
        cities = cities[:1]
    out: list[dict[str, Any]] = []
    if choice["type"] == "auto":
        out.append({"type": "text", "text": "Let me look that up."})
    for k, city in enumerate(cities):
        out.append(
            {
                "type": "tool_use",
                "id": f"toolu_emu{seq:06d}{k}",
                "name": tool["name"],
                "input": _tool_input(tool, city),
            }
        )
    return out


def _reply(body: dict[str, Any], turns: list[dict[str, Any]], seq: int) -> list[dict[str, Any]]:
    """The content blocks of the answer, before stop sequences and max_tokens apply."""
    last = turns[-1]
    if last["role"] == "assistant":
        return [{"type": "text", "text": " and that is all."}]
    results = [b for b in last["content"] if b.get("type") == "tool_result"]
    text = DIRECTIVE.sub("", _text_of(last["content"])).strip()
    if results:
        parts = [
            r.get("content") if isinstance(r.get("content"), str) else _text_of(r.get("content") or [])
            for r in results
        ]
        return [{"type": "text", "text": "Tool results: " + "; ".join(parts)}]
    if _wants_tools(body, text):
        return _tool_blocks(body, text, seq)
    fmt = (body.get("output_config") or {}).get("format")
    system = body.get("system") or ""
    system_text = system if isinstance(system, str) else _text_of(system)
    if fmt is not None:
        answer = json.dumps(_fill(fmt["schema"], text))
    elif "JSON" in system_text:
        answer = json.dumps({"echo": text})
    else:
        images = sum(1 for b in last["content"] if b.get("type") == "image")
        answer = f"You said: {text}" + (f" [{images} image(s)]" if images else "")
    return [{"type": "text", "text": answer}]


def _finish(
    body: dict[str, Any], blocks: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], str, str | None]:
    """Apply stop sequences and max_tokens: (blocks, stop_reason, stop_sequence)."""
    if any(b["type"] == "tool_use" for b in blocks):
        return blocks, "tool_use", None
    block = blocks[-1]
    text, reason, matched = block["text"], "end_turn", None
    hits = sorted((text.find(s), s) for s in body.get("stop_sequences") or () if s and s in text)
    if hits:
        text, reason, matched = text[: hits[0][0]], "stop_sequence", hits[0][1]
    budget = body["max_tokens"] - sum(_words(b.get("thinking", "")) for b in blocks)
    words = text.split(" ")
    if _words(text) > budget:
        kept, count = [], 0
        for w in words:
            count += 1 if w else 0
            if count > budget:
                break
            kept.append(w)
        text, reason, matched = " ".join(kept).rstrip(), "max_tokens", None
    out = blocks[:-1] + ([{"type": "text", "text": text}] if text else [])
    return out, reason, matched


def _cache(app: web.Application, body: dict[str, Any]) -> tuple[int, int, int]:
    """(uncached input tokens, cache reads, cache writes) of a request."""
    parts: list[Any] = list(body.get("tools") or [])
    system = body.get("system")
    parts += [system] if isinstance(system, str) else list(system or [])
    for m in body["messages"]:
        parts += _blocks(m["content"])
    sizes = [_words(json.dumps(p)) for p in parts]
    total = sum(sizes) + 1
    marks = [i for i, p in enumerate(parts) if isinstance(p, dict) and p.get("cache_control")]
    if not marks:
        return total, 0, 0
    prefix = json.dumps(parts[: marks[-1] + 1], sort_keys=True)
    key = hashlib.sha256((body["model"] + prefix).encode()).hexdigest()
    cached = sum(sizes[: marks[-1] + 1])
    seen = key in app[CACHE]
    app[CACHE].add(key)
    return total - cached, (cached if seen else 0), (0 if seen else cached)


def _answer(
    app: web.Application, body: dict[str, Any], turns: list[dict[str, Any]], directive: str
) -> dict[str, Any]:
    app[SEQ][0] += 1
    seq = app[SEQ][0]
    blocks = _reply(body, turns, seq)
    thinking = body.get("thinking") or {}
    if thinking.get("type") == "enabled":
        thought = f"The user wrote {_words(_text_of(turns[-1]['content']))} words."
        sig = hashlib.sha256(thought.encode()).hexdigest()
        blocks.insert(0, {"type": "thinking", "thinking": thought, "signature": sig})
    blocks, reason, matched = _finish(body, blocks)
    uncached, read, write = _cache(app, body)
    if directive.startswith("cache:"):
        _, r, w = directive.split(":")
        read, write = int(r), int(w)
    if directive.startswith("stop:"):
        reason = directive[5:]
    out_tokens = sum(_words(b.get("text", "") + " " + b.get("thinking", "")) for b in blocks)
    out_tokens += sum(1 + _words(json.dumps(b["input"])) for b in blocks if b["type"] == "tool_use")
    return {
        "id": f"msg_emu{seq:010d}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": blocks,
        "stop_reason": reason,
        "stop_sequence": matched,
        "usage": {
            "input_tokens": uncached,
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": read,
            "output_tokens": out_tokens,
            "service_tier": "standard",
        },
    }


# -- streaming ----------------------------------------------------------------------------


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    kind = block["type"]
    empty = {
        "text": {"type": "text", "text": ""},
        "thinking": {"type": "thinking", "thinking": "", "signature": ""},
    }
    start = empty.get(kind) or {**block, "input": {}}
    out = [
        _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
    ]
    if kind == "text":
        deltas = [{"type": "text_delta", "text": w} for w in re.findall(r"\S+\s*|\s+", block["text"])]
    elif kind == "thinking":
        deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(block["thinking"], 12)]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    else:
        raw = json.dumps(block["input"])
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *_pieces(raw, 8)]]
    for d in deltas:
        out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}))
    out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    return out


def stream_events(message: dict[str, Any]) -> list[bytes]:
    """The SSE events of a complete message, in the API's order."""
    usage = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    out = [_sse("message_start", {"type": "message_start", "message": start}), _sse("ping", {"type": "ping"})]
    for i, block in enumerate(message["content"]):
        out += _block_events(i, block)
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    final_usage = {k: v for k, v in usage.items() if k != "service_tier"}
    out.append(_sse("message_delta", {"type": "message_delta", "delta": delta, "usage": final_usage}))
    out.append(_sse("message_stop", {"type": "message_stop"}))
    return out


async def _stream(request: web.Request, message: dict[str, Any], directive: str) -> web.StreamResponse:
    headers = {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "request-id": request[REQUEST_ID],
    }
    resp = web.StreamResponse(headers=headers)
    await resp.prepare(request)
    events = stream_events(message)
    first_delta = next((i for i, e in enumerate(events) if e.startswith(b"event: content_block_delta")), 2)
    for i, event in enumerate(events):
        await resp.write(event)
        if i < first_delta:
            continue
        if directive == "fail:error_event":
            err = {"type": "overloaded_error", "message": "Overloaded"}
            await resp.write(
                _sse("error", {"type": "error", "error": err, "request_id": request[REQUEST_ID]})
            )
            break
        if directive == "fail:cut":
            assert request.transport is not None
            request.transport.abort()
            return resp
    await resp.write_eof()
    return resp


# -- the application ----------------------------------------------------------------------


def _directive(app: web.Application, body: Any) -> str:
    script: Any = app[SCRIPT]
    entry = None
    if callable(script):
        entry = script(body)
    elif script:
        entry = script.popleft()
    if entry is not None:
        return "" if entry == "ok" else entry
    try:
        last = next(m for m in reversed(body["messages"]) if m.get("role") == "user")
        text = _text_of(_blocks(last["content"]))
    except (KeyError, TypeError, AttributeError, StopIteration):
        return ""
    match = DIRECTIVE.search(text)
    return f"{match.group(1)}:{match.group(2)}" if match else ""


def _failure(request: web.Request, directive: str, stream: bool) -> web.StreamResponse | None:
    if directive == "fail:error_event" and not stream:
        directive = "fail:529"
    if directive == "fail:cut" and not stream:
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=500)
    status = int(directive[5:]) if directive[5:].isdigit() else None
    if not directive.startswith("fail:") or status is None:
        return None
    headers = {"retry-after": "2"} if status in (429, 529) else None
    return _error(request, status, ERROR_MESSAGES.get(status, ERROR_TYPES.get(status, "error")), headers)


def _authorized(request: web.Request) -> bool:
    key = request.headers.get("x-api-key")
    expected = request.app[API_KEY]
    return bool(key) and (expected is None or key == expected)


async def messages(request: web.Request) -> web.StreamResponse:
    if not _authorized(request):
        return _error(request, 401, "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        return _error(request, 400, "anthropic-version: header is required")
    try:
        body = json.loads(await request.read())
    except ValueError:
        return _error(request, 400, "There was an error parsing the body of your request")
    app = request.app
    app[REQUESTS].append({"headers": dict(request.headers), "body": body})
    directive = _directive(app, body)
    try:
        turns = validate(body)
    except Invalid as e:
        return _error(request, e.status, str(e))
    stream = bool(body.get("stream"))
    failed = _failure(request, directive, stream)
    if failed is not None:
        return failed
    message = _answer(app, body, turns, directive)
    if stream:
        return await _stream(request, message, directive)
    return web.json_response(message)


def _model(entry: tuple[str, str, str]) -> dict[str, Any]:
    mid, name, created = entry
    return {"type": "model", "id": mid, "display_name": name, "created_at": created, "lifecycle": "active"}


async def list_models(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _error(request, 401, "invalid x-api-key")
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        return _error(request, 400, "limit: Input should be between 1 and 1000")
    ids = [m[0] for m in MODELS]
    start = ids.index(request.query["after_id"]) + 1 if request.query.get("after_id") in ids else 0
    page = [_model(m) for m in MODELS[start : start + limit]]
    return web.json_response(
        {
            "data": page,
            "has_more": start + limit < len(MODELS),
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
        }
    )


async def get_model(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _error(request, 401, "invalid x-api-key")
    for entry in MODELS:
        if entry[0] == request.match_info["model_id"]:
            return web.json_response(_model(entry))
    return _error(request, 404, f"model: {request.match_info['model_id']}")


@web.middleware
async def _request_id(request: web.Request, handler: Any) -> web.StreamResponse:
    request[REQUEST_ID] = "req_emu" + os.urandom(10).hex()
    resp = await handler(request)
    if not resp.prepared:
        resp.headers["request-id"] = request[REQUEST_ID]
    return resp


def make_app(script: Script = None, *, api_key: str | None = None) -> web.Application:
    """The emulator app; see the module doc for ``script`` and the behaviour."""
    app = web.Application(middlewares=[_request_id])
    app[SCRIPT] = script if callable(script) else deque(script or ())
    app[API_KEY] = api_key
    app[REQUESTS] = []
    app[CACHE] = set()
    app[SEQ] = [0]
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id}", get_model)
    return app


async def serve(
    app: web.Application | None = None, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve ``app`` (default: a fresh emulator) on host:port (0: a free port).

    Returns (runner, base URL without ``/v1``); stop it with ``await runner.cleanup()``.
    """
    runner = web.AppRunner(app or make_app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sockets = getattr(getattr(site, "_server", None), "sockets", None) or []
    return runner, f"http://{host}:{sockets[0].getsockname()[1] if sockets else port}"
