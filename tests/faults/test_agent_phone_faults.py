"""Faults on the agent's side of an ACD call (issue 8): the offered agent's phone unregisters
while it rings, the agent answers and hangs up at once, the agent never answers.

Real parts: the dev PBX's Asterisk, the real daemon (`ivr-engine serve`, the ACD on with a
roster written per test), pjsua2 callers and agent phones, a private Mosquitto. The caller is
Chen (13926000001: the VIP green channel straight to queue vip with "cantonese and
private_banking", no keys).

Witnesses: which agent phone rang when and for how long (the phones' own view), whether the
callers are still connected, the ACD's queue_log rows in the daemon's SQLite file (every step
of every call, its end included), the agents' published statuses (`<prefix>/agent/<id>/status`,
captured with their arrival order) and `ivr-engine agents list --json` at the end. Each test
ends with "no lost call, no stuck agent".

Settings: `acd.ring_timeout` 5 s, `acd.max_misses` 2, wrap-up 2 s, announcements off.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulate.sip import SimCall, SipStack
from tests.faults.support import MqttCapture, queue_events, wait_agent_states
from tests.integration.test_acd_caller_routing import Phone, dial_hotline, in_stack
from tests.support.daemon import Daemon
from tests.support.mqtt_broker import PrivateBroker

pytestmark = [pytest.mark.pbx, pytest.mark.sip, pytest.mark.mqtt, pytest.mark.slow]

CHEN = "13926000001"
RING = 5.0  # acd.ring_timeout
MISSES = 2  # acd.max_misses
WRAPUP = 2.0
ROSTER = f"""
defaults: {{join_empty: true, wrapup: {WRAPUP:g}}}
queues:
  vip: {{}}
agents:
  "1001": {{skills: {{private_banking: 8, cantonese: 7}}}}
  "1002": {{skills: {{private_banking: 6, cantonese: 6}}}}
"""
_ids = itertools.count(1)


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    b = PrivateBroker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def statuses(broker: PrivateBroker) -> Any:
    capture = MqttCapture(broker.port)
    capture.start()
    yield capture
    capture.stop()


def _daemon(daemons: Callable[..., Daemon], tmp_path: Path, broker: PrivateBroker) -> Daemon:
    roster = tmp_path / "agents.yaml"
    roster.write_text(ROSTER)
    d = daemons(
        IVR_ENGINE_ACD_ROSTER=str(roster),
        IVR_ENGINE_MQTT_PORT=str(broker.port),
        IVR_ENGINE_ACD_RING_TIMEOUT=f"{RING:g}",
        IVR_ENGINE_ACD_MAX_MISSES=str(MISSES),
        IVR_ENGINE_ACD_ANNOUNCE_EVERY="0",
    )
    d.seed(customers=0)
    d.start()
    return d


def command(capture: MqttCapture, verb: str, agent: str, reason: str = "") -> dict[str, Any]:
    """An agent command straight onto the daemon's command topic, and its reply: unlike the
    CLI (about 1.5 s of Python start-up) this takes milliseconds, so it can be sent while a
    phone rings."""
    request = f"fault-{next(_ids)}"
    body = {"id": request, "verb": verb, "agent": agent}
    if reason:
        body["reason"] = reason
    capture.publish("ivr/acd/command", json.dumps(body))
    topic = f"ivr/acd/reply/{request}"
    capture.wait_for(lambda: topic in capture.topics(), 5, f"the reply to {verb} {agent}")
    reply: dict[str, Any] = next(json.loads(p) for _, t, p in capture.messages if t == topic)
    assert reply["ok"], reply
    return reply


def agent_log(capture: MqttCapture, agent: str) -> list[tuple[float, str]]:
    """(arrival, what) of the agent's events ("CallConnected", "RingNoAnswer", ...) and
    published statuses ("status:ready", ...), in arrival order."""
    out: list[tuple[float, str]] = []
    for at, topic, payload in list(capture.messages):
        if topic == f"ivr/agent/{agent}/state":
            out.append((at, json.loads(payload)["event"]))
        elif topic == f"ivr/agent/{agent}/status":
            out.append((at, "status:" + json.loads(payload)["state"]))
    return out


def first_at(log: list[tuple[float, str]], what: str, after: float = 0.0) -> float:
    found = [at for at, w in log if w == what and at >= after]
    if not found:
        raise AssertionError(f"no {what} after {after}: {log}")
    return found[0]


def steps(d: Daemon, call_id: str) -> list[tuple[str, str]]:
    """(verb, agent) of one call's queue_log rows, in order."""
    return [(v, a) for v, _, a in queue_events(d, call_id)]


