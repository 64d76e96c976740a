"""libs/common/errors.py: the hierarchy, bus frames, upstream status mapping; services/ingress/render.py."""

from __future__ import annotations

import json

import pytest

from libs.common import contracts
from libs.common.errors import (
    AuthenticationFailed,
    ErrorFrame,
    GatewayTimeout,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NoProvider,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    SwitchmanError,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRejected,
    from_frame,
    upstream_status_error,
)
from services.ingress.render import error_body, error_event, error_response
from tests.schema import validate

CLASSES = [
    (InvalidRequest, 400, "invalid_request_error", None, False),
    (AuthenticationFailed, 401, "invalid_request_error", "invalid_api_key", False),
    (PermissionDenied, 403, "invalid_request_error", "permission_denied", False),
    (NotFound, 404, "invalid_request_error", "not_found", False),
    (ModelNotFound, 404, "invalid_request_error", "model_not_found", False),
    (MethodNotAllowed, 405, "invalid_request_error", "method_not_allowed", False),
    (PayloadTooLarge, 413, "invalid_request_error", "request_too_large", False),
    (RateLimited, 429, "rate_limit_error", "rate_limit_exceeded", True),
    (InternalError, 500, "api_error", None, False),
    (UpstreamError, 502, "api_error", None, True),
    (UpstreamAuthError, 502, "api_error", "upstream_authentication_error", True),
    (NoProvider, 503, "service_unavailable_error", "no_provider_available", False),
    (Overloaded, 503, "service_unavailable_error", "server_is_overloaded", True),
    (GatewayTimeout, 504, "api_error", "timeout", True),
]


@pytest.mark.parametrize(
    ("cls", "status", "etype", "code", "retryable"), CLASSES, ids=[c[0].__name__ for c in CLASSES]
)
def test_class_status_type_code(cls, status, etype, code, retryable):
    err = cls("boom")
    assert isinstance(err, SwitchmanError) and isinstance(err, Exception)
    assert (err.status, err.type, err.code, err.retryable) == (status, etype, code, retryable)
    assert err.message == "boom" and str(err) == "boom"
    assert cls("x", code="custom").code == "custom"


def test_upstream_rejected_carries_its_status():
    err = UpstreamRejected(422, "bad", param="p")
    assert (err.status, err.type, err.param, err.retryable) == (422, "invalid_request_error", "p", False)
    assert UpstreamRejected.status == 500  # the class default is not shared by instances
    assert UpstreamRejected(404, "x").status == 404


def _round_trip(err: SwitchmanError) -> SwitchmanError:
    wire = contracts.frame(contracts.ERROR, 1, 3, contracts.encode(err.frame()))
    assert contracts.parse_header(wire) == (contracts.ERROR, 1, 3)
    frame = contracts.error_decoder.decode(wire[contracts.HEADER_SIZE :])
    assert isinstance(frame, ErrorFrame)
    return from_frame(frame)


ROUND_TRIP = [
    InvalidRequest("bad temp", param="temperature", code="invalid_value"),
    AuthenticationFailed("no key"),
    PermissionDenied("nope", param="model"),
    ModelNotFound("no such model", param="model"),
    PayloadTooLarge("too big"),
    RateLimited("slow down", retry_after=2.5, provider="groq"),
    InternalError("oops"),
    UpstreamError("upstream failed", provider="openai"),
    UpstreamAuthError("bad creds", provider="openai"),
    NoProvider("none"),
    Overloaded("busy", retry_after=7.0, provider="anthropic"),
    GatewayTimeout("slow", provider="x"),
    UpstreamRejected(422, "unprocessable", param="messages", code="bad_shape", provider="vllm"),
    UpstreamRejected(409, "conflict"),
    UpstreamRejected(400, "bad", param="tools"),
]


@pytest.mark.parametrize("err", ROUND_TRIP, ids=[f"{type(e).__name__}-{e.status}" for e in ROUND_TRIP])
def test_frame_round_trip(err):
    back = _round_trip(err)
    assert isinstance(back, SwitchmanError)
    assert (back.status, back.type, back.message, back.param, back.code, back.retry_after, back.provider) == (
        err.status,
        err.type,
        err.message,
        err.param,
        err.code,
        err.retry_after,
        err.provider,
    )


def test_round_trip_with_custom_type():
    err = UpstreamRejected(404, "no such deployment")
    err.type = "not_found_error"
    back = _round_trip(err)
    assert (back.status, back.type) == (404, "not_found_error")
    # and a known status with an unexpected type keeps the type too
    err2 = UpstreamRejected(400, "x")
    err2.type = "invalid_request_error_custom"
    assert _round_trip(err2).type == "invalid_request_error_custom"


