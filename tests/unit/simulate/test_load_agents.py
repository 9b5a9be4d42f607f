"""Load with agents and the soak, without a PBX: generated SIPp scenarios, roster and flow;
SIPp's, AMI's and the daemon's event streams; the per-call join, decision latency, double
offers; the soak's checks; the side-by-side report."""

import math
import re
import xml.etree.ElementTree as ET

import pytest

from acd.roster import Roster
from ivr_engine.flow.loader import load_texts
from simulate import acdload as al
from simulate import soak
from simulate.loadreport import agent_sustained, agents_markdown, write_agents
from simulate.loadtest import LoadTestError

# ------------------------------------------------------------------ plans and generated files

def test_agent_plan_checks_and_capacity():
    plan = al.AgentPlan(count=40, ring=(0.5, 1.5), talk=(4, 8), no_answer=0.0)
    plan.check()
    assert plan.agents[:2] == ["2000", "2001"] and plan.agents[-1] == "2039"
    assert plan.capacity == pytest.approx(40 / (1.0 + 6.0))
    # declined offers cost a ring each: 1/(1-p) rings per served call
    assert al.AgentPlan(count=10, ring=(1, 1), talk=(3, 3), no_answer=0.5).capacity == \
        pytest.approx(10 / (1 + 3 + 1))
    for bad in (dict(count=0), dict(count=101), dict(count=5, ring=(2, 1)),
                dict(count=5, ring=(1, 20)), dict(count=5, no_answer=1.0),
                dict(count=5, talk=(-1, 2))):
        with pytest.raises(LoadTestError):
            al.AgentPlan(**bad).check()


def test_caller_plan_checks():
    al.CallerPlan(rate=10, duration=20).check()
    assert al.CallerPlan(rate=10, duration=20).calls == 200
    for bad in (dict(rate=0, duration=1), dict(rate=1, duration=1, hangup=2),
                dict(rate=1, duration=1, patience=(5, 400), max_wait=300)):
        with pytest.raises(LoadTestError):
            al.CallerPlan(**bad).check()


def test_spread_is_an_even_discrete_uniform():
    assert al.spread(2, 4, 4) == [2250, 2750, 3250, 3750]
    assert al.spread(3, 3, 8) == [3000]
    assert al.spread(1, 5, 1) == [3000]


def _sipp_elements(xml: str) -> list[ET.Element]:
    root = ET.fromstring(xml.split("?>", 1)[1].split("]>", 1)[-1]
                         if "<!DOCTYPE" in xml else xml)
    return list(root)


def test_agent_scenario_is_complete_xml_with_every_branch():
    plan = al.AgentPlan(count=3, ring=(0.5, 1.5), talk=(2, 4), no_answer=0.25, branches=4)
    xml = al.agent_xml(plan)
    assert "$" not in xml.replace("[$", "")  # every template field filled, SIPp's [$x] kept
    elements = _sipp_elements(xml.replace('<!DOCTYPE scenario SYSTEM "sipp.dtd">', ""))
    labels = {e.get("id") for e in elements if e.tag == "label"}
    jumps = {e.get(k) for e in elements for k in ("next", "ontimeout") if e.get(k)}
    assert jumps <= labels, jumps - labels  # no jump to a label that does not exist
    recvs = [e for e in elements if e.tag == "recv" and e.get("timeout")]
    assert sorted(int(e.get("timeout")) for e in recvs if e.get("request") == "CANCEL") == \
        al.spread(0.5, 1.5, 4)
    assert sorted(int(e.get("timeout")) for e in recvs if e.get("request") == "BYE") == \
        al.spread(2, 4, 4)
    assert any(e.get("chance") == "0.250000" and e.get("next") == "decline" for e in elements)
    # SIPp aborts a call on a message during a <pause>: the agent never pauses
    assert not [e for e in elements if e.tag == "pause"]
    assert "m=audio 30002 RTP/AVP" in xml


