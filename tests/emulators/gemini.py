"""A strict, deterministic emulator of the Gemini REST API (Generative Language ``v1beta``).

``make_app()`` returns an :class:`aiohttp.web.Application` serving, under ``/v1beta``
(and ``/v1``):

* ``POST /models/{model}:generateContent`` and ``:streamGenerateContent`` (``?alt=sse``:
  one ``data:`` event per complete ``GenerateContentResponse``, no sentinel; without
  it, one JSON array), ``:embedContent``, ``:batchEmbedContents`` (at most 100),
* ``GET /models`` (``pageSize``/``pageToken``) and ``GET /models/{model}``.

Strictness (every violation is a Google RPC error, 400 ``INVALID_ARGUMENT`` unless
noted): the key goes in ``x-goog-api-key`` (or ``?key=``) — missing → 403
``PERMISSION_DENIED``, wrong → 400 with ``details[].reason = API_KEY_INVALID``; unknown
JSON fields → ``Invalid JSON payload received. Unknown name "x" ...`` (names in
lowerCamelCase or snake_case, as Google's parser accepts both); wrong value
types / enum values; roles other than ``user``/``model``; empty ``contents``/``parts``;
empty text; a part without data; ``functionCall``/``functionResponse`` without name;
a function-call turn not right after a user / function-response turn; a
function-response turn whose part count differs from the preceding call turn;
``allowedFunctionNames`` with a mode other than ``ANY``; ``candidateCount`` > 8;
more than 5 ``stopSequences``; ``responseJsonSchema`` without JSON mime type; ``logprobs``
without ``responseLogprobs``; unknown model or unsupported method → 404 ``NOT_FOUND``.
``gemini-3*`` models sign the first ``functionCall`` part of each step
(``thoughtSignature``) and, as Gemini 3 does, reject a request whose current-turn steps
lost it (400 "missing a thought_signature") or carry a foreign one ("Corrupted").

Deterministic behaviour: the answer to a user turn is ``"You said: <its text>"`` (plus
``" [images: <mime types>]"`` when it has inlineData/fileData parts); candidate ``i > 0``
appends ``" (candidate i)"``. A turn of function responses is answered with
``"Results: name=<response JSON>; ..."``. Tokens = whitespace-separated words (258 per
image). ``maxOutputTokens`` cuts the answer to that many words (``MAX_TOKENS``);
``stopSequences`` cut it before the first match. JSON mime type answers
``{"answer": <text>}``, or an example object of ``responseJsonSchema``.
``thinkingConfig.includeThoughts`` adds a ``thought: true`` part first.

Function-call trigger: with ``functionDeclarations`` and mode ``AUTO`` (default), the
model calls every declared function whose name appears as a word in the last user text
(several → parallel calls); mode ``ANY`` always calls (the mentioned ones, else the first
allowed); ``NONE`` never. Arguments are example values from the parameter schema
(string ``"example"`` or the first enum value, number/integer ``1``, boolean ``true``).

Magic strings in the last user text:

* ``[fail:CODE]`` — that Google error before anything (400, 403, 404, 429 with
  ``RetryInfo.retryDelay = "7s"``, 500, 503, 504);
* ``[fail-mid:CODE]`` — streams: one text event, then ``data: {"error": ...}``;
* ``[cut]`` — streams: one text event, then EOF without ``finishReason``; unary: half a body;
* ``[block]`` — ``promptFeedback.blockReason = SAFETY`` and no candidates;
* ``[unsafe]`` — ``finishReason: SAFETY`` (streams: after a text event, with no content);
* ``[malformed]`` — ``finishReason: MALFORMED_FUNCTION_CALL``.

``app[REQUESTS]`` records ``(method, model, body)`` of every accepted call.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
from typing import Any

from aiohttp import web

API_KEY = "test-gemini-key"
KEY = web.AppKey("api_key", str)
REQUESTS = web.AppKey("requests", list)  # (method, model, body) of every accepted call

# name: (methods, input limit, output limit, embedding dimensions)
_GEN = ["generateContent", "streamGenerateContent"]
_EMB = ["embedContent", "batchEmbedContents"]
MODELS: dict[str, tuple[list[str], int, int, int]] = {
    "gemini-2.0-flash": (_GEN, 1_048_576, 8192, 0),
    "gemini-2.5-flash": (_GEN, 1_048_576, 65536, 0),
    "gemini-2.5-pro": (_GEN, 1_048_576, 65536, 0),
    "gemini-3-pro-preview": (_GEN, 1_048_576, 65536, 0),
    "text-embedding-004": (_EMB, 2048, 1, 768),
    "gemini-embedding-001": (_EMB, 2048, 1, 3072),
    "imagen-3.0-generate-002": (["predict"], 480, 8192, 0),
}

# -- request schema: field -> spec; a spec is a type, a dict (message), [spec], or a set (enum)
ANY = object()
OBJ = "object"
_ROLES = {"user", "model"}
BLOB = {"mimeType": str, "data": str, "displayName": str}
FILE = {"mimeType": str, "fileUri": str, "displayName": str}
CALL = {"id": str, "name": str, "args": OBJ, "partialArgs": ANY, "willContinue": bool}
RESP = {"id": str, "name": str, "response": OBJ, "parts": ANY, "willContinue": bool, "scheduling": str}
PART = {
    "text": str, "thought": bool, "thoughtSignature": str, "inlineData": BLOB, "fileData": FILE,
    "functionCall": CALL, "functionResponse": RESP, "executableCode": OBJ,
    "codeExecutionResult": OBJ, "videoMetadata": OBJ, "mediaResolution": OBJ, "partMetadata": OBJ,
}  # fmt: skip
CONTENT = {"role": str, "parts": [PART]}
DECL = {
    "name": str, "description": str, "behavior": str, "parameters": OBJ,
    "parametersJsonSchema": ANY, "response": OBJ, "responseJsonSchema": ANY,
}  # fmt: skip
TOOL = {
    "functionDeclarations": [DECL], "googleSearch": OBJ, "googleSearchRetrieval": OBJ,
    "codeExecution": OBJ, "urlContext": OBJ, "fileSearch": OBJ, "computerUse": OBJ, "googleMaps": OBJ,
}  # fmt: skip
_MODES = {"MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"}
TOOL_CONFIG = {
    "functionCallingConfig": {"mode": _MODES, "allowedFunctionNames": [str]},
    "retrievalConfig": OBJ,
}
_CATEGORIES = {
    "HARM_CATEGORY_UNSPECIFIED", "HARM_CATEGORY_HARASSMENT", "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT", "HARM_CATEGORY_DANGEROUS_CONTENT", "HARM_CATEGORY_CIVIC_INTEGRITY",
}  # fmt: skip
_THRESHOLDS = {
    "HARM_BLOCK_THRESHOLD_UNSPECIFIED", "BLOCK_LOW_AND_ABOVE", "BLOCK_MEDIUM_AND_ABOVE",
    "BLOCK_ONLY_HIGH", "BLOCK_NONE", "OFF",
}  # fmt: skip
SAFETY = {"category": _CATEGORIES, "threshold": _THRESHOLDS}
THINKING = {"includeThoughts": bool, "thinkingBudget": int, "thinkingLevel": str}
GENERATION = {
    "stopSequences": [str], "responseMimeType": str, "responseSchema": OBJ, "responseJsonSchema": ANY,
    "responseModalities": [str], "candidateCount": int, "maxOutputTokens": int, "temperature": float,
    "topP": float, "topK": int, "seed": int, "presencePenalty": float, "frequencyPenalty": float,
    "responseLogprobs": bool, "logprobs": int, "enableEnhancedCivicAnswers": bool,
    "speechConfig": OBJ, "thinkingConfig": THINKING, "imageConfig": OBJ, "mediaResolution": str,
}  # fmt: skip
GENERATE = {
    "model": str, "contents": [CONTENT], "systemInstruction": CONTENT, "tools": [TOOL],
    "toolConfig": TOOL_CONFIG, "safetySettings": [SAFETY], "generationConfig": GENERATION,
    "cachedContent": str,
}  # fmt: skip
_TASKS = {
    "TASK_TYPE_UNSPECIFIED", "RETRIEVAL_QUERY", "RETRIEVAL_DOCUMENT", "SEMANTIC_SIMILARITY",
    "CLASSIFICATION", "CLUSTERING", "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY",
}  # fmt: skip
EMBED = {"model": str, "content": CONTENT, "taskType": _TASKS, "title": str, "outputDimensionality": int}
BATCH = {"requests": [EMBED]}

_STATUS = {
    400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}  # fmt: skip
_FAIL_MESSAGES = {
    400: "Request contains an invalid argument.",
    403: "The caller does not have permission",
    404: "Requested entity was not found.",
    429: "You exceeded your current quota, please check your plan and billing details.",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}
_MAGIC = re.compile(r"\[(fail|fail-mid):(\d{3})\]|\[(cut|block|unsafe|malformed)\]")


class ApiError(Exception):
    def __init__(self, code: int, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details

    def body(self) -> dict[str, Any]:
        err = {"code": self.code, "message": self.message, "status": _STATUS.get(self.code, "UNKNOWN")}
        return {"error": {**err, "details": self.details} if self.details else err}


_RPC = "type.googleapis.com/google.rpc"
_QUOTA = "generativelanguage.googleapis.com/generate_content_free_tier_requests"


def bad(field: str, message: str) -> ApiError:
    violation = {"field": field, "description": message}
    return ApiError(400, message, [{"@type": f"{_RPC}.BadRequest", "fieldViolations": [violation]}])


def rule(field: str, text: str, request: str = "GenerateContentRequest") -> ApiError:
    """A semantic violation, worded as Google words them: ``* Request.field: text``."""
    return bad(field, f"* {request}.{field}: {text}")


def failure(code: int) -> ApiError:
    details: list[dict[str, Any]] | None = None
    if code == 429:
        details = [
            {"@type": f"{_RPC}.QuotaFailure", "violations": [{"quotaMetric": _QUOTA, "quotaValue": "15"}]},
            {
                "@type": f"{_RPC}.Help",
                "links": [{"url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
            },
            {"@type": f"{_RPC}.RetryInfo", "retryDelay": "7s"},
        ]
    return ApiError(code, _FAIL_MESSAGES.get(code, "Unknown error."), details)


# -- schema validation ----------------------------------------------------------------
def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _number(value: Any) -> float | None:
    """Proto3 JSON numbers: a JSON number or a numeric string (3, 3.0 and "3" for an int32)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def check(value: Any, spec: Any, path: str) -> Any:
    """Validate ``value`` against ``spec``; return it with camelCase keys and numbers as numbers.

    Like Google's JSON parser, field names are accepted in lowerCamelCase or snake_case;
    ``path`` is Google's snake_case field path used in messages.
    """
    where = f" at '{path}'" if path else ""
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise bad(path, f"Invalid JSON payload received. Expected an object{where}.")
        out = {}
        for key, item in value.items():
            name = key if key in spec else _camel(key)
            if name not in spec:
                raise bad(path, f'Invalid JSON payload received. Unknown name "{key}"{where}: Cannot find field.')  # fmt: skip
            out[name] = check(item, spec[name], f"{path}.{_snake(name)}" if path else _snake(name))
        return out
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise bad(path, f"Invalid JSON payload received. Proto field is not repeating, cannot start list{where}.")  # fmt: skip
        return [check(item, spec[0], f"{path}[{i}]") for i, item in enumerate(value)]
    number = _number(value)
    if spec is float and number is not None:
        return number
    if spec is int and number is not None and number.is_integer():
        return int(number)
    if spec is ANY or (isinstance(spec, set) and value in spec) or (spec is OBJ and isinstance(value, dict)):
        return value
    if spec in (str, bool) and isinstance(value, spec):
        return value
    kinds = {float: "TYPE_FLOAT", int: "TYPE_INT32", str: "TYPE_STRING", bool: "TYPE_BOOL", OBJ: "Struct"}
    kind = "TYPE_ENUM" if isinstance(spec, set) else kinds[spec]
    raise bad(path, f"Invalid value{where} ({kind}), {json.dumps(value)}")


