"""The simulated provider over OpenAI HTTP — the benchmark's upstream.

The same engine as the in-process ``sim`` provider (:class:`SimProtocol`), behind
POST /v1/chat/completions, /v1/completions, /v1/embeddings and GET /v1/models.
With the default settings it answers at once (0 ms), so a benchmark measures the
gateway, not the upstream.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from libs.common.config import ProviderConfig, SimSettings
from libs.common.errors import SwitchmanError
from libs.common.profiles import PRESETS

from .adapters.sim import SimProtocol

_dec = msgspec.json.Decoder(dict)


class _HttpSink:
    __slots__ = ("request", "resp", "body", "started")

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.resp: web.StreamResponse | None = None
        self.body: bytes | None = None
        self.started = False

    async def chunk(self, *pieces: bytes) -> None:
        if self.resp is None:
            self.resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await self.resp.prepare(self.request)
        self.started = True
        await self.resp.write(b"".join(b"data: " + p + b"\n\n" for p in pieces))

    async def result(self, body: bytes) -> None:
        self.started = True
        self.body = body


def make_app(settings: SimSettings | None = None) -> web.Application:
    provider = ProviderConfig(id="sim-upstream", kind="sim", sim=settings or SimSettings())
    proto = SimProtocol(provider, PRESETS["sim"])

    def handler(op: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            req = _dec.decode(await request.read())
            stream = bool(req.get("stream"))
            sink = _HttpSink(request)
            try:
                await proto.run(None, sink, op, req, req.get("model", "sim"), stream)  # type: ignore[arg-type]
            except SwitchmanError as e:
                err = {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}
                return web.json_response(err, status=500 if e.status >= 500 else e.status)
            if sink.resp is not None:
                await sink.resp.write(b"data: [DONE]\n\n")
                return sink.resp
            return web.Response(body=sink.body, content_type="application/json")

        return handle

    async def models(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": "sim", "object": "model", "created": 0, "owned_by": "switchman"}],
            }
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", handler("chat"))
    app.router.add_post("/v1/completions", handler("completions"))
    app.router.add_post("/v1/embeddings", handler("embeddings"))
    app.router.add_get("/v1/models", models)
    return app


def serve(host: str, port: int, ttft_ms: float = 0.0, tokens_per_s: float = 0.0) -> None:
    from libs.common.service import use_uvloop

    use_uvloop()
    app = make_app(SimSettings(ttft_ms=ttft_ms, tokens_per_s=tokens_per_s))
    web.run_app(app, host=host, port=port, access_log=None, print=None, handle_signals=True)
