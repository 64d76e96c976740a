"""A strict, deterministic emulator of Cohere's v2 API (``make_app()`` → aiohttp Application).

Endpoints: ``POST /v2/chat`` (JSON, or SSE when ``"stream": true``), ``POST /v2/embed``,
``GET /v1/models``. Every request needs ``Authorization: Bearer <token>`` (any non-empty
token, or exactly ``make_app(token=...)``); otherwise 401.

Strictness (400 ``{"id", "message"}``): unknown fields at the top level, in messages, in
content parts and in tools; missing ``model``/``messages``; a role other than
user/assistant/system/tool; a tool message without ``tool_call_id``; ``p`` outside
0.01–0.99, ``k`` outside 0–500, penalties outside 0–1, ``tool_choice`` other than
REQUIRED/NONE (REQUIRED without tools), more than 5 stop sequences, unknown
``safety_mode``/``response_format`` types. Embed: ``model`` and ``input_type`` required,
1–96 texts, ``output_dimension`` in 256/512/1024/1536, embedding types float/int8/uint8.

Answers (words are "tokens"): a user turn is answered ``Hello! You said: <text>``; after
a tool result, ``The tool returned: <content>``; with ``response_format`` json_object, a
JSON object. When ``tools`` are given, ``tool_choice`` is not NONE and the last message is
from the user, the model calls the first tool, with every required parameter filled
(strings "emulated", numbers 1, booleans true), after a tool plan. ``max_tokens`` cuts the
answer (MAX_TOKENS); the first stop sequence found cuts it (STOP_SEQUENCE). Usage:
``billed_units`` counts message words, ``tokens`` adds 7 prompt tokens, sent as floats.

Streams send, as ``event: <type>`` + ``data: <json>``: message-start, then content-start,
content-delta × n, content-end (text) or tool-plan-delta × n, tool-call-start,
tool-call-delta × n, tool-call-end (tool call), then message-end.

Scripted failures, by a magic string in the last user message (or the last embed text):
``[fail:429]`` (with ``Retry-After: 1``), ``[fail:500]``, ``[fail:503]`` → that status;
``[cut]`` → the stream ends cleanly right after the first content delta, with no
message-end (a non-stream body is truncated mid-JSON); ``[error-event]`` → the stream's
message-end carries ``delta.error`` and finish_reason ERROR (non-stream: finish_reason
ERROR in a 200 body).
"""

from __future__ import annotations

import json
import random
import re
import uuid
from typing import Any

from aiohttp import web

CHAT_FIELDS = {
    "model", "messages", "tools", "strict_tools", "documents", "citation_options", "response_format",
    "safety_mode", "max_tokens", "stop_sequences", "temperature", "seed", "frequency_penalty",
    "presence_penalty", "k", "p", "logprobs", "tool_choice", "thinking", "priority", "stream",
}  # fmt: skip
EMBED_FIELDS = {
    "model", "texts", "images", "input_type", "inputs", "max_tokens", "output_dimension",
    "embedding_types", "truncate", "priority",
}  # fmt: skip
MESSAGE_FIELDS = {
    "user": {"role", "content"},
    "system": {"role", "content"},
    "assistant": {"role", "content", "tool_calls", "tool_plan", "citations"},
    "tool": {"role", "tool_call_id", "content"},
}
MODELS = [
    {"name": "command-a-03-2025", "endpoints": ["generate", "chat", "summarize"], "context_length": 256000},
    {"name": "command-r-plus-08-2024", "endpoints": ["generate", "chat"], "context_length": 128000},
    {"name": "embed-v4.0", "endpoints": ["embed"], "context_length": 128000},
    {"name": "rerank-v3.5", "endpoints": ["rerank"], "context_length": 4096},
]
FAIL = re.compile(r"\[fail:(\d{3})\]")
PROMPT_OVERHEAD = 7


class Invalid(Exception):
    """A 400 with this message."""


class Unauthorized(Exception):
    """A 401."""


TOKEN = web.AppKey("token", str)


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"id": str(uuid.uuid4()), "message": message}, status=status, headers=headers)


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise Invalid(message)


