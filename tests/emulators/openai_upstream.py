"""A strict, deterministic OpenAI API emulator (aiohttp) used as the gateway's upstream in tests.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/embeddings``,
``GET /v1/models``, ``GET /v1/models/{id}``. Standalone: imports nothing from services/ or libs/.

    state = UpstreamState(api_key="sk-test")
    runner, base_url = await start(state)          # base_url ends in /v1 (as the openai SDK wants)
    ...
    await runner.cleanup()

Strictness (400 + OpenAI error shape, ``param`` naming the field): unknown top-level fields
(unless in ``state.accept_extra``), ``stream_options`` without ``stream: true``, missing
model/messages, bad roles, ranges (n 1..128, temperature 0..2, top_p 0..1, penalties -2..2,
top_logprobs 0..20, max_tokens >= 1), more than 4 stop strings, invalid tool names,
tool_choice/parallel_tool_calls without tools, tool messages without ``tool_call_id`` or not
answering the preceding assistant ``tool_calls`` (and unanswered tool_calls), json_object mode
without the word "json" in the messages, and finally JSON-schema validation of the whole body
against the official request schema (tests/schema.py). ``max_tokens`` together with
``max_completion_tokens`` is allowed (the latter wins).

Deterministic answers:

* chat reply = ``"You said: <last user text>"``; after tool results: ``"Tool results: <contents>"``;
  choice i > 0 gets a ``" [i]"`` suffix. Usage counts words/punctuation (``count_tokens``).
* triggers in the last user message: ``#tool`` (call the first tool), ``#tool:NAME`` (that tool),
  ``#tools`` (call every tool in parallel unless ``parallel_tool_calls`` is false),
  ``#words:N`` (reply is exactly ``w1 w2 ... wN``), ``#content_filter`` (finish_reason content_filter).
* ``tool_choice`` "required" always calls (first tool, or all with ``#tools``); a named function
  calls that one; "none" never calls. Like OpenAI, a *named* tool_choice finishes with "stop",
  otherwise tool calls finish with "tool_calls". Arguments are generated from the parameters schema.
* ``response_format`` json_object -> ``{"reply": ...}``; json_schema -> a value matching the schema.
* stop sequences cut the text; ``max_completion_tokens``/``max_tokens`` cut pieces -> "length".
* embeddings: unit vectors seeded from sha256(model, text); ``dimensions`` truncates + renormalises
  (text-embedding-3 behaviour); base64 = little-endian float32, the floats are float32-exact.

Streaming is OpenAI's: ``data: {json}\\n\\n`` chunks — first delta ``role`` + ``content: ""``
(tool calls: ``content: null`` + first tool call with index/id/type/name/``arguments: ""``), content
pieces / argument fragments, a finish chunk with ``delta: {}``, a usage chunk with ``choices: []``
when ``stream_options.include_usage`` (then every other chunk carries ``"usage": null``), and
``data: [DONE]\\n\\n``. Choices with n > 1 are interleaved round-robin.

Faults (mutate the shared ``UpstreamState`` at any time): ``fail_next`` (statuses returned before
succeeding; 0 = drop the connection without a response), ``retry_after`` (429s carry
``retry-after``/``retry-after-ms``), ``delay_first_byte_s``, ``chunk_delay_s``,
``cut_stream_after_chunks`` (close mid-stream, no ``[DONE]``), ``hang`` (no answer while true).
Observations: ``request_count``, ``counts`` (per path), ``requests`` (RecordedRequest log),
``last_request_body``/``last_request_headers``, ``in_flight``/``max_in_flight``,
``disconnects`` (client went away mid-stream), ``cancelled`` (client went away before any byte of
the answer; both need the client to close its connection, which ``start()`` notices).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import math
import random
import re
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.schema import closest_error, top_level_properties, validator

TOOL_TRIGGER = "#tool"
ALL_TOOLS_TRIGGER = "#tools"
WORDS_TRIGGER = "#words:"
CONTENT_FILTER_TRIGGER = "#content_filter"

DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
)
EMBEDDING_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
MODEL_CREATED = 1686935002
SYSTEM_FINGERPRINT = "fp_emulator"
VALID_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TRIGGER_RE = re.compile(r"#tools\b|#tool(?::[A-Za-z0-9_-]+)?|#words:\d+|#content_filter")


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON (None if absent or unparseable)
    raw: bytes


@dataclass
class UpstreamState:
    # behaviour
    api_key: str | None = None  # when set, require "Authorization: Bearer <api_key>"
    accept_extra: set[str] = field(default_factory=set)  # extra top-level request fields to accept
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    reject_unknown_models: bool = False  # 404 model_not_found for models not in `models`
    default_embedding_dims: int = 1536  # for embedding models not in EMBEDDING_DIMS
    stream_obfuscation: bool = False  # add OpenAI's "obfuscation" padding field to chunks
    # faults
    fail_next: list[int] = field(default_factory=list)
    retry_after: float | None = None
    delay_first_byte_s: float = 0.0
    chunk_delay_s: float = 0.0
    cut_stream_after_chunks: int | None = None
    hang: bool = False
    # observations
    request_count: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    requests: list[RecordedRequest] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    disconnects: int = 0
    cancelled: int = 0
    _seq: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    @property
    def last_request(self) -> RecordedRequest | None:
        return self.requests[-1] if self.requests else None

    @property
    def last_request_body(self) -> Any:
        return self.requests[-1].body if self.requests else None

    @property
    def last_request_headers(self) -> dict[str, str] | None:
        return self.requests[-1].headers if self.requests else None

    def reset_observations(self) -> None:
        self.request_count = self.in_flight = self.max_in_flight = self.disconnects = self.cancelled = 0
        self.counts.clear()
        self.requests.clear()

    def next_seq(self) -> int:
        return next(self._seq)


STATE_KEY: web.AppKey[UpstreamState] = web.AppKey("openai_upstream_state", UpstreamState)
_STARTED: web.RequestKey[bool] = web.RequestKey("openai_upstream_response_started", bool)


# =========================================================================== errors


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return _json(body, status=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


_FAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("Bad request (injected fault).", "invalid_request_error", None),
    401: ("Incorrect API key provided (injected fault).", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to access this resource (injected fault).", "invalid_request_error", None),
    404: ("Not found (injected fault).", "invalid_request_error", None),
    408: ("Request timed out (injected fault).", "server_error", None),
    409: ("Conflict (injected fault).", "invalid_request_error", None),
    429: ("Rate limit reached for requests (injected fault).", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}


def _fault(status: int, state: UpstreamState) -> ApiError:
    message, type_, code = _FAULTS.get(status, (f"Injected fault {status}.", "server_error", None))
    headers: dict[str, str] = {}
    if status == 429 and state.retry_after is not None:
        ra = state.retry_after
        headers["retry-after"] = str(int(ra)) if float(ra).is_integer() else f"{ra:g}"
        headers["retry-after-ms"] = str(int(round(ra * 1000)))
    return ApiError(status, message, type=type_, code=code, headers=headers)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


# =========================================================================== text helpers

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_PIECE_RE = re.compile(r"\s*\S+|\s+$")


def count_tokens(text: str) -> int:
    """The emulator's tokenizer: words and single punctuation characters."""
    return len(_TOKEN_RE.findall(text))


