"""One service lifecycle: connect, subscribe, bounded in-flight work, drain on a signal.

Every service is a :class:`Service`; :func:`run` owns the NATS connection, starts the
services in order, waits for SIGTERM/SIGINT (or a stop event), then stops them in
reverse order through the one drain-based :meth:`Service.stop` — each stops taking
new work, processes what was queued, finishes (or terminates) what it has in flight
— and finally drains the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from . import log, tracing
from .config import Config, ConfigError, load, open_gateway_error

logger = log.get("lifecycle")

ERROR_LOG_EVERY_S = 10.0


class Tasks:
    """A bounded set of in-flight tasks.

    A subscription callback handles one message at a time, so handlers hand their
    long work (an upstream stream) to this group and return at once. ``spawn``
    refuses (returns False) instead of blocking when the group is full, so the
    caller can answer "overloaded" rather than stall the subscription.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
        """The task running ``coro``, or None (and ``coro`` closed) when the group is full."""
        if self._closed or len(self._tasks) >= self.limit:
            coro.close()
            return None
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("task_failed", error=repr(exc))

    async def drain(self, timeout: float) -> None:
        """Refuse new work, wait up to ``timeout`` for in-flight work, cancel the rest."""
        self._closed = True
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)


class Service:
    """Base of the five services: one way to subscribe, one drain-based stop.

    Subclasses subscribe in ``start`` through :meth:`subscribe` only, hand long work to
    ``self.tasks``, and release their own resources in :meth:`close`. :meth:`stop` is
    the same for every service, in this order (as nats.py's ``drain()``):

    1. the *intake* subscriptions (those that bring new work: ``sw.route.*``,
       ``sw.exec.*``) are drained — no new message is taken, the queued ones are
       processed, not dropped; queue-group peers get the rest;
    2. :meth:`finish`: the work in flight ends (``self.tasks`` drained; the ingress
       stops listening and waits for its HTTP requests here);
    3. every other subscription is drained (cancels, reply inboxes, state), so what
       the in-flight work needed lived until it was done;
    4. :meth:`close`: the service's own resources (sessions, loops, flushes).

    In-flight work gets ``drain_timeout_s`` (the config's ``limits.idle_timeout_s``)
    to end before it is cancelled — each request still ends with its one terminal frame.
    """

    name = "service"

    def __init__(self, drain_timeout_s: float = 30.0, max_in_flight: int = 1024) -> None:
        self.nc: NATS | None = None
        self.log = log.get(self.name)
        self.tasks = Tasks(max_in_flight)
        self.drain_timeout_s = drain_timeout_s
        self._subs: list[tuple[Subscription, bool]] = []

    async def start(self, nc: NATS) -> None:
        self.nc = nc

    async def subscribe(
        self,
        subject: str,
        cb: Callable[[Msg], Awaitable[None]],
        *,
        queue: str = "",
        intake: bool = False,
        **limits: Any,
    ) -> Subscription:
        """Subscribe ``cb`` to ``subject`` (``limits``: nats-py's pending limits) and record
        it for :meth:`stop`; ``intake`` marks a subscription that brings new work."""
        assert self.nc is not None
        sub = await self.nc.subscribe(subject, queue=queue, cb=cb, **limits)
        self._subs.append((sub, intake))
        return sub

    async def stop(self) -> None:
        try:
            await self._drain(intake=True)
            self.log.info("draining", in_flight=self.in_flight())
            await self.finish()
            await self._drain(intake=False)
        finally:
            await self.close()

    def in_flight(self) -> int:
        """Requests this service is working on (for the drain log)."""
        return len(self.tasks)

    async def finish(self) -> None:
        """Let the work in flight end (up to ``drain_timeout_s``)."""
        await self.tasks.drain(timeout=self.drain_timeout_s)

    async def close(self) -> None:
        """Release the service's own resources (after every subscription is drained)."""

    async def _drain(self, *, intake: bool) -> None:
        subs = [s for s, i in self._subs if i is intake]
        self._subs = [(s, i) for s, i in self._subs if i is not intake]
        results = await asyncio.gather(*(s.drain() for s in subs), return_exceptions=True)
        for sub, res in zip(subs, results, strict=True):
            if isinstance(res, Exception):  # a closed connection: nothing more can arrive anyway
                self.log.warning("drain_failed", subject=sub.subject, error=repr(res))


