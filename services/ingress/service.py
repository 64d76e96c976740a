"""Ingress: the OpenAI HTTP surface.

Serves POST /v1/chat/completions, /v1/completions, /v1/embeddings, GET /v1/models,
/v1/models/{id}, /v1/capabilities, /v1/extensions and /healthz. Validates each body
once into msgspec Structs (400 naming the field), then publishes the untouched body
behind its routing :class:`~libs.common.contracts.Envelope` to ``sw.route.<op>``
with its reply inbox (trace context in NATS headers when tracing is on); consumes
its inbox (``_SW.<process>.*``; numbered frames, checked for gaps: see
:mod:`.proxy`), ``sw.catalog.update`` and ``sw.workers.heartbeat`` (a request whose
worker went silent, or whose end its worker sent but never arrived, is ended: see
:mod:`.bus`); publishes ``sw.catalog.get`` at start, ``sw.ingress.presence`` every
``liveness.BEAT_S``, and ``sw.cancel`` (payload: the request's inbox) when a client
goes away. Logs one ``request`` line per request once its response has
finished (:mod:`services.ingress.access`).

On stop it stops listening first and waits for the requests in flight; its reply
inbox is drained only after they finished (:meth:`Ingress.finish`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import re
import time
from typing import Any, get_args

import msgspec
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from libs.common import contracts, liveness, log, openai, subjects, tracing
from libs.common.config import Config, KeyConfig, Strategy, is_loopback
from libs.common.contracts import Envelope, Presence
from libs.common.errors import (
    AuthenticationFailed,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RequestTimeout,
    SwitchmanError,
)
from libs.common.service import Service, process_id

from . import access, httpserver
from .bus import Bus
from .models import Allowed, ModelView, allowed_by
from .proxy import Relay, Route
from .render import error_response

REQUEST_ID = web.RequestKey("request_id", str)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_enc = msgspec.json.Encoder()


def request_id(request: web.Request) -> str:
    """The client's ``x-request-id`` when it is sane, else a new one; fixed once per request."""
    rid: str | None = request.get(REQUEST_ID)
    if rid is None:
        rid = request.headers.get("x-request-id", "")
        if not _REQUEST_ID.match(rid):
            rid = "req_" + os.urandom(12).hex()
        request[REQUEST_ID] = rid
    return rid


STRATEGY_HEADER = "x-switchman-strategy"
STRATEGIES = frozenset(get_args(Strategy))


def strategy(request: web.Request) -> str | None:
    """The client's per-request strategy, or None; a 400 naming the header when it is unknown."""
    value = request.headers.get(STRATEGY_HEADER)
    if not value:
        return None
    if value not in STRATEGIES:  # also any value that is not UTF-8 (it arrives surrogate-escaped)
        shown = value.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        raise InvalidRequest(
            f"The {STRATEGY_HEADER} header must be one of {', '.join(sorted(STRATEGIES))}; got '{shown}'.",
            param=STRATEGY_HEADER,
        )
    return value


