"""The one error hierarchy.

Every class carries its HTTP status and OpenAI error ``type``. Errors cross the bus
as data (:class:`ErrorFrame`); exactly one place, the ingress, renders the OpenAI
error body. Provider adapters raise these, mapped from vendor status codes and
structured fields next to the adapter.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec


class ErrorFrame(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An error as it crosses the bus."""

    status: int
    type: str
    message: str
    param: str | None = None
    code: str | None = None
    retry_after: float | None = None
    provider: str | None = None
    retryable: bool = False


class SwitchmanError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    default_code: ClassVar[str | None] = None
    # May the request move to the next candidate of its plan (before the first byte)?
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        provider: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after = retry_after
        self.provider = provider

    def frame(self) -> ErrorFrame:
        return ErrorFrame(
            status=self.status,
            type=self.type,
            message=self.message,
            param=self.param,
            code=self.code,
            retry_after=self.retry_after,
            provider=self.provider,
            retryable=self.retryable,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.message!r})"


class InvalidRequest(SwitchmanError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(SwitchmanError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(SwitchmanError):
    status = 403
    type = "invalid_request_error"
    default_code = "permission_denied"


class NotFound(SwitchmanError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class MethodNotAllowed(SwitchmanError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class RequestTimeout(SwitchmanError):
    """The client took too long to send its request (headers or body)."""

    status = 408
    type = "invalid_request_error"
    default_code = "request_timeout"


class PayloadTooLarge(SwitchmanError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimited(SwitchmanError):
    """A 429, ours or the upstream's (then it may move to the next candidate)."""

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    retryable = True


class UpstreamRejected(SwitchmanError):
    """A 4xx the upstream returned for the client's request; passed through as is."""

    type = "invalid_request_error"

    def __init__(self, status: int, message: str, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.status = status  # type: ignore[misc]


class InternalError(SwitchmanError):
    status = 500
    type = "api_error"


class UpstreamError(SwitchmanError):
    """The upstream failed (5xx, connection error, broken stream)."""

    status = 502
    type = "api_error"
    retryable = True


class UpstreamProtocolError(UpstreamError):
    """The upstream broke its wire protocol (an unending SSE event, a data line that is not JSON)."""

    default_code = "upstream_protocol_error"


class BusFramesLost(SwitchmanError):
    """Frames of a request were lost or reordered on the bus (a NATS blip): the answer is damaged."""

    status = 502
    type = "api_error"
    default_code = "bus_frames_lost"


class WorkerGone(SwitchmanError):
    """The worker serving a request stopped responding (its process died or hung)."""

    status = 502
    type = "api_error"
    default_code = "worker_gone"


class UpstreamAuthError(UpstreamError):
    """The provider refused our credentials: misconfigured, never the client's 401."""

    default_code = "upstream_authentication_error"


class NoProvider(SwitchmanError):
    status = 503
    type = "service_unavailable_error"
    default_code = "no_provider_available"


class Overloaded(SwitchmanError):
    status = 503
    type = "service_unavailable_error"
    default_code = "server_is_overloaded"
    retryable = True


class GatewayTimeout(SwitchmanError):
    status = 504
    type = "api_error"
    default_code = "timeout"
    retryable = True


_BY_STATUS: dict[int, type[SwitchmanError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    413: PayloadTooLarge,
    429: RateLimited,
    500: InternalError,
    502: UpstreamError,
    503: NoProvider,
    504: GatewayTimeout,
}


def from_frame(frame: ErrorFrame) -> SwitchmanError:
    """Rebuild an exception from a bus frame (the status and type survive as sent)."""
    cls = _BY_STATUS.get(frame.status)
    if cls is None or cls.type != frame.type:
        err: SwitchmanError = UpstreamRejected(frame.status, frame.message)
        err.type = frame.type  # type: ignore[misc]
    else:
        err = cls(frame.message)
    err.param = frame.param
    err.code = frame.code
    err.retry_after = frame.retry_after
    err.provider = frame.provider
    return err


def upstream_status_error(
    status: int,
    message: str,
    *,
    provider: str,
    param: str | None = None,
    code: str | None = None,
    retry_after: float | None = None,
    error_type: str | None = None,
) -> SwitchmanError:
    """The common mapping of an upstream HTTP status to our hierarchy.

    Adapters call this after they have pulled message/param/code out of the vendor's
    structured error body; vendor-specific statuses (Anthropic 529, Gemini reasons)
    are decided in the adapter before falling back to this.
    """
    kw = {"param": param, "code": code, "retry_after": retry_after, "provider": provider}
    if status in (401, 403):
        return UpstreamAuthError(
            f"provider {provider!r} rejected the gateway's credentials ({status}): {message}",
            provider=provider,
        )
    if status == 429:
        return RateLimited(message, **kw)  # type: ignore[arg-type]
    if status == 408 or status == 504:
        return GatewayTimeout(f"provider {provider!r} timed out: {message}", provider=provider)
    if status in (503, 529):
        return Overloaded(message, **kw)  # type: ignore[arg-type]
    if status >= 500:
        return UpstreamError(f"provider {provider!r} failed ({status}): {message}", **kw)  # type: ignore[arg-type]
    err = UpstreamRejected(status, message, **kw)
    if error_type:
        err.type = error_type  # type: ignore[misc]
    return err
