"""The matcher on hand-written scenarios: each rule of the policy, one test."""

from __future__ import annotations

from typing import Any

import pytest

from acd.agent_state import AgentState
from acd.errors import (
    ConfigurationError,
    IllegalTransition,
    InvalidEvent,
    UnknownAgent,
    UnknownCall,
    UnknownQueue,
)
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


class Clock:
    def __init__(self) -> None:
        self.pending: dict[TimerKey, float] = {}

    def schedule(self, at: float, key: TimerKey) -> None:
        self.pending[key] = at

    def cancel(self, key: TimerKey) -> None:
        self.pending.pop(key, None)


def make(*queues: QueueSpec, max_misses: int = 2) -> tuple[Matcher, Clock]:
    clock = Clock()
    m = Matcher(clock, max_misses=max_misses)
    for q in queues:
        m.add_queue(q)
    return m, clock


def agent(aid: str, **skills: int) -> AgentSpec:
    return AgentSpec(aid, skills)


def offers(out: list[Any]) -> list[tuple[str, str]]:
    return [(d.call, d.agent) for d in out if isinstance(d, Offer)]


def test_vip_first_then_fifo() -> None:
    m, _ = make(QueueSpec.build("cards", "cards"))
    m.call_arrived(CallSpec("c1", "cards"), 1.0)
    m.call_arrived(CallSpec("c2", "cards"), 2.0)
    m.call_arrived(CallSpec("vip", "cards", priority=1), 3.0)
    assert m.waiting_calls("cards") == ["vip", "c1", "c2"]
    assert offers(m.login(agent("a1", cards=5), 4.0)) == [("vip", "a1")]
    m.answered("vip", "a1", 5.0)
    assert offers(m.login(agent("a2", cards=5), 6.0)) == [("c1", "a2")]


def test_priority_change_moves_the_call_at_once() -> None:
    m, _ = make(QueueSpec.build("cards", "cards"))
    for i in range(3):
        m.call_arrived(CallSpec(f"c{i}", "cards"), float(i))
    m.set_priority("c2", 0, 5.0)
    assert m.waiting_calls("cards") == ["c2", "c0", "c1"]
    assert offers(m.login(agent("a1", cards=1), 6.0)) == [("c2", "a1")]
    with pytest.raises(ConfigurationError):
        m.set_priority("c0", 10, 7.0)


def test_skill_requirement_and_timed_relaxation() -> None:
    q = QueueSpec.build(
        "cards-yue", "yue >= 3 and cards", steps=((30, "yue and cards"), (60, "cards"))
    )
    m, clock = make(q)
    m.login(agent("mandarin", cmn=9, cards=9), 0.0)
    m.login(agent("weak-yue", yue=1, cards=2), 0.0)
    assert m.call_arrived(CallSpec("c1", "cards-yue"), 10.0) == []
    assert clock.pending == {("relax", "c1", 1): 40.0, ("relax", "c1", 2): 70.0}
    del clock.pending[("relax", "c1", 1)]
    assert offers(m.timer_fired(("relax", "c1", 1), 40.0)) == [("c1", "weak-yue")]
    m.no_answer("c1", "weak-yue", 55.0)  # back to the queue; weak-yue is ready again...
    assert m.call_state("c1") == "offered"  # ...and is offered it again (nobody else eligible)
    m.answered("c1", "weak-yue", 56.0)
    assert clock.pending == {}  # relaxation timers of a connected call are cancelled


def test_relaxation_reaches_the_fallback_agent() -> None:
    q = QueueSpec.build(
        "cards-yue", "yue >= 3 and cards", steps=((30, "yue and cards"), (60, "cards"))
    )
    m, _ = make(q)
    m.login(agent("mandarin", cmn=9, cards=9), 0.0)
    m.call_arrived(CallSpec("c1", "cards-yue"), 0.0)
    assert m.timer_fired(("relax", "c1", 1), 30.0) == []
    assert offers(m.timer_fired(("relax", "c1", 2), 60.0)) == [("c1", "mandarin")]


def test_agent_frees_up_takes_best_call_across_queues_with_weight() -> None:
    m, _ = make(QueueSpec.build("a", "cards"), QueueSpec.build("b", "loans", weight=30.0))
    m.call_arrived(CallSpec("ca", "a"), 0.0)
    m.call_arrived(CallSpec("cb", "b"), 20.0)  # arrived later, but 30 s head start
    assert offers(m.login(agent("x", cards=5, loans=5), 25.0)) == [("cb", "x")]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (Strategy.LONGEST_IDLE, "old"),
        (Strategy.HIGHEST_PROFICIENCY, "expert"),
        (Strategy.FEWEST_CALLS, "old"),
    ],
)
def test_strategies(strategy: Strategy, expected: str) -> None:
    m, _ = make(QueueSpec.build("q", "cards", strategy=strategy))
    m.login(agent("old", cards=2), 0.0)
    m.login(agent("expert", cards=9), 5.0)
    assert offers(m.call_arrived(CallSpec("c1", "q"), 10.0)) == [("c1", expected)]


