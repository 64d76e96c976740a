"""Fitting a client's request to a provider's profile, before any protocol sees it.

A parameter the provider does not support is dropped, or — when the provider is
configured with ``drop_params: false`` — rejected with a 400 naming it. Limits of
the profile (n, stop sequences, top_logprobs) are enforced the same way. Nothing
unsupported is ever sent to fail upstream.

``n`` is the exception to dropping: a request is never answered with fewer choices
than it asked for. A provider that cannot give ``n`` choices (``n`` over its
``max_n``, or ``n`` listed as unsupported, which means one choice) answers 400
naming ``n`` whatever ``drop_params`` says; ``n: 1`` to such a provider is dropped
(it asks for the one choice it gets). Skipping such a candidate instead belongs to
the router, once it routes by capability.
"""

from __future__ import annotations

from typing import Any

from libs.common.errors import InvalidRequest
from libs.common.profiles import Profile

_TOOL_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")


def _reject(provider: str, param: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"provider {provider!r} {why}: '{param}'", param=param, code="unsupported_parameter"
    )


def fit(req: dict[str, Any], profile: Profile, provider: str, drop: bool) -> dict[str, Any]:
    """Drop or reject what ``profile`` does not accept (mutates and returns ``req``)."""
    n = req.get("n")
    unsupported = profile.unsupported
    max_n = 1 if "n" in unsupported else profile.max_n
    if n is not None and n > max_n:
        # Never silently return fewer choices than asked for.
        raise _reject(provider, "n", f"returns at most {max_n} choice(s) per request")
    if not profile.tools:
        if req.get("tools"):  # tools change what the answer is: never dropped silently
            raise _reject(provider, "tools", "does not support tool calling")
        unsupported = unsupported | frozenset(_TOOL_FIELDS)
    elif not profile.tool_choice:
        unsupported = unsupported | {"tool_choice"}
    if not profile.parallel_tool_calls:
        unsupported = unsupported | {"parallel_tool_calls"}
    for key in unsupported.intersection(req):
        # An unsupported n got past the check above, so it asks for the one choice we get.
        if not drop and req[key] is not None and key != "n":
            raise _reject(provider, key, "does not support the parameter")
        del req[key]
    stop = req.get("stop")
    if isinstance(stop, list) and len(stop) > profile.max_stop:
        raise _reject(provider, "stop", f"accepts at most {profile.max_stop} stop sequences")
    top = req.get("top_logprobs")
    if top is not None and top > profile.max_top_logprobs:
        if not drop:
            raise _reject(provider, "top_logprobs", f"accepts top_logprobs up to {profile.max_top_logprobs}")
        req["top_logprobs"] = profile.max_top_logprobs
    if not profile.vision and _has_images(req):
        raise _reject(provider, "messages", "does not accept image inputs in")
    rf = req.get("response_format")
    if not profile.json_mode and isinstance(rf, dict) and rf.get("type") != "text":
        if not drop:
            raise _reject(provider, "response_format", "does not support")
        del req["response_format"]
    return req


def _has_images(req: dict[str, Any]) -> bool:
    for m in req.get("messages") or ():
        content = m.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    return True
    return False
