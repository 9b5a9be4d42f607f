"""The caller's side of the ACD on the real PBX (issue 6): who is served first, who may serve a
Cantonese caller, what a waiting caller hears, and the recording of the agent call.

Real parts: the dev PBX's Asterisk, the real daemon (`ivr-engine serve`, the ACD on by default
with a roster written per test), SIP callers and agent phones from pjsua2, a private Mosquitto.
Witnesses: which agent phone rang for which caller (the caller ID it saw), the ACD's MQTT
events (queued, screen pops, announcements, agent states), the daemon's log, and the recording
file MixMonitor wrote inside the PBX root.

The callers are the demo personas (flows/hotline.yaml):
- Chen 13926000001: VIP green channel, no keys: queue vip, "cantonese and private_banking",
  priority 10;
- a withheld caller, "p2,0": queue general, "mandarin and any", priority 2;
- the Shenzhen landline 075582345678, "w,0": queue cantonese, "cantonese and any", priority 3.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulate.script import parse, run
from simulate.sip import SimCall, SipStack
from tests.integration.test_acd_pbx import Mqtt, capture, wait_states
from tests.support.daemon import Daemon, run_cli
from tests.support.mqtt_broker import PrivateBroker

pytestmark = [pytest.mark.pbx, pytest.mark.sip, pytest.mark.mqtt, pytest.mark.slow]

CHEN = "13926000001"
SHENZHEN = "075582345678"
#: Where MixMonitor writes in these tests (inside the PBX root).
RECORDINGS = "/var/spool/asterisk/monitor/acd-test"


@pytest.fixture(scope="module")
def prompts_built() -> None:
    run_cli("prompts", "build")


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    b = PrivateBroker(tmp_path)
    b.start()
    yield b
    b.stop()


def start_daemon(tmp_path: Path, broker: PrivateBroker, roster: str, **acd: str) -> Daemon:
    path = tmp_path / "agents.yaml"
    path.write_text(roster)
    env = {
        "IVR_ENGINE_ACD_ROSTER": str(path),
        "IVR_ENGINE_MQTT_PORT": str(broker.port),
        "IVR_ENGINE_ACD_RECORDINGS_DIR": RECORDINGS,
    }
    env.update({f"IVR_ENGINE_ACD_{k.upper()}": v for k, v in acd.items()})
    d = Daemon(tmp_path, extra_env=env)
    d.seed(customers=0)
    d.start()
    return d


def stop_daemon(d: Daemon) -> None:
    code = d.stop()
    assert code == 0, d.output()


def poll(condition: Callable[[], bool], timeout: float) -> bool:
    """Wait (in a worker thread) until `condition()` or the timeout; returns the last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def queued(mqtt: Mqtt, queue: str) -> list[dict[str, Any]]:
    return [p for _, p in mqtt.of("/queued") if p.get("queue") == queue]


def wait_queued(stack: SipStack, mqtt: Mqtt, queue: str, count: int = 1) -> str:
    stack.wait_for(lambda: len(queued(mqtt, queue)) >= count, 90, f"a call queued for {queue}")
    return str(queued(mqtt, queue)[count - 1]["call_id"])


class Phone:
    """An agent phone's witness: (time, caller URI) of every call that rang it."""

    def __init__(
        self, stack: SipStack, sip_port: int | None, ext: str, answer: float | None
    ) -> None:
        self.ext = ext
        self.rang: list[tuple[float, str]] = []
        self.account: Any = stack.agent(
            ext,
            f"agent-{ext}-dev",
            registrar=f"sip:127.0.0.1:{sip_port}" if sip_port else None,
            auto_answer_after=answer,
            on_incoming=self._rang,
        )

    def _rang(self, call: SimCall) -> None:
        self.rang.append((time.time(), call.remote_uri or call.getInfo().remoteUri))


def dial_hotline(stack: SipStack, sip_port: int, number: str, script: str) -> SimCall:
    call = stack.caller(number, withheld=not number).call(f"sip:4008@127.0.0.1:{sip_port}")
    call.wait_connected(15)
    run(call, parse(script), prompt_timeout=40)
    return call


