"""One upstream attempt of one request, from the routed message to its terminal frame.

The worker has already acked. This decodes the body once, fits it to the provider's
profile, runs the provider's protocol with the reply inbox as sink, and ends with
exactly one terminal frame — or, when the attempt failed before its first byte with
a retryable error and the plan has another candidate, hands the request on to that
candidate (an ``M`` frame tells the ingress). Every attempt emits one attempt event
and, when tokens were used, one usage record.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING, Any

import msgspec

from libs.common import contracts, log, subjects, tracing
from libs.common.contracts import AttemptEvent, Candidate, Done, Envelope, Moved, UsageRecord
from libs.common.errors import GatewayTimeout, InternalError, InvalidRequest, SwitchmanError, UpstreamError

from . import tokens
from .chunks import Usage
from .params import fit
from .tokens import Streamed

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from .binding import Binding

_decode_body = msgspec.json.Decoder(dict).decode


class InboxSink:
    """Frames to the client's reply inbox, numbered; remembers when the first byte went out.

    Every frame of this attempt carries the attempt number and the next sequence
    number (the ack is 0), so the ingress notices a lost or reordered frame. A payload
    larger than one bus message goes out as ``P`` frames and a last frame of its own kind.
    """

    __slots__ = ("nc", "reply", "attempt", "seq", "started", "born", "first_at", "last_at", "streamed")

    def __init__(self, nc: NATS, reply: str, attempt: int) -> None:
        self.nc = nc
        self.reply = reply
        self.attempt = attempt
        self.seq = 0
        self.started = False
        self.first_at = 0.0
        self.born = self.last_at = time.monotonic()
        # What went to the client, for an estimate when the provider's count is missing.
        self.streamed = Streamed()

    def _mark(self) -> None:
        now = time.monotonic()
        if not self.started:
            self.started = True
            self.first_at = now
        self.last_at = now

    async def chunk(self, *pieces: bytes) -> None:
        """One ``C`` frame for all ``pieces`` (newline-separated: chunks are one-line JSON)."""
        self._mark()
        self.streamed.add(pieces)
        await self.send(contracts.CHUNK, pieces[0] if len(pieces) == 1 else b"\n".join(pieces))

    async def result(self, body: bytes) -> None:
        self._mark()
        self.streamed.add((body,))
        await self.send(contracts.RESULT, body)

    async def send(self, kind: int, payload: bytes = b"") -> None:
        self.last_at = time.monotonic()
        room = self.nc.max_payload - contracts.HEADER_SIZE
        if len(payload) > room:
            await self._in_parts(kind, payload, room)
            return
        seq = self.seq
        self.seq = seq + 1
        await self.nc.publish(self.reply, contracts.header(kind, self.attempt, seq) + payload)

    async def _in_parts(self, kind: int, payload: bytes, room: int) -> None:
        view = memoryview(payload)
        last = (len(payload) - 1) // room * room
        for at in range(0, len(payload), room):
            seq = self.seq
            self.seq = seq + 1
            head = contracts.header(kind if at == last else contracts.PART, self.attempt, seq)
            await self.nc.publish(self.reply, head + view[at : at + room])


def target(env: Envelope) -> Candidate:
    return env.plan[env.attempt - 1]


async def execute(
    nc: NATS,
    binding: Binding,
    env: Envelope,
    data: bytes,
    body: memoryview,
    trace: dict[str, str] | None,
    sink: InboxSink,
) -> None:
    """Run one attempt; ``data`` is the whole packed message (for handing it on)."""
    attempt_id = os.urandom(8).hex()
    started = time.monotonic()
    usage: Usage | None = None
    error: SwitchmanError | None = None
    req: dict[str, Any] | None = None
    cand = target(env)
    # This task's own context: every log line of the attempt carries these.
    log.bind(request_id=env.request_id, provider=cand.provider, attempt=env.attempt)
    # The whole attempt, hand-over included, is one span: the next candidate's attempt
    # continues this request's trace as its child.
    with tracing.span("worker.attempt", tracing.CONSUMER, trace, provider=cand.provider, model=cand.model):
        try:
            req = _request(binding, body)
            usage = settled(await _run(binding, env, req, sink), req, sink)
            if env.stream:
                u = usage or Usage()
                done = Done(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens)
                await sink.send(contracts.DONE, contracts.encode(done))
        except SwitchmanError as e:
            error = e
        except asyncio.CancelledError:
            # Client gone or shutting down: the one terminal frame still goes out, and the
            # request is not handed on (nobody may be waiting for it).
            error = UpstreamError("the request was cancelled (gateway shutting down or client gone)")
            await sink.send(contracts.ERROR, contracts.encode(error.frame()))
            _report(binding, env, attempt_id, started, sink, settled(usage, req, sink), error)
            raise
        except Exception as e:  # a bug: never a hang, never a silent end
            binding.log.exception("attempt_crashed")
            error = InternalError(f"internal error in the worker: {type(e).__name__}")
        if error is not None:
            error.provider = error.provider or cand.provider
            binding.log.warning(
                "attempt_failed",
                model=cand.model,
                status=error.status,
                error=error.message,
                after_first_byte=sink.started,
            )
            await fail(nc, sink, env, data, error, trace)
            usage = settled(usage, req, sink)
    _report(binding, env, attempt_id, started, sink, usage, error)


def _request(binding: Binding, body: memoryview) -> dict[str, Any]:
    """The client's body, decoded once and fitted to the provider's profile."""
    try:
        req: dict[str, Any] = _decode_body(body)
    except (msgspec.DecodeError, RecursionError):
        raise InvalidRequest("the request body is not a JSON object") from None
    fit(req, binding.profile, binding.provider.id, binding.provider.drop_params)
    return req


async def _run(binding: Binding, env: Envelope, req: dict[str, Any], sink: InboxSink) -> Usage | None:
    coro = binding.protocol.run(binding.upstream, sink, env.op, req, target(env).model, env.stream)
    remaining = env.deadline_ms / 1000 - time.time()
    try:
        async with asyncio.timeout(max(remaining, 0.001)):
            return await coro
    except TimeoutError:
        raise GatewayTimeout("the request deadline passed before the provider finished") from None


def settled(usage: Usage | None, req: dict[str, Any] | None, sink: InboxSink) -> Usage | None:
    """The attempt's usage: the provider's, else estimated from what reached the client.

    An attempt that sent its first byte used tokens even when it ended without the
    provider's count (cut stream, client gone, deadline, a provider that reports
    none): the completion is estimated from the text streamed, the prompt from the
    request, and the usage is flagged ``estimated``. Nothing sent: nothing counted.
    """
    if usage is None or not (usage.prompt_tokens or usage.completion_tokens):
        if not sink.started:
            return usage
        usage = Usage(completion_tokens=sink.streamed.tokens(), estimated=True)
    if usage.estimated and not usage.prompt_tokens and req is not None:
        usage.prompt_tokens = tokens.prompt(req)
    return usage


async def fail(
    nc: NATS,
    sink: InboxSink,
    env: Envelope,
    data: bytes,
    error: SwitchmanError,
    trace: dict[str, str] | None = None,
) -> None:
    """End the attempt: hand the request to the next candidate when it may, else an E frame.

    The hand-over carries the current span's context (the failed attempt), else the
    incoming ``trace`` headers, so every attempt of a request is in the request's trace.
    """
    past_deadline = time.time() * 1000 >= env.deadline_ms
    if not sink.started and error.retryable and env.attempt < len(env.plan) and not past_deadline:
        failed, nxt = target(env), env.plan[env.attempt]
        moved_to = Moved(
            provider=failed.provider,
            attempt=env.attempt,
            status=error.status,
            message=error.message,
            next_provider=nxt.provider,
        )
        await sink.send(contracts.MOVED, contracts.encode(moved_to))
        moved = msgspec.structs.replace(env, attempt=env.attempt + 1)
        await nc.publish(
            subjects.exec_subject(nxt.provider),
            contracts.repack(data, moved),
            reply=sink.reply,
            headers=tracing.carrier() or trace,
        )
        return
    await sink.send(contracts.ERROR, contracts.encode(error.frame()))


def _report(
    binding: Binding,
    env: Envelope,
    attempt_id: str,
    started: float,
    sink: InboxSink,
    usage: Usage | None,
    error: SwitchmanError | None,
) -> None:
    """Attempt event for health, usage record for the ledger (sent by the telemetry loop,
    after the terminal frame, off the request path)."""
    now = time.monotonic()
    cand = target(env)
    u = usage or Usage()
    event = AttemptEvent(
        request_id=env.request_id,
        attempt_id=attempt_id,
        provider=cand.provider,
        model=cand.model,
        op=env.op,
        status=200 if error is None else error.status,
        latency_ms=(now - started) * 1000,
        ttft_ms=(sink.first_at - started) * 1000 if sink.started else None,
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        error_type=None if error is None else type(error).__name__,
        stream=env.stream,
        ts=time.time(),
    )
    record = None
    if u.prompt_tokens or u.completion_tokens:
        record = UsageRecord(
            request_id=env.request_id,
            attempt_id=attempt_id,
            key=env.key,
            provider=cand.provider,
            model=cand.model,
            client_model=env.model,
            op=env.op,
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            cached_tokens=u.cached_tokens,
            cost_usd=binding.cost(cand.model, u),
            status=event.status,
            ts=event.ts,
            estimated=u.estimated,
        )
    binding.telemetry.record(event, record)
