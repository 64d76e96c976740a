"""`switchman up` as a user runs it: one process, its own embedded nats-server."""

from __future__ import annotations

import asyncio

import pytest

from tests.emulators.openai_upstream import UpstreamState, running
from tests.gateway import (
    Proc,
    config_dict,
    openai_provider,
    switchman_cmd,
    wait_http,
    wait_model,
    write_config,
)
from tests.schema import validate, validate_sse_chunks

pytestmark = pytest.mark.e2e


async def test_switchman_up_serves_sim_and_configured_providers(tmp_path):
    import openai

    state = UpstreamState(api_key="sk-test")
    async with running(state) as upstream:
        data = config_dict(sim_models=True, providers=[openai_provider("emu", upstream, ["gpt-4o-mini"])])
        data.pop("log_level")
        cfg = write_config(tmp_path / "switchman.yaml", data)
        port = int(data["listen"].rsplit(":", 1)[1])
        proc = Proc.start(
            switchman_cmd("up", "--config", str(cfg)),
            {"SWITCHMAN_DATA_DIR": str(tmp_path / "state"), "NATS_URL": ""},
            tmp_path / "up.log",
        )
        try:
            base = f"http://127.0.0.1:{port}/v1"
            await wait_http(f"http://127.0.0.1:{port}/healthz", procs=[proc])
            await wait_model(base, "sim-fast")
            client = openai.AsyncOpenAI(base_url=base, api_key="x", max_retries=0)

            models = await client.models.list()
            ids = {m.id for m in models.data}
            assert {"sim-fast", "sim-cheap", "sim-smart", "gpt-4o-mini"} <= ids

            resp = await client.chat.completions.create(
                model="sim-fast", messages=[{"role": "user", "content": "hello"}], max_tokens=8
            )
            validate("CreateChatCompletionResponse", resp.model_dump(exclude_unset=True))
            again = await client.chat.completions.create(
                model="sim-fast", messages=[{"role": "user", "content": "hello"}], max_tokens=8
            )
            assert resp.choices[0].message.content == again.choices[0].message.content  # deterministic

            chunks = [
                c.model_dump(exclude_unset=True)
                async for c in await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "stream me"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            ]
            validate_sse_chunks(chunks)
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            assert text == "You said: stream me"

            emb = await client.embeddings.create(model="sim-cheap", input=["a", "b"], dimensions=8)
            assert [len(d.embedding) for d in emb.data] == [8, 8]
        finally:
            code = proc.terminate()
        assert code == 0, proc.output()[-3000:]
        assert "Traceback" not in proc.output()


async def test_a_service_waiting_for_nats_stops_on_sigterm(tmp_path):
    from tests.gateway import service_cmd
    from tests.natsutil import free_port

    cfg = write_config(tmp_path / "switchman.yaml", config_dict())
    env = {"NATS_URL": f"nats://127.0.0.1:{free_port()}", "SWITCHMAN_CONFIG": str(cfg)}
    proc = Proc.start(service_cmd("router"), env, tmp_path / "router.log")
    await asyncio.sleep(1.0)  # retrying the connection to a server that is not there
    assert proc.alive()
    assert proc.terminate(timeout=5) == 0, proc.output()[-2000:]


async def test_a_taken_port_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        data = config_dict(listen=f"127.0.0.1:{port}")
        cfg = write_config(tmp_path / "switchman.yaml", data)
        proc = Proc.start(
            switchman_cmd("up", "--config", str(cfg)),
            {"SWITCHMAN_DATA_DIR": str(tmp_path / "state"), "NATS_URL": ""},
            tmp_path / "up.log",
        )
        code = await asyncio.to_thread(proc.popen.wait, 30)
    assert code == 1
    assert "cannot start" in proc.output() and "Traceback" not in proc.output()
