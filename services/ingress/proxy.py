"""Turning a routed request's inbox frames into one HTTP response or an SSE stream.

Waits for the worker's ack (``ack_timeout_s``; a NATS no-responders status fails at
once with 503), then for frames with the idle timeout (workers send keep-alives
while the upstream is silent, so the idle timeout only fires for a dead worker).
Before the first byte every failure is a proper HTTP error; after it, the stream
ends with an error event and no ``[DONE]`` — never a clean finish. A client that
goes away cancels the upstream call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from libs.common import contracts
from libs.common.errors import (
    BusFramesLost,
    GatewayTimeout,
    NoProvider,
    SwitchmanError,
    UpstreamError,
    WorkerGone,
    from_frame,
)

from .bus import NO_RESPONDERS, WORKER_GONE, Call
from .render import error_event

_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class Route:
    """What the response headers say about how the request was served."""

    request_id: str
    provider: str = ""
    attempts: int = 0
    reason: str = ""
    plan_size: int = 0
    # For the access log: a stream's Done frame (token counts) and how a failed request failed.
    usage: bytes = b""
    error: str = ""

    def headers(self, failed: bool = False) -> dict[str, str]:
        h = {"x-request-id": self.request_id}
        if self.provider:
            h["x-switchman-provider"] = self.provider
            h["x-switchman-attempts"] = str(self.attempts)
            h["x-switchman-route-reason"] = self.reason
        if failed and self.attempts > 1 and self.attempts >= self.plan_size:
            # The gateway already tried every candidate: the SDK should not retry again.
            h["x-should-retry"] = "false"
        return h


class Relay:
    def __init__(
        self, call: Call, route: Route, ack_timeout: float, idle_timeout: float, deadline: float
    ) -> None:
        self.call = call
        self.route = route
        self.ack_timeout = ack_timeout
        self.idle_timeout = idle_timeout
        self.deadline = deadline  # monotonic
        self.acked = False
        self.attempt = 0  # the attempt whose frames count; its next frame's sequence number:
        self.seq = 0
        self.parts: list[bytes] = []  # pieces of a payload larger than one message

    async def frame(self) -> tuple[int, bytes]:
        """The next data-bearing frame (kind, payload); handles A/M/K/P frames itself."""
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise GatewayTimeout("the request exceeded its deadline")
            wait = self.idle_timeout if self.acked else self.ack_timeout
            data = await self.call.next(min(wait, remaining))
            if data is None:
                if time.monotonic() >= self.deadline:
                    raise GatewayTimeout("the request exceeded its deadline")
                if not self.acked:
                    raise NoProvider("no worker acknowledged the request in time")
                raise GatewayTimeout(
                    f"the worker serving provider {self.route.provider!r} went silent for {self.idle_timeout:g}s"
                )
            if len(data) < contracts.HEADER_SIZE:
                raise self._pseudo(data)
            kind, attempt, seq = contracts.parse_header(data)
            if not self._in_sequence(attempt, seq):
                continue
            if kind == contracts.CHUNK or kind == contracts.RESULT:
                return kind, self._whole(data)
            if kind == contracts.ACK:
                self._ack(attempt, data)
            elif kind == contracts.MOVED:
                self.acked = False  # the next candidate has to ack in its turn
            elif kind == contracts.PART:
                self.parts.append(data[contracts.HEADER_SIZE :])
            elif kind != contracts.KEEPALIVE:
                return kind, data[contracts.HEADER_SIZE :]

    def _pseudo(self, data: bytes) -> SwitchmanError:
        if data == NO_RESPONDERS:
            what = "worker" if self.route.attempts or self.acked else "router or worker"
            return NoProvider(f"no {what} is serving this request right now")
        if data == WORKER_GONE:
            return WorkerGone(f"the worker serving provider {self.route.provider!r} stopped responding")
        return BusFramesLost("the end of this request's answer was lost on the bus")

    def _in_sequence(self, attempt: int, seq: int) -> bool:
        """Is this frame the next one? False for a stale attempt's; BusFramesLost for a gap."""
        if attempt == self.attempt and seq == self.seq:
            self.seq = seq + 1
            return True
        if attempt > self.attempt and seq == 0 and not self.parts:  # the next attempt begins
            self.attempt, self.seq = attempt, 1
            return True
        if attempt < self.attempt:  # a late keep-alive of an attempt that handed over
            return False
        raise BusFramesLost(
            f"frames of this request were lost on the bus (attempt {attempt}: expected frame "
            f"{self.seq if attempt == self.attempt else 0}, got {seq})"
        )

    def _whole(self, data: bytes) -> bytes:
        if not self.parts:
            return data[contracts.HEADER_SIZE :]
        self.parts.append(data[contracts.HEADER_SIZE :])
        whole = b"".join(self.parts)
        self.parts = []
        return whole

    def _ack(self, attempt: int, data: bytes) -> None:
        ack = self.call.ack  # the bus decoded it as it arrived
        if ack is None or ack.attempt != attempt:  # a later attempt's ack came in meanwhile
            ack = contracts.ack_decoder.decode(data[contracts.HEADER_SIZE :])
        self.acked = True
        r = self.route
        r.provider, r.attempts, r.reason, r.plan_size = ack.provider, ack.attempt, ack.reason, ack.plan_size

    async def response(self) -> web.Response:
        kind, payload = await self.frame()
        if kind == contracts.RESULT:
            return web.Response(body=payload, content_type="application/json", headers=self.route.headers())
        raise _terminal(kind, payload)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        kind, payload = await self.frame()
        if kind != contracts.CHUNK:
            raise _terminal(kind, payload)
        resp = web.StreamResponse(headers={**_SSE_HEADERS, **self.route.headers()})
        await resp.prepare(request)
        out: list[bytes] = []
        _frame_sse(out, payload)
        frames = self.call.frames
        while True:
            # Every chunk already queued and in sequence goes out in one write.
            while frames and not self.parts and len(frames[0]) >= contracts.HEADER_SIZE:
                kind, attempt, seq = contracts.parse_header(frames[0])
                if kind != contracts.CHUNK or attempt != self.attempt or seq != self.seq:
                    break
                self.seq = seq + 1
                _frame_sse(out, frames.popleft()[contracts.HEADER_SIZE :])
            await resp.write(b"".join(out))
            out = []
            try:
                kind, payload = await self.frame()
            except SwitchmanError as e:
                await self._end_with_error(resp, e)
                return resp
            if kind == contracts.CHUNK:
                _frame_sse(out, payload)
            elif kind == contracts.DONE:
                self.route.usage = payload
                await resp.write(_DONE)
                await resp.write_eof()
                return resp
            else:
                await self._end_with_error(resp, _terminal(kind, payload))
                return resp

    async def _end_with_error(self, resp: web.StreamResponse, err: SwitchmanError) -> None:
        self.route.error = err.code or err.type
        await self.call.cancel_upstream()
        await resp.write(error_event(err))
        await resp.write_eof()


def _frame_sse(out: list[bytes], payload: bytes) -> None:
    """SSE events for one ``C`` frame, which holds one or more newline-separated chunks."""
    if b"\n" not in payload:
        out += (b"data: ", payload, b"\n\n")
    else:
        for chunk in payload.split(b"\n"):
            out += (b"data: ", chunk, b"\n\n")


def _terminal(kind: int, payload: bytes) -> SwitchmanError:
    if kind == contracts.ERROR:
        return from_frame(contracts.error_decoder.decode(payload))
    if kind == contracts.DONE:
        return UpstreamError("the provider ended the stream without any output")
    return UpstreamError(f"unexpected frame {chr(kind)!r} from the worker")
