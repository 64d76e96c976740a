"""The ingress side of the request path on NATS.

One wildcard reply subscription per process (``_SW.<process>.*``) dispatches every
frame to its request by inbox token — no SUB/UNSUB per request. A request's frames
queue in a :class:`Call`; :meth:`Call.next` waits with a timer handle instead of a
task, so an idle request costs one future.

The bus also watches the workers serving its calls (their heartbeats): a call whose
worker went silent gets a ``WORKER_GONE`` pseudo-frame, and a call its live worker no
longer lists though its terminal frame never came gets ``FRAMES_LOST`` — so a dead
worker or a lost last frame ends the request within seconds, not at the idle timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from libs.common import contracts, subjects
from libs.common.contracts import Ack, Heartbeat
from libs.common.liveness import Liveness
from libs.common.subjects import H

# The service's one way to subscribe (:meth:`libs.common.service.Service.subscribe`).
Subscribe = Callable[..., Awaitable[Any]]

# Pseudo-frames, shorter than any frame header: a NATS status message (no responders),
# the call's worker went silent, its live worker ended it but the end never arrived.
NO_RESPONDERS = b"\x00"
WORKER_GONE = b"\x01"
FRAMES_LOST = b"\x02"
_ENDS = frozenset((contracts.RESULT, contracts.DONE, contracts.ERROR))
END_GRACE_S = 1.0


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class Call:
    """The frames of one in-flight request, in arrival order."""

    __slots__ = (
        "bus",
        "token",
        "inbox",
        "ack",
        "frames",
        "_waiter",
        "acked_at",
        "ended",
        "done_at",
    )

    def __init__(self, bus: Bus, token: str) -> None:
        self.bus = bus
        self.token = token
        self.inbox = bus.root + token
        self.frames: deque[bytes] = deque()
        self._waiter: asyncio.Future[bool] | None = None
        # The current attempt's ack, decoded once here (the relay reads it too): its worker
        # serves the call, and only that worker's heartbeats after ``ack.beat`` speak of it.
        self.ack: Ack | None = None
        self.acked_at = 0.0
        self.ended = False  # its terminal frame (or a pseudo-frame ending it) is queued
        self.done_at = 0.0  # when its worker's heartbeat stopped listing it

    def end(self, pseudo: bytes) -> None:
        self.ended = True
        self.push(pseudo)

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
        self.workers = Liveness(nc)

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
        elif data:
            kind = data[0]
            if kind == contracts.CHUNK:
                pass
            elif kind in _ENDS:
                call.ended = True
            elif kind == contracts.ACK:
                with contextlib.suppress(msgspec.DecodeError):
                    call.ack = contracts.ack_decoder.decode(data[contracts.HEADER_SIZE :])
                    call.acked_at = time.monotonic()
            elif kind == contracts.MOVED:
                call.ack = None  # the next candidate's worker acks in its turn
                call.done_at = 0.0
        call.push(data)

    # -- liveness of the workers serving the calls ----------------------------------------
    def on_heartbeat(self, hb: Heartbeat) -> None:
        self.workers.saw(hb.worker)
        active: set[str] | None = None
        for call in self.calls.values():
            ack = call.ack
            if (
                ack is not None
                and ack.worker == hb.worker
                and hb.beat > ack.beat
                and not call.ended
                and not call.done_at
            ):
                active = set(hb.active) if active is None else active
                if call.inbox not in active:  # ended at the worker: its end must be on its way
                    call.done_at = time.monotonic()

    def check(self) -> None:
        """End the calls whose worker went silent (see :class:`~libs.common.liveness.Liveness`),
        and those whose worker ended them ``END_GRACE_S`` ago with no end arriving.

        The grace is there because the heartbeat and the inbox are two subscriptions,
        each dispatched by its own task: a heartbeat may be handled before the end frame
        that came in ahead of it.
        """
        now = self.workers.tick()
        for call in self.calls.values():
            if call.ended or call.ack is None:
                continue
            if call.done_at and now - call.done_at > END_GRACE_S:
                call.end(FRAMES_LOST)
            elif self.workers.gone(call.ack.worker, call.acked_at, now):
                call.end(WORKER_GONE)

    def open(self) -> Call:
        token = format(next(self._ids), "x")
        call = Call(self, token)
        self.calls[token] = call
        return call

    def close(self, call: Call) -> None:
        self.calls.pop(call.token, None)

    async def send(self, call: Call, subject: str, body: bytes, headers: dict[str, str] | None) -> None:
        await self.nc.publish(subject, body, reply=call.inbox, headers=headers)
