"""The ACD on the real PBX (issue 6): real SIP callers and agent phones (pjsua2), the real
Asterisk of the dev PBX, the real daemon with `IVR_ACD_ROSTER` set, a private Mosquitto.

Witnesses: what the agent phones saw (which one rang, when, whether it connected), the screen
pops and agent events on MQTT (with their arrival times), and `ivr-engine agents list` asked
of the running daemon over MQTT, as an admin would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from simulate.sip import SimCall, SipStack
from tests.support.daemon import Daemon, run_cli
from tests.support.mqtt_broker import PrivateBroker

pytestmark = [pytest.mark.pbx, pytest.mark.sip, pytest.mark.mqtt, pytest.mark.slow]

# VIP, bound, Cantonese: the green channel straight to the vip queue with "cantonese and
# private_banking", no keys
CHEN = "13926000001"
ROSTER = """
queues:
  vip: {wrapup: 1}
agents:
  "1001": {skills: {private_banking: 8, cantonese: 7}}
  "1002": {skills: {private_banking: 6, mandarin: 8}}
  "1007": {skills: {cantonese: 9, cards: 6}}
"""


@pytest.fixture(scope="module")
def prompts_built() -> None:
    run_cli("prompts", "build")


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    b = PrivateBroker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def daemon(dev_pbx, hotline, prompts_built, broker, tmp_path):
    roster = tmp_path / "agents.yaml"
    roster.write_text(ROSTER)
    d = Daemon(
        tmp_path,
        extra_env={"IVR_ACD_ROSTER": str(roster), "IVR_ENGINE_MQTT_PORT": str(broker.port)},
    )
    d.seed(customers=0)
    d.start()
    yield d
    code = d.stop()
    assert code == 0, d.output()


@dataclass
class Mqtt:
    messages: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    def of(self, suffix: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, p) for t, topic, p in self.messages if topic.endswith(suffix)]


@contextlib.asynccontextmanager
async def capture(port: int) -> AsyncIterator[Mqtt]:
    seen = Mqtt()
    async with aiomqtt.Client("127.0.0.1", port, identifier="acd-test", timeout=5) as client:
        await client.subscribe("ivr/agent/#")
        await client.subscribe("ivr/acd/#")

        async def read() -> None:
            async for message in client.messages:
                payload = message.payload
                if isinstance(payload, bytes):
                    seen.messages.append((time.time(), str(message.topic), json.loads(payload)))

        reader = asyncio.create_task(read(), name="acd-test-mqtt")
        try:
            yield seen
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def agents_state(daemon: Daemon) -> dict[str, dict[str, Any]]:
    out = daemon.cli("agents", "list", "--json", "--timeout", "10")
    assert out.returncode == 0, (out.stdout, out.stderr, daemon.logs()[-3000:])
    return {a["agent"]: a for a in json.loads(out.stdout)}


def wait_states(daemon: Daemon, want: dict[str, str], timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        states = agents_state(daemon)
        if all(states[a]["state"] == s for a, s in want.items()):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"agents never reached {want}: {states}\n{daemon.logs()[-3000:]}")
        time.sleep(0.3)


@dataclass
class Phones:
    """What the agent phones saw. Only plain values leave the SipStack: a pjsua2 object that
    outlives its stack aborts the process when the next stack starts."""

    rang: dict[str, list[float]] = field(default_factory=dict)
    incoming: dict[str, int] = field(default_factory=dict)
    accounts: dict[str, Any] = field(default_factory=dict)


def run_scenario(
    sip_port: int,
    daemon: Daemon,
    agents: dict[str, float | None],
    body: Callable[[SipStack, Phones, SimCall], dict[str, Any]],
) -> dict[str, Any]:
    """Register `agents` (ext -> auto-answer delay, None = never answers), wait until the
    daemon has them ready, call as Chen, then run `body` (worker thread)."""
    phones = Phones()
    with SipStack() as stack:
        accounts = []
        for ext, answer_after in agents.items():
            phones.rang[ext] = []

            def on_incoming(call: SimCall, ext: str = ext) -> None:
                phones.rang[ext].append(time.time())

            acc = stack.agent(
                ext,
                f"agent-{ext}-dev",
                registrar=f"sip:127.0.0.1:{sip_port}",
                auto_answer_after=answer_after,
                on_incoming=on_incoming,
            )
            accounts.append(acc)
            phones.accounts[ext] = acc
        for acc in accounts:
            acc.wait_registered(10)
        stack.pump(0.5)
        wait_states(daemon, dict.fromkeys(agents, "ready"))
        call = stack.caller(CHEN).call(f"sip:4008@127.0.0.1:{sip_port}")
        try:
            result = body(stack, phones, call)
        finally:
            call.end()
            stack.pump(0.5)
            for acc in accounts:
                phones.incoming[acc.username] = len(acc.incoming)
                acc.unregister()
            stack.pump(0.5)
            phones.accounts.clear()
            accounts.clear()
            del call
        result["phones"] = phones
        return result


async def test_vip_reaches_the_skilled_agent_and_the_screen_pop_comes_first(
    dev_pbx, daemon, broker
):
    def body(stack: SipStack, phones: Phones, call: SimCall) -> dict[str, Any]:
        stack.wait_for(lambda: bool(phones.rang["1001"]), 60, "agent 1001's phone to ring")
        stack.wait_for(lambda: call.is_connected, 10, "the caller to be connected")
        stack.pump(2.0)  # a conversation
        connected = call.is_connected
        call.end()
        stack.pump(1.0)
        return {"connected": connected}

    async with capture(broker.port) as mqtt:
        # 1007 speaks Cantonese but has no private_banking: it must never ring.
        result = await asyncio.to_thread(
            run_scenario, dev_pbx.sip_port, daemon, {"1007": 0.2, "1001": 0.3}, body
        )
        await asyncio.sleep(0.5)
    phones: Phones = result["phones"]
    assert result["connected"]
    assert len(phones.rang["1001"]) == 1 and phones.rang["1007"] == []
    assert phones.incoming == {"1001": 1, "1007": 0}
    pops = mqtt.of("agent/1001/screenpop")
    assert len(pops) == 1, mqtt.messages
    pop_at, pop = pops[0]
    assert pop["queue"] == "vip" and pop["priority"] == 0 and pop["language"] == "yue"
    assert pop["data"]["tier"] == "vip" and pop["data"]["caller"].endswith("0001")
    assert CHEN not in json.dumps(pop)  # masked
    # The daemon sent the pop before it rang the agent's phone (the pop's own time, `at`, is
    # when the daemon queued it), and a subscriber had it with the ring: the publisher's drain
    # task and the broker race the AMI action and the INVITE, and on a slow VM the pop won by
    # only 5 ms (session 8), so the delivery is checked within 0.5 s of the ring, not before it.
    ring = phones.rang["1001"][0]
    assert pop["at"] <= ring, (pop["at"], phones.rang)
    assert pop_at <= ring + 0.5, (pop_at, phones.rang)
    print(f"screen pop {1000 * (ring - pop_at):.0f} ms before the ring")
    events = [p["event"] for _, p in mqtt.of("agent/1001/state")]
    assert events[:2] == ["CallConnected", "CallEnded"], events
    # The phones unregistered at the end of the scenario: their agents are logged out.
    states = wait_states(daemon, {"1001": "logged-out", "1007": "logged-out"})
    assert not states["1001"]["registered"]


async def test_ring_no_answer_requeues_then_pauses(dev_pbx, daemon, broker):
    """1001 never answers: rung, back to the queue, rung again (nobody else has the skill),
    then paused `no-answer` after the second miss; the caller waits on with music."""

    def body(stack: SipStack, phones: Phones, call: SimCall) -> dict[str, Any]:
        stack.wait_for(lambda: len(phones.rang["1001"]) >= 2, 60, "two rings of 1001")
        states = {}
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            stack.pump(0.5)
            states = agents_state(daemon)
            if states["1001"]["state"] == "paused":
                break
        stack.pump(2.0)
        rings_while_paused = len(phones.rang["1001"])
        resumed = daemon.cli("agents", "resume", "1001", "--timeout", "10").returncode
        stack.wait_for(lambda: len(phones.rang["1001"]) >= 3, 10, "a ring after the resume")
        return {
            "states": states,
            "caller_up": call.is_connected and not call.is_ended,
            "rings_while_paused": rings_while_paused,
            "resumed": resumed,
        }

    async with capture(broker.port) as mqtt:
        result = await asyncio.to_thread(
            run_scenario, dev_pbx.sip_port, daemon, {"1001": None}, body
        )
    phones: Phones = result["phones"]
    assert result["states"]["1001"]["state"] == "paused", result["states"]
    assert result["states"]["1001"]["reason"] == "no-answer"
    assert result["rings_while_paused"] == 2, phones.rang  # paused: not rung a third time
    assert result["resumed"] == 0 and len(phones.rang["1001"]) == 3  # resumed: offered again
    assert result["caller_up"]  # still waiting with music, not dropped
    misses = [p for _, p in mqtt.of("agent/1001/state") if p["event"] == "RingNoAnswer"]
    assert [m["status"] for m in misses][:2] == ["NOANSWER", "NOANSWER"]
    assert len(mqtt.of("agent/1001/screenpop")) == 3


async def test_caller_abandons_while_ringing_agent_ready_and_no_ghost_call(dev_pbx, daemon, broker):
    def body(stack: SipStack, phones: Phones, call: SimCall) -> dict[str, Any]:
        stack.wait_for(lambda: bool(phones.rang["1001"]), 60, "agent 1001's phone to ring")
        stack.pump(1.0)
        call.end()  # the caller gives up while the agent's phone rings
        hung_up = time.time()
        agent_call = phones.accounts["1001"].incoming[0]
        stack.wait_for(lambda: agent_call.is_ended, 5, "the ring to be cancelled")
        cancelled = time.time() - hung_up
        stack.pump(20.0)  # longer than the ring timeout: no ghost call may come
        return {"cancelled_after": cancelled, "states": agents_state(daemon)}

    async with capture(broker.port) as mqtt:
        result = await asyncio.to_thread(
            run_scenario, dev_pbx.sip_port, daemon, {"1001": None}, body
        )
    phones: Phones = result["phones"]
    assert len(phones.rang["1001"]) == 1, phones.rang
    assert result["cancelled_after"] < 2.0, result
    assert result["states"]["1001"]["state"] == "ready", result["states"]
    withdrawn = [p for _, p in mqtt.of("agent/1001/state") if p["event"] == "OfferWithdrawn"]
    assert len(withdrawn) == 1 and withdrawn[0]["reason"] == "caller-hung-up"
