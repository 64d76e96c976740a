"""The first run as a new user: what start-up prints, a clean Ctrl-C, and the open-gateway refusal.

`switchman up` runs as a process in its own process group, so a SIGINT to the group is
exactly a terminal's Ctrl-C (the embedded nats-server must not get it before the
services have drained).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.emulators.openai_upstream import UpstreamState, running
from tests.gateway import ROOT, config_dict, openai_provider, switchman_cmd, wait_http, write_config
from tests.natsutil import free_port

pytestmark = pytest.mark.e2e


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            args,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            start_new_session=True,
        )


def _events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _read(log: Path) -> str:
    return log.read_text(errors="replace")


async def _wait_for(log: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while needle not in (text := _read(log)):
        assert proc.poll() is None, f"exited early ({proc.returncode}):\n{text[-3000:]}"
        assert loop.time() < deadline, f"{needle!r} not printed in {timeout}s:\n{text[-3000:]}"
        await asyncio.sleep(0.05)
    return text


async def test_up_reports_what_it_serves_and_stops_cleanly_on_ctrl_c(tmp_path):
    import openai

    async with (
        running(UpstreamState(api_key="sk-test")) as configured,
        running(UpstreamState()) as local,  # a keyless "vLLM" on a port discovery probes
    ):
        data = config_dict(
            sim_models=True,
            providers=[openai_provider("emu", configured, ["gpt-4o-mini"])],
            discovery={"enabled": True, "endpoints": {"vllm": local}, "timeout_s": 2.0},
            log_level="info",
        )
        cfg = write_config(tmp_path / "switchman.yaml", data)
        port = int(data["listen"].rsplit(":", 1)[1])
        state = tmp_path / "state"
        log = tmp_path / "up.log"
        proc = _start(
            switchman_cmd("up", "--config", str(cfg)), {"SWITCHMAN_DATA_DIR": str(state), "NATS_URL": ""}, log
        )
        try:
            text = await _wait_for(log, "  NATS: ", proc)
            banner = text[text.index("switchman: serving") :]
            assert f"serving the OpenAI API on http://127.0.0.1:{port}/v1" in banner
            assert "sim-fast" in banner and "gpt-4o-mini" in banner
            assert "emu (1)" in banner  # providers with their model counts
            assert f"local servers: vllm at {local}" in banner  # known only from the worker's catalog
            assert f"log {state / 'nats-server.log'}" in banner
            assert "client keys: none" in banner

            await wait_http(f"http://127.0.0.1:{port}/healthz")
            async with openai.AsyncOpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0
            ) as client:
                resp = await client.chat.completions.create(
                    model="sim-fast", messages=[{"role": "user", "content": "a secret prompt"}], max_tokens=4
                )
                assert resp.choices[0].message.content
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
            code = await asyncio.to_thread(proc.wait, 20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    out = _read(log)
    assert code == 0, out[-3000:]
    assert "Traceback" not in out
    events = _events(out)
    bad = [e for e in events if e.get("level") in ("warning", "error", "critical")]
    assert not bad, bad
    assert [e for e in events if e.get("event") == "request" and e.get("model") == "sim-fast"]
    assert "a secret prompt" not in out
    assert events[-1]["event"] == "stopped"


def test_up_refuses_an_open_gateway_beyond_loopback(tmp_path):
    cfg = write_config(tmp_path / "switchman.yaml", config_dict(listen=f"0.0.0.0:{free_port()}"))
    for argv in (
        switchman_cmd("up", "--config", str(cfg)),
        switchman_cmd("run", "ingress", "--config", str(cfg)),
        [sys.executable, "-m", "services.ingress"],
        switchman_cmd("check-config", str(cfg)),
    ):
        r = subprocess.run(
            argv,
            env={**os.environ, "SWITCHMAN_CONFIG": str(cfg), "NATS_URL": "nats://127.0.0.1:1"},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        for needle in ("allow_open_gateway", "keys", "127.0.0.1", "0.0.0.0"):
            assert needle in lines[0], (needle, lines[0])


async def test_an_opted_in_open_gateway_starts_and_says_so_loudly(tmp_path, nats_server):
    port = free_port()
    cfg = write_config(tmp_path / "switchman.yaml", config_dict(listen=f"0.0.0.0:{port}", log_level="info"))
    log = tmp_path / "ingress.log"
    env = {"SWITCHMAN_ALLOW_OPEN_GATEWAY": "true", "NATS_URL": nats_server.url}
    proc = _start(switchman_cmd("run", "ingress", "--config", str(cfg)), env, log)
    try:
        # No worker answers here: the report waits for catalogs (bounded) and says so.
        text = await _wait_for(log, "  NATS: ", proc)
        assert f"serving the OpenAI API on http://0.0.0.0:{port}/v1" in text
        assert "no worker catalog yet" in text
        assert "OPEN GATEWAY" in text
        warnings = [e for e in _events(text) if e.get("level") == "warning"]
        assert [e for e in warnings if e["event"] == "open_gateway"], text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, _read(log)[-3000:]
