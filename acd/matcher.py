"""The skill-based matcher: pure, synchronous, heap-based. No I/O, no asyncio, no clock.

Events go in (`call_arrived`, `answered`, `agent ready` via login/resume/wrap-up, ...), each with
the current time; decisions come out as a list of `Offer` / `Withdraw` / `Overflowed`. Timers
(relaxation steps, max wait, wrap-up) are requested from an injected `Scheduler`; when one is
due the owner calls `timer_fired(key, now)`.

Data structures (see docs/acd.md for the full argument):

* Every distinct requirement (a queue's requirement at each cumulative relaxation step, after
  normalisation) is a `_Req`, with one heap of waiting calls per channel.
* Idle agents live in slots (one per skill level bucket or multi-skill conjunction, per
  channel): an agent becoming idle appends one item to each of its slots' inboxes. The inbox is
  kept sorted by idle time, so it is itself the longest-idle queue (a head cursor skips stale
  items; a small side heap takes the rare out-of-order announcement). Other strategies keep a
  heap per slot that pulls the inbox lazily, live items only.
* Call arrives: the best head among the few slots (or heaps) of its requirement's view.
  Agent frees up: compare the (always live) heads of the non-empty call heaps it is eligible
  for. Both are bounded by the configuration, not by the number of agents or calls.
* Deletion is lazy: an idle item is live while it is the agent's current item (an identity
  test against `Matcher._idle`); offering, pausing, logging out... clear it. A waiting call has
  exactly one live heap entry. Heaps that grow past twice their live size are compacted
  (amortised O(1) per push).

Ordering rules: calls by (priority, arrival time - queue weight, arrival sequence), lower first;
agents by the queue's strategy key, ties broken by the agent's registration index.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from heapq import heapify, heappop, heappush
from typing import Any

from acd import agent_state
from acd.agent_state import BY_EVENT, AgentState
from acd.errors import (
    ConfigurationError,
    IllegalTransition,
    InvalidEvent,
    InvariantViolation,
    UnknownAgent,
    UnknownCall,
    UnknownQueue,
)
from acd.model import (
    EXCLUSIVE_CHANNELS,
    AgentSpec,
    CallSpec,
    Decision,
    Offer,
    Overflowed,
    QueueSpec,
    Scheduler,
    Strategy,
    TimerKey,
    Withdraw,
    check_priority,
)
from acd.requirement import MAX_LEVEL, Conjunction, Requirement

log = logging.getLogger(__name__)
_new = tuple.__new__

READY = AgentState.READY
RESERVED = AgentState.RESERVED
ON_CALL = AgentState.ON_CALL
WRAP_UP = AgentState.WRAP_UP
PAUSED = AgentState.PAUSED
LOGGED_OUT = AgentState.LOGGED_OUT
#: The states the transition table lets an offer leave (the hot path checks only these).
_OFFER_FROM = frozenset(s for s, targets in BY_EVENT["offer"].items() if RESERVED in targets)

# Call states.
NEW, WAITING, OFFERED, CONNECTED = 0, 1, 2, 3
CALL_STATE_NAMES = {NEW: "new", WAITING: "waiting", OFFERED: "offered", CONNECTED: "connected"}

# Strategy key codes (ring-all orders its ring set by longest idle).
LI, LO, FC, RR, HP = 0, 1, 2, 3, 4
STRATEGY_CODE = {
    Strategy.LONGEST_IDLE: LI,
    Strategy.LEAST_OCCUPIED: LO,
    Strategy.FEWEST_CALLS: FC,
    Strategy.ROUND_ROBIN: RR,
    Strategy.HIGHEST_PROFICIENCY: HP,
    Strategy.RING_ALL: LI,
}

NO_ANSWER_REASON = "no-answer"
MIN_COMPACT = 64  # a heap is compacted when it grows past max(this, 2 x its live size)
INBOX_MIN = 256  # a slot's inbox is compacted when it grows past max(this, 2 x live)
# Stale heads popped in one query before the whole heap may be compacted instead: at once if
# half of a sample of STALE_SAMPLE entries is stale, else after an eighth of the heap.
STALE_POPS = 32
STALE_SAMPLE = 8
INDEX_BLOCK = 4096  # agent index ints made at once (`Matcher._next_index`)

# A round-robin heap's entry is one int: last_offer << KEY_SHIFT | idx << SEQ_BITS | seq (the
# item's announcement number), which orders as the tuple (last_offer, idx) does. A heap sift
# then reads one object per entry instead of a tuple and its key: half the cache misses once
# the centre outgrows the caches (a round-robin offer at 100,000 agents, popping the heads
# that longest-idle queues took meanwhile: 30 -> 23 us). The other strategies keep tuples:
# their keys hold floats, and packing those costs more at small sizes than it saves.
SEQ_BITS = 48  # announcement numbers below 2**48: 8,900 years at 1,000 a second
IDX_BITS = 32
KEY_SHIFT = SEQ_BITS + IDX_BITS
SEQ_MASK = (1 << SEQ_BITS) - 1
IDX_MASK = (1 << IDX_BITS) - 1

Kind = tuple[int, tuple[str, ...]]


class _Heap(list[Any]):
    """A heap (plain list for heapq) that remembers when it should be compacted next.

    Entries hold only numbers and tuples of numbers (a strategy heap's entry ends with the
    idle item it was pulled from, or is one int, see KEY_SHIFT; never an agent or call
    object), so CPython's garbage collector untracks them: millions of heap entries then cost
    the cyclic collector nothing.
    """

    __slots__ = ("limit", "live", "number")

    def __init__(self, slot: int = -1) -> None:
        super().__init__()
        self.limit = MIN_COMPACT
        self.live = 0  # call heaps: how many entries are live
        self.number = slot  # call heaps: position in Matcher._call_heaps

    def reheap(self) -> None:
        """Restore the heap property after the list was refilled; the next compaction is due
        when it doubles."""
        heapify(self)
        self.limit = max(MIN_COMPACT, 2 * len(self))


class _Slot:
    """A group of interchangeable-for-eligibility idle agents on one channel.

    Either one (skill, level bucket) or one multi-skill conjunction. Agents becoming idle are
    appended to `inbox` as one item (idle since, index, announcement, ...), the same tuple in
    every slot: one append per slot, whatever the number of strategies.

    Longest-idle needs no heap: an announcement whose entry is greater than every entry
    announced before it (in any slot: `Matcher._last_item`) keeps the inbox sorted, so the
    inbox itself is the longest-idle queue. `head` skips stale entries (O(1) each, no heap
    pop); an out-of-order announcement (an agent released after a miss or a withdrawal keeps
    its older idle-since) is also pushed to the small `side` heap, and the best idle agent is
    the smaller of the first live inbox entry and the side heap's head. Every entry before
    `head` is stale, and a live out-of-order entry met at `head` is never smaller than the
    side heap's head, so the answer is exact.

    The other strategies' heaps (`heaps`) pull the inbox when they are queried, pushing only
    entries still live then, so an agent taken before a heap is asked never costs it anything.
    When the inbox grows past `limit` it is compacted to its live entries (order kept; the
    heaps' cursors move with them), amortised O(1) per announcement.
    """

    __slots__ = ("inbox", "head", "side", "heaps", "limit", "li")

    def __init__(self) -> None:
        # (idle since, index, announcement, occupancy, calls handled, last offer): the
        # strategies' keys ride along, so a pull need not touch the agent (they hold while it
        # is live). The announcement number orders an agent's own items, oldest first.
        self.inbox: list[tuple[float, int, int, float, int, int]] = []
        self.head = 0
        self.side = _Heap()
        self.heaps: list[_KHeap] = []
        self.limit = INBOX_MIN
        self.li = False  # a longest-idle (or ring-all) queue reaches this slot


class _KHeap(_Heap):
    """One strategy's heap of idle agents in a slot."""

    __slots__ = ("inbox", "cursor", "code", "score_skills")

    def __init__(self, slot: _Slot, code: int, score_skills: tuple[str, ...]) -> None:
        super().__init__()
        # The slot's inbox (compaction keeps the list object), not the slot: a slot refers to
        # its heaps, and no reference back means no cycle, so a dropped matcher is freed by
        # reference counting alone, without the cyclic collector.
        self.inbox = slot.inbox
        self.cursor = 0  # inbox position pulled so far
        self.code = code
        self.score_skills = score_skills


class _Req:
    """A distinct requirement: its waiting calls, and where its idle agents are to be found."""

    __slots__ = ("requirement", "text", "idx", "calls", "views")

    def __init__(self, requirement: Requirement, idx: int):
        self.requirement = requirement
        self.text = requirement.text  # rendered once: statistics ask per agent
        self.idx = idx
        self.calls: dict[str, _Heap] = {}
        # (strategy kind, channel) -> the slots (longest-idle) or strategy heaps (other kinds)
        # whose union is exactly the eligible agents
        self.views: dict[tuple[int, str], list[Any]] = {}


class _Joined:
    """Something an agent can join: one skill's level bucket or one multi-skill conjunction.

    Holds what joining it means (the requirements it satisfies, the strategy kinds of its
    slots) and its slot per channel, so that logging an agent in is a few lookups per skill.
    """

    __slots__ = ("key", "reqs", "kinds", "slots")

    def __init__(self, key: tuple[Any, ...], reqs: Iterable[_Req], kinds: list[Kind]) -> None:
        self.key = key
        self.reqs = {req.idx: req for req in reqs}
        self.kinds = kinds
        # By channel, filled as agents join: a login reads it instead of building `_slot`'s
        # key (with the call heaps read straight from `req.calls`, 100,000 logins in 1.94
        # instead of 2.31 s, alternating runs).
        self.slots: dict[str, _Slot] = {}


class _Queue:
    __slots__ = (
        "spec",
        "id",
        "reqs",
        "kind",
        "kind_id",
        "waiting",
        "ring_all",
        "li",
        "steps",
        "max_wait",
        "weight",
        "wrapup",
        "max_length",
        "ring_limit",
    )

    def __init__(self, spec: QueueSpec, reqs: list[_Req], kind: Kind, kind_id: int):
        self.spec = spec
        self.id = spec.id
        self.reqs = reqs
        self.kind = kind
        self.kind_id = kind_id
        self.waiting = 0
        self.ring_all = spec.strategy is Strategy.RING_ALL
        self.li = kind[0] == LI
        self.steps = tuple(step.after for step in spec.steps)
        self.max_wait = spec.max_wait
        self.weight = spec.weight
        self.wrapup = spec.wrapup
        self.max_length = spec.max_length
        self.ring_limit = spec.ring_all_limit if self.ring_all else 1


class _AgentCore:
    """What offers, answers, call ends, wrap-ups and an agent freeing up for a waiting call read
    and write on an agent, apart from the rest. CPython lays out a class's slots in alphabetical
    order, after its base's, so these 14 fill exactly the first two cache lines of the object
    (its header included; pymalloc places an agent 64-byte aligned) instead of being spread over
    four. At 100,000 agents each line an event touches is a cache miss."""

    __slots__ = (
        "all_heaps", "avail_since", "busy_start", "busy_time", "excl", "handled", "id", "idx",
        "last_offer", "misses", "offer", "state", "total", "wrap_epoch",
    )  # fmt: skip


class _Agent(_AgentCore):
    __slots__ = (
        "spec", "skills", "capacity", "channels", "shared", "load", "reason", "login_time",
        "reqs", "occ", "slots", "call_heaps", "all_slots",
    )  # fmt: skip

    def __init__(self, spec: AgentSpec, idx: int):
        self.id = spec.id
        self.idx = idx
        self.state = LOGGED_OUT
        self.reason: str | None = None
        # The ringing call's id: an id, not the call, which refers to its ringing agents (no
        # cycle between the two).
        self.offer: str | None = None
        self.avail_since = 0.0
        self.busy_time = 0.0
        self.busy_start = 0.0
        self.login_time = 0.0
        self.handled = 0
        self.last_offer = 0
        self.misses = 0
        self.wrap_epoch = 0
        self.occ = 0.0
        self.set_spec(spec)

    def set_spec(self, spec: AgentSpec) -> None:
        self.spec = spec
        self.skills = dict(spec.skills)
        self.capacity = dict(spec.capacity)
        self.channels = tuple(sorted(self.capacity))
        self.shared = tuple(c for c in self.channels if c not in EXCLUSIVE_CHANNELS)
        # Work in progress per shared channel; exclusive work (at most one call: it is offered
        # only to an agent with no work) is `excl`, its channel, kept on the agent itself so
        # that answering and ending a voice call touch no other object.
        self.load = dict.fromkeys(self.shared, 0)
        self.excl: str | None = None
        self.total = 0
        self.reqs: list[_Req] = []
        self.slots: dict[str, list[_Slot]] = {}
        # channel -> the call heaps of the requirements the agent satisfies
        self.call_heaps: dict[str, list[_Heap]] = {}
        # The same over every channel, flat: what a READY agent (all channels free) looks at.
        # One tuple instead of a dict of lists: fewer objects touched per event, which is what
        # an event costs once the centre no longer fits in the CPU's caches.
        self.all_slots: tuple[_Slot, ...] = ()
        self.all_heaps: tuple[_Heap, ...] = ()


class _Call:
    __slots__ = (
        "id", "seq", "queue", "channel", "priority", "enq", "adj", "step", "req",
        "state", "agents", "agent", "timed", "heap",
    )  # fmt: skip

    def __init__(self, spec: CallSpec, queue: _Queue, seq: int, now: float):
        self.id = spec.id
        self.seq = seq
        self.queue = queue
        self.channel = spec.channel
        self.priority = spec.priority
        self.enq = now
        self.adj = now - queue.weight
        self.step = 0
        self.req = queue.reqs[0]
        self.state = NEW
        # The agents ringing, a tuple (most calls ring one agent, many never ring: no list
        # and item array to allocate per call, one object to read when the call is answered).
        self.agents: tuple[_Agent, ...] = ()
        self.agent: _Agent | None = None
        self.timed = False
        self.heap: _Heap | None = None  # the call heap holding it while it waits


class _NullScheduler:
    def schedule(self, at: float, key: TimerKey) -> None:
        raise ConfigurationError(
            f"matcher needs a scheduler for timer {key!r}: pass scheduler= to Matcher"
        )

    def cancel(self, key: TimerKey) -> None:
        return None


class Matcher:
    """The production matcher. See the module docstring for the policy and the complexity."""

    def __init__(self, scheduler: Scheduler | None = None, *, max_misses: int = 2):
        if max_misses < 1:
            raise ConfigurationError("max_misses must be >= 1")
        self.scheduler: Scheduler = scheduler or _NullScheduler()
        self.max_misses = max_misses
        self._queues: dict[str, _Queue] = {}
        self._reqs: dict[Requirement, _Req] = {}  # the requirements some queue uses
        self._req_seq = 0
        # The index (rebuilt by add_queue): see _rebuild_index.
        self._bucket_of: dict[str, list[int]] = {}
        self._atom_kinds: dict[str, list[Kind]] = {}
        # What an agent's login looks up, per skill and level: its bucket's entry, and the
        # multi-skill conjunctions anchored on that skill whose anchor term the level meets.
        self._atom_at: dict[str, list[_Joined | None]] = {}
        self._multi_at: dict[str, list[list[tuple[Conjunction, _Joined]]]] = {}
        self._multi_free: list[tuple[Conjunction, _Joined]] = []
        self._idle_heaps: dict[tuple[Any, ...], _KHeap] = {}
        self._slots: dict[tuple[Any, ...], _Slot] = {}
        self._kind_ids: dict[Kind, int] = {}
        self._conj_id: dict[Conjunction, int] = {}
        self._multi_kinds_by_id: dict[int, list[Kind]] = {}
        self._agents: dict[str, _Agent] = {}
        self._by_idx: list[_Agent] = []
        self._ints: list[int] = []  # agent indexes, made in blocks (`_next_index`)
        # Each agent's live idle item (by index), None while it is not idle: an inbox entry
        # is live iff it is that very tuple (a strategy heap entry carries the item it was
        # pulled from). Any change of state stores None, which touches no object but the
        # list slot: no version object to read, release and allocate per transition, each a
        # cache miss once the centre no longer fits in the CPU's caches.
        self._idle: list[tuple[Any, ...] | None] = []
        self._idle_seq = 0  # items' announcement number: orders an agent's items (stale first)
        self._calls: dict[str, _Call] = {}
        # Waiting calls by sequence (what a call heap entry names). Only waiting calls: most
        # calls never wait, and a small index stays in the caches.
        self._by_seq: dict[int, _Call] = {}
        # Waiting calls: sequence -> the one live heap entry (checked by identity).
        self._live: dict[int, tuple[int, float, int]] = {}
        # Call heaps, and how many hold at least one live call (none: an agent that frees up
        # goes idle without looking; else it looks at the non-empty heaps it is eligible for).
        self._call_heaps: list[_Heap] = []
        self._nonempty = 0
        # The greatest idle entry announced so far: a greater one keeps every inbox sorted.
        self._last_item: tuple[Any, ...] = (float("-inf"), -1, -1)
        self._call_seq = 0
        self._offer_seq = 0

    # ------------------------------------------------------------------ configuration

    def add_queue(self, spec: QueueSpec) -> None:
        """Add or replace a queue. Rebuilds the eligibility index: O(agents), not for hot paths.

        Idle agents are re-queued with the strategy keys they had (no decision is taken: a new
        queue has no calls yet).
        """
        if spec.id in self._queues:
            old = self._queues[spec.id]
            if old.waiting or any(c.queue is old for c in self._calls.values()):
                raise ConfigurationError(f"queue {spec.id}: cannot be replaced while it has calls")
        strategy = STRATEGY_CODE[spec.strategy]
        kind: Kind = (strategy, spec.proficiency_skills if strategy == HP else ())
        reqs = []
        for requirement in spec.cumulative():
            req = self._reqs.get(requirement)
            if req is None:
                req = _Req(requirement, self._req_seq)
                self._req_seq += 1
                self._reqs[requirement] = req
            reqs.append(req)
        kind_id = self._kind_ids.setdefault(kind, len(self._kind_ids))
        self._queues[spec.id] = _Queue(spec, reqs, kind, kind_id)
        self._rebuild_index()
        free = []
        for ag in self._by_idx:
            self._index_agent(ag)
            if self._channels_free(ag):
                free.append(ag)
        # Fresh slots: announce in longest-idle order so that the inboxes start sorted.
        self._last_item = (float("-inf"), -1, -1)
        free.sort(key=lambda a: (a.avail_since, a.idx))
        for ag in free:
            self._push_idle(ag, None, self._channels_free(ag))

    def _rebuild_index(self) -> None:
        """Index the conjunctions of every requirement in force.

        A conjunction that is a single interval on one skill (`cards >= 3`, the common case)
        is served by per-(skill, level bucket) heaps shared by every requirement: an agent sits
        in one such heap per skill it holds, and a query looks at the few buckets the interval
        covers. Bucket boundaries are the interval ends that occur, so buckets never split an
        interval. Other conjunctions (several skills, or none) get a heap of their own, joined
        by the agents that satisfy them. An agent is therefore pushed into O(skills + multi-skill
        conjunctions it satisfies) heaps when it becomes idle, not into one per requirement.
        """
        bounds: dict[str, set[int]] = {}
        atom_kinds: dict[str, list[Kind]] = {}
        multi_kinds: dict[Conjunction, list[Kind]] = {}
        for queue in self._queues.values():
            for req in queue.reqs:
                for conj in req.requirement.conjunctions:
                    if len(conj) == 1 and conj[0][1] >= 1:
                        skill, lo, hi = conj[0]
                        bounds.setdefault(skill, set()).update((lo, hi + 1))
                        kinds = atom_kinds.setdefault(skill, [])
                    else:
                        kinds = multi_kinds.setdefault(conj, [])
                    if queue.kind not in kinds:
                        kinds.append(queue.kind)
        self._bucket_of = {}
        for skill, b in bounds.items():
            edges = sorted(b)
            self._bucket_of[skill] = [bisect_right(edges, lv) - 1 for lv in range(MAX_LEVEL + 1)]
        self._atom_kinds = atom_kinds
        atom_reqs: dict[tuple[str, int], list[_Req]] = {}
        multi_reqs: dict[Conjunction, list[_Req]] = {}
        # Only the requirements some queue uses: a replaced queue's old ones go, with their
        # call heaps. They hold no calls (the queue could not be replaced otherwise), and
        # every agent is indexed again after this.
        in_force = {req.idx for queue in self._queues.values() for req in queue.reqs}
        self._reqs = {r.requirement: r for r in self._reqs.values() if r.idx in in_force}
        self._call_heaps = [heap for req in self._reqs.values() for heap in req.calls.values()]
        for number, heap in enumerate(self._call_heaps):
            heap.number = number
        reqs = list(self._reqs.values())
        for req in reqs:
            req.views = {}
            for conj in req.requirement.conjunctions:
                if len(conj) == 1 and conj[0][1] >= 1:
                    skill, lo, hi = conj[0]
                    buckets = self._bucket_of[skill]
                    for bucket in range(buckets[lo], buckets[hi] + 1):
                        lst = atom_reqs.setdefault((skill, bucket), [])
                        if req not in lst:
                            lst.append(req)
                else:
                    lst = multi_reqs.setdefault(conj, [])
                    if req not in lst:
                        lst.append(req)
        # Per skill and level, what an agent holding it joins: its level bucket ...
        self._atom_at = {}
        for skill, buckets in self._bucket_of.items():
            by_bucket: dict[int, _Joined] = {}
            at: list[_Joined | None] = []
            for bucket in buckets:
                if bucket < 0:
                    at.append(None)
                    continue
                joined = by_bucket.get(bucket)
                if joined is None:
                    joined = by_bucket[bucket] = _Joined(
                        (skill, bucket), atom_reqs.get((skill, bucket), ()), atom_kinds[skill]
                    )
                at.append(joined)
            self._atom_at[skill] = at
        # ... and the multi-skill conjunctions anchored on it (each on its least-used skill:
        # fewest candidates to test when an agent logs in) whose anchor term the level meets;
        # the other terms are tested at login.
        use: dict[str, int] = {}
        for req in reqs:
            for conj in req.requirement.conjunctions:
                for skill, _lo, _hi in conj:
                    use[skill] = use.get(skill, 0) + 1
        self._multi_at = {}
        self._multi_free = []
        self._conj_id = {}
        self._multi_kinds_by_id = {}
        for conj in multi_reqs:
            cid = self._conj_id[conj] = len(self._conj_id)
            kinds = self._multi_kinds_by_id[cid] = multi_kinds[conj]
            joined = _Joined((cid,), multi_reqs[conj], kinds)
            positive = [s for s, lo, _hi in conj if lo >= 1]
            if not positive:
                self._multi_free.append((conj, joined))
                continue
            rarest = min(positive, key=lambda sk: (use[sk], sk))
            term = next(t for t in conj if t[0] == rarest)
            rest = tuple(t for t in conj if t is not term)
            levels = self._multi_at.setdefault(rarest, [[] for _ in range(MAX_LEVEL + 1)])
            for level in range(term[1], min(term[2], MAX_LEVEL) + 1):
                levels[level].append((rest, joined))
        self._idle_heaps = {}
        self._slots = {}

    def _slot(self, slot_key: tuple[Any, ...], kinds: list[Kind], channel: str) -> _Slot:
        """The slot (with one heap per strategy kind) for a slot key on a channel."""
        key = (*slot_key, channel)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
            for kind in kinds:
                if kind[0] == LI:
                    slot.li = True
                    continue
                heap = _KHeap(slot, kind[0], kind[1])
                slot.heaps.append(heap)
                self._idle_heaps[(*slot_key, kind, channel)] = heap
        return slot

    def _view_member(self, slot_key: tuple[Any, ...], kind: Kind, channel: str) -> Any:
        """The slot (longest-idle) or the kind's heap in it; an empty slot if no agent is in."""
        kinds = (
            self._atom_kinds.get(slot_key[0], [kind])
            if len(slot_key) == 2
            else self._multi_kinds_by_id.get(slot_key[0], [kind])
        )
        slot = self._slot(slot_key, kinds, channel)
        if kind[0] == LI:
            if not slot.li:
                raise InvariantViolation(f"slot {slot_key!r} on {channel} lacks longest-idle")
            return slot
        return self._idle_heaps[(*slot_key, kind, channel)]

    def _view(self, req: _Req, kind: Kind, channel: str) -> list[Any]:
        """The slots or heaps that together hold exactly the agents eligible for `req`."""
        members: list[Any] = []
        for conj in req.requirement.conjunctions:
            if len(conj) == 1 and conj[0][1] >= 1:
                skill, lo, hi = conj[0]
                buckets = self._bucket_of[skill]
                for bucket in range(buckets[lo], buckets[hi] + 1):
                    members.append(self._view_member((skill, bucket), kind, channel))
            else:
                members.append(self._view_member((self._conj_id[conj],), kind, channel))
        req.views[(self._kind_ids[kind], channel)] = members
        return members

    def _index_agent(self, ag: _Agent) -> None:
        """Find the requirements the agent satisfies and the idle slots it belongs to.

        A few lookups per skill (see `_rebuild_index`): logging in a roster of 100,000
        agents is a bulk job at the start of a shift, and every `add_queue` re-indexes them.
        """
        skills = ag.skills
        channels = ag.channels
        found: dict[int, _Req] = {}
        joined: list[_Joined] = []
        atom_at = self._atom_at
        for skill, level in skills.items():
            at = atom_at.get(skill)
            if at is not None:
                atom = at[level]
                if atom is not None:
                    found.update(atom.reqs)
                    joined.append(atom)
        # Multi-skill conjunctions: those with no positive term, then those whose anchor term
        # the agent meets; the terms left to test come with each.
        candidates = list(self._multi_free)
        multi_at = self._multi_at
        for skill, level in skills.items():
            anchored = multi_at.get(skill)
            if anchored is not None:
                candidates += anchored[level]
        for terms, multi in candidates:
            for s, lo, hi in terms:
                lv = skills.get(s, 0)
                if lv < lo or lv > hi:
                    break
            else:
                found.update(multi.reqs)
                joined.append(multi)
        ag.reqs = reqs = [found[i] for i in sorted(found)]
        slot = self._slot
        call_heap = self._call_heap
        ag.slots = {}
        ag.call_heaps = {}
        for c in channels:
            slots = []
            for j in joined:
                sl = j.slots.get(c)
                if sl is None:
                    sl = j.slots[c] = slot(j.key, j.kinds, c)
                slots.append(sl)
            ag.slots[c] = slots
            heaps = []
            for req in reqs:
                heap = req.calls.get(c)
                if heap is None:
                    heap = call_heap(req, c)
                heaps.append(heap)
            ag.call_heaps[c] = heaps
        ag.all_slots = tuple(s for c in channels for s in ag.slots[c])
        ag.all_heaps = tuple(h for c in channels for h in ag.call_heaps[c])

    def _call_heap(self, req: _Req, channel: str) -> _Heap:
        heap = req.calls.get(channel)
        if heap is None:
            heap = req.calls[channel] = _Heap(len(self._call_heaps))
            self._call_heaps.append(heap)
        return heap

    # ------------------------------------------------------------------ helpers

    def _agent(self, agent_id: str) -> _Agent:
        ag = self._agents.get(agent_id)
        if ag is None:
            raise UnknownAgent(f"unknown agent {agent_id!r}")
        return ag

    def _call(self, call_id: str) -> _Call:
        call = self._calls.get(call_id)
        if call is None:
            raise UnknownCall(f"unknown call {call_id!r} (never queued, or already gone)")
        return call

    def _move(self, ag: _Agent, event: str, target: AgentState) -> None:
        state = ag.state
        allowed = BY_EVENT[event].get(state)
        if allowed is None or target not in allowed:
            raise IllegalTransition(ag.id, event, state.value, target.value)
        ag.state = target
        if state is READY or state is ON_CALL:
            # Whatever the agent was queued as is no longer true. Only a READY or ON_CALL
            # agent can be queued as idle, so the others leave the `_idle` slot (a cache
            # miss at 100,000 agents) alone.
            self._idle[ag.idx] = None

    def _next_index(self) -> int:
        """The next agent's index. Index ints are made in blocks, side by side in memory: every
        liveness test (`idle[item[1]] is item`) touches one (CPython counts a reference), and
        100,000 of them made one by one at login lie among the agents' other objects, a cache
        line each; in blocks they share lines, 3 MB in all."""
        n = len(self._by_idx)
        ints = self._ints
        if n >= len(ints):
            ints.extend(range(len(ints), len(ints) + INDEX_BLOCK))
        return ints[n]

    def _busy_end(self, ag: _Agent, now: float) -> None:
        ag.busy_time += now - ag.busy_start

    def _channels_free(self, ag: _Agent) -> tuple[str, ...]:
        if ag.offer is not None:
            return ()
        state = ag.state
        if state is READY:
            return ag.channels
        if state is ON_CALL and ag.shared:
            if ag.excl is not None:
                return ()
            load = ag.load
            cap = ag.capacity
            return tuple(c for c in ag.shared if load[c] < cap[c])
        return ()

    def _push_idle(self, ag: _Agent, now: float | None, chans: tuple[str, ...]) -> None:
        """Announce the agent as idle to every slot it belongs to; `now` None keeps the keys."""
        idx = ag.idx
        self._idle_seq += 1
        if now is not None:
            span = now - ag.login_time
            busy = ag.busy_time + (now - ag.busy_start if ag.total else 0.0)
            ag.occ = busy / span if span > 0 else 0.0
        item = (ag.avail_since, idx, self._idle_seq, ag.occ, ag.handled, ag.last_offer)
        idle = self._idle
        idle[idx] = item
        if chans is ag.channels:
            slots: Iterable[_Slot] = ag.all_slots
        else:
            by_channel = ag.slots
            slots = [slot for c in chans for slot in by_channel[c]]
        if item > self._last_item:  # the common case: inboxes stay sorted
            self._last_item = item
            for slot in slots:
                inbox = slot.inbox
                inbox.append(item)
                if len(inbox) > slot.limit:
                    self._compact_slot(slot)
            return
        for slot in slots:
            inbox = slot.inbox
            inbox.append(item)
            if slot.li:
                side = slot.side
                heappush(side, item)
                if len(side) > side.limit:
                    side[:] = [e for e in side if idle[e[1]] is e]
                    side.reheap()
            if len(inbox) > slot.limit:
                self._compact_slot(slot)

    def _compact_slot(self, slot: _Slot) -> None:
        """Keep only the live inbox entries (in order); strategy heaps keep what they pulled.

        An inbox that was mostly live (a bulk login, agents announced faster than they are
        taken) may next grow to four times its size instead of two: the scans that found
        nothing to drop then cost a third as much, and the inbox still holds at most four
        entries per live one.
        """
        idle = self._idle
        inbox = slot.inbox
        before = len(inbox)
        if not slot.heaps:
            inbox[:] = [e for e in inbox[slot.head :] if idle[e[1]] is e]
        else:
            kept = [i for i in range(slot.head, len(inbox)) if idle[inbox[i][1]] is inbox[i]]
            for heap in slot.heaps:
                # What the heap had pulled stays pulled: its cursor moves to the same place.
                heap.cursor = bisect_left(kept, heap.cursor)
            inbox[:] = [inbox[i] for i in kept]
        slot.head = 0
        live = len(inbox)
        slot.limit = max(INBOX_MIN, (4 if 4 * live >= 3 * before else 2) * live)

    def _pull(self, heap: _KHeap) -> None:
        """Bring a strategy heap up to date with its slot's inbox (live entries only)."""
        inbox = heap.inbox
        start = heap.cursor
        if start >= len(inbox):
            return
        idle = self._idle
        agents = self._by_idx
        code = heap.code
        # An empty heap (the first pull after a bulk login: thousands of entries) is filled as
        # a list and heapified once, O(n), with nothing stale to compact away.
        fresh = not heap
        push = list.append if fresh else heappush
        for i in range(start, len(inbox)):
            item = inbox[i]
            if idle[item[1]] is not item:
                continue  # decided before unpacking: a stale item's numbers stay untouched
            avail, idx, seq, occ, handled, last_offer = item
            entry: Any
            if code == RR:
                entry = last_offer << KEY_SHIFT | idx << SEQ_BITS | seq
            elif code == HP:
                score = 0
                skills = agents[idx].skills
                for sk in heap.score_skills:
                    score -= skills.get(sk, 0)
                entry = (score, avail, idx, item)
            elif code == LO:
                entry = (occ, avail, idx, item)
            else:
                entry = (handled, avail, idx, item)
            push(heap, entry)
        heap.cursor = len(inbox)
        if fresh:
            heap.reheap()
        elif len(heap) > heap.limit:
            self._compact_agents(heap)

    def _agent_free(self, ag: _Agent, now: float, out: list[Decision]) -> None:
        """The agent may have room for work: give it the best waiting call, or queue it idle."""
        # A READY agent (every channel free) reads neither its channels nor its per-channel
        # heaps until it goes idle: `all_heaps` shares the agent's hot cache lines, they do not.
        chans: tuple[str, ...] | None = None
        if ag.state is not READY or ag.offer is not None:
            chans = self._channels_free(ag)
            if not chans:
                return
            if chans is ag.channels:
                chans = None
        if self._nonempty:
            best: tuple[int, float, int] | None = None
            best_heap: _Heap | None = None
            if chans is None:
                heaps: Iterable[_Heap] = ag.all_heaps
            else:
                call_heaps = ag.call_heaps
                heaps = [heap for c in chans for heap in call_heaps[c]]
            for heap in heaps:
                # The head of a heap holding live calls is live (_dequeue keeps it so).
                if heap.live and (best is None or heap[0] < best):
                    best = heap[0]
                    best_heap = heap
            if best is not None and best_heap is not None:
                heappop(best_heap)
                call = self._by_seq[best[2]]
                self._dequeue(call)
                self._offer(call, ag, out)
                return
        self._push_idle(ag, now, ag.channels if chans is None else chans)

    def _dequeue(self, call: _Call) -> None:
        """A waiting call stops waiting (its heap entry becomes stale)."""
        live = self._live
        del live[call.seq]
        heap = call.heap
        if heap is None:
            raise InvariantViolation(f"waiting call {call.id} is in no heap")
        heap.live -= 1
        if heap.live:
            self._clean_head(heap)
        else:
            heap.clear()  # every entry left is stale
            self._nonempty -= 1
        call.heap = None
        del self._by_seq[call.seq]
        call.queue.waiting -= 1

    def _clean_head(self, heap: _Heap) -> None:
        """Pop stale heads: a call heap's head is always live, so agents need not check it."""
        live = self._live
        entry = heap[0]
        while live.get(entry[2]) is not entry:
            heappop(heap)
            entry = heap[0]  # heap.live > 0: a live entry remains

    def _enqueue(self, call: _Call) -> None:
        heap = self._call_heap(call.req, call.channel)
        entry = (call.priority, call.adj, call.seq)
        self._live[call.seq] = entry
        heappush(heap, entry)
        if len(heap) > heap.limit:
            self._compact_calls(heap)
        if not heap.live:
            self._nonempty += 1
        heap.live += 1
        call.heap = heap
        self._by_seq[call.seq] = call
        call.state = WAITING
        call.queue.waiting += 1

    def _offer(self, call: _Call, ag: _Agent, out: list[Decision]) -> None:
        if ag.state not in _OFFER_FROM:
            self._move(ag, "offer", RESERVED)  # raises IllegalTransition
        ag.state = RESERVED
        self._idle[ag.idx] = None
        ag.offer = call.id
        self._offer_seq += 1
        ag.last_offer = self._offer_seq
        call.state = OFFERED
        call.agents += (ag,)
        # tuple.__new__ skips the named tuple's Python-level __new__ (same object).
        out.append(_new(Offer, (call.id, ag.id, call.queue.id, call.channel)))

    def _best_agents(self, call: _Call) -> list[_Agent]:
        """Take the best idle eligible agent (ring-all: up to the limit) out of the slots."""
        queue = call.queue
        req = call.req
        members = req.views.get((queue.kind_id, call.channel))
        if members is None:
            members = self._view(req, queue.kind, call.channel)
        limit = queue.ring_limit
        found: list[_Agent] = []
        idle = self._idle
        pop = heappop
        li = queue.li
        while len(found) < limit:
            best: Any = None  # an idle item (longest-idle) or a strategy heap's entry
            best_heap: _Heap | None = None
            best_packed = False
            if li:
                for slot in members:
                    inbox = slot.inbox
                    h = slot.head
                    n = len(inbox)
                    entry = None
                    while h < n:
                        e = inbox[h]
                        if idle[e[1]] is e:
                            entry = e
                            break
                        h += 1
                    slot.head = h
                    side = slot.side
                    if side:
                        s = side[0]
                        while idle[s[1]] is not s:
                            pop(side)
                            if not side:
                                break
                            s = side[0]
                        else:
                            if entry is None or s < entry:
                                entry = s
                    if entry is not None and (best is None or entry < best):
                        best = entry
                if best is None:
                    break
                idx = best[1]
            else:
                for heap in members:
                    if heap.cursor < len(heap.inbox):
                        self._pull(heap)
                    if not heap:
                        continue
                    entry = heap[0]
                    stale = 0
                    packed = heap.code == RR
                    while (
                        (cur := idle[entry >> SEQ_BITS & IDX_MASK]) is None
                        or cur[2] != entry & SEQ_MASK
                        if packed
                        else idle[entry[-2]] is not entry[-1]
                    ):
                        stale += 1
                        if stale > STALE_POPS and (
                            stale > len(heap) >> 3
                            or (stale == STALE_POPS + 1 and self._mostly_stale(heap))
                        ):
                            # A backlog (agents taken through their other slots since this
                            # heap was last asked): one linear clean-up instead of a pop,
                            # O(log n) on cold memory, per stale entry. But a long stale run
                            # at the head need not be a stale heap (longest-idle queues take
                            # the agents at the head of every round-robin, fewest-calls and
                            # least-occupied heap first, and a burst of calls does that
                            # hundreds of times over), and compacting a heap to drop a few
                            # per cent of it is all loss: compact at once if a sample of the
                            # heap is mostly stale, else only once the pops have cost about
                            # what the clean-up will (ski rental: an entry scanned costs a
                            # sixth of a stale pop, measured).
                            self._compact_agents(heap)
                        else:
                            pop(heap)
                        if not heap:
                            break
                        entry = heap[0]
                    else:
                        if best is None or entry < best:
                            best = entry
                            best_heap = heap
                            best_packed = packed
                if best is None or best_heap is None:
                    break
                pop(best_heap)
                idx = best >> SEQ_BITS & IDX_MASK if best_packed else best[-2]
            found.append(self._by_idx[idx])
            idle[idx] = None  # its entries elsewhere are stale from now on
        return found

    def _apply_due_steps(self, call: _Call, now: float) -> None:
        steps = call.queue.steps
        while call.step < len(steps) and call.enq + steps[call.step] <= now:
            call.step += 1
        call.req = call.queue.reqs[call.step]

    def _start_timers(self, call: _Call) -> None:
        call.timed = True
        queue = call.queue
        for i in range(call.step, len(queue.steps)):
            self.scheduler.schedule(call.enq + queue.steps[i], ("relax", call.id, i + 1))
        if queue.max_wait:
            self.scheduler.schedule(call.enq + queue.max_wait, ("max-wait", call.id, 0))

    def _stop_timers(self, call: _Call) -> None:
        if not call.timed:
            return
        call.timed = False
        queue = call.queue
        for i in range(call.step, len(queue.steps)):
            self.scheduler.cancel(("relax", call.id, i + 1))
        if queue.max_wait:
            self.scheduler.cancel(("max-wait", call.id, 0))

    def _forget(self, call: _Call) -> None:
        if call.state == WAITING:
            self._dequeue(call)
        del self._calls[call.id]

    def _overflow(self, call: _Call, reason: str, out: list[Decision]) -> None:
        self._stop_timers(call)
        self._forget(call)
        queue = call.queue
        out.append(Overflowed(call.id, queue.id, queue.spec.overflow, reason))

    def _call_ready(self, call: _Call, now: float, out: list[Decision]) -> None:
        """The call needs an agent: arrival, relaxation step, or back from a missed offer."""
        queue = call.queue
        arrival = call.state == NEW
        if call.state == WAITING:
            self._dequeue(call)
        elif call.state == OFFERED:
            if queue.max_wait and now >= call.enq + queue.max_wait:
                self._overflow(call, "max-wait", out)
                return
            if not call.timed:
                self._apply_due_steps(call, now)
        agents = self._best_agents(call)
        if agents:
            call.state = NEW  # not waiting any more: _offer moves it to OFFERED
            for ag in agents:
                self._offer(call, ag, out)
            return
        if arrival and queue.max_length and queue.waiting >= queue.max_length:
            self._overflow(call, "queue-full", out)
            return
        self._enqueue(call)
        if not call.timed:
            self._start_timers(call)

    def _release(self, ag: _Agent, event: str, now: float, out: list[Decision]) -> None:
        """An offer ended without work (withdrawn, missed): the agent is routable again."""
        ag.offer = None
        self._move(ag, event, ON_CALL if ag.total else READY)
        self._agent_free(ag, now, out)

    # ------------------------------------------------------------------ agent events

    def login(self, spec: AgentSpec, now: float, *, paused: str | None = None) -> list[Decision]:
        """Log an agent in (READY, or PAUSED with a reason). Skills may change between logins."""
        ag = self._agents.get(spec.id)
        target = PAUSED if paused is not None else READY
        if ag is None:
            ag = _Agent(spec, self._next_index())
            self._index_agent(ag)
            self._agents[spec.id] = ag
            self._by_idx.append(ag)
            self._idle.append(None)
        else:
            agent_state.check(ag.id, "login", ag.state, target)
            if ag.spec != spec:
                ag.set_spec(spec)
                self._index_agent(ag)
        self._move(ag, "login", target)
        ag.reason = paused
        ag.login_time = now
        ag.avail_since = now
        ag.busy_time = 0.0
        ag.handled = 0
        ag.misses = 0
        out: list[Decision] = []
        if target is READY:
            self._agent_free(ag, now, out)
        return out

    def logout(self, agent_id: str, now: float) -> list[Decision]:
        ag = self._agent(agent_id)
        was = ag.state
        self._move(ag, "logout", LOGGED_OUT)
        if was is WRAP_UP:
            self.scheduler.cancel(("wrapup", ag.id, ag.wrap_epoch))
        ag.reason = None
        return []

    def pause(self, agent_id: str, reason: str, now: float) -> list[Decision]:
        if not isinstance(reason, str) or not reason:
            raise InvalidEvent(f"agent {agent_id}: a pause needs a reason code")
        ag = self._agent(agent_id)
        was = ag.state
        self._move(ag, "pause", PAUSED)
        if was is WRAP_UP:
            self.scheduler.cancel(("wrapup", ag.id, ag.wrap_epoch))
            self._busy_end(ag, now)
        ag.reason = reason
        return []

    def resume(self, agent_id: str, now: float) -> list[Decision]:
        ag = self._agent(agent_id)
        self._move(ag, "resume", READY)
        ag.reason = None
        ag.misses = 0
        ag.avail_since = now
        out: list[Decision] = []
        self._agent_free(ag, now, out)
        return out

    # ------------------------------------------------------------------ call events

    def call_arrived(self, spec: CallSpec, now: float) -> list[Decision]:
        queue = self._queues.get(spec.queue)
        if queue is None:
            raise UnknownQueue(f"call {spec.id}: unknown queue {spec.queue!r}")
        call = _Call(spec, queue, self._call_seq + 1, now)
        if self._calls.setdefault(spec.id, call) is not call:  # one probe of the call index
            raise InvalidEvent(f"call {spec.id} is already in the ACD")
        self._call_seq += 1
        out: list[Decision] = []
        self._call_ready(call, now, out)
        return out

    def _offered_to(self, call_id: str, agent_id: str) -> tuple[_Call, _Agent]:
        call = self._calls.get(call_id)
        if call is None:
            call = self._call(call_id)  # raises
        if call.state == OFFERED:
            # The ringing agents are at hand: no lookup in the (large) agent index.
            for ringing in call.agents:
                if ringing.id == agent_id:
                    return call, ringing
        ag = self._agents.get(agent_id)
        if ag is None:
            ag = self._agent(agent_id)  # raises
        if call.state != OFFERED or ag.offer != call_id:
            raise InvalidEvent(f"call {call_id} is not ringing agent {agent_id}")
        return call, ag

    def answered(self, call_id: str, agent_id: str, now: float) -> list[Decision]:
        """The agent picked up. Ring-all: the other agents of the set are withdrawn."""
        call, ag = self._offered_to(call_id, agent_id)
        out: list[Decision] = []
        agents = call.agents
        others = [a for a in agents if a is not ag] if len(agents) > 1 else ()
        call.agents = ()
        call.agent = ag
        call.state = CONNECTED
        if call.timed:
            self._stop_timers(call)
        ag.offer = None
        self._move(ag, "answer", ON_CALL)
        if not ag.total:
            ag.busy_start = now
        ag.total += 1
        ag.handled += 1
        ag.misses = 0
        channel = call.channel
        if channel in EXCLUSIVE_CHANNELS:
            ag.excl = channel
        else:
            ag.load[channel] += 1
            ag.avail_since = now
            self._agent_free(ag, now, out)
        for other in others:
            out.append(Withdraw(call.id, other.id, "answered-elsewhere"))
        for other in others:
            self._release(other, "withdraw", now, out)
        return out

    def no_answer(self, call_id: str, agent_id: str, now: float) -> list[Decision]:
        """Ring-no-answer: the call goes back to its place (others first), the agent may pause."""
        call, ag = self._offered_to(call_id, agent_id)
        out: list[Decision] = []
        call.agents = tuple(a for a in call.agents if a is not ag)
        ag.offer = None
        ag.misses += 1
        if not call.agents:
            # The agent is still RESERVED here, so the call cannot come straight back to it.
            self._call_ready(call, now, out)
        if ag.misses >= self.max_misses and not ag.total:
            self._move(ag, "no-answer", PAUSED)
            ag.reason = NO_ANSWER_REASON
            log.debug("agent %s paused after %d unanswered offers", ag.id, ag.misses)
        else:
            self._move(ag, "no-answer", ON_CALL if ag.total else READY)
            self._agent_free(ag, now, out)
        return out

    def hung_up(self, call_id: str, now: float) -> list[Decision]:
        """The caller left: waiting (abandon), ringing (the ring is cancelled) or connected."""
        call = self._call(call_id)
        if call.state == CONNECTED:
            return self.call_ended(call_id, now)
        out: list[Decision] = []
        self._stop_timers(call)
        self._forget(call)
        if call.state == OFFERED:
            agents = call.agents
            call.agents = ()
            for ag in agents:
                out.append(Withdraw(call.id, ag.id, "caller-hung-up"))
            for ag in agents:
                self._release(ag, "withdraw", now, out)
        call.state = NEW
        return out

    def call_ended(self, call_id: str, now: float) -> list[Decision]:
        """A connected call or task finished; the agent wraps up after its last task."""
        call = self._call(call_id)
        if call.state != CONNECTED or call.agent is None:
            raise InvalidEvent(f"call {call_id} is not connected")
        self._forget(call)
        ag = call.agent
        call.agent = None
        if call.channel in EXCLUSIVE_CHANNELS:
            ag.excl = None
        else:
            ag.load[call.channel] -= 1
        ag.total -= 1
        out: list[Decision] = []
        if ag.state is RESERVED:
            self._move(ag, "end", RESERVED)
            if not ag.total:
                self._busy_end(ag, now)
            return out
        if ag.total:
            self._move(ag, "end", ON_CALL)
            ag.avail_since = now
            self._agent_free(ag, now, out)
            return out
        wrapup = call.queue.wrapup
        if wrapup > 0:
            self._move(ag, "end", WRAP_UP)
            ag.wrap_epoch += 1
            self.scheduler.schedule(now + wrapup, ("wrapup", ag.id, ag.wrap_epoch))
            return out
        self._move(ag, "end", READY)
        self._busy_end(ag, now)
        ag.avail_since = now
        self._agent_free(ag, now, out)
        return out

    def set_priority(self, call_id: str, priority: int, now: float) -> list[Decision]:
        """Change a call's priority at once (a waiting call moves in its heap now)."""
        check_priority(priority)
        call = self._call(call_id)
        call.priority = priority
        if call.state == WAITING and call.heap is not None:
            heap = call.heap
            entry = (priority, call.adj, call.seq)
            self._live[call.seq] = entry
            heappush(heap, entry)
            if len(heap) > heap.limit:
                self._compact_calls(heap)
            self._clean_head(heap)  # the old entry may have been the head
        return []

    def timer_fired(self, key: TimerKey, now: float) -> list[Decision]:
        kind, ident, number = key
        out: list[Decision] = []
        if kind == "wrapup":  # the most frequent timer
            ag = self._agents.get(ident)
            if ag is not None and ag.state is WRAP_UP and ag.wrap_epoch == number:
                self._move(ag, "wrapup-done", READY)
                ag.busy_time += now - ag.busy_start
                ag.avail_since = now
                self._agent_free(ag, now, out)
        elif kind == "relax":
            call = self._calls.get(ident)
            if call is None or call.step >= number or call.state == CONNECTED:
                return out
            call.step = number
            call.req = call.queue.reqs[number]
            if call.state == WAITING:
                self._call_ready(call, now, out)
        elif kind == "max-wait":
            call = self._calls.get(ident)
            if call is not None and call.state == WAITING:
                self._overflow(call, "max-wait", out)
        else:
            raise InvalidEvent(f"unknown timer {key!r}")
        return out

    def _mostly_stale(self, heap: _KHeap) -> bool:
        """Whether at least half of `STALE_SAMPLE` entries spread over the heap are stale."""
        n = len(heap)
        live = self._live_test(heap)
        stale = sum(
            1 for j in range(1, 2 * STALE_SAMPLE, 2) if not live(heap[j * n // (2 * STALE_SAMPLE)])
        )
        return 2 * stale >= STALE_SAMPLE

    def _live_test(self, heap: _KHeap) -> Callable[[Any], bool]:
        """Whether an entry of this strategy heap is still its agent's current idle item (the
        same test is written out in `_best_agents`, where a call per entry would cost)."""
        idle = self._idle
        if heap.code == RR:

            def live(e: Any) -> bool:
                cur = idle[e >> SEQ_BITS & IDX_MASK]
                return cur is not None and cur[2] == e & SEQ_MASK

            return live
        return lambda e: idle[e[-2]] is e[-1]

    def _compact_agents(self, heap: _KHeap) -> None:
        """Drop stale idle entries and restore the heap property (amortised O(1) per push)."""
        heap[:] = filter(self._live_test(heap), heap)
        heap.reheap()

    def _compact_calls(self, heap: _Heap) -> None:
        live = self._live
        heap[:] = [e for e in heap if live.get(e[2]) is e]
        heap.reheap()

    def settle(self) -> None:
        """Bring every idle heap up to date now (after loading a roster in bulk).

        Heaps normally catch up with their inboxes when first asked; after thousands of
        logins that first question would pay for all of them at once.
        """
        for slot in self._slots.values():
            for heap in slot.heaps:
                self._pull(heap)

    # ------------------------------------------------------------------ queries

    def agent_state(self, agent_id: str) -> AgentState:
        return self._agent(agent_id).state

    def pause_reason(self, agent_id: str) -> str | None:
        return self._agent(agent_id).reason

    def agent_ids(self) -> Iterable[str]:
        return self._agents.keys()

    def call_state(self, call_id: str) -> str | None:
        call = self._calls.get(call_id)
        return None if call is None else CALL_STATE_NAMES[call.state]

    def waiting(self, queue_id: str) -> int:
        queue = self._queues.get(queue_id)
        if queue is None:
            raise UnknownQueue(f"unknown queue {queue_id!r}")
        return queue.waiting

    def waiting_calls(self, queue_id: str) -> list[str]:
        """Waiting calls of a queue in service order (for statistics and tests: O(w log w))."""
        if queue_id not in self._queues:
            raise UnknownQueue(f"unknown queue {queue_id!r}")
        calls = [c for c in self._calls.values() if c.state == WAITING and c.queue.id == queue_id]
        calls.sort(key=lambda c: (c.priority, c.adj, c.seq))
        return [c.id for c in calls]

    def eligible_requirements(self, agent_id: str) -> list[str]:
        return [r.text for r in self._agent(agent_id).reqs]

    @staticmethod
    def _load(ag: _Agent, channel: str) -> int:
        if channel in EXCLUSIVE_CHANNELS:
            return 1 if ag.excl == channel else 0
        return ag.load[channel]

    def check_invariants(self) -> None:
        """Cross-check the bookkeeping (tests and debugging; O(agents + calls + heap entries))."""
        counts = dict.fromkeys(self._queues, 0)
        live_per_heap: dict[int, int] = {}
        for call in self._calls.values():
            if call.state == WAITING:
                counts[call.queue.id] += 1
                heap = call.heap
                if heap is None or heap is not call.req.calls.get(call.channel):
                    raise InvariantViolation(f"waiting call {call.id} is not in its heap")
                live = [e for e in heap if self._live.get(call.seq) is e]
                if len(live) != 1:
                    raise InvariantViolation(f"waiting call {call.id} has {len(live)} live entries")
                live_per_heap[heap.number] = live_per_heap.get(heap.number, 0) + 1
            elif call.state == OFFERED:
                if not call.agents:
                    raise InvariantViolation(f"call {call.id} offered to nobody")
                for ag in call.agents:
                    if ag.offer != call.id or ag.state is not RESERVED:
                        raise InvariantViolation(f"call {call.id}: agent {ag.id} not reserved")
            elif call.state == CONNECTED:
                if call.agent is None or self._load(call.agent, call.channel) < 1:
                    raise InvariantViolation(f"call {call.id} connected to nobody")
            else:
                raise InvariantViolation(f"call {call.id} held in state {call.state}")
        for heap in self._call_heaps:
            n = live_per_heap.get(heap.number, 0)
            if heap.live != n:
                raise InvariantViolation(f"call heap {heap.number}: live count wrong")
            if n and self._live.get(heap[0][2]) is not heap[0]:
                raise InvariantViolation(f"call heap {heap.number}: stale head")
        in_force = {id(req) for queue in self._queues.values() for req in queue.reqs}
        if set(map(id, self._reqs.values())) != in_force:
            raise InvariantViolation("a requirement no queue uses is kept")
        heaps = [heap for req in self._reqs.values() for heap in req.calls.values()]
        if sorted(map(id, heaps)) != sorted(map(id, self._call_heaps)):
            raise InvariantViolation("the call heaps are not those of the requirements in force")
        if self._nonempty != sum(1 for heap in self._call_heaps if heap.live):
            raise InvariantViolation(f"non-empty call heaps: {self._nonempty} is wrong")
        if len(self._live) != sum(live_per_heap.values()):
            raise InvariantViolation("live entries for calls that are not waiting")
        waiting = {c.seq: c for c in self._calls.values() if c.state == WAITING}
        if self._by_seq != waiting:
            raise InvariantViolation("the index of waiting calls is out of step")
        for qid, n in counts.items():
            if self._queues[qid].waiting != n:
                raise InvariantViolation(f"queue {qid}: waiting {self._queues[qid].waiting} != {n}")
        for ag in self._agents.values():
            if (ag.state is RESERVED) != (ag.offer is not None):
                raise InvariantViolation(f"agent {ag.id}: state {ag.state} vs offer {ag.offer}")
            if ag.offer is not None:
                ringing = self._calls.get(ag.offer)
                if ringing is None or ringing.state != OFFERED or ag not in ringing.agents:
                    raise InvariantViolation(f"agent {ag.id}: stuck reserved")
            if ag.excl is not None and (ag.excl not in ag.channels or ag.total != 1):
                raise InvariantViolation(f"agent {ag.id}: {ag.excl} beside other work")
            if ag.total != sum(self._load(ag, c) for c in ag.channels) or any(
                self._load(ag, c) > ag.capacity[c] for c in ag.channels
            ):
                raise InvariantViolation(f"agent {ag.id}: load {ag.load} over capacity")
            if ag.state in (READY, WRAP_UP, PAUSED, LOGGED_OUT) and ag.total:
                raise InvariantViolation(f"agent {ag.id}: {ag.state} with work")
            if ag.state is ON_CALL and not ag.total:
                raise InvariantViolation(f"agent {ag.id}: on call without work")
            # An agent with room for work is announced idle (or it would never be offered a
            # call again), and only such an agent is.
            if (self._idle[ag.idx] is not None) != bool(self._channels_free(ag)):
                raise InvariantViolation(
                    f"agent {ag.id}: idle item {self._idle[ag.idx]} with free channels"
                    f" {self._channels_free(ag)}"
                )