def entered(d: Daemon) -> list[str]:
    return [c for v, c, _ in queue_events(d) if v == "ENTERQUEUE"]


def ring_seconds(call: SimCall) -> float:
    """How long an unanswered offer rang on the agent's phone (INVITE to CANCEL)."""
    if call.disconnected_at is None:
        raise AssertionError(f"the offer is still ringing: {call.events}")
    return call.disconnected_at - call.created


# ----------------------------------------------------------------------------- unregistered


def test_phone_unregisters_while_ringing(
    dev_pbx, hotline, prompts_built, daemons, broker, statuses, tmp_path
):  # type: ignore[no-untyped-def]
    """1002 is on a break, so the call is offered to 1001; 1002 comes back while 1001's
    phone rings, and 1001's phone unregisters. The call must not be lost: 1001's ring runs out
    (the phone is still rung on the wire), the call is RINGNOANSWER and goes to 1002; 1001 is
    logged out once its offer is over (not while reserved), 1002 is ready after wrap-up."""
    d = _daemon(daemons, tmp_path, broker)
    port = dev_pbx.sip_port

    def scenario(stack: SipStack, phones: list[Phone], calls: list[SimCall]) -> dict[str, Any]:
        phones[:] = [Phone(stack, port, "1001", None), Phone(stack, port, "1002", 0.3)]
        one, two = phones
        for p in phones:
            p.account.wait_registered(10)
        stack.pump(0.5)
        wait_agent_states(d, {"1001": "ready", "1002": "ready"})
        d.cli("agents", "pause", "1002", "break", "--timeout", "10")
        wait_agent_states(d, {"1002": "paused"})
        calls.append(dial_hotline(stack, port, CHEN, ""))
        stack.wait_for(lambda: bool(one.rang), 90, "1001 to ring")
        command(statuses, "resume", "1002")  # ready now, but the call is 1001's offer
        stack.pump(0.3)
        one.account.unregister()
        unregistered, unregistered_mono = time.time(), time.monotonic()
        stack.wait_for(lambda: not one.account.registered, 5, "1001 to unregister")
        stack.wait_for(lambda: bool(two.rang), RING + 10, "the call to reach 1002")
        stack.wait_for(
            lambda: bool(two.account.incoming) and two.account.incoming[0].is_connected,
            10,
            "1002 to answer",
        )
        stack.pump(1.0)
        caller_up = calls[0].is_connected
        calls[0].end()
        stack.wait_for(lambda: two.account.incoming[0].is_ended, 10, "1002's call to end")
        final = wait_agent_states(d, {"1001": "logged-out", "1002": "ready"}, WRAPUP + 10)
        return {
            "one_rang": [t for t, _ in one.rang],
            "one_ring": ring_seconds(one.account.incoming[0]),
            "two_rang": [t for t, _ in two.rang],
            "unregistered": unregistered,
            "unregistered_mono": unregistered_mono,
            "ring_before_unregister": unregistered - one.rang[0][0],
            "caller_up": caller_up,
            "final": final,
        }

    result = in_stack(scenario)
    code = d.stop()
    assert code == 0, d.output()[-3000:]
    (call_id,) = entered(d)
    rang_one, rang_two = result["one_rang"][0], result["two_rang"][0]
    moved = rang_two - rang_one
    print(
        f"phone unregistered {result['unregistered'] - rang_one:.1f}s into the ring: 1001 rang "
        f"{result['one_ring']:.1f}s, the call reached 1002 {moved:.1f}s after 1001 began to ring"
    )
    # The call is not lost: one ring of 1001 that ran to the ring timeout, then 1002.
    assert len(result["one_rang"]) == 1 and len(result["two_rang"]) == 1, result
    assert RING - 0.5 <= result["one_ring"] <= RING + 2.0, result
    assert moved <= RING + 5.0, result
    assert result["caller_up"]
    assert steps(d, call_id) == [
        ("ENTERQUEUE", ""),
        ("RINGING", "1001"),
        ("RINGNOANSWER", "1001"),
        ("RINGING", "1002"),
        ("CONNECT", "1002"),
        ("COMPLETECALLER", "1002"),
    ], steps(d, call_id)
    # 1001 stayed reserved through its ring and was logged out when the offer ended: its
    # logged-out status comes with the RingNoAnswer (the same router step publishes both; MQTT
    # does not order messages across topics), the rest of the ring after the unregistration.
    log = agent_log(statuses, "1001")
    missed = first_at(log, "RingNoAnswer")
    logged_out = first_at(log, "status:logged-out", after=result["unregistered_mono"])
    print(f"1001 logged out {logged_out - result['unregistered_mono']:.1f}s after it unregistered")
    assert abs(logged_out - missed) < 0.5, log
    assert logged_out - result["unregistered_mono"] >= RING - result["ring_before_unregister"] - 1.0
    final = result["final"]
    assert final["1001"]["state"] == "logged-out" and not final["1001"]["registered"]
    assert final["1002"]["state"] == "ready"
    assert "agent 1001: phone unregistered: logging out" in d.logs()


