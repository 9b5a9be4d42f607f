"""The bank hotline on the real PBX, persona by persona (issue 4, "Done when").

Each test places a real SIP call (pjsua2) through the dev PBX's Asterisk to the real daemon
(`ivr-engine serve` with its own SQLite files), keys what a caller would key (barge-in where the
flow allows it, so a call takes seconds, not the minutes the Mandarin menus last), and then
checks three independent witnesses:
- Asterisk's AMI VarSet events on the caller's channel (what the daemon handed to the dialplan:
  IVR_NEXT, IVR_QUEUE, IVR_PRIORITY, IVR_SKILLS, IVR_LANGUAGE, IVR_DATA_*);
- Asterisk's messages log: the dialplan's `acd-wait` line (the caller reached the ACD's
  waiting context with the queue and priority the daemon chose);
- the daemon's call record, read back through `ivr-engine calls show ID --json` and
  `calls list --json` as an admin would; and the daemon's log of the ACD's decision.
The ACD (on by default, roster asterisk-conf/agents.yaml) routes the queued callers. No agent
is logged in on the dev PBX, so the ACD does not keep the caller on music (the roster's
`join_empty: false`): the caller goes to the queue's overflow, the operators, who are not there
either: the PBX ends the call.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from ivr_engine.config import AmiSettings
from ivr_engine.transport.ami import AmiClient
from simulate.script import parse, run
from simulate.sip import SipStack
from tests.support.daemon import Daemon, run_cli

pytestmark = [pytest.mark.pbx, pytest.mark.sip, pytest.mark.slow]

CALL_SECONDS = 60.0  # a persona call must end within this (the brief's budget per test)


@pytest.fixture(scope="module")
def prompts_built() -> None:
    run_cli("prompts", "build")  # incremental: fast when make already built them


@pytest.fixture
def daemon(dev_pbx, hotline, prompts_built, tmp_path):
    d = Daemon(tmp_path)
    d.seed(customers=0)
    d.start()
    yield d
    code = d.stop()
    assert code == 0, d.output()


@dataclass
class HotlineCall:
    steps: list[str]
    heard: float
    speech: int
    seconds: float
    record: dict[str, Any]
    listed: dict[str, Any]
    channel_vars: dict[str, str] = field(default_factory=dict)
    pbx_log: list[str] = field(default_factory=list)
    daemon_log: str = ""

    @property
    def nodes(self) -> list[str]:
        return [s["node"] for s in self.record["steps"]]

    @property
    def node_types(self) -> list[str]:
        return [s["type"] for s in self.record["steps"]]

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.record["events"] if e["kind"] == kind]

    def queue_line(self) -> str:
        lines = [x for x in self.pbx_log if "acd-wait" in x and self.record["id"] in x]
        assert len(lines) == 1, self.pbx_log
        return lines[0]


def _sip_call(number: str, script: str, sip_port: int, withheld: bool) -> dict[str, Any]:
    """Runs in a worker thread: one SipStack for this call only."""
    with SipStack() as stack:
        line = stack.caller(number, withheld=withheld)
        call = line.call(f"sip:4008@127.0.0.1:{sip_port}")
        call.wait_connected(15)
        steps = run(call, parse(script), prompt_timeout=40)
        if not call.is_ended:
            stack.wait_for(lambda: call.is_ended, CALL_SECONDS, "the PBX to end the call")
        return {"steps": steps, "heard": call.heard_seconds(),
                "speech": len(call.speech().segments)}


def _wait_record(daemon: Daemon, timeout: float = 15.0) -> str:
    """The id of the one finished call record (the daemon writes it in the background)."""
    deadline = time.monotonic() + timeout
    while True:
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
        if time.monotonic() > deadline:
            raise AssertionError(f"no finished call record after {timeout}s:\n{daemon.logs()}")
        time.sleep(0.2)


async def hotline_call(
    dev_pbx, daemon: Daemon, number: str, script: str, *, withheld: bool = False
) -> HotlineCall:
    """Call 4008 from `number`, run `script`, wait for the end; gather the evidence."""
    ami = AmiClient(AmiSettings(port=dev_pbx.ami_port))
    await ami.connect()
    stream = ami.events("VarSet")
    seen: list[Any] = []

    async def collect() -> None:
        async for event in stream:
            seen.append(event)

    collector = asyncio.create_task(collect(), name="varset-collector")
    mark = dev_pbx.mark()
    t0 = time.monotonic()
    try:
        result = await asyncio.to_thread(
            _sip_call, number, script, dev_pbx.sip_port, withheld
        )
    finally:
        await asyncio.sleep(0.5)
        stream.close()
        await collector
        await ami.close()
    seconds = time.monotonic() - t0
    call_id = await asyncio.to_thread(_wait_record, daemon)
    record = json.loads(daemon.cli("calls", "show", call_id, "--json").stdout)
    listed = json.loads(daemon.cli("calls", "list", "--json").stdout)
    assert [r["id"] for r in listed] == [call_id]
    channel_vars = {
        e.variable: e.value
        for e in seen
        if e.uniqueid == call_id and e.variable.startswith("IVR_")
    }
    print(f"{number or 'withheld'}: {seconds:.1f}s, heard {result['heard']:.1f}s, "
          f"steps {result['steps']}")
    return HotlineCall(
        steps=result["steps"],
        heard=result["heard"],
        speech=result["speech"],
        seconds=seconds,
        record=record,
        listed=listed[0],
        channel_vars=channel_vars,
        pbx_log=dev_pbx.lines_since(mark),
        daemon_log=daemon.logs(),
    )


def assert_queued(call: HotlineCall, queue: str, priority: int, skills: str, lang: str) -> None:
    """The daemon chose this queue, and the record, the channel and the PBX agree."""
    r = call.record
    assert r["outcome"] == "queued", r
    assert r["queue"] == {"name": queue, "skills": [skills], "priority": priority}, r["queue"]
    v = call.channel_vars
    assert v["IVR_NEXT"] == "acd", v
    assert (v["IVR_QUEUE"], v["IVR_PRIORITY"], v["IVR_SKILLS"], v["IVR_LANGUAGE"]) == (
        queue, str(priority), skills, lang), v
    # the caller reached the ACD's [acd-wait] with the daemon's queue and priority
    line = call.queue_line()
    assert f"queue={queue} prio={priority}" in line, line
    assert call.listed["queue"]["name"] == queue and call.listed["outcome"] == "queued"
    # nobody who could serve the call is logged in: the ACD sent it on to the operators
    assert f"call {r['id']}: no agent for queue {queue} is logged in: to operators" in (
        call.daemon_log), call.daemon_log[-3000:]


def assert_who(call: HotlineCall, caller: str, customer: bool, tier: str, region: str,
               lang: str) -> None:
    r = call.record
    assert r["caller"] == caller, r["caller"]
    assert (r["customer_id"] is not None) is customer, r["customer_id"]
    assert (r["tier"], r["region"], r["language"]) == (tier, region, lang), r
    listed = call.listed
    assert (listed["caller"], listed["tier"], listed["language"]) == (caller, tier, lang)


async def test_chen_vip_green_channel(dev_pbx, daemon):
    # No keys at all: the green channel has no menu to answer.
    call = await hotline_call(dev_pbx, daemon, "13926000001", "w")
    assert_who(call, "139****0001", True, "vip", "Guangzhou, Guangdong", "yue")
    # greeted by surname in Cantonese, told he is on the VIP line, and nothing else
    assert call.record["announcements"] == ["greeting_vip", "vip_line"]
    assert call.speech >= 1
    assert "menu" not in call.node_types and "collect" not in call.node_types, call.nodes
    assert call.nodes[-1] == "hotline/vip_queue"
    assert_queued(call, "vip", 10, "cantonese and private_banking", "yue")
    assert call.channel_vars["IVR_DATA_TIER"] == "vip"
    assert call.seconds < CALL_SECONDS


async def test_wang_name_region_bill_before_any_menu_then_repayment(dev_pbx, daemon):
    # Listen to the greeting, the bill and the repayment offer to the end, take the guidance
    # (1), then ask for a person (0) over it: type-ahead answers the main menu unheard.
    call = await hotline_call(dev_pbx, daemon, "13800138000", "w,1,p1,0")
    assert_who(call, "138****8000", True, "local", "Beijing", "cmn")
    said = call.record["announcements"]
    assert said[:5] == ["welcome", "greeting_name_region", "bill_statement",
                        "bill_repayment_offer", "repayment_guidance"], said
    assert said[5:] == ["operator", "survey_invite"], said
    # the bill came before any menu node
    types = call.node_types
    assert call.nodes.index("hotline/bill_announce") < types.index("menu")
    steps = {s["node"]: s for s in call.record["steps"]}
    assert steps["hotline/bill_offer"]["inputs"]["keys"] == ["1 match"]
    assert steps["hotline/main_menu"]["inputs"]["keys"] == ["0 match"]
    caller = [e for e in call.events("caller-identified")][0]
    assert caller["known"] is True and caller["tier"] == "local"
    assert_queued(call, "general", 5, "mandarin and any", "cmn")
    assert call.seconds < CALL_SECONDS


async def test_shenzhen_landline_not_a_customer_gets_cantonese(dev_pbx, daemon):
    # Hear the greeting and the Cantonese main menu to the end, then 0 (a person).
    call = await hotline_call(dev_pbx, daemon, "075582345678", "w,0")
    assert_who(call, "075*****5678", False, "unknown", "Shenzhen, Guangdong", "yue")
    said = call.record["announcements"]
    assert said == ["welcome", "region_announce", "cantonese_welcome", "main_menu", "operator",
                    "survey_invite"], said
    sets = {e["name"]: e["value"] for e in call.events("set")}
    assert sets["call.lang"] == "yue"  # chosen before the first word was said
    assert call.nodes.index("hotline/language") < call.nodes.index("hotline/greet_region")
    menu = call.record["steps"][call.nodes.index("hotline/main_menu")]
    assert menu["inputs"]["keys"] == ["0 match"], menu
    assert_queued(call, "cantonese", 3, "cantonese and any", "yue")
    assert call.channel_vars["IVR_DATA_TIER"] == "unknown"
    assert call.channel_vars["IVR_DATA_CUSTOMER"] == ""
    assert call.seconds < CALL_SECONDS


async def test_li_risk_flagged_goes_to_the_risk_desk_after_the_pin(dev_pbx, daemon):
    # 1 (self-service) over the greeting, 2 (balance: needs the PIN) over the next menu,
    # then the PIN once its prompt has been heard.
    call = await hotline_call(dev_pbx, daemon, "13700000003", "p2,1,p1.5,2,w,s:123456")
    assert call.record["customer_id"] is not None and call.record["tier"] == "out_of_region"
    nodes = call.nodes
    assert nodes.index("verify_pin/check") < nodes.index("hotline/risk_desk")
    assert "hotline/balance" not in nodes  # the risk desk, not the balance
    pin_step = call.record["steps"][nodes.index("verify_pin/enter")]
    assert pin_step["inputs"]["keys"] == ["****** match"], pin_step
    assert [e["kind"] for e in call.record["events"] if e["kind"].startswith("pin-")] == [
        "pin-verified"]
    assert "risk_desk_transfer" in call.record["announcements"]
    assert_queued(call, "risk", 9, "risk and mandarin", "cmn")
    assert call.channel_vars["IVR_DATA_REASON"] == "risk_flag"
    assert call.channel_vars["IVR_DATA_VERIFIED"] == "true"
    assert call.seconds < CALL_SECONDS


async def test_zhao_group_repeat_caller_flagged_for_the_agent(dev_pbx, daemon):
    call = await hotline_call(dev_pbx, daemon, "13500000004", "p2,0")
    assert call.record["tier"] == "group" and call.record["customer_id"] is not None
    caller = call.events("caller-identified")[0]
    assert caller["calls_today"] == 3  # before this one
    # group priority 8, +1 for a repeat caller; Guangdong number: the Cantonese-speaking side
    assert_queued(call, "corporate", 9, "cantonese and corporate", "yue")
    assert call.channel_vars["IVR_DATA_REPEAT_CALLER"] == "true"
    assert call.channel_vars["IVR_DATA_CALLS_TODAY"] == "3"
    data = call.events("queue-data")[0]
    assert data["repeat_caller"] == "true" and data["tier"] == "group"
    # this call counted: the CIF now says 4 calls today
    shown = json.loads(daemon.cli("cif", "show", "13500000004", "--json").stdout)
    assert shown["calls_today"] == 4
    assert call.seconds < CALL_SECONDS


async def test_withheld_caller_takes_the_anonymous_path_to_a_person(dev_pbx, daemon):
    call = await hotline_call(dev_pbx, daemon, "", "p2,0", withheld=True)
    assert_who(call, "anonymous", False, "anonymous", "unknown", "cmn")
    assert call.record["announcements"][0] == "welcome"
    assert "hotline/welcome_plain" in call.nodes
    assert not any(n.startswith("hotline/greet") for n in call.nodes)
    assert_queued(call, "general", 2, "mandarin and any", "cmn")
    assert call.channel_vars["IVR_DATA_TIER"] == "anonymous"
    assert call.seconds < CALL_SECONDS


def _vip_call_with_agent(sip_port: int) -> dict[str, Any]:
    """Private-banking agent 1001 logged in (registered); Chen calls (worker thread)."""
    with SipStack() as stack:
        agent = stack.agent("1001", "agent-1001-dev", registrar=f"sip:127.0.0.1:{sip_port}",
                            auto_answer_after=0.3)
        agent.wait_registered(10)
        stack.pump(1.0)  # the daemon logs the agent in when its phone registers
        t0 = time.monotonic()
        call = stack.caller("13926000001").call(f"sip:4008@127.0.0.1:{sip_port}")
        stack.wait_for(lambda: bool(agent.incoming) and agent.incoming[0].is_connected,
                       CALL_SECONDS, "the VIP agent to be connected")
        reached = time.monotonic() - t0
        caller_connected = call.is_connected
        call.end()
        stack.pump(0.5)
        agent.unregister()
        stack.pump(0.3)
        return {"reached": reached, "caller_connected": caller_connected,
                "agent_saw": agent.incoming[0].remote_uri}


async def test_chen_reaches_a_private_banking_agent(dev_pbx, daemon):
    """With an agent of the VIP queue logged in, the green channel ends with a person: the
    ACD's agent 1001 (private banking, no Cantonese: after the vip queue's 30 s relaxation)."""
    mark = dev_pbx.mark()
    result = await asyncio.to_thread(_vip_call_with_agent, dev_pbx.sip_port)
    call_id = await asyncio.to_thread(_wait_record, daemon)
    record = json.loads(daemon.cli("calls", "show", call_id, "--json").stdout)
    assert record["queue"]["name"] == "vip" and record["queue"]["priority"] == 10
    assert result["caller_connected"] and "13926000001" in result["agent_saw"], result
    # the ACD's [acd-answered] reported agent 1001's answer of this call to the daemon
    answered = [x for x in dev_pbx.lines_since(mark) if f"acd-answered {call_id} agent=1001" in x]
    assert len(answered) == 1, dev_pbx.lines_since(mark)
    print(f"VIP caller reached agent 1001 in {result['reached']:.1f}s")
    assert 30 <= result["reached"] < CALL_SECONDS
