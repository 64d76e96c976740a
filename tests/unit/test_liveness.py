"""libs/common/liveness.py: a peer is gone after SILENT_S of silence this process could hear."""

from __future__ import annotations

import time

from libs.common import liveness
from libs.common.liveness import Liveness


class FakeNats:
    def __init__(self) -> None:
        self.is_connected = True
        self.stats = {"reconnects": 0}


def test_a_silent_peer_is_gone_a_heard_one_is_not(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    nc = FakeNats()
    lv = Liveness(nc)
    lv.saw("w1")
    for _ in range(8):  # 2 s of checks, every CHECK_S
        clock[0] += liveness.CHECK_S
        now = lv.tick()
    lv.saw("w2")
    clock[0] += liveness.CHECK_S
    now = lv.tick()
    assert lv.gone("w1", 100.0, now) and not lv.gone("w2", 100.0, now)
    # A peer never heard from counts from when it was expected (its request's ack).
    assert not lv.gone("w3", now - 1.0, now) and lv.gone("w3", now - 2.5, now)


def test_silence_while_disconnected_or_stalled_does_not_count(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    nc = FakeNats()
    lv = Liveness(nc)
    lv.saw("w1")
    nc.is_connected = False
    clock[0] += 3.0
    lv.tick()  # an outage: deaf, nobody condemned for it
    nc.is_connected, nc.stats["reconnects"] = True, 1
    clock[0] += liveness.CHECK_S
    now = lv.tick()
    assert not lv.gone("w1", 100.0, now)
    clock[0] += 5.0  # this process's loop blocked for 5 s: its peers' heartbeats are queued
    now = lv.tick()
    assert not lv.gone("w1", 100.0, now)
    for _ in range(9):
        clock[0] += liveness.CHECK_S
        now = lv.tick()
    assert lv.gone("w1", 100.0, now)  # then really silent: gone