def split_pieces(text: str) -> list[str]:
    """Stream pieces (word plus its leading whitespace); ``"".join(pieces) == text``."""
    return _PIECE_RE.findall(text)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt_num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _check_range(body: dict[str, Any], name: str, lo: float | None, hi: float | None, integer: bool) -> None:
    v = body.get(name)
    if v is None:
        return
    kind = "integer" if integer else "decimal"
    if not (_is_int(v) if integer else _is_num(v)):
        expected = "an integer" if integer else "a decimal"
        raise bad_request(
            f"Invalid type for '{name}': expected {expected}, but got {_type_name(v)} instead.",
            name,
            "invalid_type",
        )
    if lo is not None and v < lo:
        raise bad_request(
            f"Invalid '{name}': {kind} below minimum value. Expected a value >= {_fmt_num(lo)}, but got {v} instead.",
            name,
            f"{kind}_below_min_value",
        )
    if hi is not None and v > hi:
        raise bad_request(
            f"Invalid '{name}': {kind} above maximum value. Expected a value <= {_fmt_num(hi)}, but got {v} instead.",
            name,
            f"{kind}_above_max_value",
        )


def _check_unknown_fields(body: dict[str, Any], schema_name: str, state: UpstreamState) -> None:
    unknown = sorted(set(body) - top_level_properties(schema_name) - set(state.accept_extra))
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise bad_request(f"Unrecognized request argument{plural} supplied: {', '.join(unknown)}", unknown[0])


def _check_model(body: dict[str, Any], state: UpstreamState) -> str:
    model = body.get("model")
    if model is None:
        raise bad_request("you must provide a model parameter", "model")
    if not isinstance(model, str):
        raise bad_request(
            f"Invalid type for 'model': expected a string, but got {_type_name(model)} instead.",
            "model",
            "invalid_type",
        )
    if state.reject_unknown_models and model not in state.models:
        raise ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    return model


