"""Brute-force reference: the matcher's policy written as plainly as possible, by scanning.

No heaps, no indexes, no versions: every decision scans all agents or all waiting calls and
evaluates each requirement expression directly. It exists to be obviously right, so that the
property tests and the benchmark can demand that `acd.matcher.Matcher` decides identically.
It shares only the data model, the requirement parser and the transition table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from acd import agent_state
from acd.agent_state import AgentState
from acd.errors import ConfigurationError, InvalidEvent, UnknownAgent, UnknownCall, UnknownQueue
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
from acd.requirement import Requirement

S = AgentState


@dataclass
class _RefAgent:
    spec: AgentSpec
    idx: int
    state: AgentState = S.LOGGED_OUT
    reason: str | None = None
    offer: str | None = None
    load: dict[str, int] = field(default_factory=dict)
    avail_since: float = 0.0
    occ: float = 0.0
    busy_time: float = 0.0
    busy_start: float = 0.0
    login_time: float = 0.0
    handled: int = 0
    last_offer: int = 0
    misses: int = 0
    wrap_epoch: int = 0

    @property
    def total(self) -> int:
        return sum(self.load.values())


@dataclass
class _RefCall:
    spec: CallSpec
    queue: QueueSpec
    reqs: tuple[Requirement, ...]
    seq: int
    enq: float
    priority: int
    step: int = 0
    state: str = "new"
    agents: list[str] = field(default_factory=list)
    agent: str | None = None
    timed: bool = False

    def key(self) -> tuple[int, float, int]:
        return (self.priority, self.enq - self.queue.weight, self.seq)


class ReferenceMatcher:
    """Same API and same decisions as `Matcher`, at O(agents + calls) per event."""

    def __init__(self, scheduler: Scheduler, *, max_misses: int = 2):
        self.scheduler = scheduler
        self.max_misses = max_misses
        self.queues: dict[str, tuple[QueueSpec, tuple[Requirement, ...]]] = {}
        self.agents: dict[str, _RefAgent] = {}
        self.calls: dict[str, _RefCall] = {}
        self.seq = 0
        self.offers = 0

    def add_queue(self, spec: QueueSpec) -> None:
        if spec.id in self.queues and any(c.queue.id == spec.id for c in self.calls.values()):
            raise ConfigurationError(f"queue {spec.id}: cannot be replaced while it has calls")
        self.queues[spec.id] = (spec, spec.cumulative())

    # ---------------------------------------------------------------- policy by scanning

    def _free_channels(self, ag: _RefAgent) -> list[str]:
        if ag.offer is not None or ag.state not in (S.READY, S.ON_CALL):
            return []
        if any(ag.load[c] > 0 for c in ag.load if c in EXCLUSIVE_CHANNELS):
            return []
        if ag.total == 0:
            return sorted(ag.load)
        return sorted(
            c for c in ag.load if c not in EXCLUSIVE_CHANNELS and ag.load[c] < ag.spec.capacity[c]
        )

    def _agent_key(self, ag: _RefAgent, queue: QueueSpec) -> tuple[float, ...]:
        strategy = queue.strategy
        if strategy in (Strategy.LONGEST_IDLE, Strategy.RING_ALL):
            return (ag.avail_since, ag.idx)
        if strategy is Strategy.LEAST_OCCUPIED:
            return (ag.occ, ag.avail_since, ag.idx)
        if strategy is Strategy.FEWEST_CALLS:
            return (ag.handled, ag.avail_since, ag.idx)
        if strategy is Strategy.ROUND_ROBIN:
            return (ag.last_offer, ag.idx)
        score = sum(ag.spec.skills.get(s, 0) for s in queue.proficiency_skills)
        return (-score, ag.avail_since, ag.idx)

    def _agent_free(self, ag: _RefAgent, now: float, out: list[Decision]) -> None:
        chans = self._free_channels(ag)
        if not chans:
            return
        waiting = [
            c
            for c in self.calls.values()
            if c.state == "waiting"
            and c.spec.channel in chans
            and c.reqs[c.step].matches(ag.spec.skills)
        ]
        if waiting:
            self._offer(min(waiting, key=_RefCall.key), ag, out)
            return
        # Idle: remember the least-occupied key as of now (the heap matcher snapshots it too).
        span = now - ag.login_time
        busy = ag.busy_time + (now - ag.busy_start if ag.total else 0.0)
        ag.occ = busy / span if span > 0 else 0.0

    def _offer(self, call: _RefCall, ag: _RefAgent, out: list[Decision]) -> None:
        ag.state = agent_state.check(ag.spec.id, "offer", ag.state, S.RESERVED)
        ag.offer = call.spec.id
        self.offers += 1
        ag.last_offer = self.offers
        call.state = "offered"
        call.agents.append(ag.spec.id)
        out.append(Offer(call.spec.id, ag.spec.id, call.queue.id, call.spec.channel))

    def _call_ready(self, call: _RefCall, now: float, out: list[Decision]) -> None:
        queue = call.queue
        arrival = call.state == "new"
        if call.state == "offered":
            if queue.max_wait and now >= call.enq + queue.max_wait:
                self._overflow(call, "max-wait", out)
                return
            if not call.timed:
                while call.step < len(queue.steps) and (
                    call.enq + queue.steps[call.step].after <= now
                ):
                    call.step += 1
        requirement = call.reqs[call.step]
        candidates = [
            a
            for a in self.agents.values()
            if call.spec.channel in self._free_channels(a) and requirement.matches(a.spec.skills)
        ]
        candidates.sort(key=lambda a: self._agent_key(a, queue))
        limit = queue.ring_all_limit if queue.strategy is Strategy.RING_ALL else 1
        if candidates:
            call.state = "new"
            for ag in candidates[:limit]:
                self._offer(call, ag, out)
            return
        if arrival and queue.max_length and self.waiting(queue.id) >= queue.max_length:
            self._overflow(call, "queue-full", out)
            return
        call.state = "waiting"
        if not call.timed:
            call.timed = True
            for i in range(call.step, len(queue.steps)):
                self.scheduler.schedule(
                    call.enq + queue.steps[i].after, ("relax", call.spec.id, i + 1)
                )
            if queue.max_wait:
                self.scheduler.schedule(call.enq + queue.max_wait, ("max-wait", call.spec.id, 0))

    def _stop_timers(self, call: _RefCall) -> None:
        if call.timed:
            call.timed = False
            for i in range(call.step, len(call.queue.steps)):
                self.scheduler.cancel(("relax", call.spec.id, i + 1))
            if call.queue.max_wait:
                self.scheduler.cancel(("max-wait", call.spec.id, 0))

    def _overflow(self, call: _RefCall, reason: str, out: list[Decision]) -> None:
        self._stop_timers(call)
        del self.calls[call.spec.id]
        out.append(Overflowed(call.spec.id, call.queue.id, call.queue.overflow, reason))

    def _release(self, ag: _RefAgent, event: str, now: float, out: list[Decision]) -> None:
        ag.offer = None
        target = S.ON_CALL if ag.total else S.READY
        ag.state = agent_state.check(ag.spec.id, event, ag.state, target)
        self._agent_free(ag, now, out)

    def _get_agent(self, agent_id: str) -> _RefAgent:
        if agent_id not in self.agents:
            raise UnknownAgent(agent_id)
        return self.agents[agent_id]

    def _get_call(self, call_id: str) -> _RefCall:
        if call_id not in self.calls:
            raise UnknownCall(call_id)
        return self.calls[call_id]

    # ---------------------------------------------------------------- events

    def login(self, spec: AgentSpec, now: float, *, paused: str | None = None) -> list[Decision]:
        target = S.PAUSED if paused is not None else S.READY
        ag = self.agents.get(spec.id)
        if ag is None:
            ag = _RefAgent(spec, len(self.agents))
            self.agents[spec.id] = ag
        ag.state = agent_state.check(spec.id, "login", ag.state, target)
        ag.spec = spec
        ag.load = dict.fromkeys(spec.capacity, 0)
        ag.reason = paused
        ag.login_time = now
        ag.avail_since = now
        ag.busy_time = 0.0
        ag.handled = 0
        ag.misses = 0
        out: list[Decision] = []
        if target is S.READY:
            self._agent_free(ag, now, out)
        return out

    def logout(self, agent_id: str, now: float) -> list[Decision]:
        ag = self._get_agent(agent_id)
        was = ag.state
        ag.state = agent_state.check(agent_id, "logout", ag.state, S.LOGGED_OUT)
        if was is S.WRAP_UP:
            self.scheduler.cancel(("wrapup", agent_id, ag.wrap_epoch))
        ag.reason = None
        return []

    def pause(self, agent_id: str, reason: str, now: float) -> list[Decision]:
        if not reason:
            raise InvalidEvent("a pause needs a reason code")
        ag = self._get_agent(agent_id)
        was = ag.state
        ag.state = agent_state.check(agent_id, "pause", ag.state, S.PAUSED)
        if was is S.WRAP_UP:
            self.scheduler.cancel(("wrapup", agent_id, ag.wrap_epoch))
            ag.busy_time += now - ag.busy_start
        ag.reason = reason
        return []

    def resume(self, agent_id: str, now: float) -> list[Decision]:
        ag = self._get_agent(agent_id)
        ag.state = agent_state.check(agent_id, "resume", ag.state, S.READY)
        ag.reason = None
        ag.misses = 0
        ag.avail_since = now
        out: list[Decision] = []
        self._agent_free(ag, now, out)
        return out

    def call_arrived(self, spec: CallSpec, now: float) -> list[Decision]:
        if spec.queue not in self.queues:
            raise UnknownQueue(spec.queue)
        if spec.id in self.calls:
            raise InvalidEvent(f"call {spec.id} is already in the ACD")
        self.seq += 1
        queue, reqs = self.queues[spec.queue]
        call = _RefCall(spec, queue, reqs, self.seq, now, spec.priority)
        self.calls[spec.id] = call
        out: list[Decision] = []
        self._call_ready(call, now, out)
        return out

    def _ringing(self, call_id: str, agent_id: str) -> tuple[_RefCall, _RefAgent]:
        call = self._get_call(call_id)
        ag = self._get_agent(agent_id)
        if call.state != "offered" or agent_id not in call.agents or ag.offer != call_id:
            raise InvalidEvent(f"call {call_id} is not ringing agent {agent_id}")
        return call, ag

    def answered(self, call_id: str, agent_id: str, now: float) -> list[Decision]:
        call, ag = self._ringing(call_id, agent_id)
        out: list[Decision] = []
        others = [a for a in call.agents if a != agent_id]
        call.agents = []
        call.agent = agent_id
        call.state = "connected"
        self._stop_timers(call)
        ag.offer = None
        ag.state = agent_state.check(agent_id, "answer", ag.state, S.ON_CALL)
        if ag.total == 0:
            ag.busy_start = now
        ag.load[call.spec.channel] += 1
        ag.handled += 1
        ag.misses = 0
        if call.spec.channel not in EXCLUSIVE_CHANNELS:
            ag.avail_since = now
            self._agent_free(ag, now, out)
        for other in others:
            out.append(Withdraw(call_id, other, "answered-elsewhere"))
        for other in others:
            self._release(self.agents[other], "withdraw", now, out)
        return out

    def no_answer(self, call_id: str, agent_id: str, now: float) -> list[Decision]:
        call, ag = self._ringing(call_id, agent_id)
        out: list[Decision] = []
        call.agents.remove(agent_id)
        ag.misses += 1
        if not call.agents:
            self._call_ready(call, now, out)  # the agent is still reserved: not a candidate
        ag.offer = None
        if ag.misses >= self.max_misses and ag.total == 0:
            ag.state = agent_state.check(agent_id, "no-answer", ag.state, S.PAUSED)
            ag.reason = "no-answer"
        else:
            target = S.ON_CALL if ag.total else S.READY
            ag.state = agent_state.check(agent_id, "no-answer", ag.state, target)
            self._agent_free(ag, now, out)
        return out

    def hung_up(self, call_id: str, now: float) -> list[Decision]:
        call = self._get_call(call_id)
        if call.state == "connected":
            return self.call_ended(call_id, now)
        out: list[Decision] = []
        self._stop_timers(call)
        del self.calls[call_id]
        if call.state == "offered":
            for a in call.agents:
                out.append(Withdraw(call_id, a, "caller-hung-up"))
            for a in call.agents:
                self._release(self.agents[a], "withdraw", now, out)
        return out

    def call_ended(self, call_id: str, now: float) -> list[Decision]:
        call = self._get_call(call_id)
        if call.state != "connected" or call.agent is None:
            raise InvalidEvent(f"call {call_id} is not connected")
        del self.calls[call_id]
        ag = self.agents[call.agent]
        ag.load[call.spec.channel] -= 1
        out: list[Decision] = []
        if ag.state is S.RESERVED:
            agent_state.check(ag.spec.id, "end", ag.state, S.RESERVED)
            if ag.total == 0:
                ag.busy_time += now - ag.busy_start
            return out
        if ag.total:
            ag.state = agent_state.check(ag.spec.id, "end", ag.state, S.ON_CALL)
            ag.avail_since = now
            self._agent_free(ag, now, out)
            return out
        if call.queue.wrapup > 0:
            ag.state = agent_state.check(ag.spec.id, "end", ag.state, S.WRAP_UP)
            ag.wrap_epoch += 1
            self.scheduler.schedule(now + call.queue.wrapup, ("wrapup", ag.spec.id, ag.wrap_epoch))
            return out
        ag.state = agent_state.check(ag.spec.id, "end", ag.state, S.READY)
        ag.busy_time += now - ag.busy_start
        ag.avail_since = now
        self._agent_free(ag, now, out)
        return out

    def set_priority(self, call_id: str, priority: int, now: float) -> list[Decision]:
        check_priority(priority)
        self._get_call(call_id).priority = priority
        return []

    def timer_fired(self, key: TimerKey, now: float) -> list[Decision]:
        kind, ident, number = key
        out: list[Decision] = []
        if kind == "relax":
            call = self.calls.get(ident)
            if call is None or call.step >= number or call.state == "connected":
                return out
            call.step = number
            if call.state == "waiting":
                self._call_ready(call, now, out)
        elif kind == "max-wait":
            call = self.calls.get(ident)
            if call is not None and call.state == "waiting":
                self._overflow(call, "max-wait", out)
        elif kind == "wrapup":
            ag = self.agents.get(ident)
            if ag is not None and ag.state is S.WRAP_UP and ag.wrap_epoch == number:
                ag.state = agent_state.check(ident, "wrapup-done", ag.state, S.READY)
                ag.busy_time += now - ag.busy_start
                ag.avail_since = now
                self._agent_free(ag, now, out)
        else:
            raise InvalidEvent(f"unknown timer {key!r}")
        return out

    def settle(self) -> None:
        """Nothing to bring up to date: the reference scans everything every time."""
        return None

    # ---------------------------------------------------------------- queries

    def agent_state(self, agent_id: str) -> AgentState:
        return self._get_agent(agent_id).state

    def pause_reason(self, agent_id: str) -> str | None:
        return self._get_agent(agent_id).reason

    def call_state(self, call_id: str) -> str | None:
        call = self.calls.get(call_id)
        return None if call is None else call.state

    def waiting(self, queue_id: str) -> int:
        return sum(
            1 for c in self.calls.values() if c.state == "waiting" and c.queue.id == queue_id
        )

    def waiting_calls(self, queue_id: str) -> list[str]:
        calls = [c for c in self.calls.values() if c.state == "waiting" and c.queue.id == queue_id]
        return [c.spec.id for c in sorted(calls, key=_RefCall.key)]

    def idle_eligible_pairs(self) -> list[tuple[str, str]]:
        """(waiting call, free eligible agent) pairs: must always be empty between events."""
        pairs = []
        for call in self.calls.values():
            if call.state != "waiting":
                continue
            for ag in self.agents.values():
                if call.spec.channel in self._free_channels(ag) and call.reqs[call.step].matches(
                    ag.spec.skills
                ):
                    pairs.append((call.spec.id, ag.spec.id))
        return pairs