def test_least_occupied_and_fewest_calls_use_history() -> None:
    m2, _ = make(QueueSpec.build("lo", "cards", strategy=Strategy.LEAST_OCCUPIED))
    m2.login(agent("busy", cards=5), 0.0)
    m2.login(agent("idle", cards=5), 0.0)
    m2.call_arrived(CallSpec("x", "lo"), 1.0)  # longest idle tie -> 'busy' (registered first)
    m2.answered("x", "busy", 1.0)
    m2.call_ended("x", 60.0)  # busy 59 of 60 s
    assert offers(m2.call_arrived(CallSpec("y", "lo"), 61.0)) == [("y", "idle")]
    m3, _ = make(QueueSpec.build("fc", "cards", strategy=Strategy.FEWEST_CALLS))
    m3.login(agent("veteran", cards=5), 0.0)
    m3.call_arrived(CallSpec("x", "fc"), 1.0)
    m3.answered("x", "veteran", 1.0)
    m3.call_ended("x", 2.0)  # veteran: 1 call, idle since 2
    m3.login(agent("newbie", cards=5), 10.0)  # no call, idle since 10
    assert offers(m3.call_arrived(CallSpec("y", "fc"), 20.0)) == [("y", "newbie")]


def test_round_robin_takes_turns() -> None:
    m, _ = make(QueueSpec.build("q", "cards", strategy=Strategy.ROUND_ROBIN))
    for name in ("a", "b", "c"):
        m.login(agent(name, cards=5), 0.0)
    got = []
    for i in range(6):
        out = m.call_arrived(CallSpec(f"c{i}", "q"), float(i))
        ((call, ag),) = offers(out)
        got.append(ag)
        m.answered(call, ag, float(i))
        m.call_ended(call, float(i) + 0.5)
    assert got == ["a", "b", "c", "a", "b", "c"]


def test_ring_all_offers_a_set_and_withdraws_the_rest() -> None:
    m, _ = make(QueueSpec.build("q", "cards", strategy=Strategy.RING_ALL, ring_all_limit=3))
    for i in range(4):
        m.login(agent(f"a{i}", cards=5), float(i))
    out = m.call_arrived(CallSpec("c1", "q"), 10.0)
    assert offers(out) == [("c1", "a0"), ("c1", "a1"), ("c1", "a2")]
    out = m.answered("c1", "a1", 11.0)
    assert [d for d in out if isinstance(d, Withdraw)] == [
        Withdraw("c1", "a0", "answered-elsewhere"),
        Withdraw("c1", "a2", "answered-elsewhere"),
    ]
    assert m.agent_state("a0") is AgentState.READY
    assert m.agent_state("a1") is AgentState.ON_CALL


def test_ring_no_answer_returns_to_head_and_pauses_after_n_misses() -> None:
    m, _ = make(QueueSpec.build("q", "cards"), max_misses=2)
    m.login(agent("sleepy", cards=5), 0.0)
    m.call_arrived(CallSpec("c1", "q"), 1.0)
    m.call_arrived(CallSpec("c2", "q"), 2.0)
    assert offers(m.no_answer("c1", "sleepy", 16.0)) == [("c1", "sleepy")]  # c1 still first
    assert m.waiting_calls("q") == ["c2"]
    assert m.no_answer("c1", "sleepy", 31.0) == []
    assert m.agent_state("sleepy") is AgentState.PAUSED
    assert m.pause_reason("sleepy") == "no-answer"
    assert m.waiting_calls("q") == ["c1", "c2"]  # back at the head
    m.login(agent("alert", cards=5), 40.0)
    assert m.call_state("c1") == "offered"


def test_caller_hangs_up_while_ringing_cancels_the_ring() -> None:
    m, _ = make(QueueSpec.build("q", "cards"))
    m.login(agent("a", cards=5), 0.0)
    m.call_arrived(CallSpec("c1", "q"), 1.0)
    assert m.hung_up("c1", 2.0) == [Withdraw("c1", "a", "caller-hung-up")]
    assert m.agent_state("a") is AgentState.READY
    with pytest.raises(UnknownCall):
        m.answered("c1", "a", 3.0)  # a late answer is refused, never connected


