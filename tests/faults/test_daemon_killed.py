"""Fault: the daemon is SIGKILLed while callers are in the IVR.

Asterisk watches the FastAGI socket while it plays a prompt or waits for digits (res_agi hands
its fd to ast_waitstream_full / ast_waitfordigit_full as the control fd), so the daemon's death
ends the AGI at once; AGISTATUS is not SUCCESS with IVR_NEXT set, and the dialplan plays the
apology and takes the caller to the operators. The dead air each caller hears is measured in
the audio the caller received: from the end of the last speech before the kill to the start
of the apology. Then a new daemon on the same files serves a new call."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import pytest

from tests.faults.audio import dead_air_around
from tests.faults.support import call_hotline, sip_stack

pytestmark = [pytest.mark.pbx, pytest.mark.sip, pytest.mark.slow]

MAX_DEAD_AIR = 3.0
# Non-customer Shenzhen landline and Wang: two different paths through the IVR's greetings.
CALLERS = ("075582345678", "13800138000")


def _calls_killed(sip_port: int, kill: Callable[[], None]) -> dict:
    """Two callers in the IVR, operators 1009/1010 registered; `kill` is called once both
    have heard 2 s of the IVR's prompts."""
    target = f"sip:4008@127.0.0.1:{sip_port}"
    with sip_stack() as stack:
        ops = [
            stack.agent(u, f"agent-{u}-dev", registrar=f"sip:127.0.0.1:{sip_port}",
                        auto_answer_after=0.3)
            for u in ("1009", "1010")
        ]
        for op in ops:
            op.wait_registered(10)
        first = stack.caller(CALLERS[0]).call(target)
        first.wait_connected(15)
        stack.pump(1.5)
        second = stack.caller(CALLERS[1]).call(target)
        second.wait_connected(15)
        calls = [first, second]
        # Both callers are hearing the IVR's greetings (the hotline plays them back to back).
        for c in calls:
            stack.wait_for(lambda c=c: sum(e - s for s, e in c.speech().segments) >= 2.0, 30,
                           "a caller to hear 2 s of the IVR")
        fault_at = [c.heard_seconds() for c in calls]
        kill()
        killed = time.monotonic()
        answered = lambda: sum(1 for op in ops for c in op.incoming if c.is_connected)  # noqa: E731
        stack.wait_for(lambda: answered() == len(calls), 40, "both callers to reach an operator")
        reached = time.monotonic() - killed
        stack.pump(1.0)
        connected = [c.is_connected for c in calls]
        pcm = [c.heard() for c in calls]
        for c in calls:
            c.end()
        stack.pump(0.5)
        for op in ops:
            op.unregister()
        stack.pump(0.3)
        return {"fault_at": fault_at, "pcm": pcm, "reached": reached, "connected": connected,
                "operators": sorted(c.remote_uri for op in ops for c in op.incoming)}


def test_sigkill_with_callers_in_the_ivr(dev_pbx, hotline, prompts_built, daemons, tmp_path):
    d = daemons()
    d.seed(customers=0)
    d.start()
    mark = dev_pbx.mark()
    result = _calls_killed(dev_pbx.sip_port, d.kill)

    # Every caller was taken by the fallback and reached a person: no call lost.
    assert all(result["connected"]), result["connected"]
    for number in CALLERS:
        assert any(number in uri for uri in result["operators"]), result["operators"]
    log = "\n".join(dev_pbx.lines_since(mark))
    assert log.count("ivr-fallback") >= len(CALLERS), log

    gaps, since_kill = [], []
    for number, pcm, fault_at in zip(CALLERS, result["pcm"], result["fault_at"], strict=True):
        air = dead_air_around(pcm, fault_at)
        gaps.append(air.gap)
        since_kill.append(air.next_speech_start - fault_at)
        print(
            f"SIGKILL caller {number}: kill at {fault_at:.2f}s of media, last speech ended "
            f"{air.last_speech_end:.2f}s, apology began {air.next_speech_start:.2f}s: dead air "
            f"{air.gap:.2f}s; apology {since_kill[-1]:.2f}s after the kill"
        )
    print(f"SIGKILL: both callers with an operator {result['reached']:.1f}s after the kill")
    assert max(gaps) < MAX_DEAD_AIR, gaps
    # Stricter than the gap: the apology began within 3 s of the kill itself.
    assert max(since_kill) < MAX_DEAD_AIR, since_kill

    # A new daemon on the same files serves new calls at once.
    d.start()
    heard = call_hotline(dev_pbx.sip_port, "13700000003", "p4,h")
    assert heard.speech >= 1
    code = d.stop()
    assert code == 0, d.output()
    with sqlite3.connect(d.db) as db:
        rows = db.execute("SELECT caller, outcome FROM call_records").fetchall()
    assert ("137****0003", "hangup-by-caller") in rows, rows
