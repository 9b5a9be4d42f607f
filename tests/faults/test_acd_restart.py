"""Fault: the daemon is SIGKILLed while callers wait in the ACD's queue ([acd-wait], music on
hold), on the dev PBX with pjsua2 callers and agent phones and a private Mosquitto.

Restarted, the new daemon reads the agents from AMI (their phones' device states: logged in)
and the waiting callers from their channels (CoreShowChannels in [acd-wait] and the call's
description in its channel variables: REBUILT). The agents paused before the kill are paused
again with their reason (kept in the agent state file beside the store,
ivr_engine/agent_keep.py), so nobody on a break is rung; once they resume, the callers are
served; no caller hears music for ever, nobody is dropped, no agent is left reserved.

Not restarted, nobody routes: [acd-wait]'s safety net takes over. Every
`acd.announce_every` seconds the wait loop runs the announcement AGI; two failures in a row
(the daemon's port refuses the connection) send the caller to the operator group. So a caller
reaches the operators within 2 x announce_every of the kill (one interval to the next failed
AGI at the latest, one more to the second), and hears hold music, not silence, all the while.

It ends with "no lost call, no stuck agent": agent states from `agents list --json`,
every call's end in the queue_log (the PBX's log when no daemon is left to write one) and the
callers' and phones' own view.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ivr_engine.callback_keep import callbacks_path
from simulate.sip import SimCall, SipStack
from tests.faults.audio import longest_silence
from tests.faults.support import queue_events, wait_agent_states
from tests.integration.test_acd_caller_routing import (
    RECORDINGS,
    Phone,
    dial_hotline,
    hang_up_all,
)
from tests.integration.test_acd_caller_services import free_udp_port
from tests.support.daemon import Daemon
from tests.support.mqtt_broker import PrivateBroker

pytestmark = [pytest.mark.pbx, pytest.mark.sip, pytest.mark.mqtt, pytest.mark.slow]

CHEN = "13926000001"  # VIP green channel: queue vip, "cantonese and private_banking", no keys
ROSTER = """
defaults: {join_empty: true, wrapup: 1}
queues:
  vip: {}
agents:
  "1001": {skills: {private_banking: 8, cantonese: 7}}
  "1002": {skills: {private_banking: 6, cantonese: 6}}