_NOT_DATA = ("thought", "thoughtSignature", "videoMetadata", "mediaResolution", "partMetadata")


def _check_part(part: dict[str, Any], where: str) -> None:
    if len([k for k in part if k not in _NOT_DATA]) != 1:
        raise rule(f"{where}.data", "required oneof field 'data' must have one initialized field")
    if "text" in part and not part["text"]:
        raise bad(where, "Unable to submit request because it has an empty text parameter.")
    for key in ("functionCall", "functionResponse"):
        if key in part and not part[key].get("name"):
            raise rule(f"{where}.{_snake(key)}.name", "Name cannot be empty.")
    blob = part.get("inlineData")
    if blob is not None:
        if not blob.get("mimeType") or not blob.get("data"):
            raise rule(f"{where}.inline_data", "mime_type and data are required.")
        try:
            base64.b64decode(blob["data"], validate=True)
        except ValueError:
            field = f"{where}.inline_data.data"
            raise bad(field, f"Invalid value at '{field}' (TYPE_BYTES), Base64 decoding failed.") from None
    if "fileData" in part and not part["fileData"].get("fileUri"):
        raise rule(f"{where}.file_data.file_uri", "file_uri must not be empty.")


def _check_turn(i: int, parts: list[dict[str, Any]], previous: dict[str, Any] | None) -> None:
    """Gemini's function-calling turn order."""
    calls = sum("functionCall" in p for p in parts)
    responses = sum("functionResponse" in p for p in parts)
    if calls and (previous is None or previous.get("role", "user") != "user"):
        raise bad(f"contents[{i}]", "Please ensure that function call turn comes immediately after a user turn or after a function response turn.")  # fmt: skip
    if responses:
        asked = sum("functionCall" in p for p in (previous or {}).get("parts", []))
        if not asked:
            raise bad(f"contents[{i}]", "Please ensure that function response turn comes immediately after a function call turn.")  # fmt: skip
        if asked != responses:
            raise bad(f"contents[{i}]", "Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn.")  # fmt: skip