def _only(obj: Any, allowed: set[str], where: str) -> None:
    _need(isinstance(obj, dict), f"{where} must be an object")
    extra = sorted(set(obj) - allowed)
    _need(not extra, f"invalid request: unknown field {where}.{extra[0] if extra else ''}")


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> None:
    if key in body:
        v = body[key]
        _need(isinstance(v, int | float) and not isinstance(v, bool), f"{key} must be a number")
        _need(lo <= v <= hi, f"invalid request: {key} must be between {lo} and {hi}")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or () if isinstance(p, dict))


def _check_content(content: Any, kinds: set[str], where: str) -> None:
    if isinstance(content, str):
        return
    _need(isinstance(content, list), f"{where}.content must be a string or a list")
    for part in content:
        _need(isinstance(part, dict) and part.get("type") in kinds, f"invalid content part type in {where}")
        if part["type"] == "text":
            _only(part, {"type", "text"}, f"{where}.content[]")
            _need(isinstance(part.get("text"), str), "text part needs text")
        elif part["type"] == "image_url":
            _only(part, {"type", "image_url"}, f"{where}.content[]")
            _only(part["image_url"], {"url", "detail"}, "image_url")
            _need(isinstance(part["image_url"].get("url"), str), "image_url needs url")


def _check_message(m: Any, i: int) -> None:
    _need(isinstance(m, dict) and m.get("role") in MESSAGE_FIELDS, f"invalid role in messages[{i}]")
    role, where = m["role"], f"messages[{i}]"
    _only(m, MESSAGE_FIELDS[role], where)
    if role == "tool":
        _need(isinstance(m.get("tool_call_id"), str), f"{where}: tool messages require tool_call_id")
    if role in ("user", "system", "tool"):
        _need("content" in m, f"{where}: content is required")
    kinds = {"text", "image_url"} if role == "user" else {"text", "document"} if role == "tool" else {"text"}
    if m.get("content") is not None:
        _check_content(m["content"], kinds, where)
    for call in m.get("tool_calls") or ():
        _only(call, {"id", "type", "function"}, f"{where}.tool_calls[]")
        _only(call.get("function"), {"name", "arguments"}, f"{where}.tool_calls[].function")
        _need(isinstance(call["function"].get("arguments"), str), "tool call arguments must be a string")


def check_chat(body: Any) -> None:
    """Raise :class:`Invalid` unless ``body`` is a valid v2 chat request."""
    _only(body, CHAT_FIELDS, "body")
    _need(isinstance(body.get("model"), str) and body["model"], "invalid request: model is required")
    msgs = body.get("messages")
    _need(isinstance(msgs, list) and msgs, "invalid request: messages is required")
    for i, m in enumerate(msgs):
        _check_message(m, i)
    for t in body.get("tools") or ():
        _only(t, {"type", "function"}, "tools[]")
        _need(t.get("type") == "function", "tools[].type must be function")
        _only(t.get("function"), {"name", "description", "parameters"}, "tools[].function")
        _need(isinstance(t["function"].get("parameters"), dict), "tools[].function.parameters is required")
    choice = body.get("tool_choice")
    _need(choice in (None, "REQUIRED", "NONE"), "invalid request: tool_choice must be REQUIRED or NONE")
    _need(choice != "REQUIRED" or body.get("tools"), "invalid request: tool_choice REQUIRED needs tools")
    _number(body, "p", 0.01, 0.99)
    _number(body, "k", 0, 500)
    _number(body, "temperature", 0, 5)
    _number(body, "frequency_penalty", 0, 1)
    _number(body, "presence_penalty", 0, 1)
    stops = body.get("stop_sequences", [])
    _need(isinstance(stops, list) and len(stops) <= 5, "invalid request: at most 5 stop_sequences")
    _need(body.get("safety_mode") in (None, "CONTEXTUAL", "STRICT", "OFF"), "invalid safety_mode")
    rf = body.get("response_format")
    if rf is not None:
        _need(isinstance(rf, dict) and rf.get("type") in ("text", "json_object"), "invalid response_format")
        _only(rf, {"type", "json_schema"}, "response_format")
    if "max_tokens" in body:
        _need(isinstance(body["max_tokens"], int) and body["max_tokens"] > 0, "max_tokens must be positive")