def test_wrapup_timer_and_multichannel_capacity() -> None:
    m, clock = make(QueueSpec.build("q", "cards", wrapup=10.0))
    m.login(AgentSpec("omni", {"cards": 5}, {"voice": 1, "chat": 3}), 0.0)
    for i in range(4):
        m.call_arrived(CallSpec(f"chat{i}", "q", channel="chat"), float(i))
    m.call_arrived(CallSpec("v1", "q"), 4.0)
    # One offer at a time; after each answer the next chat comes, up to 3; never the voice call.
    assert m.call_state("chat0") == "offered"
    for i in range(3):
        out = m.answered(f"chat{i}", "omni", 10.0 + i)
        if i < 2:
            assert offers(out) == [(f"chat{i + 1}", "omni")]
        else:
            assert offers(out) == []
    assert m.call_state("v1") == "waiting"
    for i in range(3):
        m.call_ended(f"chat{i}", 20.0 + i)  # a slot frees: chat3 first (older than v1)
        if i == 0:
            assert m.call_state("chat3") == "offered"
    m.answered("chat3", "omni", 30.0)
    m.call_ended("chat3", 40.0)
    assert m.agent_state("omni") is AgentState.WRAP_UP
    assert clock.pending == {("wrapup", "omni", 1): 50.0}
    assert offers(m.timer_fired(("wrapup", "omni", 1), 50.0)) == [("v1", "omni")]
    m.answered("v1", "omni", 51.0)
    assert m.call_arrived(CallSpec("chat9", "q", channel="chat"), 52.0) == []  # on voice


def test_max_wait_and_max_length_overflow() -> None:
    m, _ = make(QueueSpec.build("q", "cards", max_wait=60.0, max_length=1, overflow="voicemail"))
    assert m.call_arrived(CallSpec("c1", "q"), 0.0) == []
    assert m.call_arrived(CallSpec("c2", "q"), 1.0) == [
        Overflowed("c2", "q", "voicemail", "queue-full")
    ]
    assert m.timer_fired(("max-wait", "c1", 0), 60.0) == [
        Overflowed("c1", "q", "voicemail", "max-wait")
    ]
    assert m.waiting("q") == 0


def test_illegal_and_invalid_events_raise() -> None:
    m, _ = make(QueueSpec.build("q", "cards"))
    m.login(agent("a", cards=5), 0.0)
    with pytest.raises(IllegalTransition):
        m.login(agent("a", cards=5), 1.0)
    with pytest.raises(IllegalTransition):
        m.resume("a", 1.0)
    m.call_arrived(CallSpec("c1", "q"), 1.0)
    with pytest.raises(IllegalTransition):
        m.logout("a", 2.0)  # reserved: the offer must be resolved first
    with pytest.raises(InvalidEvent):
        m.call_ended("c1", 2.0)
    with pytest.raises(InvalidEvent):
        m.call_arrived(CallSpec("c1", "q"), 2.0)
    with pytest.raises(UnknownAgent):
        m.pause("nobody", "lunch", 2.0)
    with pytest.raises(UnknownQueue):
        m.call_arrived(CallSpec("c2", "nope"), 2.0)
    with pytest.raises(InvalidEvent):
        m.pause("a", "", 2.0)
    m.check_invariants()


def test_queue_added_after_agents_logged_in() -> None:
    m, _ = make(QueueSpec.build("q", "cards"))
    m.login(agent("a", loans=5), 0.0)
    m.add_queue(QueueSpec.build("loans", "loans >= 3"))
    assert offers(m.call_arrived(CallSpec("c1", "loans"), 1.0)) == [("c1", "a")]


def test_queue_replaced_while_agents_are_logged_in() -> None:
    """A replaced queue's old requirement indexes nobody and is dropped with its call heaps
    (check_invariants fails if one is kept). It used to stay, and when it named several skills
    the replacement (and every later login) failed with a KeyError."""
    m, _ = make(QueueSpec.build("q", "cards >= 2 and loans >= 3"))
    m.login(agent("a", cards=5, loans=5), 0.0)
    m.add_queue(QueueSpec.build("q", "cards >= 4"))
    m.login(agent("b", cards=5, loans=5), 1.0)
    m.login(agent("c", cards=3, loans=9), 2.0)
    assert m.eligible_requirements("a") == ["cards >= 4"]
    assert m.eligible_requirements("c") == []
    assert offers(m.call_arrived(CallSpec("c1", "q"), 3.0)) == [("c1", "a")]
    assert offers(m.call_arrived(CallSpec("c2", "q"), 3.0)) == [("c2", "b")]
    assert m.call_arrived(CallSpec("c3", "q"), 3.0) == []
    m.check_invariants()