def _check_contents(contents: list[dict[str, Any]], model: str) -> None:
    if not contents:
        raise rule("contents", "contents is not specified")
    previous: dict[str, Any] | None = None
    current_turn = 0
    for i, content in enumerate(contents):
        if content.get("role", "user") not in _ROLES:
            raise bad(f"contents[{i}].role", "Please use a valid role: user, model.")
        parts = content.get("parts") or []
        if not parts:
            raise rule(f"contents[{i}].parts", "contents.parts must not be empty.")
        for j, part in enumerate(parts):
            _check_part(part, f"contents[{i}].parts[{j}]")
        _check_turn(i, parts, previous)
        if content.get("role", "user") == "user" and not any("functionResponse" in p for p in parts):
            current_turn = i
        previous = content
    if model.startswith("gemini-3"):
        _check_signatures(contents[current_turn:])


def _check_signatures(turn: list[dict[str, Any]]) -> None:
    """Gemini 3: the first functionCall part of each model step of the current turn is signed."""
    for content in turn:
        first = next((p for p in content.get("parts", []) if "functionCall" in p), None)
        if first is None:
            continue
        signature = first.get("thoughtSignature") or ""
        if not signature:
            name = first["functionCall"]["name"]
            raise bad("contents", f"Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `default_api:{name}`")  # fmt: skip
        try:
            ok = base64.b64decode(signature.replace("-", "+").replace("_", "/")).startswith(b"sig:")
        except ValueError:
            ok = False
        if not ok:
            raise bad("contents", "Corrupted thought signature.")


