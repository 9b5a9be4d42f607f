"""The first call, end to end: a real SIP call into the real Asterisk reaches the daemon over
FastAGI, hears prompts, sends DTMF by SIP INFO, and both sides agree on what happened."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import pytest

from ivr_engine.config import AmiSettings
from ivr_engine.transport.ami import AmiClient
from simulate.script import parse, run
from simulate.sip import SipStack
from tests.support.daemon import Daemon, run_cli

pytestmark = [pytest.mark.pbx, pytest.mark.sip, pytest.mark.slow]


@pytest.fixture(scope="module")
def prompts_built():
    run_cli("prompts", "build")  # incremental: fast when make already built them


@pytest.fixture
def daemon(dev_pbx, hotline, prompts_built, tmp_path):
    d = Daemon(tmp_path)
    d.seed(customers=0)
    d.start()
    yield d
    code = d.stop()
    assert code == 0, d.output()


def place_call(number: str, script: str, *, sip_port: int, max_seconds: float = 90.0) -> dict:
    """Call the hotline from `number` and run `script`; runs in a worker thread."""
    with SipStack() as stack:
        call = stack.caller(number).call(f"sip:4008@127.0.0.1:{sip_port}")
        call.wait_connected(15)
        steps = run(call, parse(script), prompt_timeout=60)
        stack.wait_for(lambda: call.is_ended, max_seconds, "the PBX to end the call")
        return {"steps": steps, "speech": call.speech().segments, "heard": call.heard_seconds()}


async def test_wang_hears_prompts_presses_keys_and_is_queued(dev_pbx, daemon):
    ami = AmiClient(AmiSettings(port=dev_pbx.ami_port))
    await ami.connect()
    stream = ami.events("VarSet", "Hangup")
    seen: list = []

    async def collect() -> None:
        async for event in stream:
            seen.append(event)

    collector = asyncio.create_task(collect())
    t0 = time.monotonic()
    try:
        # Wang (statement due, unpaid): greeting, bill announcement, repayment offer (a menu):
        # 2 = main menu; then 0 = a person.
        result = await asyncio.to_thread(
            place_call, "13800138000", "w,2,w,0", sip_port=dev_pbx.sip_port
        )
    finally:
        await asyncio.sleep(0.5)
        stream.close()
        await collector
        await ami.close()
    elapsed = time.monotonic() - t0
    print(f"first call e2e: {elapsed:.1f}s, heard {result['heard']:.1f}s of audio")

    # The caller heard prompts (speech found in the received audio) before each key press.
    assert len(result["speech"]) >= 2, result
    assert result["steps"][1] == "send 2" and result["steps"][3] == "send 0"

    # Asterisk reports the variables the daemon set on the channel.
    vars_ = {(e.variable, e.value) for e in seen if e.name == "VarSet"}
    assert ("IVR_NEXT", "acd") in vars_, sorted(vars_)  # the ACD is the default
    queue = dict(vars_).get("IVR_QUEUE")
    assert queue, sorted(vars_)

    # The daemon's record of the call, in its SQLite store.
    with sqlite3.connect(daemon.db) as db:
        rows = db.execute(
            "SELECT id, caller, tier, region, language, outcome, queue_name, body"
            " FROM call_records"
        ).fetchall()
    assert len(rows) == 1, rows
    call_id, caller, tier, region, language, outcome, queue_name, body = rows[0]
    assert caller == "138****8000"
    assert (tier, region, language) == ("local", "Beijing", "cmn")
    assert outcome == "queued" and queue_name == queue
    body = json.loads(body)
    inputs = [e for e in body["events"] if e["kind"] == "input"]
    assert [(e["digits"], e["status"]) for e in inputs][-2:] == [("2", "match"), ("0", "match")]
    assert "bill_statement" in body["announcements"]
    hangups = [e for e in seen if e.name == "Hangup"]
    assert any(e.fields.get("Uniqueid") == call_id for e in hangups)


def _operator_answers(sip_port: int, caller_number: str) -> dict:
    """Register operator 1009, call the hotline, and see who answers (worker thread)."""
    with SipStack() as stack:
        op = stack.agent(
            "1009", "agent-1009-dev", registrar=f"sip:127.0.0.1:{sip_port}", auto_answer_after=0.3
        )
        op.wait_registered(10)
        t0 = time.monotonic()
        call = stack.caller(caller_number).call(f"sip:4008@127.0.0.1:{sip_port}")
        stack.wait_for(lambda: bool(op.incoming) and op.incoming[0].is_connected, 30,
                       "the operator to be connected")
        reached = time.monotonic() - t0
        caller_connected = call.is_connected
        call.end()
        stack.pump(0.5)
        op.unregister()
        stack.pump(0.3)
        return {"reached": reached, "caller_connected": caller_connected,
                "operator_saw": op.incoming[0].remote_uri}


def test_daemon_killed_dialplan_fallback_reaches_operator(
    dev_pbx, hotline, prompts_built, tmp_path
):
    d = Daemon(tmp_path)
    d.seed(customers=0)
    d.start()
    d.kill()  # SIGKILL: nothing listens on the FastAGI port any more
    mark = dev_pbx.mark()
    result = _operator_answers(dev_pbx.sip_port, "13800138000")
    assert result["caller_connected"]
    assert "13800138000" in result["operator_saw"]
    log = "\n".join(dev_pbx.lines_since(mark))
    assert "ivr-fallback" in log and "reason=agi-failure" in log, log
    # The apology is short: the caller reaches a person within seconds, not silence.
    assert result["reached"] < 15, result
