"""Attempt events and usage records, sent in small batches off the request path.

On this kind of machine a socket write costs more than everything else a publish
does, so a worker collects what its attempts report and publishes every
``INTERVAL_S`` one batch of attempt events (``sw.events.attempt``) and one batch of
usage records (``sw.usage.<worker>``, JetStream ``SW_USAGE``, ``Nats-Msg-Id`` =
``<worker>-<batch sequence>`` so a re-sent batch is stored once; the ledger
de-duplicates records by attempt id). Whatever is pending is flushed on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from nats.aio.client import Client as NATS

from libs.common import contracts, subjects
from libs.common.contracts import AttemptEvent, UsageRecord
from libs.common.subjects import H

INTERVAL_S = 0.02


class Telemetry:
    def __init__(self, nc: NATS, worker: str, log: Any) -> None:
        self.nc = nc
        self.worker = worker
        self.log = log
        self.events: list[AttemptEvent] = []
        self.usage: list[UsageRecord] = []
        self._seq = itertools.count(1)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    def record(self, event: AttemptEvent, usage: UsageRecord | None) -> None:
        self.events.append(event)
        if usage is not None:
            self.usage.append(usage)
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(INTERVAL_S)
            self._wake.clear()
            try:
                await self.flush()
            except Exception as e:  # a disconnected bus: the batch waits for the next round
                self.log.warning("telemetry_flush_failed", error=repr(e))

    async def flush(self) -> None:
        if self.usage:
            batch, self.usage = self.usage, []
            try:
                await self.nc.publish(
                    subjects.usage_subject(self.worker),
                    contracts.encode(batch),
                    headers={H.MSG_ID: f"{self.worker}-{next(self._seq)}"},
                )
            except Exception:
                self.usage[:0] = batch  # keep them for the next attempt
                raise
        if self.events:
            events, self.events = self.events, []
            await self.nc.publish(subjects.ATTEMPT_EVENTS, contracts.encode(events))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()
