"""The matcher's internal structures on hand-made cases (beside the property tests).

The sorted inbox that serves longest-idle, its side heap for out-of-order announcements,
inbox compaction under strategy heaps, and the always-live heads of the call heaps.
"""

from __future__ import annotations

from typing import Any

import pytest

from acd import matcher as matcher_module
from acd.errors import InvariantViolation
from acd.matcher import Matcher
from acd.model import AgentSpec, CallSpec, Offer, QueueSpec, Strategy
from acd.reference import ReferenceMatcher


class NoTimers:
    def schedule(self, at: float, key: Any) -> None:
        return None

    def cancel(self, key: Any) -> None:
        return None


def both(queues: list[QueueSpec]) -> tuple[Matcher, ReferenceMatcher]:
    m, r = Matcher(NoTimers(), max_misses=5), ReferenceMatcher(NoTimers(), max_misses=5)
    for q in queues:
        m.add_queue(q)
        r.add_queue(q)
    return m, r


def same(m: Matcher, r: ReferenceMatcher, method: str, *args: Any) -> list[Any]:
    out: list[Any] = getattr(m, method)(*args)
    assert out == getattr(r, method)(*args), (method, args)
    m.check_invariants()
    return out


def test_released_agent_keeps_its_older_idle_time_through_the_side_heap() -> None:
    m, r = both([QueueSpec.build("q", "cards")])
    for i, t in enumerate((0.0, 1.0, 2.0)):
        same(m, r, "login", AgentSpec(f"a{i}", {"cards": 5}), t)
    assert same(m, r, "call_arrived", CallSpec("c1", "q"), 3.0) == [Offer("c1", "a0", "q", "voice")]
    # a0 misses: the call goes to a1 first, then a0 is idle again with idle-since 0.0, older
    # than a2's 2.0 announced before it: an out-of-order announcement.
    assert same(m, r, "no_answer", "c1", "a0", 5.0) == [Offer("c1", "a1", "q", "voice")]
    slot = m._agents["a0"].slots["voice"][0]
    assert slot.side, "the out-of-order announcement is in the side heap"
    # The longest idle is a0 (0.0) even though a2 (2.0) sits before it in the inbox.
    assert same(m, r, "call_arrived", CallSpec("c2", "q"), 6.0) == [Offer("c2", "a0", "q", "voice")]
    assert same(m, r, "call_arrived", CallSpec("c3", "q"), 6.0) == [Offer("c3", "a2", "q", "voice")]


def test_inbox_head_skips_agents_taken_elsewhere() -> None:
    m, r = both([QueueSpec.build("cards", "cards"), QueueSpec.build("loans", "loans")])
    for i in range(4):
        same(m, r, "login", AgentSpec(f"a{i}", {"cards": 5, "loans": 5}), float(i))
    cards_slot = m._agents["a0"].slots["voice"][0]
    # Three agents taken through the loans slot: their cards items are stale.
    for n in range(3):
        same(m, r, "call_arrived", CallSpec(f"l{n}", "loans"), 10.0)
    assert cards_slot.head == 0
    out = same(m, r, "call_arrived", CallSpec("c", "cards"), 11.0)
    assert out == [Offer("c", "a3", "cards", "voice")]
    assert cards_slot.head == 3  # skipped the three stale items, stopped at the live one


@pytest.mark.parametrize("strategy", [s for s in Strategy if s is not Strategy.LONGEST_IDLE])
def test_compaction_keeps_what_strategy_heaps_pulled(
    strategy: Strategy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(matcher_module, "INBOX_MIN", 2)
    m, r = both([QueueSpec.build("q", "cards", strategy=strategy, wrapup=0)])
    for i in range(6):
        same(m, r, "login", AgentSpec(f"a{i}", {"cards": 1 + i}), float(i))
    now = 10.0
    for n in range(40):  # arrivals, answers and ends keep announcing agents and compacting
        now += 1.0
        out = same(m, r, "call_arrived", CallSpec(f"c{n}", "q"), now)
        for offer in out:
            same(m, r, "answered", offer.call, offer.agent, now)
            break
        if out:
            same(m, r, "call_ended", out[0].call, now + 0.5)
        for offer in out[1:]:
            assert r.call_state(offer.call) is None  # ring-all: the others were withdrawn
    for slot in m._slots.values():
        assert slot.limit >= 2 and len(slot.inbox) <= slot.limit
        for heap in slot.heaps:
            assert heap.cursor <= len(slot.inbox)


def test_call_heap_heads_are_live_after_hang_ups_and_promotions() -> None:
    m, r = both([QueueSpec.build("q", "cards")])
    for n in range(6):
        same(m, r, "call_arrived", CallSpec(f"c{n}", "q"), float(n))
    same(m, r, "hung_up", "c0", 7.0)  # the head leaves: the next one becomes the live head
    same(m, r, "set_priority", "c4", 1, 8.0)  # promoted: the old entry is stale
    same(m, r, "hung_up", "c4", 9.0)
    heap = m._reqs[m._queues["q"].reqs[0].requirement].calls["voice"]
    assert heap.live == 4 and m._live[heap[0][2]] is heap[0]
    for c in ("c1", "c2", "c3", "c5"):
        same(m, r, "hung_up", c, 10.0)
    assert heap.live == 0 and not heap and m._nonempty == 0
    out = same(m, r, "login", AgentSpec("a", {"cards": 3}), 11.0)
    assert out == []


def test_invariants_catch_a_ready_agent_that_was_never_announced_idle() -> None:
    """A ready agent with no idle item would never be offered a call again: the invariant
    check (run after every event by the property tests) reports it, and the converse."""
    m, r = both([QueueSpec.build("q", "cards")])
    same(m, r, "login", AgentSpec("a0", {"cards": 5}), 0.0)
    item = m._idle[0]
    m._idle[0] = None  # lost: ready, but in no slot any more
    with pytest.raises(InvariantViolation, match="a0: idle item None"):
        m.check_invariants()
    m._idle[0] = item
    same(m, r, "pause", "a0", "break", 1.0)
    m._idle[0] = item  # a paused agent still announced idle
    with pytest.raises(InvariantViolation, match="with free channels \\(\\)"):
        m.check_invariants()
