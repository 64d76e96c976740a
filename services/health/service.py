"""Health: will merge active probes and passive attempt stats into KV ``sw_health``.

For now it consumes ``sw.events.attempt`` (queue group ``health``) and keeps per
provider counters in memory, and creates the ``sw_health`` KV bucket the router and
dashboard will watch. The EWMA latency, error rate and circuit state belong to the
health-and-routing work; nothing here pretends to be it.
"""

from __future__ import annotations

import contextlib
from collections import Counter

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import Error as JSError

from libs.common import contracts, subjects
from libs.common.config import Config
from libs.common.service import Service


class Health(Service):
    name = "health"

    def __init__(self, cfg: Config | None = None) -> None:
        super().__init__()
        self.attempts: Counter[tuple[str, int]] = Counter()

    async def start(self, nc: NATS) -> None:
        await super().start(nc)
        with contextlib.suppress(JSError, TimeoutError):
            await nc.jetstream().create_key_value(bucket=subjects.KV_HEALTH, history=1)
        await self.subscribe(
            subjects.ATTEMPT_EVENTS, self.on_attempt, queue=subjects.HEALTH_QUEUE, intake=True
        )

    async def on_attempt(self, msg: Msg) -> None:
        for ev in contracts.attempt_batch_decoder.decode(msg.data):
            self.attempts[(ev.provider, ev.status)] += 1