# ----------------------------------------------------------------------------- short call


def test_agent_answers_and_hangs_up_at_once(
    dev_pbx, hotline, prompts_built, daemons, broker, statuses, tmp_path
):  # type: ignore[no-untyped-def]
    """1001 answers and hangs up 0.5 s later. [acd-connect]'s Dial has `g`: the caller's
    channel goes on after the agent's hang-up, AcdDialResult ANSWER ends the call as
    COMPLETEAGENT, and the caller (not invited to the survey: Chen's green channel never hears
    the invitation) is hung up by the PBX; the survey path is
    tests/integration/test_hotline_agent_confirm.py's. The caller is not requeued: 1002,
    ready all along, never rings. 1001 wraps up and is ready again."""
    d = _daemon(daemons, tmp_path, broker)
    port = dev_pbx.sip_port

    def scenario(stack: SipStack, phones: list[Phone], calls: list[SimCall]) -> dict[str, Any]:
        phones[:] = [Phone(stack, port, "1001", 0.3), Phone(stack, port, "1002", 0.3)]
        one, two = phones
        for p in phones:
            p.account.wait_registered(10)
        stack.pump(0.5)
        wait_agent_states(d, {"1001": "ready", "1002": "ready"})
        d.cli("agents", "pause", "1002", "break", "--timeout", "10")
        wait_agent_states(d, {"1002": "paused"})
        calls.append(dial_hotline(stack, port, CHEN, ""))
        caller = calls[0]
        stack.wait_for(lambda: bool(one.rang), 90, "1001 to ring")
        # 1002 ready from here on (the call is 1001's offer): a requeued caller would ring it.
        command(statuses, "resume", "1002")
        stack.wait_for(lambda: one.account.incoming[0].is_connected, 10, "1001 to answer")
        answered = time.monotonic()
        agent_leg = one.account.incoming[0]
        stack.pump(0.5)
        agent_leg.end()
        hung_up = time.monotonic()
        stack.wait_for(lambda: caller.is_ended, 15, "the caller's call to end")
        caller_ended = time.monotonic() - hung_up
        stack.pump(RING + 3.0)  # long enough for a requeued caller to be offered again
        final = wait_agent_states(d, {"1001": "ready", "1002": "ready"}, WRAPUP + 10)
        return {
            "talked": hung_up - answered,
            "caller_ended": caller_ended,
            "ended_by_pbx": not caller.ended_locally,
            "one_rang": len(one.rang),
            "two_rang": len(two.rang),
            "final": final,
        }

    result = in_stack(scenario)
    code = d.stop()
    assert code == 0, d.output()[-3000:]
    (call_id,) = entered(d)
    print(
        f"agent hung up {result['talked']:.2f}s after answering; the PBX ended the caller's "
        f"call {result['caller_ended']:.2f}s later"
    )
    assert result["talked"] < 1.0, result
    assert steps(d, call_id) == [
        ("ENTERQUEUE", ""),
        ("RINGING", "1001"),
        ("CONNECT", "1001"),
        ("COMPLETEAGENT", "1001"),
    ], steps(d, call_id)
    # Not invited to the survey: the dialplan hangs the caller up at once, nobody else rings.
    assert result["ended_by_pbx"] and result["caller_ended"] < 3.0, result
    assert result["one_rang"] == 1 and result["two_rang"] == 0, result
    # A normal wrap-up after the short call, then ready: never left reserved or on a call.
    log = agent_log(statuses, "1001")
    ended = first_at(log, "CallEnded", after=first_at(log, "CallConnected"))
    ready = first_at(log, "status:ready", after=ended)
    print(f"1001 ready {ready - ended:.2f}s after the call ended (wrap-up {WRAPUP:g}s)")
    assert WRAPUP - 0.5 <= ready - ended <= WRAPUP + 2.0, log
    assert result["final"]["1001"]["state"] == "ready"


# ----------------------------------------------------------------------------- no answer


