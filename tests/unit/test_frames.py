"""Reply-inbox frames: numbered per attempt, split when large, checked by the ingress.

The worker's InboxSink numbers and splits; the ingress's Relay reassembles and fails a
request on any gap or reordering (a bus blip) instead of passing a damaged answer on.
"""

from __future__ import annotations

import time
from collections import deque

import pytest

from libs.common import contracts
from libs.common.contracts import Ack
from libs.common.errors import BusFramesLost
from services.ingress.proxy import Relay, Route
from services.worker.attempt import InboxSink


class FakeCall:
    ack = None  # the bus's decoded ack: none here, the relay decodes

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = deque(frames)

    async def next(self, timeout: float) -> bytes | None:
        return self.frames.popleft() if self.frames else None


def ack(attempt: int) -> bytes:
    a = Ack(provider="p", model="m", attempt=attempt, worker="w", plan_size=2)
    return contracts.frame(contracts.ACK, attempt, 0, contracts.encode(a))


def relay(frames: list[bytes]) -> Relay:
    return Relay(FakeCall(frames), Route("r"), 1.0, 1.0, time.monotonic() + 10)  # type: ignore[arg-type]


async def test_in_sequence_frames_pass():
    f = contracts.frame
    r = relay(
        [ack(1), f(contracts.KEEPALIVE, 1, 1), f(contracts.CHUNK, 1, 2, b"a"), f(contracts.DONE, 1, 3, b"{}")]
    )
    assert await r.frame() == (contracts.CHUNK, b"a")
    assert await r.frame() == (contracts.DONE, b"{}")


@pytest.mark.parametrize(
    "frames",
    [
        [ack(1), contracts.frame(contracts.CHUNK, 1, 2, b"b")],  # frame 1 lost
        [ack(1), contracts.frame(contracts.CHUNK, 1, 1, b"a"), contracts.frame(contracts.CHUNK, 1, 1, b"a")],
        [contracts.frame(contracts.CHUNK, 1, 1, b"a")],  # the ack lost
        [ack(1), contracts.frame(contracts.CHUNK, 2, 1, b"a")],  # the next attempt's ack lost
    ],
    ids=["gap", "repeat", "ack lost", "next ack lost"],
)
async def test_a_gap_or_reordering_fails_the_request(frames):
    r = relay(frames)
    with pytest.raises(BusFramesLost):
        while True:
            await r.frame()


async def test_a_handover_starts_a_new_sequence_and_late_frames_of_the_old_attempt_are_ignored():
    f = contracts.frame
    frames = [
        ack(1),
        f(contracts.MOVED, 1, 1, b"{}"),
        ack(2),
        f(contracts.KEEPALIVE, 1, 2),  # the first worker's keep-alive, late
        f(contracts.RESULT, 2, 1, b"{}"),
    ]
    r = relay(frames)
    assert await r.frame() == (contracts.RESULT, b"{}")
    assert r.route.attempts == 2


class FakeNats:
    max_payload = 64 + contracts.HEADER_SIZE

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def publish(self, subject: str, data: bytes) -> None:
        self.sent.append(bytes(data))


@pytest.mark.parametrize("size", [1, 64, 65, 200, 640])
async def test_a_payload_larger_than_one_message_travels_in_parts(size):
    nc = FakeNats()
    sink = InboxSink(nc, "_SW.p.1", 1)  # type: ignore[arg-type]
    await sink.send(contracts.ACK, contracts.encode(Ack(provider="p", model="m", attempt=1, worker="w")))
    payload = bytes(range(256)) * 3
    await sink.result(payload[:size])
    await sink.send(contracts.DONE, b"{}")
    assert all(len(m) <= FakeNats.max_payload for m in nc.sent)
    assert [contracts.parse_header(m)[2] for m in nc.sent] == list(range(len(nc.sent)))
    r = relay(nc.sent)
    assert await r.frame() == (contracts.RESULT, payload[:size])
    assert len(nc.sent) == 2 + -(-size // 64)


def test_old_acks_and_heartbeats_decode_with_the_new_decoders():
    """Contracts evolve additively: messages from a worker of the previous release still decode."""
    old_ack = b'{"provider":"p","model":"m","attempt":1,"worker":"w","reason":"ordered","plan_size":2}'
    ack = contracts.ack_decoder.decode(old_ack)
    assert (ack.worker, ack.beat) == ("w", 0)
    old_hb = b'{"worker":"w","providers":["p"],"in_flight":3}'
    hb = contracts.heartbeat_decoder.decode(old_hb)
    assert (hb.in_flight, hb.active, hb.draining, hb.beat) == (3, [], False, 0)
