"""What the ACD does for a caller who would rather not wait on the real PBX (issue 6): a
callback that keeps the caller's place and rings the agent first, overflow to the hotline's
voicemail, and callers still waiting when the daemon restarts.

Real parts as in test_acd_caller_routing.py. The dev PBX has no carrier to dial a customer
back, so `acd.callback_dial` sends the callback over the dev trunk to the test's own SIP stack
(`PJSIP/devtrunk/sip:cb{number}@127.0.0.1:<its port>`), where a phone answers for the caller's
number: the dialplan path is the production one, only the dial string differs.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from simulate.sip import SimCall, SipStack
from tests.integration.test_acd_caller_routing import (
    Phone,
    dial_hotline,
    in_stack,
    poll,
    queued,
    start_daemon,
    stop_daemon,
    wait_queued,
)
from tests.integration.test_acd_pbx import capture, wait_states
from tests.integration.test_hotline_agent_confirm import bursts
from tests.support.daemon import run_cli
from tests.support.mqtt_broker import PrivateBroker

pytestmark = [pytest.mark.pbx, pytest.mark.sip, pytest.mark.mqtt, pytest.mark.slow]


@pytest.fixture(scope="module")
def prompts_built() -> None:
    run_cli("prompts", "build")


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    b = PrivateBroker(tmp_path)
    b.start()
    yield b
    b.stop()


CALLBACK_ROSTER = """
defaults: {join_empty: true, wrapup: 1}
queues:
  cantonese: {}
agents:
  "1001": {skills: {cantonese: 9}}
"""
SHENZHEN = "075582345678"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_callback_keeps_the_place_and_rings_the_agent_before_the_customer(
    dev_pbx, hotline, prompts_built, broker, tmp_path
):
    port = free_udp_port()
    daemon = start_daemon(
        tmp_path,
        broker,
        CALLBACK_ROSTER,
        announce_every="0",
        callback_dial=f"PJSIP/devtrunk/sip:cb{{number}}@127.0.0.1:{port}",
    )

    def scenario(stack: SipStack, phones: list[Phone], calls: list[SimCall]) -> dict[str, Any]:
        agent = Phone(stack, dev_pbx.sip_port, "1001", 0.5)
        # the customer's phone behind the "carrier": no registration, answers cb<number>
        customer = Phone(stack, None, f"cb{SHENZHEN}", 0.5)
        phones[:] = [agent, customer]
        agent.account.wait_registered(10)
        stack.pump(0.5)
        wait_states(daemon, {"1001": "ready"})
        daemon.cli("agents", "pause", "1001", "break", "--timeout", "10")
        wait_states(daemon, {"1001": "paused"})
        # not a customer, Cantonese menu, 0 for a person: the cantonese queue
        call = dial_hotline(stack, dev_pbx.sip_port, SHENZHEN, "w,0")
        calls.append(call)
        call_id = wait_queued(stack, mqtt, "cantonese")
        stack.pump(1.5)
        call.send_dtmf("1")  # the callback key while waiting
        stack.wait_for(lambda: call.is_ended, 30, "the PBX to end the call")
        ended_by_pbx = not call.ended_locally
        stack.pump(1.0)
        before_resume = (list(agent.rang), list(customer.rang))
        daemon.cli("agents", "resume", "1001", "--timeout", "10")
        stack.wait_for(lambda: bool(customer.rang), 40, "the customer's phone to ring")
        stack.wait_for(lambda: customer.account.incoming[0].is_connected, 10, "customer answered")
        stack.pump(2.0)
        customer.account.incoming[0].end()
        stack.pump(2.0)
        return {
            "call_id": call_id,
            "ended_by_pbx": ended_by_pbx,
            "before_resume": before_resume,
            "agent_rang": list(agent.rang),
            "customer_rang": list(customer.rang),
            "agent_connected": agent.account.incoming[0].confirmed_at is not None,
        }

    try:
        async with capture(broker.port) as mqtt:
            result = await asyncio.to_thread(in_stack, scenario, port)
            await asyncio.sleep(1.0)
    finally:
        stop_daemon(daemon)
    call_id = result["call_id"]
    assert result["ended_by_pbx"], result  # confirmed, then the PBX hung up
    assert result["before_resume"] == ([], [])
    requested = [p for _, p in mqtt.of(f"acd/call/{call_id}/callback")]
    assert requested[0]["event"] == "CallbackRequested", requested
    # the agent first (the callback's screen pop, the phone), then the customer
    assert len(result["agent_rang"]) == 1 and len(result["customer_rang"]) == 1, result
    assert result["agent_rang"][0][0] < result["customer_rang"][0][0], result
    assert result["agent_connected"]
    pops = [p for _, p in mqtt.of("agent/1001/screenpop")]
    assert [p["call_id"] for p in pops] == [call_id]
    states = [p["event"] for _, p in mqtt.of("agent/1001/state")]
    assert states[:2] == ["CallConnected", "CallEnded"], states
    # recorded as done, not as failed
    assert not [p for p in requested if p["event"] == "CallbackFailed"], requested
    # the notifier stamps every event with its wall-clock time ("at"): not compared
    done = [
        {k: v for k, v in p.items() if k != "at"} for p in requested if p["event"] == "CallbackDone"
    ]
    assert done == [
        {
            "event": "CallbackDone",
            "call_id": call_id,
            "queue": "cantonese",
            "agent": "1001",
            "attempt": 1,
        }
    ], requested


VOICEMAIL_ROSTER = """
defaults: {join_empty: true}
queues:
  general: {max_wait: 6, overflow: voicemail}
agents:
  "1003": {skills: {mandarin: 7}}