def test_agent_never_answers_requeued_at_the_head_then_paused(
    dev_pbx, hotline, prompts_built, daemons, broker, statuses, tmp_path
):  # type: ignore[no-untyped-def]
    """Two callers wait (both agents on a break); 1001, whose phone never answers, comes back.
    The first caller is offered to 1001, RINGNOANSWER at the ring timeout, and keeps its place
    at the head: 1001 is offered the first caller again, not the second. After the second miss
    1001 is paused `no-answer` and not rung again; both callers still wait. 1002 resumed takes
    the first caller first, then (after wrap-up) the second."""
    d = _daemon(daemons, tmp_path, broker)
    port = dev_pbx.sip_port

    def scenario(stack: SipStack, phones: list[Phone], calls: list[SimCall]) -> dict[str, Any]:
        phones[:] = [Phone(stack, port, "1001", None), Phone(stack, port, "1002", 0.3)]
        one, two = phones
        for p in phones:
            p.account.wait_registered(10)
        stack.pump(0.5)
        wait_agent_states(d, {"1001": "ready", "1002": "ready"})
        for ext in ("1001", "1002"):
            d.cli("agents", "pause", ext, "break", "--timeout", "10")
        wait_agent_states(d, {"1001": "paused", "1002": "paused"})
        calls.append(dial_hotline(stack, port, CHEN, ""))
        stack.wait_for(lambda: len(entered(d)) >= 1, 90, "the first caller queued", step=0.2)
        calls.append(dial_hotline(stack, port, CHEN, ""))
        stack.wait_for(lambda: len(entered(d)) >= 2, 90, "the second caller queued", step=0.2)
        stack.pump(0.5)
        command(statuses, "resume", "1001")
        stack.wait_for(lambda: len(one.rang) >= MISSES, MISSES * (RING + 5), "1001's rings")
        stack.wait_for(
            lambda: all(c.is_ended for c in one.account.incoming), RING + 5, "the last ring to end"
        )
        paused = wait_agent_states(d, {"1001": "paused"}, 5)
        stack.pump(RING + 2.0)  # long enough for a third offer, which must not come
        rings_while_paused = len(one.rang)
        up_before_resume = [c.is_connected for c in calls]
        command(statuses, "resume", "1002")
        for n in (1, 2):
            stack.wait_for(lambda n=n: len(two.account.incoming) >= n, 30, f"1002's offer {n}")
            leg = two.account.incoming[n - 1]
            stack.wait_for(lambda leg=leg: leg.is_connected, 10, f"1002 to answer offer {n}")
            stack.pump(1.0)
            leg.end()  # the agent ends each conversation; then wrap-up, then the next caller
            stack.wait_for(lambda leg=leg: leg.is_ended, 10, "the agent's call to end")
        final = wait_agent_states(d, {"1001": "paused", "1002": "ready"}, WRAPUP + 10)
        return {
            "ended": time.monotonic(),
            "rings": [ring_seconds(c) for c in one.account.incoming],
            "rings_while_paused": rings_while_paused,
            "paused": paused["1001"],
            "up_before_resume": up_before_resume,
            "final": final,
        }

    result = in_stack(scenario)
    code = d.stop()
    assert code == 0, d.output()[-3000:]
    first, second = entered(d)
    print(f"1001's unanswered rings: {', '.join(f'{s:.1f}s' for s in result['rings'])}")
    # Rung twice (both for the first caller), each to the ring timeout, then paused.
    assert result["rings_while_paused"] == MISSES, result
    assert all(RING - 0.5 <= s <= RING + 2.0 for s in result["rings"]), result
    assert result["paused"]["state"] == "paused" and result["paused"]["reason"] == "no-answer"
    assert result["up_before_resume"] == [True, True], result  # still waiting, not dropped
    # The first caller kept its place at the head through both misses; 1002 took it first.
    offers = [(c, a) for v, c, a in queue_events(d) if v == "RINGING"]
    assert offers == [(first, "1001"), (first, "1001"), (first, "1002"), (second, "1002")], offers
    assert steps(d, first) == [
        ("ENTERQUEUE", ""),
        *[("RINGING", "1001"), ("RINGNOANSWER", "1001")] * MISSES,
        ("RINGING", "1002"),
        ("CONNECT", "1002"),
        ("COMPLETEAGENT", "1002"),
    ], steps(d, first)
    assert steps(d, second) == [
        ("ENTERQUEUE", ""),
        ("RINGING", "1002"),
        ("CONNECT", "1002"),
        ("COMPLETEAGENT", "1002"),
    ], steps(d, second)
    assert result["final"]["1001"]["reason"] == "no-answer"
    # Published: two RingNoAnswer events, and 1001's last status (before the phones went away
    # at the end of the test) is the pause.
    log = [w for at, w in agent_log(statuses, "1001") if at <= result["ended"]]
    assert log.count("RingNoAnswer") == MISSES, log
    assert [w for w in log if w.startswith("status:")][-1] == "status:paused", log
