"""Fault: Asterisk restarts under the running daemon.

The daemon sees the AMI connection drop, reconnects with backoff once Asterisk is back
(FullyBooted), nothing in it crashes while the PBX is away, and a call after the restart is
served. The shared dev PBX is restarted in place (`core restart now`: same process, re-exec)
and the test waits for FullyBooted before it ends, so other users find it up again."""

from __future__ import annotations

import re
import sqlite3
import time

import pytest

from tests.faults.support import call_hotline

pytestmark = [pytest.mark.pbx, pytest.mark.sip, pytest.mark.slow]


def wait_log(d, needle: str, timeout: float) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while needle not in d.logs():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{needle!r} not logged within {timeout:g}s:\n{d.logs()[-3000:]}")
        time.sleep(0.2)
    return time.monotonic() - t0


def test_asterisk_restart_daemon_reconnects_and_serves(dev_pbx, hotline, prompts_built, daemons):
    d = daemons(IVR_ENGINE_AMI_PING_INTERVAL="2")
    d.seed(customers=0)
    d.start()
    wait_log(d, "logged in as", 15)
    t0 = time.monotonic()
    try:
        dev_pbx.cli("core restart now", timeout=10)
    except Exception as exc:  # the CLI connection may die with the process it talks to
        print(f"core restart now: {exc}")
    lost = wait_log(d, "connection lost", 20)
    dev_pbx.wait_booted(timeout=90)
    booted = time.monotonic() - t0
    back = wait_log(d, "(reconnected)", 60)
    assert d.proc is not None and d.proc.poll() is None, d.output()  # still running
    call = call_hotline(dev_pbx.sip_port, "13500000004", "p2,0")
    code = d.stop()
    assert code == 0, d.output()
    logs = d.logs()
    attempts = [int(n) for n in re.findall(r"reconnecting in [0-9.]+s \(attempt (\d+)\)", logs)]
    print(
        f"Asterisk restart: daemon saw the loss after {lost:.1f}s, PBX FullyBooted after "
        f"{booted:.1f}s, AMI back after {back:.1f}s in {max(attempts, default=0)} attempt(s)"
    )
    assert attempts and attempts == sorted(attempts), attempts
    assert call.speech >= 1
    with sqlite3.connect(d.db) as db:
        rows = db.execute("SELECT outcome FROM call_records").fetchall()
    assert rows == [("queued",)], rows
    assert "Traceback" not in logs + d.output()
    assert "call handler failed" not in logs
