"""The skill-based matcher: pure, synchronous, heap-based. No I/O, no asyncio, no clock.

Events go in (`call_arrived`, `answered`, `agent ready` via login/resume/wrap-up, ...), each with
the current time; decisions come out as a list of `Offer` / `Withdraw` / `Overflowed`. Timers
(relaxation steps, max wait, wrap-up) are requested from an injected `Scheduler`; when one is
due the owner calls `timer_fired(key, now)`.

Data structures (see docs/acd.md for the full argument):

* Every distinct requirement (a queue's requirement at each cumulative relaxation step, after
  normalisation) is a `_Req`. It owns one heap of idle agents per (strategy key, channel) and
  one heap of waiting calls per channel.
* When an agent registers, the requirements it satisfies are found through an index of
  conjunctions anchored on a skill (only those anchored on a skill the agent holds are tested)
  and stored on the agent as flat lists of heaps: the agent's "eligibility signature".
* Call arrives: pop the head of one heap (its requirement, its queue's strategy, its channel).
  Agent frees up: compare the heads of the call heaps of the requirements it satisfies on the
  channels it has room on. Both are O(k log n), k = requirements per agent (bounded by the
  configuration, not by the number of agents or calls).
* Deletion is lazy: an entry carries a version; pausing, hanging up, offering, relaxing and
  re-prioritising bump the owner's version. Stale heads are popped when seen, and a heap that
  grows past twice its size after the last clean-up is compacted (amortised O(1) per push).

Ordering rules: calls by (priority, arrival time - queue weight, arrival sequence), lower first;
agents by the queue's strategy key, ties broken by the agent's registration index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from heapq import heapify, heappop, heappush
from typing import Any

from acd import agent_state
from acd.agent_state import AgentState
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
from acd.requirement import Conjunction, Requirement, anchor

log = logging.getLogger(__name__)

READY = AgentState.READY
RESERVED = AgentState.RESERVED
ON_CALL = AgentState.ON_CALL
WRAP_UP = AgentState.WRAP_UP
PAUSED = AgentState.PAUSED
LOGGED_OUT = AgentState.LOGGED_OUT

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
MIN_COMPACT = 64

Kind = tuple[int, tuple[str, ...]]


class _Heap(list[Any]):
    """A heap (plain list for heapq) that remembers when it should be compacted next."""

    __slots__ = ("limit",)

    def __init__(self) -> None:
        super().__init__()
        self.limit = MIN_COMPACT


class _Req:
    __slots__ = ("requirement", "idx", "idle", "calls", "kinds")

    def __init__(self, requirement: Requirement, idx: int):
        self.requirement = requirement
        self.idx = idx
        self.idle: dict[tuple[Kind, str], _Heap] = {}
        self.calls: dict[str, _Heap] = {}
        self.kinds: list[Kind] = []


class _Queue:
    __slots__ = ("spec", "id", "reqs", "kind", "waiting", "ring_all", "steps", "max_wait")

    def __init__(self, spec: QueueSpec, reqs: list[_Req], kind: Kind):
        self.spec = spec
        self.id = spec.id
        self.reqs = reqs
        self.kind = kind
        self.waiting = 0
        self.ring_all = spec.strategy is Strategy.RING_ALL
        self.steps = tuple(step.after for step in spec.steps)
        self.max_wait = spec.max_wait


class _Agent:
    __slots__ = (
        "id", "idx", "spec", "skills", "capacity", "channels", "shared", "load", "total",
        "state", "reason", "ver", "offer", "avail_since", "busy_time", "busy_start",
        "login_time", "handled", "last_offer", "misses", "wrap_epoch", "reqs", "occ",
        "idle_lists", "call_lists",
    )  # fmt: skip

    def __init__(self, spec: AgentSpec, idx: int):
        self.id = spec.id
        self.idx = idx
        self.state = LOGGED_OUT
        self.reason: str | None = None
        self.ver = 0
        self.offer: _Call | None = None
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
        self.load = dict.fromkeys(self.channels, 0)
        self.total = 0
        self.reqs: list[_Req] = []
        self.idle_lists: dict[str, list[tuple[_Heap, int, int]]] = {}
        self.call_lists: dict[str, list[_Heap]] = {}


class _Call:
    __slots__ = (
        "id", "seq", "queue", "channel", "priority", "enq", "adj", "step", "req", "ver",
        "state", "agents", "agent", "timed",
    )  # fmt: skip

    def __init__(self, spec: CallSpec, queue: _Queue, seq: int, now: float):
        self.id = spec.id
        self.seq = seq
        self.queue = queue
        self.channel = spec.channel
        self.priority = spec.priority
        self.enq = now
        self.adj = now - queue.spec.weight
        self.step = 0
        self.req = queue.reqs[0]
        self.ver = 0
        self.state = NEW
        self.agents: list[_Agent] = []
        self.agent: _Agent | None = None
        self.timed = False


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
        self._reqs: dict[Requirement, _Req] = {}
        self._anchored: dict[str, list[tuple[Conjunction, _Req]]] = {}
        self._unanchored: list[tuple[Conjunction, _Req]] = []
        self._agents: dict[str, _Agent] = {}
        self._calls: dict[str, _Call] = {}
        self._call_seq = 0
        self._offer_seq = 0

    # ------------------------------------------------------------------ configuration

    def add_queue(self, spec: QueueSpec) -> None:
        """Add or replace a queue. Costs O(agents) when agents are already registered.

        Idle agents are re-indexed with the strategy keys they had (no decision is taken: a
        new queue has no calls yet).
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
                req = _Req(requirement, len(self._reqs))
                self._reqs[requirement] = req
                for conj in requirement.conjunctions:
                    skill = anchor(conj)
                    if skill is None:
                        self._unanchored.append((conj, req))
                    else:
                        self._anchored.setdefault(skill, []).append((conj, req))
            if kind not in req.kinds:
                req.kinds.append(kind)
            reqs.append(req)
        self._queues[spec.id] = _Queue(spec, reqs, kind)
        if self._agents:
            for ag in self._agents.values():
                self._index_agent(ag)
                if self._channels_free(ag):
                    self._push_idle(ag, None)

    def _eligible(self, skills: dict[str, int]) -> list[_Req]:
        found: dict[int, _Req] = {}
        candidates: list[tuple[Conjunction, _Req]] = []
        for skill in skills:
            lst = self._anchored.get(skill)
            if lst:
                candidates.extend(lst)
        candidates.extend(self._unanchored)
        for conj, req in candidates:
            if req.idx in found:
                continue
            for s, lo, hi in conj:
                level = skills.get(s, 0)
                if level < lo or level > hi:
                    break
            else:
                found[req.idx] = req
        return [found[i] for i in sorted(found)]

    def _index_agent(self, ag: _Agent) -> None:
        reqs = self._eligible(ag.skills)
        ag.reqs = reqs
        idle: dict[str, list[tuple[_Heap, int, int]]] = {c: [] for c in ag.channels}
        calls: dict[str, list[_Heap]] = {c: [] for c in ag.channels}
        for req in reqs:
            for kind in req.kinds:
                code, skills = kind
                negscore = -sum(ag.skills.get(s, 0) for s in skills) if code == HP else 0
                for c in ag.channels:
                    heap = req.idle.get((kind, c))
                    if heap is None:
                        heap = req.idle[(kind, c)] = _Heap()
                    idle[c].append((heap, code, negscore))
            for c in ag.channels:
                heap = req.calls.get(c)
                if heap is None:
                    heap = req.calls[c] = _Heap()
                calls[c].append(heap)
        ag.idle_lists = idle
        ag.call_lists = calls

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
        allowed = agent_state.TRANSITIONS.get((event, ag.state))
        if allowed is None or target not in allowed:
            raise IllegalTransition(ag.id, event, ag.state.value, target.value)
        ag.state = target
        ag.ver += 1  # whatever the agent was queued as is no longer true

    def _busy_end(self, ag: _Agent, now: float) -> None:
        ag.busy_time += now - ag.busy_start

    def _channels_free(self, ag: _Agent) -> tuple[str, ...]:
        if ag.offer is not None:
            return ()
        state = ag.state
        if state is READY:
            return ag.channels
        if state is ON_CALL and ag.shared:
            load = ag.load
            for c in ag.channels:
                if c in EXCLUSIVE_CHANNELS and load[c]:
                    return ()
            cap = ag.capacity
            return tuple(c for c in ag.shared if load[c] < cap[c])
        return ()

    def _push_idle(self, ag: _Agent, now: float | None) -> None:
        """Queue the agent as idle in every heap it belongs to; `now` None keeps the keys."""
        chans = self._channels_free(ag)
        ag.ver += 1
        ver = ag.ver
        avail = ag.avail_since
        idx = ag.idx
        if now is not None:
            span = now - ag.login_time
            busy = ag.busy_time + (now - ag.busy_start if ag.total else 0.0)
            ag.occ = busy / span if span > 0 else 0.0
        li = (avail, idx, ver, ag)
        lo = fc = rr = None
        for c in chans:
            for heap, code, negscore in ag.idle_lists[c]:
                if code == LI:
                    entry: tuple[Any, ...] = li
                elif code == HP:
                    entry = (negscore, avail, idx, ver, ag)
                elif code == LO:
                    if lo is None:
                        lo = (ag.occ, avail, idx, ver, ag)
                    entry = lo
                elif code == FC:
                    if fc is None:
                        fc = (ag.handled, avail, idx, ver, ag)
                    entry = fc
                else:
                    if rr is None:
                        rr = (ag.last_offer, idx, ver, ag)
                    entry = rr
                heappush(heap, entry)
                if len(heap) > heap.limit:
                    _compact(heap)

    def _agent_free(self, ag: _Agent, now: float, out: list[Decision]) -> None:
        """The agent may have room for work: give it the best waiting call, or queue it idle."""
        chans = self._channels_free(ag)
        if not chans:
            return
        best: tuple[Any, ...] | None = None
        best_heap: _Heap | None = None
        call_lists = ag.call_lists
        for c in chans:
            for heap in call_lists[c]:
                if not heap:
                    continue
                entry = heap[0]
                while entry[3] != entry[4].ver:
                    heappop(heap)
                    if not heap:
                        break
                    entry = heap[0]
                else:
                    if best is None or entry < best:
                        best = entry
                        best_heap = heap
        if best is not None and best_heap is not None:
            heappop(best_heap)
            call: _Call = best[4]
            call.queue.waiting -= 1
            self._offer(call, ag, out)
            return
        self._push_idle(ag, now)

    def _offer(self, call: _Call, ag: _Agent, out: list[Decision]) -> None:
        self._move(ag, "offer", RESERVED)
        ag.offer = call
        self._offer_seq += 1
        ag.last_offer = self._offer_seq
        call.state = OFFERED
        call.ver += 1
        call.agents.append(ag)
        out.append(Offer(call.id, ag.id, call.queue.id, call.channel))

    def _best_agents(self, call: _Call) -> list[_Agent]:
        queue = call.queue
        heap = call.req.idle.get((queue.kind, call.channel))
        if not heap:
            return []
        limit = queue.spec.ring_all_limit if queue.ring_all else 1
        found: list[_Agent] = []
        while heap and len(found) < limit:
            entry = heappop(heap)
            ag = entry[-1]
            if entry[-2] == ag.ver:
                found.append(ag)
                ag.ver += 1  # so a second entry of the same agent is not taken twice
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

    def _overflow(self, call: _Call, reason: str, out: list[Decision]) -> None:
        self._stop_timers(call)
        call.ver += 1
        del self._calls[call.id]
        queue = call.queue
        out.append(Overflowed(call.id, queue.id, queue.spec.overflow, reason))

    def _call_ready(self, call: _Call, now: float, out: list[Decision]) -> None:
        """The call needs an agent: arrival, relaxation step, or back from a missed offer."""
        queue = call.queue
        arrival = call.state == NEW
        if call.state == WAITING:
            queue.waiting -= 1
        elif call.state == OFFERED:
            if queue.max_wait and now >= call.enq + queue.max_wait:
                self._overflow(call, "max-wait", out)
                return
            if not call.timed:
                self._apply_due_steps(call, now)
        call.ver += 1
        agents = self._best_agents(call)
        if agents:
            call.state = NEW  # not waiting any more: _offer moves it to OFFERED
            for ag in agents:
                self._offer(call, ag, out)
            return
        if arrival and queue.spec.max_length and queue.waiting >= queue.spec.max_length:
            self._overflow(call, "queue-full", out)
            return
        call.state = WAITING
        queue.waiting += 1
        heap = call.req.calls.get(call.channel)
        if heap is None:
            heap = call.req.calls[call.channel] = _Heap()
        heappush(heap, (call.priority, call.adj, call.seq, call.ver, call))
        if len(heap) > heap.limit:
            _compact(heap)
        if not call.timed:
            self._start_timers(call)

    def _release(self, ag: _Agent, event: str, now: float, out: list[Decision]) -> None:
        """An offer ended without work (withdrawn, missed): the agent is routable again."""
        ag.offer = None
        self._move(ag, event, ON_CALL if ag.total else READY)
        self._agent_free(ag, now, out)

    # ------------------------------------------------------------------ agent events

    def login(
        self, spec: AgentSpec, now: float, *, paused: str | None = None
    ) -> list[Decision]:
        """Log an agent in (READY, or PAUSED with a reason). Skills may change between logins."""
        ag = self._agents.get(spec.id)
        target = PAUSED if paused is not None else READY
        if ag is None:
            ag = _Agent(spec, len(self._agents))
            self._index_agent(ag)
            self._agents[spec.id] = ag
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
        if spec.id in self._calls:
            raise InvalidEvent(f"call {spec.id} is already in the ACD")
        self._call_seq += 1
        call = _Call(spec, queue, self._call_seq, now)
        self._calls[spec.id] = call
        out: list[Decision] = []
        self._call_ready(call, now, out)
        return out

    def _offered_to(self, call_id: str, agent_id: str) -> tuple[_Call, _Agent]:
        call = self._call(call_id)
        ag = self._agent(agent_id)
        if call.state != OFFERED or ag.offer is not call:
            raise InvalidEvent(f"call {call_id} is not ringing agent {agent_id}")
        return call, ag

    def answered(self, call_id: str, agent_id: str, now: float) -> list[Decision]:
        """The agent picked up. Ring-all: the other agents of the set are withdrawn."""
        call, ag = self._offered_to(call_id, agent_id)
        out: list[Decision] = []
        others = [a for a in call.agents if a is not ag]
        call.agents = []
        call.agent = ag
        call.state = CONNECTED
        self._stop_timers(call)
        ag.offer = None
        self._move(ag, "answer", ON_CALL)
        if not ag.total:
            ag.busy_start = now
        ag.load[call.channel] += 1
        ag.total += 1
        ag.handled += 1
        ag.misses = 0
        if ag.shared and call.channel not in EXCLUSIVE_CHANNELS:
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
        call.agents.remove(ag)
        ag.offer = None
        ag.misses += 1
        if not call.agents:
            # The agent is still RESERVED here, so the call cannot come straight back to it.
            self._call_ready(call, now, out)
        if ag.misses >= self.max_misses and not ag.total:
            self._move(ag, "no-answer", PAUSED)
            ag.reason = NO_ANSWER_REASON
            log.info("agent %s paused after %d unanswered offers", ag.id, ag.misses)
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
        del self._calls[call.id]
        call.ver += 1
        if call.state == WAITING:
            call.queue.waiting -= 1
        elif call.state == OFFERED:
            agents = call.agents
            call.agents = []
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
        del self._calls[call.id]
        ag = call.agent
        call.agent = None
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
        wrapup = call.queue.spec.wrapup
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
        if call.state == WAITING:
            call.ver += 1
            heap = call.req.calls[call.channel]
            heappush(heap, (priority, call.adj, call.seq, call.ver, call))
            if len(heap) > heap.limit:
                _compact(heap)
        return []

    def timer_fired(self, key: TimerKey, now: float) -> list[Decision]:
        kind, ident, number = key
        out: list[Decision] = []
        if kind == "relax":
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
                call.queue.waiting -= 1
                self._overflow(call, "max-wait", out)
        elif kind == "wrapup":
            ag = self._agents.get(ident)
            if ag is not None and ag.state is WRAP_UP and ag.wrap_epoch == number:
                self._move(ag, "wrapup-done", READY)
                self._busy_end(ag, now)
                ag.avail_since = now
                self._agent_free(ag, now, out)
        else:
            raise InvalidEvent(f"unknown timer {key!r}")
        return out

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
        return [r.requirement.text for r in self._agent(agent_id).reqs]

    def check_invariants(self) -> None:
        """Cross-check the bookkeeping (tests and debugging; O(agents + calls + heap entries))."""
        counts = dict.fromkeys(self._queues, 0)
        for call in self._calls.values():
            if call.state == WAITING:
                counts[call.queue.id] += 1
                heap = call.req.calls.get(call.channel, [])
                live = [e for e in heap if e[4] is call and e[3] == call.ver]
                if len(live) != 1:
                    raise InvariantViolation(f"waiting call {call.id} has {len(live)} live entries")
            elif call.state == OFFERED:
                if not call.agents:
                    raise InvariantViolation(f"call {call.id} offered to nobody")
                for ag in call.agents:
                    if ag.offer is not call or ag.state is not RESERVED:
                        raise InvariantViolation(f"call {call.id}: agent {ag.id} not reserved")
            elif call.state == CONNECTED:
                if call.agent is None or call.agent.load[call.channel] < 1:
                    raise InvariantViolation(f"call {call.id} connected to nobody")
            else:
                raise InvariantViolation(f"call {call.id} held in state {call.state}")
        for qid, n in counts.items():
            if self._queues[qid].waiting != n:
                raise InvariantViolation(f"queue {qid}: waiting {self._queues[qid].waiting} != {n}")
        for ag in self._agents.values():
            if (ag.state is RESERVED) != (ag.offer is not None):
                raise InvariantViolation(f"agent {ag.id}: state {ag.state} vs offer {ag.offer}")
            if ag.offer is not None and (
                ag.offer.state != OFFERED or ag not in ag.offer.agents
            ):
                raise InvariantViolation(f"agent {ag.id}: stuck reserved")
            if ag.total != sum(ag.load.values()) or any(
                ag.load[c] > ag.capacity[c] for c in ag.channels
            ):
                raise InvariantViolation(f"agent {ag.id}: load {ag.load} over capacity")
            if ag.state in (READY, WRAP_UP, PAUSED, LOGGED_OUT) and ag.total:
                raise InvariantViolation(f"agent {ag.id}: {ag.state} with work")
            if ag.state is ON_CALL and not ag.total:
                raise InvariantViolation(f"agent {ag.id}: on call without work")


def _compact(heap: _Heap) -> None:
    """Drop stale entries (version mismatch) and restore the heap property."""
    heap[:] = [e for e in heap if e[-2] == e[-1].ver]
    heapify(heap)
    heap.limit = max(MIN_COMPACT, 2 * len(heap))
