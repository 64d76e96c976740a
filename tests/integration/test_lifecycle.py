"""The one drain-based stop of the Service base, on a real nats-server."""

from __future__ import annotations

import asyncio

import nats

from libs.common.service import Service
from tests.gateway import eventually


class Recorder(Service):
    """Intake messages spawn work that waits for a control message to finish."""

    name = "recorder"

    def __init__(self) -> None:
        super().__init__(drain_timeout_s=5.0)
        self.taken: list[bytes] = []
        self.finished: list[bytes] = []
        self.release = asyncio.Event()
        self.closed_with_subs = -1

    async def start(self, nc) -> None:
        await super().start(nc)
        await self.subscribe("t.work", self.on_work, queue="q", intake=True)
        await self.subscribe("t.control", self.on_control)

    async def on_work(self, msg) -> None:
        await asyncio.sleep(0.005)  # messages queue up behind a slow handler
        self.taken.append(msg.data)
        self.tasks.spawn(self.work(msg.data))

    async def work(self, data: bytes) -> None:
        await self.release.wait()
        self.finished.append(data)

    async def on_control(self, msg) -> None:
        self.release.set()

    async def close(self) -> None:
        self.closed_with_subs = len(self._subs)


async def test_stop_processes_queued_messages_and_keeps_control_until_work_is_done(nats_server):
    nc = await nats.connect(nats_server.url)
    pub = await nats.connect(nats_server.url)
    svc = Recorder()
    try:
        await svc.start(nc)
        await nc.flush()  # the subscriptions are known to the server
        sent = [str(i).encode() for i in range(50)]
        for data in sent:
            await pub.publish("t.work", data)
        await pub.flush()
        await eventually(lambda: svc.taken, 5, "the first message taken")
        stopping = asyncio.create_task(svc.stop())
        await asyncio.sleep(0.3)  # intake drained by now: every queued message was taken, not dropped
        assert svc.taken == sent
        assert not stopping.done()  # the work in flight waits for its control message
        await pub.publish("t.work", b"late")  # no longer taken
        await pub.publish("t.control", b"")  # still delivered: the control subscription lives
        await asyncio.wait_for(stopping, 5)
        assert svc.finished == sent
        assert b"late" not in svc.taken
        assert svc.closed_with_subs == 0  # resources closed after every subscription drained
    finally:
        await pub.close()
        await nc.close()
