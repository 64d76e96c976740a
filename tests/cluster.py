"""Switchman as separate processes around one test nats-server, and load to put through it.

cluster = Cluster(tmp_path, nats_url, upstream_base, limits={...})
cluster.start("ingress"); cluster.start("worker-a", "worker")   # `switchman run <service>`
load = Load(cluster.url)                                          # clients that check every answer

The upstream is the OpenAI emulator (tests/emulators/openai_upstream.py): a prompt
``#words:N`` is answered with ``w1 w2 ... wN``, one chunk per word, so every answer
can be checked whole.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai

from tests.gateway import Proc, config_dict, openai_provider, switchman_cmd, wait_http, write_config

WORDS = 40  # words per answer (plus 0-6); one chunk each
REQUEST_TIMEOUT_S = 20.0


def expected(n: int) -> str:
    return " ".join(f"w{i}" for i in range(1, n + 1))


class Cluster:
    def __init__(self, tmp_path: Any, nats_url: str, base: str, **overrides: Any) -> None:
        data = config_dict(providers=[openai_provider("emu", base, ["gpt-4o-mini"])], **overrides)
        self.port = int(data["listen"].rsplit(":", 1)[1])
        cfg = write_config(tmp_path / "switchman.yaml", data)
        self.env = {"NATS_URL": nats_url, "SWITCHMAN_CONFIG": str(cfg), "SWITCHMAN_DATA_DIR": str(tmp_path)}
        self.tmp = tmp_path
        self.procs: dict[str, Proc] = {}

    def start(self, label: str, service: str | None = None, nats_url: str | None = None) -> Proc:
        """``switchman run <service>`` (default: the label) as process ``label``."""
        env = self.env if nats_url is None else {**self.env, "NATS_URL": nats_url}
        proc = Proc.start(switchman_cmd("run", service or label), env, self.tmp / f"{label}.log")
        self.procs[label] = proc
        return proc

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def url(self) -> str:
        return self.base_url + "/chat/completions"

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key="x", max_retries=0)

    async def ready(self) -> None:
        await wait_http(f"http://127.0.0.1:{self.port}/healthz", procs=list(self.procs.values()))

    def stop(self) -> dict[str, int]:
        return {n: p.terminate() for n, p in self.procs.items() if p.alive()}

    def kill(self) -> None:
        for p in self.procs.values():
            p.kill()

    def logs(self, tail: int = 2000) -> str:
        return "\n".join(f"--- {n}\n{p.output()[-tail:]}" for n, p in self.procs.items())


@dataclass
class Load:
    """Concurrent clients sending requests until told to stop; records every outcome.

    An outcome is a complete and correct answer (``ok``), or a failure with its reason.
    With ``errors_allowed``, an explicit error (a non-200 answer, or a stream that ends
    with an error event and no ``[DONE]``) counts in ``errors`` instead; a damaged
    answer, a truncated success or a hang past ``REQUEST_TIMEOUT_S`` is always a failure.
    """

    url: str
    errors_allowed: bool = False
    ok: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stopping: bool = False
    seq: itertools.count = field(default_factory=itertools.count)

    async def one(self, session: aiohttp.ClientSession, stream: bool) -> bool:
        """True for a correct answer, False for an explicit error; raises for anything else."""
        n = WORDS + next(self.seq) % 7
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"#words:{n}"}],
            "stream": stream,
        }
        async with asyncio.timeout(REQUEST_TIMEOUT_S), session.post(self.url, json=body) as resp:
            text = await resp.text()
        if resp.status != 200:
            if self.errors_allowed and json.loads(text).get("error"):
                self.error_samples.append(f"{resp.status} {text[:200]}")
                return False
            raise AssertionError(f"status {resp.status}: {text[:300]}")
        if stream:
            events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
            if events[-1:] != ["[DONE]"]:
                if self.errors_allowed and events and "error" in json.loads(events[-1]):
                    self.error_samples.append(events[-1][:200])
                    return False
                raise AssertionError(f"stream ended with neither [DONE] nor an error: {text[-300:]}")
            chunks = [json.loads(e) for e in events[:-1]]
            got = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        else:
            got = json.loads(text)["choices"][0]["message"]["content"]
        if got != expected(n):
            raise AssertionError(f"damaged content: {got[-80:]!r}")
        return True

    async def client(self, stream: bool) -> None:
        # A new connection per request: a request is either accepted by the ingress or refused.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            while not self.stopping:
                try:
                    if await self.one(session, stream):
                        self.ok += 1
                    else:
                        self.errors += 1
                except Exception as e:  # noqa: BLE001 - every failure is reported
                    self.failures.append(f"{'stream' if stream else 'json'}: {type(e).__name__}: {e}")


class TcpProxy:
    """A TCP relay in front of nats-server that a test can cut (one process's bus link).

    ``cut()`` closes every connection through it, as a network blip would; clients
    reconnect through it at once.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server: asyncio.AbstractServer | None = None
        self.links: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"nats://127.0.0.1:{self.port}"

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.links |= {writer, up_writer}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.close()
                self.links.discard(w)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for w in list(self.links):
            w.transport.abort()
        self.links.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
