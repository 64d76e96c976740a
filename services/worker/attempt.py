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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from libs.common import contracts, subjects, tracing
from libs.common.contracts import AttemptEvent, Candidate, Done, Moved, UsageRecord
from libs.common.errors import GatewayTimeout, InternalError, InvalidRequest, SwitchmanError, UpstreamError
from libs.common.subjects import H

from .chunks import Usage
from .params import fit

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from .service import Binding

_decode_body = msgspec.json.Decoder(dict).decode


class InboxSink:
    """Frames to the client's reply inbox; remembers when the first byte went out."""

    __slots__ = ("nc", "reply", "started", "first_at", "last_at")

    def __init__(self, nc: NATS, reply: str) -> None:
        self.nc = nc
        self.reply = reply
        self.started = False
        self.first_at = 0.0
        self.last_at = time.monotonic()

    def _mark(self) -> None:
        now = time.monotonic()
        if not self.started:
            self.started = True
            self.first_at = now
        self.last_at = now

    async def chunk(self, data: bytes) -> None:
        self._mark()
        await self.nc.publish(self.reply, b"C" + data)

    async def result(self, body: bytes) -> None:
        self._mark()
        await self.nc.publish(self.reply, b"R" + body)

    async def frame(self, data: bytes) -> None:
        self.last_at = time.monotonic()
        await self.nc.publish(self.reply, data)


@dataclass(slots=True)
class Routed:
    """What the routing headers say about this attempt."""

    op: str
    plan: list[Candidate]
    attempt: int
    stream: bool
    deadline: float | None  # unix seconds
    request_id: str
    key: str | None
    client_model: str

    @property
    def target(self) -> Candidate:
        return self.plan[self.attempt - 1]

    @classmethod
    def from_headers(cls, h: dict[str, str]) -> Routed:
        deadline = h.get(H.DEADLINE)
        return cls(
            op=h.get(H.OP, "chat"),
            plan=contracts.plan_decoder.decode(h[H.PLAN]),
            attempt=int(h.get(H.ATTEMPT, "1")),
            stream=h.get(H.STREAM) == "1",
            deadline=int(deadline) / 1000 if deadline else None,
            request_id=h.get(H.REQUEST_ID, ""),
            key=h.get(H.KEY),
            client_model=h.get(H.MODEL, ""),
        )


async def execute(
    nc: NATS, binding: Binding, routed: Routed, body: bytes, headers: dict[str, str], sink: InboxSink, worker: str
) -> None:
    attempt_id = os.urandom(8).hex()
    started = time.monotonic()
    usage: Usage | None = None
    error: SwitchmanError | None = None
    target = routed.target
    try:
        with tracing.span("worker.attempt", tracing.CONSUMER, headers, provider=target.provider, model=target.model):
            usage = await _run(binding, routed, body, sink)
        if routed.stream:
            u = usage or Usage()
            await sink.frame(contracts.done_frame(Done(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens)))
    except SwitchmanError as e:
        error = e
    except asyncio.CancelledError:
        # Client gone or shutting down: the one terminal frame still goes out.
        error = UpstreamError("the request was cancelled (gateway shutting down or client gone)")
        await _fail(nc, sink, routed, body, headers, error, target)
        await _report(nc, binding, routed, attempt_id, started, sink, usage, error)
        raise
    except Exception as e:  # a bug: never a hang, never a silent end
        binding.log.exception("attempt_crashed", provider=target.provider)
        error = InternalError(f"internal error in the worker: {type(e).__name__}")
    if error is not None:
        error.provider = error.provider or target.provider
        await _fail(nc, sink, routed, body, headers, error, target)
    await _report(nc, binding, routed, attempt_id, started, sink, usage, error)


async def _run(binding: Binding, routed: Routed, body: bytes, sink: InboxSink) -> Usage | None:
    try:
        req: dict[str, Any] = _decode_body(body)
    except msgspec.DecodeError:
        raise InvalidRequest("the request body is not a JSON object") from None
    fit(req, binding.profile, binding.provider.id, binding.provider.drop_params)
    coro = binding.protocol.run(binding.upstream, sink, routed.op, req, routed.target.model, routed.stream)
    if routed.deadline is None:
        return await coro
    remaining = routed.deadline - time.time()
    try:
        async with asyncio.timeout(max(remaining, 0.001)):
            return await coro
    except TimeoutError:
        raise GatewayTimeout("the request deadline passed before the provider finished") from None


async def _fail(
    nc: NATS, sink: InboxSink, routed: Routed, body: bytes, headers: dict[str, str],
    error: SwitchmanError, target: Candidate,
) -> None:
    past_deadline = routed.deadline is not None and time.time() >= routed.deadline
    if not sink.started and error.retryable and routed.attempt < len(routed.plan) and not past_deadline:
        nxt = routed.plan[routed.attempt]
        await sink.frame(
            contracts.moved_frame(
                Moved(provider=target.provider, attempt=routed.attempt, status=error.status,
                      message=error.message, next_provider=nxt.provider)
            )
        )
        out = dict(headers)
        out[H.ATTEMPT] = str(routed.attempt + 1)
        tracing.inject(out)
        await nc.publish(subjects.exec_subject(nxt.provider), body, reply=sink.reply, headers=out)
        return
    await sink.frame(contracts.error_frame(error.frame()))


async def _report(
    nc: NATS, binding: Binding, routed: Routed, attempt_id: str, started: float,
    sink: InboxSink, usage: Usage | None, error: SwitchmanError | None,
) -> None:
    """Attempt event for health, usage record for the ledger (after the terminal frame)."""
    now = time.monotonic()
    target = routed.target
    u = usage or Usage()
    event = AttemptEvent(
        request_id=routed.request_id, attempt_id=attempt_id, provider=target.provider, model=target.model,
        op=routed.op, status=200 if error is None else error.status, latency_ms=(now - started) * 1000,
        ttft_ms=(sink.first_at - started) * 1000 if sink.started else None,
        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
        error_type=None if error is None else type(error).__name__, stream=routed.stream, ts=time.time(),
    )
    await nc.publish(subjects.ATTEMPT_EVENTS, contracts.encode(event))
    if u.prompt_tokens or u.completion_tokens:
        record = UsageRecord(
            request_id=routed.request_id, attempt_id=attempt_id, key=routed.key, provider=target.provider,
            model=target.model, client_model=routed.client_model, op=routed.op,
            prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, cached_tokens=u.cached_tokens,
            cost_usd=binding.cost(target.model, u), status=event.status, ts=event.ts,
        )
        await nc.publish(
            subjects.usage_subject(target.provider), contracts.encode(record), headers={"Nats-Msg-Id": attempt_id}
        )
