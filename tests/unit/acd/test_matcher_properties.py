"""The heap matcher against the brute-force reference on random event traces (hypothesis).

Each example builds a small centre (random skills, requirements, strategies, relaxation steps,
wrap-up, max wait/length, multi-channel agents), then draws a random trace of arrivals,
answers, ring-no-answers, hang-ups (waiting, ringing, connected), ends, pauses, resumes,
logins, logouts, priority changes, illegal events and timer firings. Both implementations see
the same trace; after every event we require identical decisions, identical errors, identical
timer requests, and the invariants: no double offer, no stuck reserved agent, no lost call, no
waiting call left beside a free eligible agent, FIFO within equal priority and eligibility.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from acd import matcher as matcher_module
from acd.agent_state import AgentState
from acd.errors import AcdError
from acd.matcher import Matcher
from acd.model import (
    AgentSpec,
    CallSpec,
    Offer,
    Overflowed,
    QueueSpec,
    Strategy,
    TimerKey,
    Withdraw,
)
from acd.reference import ReferenceMatcher

SKILLS = ("yue", "cmn", "cards", "loans")
EXPRESSIONS = (
    "yue >= 3 and cards",
    "cards",
    "cmn or yue >= 5",
    "loans >= 2",
    "not cmn and cards",
    "any",
    "yue",
    "cards >= 6 or loans >= 6",
)


class RecordingClock:
    """A virtual-clock scheduler that records requests (to compare the two implementations)."""

    def __init__(self) -> None:
        self.pending: dict[TimerKey, float] = {}
        self.log: list[tuple[str, Any]] = []

    def schedule(self, at: float, key: TimerKey) -> None:
        self.pending[key] = at
        self.log.append(("schedule", (at, key)))

    def cancel(self, key: TimerKey) -> None:
        self.pending.pop(key, None)
        self.log.append(("cancel", key))


queue_specs = st.builds(
    lambda i, expr, strategy, steps, weight, wrapup, max_wait, max_length, ring: QueueSpec.build(
        f"q{i}",
        expr,
        strategy=strategy,
        steps=steps,
        weight=weight,
        wrapup=wrapup,
        max_wait=max_wait,
        max_length=max_length,
        ring_all_limit=ring,
        overflow="voicemail",
    ),
    st.just(0),
    st.sampled_from(EXPRESSIONS),
    st.sampled_from(list(Strategy)),
    st.sampled_from([(), ((10.0, "yue"),), ((5.0, "cards"), (20.0, "any"))]),
    st.sampled_from([0.0, 0.0, 15.0]),
    st.sampled_from([0.0, 0.0, 4.0]),
    st.sampled_from([0.0, 0.0, 40.0]),
    st.sampled_from([0, 0, 2]),
    st.integers(1, 3),
)

agent_specs = st.builds(
    lambda skills, capacity: (skills, capacity),
    st.dictionaries(st.sampled_from(SKILLS), st.integers(1, 10), max_size=4),
    st.sampled_from([{"voice": 1}, {"voice": 1, "chat": 3}, {"chat": 2}, {"voice": 1}]),
)


class Harness:
    def __init__(
        self, queues: list[QueueSpec], agents: list[tuple[dict[str, int], dict[str, int]]]
    ):
        self.clock_m = RecordingClock()
        self.clock_r = RecordingClock()
        self.m = Matcher(self.clock_m, max_misses=2)
        self.r = ReferenceMatcher(self.clock_r, max_misses=2)
        self.queues = {q.id: q for q in queues}
        for q in queues:
            self.m.add_queue(q)
            self.r.add_queue(q)
        self.specs = [AgentSpec(f"a{i}", s, c) for i, (s, c) in enumerate(agents)]
        self.now = 0.0
        self.live: set[str] = set()  # calls in the ACD as far as the decisions tell
        self.ringing: dict[str, set[str]] = {}  # call -> agents ringing
        self.offer_of: dict[str, str] = {}  # agent -> call ringing it
        self.connected: dict[str, str] = {}  # call -> agent
        self.next_call = 0
        self.events = 0
        self.record_events = False

    def both(self, method: str, *args: Any, **kwargs: Any) -> None:
        self.events += 1
        err_m = err_r = None
        out_m: list[Any] = []
        out_r: list[Any] = []
        try:
            out_m = getattr(self.m, method)(*args, **kwargs) or []
        except AcdError as exc:
            err_m = type(exc)
        try:
            out_r = getattr(self.r, method)(*args, **kwargs) or []
        except AcdError as exc:
            err_r = type(exc)
        assert err_m == err_r, (method, args, err_m, err_r)
        if self.record_events:  # shown by pytest --hypothesis-show-statistics
            event(f"{method}: {err_m.__name__ if err_m else 'ok'}")
            for d in out_m:
                event(f"decision {type(d).__name__} {getattr(d, 'reason', '')}")
        assert out_m == out_r, (method, args, out_m, out_r)
        assert self.clock_m.log == self.clock_r.log, (method, args)
        if err_m is None and method in ("answered", "no_answer"):
            call, agent = args[0], args[1]
            self.ringing[call].discard(agent)
            if not self.ringing[call]:
                del self.ringing[call]
            del self.offer_of[agent]
        self.apply(method, args, out_m)
        self.check()

    def apply(self, method: str, args: tuple[Any, ...], out: list[Any]) -> None:
        """Follow the decisions to know what is ringing; catch double offers on the way."""
        if method == "call_arrived":
            self.live.add(args[0].id)
        elif method in ("hung_up", "call_ended"):
            self.live.discard(args[0])
        batch_calls: set[str] = set()
        for d in out:
            if isinstance(d, Offer):
                assert d.agent not in self.offer_of, f"double offer to agent {d.agent}"
                if d.call in self.ringing and d.call not in batch_calls:
                    raise AssertionError(f"call {d.call} offered while already ringing")
                if self.ringing.get(d.call):
                    assert self.queues[d.queue].strategy is Strategy.RING_ALL, d
                self.ringing.setdefault(d.call, set()).add(d.agent)
                self.offer_of[d.agent] = d.call
                batch_calls.add(d.call)
                self.check_fifo(d)
            elif isinstance(d, Withdraw):
                self.ringing[d.call].discard(d.agent)
                del self.offer_of[d.agent]
                if not self.ringing[d.call]:
                    del self.ringing[d.call]
            elif isinstance(d, Overflowed):
                self.live.discard(d.call)
                self.ringing.pop(d.call, None)

    def check_fifo(self, offer: Offer) -> None:
        call = self.r.calls[offer.call]
        for other in self.r.calls.values():
            if (
                other.state == "waiting"
                and other.queue.id == call.queue.id
                and other.spec.channel == call.spec.channel
                and other.priority == call.priority
                and other.step == call.step
                and other.seq < call.seq
            ):
                raise AssertionError(f"FIFO: {offer.call} served before {other.spec.id}")

    def check(self) -> None:
        self.m.check_invariants()
        assert self.r.idle_eligible_pairs() == [], "a waiting call sits beside a free agent"
        # No lost call: what the decisions say is live is exactly what both hold.
        assert self.live == set(self.r.calls) == set(self.m._calls)
        for spec in self.specs:
            if spec.id in self.r.agents:
                sm = self.m.agent_state(spec.id)
                assert sm == self.r.agent_state(spec.id)
                assert self.m.pause_reason(spec.id) == self.r.pause_reason(spec.id)
                # No stuck reserved agent: reserved exactly while an offer rings it.
                assert (sm is AgentState.RESERVED) == (spec.id in self.offer_of)
        for q in self.queues:
            assert self.m.waiting(q) == self.r.waiting(q)
            assert self.m.waiting_calls(q) == self.r.waiting_calls(q)

    # ------------------------------------------------------------------ event drawing

    def step(self, data: st.DataObject) -> None:
        self.now += data.draw(st.sampled_from([0.0, 0.5, 1.0, 3.0, 7.0]))
        options = ["arrive", "arrive", "login", "timer"]
        if self.offer_of:
            options += ["answer", "answer", "no_answer"]
        if self.connected:
            options += ["end", "end"]
        if self.live:
            options += ["hangup", "priority"]
        if self.r.agents:
            options += ["pause", "resume", "logout", "illegal", "settle"]
        kind = data.draw(st.sampled_from(options))
        if kind == "settle":
            self.both("settle")
            return
        if kind == "arrive":
            self.next_call += 1
            spec = CallSpec(
                f"c{self.next_call}",
                data.draw(st.sampled_from(sorted(self.queues))),
                data.draw(st.sampled_from(["voice", "voice", "chat"])),
                data.draw(st.sampled_from([1, 5, 5])),
            )
            self.both("call_arrived", spec, self.now)
        elif kind == "login":
            spec = data.draw(st.sampled_from(self.specs))
            paused = data.draw(st.sampled_from([None, None, "training"]))
            self.both("login", spec, self.now, paused=paused)
        elif kind == "timer":
            if not self.clock_m.pending:
                return
            at, key = min((at, key) for key, at in self.clock_m.pending.items())
            self.now = max(self.now, at)
            del self.clock_m.pending[key]
            del self.clock_r.pending[key]
            self.both("timer_fired", key, self.now)
        elif kind in ("answer", "no_answer"):
            agent = data.draw(st.sampled_from(sorted(self.offer_of)))
            call = self.offer_of[agent]
            self.both("answered" if kind == "answer" else "no_answer", call, agent, self.now)
        elif kind == "end":
            call = data.draw(st.sampled_from(sorted(self.connected)))
            self.both("call_ended", call, self.now)
        elif kind == "hangup":
            call = data.draw(st.sampled_from(sorted(self.live)))
            self.both("hung_up", call, self.now)
        elif kind == "priority":
            call = data.draw(st.sampled_from(sorted(self.live)))
            self.both("set_priority", call, data.draw(st.sampled_from([0, 1, 5, 9])), self.now)
        else:
            agent = data.draw(st.sampled_from(sorted(self.r.agents)))
            if kind == "pause":
                self.both(
                    "pause", agent, data.draw(st.sampled_from(["lunch", "coaching"])), self.now
                )
            elif kind == "resume":
                self.both("resume", agent, self.now)
            elif kind == "logout":
                self.both("logout", agent, self.now)
            else:
                call = data.draw(st.sampled_from(sorted(self.live) or ["nope"]))
                self.both(
                    data.draw(st.sampled_from(["answered", "no_answer"])), call, agent, self.now
                )
        # The harness's own view of ringing/connected must follow the reference.
        self.ringing = {c: set(v.agents) for c, v in self.r.calls.items() if v.state == "offered"}
        self.offer_of = {a: c for c, agents in self.ringing.items() for a in agents}
        self.connected = {
            c: v.agent for c, v in self.r.calls.items() if v.state == "connected" and v.agent
        }


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    queues=st.lists(queue_specs, min_size=1, max_size=4),
    agents=st.lists(agent_specs, min_size=1, max_size=6),
    data=st.data(),
)
def test_matcher_decides_like_reference(
    queues: list[QueueSpec], agents: list[tuple[dict[str, int], dict[str, int]]], data: Any
) -> None:
    queues = [
        QueueSpec(**{**_fields(q), "id": f"q{i}"})
        for i, q in enumerate(queues)  # unique ids
    ]
    h = Harness(queues, agents)
    h.record_events = True
    for spec in h.specs:
        if data.draw(st.booleans()):
            h.both("login", spec, 0.0)
    n = data.draw(st.integers(10, 80))
    for _ in range(n):
        h.step(data)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    queues=st.lists(queue_specs, min_size=1, max_size=4),
    agents=st.lists(agent_specs, min_size=2, max_size=6),
    data=st.data(),
)
def test_tiny_limits_exercise_compaction_and_inbox_trimming(
    queues: list[QueueSpec], agents: list[tuple[dict[str, int], dict[str, int]]], data: Any
) -> None:
    """Same comparison with heaps compacted and inboxes trimmed every few pushes, and a
    strategy heap compacted as soon as a query meets a stale head."""
    saved = matcher_module.MIN_COMPACT, matcher_module.INBOX_MIN, matcher_module.STALE_POPS
    matcher_module.MIN_COMPACT, matcher_module.INBOX_MIN, matcher_module.STALE_POPS = 2, 2, 0
    try:
        test_matcher_decides_like_reference.hypothesis.inner_test(  # type: ignore[attr-defined]
            queues, agents, data
        )
    finally:
        matcher_module.MIN_COMPACT, matcher_module.INBOX_MIN, matcher_module.STALE_POPS = saved


def _fields(q: QueueSpec) -> dict[str, Any]:
    return {name: getattr(q, name) for name in QueueSpec.__slots__}


def test_harness_detects_a_wrong_decision() -> None:
    """The comparison is not vacuous: a reference with another tie-break disagrees."""
    q = QueueSpec.build("q0", "cards")
    h = Harness([q], [({"cards": 5}, {"voice": 1}), ({"cards": 5}, {"voice": 1})])
    h.both("login", h.specs[0], 0.0)
    h.both("login", h.specs[1], 1.0)
    h.r._agent_key = lambda ag, queue: (-ag.avail_since, ag.idx)  # type: ignore[method-assign]
    with pytest.raises(AssertionError):
        h.both("call_arrived", CallSpec("c1", "q0"), 2.0)
