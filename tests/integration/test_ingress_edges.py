"""The ingress at its edges: listen addresses, odd clients, hostile bytes."""

from __future__ import annotations

import aiohttp

from tests.gateway import config, in_process
from tests.natsutil import free_port

CHAT = {"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}]}


async def test_an_ipv6_listen_address_serves(nats_server):
    cfg = config(listen=f"[::1]:{free_port()}", sim_models=True)
    async with in_process(cfg, nats_server.url) as gw:
        url = f"http://[::1]:{gw.port}/v1/chat/completions"
        async with aiohttp.ClientSession() as s, s.post(url, json=CHAT) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["choices"][0]["message"]["content"]


async def raw(port: int, data: bytes, read_timeout: float = 10.0) -> bytes:
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), read_timeout)
    finally:
        writer.close()


def request_bytes(headers: bytes, body: bytes = b"") -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + headers
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )


async def test_a_strategy_header_that_is_not_utf8_or_unknown_is_a_400(nats_server):
    import json

    async with in_process(config(sim_models=True), nats_server.url) as gw:
        for value in (b"evil\xe9", b"fastest"):
            header = b"x-switchman-strategy: " + value + b"\r\n"
            reply = await raw(gw.port, request_bytes(header, json.dumps(CHAT).encode()))
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400"), reply[:300]
            err = json.loads(body)["error"]
            assert err["type"] == "invalid_request_error" and err["param"] == "x-switchman-strategy", err
        # An insane request id is replaced by a fresh one, not echoed and not an error.
        reply = await raw(gw.port, request_bytes(b"x-request-id: r\xff\xfe\r\n", json.dumps(CHAT).encode()))
        assert reply.startswith(b"HTTP/1.1 200") and b"x-request-id: req_" in reply, reply[:300]


SLOW = {"header_timeout_s": 1.0, "body_timeout_s": 1.0}


def parse_reply(reply: bytes) -> tuple[bytes, dict[str, str], dict]:
    import json

    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return lines[0].encode(), headers, json.loads(body)


async def test_headers_sent_a_byte_at_a_time_get_408_and_the_connection_closes(nats_server):
    import asyncio
    import time

    async with in_process(config(sim_models=True, limits=SLOW), nats_server.url) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        t0 = time.monotonic()
        reply = b""
        for b in b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            writer.write(bytes([b]))
            try:  # wait 50 ms between bytes, stopping at the first byte of an answer
                reply = await asyncio.wait_for(reader.read(65536), 0.05)
                break
            except TimeoutError:
                continue
        reply += await asyncio.wait_for(reader.read(), 5)  # to EOF: the gateway closed
        writer.close()
    status, headers, body = parse_reply(reply)
    assert status == b"HTTP/1.1 408 Request Timeout", reply[:200]
    assert headers["content-type"].startswith("application/json")
    assert body["error"]["code"] == "request_timeout"
    assert 0.9 < time.monotonic() - t0 < 4


async def test_a_body_that_stalls_gets_408(nats_server):
    import asyncio

    async with in_process(config(sim_models=True, limits=SLOW), nats_server.url) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(request_bytes(b"", b"")[: -len(b"Content-Length: 0\r\nConnection: close\r\n\r\n")])
        writer.write(b'Content-Length: 100\r\n\r\n{"model": ')
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    status, _, body = parse_reply(reply)
    assert status.startswith(b"HTTP/1.1 408"), reply[:200]
    assert body["error"]["type"] == "invalid_request_error" and "body" in body["error"]["message"]


async def test_an_idle_keepalive_connection_is_not_a_slow_client(nats_server):
    import asyncio
    import json

    payload = json.dumps(CHAT).encode()
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(payload) + payload
    )
    async with in_process(config(sim_models=True, limits=SLOW), nats_server.url) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        for _ in range(2):
            writer.write(req)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(
                next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
            )
            await reader.readexactly(length)
            await asyncio.sleep(1.5)  # idle past the header timeout: still open
        writer.close()


async def test_aiohttp_parser_errors_are_openai_shaped(nats_server):
    async with in_process(config(sim_models=True), nats_server.url) as gw:
        for junk in (
            b"GARBAGE\r\n\r\n",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
        ):
            status, headers, body = parse_reply(await raw(gw.port, junk))
            assert status.split(b" ")[1].startswith(b"4"), (junk[:40], status)
            assert headers["content-type"].startswith("application/json"), headers
            assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
