"""Ledger: will consume usage records into SQL (costs, budgets, analytics).

For now it makes sure the JetStream stream ``SW_USAGE`` exists with the configured
limits (:func:`libs.common.usage.ensure_usage_stream`, shared with the workers:
subjects ``sw.usage.<provider>``, one record a message, deduplicated by
``Nats-Msg-Id`` = attempt id), so every usage record the workers publish is kept
until the ledger's consumer writes it — and it binds the durable consumer ``ledger``
that will read it. Writing SQL and publishing spend to KV ``sw_spend`` belong to the
ledger work; nothing is acknowledged (so nothing is lost) until then.
"""

from __future__ import annotations

import contextlib

from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig
from nats.js.errors import Error as JSError

from libs.common import subjects
from libs.common.config import Config
from libs.common.service import Service
from libs.common.usage import ensure_usage_stream


class Ledger(Service):
    name = "ledger"

    def __init__(self, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Config()

    async def start(self, nc: NATS) -> None:
        await super().start(nc)
        js = nc.jetstream()
        try:
            info = await ensure_usage_stream(js, self.cfg.usage)
        except (JSError, TimeoutError) as e:
            self.log.error("usage_stream_unavailable", error=repr(e))
            return
        with contextlib.suppress(JSError, TimeoutError):
            await js.add_consumer(subjects.USAGE_STREAM, ConsumerConfig(durable_name=subjects.LEDGER_DURABLE))
        self.log.info("usage_stream_ready", messages=info.state.messages)