"""


async def test_max_wait_overflows_to_voicemail_and_the_message_is_recorded(
    dev_pbx, hotline, prompts_built, broker, tmp_path
):
    daemon = start_daemon(tmp_path, broker, VOICEMAIL_ROSTER, announce_every="0")
    inbox = dev_pbx.in_root("/var/spool/asterisk/voicemail/hotline/4008/INBOX")
    before = set(inbox.glob("msg*.txt")) if inbox.exists() else set()

    def scenario(stack: SipStack, phones: list[Phone], calls: list[SimCall]) -> dict[str, Any]:
        phones[:] = [Phone(stack, dev_pbx.sip_port, "1003", 0.3)]
        phones[0].account.wait_registered(10)
        stack.pump(0.5)
        wait_states(daemon, {"1003": "ready"})
        daemon.cli("agents", "pause", "1003", "break", "--timeout", "10")
        wait_states(daemon, {"1003": "paused"})
        call = dial_hotline(stack, dev_pbx.sip_port, "", "p2,0")
        calls.append(call)
        call_id = wait_queued(stack, mqtt, "general")
        # The caller talks from now on: app_voicemail keeps a message only when it holds
        # at least `minsecs` of sound (a silent one is dropped and VMSTATUS=FAILED).
        call.play(bursts(tmp_path / "message.wav"))
        # max_wait 6 s, the apology (about 8 s), the mailbox's greeting and the tone,
        # then a few seconds of message before the caller hangs up
        stack.pump(28.0)
        up_until_hangup = call.is_connected
        call.end()
        stack.pump(2.0)
        return {"call_id": call_id, "rang": list(phones[0].rang), "up": up_until_hangup}

    try:
        async with capture(broker.port) as mqtt:
            result = await asyncio.to_thread(in_stack, scenario)
            await asyncio.to_thread(poll, lambda: bool(mqtt.of("/voicemail")), 10)
    finally:
        stop_daemon(daemon)
    call_id = result["call_id"]
    assert result["rang"] == [] and result["up"]
    left = [p for _, p in mqtt.of(f"acd/call/{call_id}/voicemail")]
    assert left and left[0]["event"] == "VoicemailLeft", (left, mqtt.messages[-10:])
    assert left[0]["mailbox"] == "4008@hotline" and left[0]["queue"] == "general"
    new = set(inbox.glob("msg*.txt")) - before
    assert len(new) == 1, sorted(inbox.glob("*"))
    message = next(iter(new))
    assert message.with_suffix(".wav").stat().st_size > 8000
    for path in (message, message.with_suffix(".wav")):  # the shared PBX's mailbox stays tidy
        path.unlink()


RESTART_ROSTER = """
defaults: {join_empty: true, wrapup: 1}
queues:
  general: {}
agents:
  "1003": {skills: {mandarin: 7}}
"""


async def test_callers_waiting_across_a_daemon_restart_are_rebuilt_and_served(
    dev_pbx, hotline, prompts_built, broker, tmp_path
):
    daemon = start_daemon(tmp_path, broker, RESTART_ROSTER, announce_every="0")

    def scenario(stack: SipStack, phones: list[Phone], calls: list[SimCall]) -> dict[str, Any]:
        phones[:] = [Phone(stack, dev_pbx.sip_port, "1003", 0.3)]
        phones[0].account.wait_registered(10)
        stack.pump(0.5)
        wait_states(daemon, {"1003": "ready"})
        daemon.cli("agents", "pause", "1003", "break", "--timeout", "10")
        wait_states(daemon, {"1003": "paused"})
        call = dial_hotline(stack, dev_pbx.sip_port, "", "p2,0")
        calls.append(call)
        call_id = wait_queued(stack, mqtt, "general")
        stack.pump(1.0)
        code = daemon.stop()
        stack.pump(3.0)  # the caller waits on with music, nobody routes
        rang_while_down = list(phones[0].rang)
        daemon.start()
        # the agent is rebuilt from AMI (phone registered) still on its break (the pause is
        # kept across the restart), the caller from the channel's variables; once the agent
        # resumes it rings for this caller
        wait_states(daemon, {"1003": "paused"})
        stack.pump(1.0)
        rang_while_paused = list(phones[0].rang)
        daemon.cli("agents", "resume", "1003", "--timeout", "10")
        stack.wait_for(lambda: bool(phones[0].rang), 30, "1003 to ring after the resume")
        stack.wait_for(
            lambda: (
                call.is_connected
                and bool(phones[0].account.incoming)
                and phones[0].account.incoming[0].is_connected
            ),
            10,
            "connected",
        )
        stack.pump(1.0)
        return {
            "call_id": call_id,
            "code": code,
            "rang_while_down": rang_while_down,
            "rang_while_paused": rang_while_paused,
            "caller_up": call.is_connected,
        }

    try:
        async with capture(broker.port) as mqtt:
            result = await asyncio.to_thread(in_stack, scenario)
            await asyncio.sleep(0.5)
    finally:
        stop_daemon(daemon)
    call_id = result["call_id"]
    assert result["code"] == 0 and result["rang_while_down"] == []
    assert result["rang_while_paused"] == []
    assert result["caller_up"]
    # the rebuilt call carries its description: queue, priority and the masked screen pop
    assert len(queued(mqtt, "general")) == 2  # queued before, and again after the restart
    pops = [p for _, p in mqtt.of("agent/1003/screenpop")]
    assert [p["call_id"] for p in pops] == [call_id]
    assert pops[0]["queue"] == "general" and pops[0]["priority"] == 7  # flow priority 2
    assert pops[0]["data"]["tier"] == "anonymous" and pops[0]["language"] == "cmn"
    assert "ACD: 1 caller(s) waiting in acd-wait, 1 rebuilt" in daemon.logs()
