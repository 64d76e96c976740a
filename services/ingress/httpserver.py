"""aiohttp's connection handler, made to answer like the rest of the gateway.

Two things aiohttp's own :class:`RequestHandler` does not do, added here:

* Its parser errors (a malformed request line, a header too long, bytes that are
  not HTTP) are answered as text/plain; :class:`Handler` answers them in OpenAI's
  error shape, as every other error of the ingress.
* It waits forever for a request's headers, so a client sending them a byte at a
  time holds a connection (and a slot) forever. :class:`Handler` gives the headers of
  each request ``header_timeout`` seconds from their first byte, then answers 408 and
  closes. (The body's read timeout is the request handler's: see ``Ingress.proxy``.)

:func:`install` switches a set-up ``AppRunner``'s server to this handler. It relies on
aiohttp's ``RequestHandler`` internals (``_request_count``, ``handle_error``); a test
of each behaviour guards it across aiohttp upgrades.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from libs.common.errors import InternalError, InvalidRequest, PayloadTooLarge, RequestTimeout, SwitchmanError

from .render import error_body, error_response


def parser_error(status: int, message: str | None) -> SwitchmanError:
    text = (message or "").strip() or "the request is not valid HTTP"
    if status == 413:
        return PayloadTooLarge(f"The request is too large: {text}")
    if 400 <= status < 500:
        return InvalidRequest(f"The request could not be parsed as HTTP: {text}", code="invalid_http")
    return InternalError("The gateway failed to handle the request.")


def _raw_408(err: SwitchmanError) -> bytes:
    body = error_body(err)
    head = (
        "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class Handler(RequestHandler):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._answered = 0  # responses finished; fewer than _request_count: a request is in hand
        self._header_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:  # the headers of a request are complete
            self._stop_header_timer()
        elif self._header_timer is None and self._request_count == self._answered and data:
            # The first bytes of a new request: its headers have header_timeout to arrive.
            timeout = self._manager.header_timeout  # type: ignore[union-attr]
            self._header_timer = asyncio.get_running_loop().call_later(timeout, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._request_count != self._answered or self.transport is None:
            return
        timeout = self._manager.header_timeout  # type: ignore[union-attr]
        err = RequestTimeout(f"The request headers did not arrive within {timeout:g} s.")
        self.transport.write(_raw_408(err))
        self.force_close()  # closes the transport once the 408 is flushed

    async def finish_response(self, request: Any, resp: Any, start_time: float | None) -> Any:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._answered += 1
            if resp.status == 408:  # a stalled body: close now, do not linger reading it
                self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if bytes already went out
        resp = error_response(parser_error(status, message))
        resp.force_close()
        return resp


class _Server(web.Server):
    header_timeout = 30.0

    def __call__(self) -> RequestHandler:
        return Handler(self, loop=self._loop, **self._kwargs)


def install(runner: web.AppRunner, header_timeout: float) -> None:
    """Serve ``runner``'s connections with :class:`Handler` (call after ``runner.setup()``)."""
    server = runner.server
    assert server is not None and type(server) is web.Server, type(server)
    server.__class__ = _Server
    server.header_timeout = header_timeout  # type: ignore[attr-defined]