def _check_tools(body: dict[str, Any]) -> None:
    names = set()
    for i, tool in enumerate(body.get("tools") or []):
        for j, decl in enumerate(tool.get("functionDeclarations") or []):
            where = f"tools[{i}].function_declarations[{j}]"
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}", decl.get("name", "")):
                raise rule(f"{where}.name", "Invalid function name.")
            if "parameters" in decl and "parametersJsonSchema" in decl:
                raise rule(where, "parameters and parameters_json_schema cannot both be set.")
            names.add(decl["name"])
    fcc = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    where = "tool_config.function_calling_config.allowed_function_names"
    if fcc.get("allowedFunctionNames") and fcc.get("mode") not in ("ANY", "VALIDATED"):
        raise rule(where, "allowed_function_names can only be set when mode is ANY.")
    for name in fcc.get("allowedFunctionNames") or []:
        if name not in names:
            raise rule(where, f"function {name!r} is not declared.")


def _check_generation(g: dict[str, Any], model: str) -> None:
    where = "generation_config."
    if not 1 <= g.get("candidateCount", 1) <= 8:
        raise rule(where + "candidate_count", "must be in the range [1, 8].")
    if len(g.get("stopSequences", [])) > 5:
        raise rule(where + "stop_sequences", "at most 5 stop sequences are allowed.")
    mime = g.get("responseMimeType", "text/plain")
    if mime not in ("text/plain", "application/json", "text/x.enum"):
        raise rule(where + "response_mime_type", f"allowed mimetypes are `text/plain`, `application/json`, `text/x.enum`. {mime} is not supported.")  # fmt: skip
    if ("responseJsonSchema" in g or "responseSchema" in g) and mime == "text/plain":
        raise rule(where + "response_mime_type", "must be application/json or text/x.enum when a response schema is set.")  # fmt: skip
    if "logprobs" in g and not g.get("responseLogprobs"):
        raise rule(where + "logprobs", "logprobs is only allowed when response_logprobs is true.")
    if not 1 <= g.get("maxOutputTokens", 1) <= MODELS[model][2]:
        raise rule(where + "max_output_tokens", f"must be in the range [1, {MODELS[model][2]}].")