def test_frame_omits_defaults_on_the_wire():
    raw = json.loads(contracts.encode(InvalidRequest("x").frame()))
    assert raw == {"status": 400, "type": "invalid_request_error", "message": "x"}
    raw2 = json.loads(contracts.encode(RateLimited("y", retry_after=1.0).frame()))
    assert raw2["retryable"] is True and raw2["retry_after"] == 1.0 and raw2["code"] == "rate_limit_exceeded"


# -- upstream_status_error --------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_auth(status):
    err = upstream_status_error(status, "Invalid API key", provider="groq", param="x", code="invalid_api_key")
    assert type(err) is UpstreamAuthError
    assert (
        err.status == 502
        and err.provider == "groq"
        and "'groq'" in err.message
        and str(status) in err.message
    )
    assert err.code == "upstream_authentication_error"  # never the client's own 401


def test_upstream_429():
    err = upstream_status_error(429, "slow down", provider="p", retry_after=3.0, code="rate_limit_exceeded")
    assert type(err) is RateLimited
    assert (err.status, err.retry_after, err.provider, err.message) == (429, 3.0, "p", "slow down")
    assert err.retryable


@pytest.mark.parametrize("status", [408, 504])
def test_upstream_timeout(status):
    err = upstream_status_error(status, "late", provider="p")
    assert type(err) is GatewayTimeout and err.status == 504 and err.provider == "p" and err.retryable


@pytest.mark.parametrize("status", [503, 529])
def test_upstream_overloaded(status):
    err = upstream_status_error(status, "busy", provider="p", retry_after=4.0)
    assert type(err) is Overloaded
    assert (err.status, err.retry_after, err.provider) == (503, 4.0, "p") and err.retryable


@pytest.mark.parametrize("status", [500, 502, 520])
def test_upstream_5xx(status):
    err = upstream_status_error(status, "kaput", provider="p", error_type="server_error")
    assert type(err) is UpstreamError
    assert err.status == 502 and err.type == "api_error" and err.retryable
    assert str(status) in err.message and "kaput" in err.message and err.provider == "p"


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_upstream_4xx_passed_through(status):
    err = upstream_status_error(
        status, "bad input", provider="p", param="messages", code="c", error_type="weird_error"
    )
    assert type(err) is UpstreamRejected
    assert (err.status, err.type, err.message, err.param, err.code, err.provider) == (
        status,
        "weird_error",
        "bad input",
        "messages",
        "c",
        "p",
    )
    assert not err.retryable


def test_upstream_4xx_default_type():
    assert upstream_status_error(400, "x", provider="p").type == "invalid_request_error"


# -- rendering --------------------------------------------------------------------------------

RENDERED = [
    InvalidRequest("bad", param="temperature", code="invalid_value"),
    ModelNotFound("no model", param="model"),
    RateLimited("slow", retry_after=1.2),
    UpstreamError("down"),
    NoProvider("none"),
    UpstreamRejected(422, "unprocessable"),
]


@pytest.mark.parametrize("err", RENDERED, ids=[type(e).__name__ for e in RENDERED])
def test_error_body_shape(err):
    body = json.loads(error_body(err))
    validate("ErrorResponse", body)
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"] == {"message": err.message, "type": err.type, "param": err.param, "code": err.code}


def test_error_body_never_leaks_internal_fields():
    body = json.loads(error_body(RateLimited("slow", retry_after=3, provider="secret-provider")))
    assert "secret-provider" not in json.dumps(body) and "retry_after" not in body["error"]


def test_error_event_is_one_sse_event():
    ev = error_event(UpstreamError("cut"))
    assert ev.startswith(b"data: ") and ev.endswith(b"\n\n") and ev.count(b"\n\n") == 1
    validate("ErrorResponse", json.loads(ev[6:]))


@pytest.mark.parametrize(
    ("err", "header"),
    [
        (RateLimited("a", retry_after=2.1), "3"),
        (RateLimited("a", retry_after=0.2), "1"),
        (RateLimited("a", retry_after=0.0), "1"),
        (RateLimited("a"), "1"),
        (Overloaded("b", retry_after=10.0), "10"),
        (NoProvider("c"), "1"),
    ],
)
def test_retry_after_header(err, header):
    resp = error_response(err)
    assert resp.status == err.status
    assert resp.headers["Retry-After"] == header
    assert resp.content_type == "application/json"
    validate("ErrorResponse", json.loads(resp.body))


@pytest.mark.parametrize(
    "err", [InvalidRequest("x"), UpstreamError("y"), GatewayTimeout("z", retry_after=5.0)]
)
def test_no_retry_after_elsewhere(err):
    resp = error_response(err, headers={"X-Request-Id": "req_1"})
    assert "Retry-After" not in resp.headers
    assert resp.headers["X-Request-Id"] == "req_1" and resp.status == err.status
