"""The ingress side of the request path on NATS.

One wildcard reply subscription per process (``_SW.<process>.*``) dispatches every
frame to its request by inbox token — no SUB/UNSUB per request. A request's frames
queue in a :class:`Call`; :meth:`Call.next` waits with a timer handle instead of a
task, so an idle request costs one future.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from libs.common import subjects
from libs.common.subjects import H

# The service's one way to subscribe (:meth:`libs.common.service.Service.subscribe`).
Subscribe = Callable[..., Awaitable[Any]]

# A NATS status message (no responders) arrives as this pseudo-frame.
NO_RESPONDERS = b"\x00"


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class Call:
    """The frames of one in-flight request, in arrival order."""

    __slots__ = ("bus", "token", "inbox", "frames", "_waiter")

    def __init__(self, bus: Bus, token: str) -> None:
        self.bus = bus
        self.token = token
        self.inbox = bus.root + token
        self.frames: deque[bytes] = deque()
        self._waiter: asyncio.Future[bool] | None = None

    def push(self, data: bytes) -> None:
        self.frames.append(data)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(True)

    async def next(self, timeout: float) -> bytes | None:
        """The next frame, or None when ``timeout`` seconds pass without one."""
        if self.frames:
            return self.frames.popleft()
        loop = self.bus.loop
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiter = fut
        handle = loop.call_later(timeout, _expire, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self._waiter = None
        return self.frames.popleft() if self.frames else None

    async def cancel_upstream(self) -> None:
        """Ask whichever worker holds this request to abandon it (client gone, timeout)."""
        await self.bus.nc.publish(subjects.CANCEL, self.inbox.encode())


class Bus:
    def __init__(self, nc: NATS, process: str) -> None:
        self.nc = nc
        self.root = subjects.inbox_root(process) + "."
        self._prefix_len = len(self.root)
        self.calls: dict[str, Call] = {}
        self._ids = itertools.count(1)
        self.loop = asyncio.get_running_loop()
        self.process = process

    async def start(self, subscribe: Subscribe) -> None:
        """Subscribe the reply inbox through the service's ``subscribe``: the service
        drains it on stop, after its in-flight requests are finished."""
        await subscribe(
            subjects.inbox_wildcard(self.process),
            self._on_frame,
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=512 * 1024 * 1024,
        )

    async def _on_frame(self, msg: Msg) -> None:
        call = self.calls.get(msg.subject[self._prefix_len :])
        if call is None:
            return
        data = msg.data
        if not data and msg.headers and msg.headers.get(H.STATUS) == "503":
            data = NO_RESPONDERS
        call.push(data)

    def open(self) -> Call:
        token = format(next(self._ids), "x")
        call = Call(self, token)
        self.calls[token] = call
        return call

    def close(self, call: Call) -> None:
        self.calls.pop(call.token, None)

    async def send(self, call: Call, subject: str, body: bytes, headers: dict[str, str] | None) -> None:
        await self.nc.publish(subject, body, reply=call.inbox, headers=headers)
