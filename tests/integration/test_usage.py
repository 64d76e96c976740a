"""Usage records on JetStream: durable, deduplicated by attempt id, within the stream's limits."""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats
import openai
import pytest

from libs.common import contracts, subjects
from libs.common.config import UsageConfig
from libs.common.contracts import UsageRecord
from libs.common.service import connect
from libs.common.usage import ensure_usage_stream
from services.worker import tokens
from services.worker.telemetry import Telemetry
from tests.gateway import config, eventually, in_process, openai_provider


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def _add(self, event: str, **kw: object) -> None:
        self.lines.append((event, kw))

    warning = error = info = _add


def record(attempt_id: str, provider: str = "emu") -> UsageRecord:
    return UsageRecord(
        request_id="req_" + attempt_id,
        attempt_id=attempt_id,
        key=None,
        provider=provider,
        model="gpt-4o-mini",
        client_model="gpt-4o-mini",
        op="chat",
        prompt_tokens=3,
        completion_tokens=5,
        ts=time.time(),
    )


async def stored(js, provider: str = "emu") -> list[UsageRecord]:
    """Every record in SW_USAGE on ``sw.usage.<provider>``, in order."""
    info = await js.stream_info(subjects.USAGE_STREAM)
    out = []
    for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
        try:
            msg = await js.get_msg(subjects.USAGE_STREAM, seq)
        except nats.js.errors.NotFoundError:
            continue
        if msg.subject == subjects.usage_subject(provider):
            out.append(contracts.usage_decoder.decode(msg.data))
    return out


async def test_the_stream_has_the_configured_limits_and_existing_streams_get_them(nats_server_fn):
    nc = await nats.connect(nats_server_fn.url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            name=subjects.USAGE_STREAM, subjects=[subjects.USAGE_ALL]
        )  # an old, unbounded one
        cfg = UsageConfig(max_age_s=3600.0, max_bytes=1024 * 1024, duplicate_window_s=600.0)
        await ensure_usage_stream(js, cfg)
        got = (await js.stream_info(subjects.USAGE_STREAM)).config
        assert (got.max_age, got.max_bytes, got.duplicate_window) == (3600.0, 1024 * 1024, 600.0)
        await ensure_usage_stream(js, cfg)  # idempotent
        # The defaults bound an embedded install: 30 days, 1 GiB.
        got = (await ensure_usage_stream(js, UsageConfig())).config
        assert (got.max_age, got.max_bytes) == (30 * 24 * 3600.0, 1024**3)
    finally:
        await nc.close()


async def test_a_record_published_twice_is_stored_once(nats_server_fn):
    nc = await nats.connect(nats_server_fn.url)
    try:
        tel = Telemetry(nc, UsageConfig(), Log())
        rec = record("a1")
        tel.keep(rec)
        await tel.flush_usage(5)
        assert not tel.pending
        tel.keep(rec)  # a retry after a lost ack, say
        tel.keep(record("a2"))
        await tel.flush_usage(5)
        assert [r.attempt_id for r in await stored(nc.jetstream())] == ["a1", "a2"]
    finally:
        await nc.close()


async def test_pending_records_survive_a_nats_server_restart(nats_server_fn):
    nc = await connect(nats_server_fn.url, "test-telemetry")
    log = Log()
    tel = Telemetry(nc, UsageConfig(), log)
    tel.start()
    try:
        tel.keep(record("before"))
        await eventually(lambda: not tel.pending, 5, "the first record acked")
        nats_server_fn.kill()
        for i in range(50):
            tel.keep(record(f"during-{i}"))
        await asyncio.sleep(1.0)
        assert len(tel.pending) == 50  # kept, not lost, while the server is down
        nats_server_fn.start()
        await eventually(lambda: not tel.pending, 20, "the pending records acked after the restart")
        ids = [r.attempt_id for r in await stored(nc.jetstream())]
        assert ids == ["before"] + [f"during-{i}" for i in range(50)]  # each once, in order
    finally:
        await tel.stop()
        await nc.close()


async def test_pending_records_are_bounded_and_drops_are_logged(nats_server_fn):
    nc = await nats.connect(nats_server_fn.url)
    try:
        log = Log()
        tel = Telemetry(nc, UsageConfig(max_pending=3), log)
        for i in range(5):
            tel.keep(record(f"r{i}"))
        assert list(tel.pending) == ["r2", "r3", "r4"]  # the oldest dropped
        assert tel.dropped == 2 and log.lines[0][0] == "usage_records_dropped"
    finally:
        await nc.close()


async def test_a_cut_stream_reports_the_streamed_tokens_as_estimated(nats_server, upstream):
    state, base = upstream
    state.cut_stream_after_chunks = 6
    cfg = config(providers=[openai_provider("cutter", base, ["gpt-4o-mini"])])
    async with in_process(cfg, nats_server.url) as gw, gw.openai() as client:
        streamed = []
        with pytest.raises(openai.APIError):
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "#words:50"}],
                stream=True,
                extra_headers={"x-request-id": "req-cut-stream-usage"},
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    streamed.append(chunk.choices[0].delta.content)
        assert streamed
        js = gw.services["worker"].nc.jetstream()
        found: list[UsageRecord] = []

        async def poll() -> bool:  # the session's server: read only this provider's last record
            try:
                msg = await js.get_last_msg(subjects.USAGE_STREAM, subjects.usage_subject("cutter"))
            except nats.js.errors.NotFoundError:
                return False
            found[:] = [contracts.usage_decoder.decode(msg.data)]
            return found[0].request_id == "req-cut-stream-usage"

        for _ in range(100):
            if await poll():
                break
            await asyncio.sleep(0.05)
    (rec,) = found
    assert rec.estimated and rec.status == 502
    assert rec.completion_tokens == tokens.of_text("".join(streamed))
    assert rec.prompt_tokens == tokens.of_text("#words:50")


def test_an_old_usage_record_decodes_with_the_new_decoder():
    old = msgspec.json.encode({k: v for k, v in msgspec.to_builtins(record("x")).items() if k != "estimated"})
    assert contracts.usage_decoder.decode(old).estimated is False


async def test_stop_flushes_pending_records_with_acks(nats_server_fn):
    nc = await nats.connect(nats_server_fn.url)
    try:
        tel = Telemetry(nc, UsageConfig(), Log())
        tel.start()
        for i in range(2500):  # more than one round
            tel.keep(record(f"s{i}"))
        await tel.stop()
        assert not tel.pending
        info = await nc.jetstream().stream_info(subjects.USAGE_STREAM)
        assert info.state.messages == 2500
    finally:
        await nc.close()
