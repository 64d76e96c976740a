"""Attempt events and usage records, sent off the request path.

Attempt events (for health) go out every ``INTERVAL_S`` in one batch on
``sw.events.attempt`` (core NATS: a lost batch costs a few health samples).

Usage records are money, so they are made durable before they are forgotten: one
JetStream message per record on ``sw.usage.<provider>`` (stream ``SW_USAGE``,
created or updated by :func:`libs.common.usage.ensure_usage_stream` before the first
publish), ``Nats-Msg-Id`` = the attempt id. A record stays pending until JetStream
acknowledged it; an unacknowledged one is re-sent with the same id, so JetStream
stores it once whether the first try was lost or only its ack. Each round publishes
up to ``ROUND`` records pipelined (``publish_async``: no task and no round trip per
record) and waits for their acks together. While NATS is unreachable the records
stay pending (at most ``usage.max_pending``; beyond that the oldest are dropped and
the drop is logged) and are re-sent after the reconnect. On stop, what is pending is
flushed, with acks, for up to ``STOP_FLUSH_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import NoStreamResponseError

from libs.common import contracts, subjects
from libs.common.config import UsageConfig
from libs.common.contracts import AttemptEvent, UsageRecord
from libs.common.subjects import H
from libs.common.usage import ensure_usage_stream

INTERVAL_S = 0.02
ROUND = 1000  # records in flight at once (nats-py allows 4000 pending async publishes)
ACK_TIMEOUT_S = 5.0
RETRY_MAX_S = 5.0
STOP_FLUSH_S = 5.0


class UsageNotAcked(Exception):
    pass


class Telemetry:
    def __init__(self, nc: NATS, cfg: UsageConfig, log: Any) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.cfg = cfg
        self.log = log
        self.events: list[AttemptEvent] = []
        # attempt id -> record, oldest first; removed only once JetStream acked it.
        self.pending: dict[str, UsageRecord] = {}
        self.dropped = 0
        self._stream_ready = False
        self._wake = asyncio.Event()
        self._usage_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._events_loop()), asyncio.create_task(self._usage_loop())]

    def record(self, event: AttemptEvent, usage: UsageRecord | None) -> None:
        self.events.append(event)
        self._wake.set()
        if usage is not None:
            self.keep(usage)

    def keep(self, usage: UsageRecord) -> None:
        if len(self.pending) >= self.cfg.max_pending:
            del self.pending[next(iter(self.pending))]
            self.dropped += 1
            if self.dropped % 1000 == 1:
                self.log.error(
                    "usage_records_dropped", dropped=self.dropped, max_pending=self.cfg.max_pending
                )
        self.pending[usage.attempt_id] = usage
        self._usage_wake.set()

    # -- attempt events ---------------------------------------------------------------
    async def _events_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(INTERVAL_S)
            self._wake.clear()
            try:
                await self.flush_events()
            except Exception as e:  # a disconnected bus: health misses a few samples
                self.log.warning("attempt_events_lost", error=repr(e))

    async def flush_events(self) -> None:
        if self.events:
            events, self.events = self.events, []
            await self.nc.publish(subjects.ATTEMPT_EVENTS, contracts.encode(events))

    # -- usage records ----------------------------------------------------------------
    async def _usage_loop(self) -> None:
        backoff = INTERVAL_S
        while True:
            await self._usage_wake.wait()
            await asyncio.sleep(backoff)
            self._usage_wake.clear()
            try:
                await self.flush_usage(ACK_TIMEOUT_S)
                backoff = INTERVAL_S
            except Exception as e:  # NATS unreachable or slow: the records wait, then go again
                backoff = min(RETRY_MAX_S, max(0.25, backoff * 2))
                self.log.warning("usage_publish_retry", pending=len(self.pending), error=repr(e))
            if self.pending:
                self._usage_wake.set()

    async def flush_usage(self, timeout: float) -> None:
        """One round: up to ``ROUND`` pending records published pipelined, acks awaited together."""
        if not self.pending:
            return
        if not self.nc.is_connected:
            raise UsageNotAcked("not connected to NATS")
        if not self._stream_ready:
            await ensure_usage_stream(self.js, self.cfg)
            self._stream_ready = True
        batch = list(itertools.islice(self.pending.values(), ROUND))
        sent: dict[asyncio.Future[Any], str] = {}
        try:
            for rec in batch:
                fut = await self.js.publish_async(
                    subjects.usage_subject(rec.provider),
                    contracts.encode(rec),
                    wait_stall=timeout,
                    headers={H.MSG_ID: rec.attempt_id},
                )
                sent[fut] = rec.attempt_id
        finally:
            await self._settle(sent, timeout)
        if len(sent) < len(batch) or self.pending.keys() & sent.values():
            raise UsageNotAcked(f"{len(self.pending)} usage records not acknowledged yet")

    async def _settle(self, sent: dict[asyncio.Future[Any], str], timeout: float) -> None:
        if not sent:
            return
        _, late = await asyncio.wait(sent, timeout=timeout)
        for fut in late:
            fut.cancel()  # frees its slot; the record is re-sent with the same id
        for fut, attempt_id in sent.items():
            if fut.cancelled():
                continue
            if fut.exception() is None:
                self.pending.pop(attempt_id, None)
            elif isinstance(fut.exception(), NoStreamResponseError):
                self._stream_ready = False  # the stream is gone (a new server): create it again

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        with contextlib.suppress(Exception):
            await self.flush_events()
        deadline = time.monotonic() + STOP_FLUSH_S
        while self.pending and (left := deadline - time.monotonic()) > 0:
            try:
                await self.flush_usage(min(left, ACK_TIMEOUT_S))
            except Exception as e:
                self.log.warning("usage_publish_retry", pending=len(self.pending), error=repr(e))
                await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        if self.pending:
            self.log.error("usage_records_unsent", count=len(self.pending))