class Ingress(Service):
    name = "ingress"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg.limits.idle_timeout_s)
        self.cfg = cfg
        self.keys: dict[str, KeyConfig] = {k.key: k for k in cfg.keys}
        self.view = ModelView(cfg)
        self.bus: Bus | None = None
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.body_limit = cfg.limits.max_body_bytes  # capped by the bus's max_payload at start
        self.liveness_loop: asyncio.Task[None] | None = None
        lim = cfg.limits
        self.ack_timeout, self.idle_timeout, self.request_timeout = (
            lim.ack_timeout_s,
            lim.idle_timeout_s,
            lim.request_timeout_s,
        )

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self, nc: NATS) -> None:
        await super().start(nc)
        self.bus = Bus(nc, process_id())
        await self.bus.start(self.subscribe)
        # Workers' liveness for the calls in flight, this process's for the workers.
        await self.subscribe(subjects.WORKER_HEARTBEAT, self.on_heartbeat)
        self.liveness_loop = asyncio.create_task(liveness.keep(self._announce, self.bus.check))
        await self.subscribe(subjects.CATALOG_UPDATE, self.on_catalog)
        await nc.publish(subjects.CATALOG_REQUEST, b"")
        # A body must fit in one bus message with its routing envelope: beyond, 413, never 500.
        self.body_limit = min(self.cfg.limits.max_body_bytes, nc.max_payload - contracts.ENVELOPE_ROOM)
        if self.body_limit < self.cfg.limits.max_body_bytes:
            self.log.warning(
                "body_limit_capped_by_bus",
                max_body_bytes=self.cfg.limits.max_body_bytes,
                nats_max_payload=nc.max_payload,
                body_limit=self.body_limit,
            )
        self.runner = web.AppRunner(
            self.app(), handler_cancellation=True, access_log=None, shutdown_timeout=self.drain_timeout_s
        )
        await self.runner.setup()
        httpserver.install(self.runner, self.cfg.limits.header_timeout_s)
        host, port = self.cfg.host_port
        site = web.TCPSite(self.runner, host, port, backlog=4096, reuse_address=True)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:  # the bound port when 0 was asked
            self.port = sockets[0].getsockname()[1]
        self.log.info("listening", host=host, port=self.port)
        if not self.keys and not is_loopback(host):  # allowed only with allow_open_gateway
            self.log.warning(
                "open_gateway", host=host, hint="no keys configured: anyone who reaches this port can use it"
            )

    def in_flight(self) -> int:
        return 0 if self.bus is None else len(self.bus.calls)

    async def on_heartbeat(self, msg: Msg) -> None:
        assert self.bus is not None
        self.bus.on_heartbeat(contracts.heartbeat_decoder.decode(msg.data))

    async def _announce(self) -> None:
        """Presence: workers stop the upstream calls of an ingress gone silent."""
        assert self.bus is not None and self.nc is not None
        await self.nc.publish(subjects.INGRESS_PRESENCE, contracts.encode(Presence(process=self.bus.process)))

    async def close(self) -> None:
        if self.liveness_loop is not None:
            self.liveness_loop.cancel()

    async def finish(self) -> None:
        """Stop listening first, then wait for the in-flight requests (up to the drain
        timeout): their reply inbox is drained only after this."""
        if self.runner is not None:
            await self.runner.cleanup()

    async def on_catalog(self, msg: Msg) -> None:
        self.view.add(contracts.catalog_decoder.decode(msg.data))

    def app(self) -> web.Application:
        # The access line costs a middleware layer per request: none when info is filtered out.
        middlewares = [self.access, self.errors] if access.enabled(self.log) else [self.errors]
        app = web.Application(client_max_size=self.body_limit, middlewares=middlewares)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{id:.+}", self.model)
        app.router.add_get("/v1/capabilities", self.capabilities)
        app.router.add_get("/v1/extensions", self.extensions)
        app.router.add_get("/healthz", self.healthz)
        return app

    # -- middleware -------------------------------------------------------------------------
    @web.middleware
    async def access(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """One access line per request once its response is finished (see ``access``); installed
        only when info lines are written (:meth:`app`)."""
        start = time.perf_counter()
        resp: web.StreamResponse | None = None
        status = 499  # the client went away before an answer (nginx's convention)
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            line = access.fields(request, resp, status, time.perf_counter() - start, request_id(request))
            if request.path in access.QUIET_PATHS:
                self.log.debug("request", **line)
            else:
                self.log.info("request", **line)

    @web.middleware
    async def errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except SwitchmanError as e:
            return error_response(e, self._rid(request))
        except web.HTTPRequestEntityTooLarge:
            return error_response(
                PayloadTooLarge(f"The request body exceeds the limit of {self.body_limit} bytes."),
                self._rid(request),
            )
        except web.HTTPNotFound:
            return error_response(
                NotFound(f"Unknown path {request.path}.", code="unknown_url"), self._rid(request)
            )
        except web.HTTPMethodNotAllowed as e:
            headers = {**self._rid(request), "Allow": ", ".join(sorted(e.allowed_methods))}
            return error_response(
                MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}."), headers
            )
        except (ConnectionResetError, web.HTTPException):
            raise
        except Exception:
            self.log.exception("unhandled", path=request.path)
            return error_response(
                InternalError("The gateway failed to handle the request."), self._rid(request)
            )

    @staticmethod
    def _rid(request: web.Request) -> dict[str, str]:
        return {"x-request-id": request_id(request)}

    # -- auth ---------------------------------------------------------------------------------
    def authenticate(self, request: web.Request) -> KeyConfig | None:
        if not self.keys:
            return None
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it in the Authorization header as 'Bearer <key>'.",
            )
        key = self.keys.get(auth[7:].strip())
        if key is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return key

    # -- OpenAI endpoints ---------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self.proxy(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self.proxy(request, "completions")

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self.proxy(request, "embeddings")

    async def proxy(self, request: web.Request, op: str) -> web.StreamResponse:
        rid = request_id(request)
        log.bind(request_id=rid)  # this handler's task context: its log lines carry the id
        key = self.authenticate(request)
        try:  # over client_max_size: HTTPRequestEntityTooLarge, a 413 below
            async with asyncio.timeout(self.cfg.limits.body_timeout_s):
                body = await request.read()
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {self.cfg.limits.body_timeout_s:g} s."
            ) from None
        if not body:
            raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
        req = openai.decode(op, body)
        model: str = req.model
        if key is not None and not any(fnmatch.fnmatchcase(model, p) for p in key.allow_models):
            raise PermissionDenied(f"The key '{key.name}' may not use the model '{model}'.", param="model")
        stream = bool(getattr(req, "stream", False))
        timeout = self.request_timeout
        route = Route(rid)
        request[access.SERVED] = access.Served(model, route, None if key is None else key.name)
        env = Envelope(
            op=op,
            model=model,
            request_id=rid,
            deadline_ms=int((time.time() + timeout) * 1000),
            stream=stream,
            key=None if key is None else key.name,
            strategy=strategy(request),
        )
        with tracing.span(f"ingress.{op}", tracing.SERVER, None, model=model):
            return await self.relay(request, op, contracts.pack(env, body), stream, timeout, route)

    async def relay(
        self, request: web.Request, op: str, packed: bytes, stream: bool, timeout: float, route: Route
    ) -> web.StreamResponse:
        bus = self.bus
        assert bus is not None
        call = bus.open()
        relay = Relay(call, route, self.ack_timeout, self.idle_timeout, time.monotonic() + timeout)
        try:
            await bus.send(call, subjects.route(op), packed, tracing.carrier())
            if stream:
                return await relay.stream(request)
            return await relay.response()
        except SwitchmanError as e:
            await call.cancel_upstream()
            route.error = e.code or e.type
            return error_response(e, route.headers(failed=True))
        except (asyncio.CancelledError, ConnectionResetError):
            # The client went away: stop the upstream call too.
            with contextlib.suppress(Exception):
                await asyncio.shield(call.cancel_upstream())
            raise
        finally:
            bus.close(call)

    # -- catalog and health ----------------------------------------------------------------------
    def allowed(self, request: web.Request) -> Allowed | None:
        """Which model names the caller's key may use (None: all); a key sees only those."""
        key = self.authenticate(request)
        return None if key is None else allowed_by(key.allow_models)

    async def models(self, request: web.Request) -> web.Response:
        allowed = self.allowed(request)
        return web.Response(body=_enc.encode(self.view.list(allowed)), content_type="application/json")

    async def model(self, request: web.Request) -> web.Response:
        allowed = self.allowed(request)
        name = request.match_info["id"]
        # A model the key may not use is as absent as an unknown one (OpenAI answers 404 too).
        found = self.view.model(name) if allowed is None or allowed(name) else None
        if found is None:
            raise NotFound(f"The model '{name}' does not exist", param="model", code="model_not_found")
        return web.Response(body=_enc.encode(found), content_type="application/json")

    async def capabilities(self, request: web.Request) -> web.Response:
        caps = self.view.capabilities(self.allowed(request))
        return web.Response(body=_enc.encode(caps), content_type="application/json")

    async def extensions(self, request: web.Request) -> web.Response:
        self.authenticate(request)
        return web.Response(body=_enc.encode(self.view.extension_list()), content_type="application/json")

    async def healthz(self, request: web.Request) -> web.Response:
        ok = self.nc is not None and self.nc.is_connected
        body = {"status": "ok" if ok else "degraded", "nats": "connected" if ok else "disconnected"}
        return web.Response(
            status=200 if ok else 503, body=_enc.encode(body), content_type="application/json"
        )