def process_id() -> str:
    """A short id unique to this process (subject-token safe)."""
    return f"{socket.gethostname().split('.')[0][:16]}-{os.getpid()}-{os.urandom(3).hex()}".replace(".", "-")


async def connect(url: str, name: str) -> NATS:
    """Connect with endless reconnects; the services keep serving across a server restart."""

    last: dict[str, float] = {}
    nc: NATS | None = None

    async def on_error(e: Exception) -> None:
        # A server that is down fails every reconnect attempt (4 a second): say it every 10 s.
        key, now = repr(e), time.monotonic()
        if now - last.get(key, -ERROR_LOG_EVERY_S) >= ERROR_LOG_EVERY_S:
            last[key] = now
            logger.warning("nats_error", error=key)

    async def on_disconnect() -> None:
        # nats-py calls this on close() and drain() too: a closed connection is our own
        # shutdown (or a fatal error, which error_cb reports), not a lost server.
        if nc is not None and nc.is_closed:
            logger.info("nats_closed")
            return
        logger.warning("nats_disconnected")

    async def on_reconnect() -> None:
        logger.info("nats_reconnected")

    nc = await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        allow_reconnect=True,
        connect_timeout=5,
        ping_interval=5,
        max_outstanding_pings=3,
        # Keep publishing into the buffer while reconnecting (8 MB).
        pending_size=8 * 1024 * 1024,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    return nc


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def run(
    services: list[Service],
    nats_url: str,
    *,
    name: str = "switchman",
    stop: asyncio.Event | None = None,
    started: Callable[[], Awaitable[None] | None] | None = None,
) -> None:
    """Run ``services`` on one connection until a signal (or ``stop``) arrives, then drain."""
    stop = stop or asyncio.Event()
    install_signal_handlers(stop)
    # NATS may come up after us (containers): keep trying, but a signal still stops us.
    connecting = asyncio.ensure_future(connect(nats_url, name))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not connecting.done():
        connecting.cancel()
        logger.info("stopped_before_connecting")
        return
    stopping.cancel()
    nc = connecting.result()
    begun: list[Service] = []
    try:
        for svc in services:
            await svc.start(nc)
            begun.append(svc)
            logger.info("service_started", name=svc.name)
        if started is not None:
            res = started()
            if asyncio.iscoroutine(res):
                await res
        await stop.wait()
        logger.info("stopping")
    finally:
        for svc in reversed(begun):
            try:
                await svc.stop()
            except Exception as e:  # one service's failure must not keep others running
                logger.error("service_stop_failed", name=svc.name, error=repr(e))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), timeout=10)
        if not nc.is_closed:
            await nc.close()
        logger.info("stopped")


def load_or_exit(path: str | None = None, *, serves_http: bool = False) -> Config:
    """The config, or exit 2 with the offending field named on stderr.

    ``serves_http``: the process runs an ingress, which must not serve an open gateway
    beyond loopback (:func:`~libs.common.config.open_gateway_error`).
    """
    try:
        cfg = load(path)
        problem = open_gateway_error(cfg) if serves_http else None
    except ConfigError as e:
        problem = str(e)
    if problem is not None:
        print(f"switchman: configuration error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return cfg


def serve(
    services: list[Service], cfg: Config, on_started: Callable[[], Awaitable[None] | None] | None = None
) -> None:
    """A process's main: logging, tracing and the event loop set up once, then :func:`run`."""
    log.setup(cfg.log_level)
    tracing.setup(cfg.tracing.enabled, cfg.tracing.exporter)
    if not cfg.nats_url:
        print("switchman: NATS_URL is not set (or use `switchman up`)", file=sys.stderr)
        raise SystemExit(2)
    use_uvloop()
    name = "switchman-" + "+".join(s.name for s in services)
    try:
        asyncio.run(run(services, cfg.nats_url, name=name, started=on_started))
    except OSError as e:  # the listen port is taken, and the like: a message, not a traceback
        print(f"switchman: cannot start: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def main(factory: Callable[[Config], Service], *, serves_http: bool = False) -> None:
    """``python -m services.<name>``: one service against NATS_URL."""
    cfg = load_or_exit(serves_http=serves_http)
    serve([factory(cfg)], cfg)


def use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
