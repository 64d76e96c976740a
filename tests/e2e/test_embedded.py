"""The embedded mode cannot corrupt its own state or leave an orphan behind.

One data dir serves one `switchman up` (a second one is refused, naming the dir and
how to choose another); `kill -9` of `switchman up` takes its nats-server with it;
the embedded server carries 8 MB messages.
"""

from __future__ import annotations

import asyncio
import os
import signal

import nats
import psutil
import pytest

from services.embedded import MAX_PAYLOAD, EmbeddedNats
from tests.gateway import Proc, config_dict, eventually, switchman_cmd, wait_http, write_config

pytestmark = pytest.mark.e2e


def start_up(tmp_path, name: str, data_dir) -> tuple[Proc, int]:
    data = config_dict(sim_models=True)
    port = int(data["listen"].rsplit(":", 1)[1])
    cfg = write_config(tmp_path / f"{name}.yaml", data)
    env = {"SWITCHMAN_DATA_DIR": str(data_dir), "NATS_URL": ""}
    return Proc.start(switchman_cmd("up", "--config", str(cfg)), env, tmp_path / f"{name}.log"), port


def nats_children(proc: Proc) -> list[psutil.Process]:
    return [p for p in psutil.Process(proc.pid).children(recursive=True) if "nats-server" in p.name()]


async def test_a_second_up_on_the_same_data_dir_is_refused(tmp_path):
    first, port = start_up(tmp_path, "first", tmp_path / "state")
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", procs=[first])
        second, _ = start_up(tmp_path, "second", tmp_path / "state")
        code = await asyncio.to_thread(second.popen.wait, 30)
        out = second.output()
        assert code == 1, out
        assert str(tmp_path / "state") in out and "SWITCHMAN_DATA_DIR" in out, out
        assert f"pid {first.pid}" in out, out
        assert "Traceback" not in out
        assert first.alive()
    finally:
        assert first.terminate() == 0
    # Released with its holder: the dir can be used again.
    third, port = start_up(tmp_path, "third", tmp_path / "state")
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", procs=[third])
    finally:
        assert third.terminate() == 0


async def test_kill_9_of_up_takes_its_nats_server_with_it(tmp_path):
    proc, port = start_up(tmp_path, "up", tmp_path / "state")
    await wait_http(f"http://127.0.0.1:{port}/healthz", procs=[proc])
    children = nats_children(proc)
    assert len(children) == 1, children
    os.kill(proc.pid, signal.SIGKILL)
    proc.popen.wait(10)
    server = children[0]
    await eventually(
        lambda: not server.is_running() or server.status() == psutil.STATUS_ZOMBIE, 5, "nats exit"
    )
    # ... and the data dir is free for the next start.
    again, port = start_up(tmp_path, "again", tmp_path / "state")
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", procs=[again])
    finally:
        assert again.terminate() == 0


async def test_the_embedded_server_carries_8_mb_messages(tmp_path):
    server = EmbeddedNats(tmp_path / "state")
    url = await asyncio.to_thread(server.start)
    try:
        nc = await nats.connect(url)
        try:
            assert nc.max_payload == MAX_PAYLOAD == 8 * 1024 * 1024
            sub = await nc.subscribe("big")
            await nc.publish("big", b"x" * (7 * 1024 * 1024))
            msg = await sub.next_msg(timeout=5)
            assert len(msg.data) == 7 * 1024 * 1024
        finally:
            await nc.close()
    finally:
        server.stop()