def _check_stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request(
            f"Invalid type for 'stream': expected a boolean, but got {_type_name(stream)} instead.",
            "stream",
            "invalid_type",
        )
    if body.get("stream_options") is not None and stream is not True:
        raise bad_request(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options"
        )
    return stream is True


def _check_stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        if len(stop) > 4:
            raise bad_request(
                f"Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with length {len(stop)} instead.",
                "stop",
                "array_above_max_length",
            )
        return [s for s in stop if isinstance(s, str)]
    raise bad_request(
        f"Invalid type for 'stop': expected a string or array of strings, but got {_type_name(stop)} instead.",
        "stop",
        "invalid_type",
    )


def _json_path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _check_schema(schema_name: str, body: Any) -> None:
    """Catch-all: the body must validate against the official request schema."""
    errs = sorted(validator(schema_name).iter_errors(body), key=lambda e: [str(p) for p in e.absolute_path])
    if not errs:
        return
    err = errs[0]
    leaf = (closest_error(err.context) or err) if err.context else err  # most specific oneOf/anyOf branch
    param = _json_path(leaf.absolute_path) or _json_path(err.absolute_path) or None
    message = f"Invalid value for '{param}': {leaf.message}" if param else f"Invalid request: {leaf.message}"
    if len(message) > 500:
        message = message[:497] + "..."
    raise bad_request(message, param, "invalid_value")


# =========================================================================== chat validation


def _validate_messages(messages: Any) -> None:
    if messages is None:
        raise bad_request("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise bad_request(
            f"Invalid type for 'messages': expected an array of objects, but got {_type_name(messages)} instead.",
            "messages",
            "invalid_type",
        )
    if not messages:
        raise bad_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "messages",
            "empty_array",
        )
    for i, m in enumerate(messages):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(
                f"Invalid type for '{p}': expected an object, but got {_type_name(m)} instead.",
                p,
                "invalid_type",
            )
        role = m.get("role")
        if role is None:
            raise bad_request(
                f"Missing required parameter: '{p}.role'.", f"{p}.role", "missing_required_parameter"
            )
        if role not in VALID_ROLES:
            raise bad_request(
                f"Invalid value: {json.dumps(role)}. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'.",
                f"{p}.role",
                "invalid_value",
            )
        if role in ("system", "developer", "user", "tool") and "content" not in m:
            raise bad_request(
                f"Missing required parameter: '{p}.content'.", f"{p}.content", "missing_required_parameter"
            )
        if role == "tool" and "tool_call_id" not in m:
            raise bad_request(
                f"Missing required parameter: '{p}.tool_call_id'.",
                f"{p}.tool_call_id",
                "missing_required_parameter",
            )
        if (
            role == "assistant"
            and m.get("content") is None
            and not m.get("tool_calls")
            and not m.get("function_call")
        ):
            raise bad_request(
                "Invalid value for 'content': expected a string, got null.", f"messages.[{i}].content"
            )


