"""Helpers for the fault suite: a hotline call from a simulated caller, an MQTT capture, and
the ACD's witnesses (queue events from the daemon's log, agent states from `agents list`)."""

from __future__ import annotations

import contextlib
import gc
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from simulate.script import parse, run
from simulate.sip import SimTimeout, SipStack
from tests.support.daemon import Daemon, idle


@contextlib.contextmanager
def sip_stack() -> Iterator[SipStack]:
    """`with SipStack()`, plus: the pjsua2 Endpoint is freed on the way out even when a
    failing test's traceback keeps the stack alive. pjsua2 allows one Endpoint per process and
    aborts the process (not a Python error) when a second is created, so one failed test
    would otherwise take every later SIP test of the session down with it."""
    stack = SipStack()
    try:
        with stack:
            yield stack
    finally:
        stack.ep = None
        gc.collect()


@dataclass
class CallResult:
    steps: list[str]
    speech: int
    heard: float
    seconds: float
    first_speech: float | None  # media seconds from answer to the first prompt heard


def call_hotline(
    sip_port: int, number: str, script: str, *, max_seconds: float = 60.0
) -> CallResult:
    """One caller: dial 4008, run the DTMF script, hang up if the PBX has not (own SipStack)."""
    t0 = time.monotonic()
    with sip_stack() as stack:
        call = stack.caller(number).call(f"sip:4008@127.0.0.1:{sip_port}")
        call.wait_connected(15)
        steps = run(call, parse(script), prompt_timeout=60)
        # Let the PBX end the call (hanging up across its own BYE can abort pjsua2).
        try:
            stack.wait_for(lambda: call.is_ended, max_seconds, "the PBX to end the call")
        except SimTimeout:
            call.end()
            stack.wait_for(lambda: call.is_ended, 10, "the call to end")
        segments = call.speech().segments
        return CallResult(
            steps,
            len(segments),
            call.heard_seconds(),
            time.monotonic() - t0,
            segments[0][0] if segments else None,
        )


@dataclass
class MqttCapture:
    """Subscribes to `#` on a broker and keeps every message; reconnects on its own (paho's
    loop thread), so it captures again after a broker restart. It can publish too."""

    port: int
    messages: list[tuple[float, str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fault-capture")
        self._client.reconnect_delay_set(0.1, 1)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._subscribed = threading.Event()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:  # type: ignore[no-untyped-def]
        client.subscribe("#", qos=1)
        self._subscribed.set()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self.messages.append((time.monotonic(), message.topic, bytes(message.payload)))

    def start(self) -> None:
        self._client.connect_async("127.0.0.1", self.port, keepalive=5)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError(f"MQTT capture could not subscribe on port {self.port}")
        time.sleep(0.2)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        """Publish on the capture's own connection; returns once the broker has it."""
        info = self._client.publish(topic, payload, qos=qos)
        info.wait_for_publish(10)
        if not info.is_published():
            raise RuntimeError(f"MQTT publish to {topic} not acknowledged")

    def topics(self) -> list[str]:
        with self._lock:
            return [t for _, t, _ in self.messages]

    def wait_for(self, predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            idle(0.1)


# ----------------------------------------------------------------------------- the ACD


def queue_events(daemon: Daemon, call_id: str | None = None) -> list[tuple[str, str, str]]:
    """(verb, call id, agent) of the router's queue events as the daemon's queue_log table
    holds them (its writer inserts within milliseconds), in order; only `call_id`'s if given.
    Steps that are not queue_log verbs (REBUILT, callbacks) are in the daemon's log only."""
    if not daemon.db.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{daemon.db}?mode=ro", uri=True)) as db:
        try:
            rows = db.execute("SELECT event, callid, agent FROM queue_log ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []
    return [(v, c, a) for v, c, a in rows if call_id is None or c == call_id]


def agent_states(daemon: Daemon) -> dict[str, dict[str, Any]]:
    """`ivr-engine agents list --json` asked of the running daemon, as an admin would."""
    out = daemon.cli("agents", "list", "--json", "--timeout", "10")
    return {a["agent"]: a for a in json.loads(out.stdout)}


def wait_agent_states(
    daemon: Daemon, want: dict[str, str], timeout: float = 15.0
) -> dict[str, dict[str, Any]]:
    """Poll `agents list` until every agent in `want` is in its state; raise with the last
    answer and the daemon's log tail otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        states = agent_states(daemon)
        if all(a in states and states[a]["state"] == s for a, s in want.items()):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"agents never reached {want}: {states}\n{daemon.logs()[-3000:]}")
        idle(0.3)
