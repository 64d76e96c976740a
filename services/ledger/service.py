"""Ledger: will consume usage records into SQL (costs, budgets, analytics).

For now it makes sure the JetStream stream ``SW_USAGE`` (subjects ``sw.usage.>``,
deduplicated by ``Nats-Msg-Id`` = attempt id) exists, so every usage record the
workers publish is kept until the ledger's consumer writes it — and it binds the
durable consumer ``ledger`` that will read it. Writing SQL and publishing spend to
KV ``sw_spend`` belong to the ledger work; nothing is acknowledged (so nothing is
lost) until then.
"""

from __future__ import annotations

import contextlib

from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, StreamConfig
from nats.js.errors import BadRequestError
from nats.js.errors import Error as JSError

from libs.common import subjects
from libs.common.config import Config
from libs.common.service import Service

DUPLICATE_WINDOW_S = 24 * 3600.0


class Ledger(Service):
    name = "ledger"

    def __init__(self, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg

    async def start(self, nc: NATS) -> None:
        await super().start(nc)
        js = nc.jetstream()
        config = StreamConfig(
            name=subjects.USAGE_STREAM, subjects=[subjects.USAGE_ALL], duplicate_window=DUPLICATE_WINDOW_S
        )
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
        except (JSError, TimeoutError) as e:
            self.log.error("usage_stream_unavailable", error=repr(e))
            return
        with contextlib.suppress(JSError, TimeoutError):
            await js.add_consumer(subjects.USAGE_STREAM, ConsumerConfig(durable_name=subjects.LEDGER_DURABLE))
        info = await js.stream_info(subjects.USAGE_STREAM)
        self.log.info("usage_stream_ready", messages=info.state.messages)
