"""Load-test plumbing without a PBX: plans, callers, SIPp's and the daemon's logs, summaries."""

import math

import pytest

from simulate.loadreport import markdown, sustained
from simulate.loadtest import (
    CallTimes,
    LoadTestError,
    Plan,
    ProcSample,
    SippRun,
    caller_rows,
    in_system,
    parse_daemon_log,
    parse_mix,
    parse_sipp_log,
    parse_sipp_stats,
    pct,
    summarise,
)


def test_plan_checks():
    Plan(rate=300, duration=60).check()
    for bad in (dict(rate=0, duration=1), dict(rate=1, duration=0),
                dict(rate=1, duration=1, digits="x"), dict(rate=1, duration=1, mix={"vip": 1}),
                dict(rate=1, duration=1, mix={"known": -1, "unknown": 2})):
        with pytest.raises(LoadTestError):
            Plan(**bad).check()
    assert Plan(rate=30, duration=20).calls == 600


def test_parse_mix():
    assert parse_mix("known=0.5, withheld=0.5") == {"known": 0.5, "withheld": 0.5}
    with pytest.raises(LoadTestError, match="vip"):
        parse_mix("vip=1")
    with pytest.raises(LoadTestError, match="not a number"):
        parse_mix("known=x")


def test_caller_rows_follow_the_mix_and_are_reproducible():
    plan = Plan(rate=1, duration=1, digits="12", mix={"known": 0.5, "unknown": 0.3,
                                                      "withheld": 0.2})
    rows = caller_rows(plan, ["13800138000"], 5000)
    assert rows == caller_rows(plan, ["13800138000"], 5000)
    kinds = {"known": 0, "unknown": 0, "withheld": 0}
    for row in rows:
        number, host, digit = row.split(";")
        assert digit in "12"
        if number == "anonymous":
            assert host == "anonymous.invalid"
            kinds["withheld"] += 1
        elif number.startswith("010"):
            assert len(number) == 11
            kinds["unknown"] += 1
        else:
            assert number == "13800138000"
            kinds["known"] += 1
    assert abs(kinds["known"] / 5000 - 0.5) < 0.03 and abs(kinds["withheld"] / 5000 - 0.2) < 0.03
    with pytest.raises(LoadTestError, match="known"):
        caller_rows(plan, [], 1)


def test_parse_sipp_log_and_stats():
    text = "1000;1;offered\n1008;1;answered\n2600;1;ended\n1500;2;offered\nnoise\n1900;2;answered\n"
    calls = parse_sipp_log(text)
    assert [(c.offered, c.answered, c.ended) for c in calls] == [
        (0.0, 0.008, 1.6), (0.5, 0.9, None)]
    stats = parse_sipp_stats("StartTime;FailedCall(C);SuccessfulCall(C);\n"
                             "a;0;1;\nb;2;10;\n")
    assert stats["FailedCall(C)"] == "2" and stats["SuccessfulCall(C)"] == "10"
    assert parse_sipp_stats("") == {}


LOG = """\
2026-11-25 14:00:00,000 INFO    agi [c1] call from 127.0.0.1: channel X, script '/hotline'
2026-11-25 14:00:00,001 DEBUG   agi [c1] -> ANSWER
2026-11-25 14:00:00,501 DEBUG   agi [c1] <- 200 result=0
2026-11-25 14:00:00,504 DEBUG   agi [c1] -> STREAM FILE (sensitive)
2026-11-25 14:00:01,504 DEBUG   agi [c1] <- 200 result=49
2026-11-25 14:00:01,506 DEBUG   agi [c1] -> SET VARIABLE IVR_NEXT queue
2026-11-25 14:00:01,507 DEBUG   agi [c1] <- 200 result=1
2026-11-25 14:00:00,100 INFO    agi [c2] call from 127.0.0.1: channel Y, script '/hotline'
2026-11-25 14:00:00,200 ERROR   flow [c2] flow error at hotline/greet: bad region
2026-11-25 14:00:00,300 INFO    agi [c2] AGI ended with FAILURE: the dialplan fallback takes it
2026-11-25 14:00:00,100 INFO    agi [c3] call from 127.0.0.1: channel Z, script '/hotline'
2026-11-25 14:00:00,300 WARNING agi [c3] call ended on a FastAGI error: AgiTimeout: no reply
2026-11-25 15:00:00,000 INFO    agi [c9] call from outside the window
"""


def test_parse_daemon_log():
    import datetime as dt

    t = dt.datetime(2026, 11, 25, 14, 0).timestamp()
    d = parse_daemon_log(iter(LOG.splitlines()), t - 1, t + 60)
    assert d.calls == 3
    assert (d.failed, d.flow_errors) == (1, 1)  # c3 failed; c2 met a flow error (counted once)
    assert d.think_ms == pytest.approx([3.0, 2.0], abs=0.01)
    assert d.round_trip_ms["ANSWER"] == pytest.approx([500.0], abs=0.01)
    assert d.round_trip_ms["STREAM FILE"] == pytest.approx([1000.0], abs=0.01)
    assert d.round_trip_ms["SET VARIABLE"] == pytest.approx([1.0], abs=0.01)


def test_pct_and_in_system():
    assert pct([], 50) is None
    assert pct([1, 2, 3, 4], 50) == 2 and pct(list(range(1, 101)), 99) == 99
    calls = [CallTimes(0, 0.1, 2.0), CallTimes(0.5, 0.6, 1.0), CallTimes(1, None, None),
             CallTimes(1.5, 1.6, None)]
    assert in_system(calls, [0.0, 0.7, 1.2, 1.7, 5.0]) == [0, 2, 1, 2, 1]


def test_summarise_counts_every_kind_of_failure():
    plan = Plan(rate=2, duration=2, arrival_spread=0.1)
    calls = [CallTimes(0.0, 0.01, 1.5), CallTimes(0.4, 0.41, 2.0), CallTimes(1.1, 1.2, None),
             CallTimes(1.6, None, None)]
    sipp = SippRun(0, calls, {"FailedCall(C)": "1", "FailedUnexpectedMessage(C)": "1"}, "boom",
                   started=1000.0, seconds=4.0)
    procs = [ProcSample(1000.0, 1.0, 100_000_000, 100_000_000),
             ProcSample(1002.0, 2.0, 100_300_000, 100_300_000)]
    step = summarise(plan, sipp, procs, None, fallbacks=1, machine=((0, 0), (50, 200)))
    assert (step.offered, step.answered, step.completed) == (4, 3, 2)
    assert step.failed == 2 + 1  # two calls never completed (SIPp counted one), one fallback
    assert step.capacity_failures == 3 and not step.zero_failures
    assert step.cpu_percent == pytest.approx(50.0) and step.machine_cpu_percent == 25.0
    assert step.peak_in_system == 2 and step.bytes_per_call == pytest.approx(150_000)
    assert step.sipp_failures == {"FailedCall(C)": "1", "FailedUnexpectedMessage(C)": "1"}
    assert math.isnan(step.series["service_level"][-1])
    assert sustained([step]) is None
    assert "failed 3" in markdown([step], command="x", context={})