def test_branch_chooser_is_uniform():
    lines = al._chooser("x", 4)
    chances = [float(re.search(r'chance="([0-9.]+)"', line).group(1)) for line in lines[:-1]]
    left, probs = 1.0, []
    for c in chances:
        probs.append(left * c)
        left *= 1 - c
    probs.append(left)
    assert probs == pytest.approx([0.25] * 4, abs=1e-5)  # chances written with 6 decimals


def test_caller_scenario_patient_and_impatient():
    patient = al.caller_xml(al.CallerPlan(rate=1, duration=1, max_wait=120))
    assert 'timeout="120000" ontimeout="gave_up"' in patient and "wait0" not in patient
    mixed = al.caller_xml(al.CallerPlan(rate=1, duration=1, hangup=0.2, patience=(2, 4),
                                        branches=2, max_wait=60))
    assert '<nop next="patient" chance="0.800000" />' in mixed
    assert 'timeout="2500" ontimeout="hangup"' in mixed
    assert 'timeout="3500" ontimeout="hangup"' in mixed
    elements = _sipp_elements(mixed.replace('<!DOCTYPE scenario SYSTEM "sipp.dtd">', ""))
    labels = {e.get("id") for e in elements if e.tag == "label"}
    assert {e.get("next") for e in elements if e.get("next")} <= labels
    assert "$" not in mixed.replace("[$", "")


def test_register_scenario_points_at_the_uas():
    xml = al.register_xml(40123, 0)
    assert "Contact: <sip:[field0]@[local_ip]:40123>" in xml and "Expires: 0" in xml
    assert "[authentication username=[field0] password=[field1]]" in xml


def test_generated_roster_loads_with_the_daemons_parser(tmp_path):
    path = tmp_path / "roster.yaml"
    path.write_text(al.roster_yaml(al.AgentPlan(count=3)))
    roster = Roster.load(path)
    assert sorted(roster.agents) == ["2000", "2001", "2002"]
    assert roster.by_endpoint("PJSIP/2001").id == "2001"
    assert al.LOAD_QUEUE in roster.queues


def test_generated_flow_is_lint_clean_and_queues_to_load():
    result = load_texts([("flows/hotline.yaml", al.LOAD_FLOW)], entry="hotline")
    assert not result.errors, result.errors
    assert result.flows is not None
    node = result.flows.flows["hotline"].nodes["to_person"]
    assert node.kind == "queue"


def test_caller_numbers_are_unique_and_never_an_agent():
    numbers = al.caller_numbers(5000, 1, 3) + al.caller_numbers(5000, 0, 3)
    assert len(set(numbers)) == 10000
    assert all(len(n) == 11 and n.startswith("0") for n in numbers)


# ------------------------------------------------------------------ event streams

CALLER_LOG = """\
100;1;offered;01000000000
350;1;answered;01000000000
120;2;offered;01000000001
400;2;answered;01000000001
9000;1;pbx-bye;01000000000
5000;2;caller-bye;01000000001
130;3;offered;01000000002
garbage
"""


def test_parse_caller_log():
    calls = al.parse_caller_log(CALLER_LOG, 1000.0)
    a, b, c = calls["01000000000"], calls["01000000001"], calls["01000000002"]
    assert (a.offered, a.answered, a.ended, a.end) == (1000.1, 1000.35, 1009.0, "pbx-bye")
    assert b.end == "caller-bye" and c.answered is None and c.ended is None


def test_phone_double_offers():
    log = "\n".join([
        "10;2000;invited;A", "20;2000;answered;A", "30;2000;agent-bye;A",
        "40;2000;invited;B", "50;2000;invited;C",  # C rings the phone while B rings
        "60;2001;invited;D", "70;2001;declined;D", "80;2001;invited;E",
    ])
    events = al.parse_agent_log(log, 0.0)
    assert events[0] == al.PhoneEvent(0.01, "2000", "invited", "A")
    assert al.phone_double_offers(events) == ["2000: C while on B"]


def _ev(t, kind, call, agent=""):
    return al.RouterEvent(t, kind, call, agent)


