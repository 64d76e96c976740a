from __future__ import annotations

import asyncio
import socket

import nats
import pytest
from nats.js.api import StreamConfig

from tests import natsutil


def test_free_port_is_bindable_and_not_reserved() -> None:
    port = natsutil.free_port()
    assert port not in natsutil.RESERVED_PORTS
    with socket.socket() as s:
        s.bind((natsutil.HOST, port))


def test_session_server_basics(nats_server) -> None:
    assert nats_server.running
    assert nats_server.port != 4222
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    if isinstance(nats_server, natsutil.NatsServer):
        assert nats_server.info.get("jetstream") is True
        assert nats_server.info.get("host") == "127.0.0.1"


async def test_publish_subscribe(nats_server) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        sub = await nc.subscribe("test.natsutil.ping")
        await nc.publish("test.natsutil.ping", b"hello")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"hello"

        async def responder(msg):
            await msg.respond(msg.data.upper())

        await nc.subscribe("test.natsutil.echo", cb=responder)
        reply = await nc.request("test.natsutil.echo", b"abc", timeout=5)
        assert reply.data == b"ABC"
    finally:
        await nc.close()


async def test_kill_restart_reconnects_and_keeps_jetstream(nats_server_fn) -> None:
    srv = nats_server_fn
    port = srv.port
    reconnected = asyncio.Event()
    disconnected = asyncio.Event()

    async def on_disconnect():
        disconnected.set()

    async def on_reconnect():
        reconnected.set()

    nc = await nats.connect(
        srv.url,
        reconnect_time_wait=0.1,
        max_reconnect_attempts=-1,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="NATSUTIL", subjects=["natsutil.js.>"]))
        ack = await js.publish("natsutil.js.a", b"persisted")
        assert ack.seq == 1
        sub = await nc.subscribe("natsutil.core")

        await asyncio.to_thread(srv.kill)
        assert not srv.running
        await asyncio.wait_for(disconnected.wait(), 10)

        await asyncio.to_thread(srv.start)
        assert srv.running and srv.port == port
        await asyncio.wait_for(reconnected.wait(), 15)

        # Core subscriptions are replayed on reconnect.
        await nc.publish("natsutil.core", b"after-restart")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"after-restart"

        # JetStream state survived SIGKILL (same store dir).
        info = await js.stream_info("NATSUTIL")
        assert info.state.messages == 1
        stored = await js.get_msg("NATSUTIL", 1)
        assert stored.data == b"persisted"
    finally:
        await nc.close()


def test_stop_then_start_again(nats_server_fn) -> None:
    srv = nats_server_fn
    srv.stop()
    assert not srv.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=0.5).close()
    srv.start()
    info = natsutil.wait_for_nats("127.0.0.1", srv.port, timeout=5)
    assert info["port"] == srv.port


def test_unavailable_reason_is_clear(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(natsutil, "find_nats_server", lambda: None)
    monkeypatch.setattr(natsutil, "_docker_unavailable_reason", lambda: "no engine (test)")
    with pytest.raises(natsutil.NatsServerUnavailable, match="no nats-server binary.*no engine"):
        natsutil.start_nats_server(tmp_path)