def _check_generate(body: dict[str, Any], model: str) -> dict[str, Any]:
    body = check(body, GENERATE, "")
    _check_contents(body.get("contents") or [], model)
    for j, part in enumerate((body.get("systemInstruction") or {}).get("parts") or []):
        _check_part(part, f"system_instruction.parts[{j}]")
    _check_tools(body)
    _check_generation(body.get("generationConfig") or {}, model)
    return body


# -- deterministic generation ---------------------------------------------------------
def _words(text: str) -> int:
    return len(text.split())


def _text_of(content: dict[str, Any]) -> str:
    return " ".join(p["text"] for p in content.get("parts", []) if "text" in p and not p.get("thought"))


def _prompt_tokens(body: dict[str, Any]) -> int:
    total = 0
    for content in [body.get("systemInstruction") or {}, *body["contents"]]:
        for part in content.get("parts", []):
            if "text" in part:
                total += _words(part["text"])
            elif "inlineData" in part or "fileData" in part:
                total += 258
            else:
                total += _words(json.dumps(part))
    return total


def _example(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return None
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    kind = next((k for k in kind if k != "null"), None) if isinstance(kind, list) else kind
    kind = kind.lower() if isinstance(kind, str) else kind
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        keys = schema.get("required") or list(props)
        return {k: _example(props.get(k, {})) for k in keys}
    examples: dict[Any, Any] = {"string": "example", "integer": 1, "number": 1, "boolean": True, "array": []}
    return examples.get(kind)


def _function_calls(body: dict[str, Any], text: str, model: str) -> list[dict[str, Any]]:
    decls = [d for t in body.get("tools") or [] for d in t.get("functionDeclarations") or []]
    fcc = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    mode = fcc.get("mode", "AUTO")
    if not decls or mode == "NONE":
        return []
    allowed = [
        d for d in decls if d["name"] in (fcc.get("allowedFunctionNames") or [d["name"] for d in decls])
    ]
    chosen = [d for d in allowed if re.search(rf"(?<![\w]){re.escape(d['name'])}(?![\w])", text)]
    if mode in ("ANY", "VALIDATED") and not chosen:
        chosen = allowed[:1]
    parts: list[dict[str, Any]] = []
    for d in chosen:
        args = _example(d.get("parametersJsonSchema") or d.get("parameters") or {}) or {}
        parts.append({"functionCall": {"name": d["name"], "args": args}})
    if parts and model.startswith("gemini-3"):  # only the first call of a step is signed
        name = parts[0]["functionCall"]["name"].encode()
        parts[0]["thoughtSignature"] = base64.b64encode(b"sig:" + name + bytes(24)).decode()
    return parts


def _answer(body: dict[str, Any], last: dict[str, Any], g: dict[str, Any]) -> str:
    responses = [p["functionResponse"] for p in last.get("parts", []) if "functionResponse" in p]
    if responses:
        text = "Results: " + "; ".join(
            f"{r['name']}={json.dumps(r.get('response'), sort_keys=True)}" for r in responses
        )
    else:
        text = "You said: " + _text_of(last)
        media = [
            (p.get("inlineData") or p.get("fileData"))["mimeType"]
            for p in last.get("parts", [])
            if "inlineData" in p or "fileData" in p
        ]
        if media:
            text += f" [images: {', '.join(media)}]"
    if g.get("responseMimeType") == "application/json":
        schema = g.get("responseJsonSchema") or g.get("responseSchema")
        text = json.dumps(_example(schema) if schema else {"answer": text})
    return text


def _limit(text: str, g: dict[str, Any]) -> tuple[str, str]:
    reason = "STOP"
    for stop in g.get("stopSequences", []):
        if stop and stop in text:
            text = text[: text.index(stop)]
    limit = g.get("maxOutputTokens")
    if limit is not None and _words(text) > limit:
        text = " ".join(text.split()[:limit])
        reason = "MAX_TOKENS"
    return text, reason


def plan(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The full deterministic answer: candidates (parts + finishReason) and usage."""
    g = body.get("generationConfig") or {}
    last = body["contents"][-1]
    magic = _magic(last)
    prompt = _prompt_tokens(body)
    if "block" in magic:
        return {"blocked": True, "usage": {"promptTokenCount": prompt, "totalTokenCount": prompt}}
    thinking = g.get("thinkingConfig") or {}
    thinks = model.startswith(("gemini-2.5", "gemini-3")) and thinking.get("thinkingBudget") != 0
    thought: list[dict[str, Any]] = (
        [{"text": "Thinking about the request.", "thought": True}] if thinks else []
    )
    calls = _function_calls(body, _text_of(last), model) if last.get("role", "user") == "user" else []
    candidates: list[dict[str, Any]] = []
    for i in range(g.get("candidateCount", 1)):
        parts = list(thought) if thinking.get("includeThoughts") else []
        if "malformed" in magic:
            parts, reason = [], "MALFORMED_FUNCTION_CALL"
        elif calls:
            parts, reason = parts + calls, "STOP"
        else:
            text, reason = _limit(_answer(body, last, g) + (f" (candidate {i})" if i else ""), g)
            parts += [{"text": text}] if text else []
            reason = "SAFETY" if "unsafe" in magic else reason
        candidates.append({"parts": parts, "finishReason": reason, "index": i})
    out = sum(
        _words(p["text"]) if "text" in p else 5
        for c in candidates
        for p in c["parts"]
        if not p.get("thought")
    )
    thoughts = _words(thought[0]["text"]) * len(candidates) if thought else 0
    usage = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": out,
        "totalTokenCount": prompt + out + thoughts,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return {"candidates": candidates, "usage": usage, "magic": magic}


def _magic(content: dict[str, Any]) -> dict[str, int]:
    found: dict[str, int] = {}
    for m in _MAGIC.finditer(_text_of(content) if content.get("role", "user") == "user" else ""):
        if m.group(1):
            found[m.group(1)] = int(m.group(2))
        else:
            found[m.group(3)] = 1
    return found


def _candidate(c: dict[str, Any], parts: list[dict[str, Any]], final: bool, safety: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if parts and not (final and safety):
        out["content"] = {"parts": parts, "role": "model"}
    if final:
        out["finishReason"] = c["finishReason"]
        if safety:
            out["safetyRatings"] = [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
            ]
    if c["index"] or final:
        out["index"] = c["index"]
    return out


def whole(p: dict[str, Any], model: str, rid: str) -> dict[str, Any]:
    if p.get("blocked"):
        return {
            "promptFeedback": _feedback(),
            "usageMetadata": p["usage"],
            "modelVersion": model,
            "responseId": rid,
        }
    safety = "unsafe" in p["magic"]
    cands = [_candidate(c, c["parts"], True, safety) for c in p["candidates"]]
    return {"candidates": cands, "usageMetadata": p["usage"], "modelVersion": model, "responseId": rid}


def _feedback() -> dict[str, Any]:
    return {
        "blockReason": "SAFETY",
        "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True}],
    }


def _pieces(parts: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split a candidate's parts into stream events: text by 3 words, others whole."""
    events: list[list[dict[str, Any]]] = []
    for part in parts:
        if "text" in part and not part.get("thought"):
            words = re.findall(r"\S+\s*", part["text"])
            events.extend([{"text": "".join(words[i : i + 3])}] for i in range(0, len(words), 3))
        else:
            events.append([part])
    return events


def events(p: dict[str, Any], model: str, rid: str) -> list[dict[str, Any]]:
    """The stream's events; the last carries finishReason and the full usage."""
    head = {"modelVersion": model, "responseId": rid}
    if p.get("blocked"):
        return [{"promptFeedback": _feedback(), "usageMetadata": p["usage"], **head}]
    partial = {
        "promptTokenCount": p["usage"]["promptTokenCount"],
        "totalTokenCount": p["usage"]["promptTokenCount"],
    }
    safety = "unsafe" in p["magic"]
    split = [_pieces(c["parts"]) for c in p["candidates"]]
    count = max(1, *(len(s) for s in split)) + (1 if safety else 0)
    out = []
    for k in range(count):
        final = k == count - 1
        cands = []
        for c, pieces in zip(p["candidates"], split, strict=True):
            parts = pieces[k] if k < len(pieces) else []
            if parts or final:
                cands.append(_candidate(c, parts, final, safety))
        out.append({"candidates": cands, "usageMetadata": p["usage"] if final else partial, **head})
    return out


# -- embeddings and models ------------------------------------------------------------
def embed(text: str, dims: int, full: int) -> list[float]:
    """A deterministic unit vector of ``full`` dimensions, truncated (not renormalized)."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    values = [rng.uniform(-1.0, 1.0) for _ in range(full)]
    norm = math.sqrt(sum(v * v for v in values))
    return [round(v / norm, 6) for v in values[:dims]]


def _embed_one(req: dict[str, Any], model: str, where: str) -> dict[str, Any]:
    parts = (req.get("content") or {}).get("parts") or []
    if not parts:
        raise bad(f"{where}content.parts", f"* {where}content.parts: contents.parts must not be empty.")
    for j, part in enumerate(parts):
        _check_part(part, f"{where}content.parts[{j}]")
    full = MODELS[model][3]
    dims = req.get("outputDimensionality", full)
    if not 1 <= dims <= full:
        raise bad(
            f"{where}output_dimensionality", f"* {where}output_dimensionality: must be between 1 and {full}."
        )
    return {"values": embed(" ".join(p.get("text", "") for p in parts), dims, full)}


def _model_resource(name: str) -> dict[str, Any]:
    methods, inp, out, _ = MODELS[name]
    resource = {
        "name": f"models/{name}",
        "version": "001",
        "displayName": name.replace("-", " ").title(),
        "description": f"Emulated {name}",
        "inputTokenLimit": inp,
        "outputTokenLimit": out,
        "supportedGenerationMethods": methods,
    }
    if "generateContent" in methods:
        resource.update(temperature=1.0, maxTemperature=2.0, topP=0.95, topK=64)
        resource["thinking"] = name.startswith(("gemini-2.5", "gemini-3"))
    return resource


# -- HTTP -----------------------------------------------------------------------------
@web.middleware
async def _rpc_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        if request.match_info.get("version") not in ("v1", "v1beta"):
            raise ApiError(404, f"The requested URL {request.path} was not found on this server.")
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            raise ApiError(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            )
        if key != request.app[KEY]:
            raise ApiError(
                400,
                "API key not valid. Please pass a valid API key.",
                [
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
                    {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": "API key not valid. Please pass a valid API key."},
                ],
            )  # fmt: skip
        return await handler(request)
    except ApiError as e:
        return web.json_response(e.body(), status=e.code)


def _model(name: str, method: str, version: str) -> str:
    model = name.removeprefix("models/")
    if model not in MODELS or method not in MODELS[model][0]:
        raise ApiError(
            404,
            f"models/{model} is not found for API version {version}, or is not supported for {method}. Call ListModels to see the list of available models and their supported methods.",
        )
    return model


async def _json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"{}")
    except ValueError as e:
        raise bad("", f"Invalid JSON payload received. {e}") from None


async def list_models(request: web.Request) -> web.Response:
    try:
        size = min(int(request.query.get("pageSize", 50)), 1000)
        start = int(request.query.get("pageToken") or 0)
    except ValueError:
        raise bad("page_token", "Invalid page token.") from None
    names = list(MODELS)
    body: dict[str, Any] = {"models": [_model_resource(n) for n in names[start : start + size]]}
    if start + size < len(names):
        body["nextPageToken"] = str(start + size)
    return web.json_response(body)


async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in MODELS:
        raise ApiError(404, f"models/{name} is not found for API version {request.match_info['version']}.")
    return web.json_response(_model_resource(name))


async def call(request: web.Request) -> web.StreamResponse:
    name, _, method = request.match_info["name"].partition(":")
    model = _model(name, method, request.match_info["version"])
    body = await _json(request)
    if method == "embedContent":
        body = check(body, EMBED, "")
        request.app[REQUESTS].append((method, model, body))
        return web.json_response({"embedding": _embed_one(body, model, "")})
    if method == "batchEmbedContents":
        return _batch(request, body, model)
    body = _check_generate(body, model)
    request.app[REQUESTS].append((method, model, body))
    magic = _magic(body["contents"][-1])
    if "fail" in magic:
        raise failure(magic["fail"])
    p = plan(body, model)
    rid = "resp-" + hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    if method == "generateContent":
        if "cut" in magic:
            data = json.dumps(whole(p, model, rid)).encode()
            return web.Response(body=data[: len(data) // 2], content_type="application/json")
        if "fail-mid" in magic:
            raise failure(magic["fail-mid"])
        return web.json_response(whole(p, model, rid))
    return await _stream(request, events(p, model, rid), magic)


def _batch(request: web.Request, body: Any, model: str) -> web.Response:
    body = check(body, BATCH, "")
    requests = body.get("requests") or []
    if not requests:
        raise bad("requests", "* BatchEmbedContentsRequest.requests: requests must not be empty.")
    if len(requests) > 100:
        raise bad(
            "requests", "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch"
        )
    for i, req in enumerate(requests):
        if req.get("model") != f"models/{model}":
            raise bad(
                f"requests[{i}].model",
                f"* BatchEmbedContentsRequest.requests[{i}].model: the model of each request must match the batch model models/{model}.",
            )
    out = [_embed_one(r, model, f"requests[{i}].") for i, r in enumerate(requests)]
    request.app[REQUESTS].append(("batchEmbedContents", model, body))
    return web.json_response({"embeddings": out})


async def _stream(
    request: web.Request, evs: list[dict[str, Any]], magic: dict[str, int]
) -> web.StreamResponse:
    sse = request.query.get("alt") == "sse"
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream" if sse else "application/json"})
    await resp.prepare(request)
    if "cut" in magic or "fail-mid" in magic:
        evs = evs[:1]
        evs[0]["candidates"] = [
            {k: v for k, v in c.items() if k != "finishReason"} for c in evs[0].get("candidates", [])
        ]
        if "fail-mid" in magic:
            evs.append(failure(magic["fail-mid"]).body())
    if not sse:
        await resp.write(("[" + ",\r\n".join(json.dumps(e) for e in evs) + "]").encode())
        return resp
    for e in evs:
        await resp.write(b"data: " + json.dumps(e).encode() + b"\r\n\r\n")
    return resp


def make_app(api_key: str = API_KEY) -> web.Application:
    app = web.Application(middlewares=[_rpc_errors], client_max_size=32 * 1024 * 1024)
    app[KEY] = api_key
    app[REQUESTS] = []
    app.router.add_get("/{version}/models", list_models)
    app.router.add_get("/{version}/models/{name}", get_model)
    app.router.add_post("/{version}/models/{name}", call)
    return app