def test_app_queue_events_from_ami():
    ami = [
        {"Event": "QueueCallerJoin", "Queue": "hotline-load", "Uniqueid": "u1", "_t": "1.0"},
        {"Event": "AgentCalled", "Queue": "hotline-load", "Uniqueid": "u1",
         "Interface": "PJSIP/2003", "_t": "1.2"},
        {"Event": "AgentConnect", "Queue": "hotline-load", "Uniqueid": "u1",
         "MemberName": "Load 2003", "_t": "2.0"},
        {"Event": "AgentComplete", "Queue": "hotline-load", "Uniqueid": "u1",
         "Interface": "PJSIP/2003", "_t": "9.0"},
        {"Event": "AgentCalled", "Queue": "operators", "Uniqueid": "u9", "_t": "1.1"},
        # the caller's channel was already gone: no Uniqueid, the member's call is meant
        {"Event": "AgentConnect", "Queue": "hotline-load", "Uniqueid": "u2",
         "Interface": "PJSIP/2004", "_t": "3.0"},
        {"Event": "AgentComplete", "Queue": "hotline-load", "Interface": "PJSIP/2004",
         "_t": "8.0"},
        {"Event": "Newchannel", "Uniqueid": "u1", "_t": "0.5"},
    ]
    assert al.app_queue_events(ami) == [
        _ev(1.0, "queued", "u1"), _ev(1.2, "offer", "u1", "2003"),
        _ev(2.0, "connect", "u1", "2003"), _ev(3.0, "connect", "u2", "2004"),
        _ev(8.0, "complete", "u2", "2004"), _ev(9.0, "complete", "u1", "2003")]


def test_acd_events_from_mqtt_order_ties_by_cause():
    # The daemon's clock is in whole ms: an agent's CallEnded and the offer it causes often
    # share a timestamp, and arrive in either order on two connections.
    mqtt = [
        ("agent/2001/screenpop", {"call_id": "c2", "at": 5.0}),
        ("agent/2001/state", {"event": "CallEnded", "call_id": "c1", "at": 5.0}),
        ("acd/call/c2/queued", {"event": "CallQueued", "call_id": "c2", "at": 3.0}),
        ("agent/2001/state", {"event": "CallConnected", "call_id": "c1", "agent": "2001",
                              "at": 1.0}),
        ("agent/2001/status", {"state": "ready", "at": 5.0}),  # not a routing event
        ("agent/2001/state", {"event": "RingNoAnswer", "call_id": "c3"}),  # no clock: skipped
    ]
    assert al.acd_events(mqtt) == [
        _ev(1.0, "connect", "c1", "2001"), _ev(3.0, "queued", "c2"),
        _ev(5.0, "complete", "c1", "2001"), _ev(5.0, "offer", "c2", "2001")]


def test_decision_latency_counts_only_frees_with_a_caller_waiting():
    events = [
        _ev(0.0, "queued", "a"), _ev(0.0, "offer", "a", "1"), _ev(0.5, "connect", "a", "1"),
        _ev(1.0, "queued", "b"),  # b waits: nobody free
        _ev(5.0, "complete", "a", "1"), _ev(5.25, "offer", "b", "1"),  # 250 ms
        _ev(6.0, "connect", "b", "1"),
        _ev(9.0, "complete", "b", "1"),  # nobody waiting: not a decision
        _ev(10.0, "queued", "c"), _ev(10.0, "offer", "c", "1"),
        _ev(11.0, "noanswer", "c", "1"),  # c waits again
        _ev(12.0, "queued", "d"), _ev(12.5, "abandon", "d"),
        _ev(13.0, "complete", "x", "2"), _ev(14.0, "offer", "c", "2"),  # 1 s
    ]
    assert al.decision_latencies(events) == [(5.0, 0.25), (13.0, 1.0)]


