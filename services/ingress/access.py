"""The access log: one ``request`` line per HTTP request, written once the response is finished.

An operator sees traffic without a tracing backend: method, path, status, model,
provider, attempts, latency, token counts where known, request id (key name when keys
are configured) — never prompt or completion text. Streams are logged when the stream
ends, with the status sent (200) and ``error`` set when it ended with an error event
(a failed request's ``error`` is its OpenAI error code or type).
``/healthz`` is logged at debug: probes every few seconds would drown the traffic.

On the hot path: the caller checks :func:`enabled` once and skips all of this when
info is filtered out. Token counts come from the ``D`` frame of a stream (tiny) or the
response body's ``usage``; a large body (embeddings) is not decoded whole — its usage
is read from its tail, where OpenAI-shaped bodies put it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from aiohttp import web

from .proxy import Route


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Body(msgspec.Struct):
    usage: _Usage | None = None


_body_decoder = msgspec.json.Decoder(_Body)
_done_decoder = msgspec.json.Decoder(_Usage)  # contracts.Done has the same two fields
_WHOLE_BODY_MAX = 16 * 1024
_TAIL = 4096
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
QUIET_PATHS = frozenset({"/healthz"})


class Served(msgspec.Struct):
    """What the request handler learned about a proxied request, for its access line."""

    model: str
    route: Route
    key: str | None = None


SERVED = web.RequestKey("switchman_served", Served)


def enabled(logger: Any) -> bool:
    """Whether ``logger`` writes info lines (structlog's filtering logger knows its level)."""
    check = getattr(logger, "is_enabled_for", None)
    return True if check is None else bool(check(logging.INFO))


def usage(served: Served, resp: web.StreamResponse | None) -> _Usage | None:
    try:
        if served.route.usage:
            return _done_decoder.decode(served.route.usage)
        body = getattr(resp, "body", None)
        if not isinstance(body, bytes) or resp is None or resp.status != 200:
            return None
        if len(body) <= _WHOLE_BODY_MAX:
            return _body_decoder.decode(body).usage
        return _from_tail(body[-_TAIL:])
    except msgspec.DecodeError:
        return None


def _from_tail(tail: bytes) -> _Usage | None:
    p, c = _PROMPT.search(tail), _COMPLETION.search(tail)
    if p is None and c is None:
        return None
    return _Usage(int(p.group(1)) if p else None, int(c.group(1)) if c else None)


def fields(
    request: web.Request, resp: web.StreamResponse | None, status: int, elapsed_s: float, rid: str
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "method": request.method,
        "path": request.path,
        "status": status,
        "latency_ms": round(elapsed_s * 1000, 2),
        "request_id": rid,
    }
    served = request.get(SERVED)
    if served is None:
        return out
    r = served.route
    out["model"] = served.model
    if r.provider:
        out["provider"], out["attempts"] = r.provider, r.attempts
    if served.key is not None:
        out["key"] = served.key
    if r.error:
        out["error"] = r.error
    u = usage(served, resp)
    if u is not None:
        if u.prompt_tokens is not None:
            out["prompt_tokens"] = u.prompt_tokens
        if u.completion_tokens is not None:
            out["completion_tokens"] = u.completion_tokens
    return out
