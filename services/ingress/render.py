"""The one place an error becomes OpenAI's error body (HTTP response or SSE event)."""

from __future__ import annotations

import math

import msgspec
from aiohttp import web

from libs.common.errors import SwitchmanError

_enc = msgspec.json.Encoder()


def error_body(err: SwitchmanError) -> bytes:
    return _enc.encode(
        {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    )


def error_response(err: SwitchmanError, headers: dict[str, str] | None = None) -> web.Response:
    out = dict(headers or {})
    if err.status in (429, 503):
        out["Retry-After"] = str(max(1, math.ceil(err.retry_after or 1)))
    resp = web.Response(status=err.status, body=error_body(err), content_type="application/json", headers=out)
    if err.status == 408:  # the rest of the request may never come: do not wait for it
        resp.force_close()
    return resp


def error_event(err: SwitchmanError) -> bytes:
    """The terminal SSE event of a stream that failed after its first byte (no [DONE])."""
    return b"data: " + error_body(err) + b"\n\n"