def test_double_offers_by_agent_and_by_call():
    clean = [_ev(0, "offer", "a", "1"), _ev(1, "noanswer", "a", "1"), _ev(2, "offer", "a", "2"),
             _ev(3, "connect", "a", "2"), _ev(4, "complete", "a", "2"),
             _ev(5, "offer", "b", "2")]
    assert al.double_offers(clean) == []
    busy = [_ev(0, "offer", "a", "1"), _ev(1, "connect", "a", "1"), _ev(2, "offer", "b", "1")]
    assert len(al.double_offers(busy)) == 1 and "busy with a" in al.double_offers(busy)[0]
    twice = [_ev(0, "offer", "a", "1"), _ev(1, "offer", "a", "2")]
    assert "while offered to 1" in al.double_offers(twice)[0]


def test_join_and_classify_every_kind_of_call():
    callers = al.parse_caller_log("\n".join([
        "0;1;offered;n-ok", "100;1;answered;n-ok", "20000;1;pbx-bye;n-ok",
        "0;2;offered;n-ab", "100;2;answered;n-ab", "8000;2;caller-bye;n-ab",
        "0;3;offered;n-op", "100;3;answered;n-op", "4000;3;pbx-bye;n-op",
        "0;4;offered;n-noq", "100;4;answered;n-noq", "900;4;pbx-bye;n-noq",
        "0;5;offered;n-dead",
        "0;6;offered;n-late", "100;6;answered;n-late", "300000;6;gave-up;n-late",
    ]), 0.0)
    numbers_of = {"u-ok": "n-ok", "u-ab": "n-ab", "u-op": "n-op", "u-noq": "n-noq",
                  "u-late": "n-late", "other": "n-unrelated"}
    events = [
        _ev(0.2, "queued", "u-ok"), _ev(1.0, "offer", "u-ok", "7"),
        _ev(2.0, "connect", "u-ok", "7"), _ev(20.0, "complete", "u-ok", "7"),
        _ev(0.2, "queued", "u-ab"), _ev(0.2, "queued", "u-op"), _ev(0.2, "queued", "u-late"),
    ]
    calls = {c.number: c for c in al.join_calls(callers, numbers_of, events)}
    ok = calls["n-ok"]
    assert (ok.outcome, ok.agent, ok.offers, ok.queued, ok.connected, ok.completed) == \
        ("answered", "7", 1, 0.2, 2.0, 20.0)
    assert calls["n-ab"].outcome == "abandoned"
    assert calls["n-op"].reason == "ended by the PBX without an agent"
    assert calls["n-noq"].reason == "never reached the queue"
    assert calls["n-dead"].reason == "the daemon did not answer"
    assert calls["n-late"].reason == "waited past the maximum without an agent"


def test_summary_metrics():
    callers = al.CallerPlan(rate=1, duration=4)
    agents = al.AgentPlan(count=2)
    mk = al.QueueCall
    calls = [
        mk("a", 0.0, 0.3, 10.0, "pbx-bye", "a", 0.5, 1, 1.5, 9.5, "1", "answered"),
        mk("b", 1.0, 1.3, 40.0, "pbx-bye", "b", 1.5, 1, 31.5, 39.0, "2", "answered"),
        mk("c", 2.0, 2.3, 5.0, "caller-bye", "c", 2.5, 0, None, None, "", "abandoned"),
        mk("d", 3.0, None, None, "", "", None, 0, None, None, "", "failed",
           "the daemon did not answer"),
    ]
    events = [_ev(0.5, "queued", "a"), _ev(0.5, "offer", "a", "1"),
              _ev(1.5, "queued", "b"), _ev(9.5, "complete", "a", "1"),
              _ev(9.6, "offer", "b", "1")]
    s = al.summarise("acd", callers, agents, calls, events, sl_threshold=20, t0=0.0)
    assert (s.offered, s.answered, s.abandoned, s.failed) == (4, 2, 1, 1)
    assert s.asa == pytest.approx((1.0 + 30.0) / 2)
    assert s.aht == pytest.approx((8.0 + 7.5) / 2)
    assert s.service_level == pytest.approx(25.0)  # a within 20 s; b waited 30 s
    assert s.decision_ms_p50 == pytest.approx(100.0) and s.decisions == 1
    assert s.failures == {"the daemon did not answer": 1} and not s.zero_failures
    assert s.series["in_system"][6] == 2  # a and b answered by the IVR, not ended (c did at 5)
    assert math.isnan(s.series["service_level"][10])


