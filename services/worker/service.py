"""Worker: executes upstream calls for the providers it serves.

Consumes ``sw.exec.<provider>`` (queue group ``worker.<provider>``, one per
provider), ``sw.cancel`` (every worker; the payload is the reply inbox of the
request the ingress abandons — the worker holding it cancels), ``sw.catalog.get``
and ``sw.ingress.presence`` (a request whose ingress went silent for
``liveness.SILENT_S`` has its upstream call stopped). Produces numbered frames on each
request's reply inbox (ack at once, then chunks / result / error; see
:class:`.attempt.InboxSink`), ``sw.exec.<next provider>`` when an attempt fails
before its first byte, ``sw.events.attempt`` (batched), usage records on
``sw.usage.<provider>`` (JetStream ``SW_USAGE``, one record a message, ``Nats-Msg-Id``
= attempt id, see :mod:`.telemetry`), ``sw.workers.heartbeat`` (every
``liveness.BEAT_S``, with the reply inboxes it serves) and ``sw.catalog.update``.

On stop (SIGTERM) it stops taking ``sw.exec`` messages (those already queued are
still run), heartbeats ``draining`` (routers skip it, ingresses still know it alive),
keeps sending frames and keep-alives for its in-flight streams and honouring cancels
until they end (up to ``limits.idle_timeout_s``), then flushes its usage records
with their acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from libs.common import contracts, liveness, registry, subjects
from libs.common.config import Config, ProviderConfig, environ
from libs.common.contracts import Ack, Catalog, Extension, Heartbeat, ModelInfo
from libs.common.errors import Overloaded
from libs.common.liveness import Liveness
from libs.common.profiles import profile_for
from libs.common.service import Service, process_id

from . import catalog, discovery
from .adapters import protocol_class
from .attempt import InboxSink, execute, fail, target
from .binding import Binding
from .telemetry import Telemetry
from .upstream import Upstream, new_session


class Worker(Service):
    name = "worker"

    def __init__(self, cfg: Config, providers: list[str] | None = None) -> None:
        super().__init__(cfg.limits.idle_timeout_s, cfg.limits.max_in_flight)
        self.cfg = cfg
        self.id = process_id()
        wanted = set(providers) if providers else None
        self.configured = [p for p in registry.providers(cfg, environ()) if wanted is None or p.id in wanted]
        self.bindings: dict[str, Binding] = {}
        self.active: dict[str, tuple[asyncio.Task[Any], InboxSink]] = {}
        self.draining = False
        self.beat = 0  # heartbeats sent
        self.heartbeats: asyncio.Task[Any] | None = None
        self.keepalives: asyncio.Task[Any] | None = None

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self, nc: NATS) -> None:
        await super().start(nc)
        self.telemetry = Telemetry(nc, self.cfg.usage, self.log)
        self.telemetry.start()
        for p in self.configured:
            self.bind(p)
        if self.cfg.discovery.enabled:
            known = {b.provider.base_url for b in self.bindings.values()}
            for p in await discovery.local_servers(self.cfg.discovery, known, self.cfg.host_port[1]):
                self.bind(p)
        await discovery.models(self.bindings.values(), self.log)
        for pid in self.bindings:
            queue = subjects.worker_queue(pid)
            await self.subscribe(subjects.exec_subject(pid), self.on_exec, queue=queue, intake=True)
        # A worker that stops taking work stops advertising itself too.
        await self.subscribe(subjects.CATALOG_REQUEST, self.on_catalog_request, intake=True)
        # Cancels and ingress presence must reach the in-flight streams until they are done.
        await self.subscribe(subjects.CANCEL, self.on_cancel)
        self.ingresses = Liveness(nc)
        await self.subscribe(subjects.INGRESS_PRESENCE, self.on_presence)
        await self.announce()
        self.heartbeats = asyncio.create_task(liveness.keep(self._heartbeat, self._check_ingresses))
        self.keepalives = asyncio.create_task(self._keepalive_loop())

    def bind(self, p: ProviderConfig) -> None:
        if not subjects.valid_token(p.id):
            raise ValueError(f"provider id {p.id!r} cannot be a subject token")
        profile = profile_for(p.kind, p.preset, p.capabilities)
        proto = protocol_class(profile.kind if p.kind == "openai" else p.kind)(p, profile)
        session = new_session(p)
        self.bindings[p.id] = Binding(
            provider=p,
            profile=profile,
            protocol=proto,
            upstream=Upstream(p, proto, session, log=self.log),
            session=session,
            log=self.log,
            telemetry=self.telemetry,
            models=list(p.models),
        )

    async def finish(self) -> None:
        """Heartbeats say ``draining`` (routers stop counting on this worker, ingresses still
        know it alive); in-flight streams keep their keep-alives and frames until they end."""
        self.draining = True
        await super().finish()

    async def close(self) -> None:
        for loop in (self.heartbeats, self.keepalives):
            if loop is not None:
                loop.cancel()
        await self.telemetry.stop()  # usage records flushed, with their acks
        for b in self.bindings.values():
            await b.session.close()

    # -- messages -----------------------------------------------------------------------
    async def on_exec(self, msg: Msg) -> None:
        reply = msg.reply
        nc = self.nc
        assert nc is not None
        if not reply:
            return
        try:
            env, body = contracts.unpack(msg.data)
            cand = target(env)
            binding = self.bindings[cand.provider]
        except (KeyError, ValueError, IndexError) as e:
            self.log.warning("bad_exec_message", error=repr(e))
            return
        ack = Ack(
            provider=cand.provider,
            model=cand.model,
            attempt=env.attempt,
            worker=self.id,
            reason=env.reason,
            plan_size=len(env.plan),
            beat=self.beat,
        )
        sink = InboxSink(nc, reply, env.attempt)
        task = self.tasks.spawn(execute(nc, binding, env, msg.data, body, msg.headers, sink))
        if task is not None:  # active before the ack: every heartbeat after it lists the request
            self.active[reply] = (task, sink)
            task.add_done_callback(functools.partial(self._ended, reply))  # after its end frame
        await sink.send(contracts.ACK, contracts.encode(ack))  # frame 0, before any of the task's
        if task is None:
            err = Overloaded(f"worker {self.id} is at its in-flight limit", provider=cand.provider)
            await fail(nc, sink, env, msg.data, err, msg.headers)  # the next candidate may have room

    def _ended(self, reply: str, task: asyncio.Task[Any]) -> None:
        # Only its own entry: after a hand-over to another provider of this worker, the
        # same reply inbox may already belong to the next attempt.
        entry = self.active.get(reply)
        if entry is not None and entry[0] is task:
            del self.active[reply]

    async def on_cancel(self, msg: Msg) -> None:
        entry = self.active.get(msg.data.decode())
        if entry is not None:
            entry[0].cancel()

    async def on_catalog_request(self, msg: Msg) -> None:
        await self.announce()

    # -- state out ---------------------------------------------------------------------------
    def catalog(self) -> Catalog:
        models: list[ModelInfo] = []
        exts: list[Extension] = []
        for b in self.bindings.values():
            models.extend(catalog.model_info(b.provider, b.profile, m) for m in b.models)
            exts.extend(catalog.extensions(b.provider, b.profile))
        return Catalog(worker=self.id, models=models, extensions=exts)

    async def announce(self) -> None:
        assert self.nc is not None
        await self.nc.publish(subjects.CATALOG_UPDATE, contracts.encode(self.catalog()))
        await self._heartbeat()

    async def _heartbeat(self) -> None:
        assert self.nc is not None
        self.beat += 1
        hb = Heartbeat(
            beat=self.beat,
            worker=self.id,
            providers=list(self.bindings),
            in_flight=len(self.tasks),
            active=list(self.active),
            draining=self.draining,
        )
        await self.nc.publish(subjects.WORKER_HEARTBEAT, contracts.encode(hb))

    async def on_presence(self, msg: Msg) -> None:
        self.ingresses.saw(contracts.presence_decoder.decode(msg.data).process)

    def _check_ingresses(self) -> None:
        """Stop the upstream calls of requests whose ingress went silent (it died: nobody
        will read what the upstream sends)."""
        now = self.ingresses.tick()
        for task, sink in list(self.active.values()):
            if task.cancelling():
                continue
            if self.ingresses.gone(subjects.inbox_process(sink.reply), sink.born, now):
                self.log.warning("client_ingress_gone", inbox=sink.reply)
                task.cancel()

    async def _keepalive_loop(self) -> None:
        """A K frame to every request whose upstream has been silent, so the ingress's
        idle timeout only fires for a dead worker, never for a slow provider."""
        every = max(0.05, min(5.0, self.cfg.limits.idle_timeout_s / 3))
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for _, sink in list(self.active.values()):
                if now - sink.last_at >= every:
                    with contextlib.suppress(Exception):
                        await sink.send(contracts.KEEPALIVE)
