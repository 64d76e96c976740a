"""Router: picks the provider(s) for each request.

Consumes ``sw.route.<op>`` (queue group ``router``): decodes only the routing
envelope, decides from in-memory state (:mod:`.policy`) and forwards the body bytes
untouched to ``sw.exec.<provider>`` with the plan, attempt and reason in the
envelope, keeping the client's reply inbox. Errors (unknown model, no provider) go to the inbox as an
``E`` frame (attempt 0). Keeps its state from worker heartbeats (``sw.workers.heartbeat``;
a ``draining`` worker is not counted on) and
catalogs (``sw.catalog.update``); asks for catalogs at start (``sw.catalog.get``).
"""

from __future__ import annotations

import asyncio
import random
import time

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from libs.common import contracts, registry, subjects, tracing
from libs.common.config import Config, Price, environ
from libs.common.errors import SwitchmanError
from libs.common.service import Service

from .policy import RouterState, decide

# How long a starting router listens for worker catalogs before taking requests.
STARTUP_LISTEN_S = 0.2


class Router(Service):
    name = "router"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg.limits.idle_timeout_s)
        self.cfg = cfg
        provs = registry.providers(cfg, environ())
        self.configured = {r.name for r in cfg.models}
        self.state = RouterState(routes=registry.routes(cfg, provs))
        for p in provs:
            for m, price in p.price.items():
                self.state.prices[(p.id, m)] = price
        self.rng = random.Random()

    async def start(self, nc: NATS) -> None:
        await super().start(nc)
        await self.subscribe(subjects.WORKER_HEARTBEAT, self.on_heartbeat)
        await self.subscribe(subjects.CATALOG_UPDATE, self.on_catalog)
        # Learn which workers are up before taking requests (they answer within ms).
        await nc.publish(subjects.CATALOG_REQUEST, b"")
        await nc.flush()
        await asyncio.sleep(STARTUP_LISTEN_S)
        # Drained first on stop: the queued requests are routed, the group's peers get the rest.
        await self.subscribe(subjects.ROUTE_ALL, self.on_request, queue=subjects.ROUTER_QUEUE, intake=True)

    async def on_heartbeat(self, msg: Msg) -> None:
        hb = contracts.heartbeat_decoder.decode(msg.data)
        if hb.draining:  # finishing its streams, taking no new work
            return
        now = time.monotonic()
        for p in hb.providers:
            self.state.seen[p] = now

    async def on_catalog(self, msg: Msg) -> None:
        cat = contracts.catalog_decoder.decode(msg.data)
        registry.add_catalog(self.state.routes, cat.models, self.configured)
        # Liveness comes from heartbeats (a worker sends one with every catalog).
        for m in cat.models:
            if m.input_per_mtok is not None:
                self.state.prices.setdefault(
                    (m.provider, m.id),
                    Price(input_per_mtok=m.input_per_mtok, output_per_mtok=m.output_per_mtok or 0.0),
                )

    async def on_request(self, msg: Msg) -> None:
        nc = self.nc
        assert nc is not None
        try:
            env, _ = contracts.unpack(msg.data)
        except ValueError as e:
            self.log.warning("bad_route_message", error=str(e))
            return
        with tracing.span("router.decide", tracing.CONSUMER, msg.headers, **{"messaging.system": "nats"}):
            try:
                plan = decide(self.state, env.model, env.strategy, time.monotonic(), self.rng)
            except SwitchmanError as e:
                if msg.reply:
                    # Attempt 0: no worker has the request yet.
                    await nc.publish(
                        msg.reply, contracts.frame(contracts.ERROR, 0, 0, contracts.encode(e.frame()))
                    )
                return
            routed = msgspec.structs.replace(env, plan=plan.candidates, attempt=1, reason=plan.reason)
            await nc.publish(
                subjects.exec_subject(plan.candidates[0].provider),
                contracts.repack(msg.data, routed),
                reply=msg.reply,
                headers=tracing.carrier(),
            )