# ------------------------------------------------------------------ reports and the soak

def _step(router, rate, failed=0, p50=200.0):
    return al.RouterStep(
        router=router, rate=rate, duration=10, agents=5, offered=int(rate * 10),
        answered=int(rate * 10) - failed, abandoned=0, failed=failed, asa=1.0,
        service_level=100.0, sl_threshold=20, aht=3.0, decision_ms_p50=p50,
        decision_ms_p99=p50 * 3, decisions=9, offers=10, double_offers=[],
        phone_double_offers=[], failures={}, pbx_fallbacks=0, daemon_failed=0,
        daemon_cpu_percent=3.0, daemon_rss_peak=100,
        series={"t": [0.0, 1.0], "in_system": [0, 1], "waiting": [0, 0],
                "service_level": [100.0, math.nan], "decision_ms_p50": [math.nan, 1.0],
                "decision_ms_p99": [math.nan, 2.0]})


def test_side_by_side_report(tmp_path):
    steps = [_step("app_queue", 2, p50=220.0), _step("app_queue", 4, failed=3, p50=400.0),
             _step("acd", 2, p50=0.0), _step("acd", 4, p50=2.0)]
    assert agent_sustained(steps, "app_queue") == 2 and agent_sustained(steps, "acd") == 4
    md = agents_markdown(steps, command="ivr-engine loadtest ...", context={"agents": 5})
    assert "app_queue: sustained with zero failed calls: 2 calls/s" in md
    assert "| 2 | 220.0 / 0.0 | > 220x |" in md  # a 0 ms ACD decision: under the 1 ms clock
    assert "| 4 | 400.0 / 2.0 | 200.0x |" in md
    assert "ACD / app_queue: 2.00x" in md
    write_agents(steps, tmp_path, command="c", context={})
    assert (tmp_path / "agents-acd-4cps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '"sustained_zero_failures": {\n  "acd": 4' in (tmp_path / "report.json").read_text()


def test_soak_duration():
    assert soak.parse_duration("30m") == 1800 and soak.parse_duration("90s") == 90
    assert soak.parse_duration("1h") == 3600 and soak.parse_duration("45") == 45
    for bad in ("", "3x", "5s", "25h"):
        with pytest.raises(LoadTestError):
            soak.parse_duration(bad)


def test_soak_checks_pass_and_fail():
    plan = soak.SoakPlan(duration=100, agents=al.AgentPlan(count=2), rate=0.1)  # 10 calls
    step = _step("acd", 1)
    samples = [soak.Sample(t, 100_000_000 + (t > 90) * 5_000_000, 30, 8) for t in range(101)]
    records = [{"ended": "x", "outcome": "queued"}] * 10
    checks, stuck, rec = soak.evaluate(plan, step, samples, 0.0, 25, 26,
                                       {"2000": "ready", "2001": "ready"}, records)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert rec == {"records": 10, "with an end": 10} and stuck == []
    # an agent stuck reserved, a record without an end, RSS up 20%, fds up 10
    samples = [soak.Sample(t, 100_000_000 + (t > 90) * 20_000_000, 30, 8) for t in range(101)]
    checks, stuck, _ = soak.evaluate(plan, step, samples, 0.0, 25, 35,
                                     {"2000": "reserved", "2001": "ready"},
                                     records + [{"ended": None, "outcome": None}])
    failed = {c.name for c in checks if not c.ok}
    assert stuck == ["2000"]
    assert failed == {"no agent stuck reserved or on a call", "no call lost",
                      "RSS flat within 10% after warm-up", "no growth in open file descriptors"}
