"""The benchmark's machinery on a small centre, and the `ivr-engine acd` command."""

from __future__ import annotations

import gc
import json
import re
from typing import Any

import pytest

from acd import bench
from acd.agent_state import AgentState
from acd.matcher import Matcher
from acd.model import Strategy
from ivr_engine import cli


def test_small_trace_is_identical_and_well_formed() -> None:
    result = bench.measure(300, steady=3_000, ref_events=1_500, seed=5, repeats=2)
    assert result["reference"]["identical"] is True
    assert result["replay_identical"] is True
    assert result["reference"]["events_compared"] == 1_500
    assert result["events_measured"] == 3_000
    assert len(result["each_replay"]) == 2 and result["replays"] == 2
    assert result["decisions_per_s"] > 0 and result["p99_us"] >= result["p50_us"] > 0
    mix = result["event_mix"]
    # Both directions and the messy events are in the trace.
    for method in ("call_arrived", "answered", "call_ended", "timer_fired", "hung_up"):
        assert mix.get(method, 0) > 0, method
    assert result["offers"] > 0


def test_replay_detects_a_divergent_trace() -> None:
    driver = bench._Driver(100, seed=9)
    trace = driver.run(500, warm_arrivals=90)
    i = next(i for i, d in enumerate(trace.decisions) if d and i >= trace.setup_events)
    trace.decisions[i] = []  # pretend the heap matcher had decided nothing here
    identical, _, _, mismatch = bench.replay_reference(trace, len(trace.events))
    assert identical is False and mismatch is not None


def test_timed_replay_detects_a_divergent_trace() -> None:
    """The timed replay checks its decisions against the recording (the matcher is
    deterministic): a changed decision is reported, with the event."""
    trace = bench.generate(100, 500, seed=9)
    assert bench.replay_timed(trace).identical is True
    i = next(i for i, d in enumerate(trace.decisions) if d and i >= trace.warm_events)
    trace.decisions[i] = []
    replay = bench.replay_timed(trace)
    assert replay.identical is False
    assert replay.mismatch is not None and f"event {i} " in replay.mismatch


def test_warm_up_leaves_a_centre_near_saturation_without_a_backlog() -> None:
    """After the warm-up burst the centre is busy and both directions happen, but the burst
    has not left a backlog for the short measured window to drain (the burst and the steady
    stream used to overlap: 110% of capacity, thousands waiting at 100,000 agents)."""
    trace = bench.generate(2_000, 2_000, seed=3)
    assert trace.end_state["waiting_calls"] < 0.05 * 2_000
    assert trace.end_state["agents"]["on-call"] > 0.7 * 2_000
    w = trace.warm_events
    measured = zip(trace.events[w:], trace.decisions[w:], strict=True)
    arrivals = [out for (method, _), out in measured if method == "call_arrived"]
    waited = sum(1 for out in arrivals if not out) / len(arrivals)
    assert 0.2 < waited < 0.8  # calls wait for agents and agents wait for calls


def test_matcher_leaves_no_cyclic_garbage() -> None:
    """Why the bench (and an ACD process) may run without the cyclic collector: a whole
    trace through the matcher leaves nothing for it to find, nor does the matcher itself once
    dropped with calls still ringing and waiting, nor the recording driver."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        trace = bench.generate(200, 3_000, seed=4)
        assert gc.collect() == 0  # the driver, its clock and its matcher are gone already
        assert trace.offers > 0
        matcher = Matcher(_Timers(), max_misses=2)
        for q in trace.queues:
            matcher.add_queue(q)
        for method, args in trace.events:
            getattr(matcher, method)(*args)
        assert gc.collect() == 0  # every call and offer was freed by reference counting
        kinds = {q.strategy for q in trace.queues}
        assert Strategy.LONGEST_IDLE in kinds and len(kinds) > 2  # slots with strategy heaps
        ringing = [a for a in matcher.agent_ids() if matcher.agent_state(a) is AgentState.RESERVED]
        waiting = sum(matcher.waiting(q.id) for q in trace.queues)
        assert ringing and waiting  # dropped mid-stream: offers ringing, calls waiting
        del matcher
        assert gc.collect() == 0
    finally:
        if was:
            gc.enable()


class _Timers:
    def schedule(self, at: float, key: Any) -> None:
        return None

    def cancel(self, key: Any) -> None:
        return None


def test_cli_simulate_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        [
            "acd",
            "simulate",
            "--agents",
            "20",
            "--calls",
            "400",
            "--strategy",
            "configured",
            "--json",
        ]
    )
    assert code == 0
    reports = json.loads(capsys.readouterr().out)
    assert reports[0]["total"]["offered"] > 0
    assert "centre" in reports[0]["erlang"]


def test_cli_simulate_rejects_a_bad_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["acd", "simulate", "--strategy", "fastest"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_latency_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["acd", "latency", "--agents", "200", "--waiting", "40", "--events", "60", "--json"]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    # the backlog is kept near its target: a freed agent takes one, a new caller joins
    assert result["agents"] == 200 and 30 <= result["waiting_at_end"] <= 40
    for kind in ("agent-ready", "call-queued"):
        e = result["events"][kind]
        assert e["n"] > 0, kind
        # issued includes the screen pop's simulated round trip; acked adds the Redirect's
        assert e["issued_p50_ms"] >= result["rtt_ms"] * 0.9
        assert e["acked_p50_ms"] > e["issued_p50_ms"]
        assert 0 < e["matcher_p50_ms"] < e["issued_p50_ms"]


def test_cli_latency_text_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["acd", "latency", "--agents", "100", "--waiting", "10", "--events", "20"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^router decision latency: 100 agents, \d+ waiting calls", out)
    assert "agent-ready" in out and "call-queued" in out
    assert cli.main(["acd", "latency", "--agents", "3"]) == 2
    assert "--agents must be >= 10" in capsys.readouterr().err


def test_cli_bench_rejects_zero_repeats(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["acd", "bench", "--repeats", "0"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err
