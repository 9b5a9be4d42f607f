"""The MQTT notifier against a real Mosquitto, including a broker outage."""

import asyncio
import json
import logging

import aiomqtt
import pytest

from ivr_engine.config import MqttSettings
from ivr_engine.events import MqttNotifier
from tests.support.mqtt_broker import PrivateBroker

pytestmark = pytest.mark.mqtt


@pytest.fixture
def broker(tmp_path):
    b = PrivateBroker(tmp_path)
    b.start()
    yield b
    b.stop()


async def _collect(port, topic, n, limit=10.0):
    got = []
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topic)
        async with asyncio.timeout(limit):
            async for message in client.messages:
                got.append((str(message.topic), json.loads(message.payload)))
                if len(got) >= n:
                    return got
    return got


async def test_events_published_in_order(broker):
    n = MqttNotifier(MqttSettings(port=broker.port, buffer=100), reconnect_min=0.05)
    await n.start()
    await asyncio.wait_for(n.connected.wait(), 5)
    collector = asyncio.create_task(_collect(broker.port, "ivr/call/#", 3))
    await asyncio.sleep(0.3)
    for i in range(3):
        n.publish(f"call/c1/Step{i}", {"event": f"Step{i}", "i": i})
    got = await collector
    assert [t for t, _ in got] == ["ivr/call/c1/Step0", "ivr/call/c1/Step1", "ivr/call/c1/Step2"]
    assert [p["i"] for _, p in got] == [0, 1, 2]
    await n.close()


async def test_outage_buffers_to_bound_drops_oldest_logs_once_and_resumes(broker, caplog):
    caplog.set_level(logging.WARNING, logger="ivr_engine.events")
    settings = MqttSettings(port=broker.port, buffer=5)
    n = MqttNotifier(settings, reconnect_min=0.05, reconnect_max=0.2)
    await n.start()
    await asyncio.wait_for(n.connected.wait(), 5)
    broker.stop()
    for _ in range(100):
        if not n.connected.is_set():
            break
        await asyncio.sleep(0.05)
    assert not n.connected.is_set()
    for i in range(12):  # publishing never blocks or raises while the broker is away
        n.publish(f"call/c2/E{i}", {"event": "E", "i": i})
    n.publish("queue/q1/stats", {"waiting": 1}, retain=True)
    n.publish("queue/q1/stats", {"waiting": 2}, retain=True)
    assert n.dropped == 7
    drop_lines = [r for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(drop_lines) == 1
    broker.start()
    await asyncio.wait_for(n.connected.wait(), 10)
    for _ in range(100):
        if n.pending == 0:
            break
        await asyncio.sleep(0.05)
    assert n.pending == 0
    # The retained statistic holds only its latest value; the five newest events survived.
    got = await _collect(broker.port, "ivr/queue/#", 1)
    assert got == [("ivr/queue/q1/stats", {"waiting": 2, "at": got[0][1]["at"]})]
    assert n.published == 6
    await n.close()
