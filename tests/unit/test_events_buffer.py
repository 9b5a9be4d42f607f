"""MqttNotifier's buffer: `mqtt.buffer` bounds an outage, not a burst with the broker up."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest

from ivr_engine.config import MqttSettings
from ivr_engine.events import CONNECTED_BUFFER_MIN, MqttNotifier


def _notifier(buffer: int) -> MqttNotifier:
    return MqttNotifier(MqttSettings(buffer=buffer))


def _calls(n: MqttNotifier) -> list[int]:
    return [json.loads(e.payload)["n"] for e in n._buffer]


async def test_broker_away_keeps_the_newest_events_and_logs_the_drop_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    n = _notifier(4)
    with caplog.at_level(logging.ERROR, logger="ivr_engine.events"):
        for i in range(10):
            n.publish("call/1/NodeEntered", {"n": i})
    assert _calls(n) == [6, 7, 8, 9] and n.dropped == 6
    full = [r for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(full) == 1 and "until the broker" in full[0].getMessage()


async def test_a_burst_with_the_broker_connected_is_not_dropped_by_a_small_outage_buffer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    n = _notifier(4)
    n.connected.set()  # the drain has not run yet: the events of this moment wait for it
    with caplog.at_level(logging.ERROR, logger="ivr_engine.events"):
        for i in range(10):
            n.publish("call/1/NodeEntered", {"n": i})
    assert _calls(n) == list(range(10)) and n.dropped == 0
    assert not caplog.records


async def test_a_broker_too_slow_while_connected_still_bounds_the_buffer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    n = _notifier(4)
    n.connected.set()
    with caplog.at_level(logging.ERROR, logger="ivr_engine.events"):
        for i in range(CONNECTED_BUFFER_MIN + 5):
            n.publish("call/1/NodeEntered", {"n": i})
    assert len(n._buffer) == CONNECTED_BUFFER_MIN and n.dropped == 5
    assert _calls(n)[0] == 5
    full = [r for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(full) == 1 and "connected" in full[0].getMessage()


async def test_an_outage_after_a_slow_spell_logs_its_own_first_drop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:  # a port nobody listens on: the broker is away
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    n = MqttNotifier(MqttSettings(port=port, buffer=4), reconnect_min=0.05, reconnect_max=0.05)
    n.connected.set()
    with caplog.at_level(logging.ERROR, logger="ivr_engine.events"):
        for i in range(CONNECTED_BUFFER_MIN + 1):  # slow broker: one drop, logged
            n.publish("call/1/NodeEntered", {"n": i})
        n.connected.clear()
        await n.start()
        try:
            for _ in range(100):
                if any("unavailable" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.02)
            for i in range(10):
                n.publish("call/2/NodeEntered", {"n": i})
        finally:
            await n.close(flush_timeout=0)
    full = [r.getMessage() for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(full) == 2 and "connected" in full[0] and "until the broker" in full[1], full
    assert len(n._buffer) == 4