def _validate_tool_pairing(messages: list[dict[str, Any]]) -> None:
    pending: dict[str, None] = {}  # ordered set of unanswered tool_call ids
    pending_from = -1
    in_block = False
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "tool":
            tcid = m.get("tool_call_id")
            if not in_block or tcid not in pending:
                raise bad_request(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
            del pending[tcid]
            continue
        if pending:
            break
        in_block = False
        if role == "assistant" and m.get("tool_calls"):
            pending = {tc.get("id"): None for tc in m["tool_calls"] if isinstance(tc, dict)}
            pending_from, in_block = i, True
    if pending:
        raise bad_request(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. "
            f"The following tool_call_ids did not have response messages: {', '.join(map(str, pending))}",
            f"messages.[{pending_from}].role",
        )


def _validate_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools")
    if tools is None:
        for name in ("tool_choice", "parallel_tool_calls"):
            if body.get(name) is not None:
                raise bad_request(
                    f"Invalid value for '{name}': '{name}' is only allowed when 'tools' are specified.", name
                )
        return []
    if not isinstance(tools, list):
        raise bad_request(
            f"Invalid type for 'tools': expected an array of objects, but got {_type_name(tools)} instead.",
            "tools",
            "invalid_type",
        )
    if not tools:
        raise bad_request(
            "Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            "tools",
            "empty_array",
        )
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(fn, dict):
            name = fn.get("name")
            if not isinstance(name, str) or not TOOL_NAME_RE.match(name):
                raise bad_request(
                    f"Invalid 'tools[{i}].function.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                    f"tools[{i}].function.name",
                    "invalid_value",
                )
    names = [
        t["function"]["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        wanted = (choice.get("function") or {}).get("name")
        if wanted not in names:
            raise bad_request(
                f"Invalid value for 'tool_choice': function '{wanted}' not found in 'tools'.", "tool_choice"
            )
    return [
        t
        for t in tools
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
    ]


def validate_chat_request(body: Any, state: UpstreamState) -> None:
    if not isinstance(body, dict):
        raise _parse_error()
    _check_unknown_fields(body, "CreateChatCompletionRequest", state)
    _check_model(body, state)
    _validate_messages(body.get("messages"))
    _check_stream(body)
    _check_range(body, "n", 1, 128, True)
    _check_range(body, "temperature", 0, 2, False)
    _check_range(body, "top_p", 0, 1, False)
    _check_range(body, "presence_penalty", -2, 2, False)
    _check_range(body, "frequency_penalty", -2, 2, False)
    _check_range(body, "top_logprobs", 0, 20, True)
    _check_range(body, "max_tokens", 1, None, True)
    _check_range(body, "max_completion_tokens", 1, None, True)
    _check_stop(body)
    _validate_tools(body)
    _check_schema(
        "CreateChatCompletionRequest", {k: v for k, v in body.items() if k not in state.accept_extra}
    )
    _validate_tool_pairing(body["messages"])
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_object":
        text = " ".join(_content_text(m.get("content")) for m in body["messages"])
        if "json" not in text.lower():
            raise bad_request(
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
                "messages",
            )


def _parse_error() -> ApiError:
    return bad_request(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library "
        "correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble "
        "figuring out how to fix this, please visit https://platform.openai.com/docs/guides/error-codes/api-errors.)"
    )


# =========================================================================== answer planning


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class ChoicePlan:
    index: int
    text: str | None
    tool_calls: list[ToolCall]
    finish_reason: str

    @property
    def pieces(self) -> list[str]:
        return split_pieces(self.text) if self.text else []


def sample_from_schema(schema: Any, seed: str, root: Any = None, depth: int = 0) -> Any:
    """A deterministic value satisfying (most) JSON schemas; strings are ``seed``."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 8:
        return seed
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return sample_from_schema(target, seed, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return next((e for e in schema["enum"] if e is not None), schema["enum"][0])
    for comb in ("anyOf", "oneOf", "allOf"):
        branches = [
            b for b in schema.get(comb) or [] if not (isinstance(b, dict) and b.get("type") == "null")
        ]
        if branches:
            return sample_from_schema(branches[0], seed, root, depth + 1)
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ is None:
        typ = "object" if "properties" in schema else "string"
    if typ == "object":
        props = schema.get("properties") or {}
        return {k: sample_from_schema(v, seed, root, depth + 1) for k, v in props.items()}
    if typ == "array":
        n = max(1, int(schema.get("minItems", 1)))
        return [sample_from_schema(schema.get("items", {}), seed, root, depth + 1) for _ in range(n)]
    if typ in ("integer", "number"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        v = 1 if lo is None else max(1, lo)
        if hi is not None:
            v = min(v, hi)
        return int(v) if typ == "integer" else float(v)
    if typ == "boolean":
        return True
    if typ == "null":
        return None
    s = seed or "value"
    max_len = schema.get("maxLength")
    return s[:max_len] if isinstance(max_len, int) else s


def _strip_triggers(text: str) -> str:
    return " ".join(TRIGGER_RE.sub(" ", text).split())


def _last_user_text(messages: list[dict[str, Any]]) -> str | None:
    for m in reversed(messages):
        if m.get("role") == "user":
            return _content_text(m.get("content"))
    return None


def _base_reply(messages: list[dict[str, Any]]) -> str:
    trailing_tools: list[str] = []
    for m in reversed(messages):
        if m.get("role") != "tool":
            break
        trailing_tools.append(_content_text(m.get("content")))
    if trailing_tools:
        return "Tool results: " + "; ".join(reversed(trailing_tools))
    user = _last_user_text(messages)
    if user is None:
        return "Hello! How can I help you today?"
    if m_words := re.search(r"#words:(\d+)", user):
        return " ".join(f"w{i}" for i in range(1, int(m_words.group(1)) + 1))
    return f"You said: {_strip_triggers(user)}"


def _choose_tools(
    body: dict[str, Any], tools: list[dict[str, Any]], messages: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], bool]:
    """(tools to call, named_choice)."""
    if not tools:
        return [], False
    choice = body.get("tool_choice")
    by_name = {t["function"]["name"]: t for t in tools}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return [by_name[choice["function"]["name"]]], True
    if choice == "none":
        return [], False
    last = messages[-1]
    user = _content_text(last.get("content")) if last.get("role") == "user" else ""
    parallel_ok = body.get("parallel_tool_calls") is not False
    if ALL_TOOLS_TRIGGER in user.split() or re.search(r"#tools\b", user):
        return (tools if parallel_ok else tools[:1]), False
    if m := re.search(r"#tool:([A-Za-z0-9_-]+)", user):
        if m.group(1) in by_name:
            return [by_name[m.group(1)]], False
    if TOOL_TRIGGER in user or choice == "required":
        return tools[:1], False
    return [], False


def _tool_call_id(completion_id: str, choice: int, k: int) -> str:
    return "call_" + hashlib.sha256(f"{completion_id}:{choice}:{k}".encode()).hexdigest()[:24]


def _apply_limits(text: str, stops: list[str], limit: int | None) -> tuple[str, str]:
    finish = "stop"
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    if limit is not None:
        pieces = split_pieces(text)
        if len(pieces) > limit:
            text, finish = "".join(pieces[:limit]), "length"
    return text, finish


def plan_chat(body: dict[str, Any], completion_id: str) -> list[ChoicePlan]:
    messages = body["messages"]
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    to_call, named = _choose_tools(body, tools, messages)
    user = _last_user_text(messages) or ""
    seed = _strip_triggers(user) or "value"
    base = _base_reply(messages)
    rf = body.get("response_format") or {}
    stops = _check_stop(body)
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    filtered = CONTENT_FILTER_TRIGGER in user and messages[-1].get("role") == "user"
    plans = []
    for i in range(body.get("n") or 1):
        if to_call:
            calls = [
                ToolCall(
                    _tool_call_id(completion_id, i, k),
                    t["function"]["name"],
                    json.dumps(
                        sample_from_schema(t["function"].get("parameters") or {"type": "object"}, seed),
                        separators=(",", ":"),
                    ),
                )
                for k, t in enumerate(to_call)
            ]
            plans.append(ChoicePlan(i, None, calls, "stop" if named else "tool_calls"))
            continue
        reply = base if i == 0 else f"{base} [{i}]"
        if rf.get("type") == "json_object":
            reply = json.dumps({"reply": reply})
        elif rf.get("type") == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema") or {"type": "object"}
            reply = json.dumps(sample_from_schema(schema, reply))
        text, finish = _apply_limits(reply, stops, limit)
        if filtered:
            text, finish = "", "content_filter"
        plans.append(ChoicePlan(i, text, [], finish))
    return plans


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    total = 3
    for m in messages:
        total += 4 + count_tokens(_content_text(m.get("content"))) + count_tokens(str(m.get("name") or ""))
        for tc in m.get("tool_calls") or []:
            fn = tc.get("function") or {}
            total += count_tokens(str(fn.get("name", ""))) + count_tokens(str(fn.get("arguments", "")))
    return total


def _completion_tokens(plans: list[ChoicePlan]) -> int:
    total = 0
    for p in plans:
        total += len(p.pieces)
        for tc in p.tool_calls:
            total += count_tokens(tc.name) + count_tokens(tc.arguments) + 3
    return total


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _token_logprobs(pieces: list[str], top: int) -> list[dict[str, Any]]:
    out = []
    for p in pieces:
        entry = {"token": p, "logprob": -0.01, "bytes": list(p.encode()), "top_logprobs": []}
        entry["top_logprobs"] = [
            {
                "token": p if k == 0 else f"{p}~{k}",
                "logprob": -0.01 * (k + 1),
                "bytes": list((p if k == 0 else f"{p}~{k}").encode()),
            }
            for k in range(top)
        ]
        out.append(entry)
    return out


def _obfuscation(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[
        : 4 + len(json.dumps(payload)) % 12
    ]


# =========================================================================== handlers


async def handle_chat(request: web.Request, state: UpstreamState, body: Any) -> web.StreamResponse:
    validate_chat_request(body, state)
    seq = state.next_seq()
    cid = f"chatcmpl-emu{seq:06d}{hashlib.sha256(str(seq).encode()).hexdigest()[:17]}"
    created = int(time.time())
    model = body["model"]
    plans = plan_chat(body, cid)
    usage = _usage(_prompt_tokens(body["messages"]), _completion_tokens(plans))
    want_logprobs = body.get("logprobs") is True
    top = body.get("top_logprobs") or 0
    if not _check_stream(body):
        choices = []
        for p in plans:
            msg: dict[str, Any] = {"role": "assistant", "content": p.text, "refusal": None, "annotations": []}
            if p.tool_calls:
                msg["tool_calls"] = [
                    {
                        "id": tc.id,
                        "type": "function",
                        "function": {"name": tc.name, "arguments": tc.arguments},
                    }
                    for tc in p.tool_calls
                ]
            logprobs = {"content": _token_logprobs(p.pieces, top), "refusal": None} if want_logprobs else None
            choices.append(
                {"index": p.index, "message": msg, "logprobs": logprobs, "finish_reason": p.finish_reason}
            )
        return _json(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
            },
            headers=_resp_headers(seq),
        )

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    obfuscate = (
        state.stream_obfuscation
        and (body.get("stream_options") or {}).get("include_obfuscation") is not False
    )

    def choice_events(p: ChoicePlan) -> list[dict[str, Any]]:
        evs: list[dict[str, Any]] = []
        if p.tool_calls:
            for k, tc in enumerate(p.tool_calls):
                start = {
                    "index": k,
                    "id": tc.id,
                    "type": "function",
                    "function": {"name": tc.name, "arguments": ""},
                }
                delta: dict[str, Any] = {"tool_calls": [start]}
                if k == 0:
                    delta = {"role": "assistant", "content": None, "tool_calls": [start], "refusal": None}
                evs.append({"delta": delta})
                for j in range(0, len(tc.arguments), 10):
                    evs.append(
                        {
                            "delta": {
                                "tool_calls": [
                                    {"index": k, "function": {"arguments": tc.arguments[j : j + 10]}}
                                ]
                            }
                        }
                    )
        else:
            evs.append({"delta": {"role": "assistant", "content": "", "refusal": None}})
            for piece in p.pieces:
                ev: dict[str, Any] = {"delta": {"content": piece}}
                if want_logprobs:
                    ev["logprobs"] = {"content": _token_logprobs([piece], top), "refusal": None}
                evs.append(ev)
        evs.append({"delta": {}, "finish_reason": p.finish_reason})
        return evs

    per_choice = [choice_events(p) for p in plans]
    chunks: list[dict[str, Any]] = []
    for step in itertools.zip_longest(*per_choice):
        for i, ev in enumerate(step):
            if ev is None:
                continue
            choice = {
                "index": i,
                "delta": ev["delta"],
                "logprobs": ev.get("logprobs"),
                "finish_reason": ev.get("finish_reason"),
            }
            chunk: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [choice],
            }
            if include_usage:
                chunk["usage"] = None
            chunks.append(chunk)
    if include_usage:
        chunks.append(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [],
                "usage": usage,
            }
        )
    if obfuscate:
        for c in chunks:
            c["obfuscation"] = _obfuscation(c)
    return await _stream(request, state, chunks, seq)


def _legacy_prompts(prompt: Any) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        return [" ".join(map(str, prompt))]
    if isinstance(prompt, list):
        return [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompt] or [""]
    return ["<|endoftext|>"]


async def handle_completions(request: web.Request, state: UpstreamState, body: Any) -> web.StreamResponse:
    if not isinstance(body, dict):
        raise _parse_error()
    _check_unknown_fields(body, "CreateCompletionRequest", state)
    model = _check_model(body, state)
    if "prompt" not in body:
        raise bad_request("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    stream = _check_stream(body)
    _check_range(body, "n", 1, 128, True)
    _check_range(body, "best_of", 0, 20, True)
    _check_range(body, "logprobs", 0, 5, True)
    _check_range(body, "temperature", 0, 2, False)
    _check_range(body, "top_p", 0, 1, False)
    _check_range(body, "presence_penalty", -2, 2, False)
    _check_range(body, "frequency_penalty", -2, 2, False)
    _check_range(body, "max_tokens", 0, None, True)
    stops = _check_stop(body)
    _check_schema("CreateCompletionRequest", {k: v for k, v in body.items() if k not in state.accept_extra})

    seq = state.next_seq()
    cid = f"cmpl-emu{seq:06d}{hashlib.sha256(str(seq).encode()).hexdigest()[:20]}"
    created = int(time.time())
    n = body.get("n") or 1
    limit = body.get("max_tokens", 16)
    prompts = _legacy_prompts(body.get("prompt"))
    results: list[tuple[int, str, str]] = []
    for pi, prompt in enumerate(prompts):
        for i in range(n):
            reply = f" You said: {prompt}" + (f" [{i}]" if i else "")
            text, finish = _apply_limits(reply, stops, limit)
            if body.get("echo"):
                text = prompt + text
            results.append((pi * n + i, text, finish))
    prompt_tokens = sum(count_tokens(p) for p in prompts)
    completion_tokens = sum(len(split_pieces(t)) for _, t, _ in results)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    lp = body.get("logprobs")

    def legacy_logprobs(text: str) -> dict[str, Any] | None:
        if lp is None:
            return None
        pieces = split_pieces(text)
        offsets = list(itertools.accumulate([0] + [len(p) for p in pieces[:-1]])) if pieces else []
        return {
            "tokens": pieces,
            "token_logprobs": [-0.01] * len(pieces),
            "top_logprobs": [{p: -0.01} for p in pieces] if lp else None,
            "text_offset": offsets,
        }

    base = {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if not stream:
        choices = [
            {"index": idx, "text": t, "logprobs": legacy_logprobs(t), "finish_reason": f}
            for idx, t, f in results
        ]
        return _json({**base, "choices": choices, "usage": usage}, headers=_resp_headers(seq))

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    chunks: list[dict[str, Any]] = []
    per_choice = []
    for idx, t, f in results:
        evs = [
            {"index": idx, "text": piece, "logprobs": legacy_logprobs(piece), "finish_reason": None}
            for piece in split_pieces(t)
        ]
        evs.append({"index": idx, "text": "", "logprobs": None, "finish_reason": f})
        per_choice.append(evs)
    for step in itertools.zip_longest(*per_choice):
        for ev in step:
            if ev is not None:
                chunks.append({**base, "choices": [ev], **({"usage": None} if include_usage else {})})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": usage})
    return await _stream(request, state, chunks, seq)


def _embedding_vector(model: str, text: str, native: int, dims: int | None) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(f"{model}\0{text}".encode()).digest()[:8], "little")
    rng = random.Random(seed)
    vec = [rng.gauss(0.0, 1.0) for _ in range(native)]
    if dims is not None:
        vec = vec[:dims]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    packed = struct.pack(f"<{len(vec)}f", *(v / norm for v in vec))
    return list(struct.unpack(f"<{len(vec)}f", packed))  # float32-exact so float and base64 agree


async def handle_embeddings(request: web.Request, state: UpstreamState, body: Any) -> web.StreamResponse:
    if not isinstance(body, dict):
        raise _parse_error()
    _check_unknown_fields(body, "CreateEmbeddingRequest", state)
    model = _check_model(body, state)
    if "input" not in body:
        raise bad_request("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    inp = body["input"]
    if inp == "" or inp == [] or (isinstance(inp, list) and any(x == "" or x == [] for x in inp)):
        raise bad_request(
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
            "input",
        )
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise bad_request(
            f"Invalid value: {json.dumps(fmt)}. Supported values are: 'float' and 'base64'.",
            "encoding_format",
            "invalid_value",
        )
    native = EMBEDDING_DIMS.get(model, state.default_embedding_dims)
    dims = body.get("dimensions")
    if dims is not None:
        _check_range(body, "dimensions", 1, None, True)
        if model == "text-embedding-ada-002":
            raise bad_request("This model does not support specifying dimensions.", "dimensions")
        if dims > native:
            raise bad_request(
                f"Invalid value for 'dimensions' = {dims}. Must be less than or equal to {native}.",
                "dimensions",
            )
    _check_schema("CreateEmbeddingRequest", {k: v for k, v in body.items() if k not in state.accept_extra})

    if isinstance(inp, str):
        items: list[tuple[str, int]] = [(inp, count_tokens(inp))]
    elif all(_is_int(t) for t in inp):
        items = [(" ".join(map(str, inp)), len(inp))]
    else:
        items = [(x, count_tokens(x)) if isinstance(x, str) else (" ".join(map(str, x)), len(x)) for x in inp]
    data = []
    for i, (text, _) in enumerate(items):
        vec = _embedding_vector(model, text, native, dims)
        emb: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if fmt == "base64" else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    tokens = sum(n for _, n in items)
    seq = state.next_seq()
    return _json(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        headers=_resp_headers(seq),
    )


def _model_obj(model_id: str) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": MODEL_CREATED,
        "owned_by": "system" if "-" in model_id else "openai",
    }


async def handle_models(request: web.Request, state: UpstreamState, body: Any) -> web.StreamResponse:
    return _json(
        {"object": "list", "data": [_model_obj(m) for m in state.models]},
        headers=_resp_headers(state.next_seq()),
    )


async def handle_model(request: web.Request, state: UpstreamState, body: Any) -> web.StreamResponse:
    model_id = request.match_info["model"]
    if model_id not in state.models:
        raise ApiError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
    return _json(_model_obj(model_id), headers=_resp_headers(state.next_seq()))


# =========================================================================== plumbing


def _resp_headers(seq: int) -> dict[str, str]:
    return {
        "x-request-id": f"req_emu{seq:08d}",
        "openai-version": "2020-10-01",
        "openai-processing-ms": "1",
        "openai-organization": "emulator",
    }


async def _stream(
    request: web.Request, state: UpstreamState, chunks: list[dict[str, Any]], seq: int
) -> web.StreamResponse:
    resp = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            **_resp_headers(seq),
        },
    )
    try:
        await resp.prepare(request)
        request[_STARTED] = True
        cut = state.cut_stream_after_chunks
        for n, chunk in enumerate(chunks):
            if cut is not None and n >= cut:
                break
            if n and state.chunk_delay_s:
                await asyncio.sleep(state.chunk_delay_s)
            await resp.write(
                b"data: " + json.dumps(chunk, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
            )
        if cut is not None:
            _drop_connection(request)
            return resp
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionError:  # aiohttp's ClientConnectionResetError included: the client went away
        state.disconnects += 1
    return resp


def _drop_connection(request: web.Request) -> None:
    """Close the TCP connection now: the client sees a truncated chunked body / no response."""
    transport = request.transport
    if transport is not None:
        transport.close()


Handler = Callable[[web.Request, UpstreamState, Any], Awaitable[web.StreamResponse]]


def _endpoint(
    handler: Handler, parse_body: bool = True
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        raw = await request.read()
        body: Any = None
        parse_failed = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                parse_failed = True
        state.request_count += 1
        state.counts[request.path] += 1
        state.requests.append(RecordedRequest(request.method, request.path, dict(request.headers), body, raw))
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            while state.hang:  # noqa: ASYNC110 - a plain flag tests flip; polling keeps the state simple
                await asyncio.sleep(0.01)
            if state.delay_first_byte_s:
                await asyncio.sleep(state.delay_first_byte_s)
            if state.fail_next:
                status = state.fail_next.pop(0)
                if status == 0:
                    _drop_connection(request)
                    return web.Response(status=500)  # never reaches the client
                return _fault(status, state).response()
            _check_auth(request, state)
            if parse_body and (parse_failed or not raw):
                raise _parse_error()
            return await handler(request, state, body)
        except ApiError as exc:
            return exc.response()
        except asyncio.CancelledError:  # handler_cancellation: the client disconnected
            if request.get(_STARTED):
                state.disconnects += 1
            else:
                state.cancelled += 1
            raise
        finally:
            state.in_flight -= 1

    return wrapped


def _check_auth(request: web.Request, state: UpstreamState) -> None:
    if state.api_key is None:
        return
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer ") or not auth[7:].strip():
        raise ApiError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer "
            "auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're "
            "accessing the API from your browser and are prompted for a username. You can obtain an API key from "
            "https://platform.openai.com/account/api-keys.",
        )
    key = auth[7:].strip()
    if key != state.api_key:
        masked = key[:3] + "*" * max(0, len(key) - 7) + key[-4:] if len(key) > 7 else "*" * len(key)
        raise ApiError(
            401,
            f"Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )


@web.middleware
async def _openai_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        state = request.app[STATE_KEY]
        state.request_count += 1
        state.counts[request.path] += 1
        state.requests.append(RecordedRequest(request.method, request.path, dict(request.headers), None, b""))
        return ApiError(exc.status, f"Invalid URL ({request.method} {request.path})").response()


def make_app(state: UpstreamState | None = None) -> web.Application:
    """The emulator app; ``app[STATE_KEY]`` is the (shared, mutable) state."""
    app = web.Application(middlewares=[_openai_errors], client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = state if state is not None else UpstreamState()
    app.router.add_post("/v1/chat/completions", _endpoint(handle_chat))
    app.router.add_post("/v1/completions", _endpoint(handle_completions))
    app.router.add_post("/v1/embeddings", _endpoint(handle_embeddings))
    app.router.add_get("/v1/models", _endpoint(handle_models, parse_body=False))
    app.router.add_get("/v1/models/{model}", _endpoint(handle_model, parse_body=False))
    return app


async def start(
    state: UpstreamState | None = None, port: int = 0, host: str = "127.0.0.1"
) -> tuple[web.AppRunner, str]:
    """Serve the emulator on host:port (0 = any free port). Returns (runner, "http://host:port/v1").

    Stop it with ``await runner.cleanup()``. In-flight handlers are cancelled when their client
    disconnects (so ``hang`` doesn't outlive the client).
    """
    app = make_app(state)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None) or []
    actual = sockets[0].getsockname()[1] if sockets else port
    return runner, f"http://{host}:{actual}/v1"


@contextlib.asynccontextmanager
async def running(state: UpstreamState | None = None, port: int = 0):
    """``async with running(state) as base_url:`` — start() + cleanup()."""
    runner, base_url = await start(state, port)
    try:
        yield base_url
    finally:
        await runner.cleanup()
