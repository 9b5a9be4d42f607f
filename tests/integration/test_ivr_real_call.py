"""Issue 3's real call: the flow language on the real PBX.

One pjsua2 call from Ms Wang (13800138000) through the dev PBX to the real daemon exercises a
menu (barge-in), no-input escalation (silence after the PIN prompt: the escalated prompt is
played), a collect with a wrong then a right entry (a 3-digit PIN is a no-match, then the right
PIN), two sensitive entries (the PIN and the target account of a transfer), and a risky
operation read back and confirmed with 1. Then:
- the PIN and the account number appear NOWHERE: not in the daemon's log or output, not in the
  raw bytes of its SQLite files (CIF, call records, audit, with their WAL files), not in
  anything Asterisk wrote under /var/log/asterisk (messages, CDR, queue_log) during the call;
- the audit log holds the confirmed transfer, with the target as its last 4 digits, and
  `ivr-engine audit verify` passes;
- the CIF balance moved by the amount; the payment keeps only the last 4 of the target.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from simulate.script import parse, run
from simulate.sip import SipStack
from tests.support.daemon import Daemon, run_cli

pytestmark = [pytest.mark.pbx, pytest.mark.sip, pytest.mark.slow]

PIN = "123456"  # the dev PIN of every persona (ivr_engine/cif/seed.py)
ACCOUNT = "6222020000001234"  # the transfer's target account, keyed by the caller
AMOUNT_YUAN = 5000

# p1.5,2      barge into the greeting: 2 (main menu) reaches the bill offer as type-ahead
# p1,5        barge into the main menu: 5 (transfers) -> the PIN
# w,w         hear the PIN prompt, stay silent: the escalated no-input prompt is played
# s:123#      a 3-digit PIN: no-match, the PIN is asked again
# w,s:PIN     the right PIN
# w,s:ACC#    the target account (sensitive), w,5000# the amount
# w,1         the read-back, confirmed with 1; p2,h: "done" starts, hang up
SCRIPT = f"p1.5,2,p1,5,w,w,s:123#,w,s:{PIN},w,s:{ACCOUNT}#,w,{AMOUNT_YUAN}#,w,1,p2,h"


@pytest.fixture(scope="module")
def prompts_built() -> None:
    run_cli("prompts", "build")


@pytest.fixture
def daemon(dev_pbx, hotline, prompts_built, tmp_path):
    d = Daemon(tmp_path)
    d.seed(customers=0)
    d.start()
    yield d
    code = d.stop()
    assert code == 0, d.output()


def _place(number: str, script: str, sip_port: int) -> dict[str, Any]:
    with SipStack() as stack:
        call = stack.caller(number).call(f"sip:4008@127.0.0.1:{sip_port}")
        call.wait_connected(15)
        steps = run(call, parse(script), prompt_timeout=40)
        stack.wait_for(lambda: call.is_ended, 30, "the call to end")
        return {"steps": steps, "speech": call.speech().segments, "heard": call.heard_seconds()}


def _finished_record(daemon: Daemon, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.db.exists():
            with sqlite3.connect(f"file:{daemon.db}?mode=ro", uri=True) as db:
                try:
                    rows = db.execute(
                        "SELECT id FROM call_records WHERE outcome IS NOT NULL"
                    ).fetchall()
                except sqlite3.OperationalError:
                    rows = []
            if rows:
                assert len(rows) == 1, rows
                return str(rows[0][0])
        time.sleep(0.2)
    raise AssertionError(f"no finished call record after {timeout}s:\n{daemon.logs()}")


def _wang_savings_cents(db_path: Path) -> int:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT a.balance_cents FROM accounts a JOIN customers c ON c.id = a.customer_id"
            " WHERE c.surname = 'Wang' AND c.cif_no = 'P0000002'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _asterisk_logs(dev_pbx) -> dict[Path, int]:
    root = dev_pbx.in_root("/var/log/asterisk")
    return {p: p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _written_since(sizes: dict[Path, int], now: dict[Path, int]) -> dict[Path, bytes]:
    """What each Asterisk log file gained during the call (rotated files: all of them)."""
    out: dict[Path, bytes] = {}
    for p in now:
        data = p.read_bytes()
        before = sizes.get(p, 0)
        out[p] = data[before:] if len(data) >= before else data
    return out


async def test_menu_escalation_collect_sensitive_and_confirmed_transfer(dev_pbx, daemon):
    balance_before = _wang_savings_cents(daemon.db)
    logs_before = _asterisk_logs(dev_pbx)
    t0 = time.monotonic()
    result = await asyncio.to_thread(_place, "13800138000", SCRIPT, dev_pbx.sip_port)
    elapsed = time.monotonic() - t0
    print(f"issue-3 real call: {elapsed:.1f}s, heard {result['heard']:.1f}s: {result['steps']}")
    call_id = await asyncio.to_thread(_finished_record, daemon)
    record = json.loads(daemon.cli("calls", "show", call_id, "--json").stdout)
    steps: dict[str, dict[str, Any]] = {}
    for s in record["steps"]:
        steps.setdefault(s["node"], s)  # the first visit of each node
    nodes = [s["node"] for s in record["steps"]]
    said = record["announcements"]

    # the menu, with barge-in: the key went in while its prompt played (1 s into it)
    assert steps["hotline/main_menu"]["inputs"]["keys"] == ["5 match"], steps["hotline/main_menu"]
    assert "main_menu" in said and "main_menu_short" not in said[: said.index("pin_entry")]
    # the PIN collect: silence (escalation), a wrong entry (no-match), the right one; masked
    pin = steps["verify_pin/enter"]
    assert pin["inputs"]["keys"] == ["no-input", "****** no-match", "****** match"], pin
    first = said.index("pin_entry")
    assert said[first:first + 7] == [
        "pin_entry", "no_input_1", "pin_entry", "no_match_1", "pin_entry", "pin_ok",
        "transfer_account_entry",
    ], said
    assert nodes.index("verify_pin/check") < nodes.index("transfer/account")
    # the risky operation: read back, confirmed with 1, executed, audited
    assert steps["transfer/account"]["inputs"]["keys"] == ["****** match"]
    assert steps["transfer/amount"]["inputs"]["keys"] == [f"{AMOUNT_YUAN} match"]
    assert steps["transfer/readback"]["inputs"]["keys"] == ["1 confirmed"], steps
    assert "transfer_readback" in said and "operation_done" in said
    audited = [e for e in record["events"] if e["kind"] == "audited"]
    assert [(e["operation"], e["outcome"]) for e in audited] == [("transfer", "confirmed")]
    assert any(e["kind"] == "transfer-done" for e in record["events"])
    assert record["outcome"] == "hangup-by-caller", record["outcome"]

    # the audit log: the record, the target as its last 4 digits, the chain intact
    audit = json.loads(daemon.cli("audit", "list", "--json").stdout)
    entries = audit if isinstance(audit, list) else audit["records"]
    transfers = [a for a in entries if a["operation"] == "transfer"]
    assert len(transfers) == 1, entries
    details = transfers[0]["details"]
    assert details["target"] == "****1234" and str(details["amount"]) == str(AMOUNT_YUAN)
    assert transfers[0]["outcome"] == "confirmed"
    daemon.cli("audit", "verify")  # raises unless it exits 0

    # the money moved; the payment knows only the last 4 of the target
    assert balance_before - _wang_savings_cents(daemon.db) == AMOUNT_YUAN * 100
    with sqlite3.connect(f"file:{daemon.db}?mode=ro", uri=True) as db:
        payments = db.execute("SELECT kind, amount_cents, counterparty_last4 FROM payments"
                              ).fetchall()
    assert payments == [("transfer", AMOUNT_YUAN * 100, "1234")]

    # the secrets: nowhere on disk, in the logs, or in Asterisk's files
    await asyncio.sleep(1.0)  # let Asterisk flush the CDR of the call
    haystacks: dict[str, bytes] = {
        "daemon log": daemon.log.read_bytes(),
        "daemon output": (daemon.workdir / "daemon.out").read_bytes(),
    }
    for p in sorted(daemon.workdir.rglob("*")):
        if p.is_file() and ".sqlite3" in p.name:
            haystacks[f"sqlite {p.name}"] = p.read_bytes()
    written = _written_since(logs_before, _asterisk_logs(dev_pbx))
    for p, data in written.items():
        haystacks[f"asterisk {p.name}"] = data
    assert any(k.startswith("sqlite ivr.sqlite3") for k in haystacks), sorted(haystacks)
    assert b"hotline call from 13800138000" in haystacks["asterisk messages"] or any(
        call_id.encode() in data for k, data in haystacks.items() if "Master.csv" in k
    ), "the Asterisk logs searched do not cover this call"
    assert len(haystacks["daemon log"]) > 0
    leaks = [
        (where, secret)
        for where, data in haystacks.items()
        for secret in (PIN, ACCOUNT)
        if secret.encode() in data
    ]
    assert leaks == [], leaks
    assert elapsed < 90, elapsed
