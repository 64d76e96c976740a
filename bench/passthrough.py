"""A bare aiohttp pass-through proxy: the floor for any single-process Python gateway.

bench/run.py runs it as the ``aiohttp-proxy`` target, next to Switchman: POST bodies
are forwarded as they are to the upstream over one pooled ClientSession, and the
answer is relayed (non-stream: read whole; SSE: chunk by chunk). No validation, no
routing, no bus — whatever Switchman costs above this is its own work.

    python bench/passthrough.py --port 8090 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web


def make_app(upstream: str) -> web.Application:
    state: dict[str, ClientSession] = {}

    async def on_startup(app: web.Application) -> None:
        state["s"] = ClientSession(connector=TCPConnector(limit=256), timeout=ClientTimeout(total=60))

    async def on_cleanup(app: web.Application) -> None:
        await state["s"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with state["s"].post(
            upstream + request.path, data=body, headers={"Content-Type": "application/json"}
        ) as r:
            ctype = r.headers.get("Content-Type", "application/json")
            if not ctype.startswith("text/event-stream"):
                return web.Response(body=await r.read(), status=r.status, content_type=ctype.split(";")[0])
            resp = web.StreamResponse(status=r.status, headers={"Content-Type": ctype})
            await resp.prepare(request)
            async for chunk in r.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post("/v1/chat/completions", forward)
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="the upstream's origin, e.g. http://127.0.0.1:9000")
    a = p.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # as Switchman does
    except ImportError:  # pragma: no cover
        pass
    web.run_app(make_app(a.upstream.rstrip("/")), host=a.host, port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