def hang_up_all(stack: SipStack, calls: list[SimCall], phones: list[Phone]) -> None:
    for call in calls:
        call.end()
    stack.pump(0.5)
    for phone in phones:
        for call in phone.account.incoming:
            call.end()
        if phone.account.registered:
            phone.account.unregister()
    stack.pump(0.5)
    for phone in phones:  # the account refers back to the Phone: break the cycle
        phone.account.on_incoming = None
        phone.account = None
    phones.clear()
    calls.clear()


Scenario = Callable[[SipStack, "list[Phone]", list[SimCall]], dict[str, Any]]


def in_stack(body: Scenario, port: int = 0) -> dict[str, Any]:
    """Run `body` (worker thread) in its own SipStack. Only plain values may leave it: a pjsua2
    object that outlives its stack aborts the process when the next stack starts, so every
    phone and call is dropped here, also when the body fails (its frames hold them)."""
    with SipStack(port=port) as stack:
        phones: list[Phone] = []
        calls: list[SimCall] = []
        try:
            return body(stack, phones, calls)
        except BaseException as exc:
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            hang_up_all(stack, calls, phones)


# ----------------------------------------------------------------------------- VIP first

VIP_ROSTER = """
defaults: {join_empty: true, wrapup: 1}
queues:
  vip: {weight: 60}
  general: {}
agents:
  "1001": {skills: {private_banking: 8, cantonese: 7, mandarin: 9}}
"""


async def test_vip_overtakes_waiting_standard_callers_and_the_call_is_recorded(
    dev_pbx, hotline, prompts_built, broker, tmp_path
):
    """Two standard callers wait (the only agent is paused); Chen (VIP) comes last; when the
    agent resumes, Chen rings first. The agent call is recorded while bridged only."""
    daemon = start_daemon(tmp_path, broker, VIP_ROSTER, announce_every="0")

    def scenario(stack: SipStack, phones: list[Phone], calls: list[SimCall]) -> dict[str, Any]:
        phones[:] = [Phone(stack, dev_pbx.sip_port, "1001", 0.3)]
        phones[0].account.wait_registered(10)
        stack.pump(0.5)
        wait_states(daemon, {"1001": "ready"})
        daemon.cli("agents", "pause", "1001", "break", "--timeout", "10")
        wait_states(daemon, {"1001": "paused"})
        calls.append(dial_hotline(stack, dev_pbx.sip_port, "", "p2,0"))
        first = wait_queued(stack, mqtt, "general")
        calls.append(dial_hotline(stack, dev_pbx.sip_port, "", "p2,0"))
        second = wait_queued(stack, mqtt, "general", 2)
        calls.append(dial_hotline(stack, dev_pbx.sip_port, CHEN, ""))
        vip = wait_queued(stack, mqtt, "vip")
        stack.pump(1.0)
        rang_before_resume = list(phones[0].rang)
        daemon.cli("agents", "resume", "1001", "--timeout", "10")
        stack.wait_for(lambda: bool(phones[0].rang), 20, "1001 to ring")
        chen = calls[2]
        stack.wait_for(
            lambda: (
                chen.is_connected
                and bool(phones[0].account.incoming)
                and phones[0].account.incoming[0].is_connected
            ),
            10,
            "connected",
        )
        stack.pump(3.0)  # the conversation, recorded
        chen.end()
        # wrap-up (1 s), then the first standard caller, then the second
        stack.wait_for(lambda: len(phones[0].rang) >= 2, 30, "the next offer")
        stack.pump(2.0)
        phones[0].account.incoming[1].end()
        stack.wait_for(lambda: len(phones[0].rang) >= 3, 30, "the third offer")
        stack.pump(1.0)
        return {
            "ids": (first, second, vip),
            "rang_before_resume": rang_before_resume,
            "rang": list(phones[0].rang),
        }

    try:
        async with capture(broker.port) as mqtt:
            result = await asyncio.to_thread(in_stack, scenario)
            await asyncio.sleep(0.5)
    finally:
        stop_daemon(daemon)
    first, second, vip = result["ids"]
    assert result["rang_before_resume"] == []  # paused: nobody rang
    pops = [p["call_id"] for _, p in mqtt.of("agent/1001/screenpop")]
    # the VIP came last and was served first; then the standard callers in arrival order
    assert pops[:3] == [vip, first, second], (pops, result["ids"])
    assert CHEN in result["rang"][0][1] and CHEN not in result["rang"][1][1]
    # recorded: the CONNECT event names the file MixMonitor wrote inside the PBX root
    connected = [p for _, p in mqtt.of("agent/1001/state") if p["event"] == "CallConnected"]
    assert connected[0]["call_id"] == vip, connected
    recording = connected[0]["recording"]
    assert recording.startswith(f"{RECORDINGS}/") and recording.endswith(f"-{vip}-1001.wav")
    wav = dev_pbx.in_root(recording)
    await asyncio.to_thread(poll, lambda: wav.exists() and wav.stat().st_size > 8000, 10)
    # about 3 s of bridged audio at 8 kHz 16-bit (48 KB/s): the IVR part is not in it
    size = wav.stat().st_size
    print(f"recording {recording}: {size} bytes")
    assert 8000 < size < 16000 * 20, size