def _last_user(msgs: list[dict[str, Any]]) -> str:
    for m in reversed(msgs):
        if m["role"] == "user":
            return _text_of(m["content"])
    return ""


def _fill(schema: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties") or {}
    sample = {"string": "emulated", "number": 1, "integer": 1, "boolean": True, "array": [], "object": {}}
    return {
        k: sample.get((props.get(k) or {}).get("type", "string"), "emulated")
        for k in schema.get("required", [])
    }


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """The deterministic answer: text or a tool call, finish reason and word counts."""
    msgs = body["messages"]
    words_in = sum(len(_text_of(m.get("content")).split()) for m in msgs)
    last = msgs[-1]
    tools = body.get("tools") or []
    if tools and body.get("tool_choice") != "NONE" and last["role"] == "user":
        fn = tools[0]["function"]
        args = json.dumps(_fill(fn["parameters"]))
        plan = f"I will call {fn['name']} to answer."
        call = {"id": f"{fn['name']}_{uuid.uuid4().hex[:8]}", "type": "function", "function": {"name": fn["name"], "arguments": args}}  # fmt: skip
        return {
            "text": "",
            "plan": plan,
            "call": call,
            "finish": "TOOL_CALL",
            "in": words_in,
            "out": len(plan.split()) + 4,
        }
    if last["role"] == "tool":
        text = f"The tool returned: {_text_of(last['content'])}"
    elif (body.get("response_format") or {}).get("type") == "json_object":
        text = json.dumps({"answer": _last_user(msgs)})
    else:
        text = f"Hello! You said: {_last_user(msgs)}"
    finish = "COMPLETE"
    for stop in body.get("stop_sequences") or ():
        if stop in text:
            text, finish = text[: text.index(stop)], "STOP_SEQUENCE"
    words = text.split(" ")
    if len(words) > body.get("max_tokens", 1 << 30):
        words, finish = words[: body["max_tokens"]], "MAX_TOKENS"
    pieces = [w + " " for w in words[:-1]] + words[-1:]
    return {"text": "".join(pieces), "pieces": pieces, "finish": finish, "in": words_in, "out": len(pieces)}


def _usage(a: dict[str, Any]) -> dict[str, Any]:
    return {
        "billed_units": {"input_tokens": a["in"], "output_tokens": a["out"]},
        "tokens": {"input_tokens": float(a["in"] + PROMPT_OVERHEAD), "output_tokens": float(a["out"])},
    }


def _message(a: dict[str, Any]) -> dict[str, Any]:
    if "call" in a:
        return {"role": "assistant", "tool_plan": a["plan"], "tool_calls": [a["call"]]}
    return {"role": "assistant", "content": [{"type": "text", "text": a["text"]}]}


def _events(a: dict[str, Any], msg_id: str, script: str) -> list[dict[str, Any]]:
    evs: list[dict[str, Any]] = [
        {
            "id": msg_id,
            "type": "message-start",
            "delta": {
                "message": {
                    "role": "assistant",
                    "content": [],
                    "tool_plan": "",
                    "tool_calls": [],
                    "citations": [],
                }
            },
        }  # fmt: skip
    ]
    if "call" in a:
        for word in a["plan"].split(" "):
            evs.append({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": word + " "}}})
        call, args = a["call"], a["call"]["function"]["arguments"]
        start = {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        evs.append({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": start}}})
        for i in range(0, len(args), 8):
            frag = {"function": {"arguments": args[i : i + 8]}}
            evs.append({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": frag}}})
        evs.append({"type": "tool-call-end", "index": 0})
    else:
        evs.append({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}})  # fmt: skip
        for piece in a["pieces"]:
            evs.append(
                {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": piece}}}}
            )
            if script == "[cut]":
                return evs
        evs.append({"type": "content-end", "index": 0})
    end: dict[str, Any] = {"finish_reason": a["finish"], "usage": _usage(a)}
    if script == "[error-event]":
        end = {"error": "internal error while generating", "finish_reason": "ERROR", "usage": _usage(a)}
    evs.append({"id": msg_id, "type": "message-end", "delta": end})
    return evs


def _script(text: str) -> tuple[int | None, str]:
    m = FAIL.search(text)
    if m:
        return int(m.group(1)), ""
    for tag in ("[cut]", "[error-event]"):
        if tag in text:
            return None, tag
    return None, ""


def _failure(status: int) -> web.Response:
    if status == 429:
        return _error(429, "You are using a Trial key, which is limited to 10 API calls / minute.", **{"Retry-After": "1"})  # fmt: skip
    return _error(status, f"emulated failure {status}")


async def _body(request: web.Request) -> Any:
    auth = request.headers.get("Authorization", "")
    token = request.app[TOKEN]
    if not auth.startswith("Bearer ") or not auth[7:].strip() or (token and auth[7:] != token):
        raise Unauthorized
    if request.method == "GET":
        return None
    try:
        return await request.json()
    except ValueError:
        raise Invalid("invalid request: body is not valid JSON") from None


async def chat(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    check_chat(body)
    status, script = _script(_last_user(body["messages"]))
    if status:
        return _failure(status)
    a, msg_id = answer(body), str(uuid.uuid4())
    if body.get("stream"):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for ev in _events(a, msg_id, script):
            await resp.write(f"event: {ev['type']}\ndata: {json.dumps(ev)}\n\n".encode())
        await resp.write_eof()
        return resp
    finish = "ERROR" if script == "[error-event]" else a["finish"]
    out = {"id": msg_id, "finish_reason": finish, "message": _message(a), "usage": _usage(a)}
    raw = json.dumps(out)
    return web.Response(
        text=raw[: len(raw) // 2] if script == "[cut]" else raw, content_type="application/json"
    )


def check_embed(body: Any) -> None:
    _only(body, EMBED_FIELDS, "body")
    _need(isinstance(body.get("model"), str), "invalid request: model is required")
    kinds = {"search_document", "search_query", "classification", "clustering", "image"}
    _need(body.get("input_type") in kinds, "invalid request: valid input_type must be provided")
    texts = body.get("texts")
    _need(
        isinstance(texts, list) and 0 < len(texts) <= 96, "invalid request: texts must hold 1 to 96 strings"
    )
    _need(all(isinstance(t, str) for t in texts), "invalid request: texts must be strings")
    _need(body.get("output_dimension", 1024) in (256, 512, 1024, 1536), "invalid output_dimension")
    _need(
        set(body.get("embedding_types", ["float"])) <= {"float", "int8", "uint8"},
        "unsupported embedding_types",
    )


def vector(text: str, dims: int) -> list[float]:
    rnd = random.Random(text)
    return [round(rnd.uniform(-1, 1), 6) for _ in range(dims)]


async def embed(request: web.Request) -> web.Response:
    body = await _body(request)
    check_embed(body)
    status, _ = _script(body["texts"][-1])
    if status:
        return _failure(status)
    vecs = [vector(t, body.get("output_dimension", 1024)) for t in body["texts"]]
    out: dict[str, list[Any]] = {}
    for kind in body.get("embedding_types", ["float"]):
        offset = 128 if kind == "uint8" else 0
        out[kind] = vecs if kind == "float" else [[round(x * 127) + offset for x in v] for v in vecs]
    words = sum(len(t.split()) for t in body["texts"])
    meta = {"api_version": {"version": "2"}, "billed_units": {"input_tokens": words}}
    result = {"id": str(uuid.uuid4()), "embeddings": out, "texts": body["texts"], "meta": meta}
    return web.json_response(result | {"response_type": "embeddings_by_type"})


async def models(request: web.Request) -> web.Response:
    await _body(request)
    wanted = request.query.get("endpoint")
    found = [m for m in MODELS if not wanted or wanted in m["endpoints"]]
    return web.json_response({"models": found[: int(request.query.get("page_size", 20))]})


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except Invalid as e:
        return _error(400, str(e))
    except Unauthorized:
        return _error(401, "invalid api token")


def make_app(token: str | None = None) -> web.Application:
    app = web.Application(middlewares=[_errors])
    app[TOKEN] = token or ""
    app.router.add_post("/v2/chat", chat)
    app.router.add_post("/v2/embed", embed)
    app.router.add_get("/v1/models", models)
    return app
