"""A strict, deterministic emulator of Replicate's predictions API for hosted language models.

``make_app()`` → aiohttp Application serving, under ``/v1``:

* ``POST /models/{owner}/{name}/predictions`` — create (official models, :data:`MODELS`);
* ``POST /predictions`` — create by ``version`` (:data:`VERSIONS`; ``owner/name:id`` or ``id``);
* ``GET /predictions/{id}``, ``POST /predictions/{id}/cancel``;
* ``GET /stream/{id}`` — the prediction's ``urls.stream`` (``Accept: text/event-stream``).

Every call needs ``Authorization: Bearer <token>`` (or the legacy ``Token <token>``; any
non-empty token unless ``make_app(token=...)``): 401 otherwise. Errors are RFC 7807
``application/problem+json`` ``{"title", "detail", "status"}``; bad input is a 422 with
``invalid_fields``: unknown top-level or input fields, a missing or non-string
``prompt``, wrong types, ``temperature`` outside 0–5, ``top_p`` outside 0–1,
``max_tokens`` < 1, a non-string ``stop_sequences``. Unknown models/versions → 404.

A created prediction is ``starting`` with ``urls {get, cancel, stream, web}``. Its stream
sends one ``output`` event per word (text, each word with its trailing space, split over
several ``data:`` lines when it holds newlines) and ``done`` with ``{}``; the answer is
``You said: <prompt>``, cut at ``max_tokens`` (or ``max_new_tokens``) words and at the
first of the comma-separated ``stop_sequences``. ``GET`` then shows ``succeeded`` with the
output list and ``metrics`` (``input_token_count`` = words of prompt + system prompt,
``output_token_count`` = words sent, ``predict_time``, ``total_time``,
``tokens_per_second``, ``time_to_first_token``); a GET before the stream completes it.

Scripted by a magic string in the prompt (the last user message text):
``[fail:429]`` (``Retry-After: 1``), ``[fail:500]``, ``[fail:503]`` → the create call fails
with that status; ``[stream-fail:500]`` → the stream GET answers 500; ``[cut]`` → the
stream ends cleanly after two outputs with no ``done`` (the prediction stays
``processing``); ``[error-event]`` → two outputs, ``error`` ``{"detail": ...}``, then
``done`` ``{"reason": "error"}`` (the prediction ``failed``); ``[no-metrics]`` → the final
prediction has no token counts.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from aiohttp import web

MODELS = {
    "meta/meta-llama-3-8b-instruct",
    "meta/meta-llama-3-70b-instruct",
    "mistralai/mixtral-8x7b-instruct-v0.1",
}
VERSIONS = {
    "5a6809ca6288247d06daf6365557e5e429063f32a21146b2a807c682652136b8": "meta/meta-llama-3-8b-instruct"
}
INPUT_TYPES: dict[str, tuple[type, ...]] = {
    "prompt": (str,), "system_prompt": (str,), "prompt_template": (str,), "stop_sequences": (str,),
    "max_tokens": (int,), "min_tokens": (int,), "max_new_tokens": (int,), "min_new_tokens": (int,),
    "top_k": (int,), "seed": (int,), "temperature": (int, float), "top_p": (int, float),
    "presence_penalty": (int, float), "frequency_penalty": (int, float), "length_penalty": (int, float),
    "log_performance_metrics": (bool,),
}  # fmt: skip
TOP_FIELDS = {"input", "stream", "webhook", "webhook_events_filter"}
FAIL = re.compile(r"\[fail:(\d{3})\]")
STREAM_FAIL = re.compile(r"\[stream-fail:(\d{3})\]")
TOKEN = web.AppKey("token", str)
STORE = web.AppKey("predictions", dict)


class Problem(Exception):
    def __init__(
        self, status: int, title: str, detail: str, fields: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.fields = status, title, detail, fields


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _problem(e: Problem, **headers: str) -> web.Response:
    body: dict[str, Any] = {"title": e.title, "detail": e.detail, "status": e.status}
    if e.fields is not None:
        body["invalid_fields"] = e.fields
    return web.json_response(body, status=e.status, headers=headers, content_type="application/problem+json")


def _auth(request: web.Request) -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    want = request.app[TOKEN]
    if scheme not in ("Bearer", "Token") or not token.strip() or (want and token != want):
        raise Problem(401, "Unauthenticated", "You did not pass a valid authentication token")


def check_input(inp: Any) -> None:
    """Raise a 422 :class:`Problem` listing what is wrong with a prediction ``input``."""
    if not isinstance(inp, dict):
        raise Problem(422, "Input validation failed", "- input: Invalid type. Expected: object", [])
    bad: list[dict[str, str]] = []

    def fail(field: str, kind: str, why: str) -> None:
        bad.append({"type": kind, "field": f"input.{field}", "description": why})

    if "prompt" not in inp:
        fail("prompt", "required", "prompt is required")
    for key, value in inp.items():
        types = INPUT_TYPES.get(key)
        if types is None:
            fail(key, "additional_property_not_allowed", f"Additional property {key} is not allowed")
        elif not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            fail(key, "invalid_type", f"Invalid type. Expected: {types[0].__name__}")
    limits = {
        "temperature": (0, 5),
        "top_p": (0, 1),
        "max_tokens": (1, 1 << 20),
        "max_new_tokens": (1, 1 << 20),
    }
    for key, (lo, hi) in limits.items():
        v = inp.get(key)
        if isinstance(v, int | float) and not lo <= v <= hi:
            fail(key, "number_out_of_range", f"Must be between {lo} and {hi}")
    if bad:
        detail = "\n".join(f"- {b['field']}: {b['description']}" for b in bad)
        raise Problem(422, "Input validation failed", detail, bad)


def _words(inp: dict[str, Any]) -> tuple[list[str], int]:
    """The output pieces (word + trailing space) and the output word budget used."""
    text = f"You said: {inp['prompt']}"
    for stop in (inp.get("stop_sequences") or "").split(","):
        if stop and stop in text:
            text = text[: text.index(stop)]
    words = text.split(" ")
    pieces = [w + " " for w in words[:-1]] + [words[-1]]
    limit = inp.get("max_tokens") or inp.get("max_new_tokens")
    return (pieces[:limit] if limit else pieces), len(pieces)


def _prediction(request: web.Request, model: str, version: str, inp: dict[str, Any]) -> dict[str, Any]:
    pid = uuid.uuid4().hex[:26]
    base = f"{request.scheme}://{request.host}/v1"
    return {
        "id": pid, "model": model, "version": version, "input": inp, "logs": "", "output": None,
        "data_removed": False, "error": None, "status": "starting", "created_at": _now(), "metrics": {},
        "urls": {
            "get": f"{base}/predictions/{pid}", "cancel": f"{base}/predictions/{pid}/cancel",
            "stream": f"{base}/stream/{pid}", "web": f"https://replicate.com/p/{pid}",
        },
    }  # fmt: skip


async def _create(request: web.Request, model: str, version: str, body: dict[str, Any]) -> web.Response:
    extra = sorted(set(body) - TOP_FIELDS)
    if extra:
        detail = f"- {extra[0]}: Additional property {extra[0]} is not allowed"
        raise Problem(422, "Invalid request", detail, [])
    check_input(body.get("input"))
    m = FAIL.search(body["input"]["prompt"])
    if m:
        status = int(m.group(1))
        headers = {"Retry-After": "1"} if status == 429 else {}
        return _problem(Problem(status, HTTPStatus(status).phrase, f"emulated failure {status}"), **headers)
    pred = _prediction(request, model, version, body["input"])
    request.app[STORE][pred["id"]] = pred
    return web.json_response(pred, status=201)


async def _json(request: web.Request) -> dict[str, Any]:
    _auth(request)
    try:
        body = await request.json()
    except ValueError:
        raise Problem(400, "Bad Request", "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Problem(422, "Invalid request", "- body: Invalid type. Expected: object", [])
    return body


async def create_for_model(request: web.Request) -> web.Response:
    body = await _json(request)
    model = f"{request.match_info['owner']}/{request.match_info['name']}"
    if model not in MODELS:
        raise Problem(404, "Not found", f"The requested model {model} was not found")
    return await _create(request, model, next((v for v, m in VERSIONS.items() if m == model), ""), body)


async def create_by_version(request: web.Request) -> web.Response:
    body = await _json(request)
    version = body.pop("version", None)
    if not isinstance(version, str):
        raise Problem(422, "Invalid request", "- version: version is required", [])
    version = version.rpartition(":")[2]
    if version not in VERSIONS:
        raise Problem(422, "Invalid version or not permitted", "The specified version does not exist")
    return await _create(request, VERSIONS[version], version, body)


def _find(request: web.Request) -> dict[str, Any]:
    _auth(request)
    pred = request.app[STORE].get(request.match_info["id"])
    if pred is None:
        raise Problem(404, "Not found", "The requested resource could not be found")
    return pred


def _complete(pred: dict[str, Any], sent: list[str]) -> None:
    prompt = pred["input"]["prompt"]
    if "[error-event]" in prompt:
        pred.update(status="failed", error="CUDA out of memory (emulated)", output=sent)
        return
    pred.update(status="succeeded", output=sent, completed_at=_now())
    metrics: dict[str, Any] = {"predict_time": 0.05, "total_time": 0.06, "time_to_first_token": 0.01}
    if "[no-metrics]" not in prompt:
        words = len(f"{pred['input'].get('system_prompt', '')} {prompt}".split())
        metrics |= {"input_token_count": words, "output_token_count": len(sent), "tokens_per_second": 100.0}
    pred["metrics"] = metrics


async def get_prediction(request: web.Request) -> web.Response:
    pred = _find(request)
    if pred["status"] in ("starting", "processing") and "[cut]" not in pred["input"]["prompt"]:
        _complete(pred, _words(pred["input"])[0])
    return web.json_response(pred)


async def cancel(request: web.Request) -> web.Response:
    pred = _find(request)
    if pred["status"] in ("starting", "processing"):
        pred.update(status="canceled", completed_at=_now())
    return web.json_response(pred)


def _sse(event: str, data: str, n: int) -> bytes:
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {event}\nid: {int(time.time())}:{n}\n{lines}\n".encode()


async def stream(request: web.Request) -> web.StreamResponse:
    pred = _find(request)
    if "text/event-stream" not in request.headers.get("Accept", ""):
        raise Problem(406, "Not Acceptable", "Accept: text/event-stream is required")
    prompt = pred["input"]["prompt"]
    m = STREAM_FAIL.search(prompt)
    if m:
        status = int(m.group(1))
        raise Problem(status, HTTPStatus(status).phrase, "emulated stream failure")
    pieces, _ = _words(pred["input"])
    scripted = "[cut]" in prompt or "[error-event]" in prompt
    if scripted:
        pieces = pieces[:2]
    pred["status"] = "processing"
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await resp.prepare(request)
    for n, piece in enumerate(pieces):
        await resp.write(_sse("output", piece, n))
    if "[error-event]" in prompt:
        await resp.write(_sse("error", '{"detail": "CUDA out of memory (emulated)"}', len(pieces)))
        await resp.write(_sse("done", '{"reason": "error"}', len(pieces) + 1))
    if not scripted:
        await resp.write(_sse("done", "{}", len(pieces)))
    if "[cut]" not in prompt:
        _complete(pred, pieces)
    await resp.write_eof()
    return resp


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as e:
        return _problem(e)


def make_app(token: str | None = None) -> web.Application:
    app = web.Application(middlewares=[_errors])
    app[TOKEN] = token or ""
    app[STORE] = {}
    app.router.add_post("/v1/models/{owner}/{name}/predictions", create_for_model)
    app.router.add_post("/v1/predictions", create_by_version)
    app.router.add_get("/v1/predictions/{id}", get_prediction)
    app.router.add_post("/v1/predictions/{id}/cancel", cancel)
    app.router.add_get("/v1/stream/{id}", stream)
    return app