# ----------------------------------------------------------------------------- Cantonese

YUE_ROSTER = """
defaults: {join_empty: true, wrapup: 1}
queues:
  cantonese:
    steps:
      - {after: 12, accept: mandarin}
agents:
  "1005": {skills: {cantonese: 9, mandarin: 5}}
  "1007": {skills: {mandarin: 9, cards: 6}}
"""


async def test_cantonese_caller_reaches_a_yue_agent_and_a_mandarin_one_only_after_relaxation(
    dev_pbx, hotline, prompts_built, broker, tmp_path
):
    daemon = start_daemon(tmp_path, broker, YUE_ROSTER, announce_every="0")

    def scenario(stack: SipStack, phones: list[Phone], calls: list[SimCall]) -> dict[str, Any]:
        phones[:] = [
            Phone(stack, dev_pbx.sip_port, "1005", 0.3),
            Phone(stack, dev_pbx.sip_port, "1007", 0.3),
        ]
        yue, mandarin = phones
        for p in phones:
            p.account.wait_registered(10)
        stack.pump(0.5)
        wait_states(daemon, {"1005": "ready", "1007": "ready"})
        # 1: both ready: the Cantonese speaker takes it, the Mandarin-only one never rings
        calls.append(dial_hotline(stack, dev_pbx.sip_port, SHENZHEN, "w,0"))
        wait_queued(stack, mqtt, "cantonese")
        stack.wait_for(lambda: bool(yue.rang), 20, "1005 to ring")
        stack.pump(2.0)
        calls[0].end()
        stack.pump(2.0)
        first = {"yue": len(yue.rang), "mandarin": len(mandarin.rang)}
        # 2: the Cantonese speaker on a break: the Mandarin-only agent waits for the
        # relaxation step (12 s after the call queued)
        daemon.cli("agents", "pause", "1005", "break", "--timeout", "10")
        wait_states(daemon, {"1005": "paused", "1007": "ready"})
        calls.append(dial_hotline(stack, dev_pbx.sip_port, SHENZHEN, "w,0"))
        wait_queued(stack, mqtt, "cantonese", 2)
        queued_at = time.time()
        stack.wait_for(lambda: bool(mandarin.rang), 40, "1007 to ring after relaxation")
        waited = mandarin.rang[0][0] - queued_at
        stack.pump(1.0)
        return {"first": first, "waited": waited, "yue_rang": len(yue.rang)}

    try:
        async with capture(broker.port) as mqtt:
            result = await asyncio.to_thread(in_stack, scenario)
    finally:
        stop_daemon(daemon)
    assert result["first"] == {"yue": 1, "mandarin": 0}, result
    print(f"Mandarin-only agent offered {result['waited']:.1f} s after the call queued")
    assert 11.0 <= result["waited"] <= 20.0, result
    assert result["yue_rang"] == 1  # paused: not rung for the second call
    pops = [p["queue"] for _, p in mqtt.of("agent/1007/screenpop")]
    assert pops == ["cantonese"]


