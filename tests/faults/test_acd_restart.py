"""Fault: the daemon is SIGKILLed while callers wait in the ACD's queue ([acd-wait], music on
hold), on the dev PBX with pjsua2 callers and agent phones and a private Mosquitto.

Restarted, the new daemon reads the agents from AMI (their phones' device states: logged in
and ready) and the waiting callers from their channels (CoreShowChannels in [acd-wait] and the
call's description in its channel variables: REBUILT), and serves them; no caller hears music
for ever, nobody is dropped, no agent is left reserved. (An agent's pause lives only in the
daemon's memory: the agents paused before the kill come back ready.)

It ends with "no lost call, no stuck agent": agent states from `agents list --json`,
every call's end in the queue_log and the callers' and phones' own view.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulate.sip import SimCall, SipStack
from tests.faults.support import queue_events, wait_agent_states
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


def _daemon(daemons: Callable[..., Daemon], tmp_path: Path, broker: PrivateBroker, **acd: str):  # type: ignore[no-untyped-def]
    roster = tmp_path / "agents.yaml"
    roster.write_text(ROSTER)
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


def _call(stack: SipStack, port: int) -> SimCall:
    call = stack.caller(CHEN).call(f"sip:4008@127.0.0.1:{port}")
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
            stack.wait_for(
                lambda: (
                    all(c.is_connected for c in calls)
                    and sum(1 for a in agents for c in a.incoming if c.is_connected) == 2
                ),
                60,
                "both callers with an agent after the restart",
            )
            served = time.monotonic() - restarted
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
        f"SIGKILL with 2 callers waiting: both with an agent {served:.1f}s after the restart "
        "began (daemon start included)"
    )
    assert code == 0, d.output()[-3000:]
    assert up_while_down == [True, True] and rang_while_down == []
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