"""


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    b = PrivateBroker(tmp_path)
    b.start()
    yield b
    b.stop()


def _daemon(  # type: ignore[no-untyped-def]
    daemons: Callable[..., Daemon],
    tmp_path: Path,
    broker: PrivateBroker,
    agents_yaml: str = ROSTER,
    **acd: str,
):
    roster = tmp_path / "agents.yaml"
    roster.write_text(agents_yaml)
    env = {
        "IVR_ENGINE_ACD_ROSTER": str(roster),
        "IVR_ENGINE_MQTT_PORT": str(broker.port),
        **{f"IVR_ENGINE_ACD_{k.upper()}": v for k, v in acd.items()},
    }
    d = daemons(**env)
    d.seed(customers=0)
    d.start()
    return d


def _agent(stack: SipStack, port: int, ext: str, rang: list[tuple[str, float]]) -> Any:
    return stack.agent(
        ext,
        f"agent-{ext}-dev",
        registrar=f"sip:127.0.0.1:{port}",
        auto_answer_after=0.3,
        on_incoming=lambda call: rang.append((ext, time.monotonic())),
    )


def _call(stack: SipStack, port: int, name: str = "") -> SimCall:
    call = stack.caller(CHEN, name=name).call(f"sip:4008@127.0.0.1:{port}")
    call.wait_connected(15)
    return call


def _queued(d: Daemon) -> list[str]:
    return [c for v, c, _ in queue_events(d) if v == "ENTERQUEUE"]


def test_sigkill_with_callers_waiting_then_restart_serves_them(
    dev_pbx, hotline, prompts_built, daemons, broker, tmp_path
):  # type: ignore[no-untyped-def]
    d = _daemon(daemons, tmp_path, broker, announce_every="0")
    port = dev_pbx.sip_port
    rang: list[tuple[str, float]] = []
    with SipStack() as stack:
        agents = [_agent(stack, port, ext, rang) for ext in ("1001", "1002")]
        calls: list[SimCall] = []
        try:
            for a in agents:
                a.wait_registered(10)
            stack.pump(0.5)
            wait_agent_states(d, {"1001": "ready", "1002": "ready"})
            for ext in ("1001", "1002"):  # on a break: the callers wait in the queue
                d.cli("agents", "pause", ext, "break", "--timeout", "10")
            wait_agent_states(d, {"1001": "paused", "1002": "paused"})
            for _ in range(2):
                calls.append(_call(stack, port))
            stack.wait_for(lambda: len(_queued(d)) >= 2, 90, "two callers queued")
            call_ids = _queued(d)
            stack.pump(1.0)
            d.kill()
            stack.pump(4.0)  # on music, nobody routing
            up_while_down = [c.is_connected for c in calls]
            rang_while_down = list(rang)
            restarted = time.monotonic()
            d.start()
            # Still on their break after the restart, with its reason: nobody is rung.
            paused = wait_agent_states(d, {"1001": "paused", "1002": "paused"})
            stack.pump(2.0)
            up_while_paused = [c.is_connected for c in calls]
            rang_while_paused = list(rang)
            resumed = time.monotonic()
            paused_after = resumed - restarted
            for ext in ("1001", "1002"):  # back from the break: the callers are served
                d.cli("agents", "resume", ext)
            stack.wait_for(
                lambda: (
                    all(c.is_connected for c in calls)
                    and sum(1 for a in agents for c in a.incoming if c.is_connected) == 2
                ),
                60,
                "both callers with an agent after the restart",
            )
            served = time.monotonic() - resumed
            stack.pump(1.0)
            talking = wait_agent_states(d, {"1001": "on-call", "1002": "on-call"}, 5)
            for c in calls:
                c.end()
            stack.wait_for(lambda: all(c.is_ended for a in agents for c in a.incoming), 10, "end")
            final = wait_agent_states(d, {"1001": "ready", "1002": "ready"}, 15)
        finally:
            for c in calls:
                c.end()
            stack.pump(0.5)
            for a in agents:
                a.unregister()
            stack.pump(0.5)
            calls.clear()
            agents.clear()
    code = d.stop()
    print(
        f"SIGKILL with 2 callers waiting: agents still paused, resumed {paused_after:.1f}s after "
        f"the restart began (daemon start included); both callers with an agent {served:.1f}s "
        "after the resume"
    )
    assert code == 0, d.output()[-3000:]
    assert up_while_down == [True, True] and rang_while_down == []
    assert {a: (paused[a]["state"], paused[a]["reason"]) for a in ("1001", "1002")} == {
        "1001": ("paused", "break"),
        "1002": ("paused", "break"),
    }, paused
    assert up_while_paused == [True, True] and rang_while_paused == [], rang_while_paused
    assert talking["1001"]["state"] == "on-call" and final["1001"]["state"] == "ready"
    logs = d.logs()
    for call_id in call_ids:
        assert f"queue event REBUILT call={call_id}" in logs, logs[-3000:]
        verbs = [v for v, _, _ in queue_events(d, call_id)]
        # Queued before the kill, queued again when rebuilt, then served to the end.
        assert verbs == ["ENTERQUEUE", "ENTERQUEUE", "RINGING", "CONNECT", "COMPLETECALLER"], (
            call_id,
            verbs,
        )
    assert "ACD: 2 of 2 agent phone(s) registered at start" in logs
    assert "ACD: 2 pause(s) restored from before the restart" in logs, logs[-3000:]


#: acd.announce_every of the no-restart test: the smallest the settings allow.
ANNOUNCE = 10.0
#: From a failed AGI to an operator's phone answering: Queue(operators) rings both (ringall)
#: and the operators' phones answer after 0.3 s.
OPERATOR_SLACK = 3.0
MAX_DEAD_AIR = 3.0  # as for callers in the IVR (tests/faults/test_daemon_killed.py)


def test_sigkill_with_callers_waiting_and_no_restart_reaches_the_operators(
    dev_pbx, hotline, prompts_built, daemons, broker, tmp_path
):  # type: ignore[no-untyped-def]
    """Two callers wait (both agents on a break), announcements every 10 s; the daemon is
    SIGKILLed and not restarted. Each caller's wait loop fails its announcement AGI twice and
    goes to the operators: within 2 x announce_every (plus the operators' answer), never
    sooner than one interval (one failure is not enough), with no silence longer than
    MAX_DEAD_AIR in what the caller heard from the kill to the operator's answer."""
    d = _daemon(daemons, tmp_path, broker, announce_every=f"{ANNOUNCE:g}")
    port = dev_pbx.sip_port
    rang: list[tuple[str, float]] = []
    names = ("Waiting One", "Waiting Two")
    mark = dev_pbx.mark()
    with SipStack() as stack:
        agents = [_agent(stack, port, ext, rang) for ext in ("1001", "1002")]
        operators = [
            stack.agent(
                op, f"agent-{op}-dev", registrar=f"sip:127.0.0.1:{port}", auto_answer_after=0.3
            )
            for op in ("1009", "1010")
        ]
        calls: list[SimCall] = []
        try:
            for phone in (*agents, *operators):
                phone.wait_registered(10)
            stack.pump(0.5)
            wait_agent_states(d, {"1001": "ready", "1002": "ready"})
            for ext in ("1001", "1002"):  # on a break: the callers wait in the queue
                d.cli("agents", "pause", ext, "break", "--timeout", "10")
            wait_agent_states(d, {"1001": "paused", "1002": "paused"})
            for n, name in enumerate(names, 1):
                calls.append(_call(stack, port, name))
                stack.wait_for(lambda n=n: len(_queued(d)) >= n, 90, f"caller {n} queued")
            call_ids = _queued(d)
            stack.pump(2.0)
            kill_media = [c.heard_seconds() for c in calls]
            d.kill()
            killed = time.monotonic()

            def legs(name: str) -> list[SimCall]:
                """The operator phones' calls from one caller (ringall rings both)."""
                return [c for op in operators for c in op.incoming if name in c.remote_uri]

            def answered(name: str) -> list[float]:
                return [c.confirmed_at for c in legs(name) if c.confirmed_at is not None]

            stack.wait_for(
                lambda: all(answered(n) for n in names),
                2 * ANNOUNCE + OPERATOR_SLACK + 15,
                "both callers to reach an operator",
            )
            reached = [min(answered(name)) - killed for name in names]
            stack.pump(1.0)
            up = [c.is_connected for c in calls]
            talking = [sum(leg.is_connected for leg in legs(name)) for name in names]
            # From the kill to the operator's answer, in the caller's own audio.
            silences = [
                longest_silence(c.heard(), at, at + r)
                for c, at, r in zip(calls, kill_media, reached, strict=True)
            ]
            # The meter's own check: the operators' phones send no sound, so the second after
            # an operator answered is silence to it.
            answered_quiet = [
                longest_silence(c.heard(), at + r + 0.2, at + r + 1.0).length
                for c, at, r in zip(calls, kill_media, reached, strict=True)
            ]
            operator_uris = sorted(c.remote_uri for op in operators for c in op.incoming)
        finally:
            for c in calls:
                c.end()
            stack.pump(0.5)
            for phone in (*agents, *operators):
                phone.unregister()
            stack.pump(0.5)
            calls.clear()
            agents.clear()
            operators.clear()
    for name, r, quiet in zip(names, reached, silences, strict=True):
        print(
            f"SIGKILL, no restart: {name!r} with an operator {r:.1f}s after the kill "
            f"(announce_every {ANNOUNCE:g}s); longest silence {quiet.length:.2f}s "
            f"at {quiet.start:.1f}s of media"
        )
    # Both callers with an operator, each with exactly one, nobody dropped, no agent rung.
    assert up == [True, True], up
    assert talking == [1, 1], (talking, operator_uris)
    assert rang == [], rang
    # The wait loop's safety net, not anything sooner: one failed AGI is not enough.
    assert all(ANNOUNCE - 1.0 <= r <= 2 * ANNOUNCE + OPERATOR_SLACK for r in reached), reached
    log = "\n".join(dev_pbx.lines_since(mark))
    for call_id in call_ids:
        assert f"acd-wait {call_id} the daemon does not answer: operators" in log, log[-3000:]
        # Queued with the ACD, which died: no end in its queue_log, the PBX's log has it.
        assert [v for v, _, _ in queue_events(d, call_id)] == ["ENTERQUEUE"]
    assert max(q.length for q in silences) < MAX_DEAD_AIR, silences
    assert min(answered_quiet) >= 0.5, answered_quiet


CALLBACK_ROSTER = """
defaults: {join_empty: true, wrapup: 1}
queues:
  cantonese: {}
agents:
  "1001": {skills: {cantonese: 9}}
"""
SHENZHEN = "075582345678"  # not a customer: Cantonese menu, 0 for a person


def test_sigkill_after_a_callback_request_then_restart_calls_the_customer_back(
    dev_pbx, hotline, prompts_built, daemons, broker, tmp_path
):  # type: ignore[no-untyped-def]
    """A caller waits (the agent on a break), presses the callback key, hears it confirmed
    and is hung up on; the daemon is SIGKILLed before the agent is free. The promise was on
    disk before the confirmation (`<store>.callbacks.json`, ivr_engine/callback_keep.py):
    the restarted daemon queues the callback again, and once the agent is back from the
    break the agent's phone rings first, then the customer's (the dev trunk to this test's
    own SIP stack stands in for the carrier, as in test_acd_caller_services.py)."""
    port = free_udp_port()
    d = _daemon(
        daemons,
        tmp_path,
        broker,
        CALLBACK_ROSTER,
        announce_every="0",
        recordings_dir=RECORDINGS,
        callback_dial=f"PJSIP/devtrunk/sip:cb{{number}}@127.0.0.1:{port}",
    )
    kept_file = callbacks_path(d.db)
    phones: list[Phone] = []
    calls: list[SimCall] = []
    with SipStack(port=port) as stack:
        try:
            agent = Phone(stack, dev_pbx.sip_port, "1001", 0.3)
            customer = Phone(stack, None, f"cb{SHENZHEN}", 0.5)  # behind the "carrier"
            phones[:] = [agent, customer]
            agent.account.wait_registered(10)
            stack.pump(0.5)
            wait_agent_states(d, {"1001": "ready"})
            d.cli("agents", "pause", "1001", "break", "--timeout", "10")
            wait_agent_states(d, {"1001": "paused"})
            call = dial_hotline(stack, dev_pbx.sip_port, SHENZHEN, "w,0")
            calls.append(call)
            stack.wait_for(lambda: len(_queued(d)) >= 1, 90, "the caller queued")
            call_id = _queued(d)[0]
            stack.pump(1.5)
            call.send_dtmf("1")  # the callback key while waiting
            stack.wait_for(lambda: call.is_ended, 30, "the PBX to end the call")
            ended_by_pbx = not call.ended_locally
            kept = json.loads(kept_file.read_text())["callbacks"]
            d.kill()
            stack.pump(2.0)
            rang_while_down = (list(agent.rang), list(customer.rang))
            d.start()
            # The break is kept too (agent_keep.py): nobody is rung until the agent is back.
            wait_agent_states(d, {"1001": "paused"})
            stack.pump(2.0)
            rang_while_paused = (list(agent.rang), list(customer.rang))
            resumed = time.monotonic()
            d.cli("agents", "resume", "1001")
            stack.wait_for(lambda: bool(customer.rang), 40, "the customer's phone to ring")
            called_back = time.monotonic() - resumed
            stack.wait_for(
                lambda: customer.account.incoming[0].is_connected, 10, "the customer answered"
            )
            stack.pump(2.0)
            customer.account.incoming[0].end()
            stack.wait_for(
                lambda: all(c.is_ended for p in phones for c in p.account.incoming), 10, "end"
            )
            final = wait_agent_states(d, {"1001": "ready"}, 15)
            agent_rang, customer_rang = list(agent.rang), list(customer.rang)
            kept_after = json.loads(kept_file.read_text())["callbacks"]
        finally:
            hang_up_all(stack, calls, phones)
    code = d.stop()
    print(
        f"callback promised, daemon SIGKILLed and restarted: the customer's phone rang "
        f"{called_back:.1f}s after the agent's resume"
    )
    assert code == 0, d.output()[-3000:]
    assert ended_by_pbx  # confirmed, then the PBX hung up: the caller relies on the promise
    assert list(kept) == [call_id] and kept[call_id]["caller"] == SHENZHEN, kept
    assert rang_while_down == ([], []) and rang_while_paused == ([], []), rang_while_paused
    # The agent first (it hears who is to be called), then the customer; once each.
    assert len(agent_rang) == 1 and len(customer_rang) == 1, (agent_rang, customer_rang)
    assert agent_rang[0][0] < customer_rang[0][0]
    assert final["1001"]["state"] == "ready"
    assert kept_after == {}  # nothing owed any more
    logs = d.logs()
    assert "1 callback(s) promised before the restart queued again (0 refused)" in logs, logs[
        -3000:
    ]
    assert f"queue event CALLBACKDONE call={call_id}" in logs, logs[-3000:]
    verbs = [v for v, _, _ in queue_events(d, call_id)]
    # Queued by the caller, queued again by the restarted daemon, then the callback served.
    assert verbs[:2] == ["ENTERQUEUE", "ENTERQUEUE"] and verbs[-1] == "COMPLETEAGENT", verbs
    assert "CONNECT" in verbs, verbs
