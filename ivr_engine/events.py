"""The one place events leave the process: an MQTT notifier.

`publish()` never blocks and never fails a call: events go into a bounded buffer that a single
owned task drains into the broker. When the broker is away the buffer fills; past its bound
(`mqtt.buffer`; with the broker connected at least `CONNECTED_BUFFER_MIN`) the oldest events
are dropped, counted, and the outage is logged once (not once per event). When the
broker returns, publishing resumes with what the buffer still holds. Retained topics (live queue
statistics) keep only their latest value in the buffer.

Topic layout (prefix from settings, default `ivr`):
  ivr/call/<call_id>/<event>      call lifecycle (CallStarted, NodeEntered, CallEnded, ...)
  ivr/queue/<queue>/stats         retained live statistics
  ivr/agent/<agent_id>/screenpop  the screen pop for the offered agent
  ivr/agent/<agent_id>/state      agent state changes
Payloads are JSON objects with `event` (past tense name) and `at` (unix time) fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt

from ivr_engine.config import MqttSettings

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], Awaitable[None]]

# Seconds the drain waits after the first new event, so that the events of that moment go out
# together rather than one wake-up of the drain task each.
COALESCE_S = 0.005
# QoS 0 events are handed to paho without awaiting each one: aiomqtt's `publish()` costs
# about five event-loop turns and a task per message (measured: ~140 us of CPU per event at
# 3,000 events/s, 10 events a call). paho queues them and one socket write sends the lot.
# Past this many packets not yet written, the drain waits for the socket to catch up.
MAX_UNWRITTEN = 1000
# While the broker is connected the buffer only holds the events of the moment until the drain
# runs (COALESCE_S): `mqtt.buffer` bounds an outage, and a small one must not drop a call's
# burst of events with the broker up. Connected, the bound is at least this many.
CONNECTED_BUFFER_MIN = MAX_UNWRITTEN


@dataclass(frozen=True)
class _Event:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class MqttNotifier:
    """Buffers events and publishes them; also delivers subscribed command topics."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str = "ivr-engine",
        reconnect_min: float = 0.5,
        reconnect_max: float = 10.0,
        coalesce: float = COALESCE_S,
    ) -> None:
        self.settings = settings
        self._coalesce = coalesce
        self.prefix = settings.topic_prefix.strip("/")
        self._client_id = client_id
        self._buffer: deque[_Event] = deque()
        self._retained: OrderedDict[str, _Event] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._emptied = asyncio.Event()
        self._subscriptions: dict[str, MessageHandler] = {}
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.published = 0
        self.dropped = 0
        self._outage_logged = False
        self._drop_logged = False

    # --- producer side (sync, never blocks) ---
    def topic(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    def publish(
        self,
        topic: str,
        payload: Mapping[str, Any],
        *,
        retain: bool = False,
        qos: int = 0,
    ) -> None:
        """Queue one event. `topic` is relative to the prefix (e.g. "call/123/CallEnded")."""
        body = dict(payload)
        body.setdefault("at", round(time.time(), 3))
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str).encode()
        event = _Event(self.topic(topic), data, retain, qos)
        if retain:
            self._retained[event.topic] = event
            self._retained.move_to_end(event.topic)
        else:
            self._buffer.append(event)
            limit = self.settings.buffer
            if self.connected.is_set():
                limit = max(limit, CONNECTED_BUFFER_MIN)
            while len(self._buffer) > limit:
                self._buffer.popleft()
                self._note_drop()
        self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._buffer) + len(self._retained)

    def _note_drop(self) -> None:
        self.dropped += 1
        if not self._drop_logged:
            self._drop_logged = True
            if self.connected.is_set():
                log.error(
                    "MQTT event buffer full (%d events) with the broker at %s:%d connected: "
                    "it takes events more slowly than they come; dropping the oldest",
                    len(self._buffer),
                    self.settings.host,
                    self.settings.port,
                )
                return
            log.error(
                "MQTT event buffer full (%d events): dropping the oldest until the broker at "
                "%s:%d is back",
                self.settings.buffer,
                self.settings.host,
                self.settings.port,
            )

    # --- subscriptions (commands in) ---
    def subscribe(self, topic: str, handler: MessageHandler) -> None:
        """Deliver messages on `topic` (relative to the prefix, wildcards allowed) to handler."""
        self._subscriptions[self.topic(topic)] = handler

    # --- lifecycle ---
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mqtt-notifier")

    async def close(self, *, flush_timeout: float = 2.0) -> None:
        """Try to flush what is buffered for up to `flush_timeout`, then stop."""
        if self._task is None:
            return
        if self.pending and self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_timeout):
                    await self._emptied.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self.pending:
            log.warning("MQTT notifier stopped with %d events unpublished", self.pending)

    async def _run(self) -> None:
        delay = self._reconnect_min
        while True:
            try:
                async with aiomqtt.Client(
                    self.settings.host,
                    self.settings.port,
                    identifier=self._client_id,
                    username=self.settings.username or None,
                    password=self.settings.password or None,
                    timeout=5,
                ) as client:
                    self._client = client
                    for topic in self._subscriptions:
                        await client.subscribe(topic, qos=1)
                    self.connected.set()
                    if self._outage_logged or delay > self._reconnect_min:
                        log.warning(
                            "MQTT broker %s:%d reachable again; %d events dropped so far",
                            self.settings.host,
                            self.settings.port,
                            self.dropped,
                        )
                    self._outage_logged = self._drop_logged = False
                    delay = self._reconnect_min
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._drain(client), name="mqtt-drain")
                        # Always read: that is how a lost connection is noticed while idle.
                        tg.create_task(self._receive(client), name="mqtt-receive")
            except* aiomqtt.MqttError as group:
                self.connected.clear()
                self._client = None
                if not self._outage_logged:
                    self._outage_logged = True
                    self._drop_logged = False  # this outage's first drop is logged
                    log.error(
                        "MQTT broker %s:%d unavailable (%s); buffering up to %d events",
                        self.settings.host,
                        self.settings.port,
                        group.exceptions[0],
                        self.settings.buffer,
                    )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max)

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            while self._retained or self._buffer:
                if self._retained:
                    _, event = self._retained.popitem(last=False)
                else:
                    event = self._buffer[0]
                    if event.qos == 0:
                        self._publish_now(client, event)  # MqttError: kept, as below
                        self._buffer.popleft()
                        self.published += 1
                        if self.published % 100 == 0:  # a long backlog must not hold the loop
                            await asyncio.sleep(0)
                        await self._catch_up(client)
                        continue
                try:
                    await client.publish(
                        event.topic, event.payload, qos=event.qos, retain=event.retain
                    )
                except aiomqtt.MqttError:
                    # Keep the event for the next connection.
                    if event.retain:
                        self._retained.setdefault(event.topic, event)
                    raise
                if not event.retain:
                    self._buffer.popleft()
                self.published += 1
            await self._catch_up(client, 0)  # written, before "emptied" lets close() go on
            self._wakeup.clear()
            self._emptied.set()
            await self._wakeup.wait()
            self._emptied.clear()
            if self._coalesce > 0:
                await asyncio.sleep(self._coalesce)

    @staticmethod
    def _publish_now(client: aiomqtt.Client, event: _Event) -> None:
        """Queue one QoS 0 message in paho without waiting for it to be written (what
        `aiomqtt.Client.publish` does before it awaits paho's confirmation)."""
        info = client._client.publish(event.topic, event.payload, 0, event.retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")

    @staticmethod
    async def _catch_up(client: aiomqtt.Client, limit: int = MAX_UNWRITTEN) -> None:
        """Back-pressure: while paho holds more than `limit` unwritten packets, let the loop
        write them (paho signals nothing when its queue empties: it is looked at)."""
        while len(getattr(client._client, "_out_packet", ())) > limit:  # noqa: ASYNC110
            await asyncio.sleep(0.002)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:  # raises MqttError when the connection drops
            topic = str(message.topic)
            payload = (
                message.payload
                if isinstance(message.payload, bytes)
                else str(message.payload).encode()
            )
            for pattern, handler in self._subscriptions.items():
                if message.topic.matches(pattern):
                    try:
                        await handler(topic, payload)
                    except Exception:  # one bad command must not stop the notifier
                        log.exception("MQTT handler for %s failed", topic)
