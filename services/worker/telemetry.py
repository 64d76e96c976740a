"""Attempt events and usage records, sent off the request path.

Attempt events (for health) go out every ``INTERVAL_S`` in one batch on
``sw.events.attempt`` (core NATS: a lost batch costs a few health samples).

Usage records are money, so they are made durable before they are forgotten: one
JetStream message per record on ``sw.usage.<provider>`` (stream ``SW_USAGE``,
created or updated by :func:`libs.common.usage.ensure_usage_stream` before the first
publish), ``Nats-Msg-Id`` = the attempt id. A record stays pending until JetStream
acknowledged it; an unacknowledged one is re-sent with the same id, so JetStream
stores it once whether the first try was lost or only its ack. Each round publishes
up to ``ROUND`` records pipelined (one socket write, no round trip, future or task
per record: acks come back on one inbox, matched by subject) and waits for their
acks together. While NATS is unreachable the records
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
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from libs.common import contracts, subjects
from libs.common.config import UsageConfig
from libs.common.contracts import AttemptEvent, UsageRecord
from libs.common.subjects import H
from libs.common.usage import ensure_usage_stream

INTERVAL_S = 0.02
ROUND = 1000  # records in flight at once
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
        self._ack_sub: Subscription | None = None
        self._ack_prefix = ""
        self._unacked: set[str] = set()
        self._acked = asyncio.Event()
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
        """One round: up to ``ROUND`` pending records published at once, acks awaited together."""
        if not self.pending:
            return
        if not self.nc.is_connected:
            raise UsageNotAcked("not connected to NATS")
        if not self._stream_ready:
            await ensure_usage_stream(self.js, self.cfg)
            self._stream_ready = True
        prefix = await self._ack_inbox()
        batch = list(itertools.islice(self.pending.items(), ROUND))
        self._unacked = {attempt_id for attempt_id, _ in batch}
        self._acked.clear()
        for attempt_id, rec in batch:  # no await yields here: one socket write for the round
            await self.nc.publish(
                subjects.usage_subject(rec.provider),
                contracts.encode(rec),
                reply=prefix + attempt_id,
                headers={H.MSG_ID: attempt_id},
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._acked.wait()
        if self._unacked:
            raise UsageNotAcked(f"{len(self._unacked)} of {len(batch)} usage records not acknowledged")

    async def _ack_inbox(self) -> str:
        """This worker's inbox for JetStream acks, ``<inbox>.<attempt id>``.

        Acks are matched by subject, with no future or task per record (nats-py's
        ``publish_async`` costs several times more per record). Like nats-py's own
        request inbox, it belongs to the connection, not to the service's subscriptions:
        it must outlive their drain, for the flush on stop.
        """
        if self._ack_sub is None:
            prefix = self.nc.new_inbox() + "."
            self._ack_sub = await self.nc.subscribe(prefix + "*", cb=self._on_ack)
            self._ack_prefix = prefix
        return self._ack_prefix

    async def _on_ack(self, msg: Msg) -> None:
        attempt_id = msg.subject[len(self._ack_prefix) :]
        data = msg.data
        if not data:  # a status: 503 = no stream listens (a new server): create it again
            if msg.headers and msg.headers.get(H.STATUS) == "503":
                self._stream_ready = False
            return
        if b'"error"' in data:  # not stored: the record stays pending and goes again
            self.log.warning(
                "usage_publish_rejected", attempt_id=attempt_id, error=data[:200].decode(errors="replace")
            )
            return
        self.pending.pop(attempt_id, None)  # stored (or a duplicate of a stored one)
        unacked = self._unacked
        if attempt_id in unacked:
            unacked.discard(attempt_id)
            if not unacked:
                self._acked.set()

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
        if self._ack_sub is not None:
            with contextlib.suppress(Exception):
                await self._ack_sub.unsubscribe()