# ----------------------------------------------------------------------------- announcements

CMN_SOUNDS = Path(__file__).resolve().parents[2] / "prompts" / "sounds" / "cmn"
WAIT_ROSTER = """
defaults: {join_empty: true}
queues:
  general: {}
agents:
  "1003": {skills: {mandarin: 7}}
"""


async def test_waiting_callers_hear_their_position_and_wait_in_their_language(
    dev_pbx, hotline, prompts_built, broker, tmp_path
):
    """Two withheld callers wait in general (the agent is paused): every 10 s each hears its
    place (1, 2), the estimate (no working agent: the busy apology) and the callback key."""
    daemon = start_daemon(tmp_path, broker, WAIT_ROSTER, announce_every="10")

    def scenario(stack: SipStack, phones: list[Phone], calls: list[SimCall]) -> dict[str, Any]:
        phones[:] = [Phone(stack, dev_pbx.sip_port, "1003", 0.3)]
        phones[0].account.wait_registered(10)
        stack.pump(0.5)
        wait_states(daemon, {"1003": "ready"})
        daemon.cli("agents", "pause", "1003", "break", "--timeout", "10")
        wait_states(daemon, {"1003": "paused"})
        calls.append(dial_hotline(stack, dev_pbx.sip_port, "", "p2,0"))
        one = wait_queued(stack, mqtt, "general")
        calls.append(dial_hotline(stack, dev_pbx.sip_port, "", "p2,0"))
        two = wait_queued(stack, mqtt, "general", 2)
        heard_at_queue = calls[1].heard_seconds()
        stack.wait_for(
            lambda: len([1 for _, p in mqtt.of("/announced") if p["call_id"] == two]) >= 2,
            40,
            "two announcements to the second caller",
        )
        stack.pump(7.0)  # the announcement plays out
        # What each caller heard, found by the prompts' own recordings in the received audio
        # (voice activity alone cannot tell an announcement from music on hold).
        heard = {
            "one_position_1": calls[0].heard_prompt(CMN_SOUNDS / "queue_position-1.wav"),
            "two_position_2": calls[1].heard_prompt(CMN_SOUNDS / "queue_position-2.wav"),
            # the apology is 5.5 s long: its first 1.5 s (a full-length match failed under
            # a full test run's load, where the jitter buffer drops or repeats frames)
            "two_busy": calls[1].heard_prompt(CMN_SOUNDS / "queue_busy_apology.wav", head=1.5),
        }
        up = calls[1].is_connected
        return {"ids": (one, two), "heard": heard, "at_queue": heard_at_queue, "up": up}

    try:
        async with capture(broker.port) as mqtt:
            result = await asyncio.to_thread(in_stack, scenario)
    finally:
        stop_daemon(daemon)
    one, two = result["ids"]
    said = {p["call_id"]: p for _, p in mqtt.of("/announced")}
    assert said[one]["position"] == 1 and said[two]["position"] == 2, said
    assert said[two]["agents"] == 0 and said[two]["estimate"] is None  # the agent is paused
    # withheld callers: no number to call back, so no callback key is offered to them
    assert said[two]["keys"] == "" and said[two]["language"] == "cmn"
    assert result["up"]  # still waiting, not dropped
    # In the second caller's audio after it queued: "you are number 2" at each of the two
    # announcements, each followed by the busy apology; the first caller heard 1. The wait
    # loop's 10 s of music start when an announcement ends, so they begin 10 s plus one
    # announcement (about 7 s here) apart.
    heard = result["heard"]
    after = [t for t in heard["two_position_2"] if t >= result["at_queue"]]
    assert len(after) >= 2 and 10.0 <= after[1] - after[0] <= 22.0, result
    assert [t for t in heard["two_busy"] if t > after[0]], result
    assert heard["one_position_1"], result
    assert f"acd-announce {two}" in daemon.logs()
