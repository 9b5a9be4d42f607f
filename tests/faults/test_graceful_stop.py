"""Fault: the daemon is asked to stop (SIGTERM) while a caller is in the IVR.

It stops accepting at once (its listening socket closes: a new call gets AGISTATUS=FAILURE and
the dialplan's fallback), lets the call in progress run until `agi.drain_timeout`, then hands
it to the fallback (FAILURE), records it as `fallback`, flushes its stores and exits 0."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import pytest

from tests.faults.support import sip_stack

pytestmark = [pytest.mark.pbx, pytest.mark.sip, pytest.mark.slow]

DRAIN = 4.0


def test_sigterm_drains_then_hands_over(dev_pbx, hotline, prompts_built, daemons):
    d = daemons(IVR_ENGINE_AGI_DRAIN_TIMEOUT=str(DRAIN))
    d.seed(customers=0)
    d.start()
    assert d.proc is not None
    mark = dev_pbx.mark()
    port = dev_pbx.sip_port
    target = f"sip:4008@127.0.0.1:{port}"
    with sip_stack() as stack:
        ops = [
            stack.agent(u, f"agent-{u}-dev", registrar=f"sip:127.0.0.1:{port}",
                        auto_answer_after=0.3)
            for u in ("1009", "1010")
        ]
        for op in ops:
            op.wait_registered(10)
        # In the IVR: a non-customer listening to the greetings and menus (minutes of prompts).
        inside = stack.caller("075582345678").call(target)
        inside.wait_connected(15)
        stack.wait_for(lambda: sum(e - s for s, e in inside.speech().segments) >= 2.0, 30,
                       "the caller to hear 2 s of the IVR")
        d.proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        stack.pump(1.0)
        # A new call after the stop began: not taken, the fallback answers it.
        late = stack.caller("13700000003").call(target)
        late.wait_connected(15)

        def with_operator(number: str) -> bool:
            return any(number in c.remote_uri and c.is_connected for op in ops for c in op.incoming)

        stack.wait_for(lambda: with_operator("13700000003"), 30, "the late caller's operator")
        late_reached = time.monotonic() - stopped_at
        # The caller in the IVR kept hearing it until the drain deadline, then the fallback.
        stack.wait_for(
            lambda: with_operator("075582345678"), DRAIN + 30, "the IVR caller's operator"
        )
        inside_reached = time.monotonic() - stopped_at
        assert inside.is_connected and late.is_connected
        ivr_gap = inside.speech().longest_gap()
        for c in (inside, late):
            c.end()
        stack.pump(0.5)
        for op in ops:
            op.unregister()
        stack.pump(0.3)
    code = d.proc.wait(30)
    stopped = time.monotonic() - stopped_at
    print(
        f"SIGTERM: late caller with an operator after {late_reached:.1f}s; IVR caller handed "
        f"over {inside_reached:.1f}s after the signal (drain {DRAIN:g}s); exit {code} after "
        f"{stopped:.1f}s; longest silence the IVR caller heard {ivr_gap:.2f}s"
    )
    assert code == 0, d.output()
    assert DRAIN - 0.5 <= inside_reached, inside_reached  # the call was not cut before the deadline
    # No dead air for the caller in the IVR: prompts, then at once the apology and the queue.
    assert ivr_gap < 3.0, ivr_gap
    pbx_log = "\n".join(dev_pbx.lines_since(mark))
    # Both callers went through the dialplan's fallback. The late one: connection refused,
    # AGISTATUS=FAILURE. The drained one: the server writes FAILURE after cancelling it, but
    # res_agi (Asterisk 22) ends that AGI with AGISTATUS=SUCCESS, and the dialplan's missing-
    # IVR_NEXT branch ("no-next") takes the caller instead: either way, the fallback.
    assert pbx_log.count("ivr-fallback") == 2, pbx_log
    assert "reason=agi-failure" in pbx_log, pbx_log
    logs = d.logs()
    assert "SIGTERM: stopping" in logs
    assert "draining 1 call(s)" in logs and "cancelling 1 call(s)" in logs, logs
    assert "Traceback" not in logs + d.output()
    with sqlite3.connect(d.db) as db:
        rows = db.execute("SELECT caller, outcome, ended, body FROM call_records").fetchall()
    assert len(rows) == 1, rows  # the late call never reached the daemon
    caller, outcome, ended, body = rows[0]
    assert (caller, outcome) == ("075*****5678", "fallback") and ended, rows
    assert any(e["kind"] == "shutdown" for e in json.loads(body)["events"])
