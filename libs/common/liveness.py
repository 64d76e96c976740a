"""Which peer processes are alive, as far as this process can hear them.

Workers and ingresses announce themselves every ``BEAT_S`` (workers in their
heartbeat, ingresses with a :class:`~libs.common.contracts.Presence`); a peer silent
for ``SILENT_S`` while this process was connected to NATS is gone. Time spent
disconnected (or just reconnected) does not count against a peer: after a bus outage
every peer gets ``SILENT_S`` again to be heard, so an outage alone never condemns the
requests it merely delayed.

The ingress uses this to end a request whose worker died (within ``SILENT_S`` plus
one check, not the idle timeout); the worker to stop the upstream call of a request
whose ingress died (no tokens paid for nobody).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

BEAT_S = 0.5
SILENT_S = 2.0
CHECK_S = 0.25
STALL_S = 1.0  # a check round this late means this process's own loop was blocked
FORGET_S = 60.0  # a peer silent this long is dropped from the table (processes come and go)


class Liveness:
    def __init__(self, nc: Any, silent_s: float = SILENT_S) -> None:
        self.nc = nc
        self.silent_s = silent_s
        self.last: dict[str, float] = {}
        self._heard_since = self._ticked = self._pruned = time.monotonic()  # since when it could hear
        self._reconnects = self._count()

    def _count(self) -> int:
        stats = getattr(self.nc, "stats", None) or {}
        return int(stats.get("reconnects", 0))

    def saw(self, peer: str) -> None:
        self.last[peer] = time.monotonic()

    def tick(self) -> float:
        """Call every ``CHECK_S``, before a round of :meth:`gone` checks; returns now.

        This process was deaf — disconnected, just reconnected, or its own event loop
        stalled (the heartbeats that came meanwhile are still queued) — until now: no
        peer's silence counts before it.
        """
        now = time.monotonic()
        count = self._count()
        stalled = now - self._ticked > STALL_S
        self._ticked = now
        if stalled or not self.nc.is_connected or count != self._reconnects:
            self._reconnects = count
            self._heard_since = now
        if now - self._pruned > FORGET_S:  # every peer ever seen would otherwise stay
            self._pruned = now
            self.last = {p: t for p, t in self.last.items() if now - t < FORGET_S}
        return now

    def gone(self, peer: str, known_since: float, now: float) -> bool:
        """Has ``peer`` (expected alive since ``known_since``) been silent for too long?"""
        heard = max(self.last.get(peer, known_since), known_since, self._heard_since)
        return now - heard > self.silent_s


async def keep(announce: Callable[[], Awaitable[None]], check: Callable[[], None]) -> None:
    """A process's liveness loop: ``announce`` itself every BEAT_S (a failed send waits for
    the next round), ``check`` its peers every CHECK_S (``check`` calls :meth:`Liveness.tick`)."""
    announced_at = 0.0
    while True:
        await asyncio.sleep(CHECK_S)
        check()
        now = time.monotonic()
        if now - announced_at >= BEAT_S:
            announced_at = now
            with contextlib.suppress(Exception):
                await announce()
