"""Benchmark: one seeded trace, replayed through the heap matcher and the brute-force reference.

The centre is shaped like a real one: 50 skills with skewed popularity, each agent holding 3-8
of them at levels 1-10, a quarter of the agents also taking chats (capacity 3); 200 queues
requiring 1-3 skills at minimum levels, with relaxation steps, weights, VIP priorities, wrap-up,
max wait, five selection strategies and a few ring-all queues; calls arrive with skewed queue
popularity at about the centre's capacity, so that queues form and agents also wait (both
directions of the decision happen). The trace mixes arrivals, answers, ring-no-answers,
abandonment (waiting and while ringing), ends, wrap-up and relaxation timers, pauses, logouts
and logins, and priority changes.

The trace is recorded by driving a heap matcher with a virtual clock (the driver reacts to its
offers); every matcher call is recorded with its arguments and decisions. The first 45 virtual
seconds are warm-up: the roster logs in and a burst of calls (ending like calls already in
progress) fills the centre, then the steady Poisson stream starts. The recorded trace is
then replayed through a fresh heap matcher several times, timing each call alone
(`replay_timed`), and each replay must decide as the recording did; a prefix of it is replayed
through the reference (it scans every agent per decision), which must decide identically too.

A "decision" is one event handled by the matcher: each returns the list of decisions it took
(often empty, e.g. a call that has to wait). Offers are counted separately.
"""

from __future__ import annotations

import gc
import heapq
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from acd.agent_state import AgentState
from acd.hugepages import Collapse, collapse_heap, thp_mode
from acd.matcher import Matcher
from acd.model import (
    PRIORITY_STANDARD,
    PRIORITY_VIP,
    AgentSpec,
    CallSpec,
    Offer,
    Overflowed,
    QueueSpec,
    Step,
    Strategy,
    TimerKey,
    Withdraw,
)
from acd.reference import ReferenceMatcher
from acd.requirement import parse

N_SKILLS = 50
N_QUEUES = 200
SKILL_SKEW = 0.7  # Zipf exponent of skill popularity (agents' skills and queues' requirements)
QUEUE_SKEW = 1.1  # Zipf exponent of call popularity over queues (busiest first)
LOAD = 0.97  # offered work / agent capacity
MEAN_HANDLE = 180.0
CHAT_HANDLE = 300.0
RING_MIN, RING_MAX = 1.0, 6.0
RING_TIMEOUT = 15.0
P_NO_ANSWER = 0.03
P_CHAT = 0.08
P_VIP = 0.08
P_PROMOTE = 0.01
P_PAUSE = 0.02
MEAN_PATIENCE = 120.0
MEAN_PAUSE = 120.0
LOGOUT_RATE_PER_AGENT = 1 / 7200.0  # each agent leaves about once every two hours


@dataclass
class Trace:
    """What the heap matcher was asked and what it answered."""

    agents: int
    queues: list[QueueSpec]
    events: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    decisions: list[list[Any]] = field(default_factory=list)
    latency_ns: list[int] = field(default_factory=list)  # timed inside the driver (context)
    setup_events: int = 0  # the agents' initial logins
    warm_events: int = 0  # setup + filling the centre; not measured
    offers: int = 0
    end_state: dict[str, Any] = field(default_factory=dict)


def build_queues(rng: np.random.Generator) -> list[QueueSpec]:
    """200 queues: 1-3 skills at minimum levels, relaxed as in the issue's example.

    Base `a >= L1 and b >= L2`; after 30 s `a and b` (any level); after 60 s `b` alone (the
    product skill). Strategies: mostly longest-idle, some of every other kind.
    """
    skill_p = _zipf(N_SKILLS, SKILL_SKEW)
    strategies = [
        Strategy.LONGEST_IDLE,
        Strategy.LEAST_OCCUPIED,
        Strategy.FEWEST_CALLS,
        Strategy.ROUND_ROBIN,
        Strategy.HIGHEST_PROFICIENCY,
        Strategy.RING_ALL,
    ]
    strategy_p = [0.80, 0.05, 0.05, 0.04, 0.04, 0.02]
    queues = []
    for i in range(N_QUEUES):
        k = int(rng.integers(1, 4))
        skills = [f"s{s}" for s in rng.choice(N_SKILLS, size=k, replace=False, p=skill_p)]
        levels = rng.integers(1, 8, size=k)
        base = " and ".join(f"{s} >= {lv}" for s, lv in zip(skills, levels, strict=True))
        steps: list[Step] = []
        r = rng.random()
        if r < 0.7 and any(lv > 1 for lv in levels):
            steps.append(Step(30.0, parse(" and ".join(skills))))
        if r < 0.4 and k > 1:
            steps.append(Step(60.0, parse(skills[-1])))
        strategy = strategies[int(rng.choice(len(strategies), p=strategy_p))]
        queues.append(
            QueueSpec(
                id=f"q{i}",
                requirement=parse(base),
                strategy=strategy,
                steps=tuple(steps),
                weight=float(rng.choice([0.0, 0.0, 0.0, 0.0, 10.0])),
                wrapup=float(rng.choice([0.0, 5.0, 10.0, 15.0, 20.0])),
                max_wait=float(rng.choice([0.0, 0.0, 0.0, 0.0, 300.0])),
                overflow="voicemail",
                ring_all_limit=3,
            )
        )
    return queues


def build_agents(n: int, rng: np.random.Generator) -> list[AgentSpec]:
    """n agents with 3-8 skills each (by popularity, without replacement), levels 1-10."""
    log_p = np.log(_zipf(N_SKILLS, SKILL_SKEW))
    # Gumbel top-k: sorting log p + Gumbel noise samples k skills without replacement by p.
    keys = log_p[None, :] + rng.gumbel(size=(n, N_SKILLS))
    order = np.argsort(-keys, axis=1)
    counts = rng.integers(3, 9, size=n)
    levels = rng.integers(1, 11, size=(n, 8))
    chat = rng.random(n) < 0.25
    names = [f"s{s}" for s in range(N_SKILLS)]
    # Python lists, not numpy scalars, in the loop: the 100,000-agent roster in a fraction
    # of the time (the same values).
    rows = zip(counts.tolist(), order[:, :8].tolist(), levels.tolist(), chat.tolist(), strict=True)
    agents = []
    for i, (k, skill_row, level_row, takes_chat) in enumerate(rows):
        skills = {names[s]: lv for s, lv in zip(skill_row[:k], level_row[:k], strict=True)}
        capacity = {"voice": 1, "chat": 3} if takes_chat else {"voice": 1}
        agents.append(AgentSpec(f"a{i}", skills, capacity))
    return agents


def _zipf(n: int, s: float) -> np.ndarray:
    w: np.ndarray = 1.0 / np.arange(1, n + 1) ** s
    out: np.ndarray = w / w.sum()
    return out


class _Clock:
    """Virtual-clock scheduler feeding timer events into the driver's event heap.

    Inside a matcher call a request is only noted (one list append, as cheap as a host's
    timer wheel can be); the driver files the requests, in order, into the event heap after
    the call returns, outside the timed region: the heap is the driver's clock, not the
    matcher's work. The clock owns that heap (the driver pushes its own events here too), so
    that the matcher, the clock and the driver hold no cycle and a finished recording is freed
    without the cyclic collector.
    """

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.pending: dict[TimerKey, float] = {}
        self.requests: list[tuple[TimerKey, float | None]] = []

    def push(self, at: float, kind: str, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, payload))

    def schedule(self, at: float, key: TimerKey) -> None:
        self.requests.append((key, at))

    def cancel(self, key: TimerKey) -> None:
        self.requests.append((key, None))

    def file(self) -> None:
        """Apply the requests noted during the last matcher call."""
        pending = self.pending
        for key, at in self.requests:
            if at is None:
                pending.pop(key, None)
            else:
                pending[key] = at
                self.push(at, "timer", key)
        self.requests.clear()


class _Driver:
    """Drives the heap matcher like a contact centre would, recording every call it makes."""

    def __init__(self, n_agents: int, seed: int):
        self.rng = np.random.default_rng(seed)
        self.queues = build_queues(np.random.default_rng(seed + 1))
        self.agents = build_agents(n_agents, np.random.default_rng(seed + 2))
        self.clock = _Clock()
        self.m = Matcher(self.clock, max_misses=2)
        for q in self.queues:
            self.m.add_queue(q)
        self.trace = Trace(n_agents, self.queues)
        self.now = 0.0
        self.ringing: dict[str, set[str]] = {}
        self.connected: set[str] = set()
        self.live: set[str] = set()
        self.warm_calls: set[str] = set()
        self.calls = 0
        # A centre staffs to its demand: the busiest queues are the ones most agents can take.
        eligible = [
            sum(1 for a in self.agents[:2000] if q.requirement.matches(a.skills))
            for q in self.queues
        ]
        order = sorted(range(N_QUEUES), key=lambda i: -eligible[i])
        qp = np.zeros(N_QUEUES)
        qp[order] = _zipf(N_QUEUES, QUEUE_SKEW)
        self.queue_pick = self.rng.choice(N_QUEUES, size=4_000_000, p=qp)
        self.uniform = self.rng.random(size=4_000_000)
        self.u_i = 0
        self.normal = self.rng.standard_normal(size=2_000_000)
        self.n_i = 0
        self.channel_of: dict[str, str] = {}
        cycle = (RING_MIN + RING_MAX) / 2 + MEAN_HANDLE + 10.0
        self.rate = LOAD * n_agents / cycle  # offered load ~ capacity: near saturation
        self.by_id = {a.id: a for a in self.agents}

    def u(self) -> float:
        self.u_i += 1
        return float(self.uniform[self.u_i])

    def exp(self, mean: float) -> float:
        return -mean * math.log(1.0 - self.u())

    def lognormal(self, mean: float) -> float:
        sigma = 0.8
        self.n_i += 1
        return mean * math.exp(sigma * float(self.normal[self.n_i]) - sigma * sigma / 2)

    def residual(self, mean: float) -> float:
        """What is left of a lognormal handle time in progress at a random moment (the
        equilibrium residual: a uniform share of a length-biased draw, which for a lognormal is
        the lognormal with mu + sigma^2)."""
        sigma = 0.8
        self.n_i += 1
        return self.u() * mean * math.exp(sigma * float(self.normal[self.n_i]) + sigma * sigma / 2)

    def push(self, at: float, kind: str, payload: Any) -> None:
        self.clock.push(at, kind, payload)

    def call(self, method: str, *args: Any) -> list[Any]:
        fn = getattr(self.m, method)
        t0 = time.perf_counter_ns()
        out: list[Any] = fn(*args)
        t1 = time.perf_counter_ns()
        if self.clock.requests:
            self.clock.file()
        tr = self.trace
        tr.events.append((method, args))
        tr.decisions.append(out)
        tr.latency_ns.append(t1 - t0)
        for d in out:
            if isinstance(d, Offer):
                tr.offers += 1
                self.ringing.setdefault(d.call, set()).add(d.agent)
                if self.u() < P_NO_ANSWER:
                    self.push(self.now + RING_TIMEOUT, "no_answer", (d.call, d.agent))
                else:
                    delay = RING_MIN + (RING_MAX - RING_MIN) * self.u()
                    self.push(self.now + delay, "answer", (d.call, d.agent))
            elif isinstance(d, Withdraw):
                self.ringing.get(d.call, set()).discard(d.agent)
            elif isinstance(d, Overflowed):
                self.live.discard(d.call)
                self.ringing.pop(d.call, None)
        return out

    def end_state(self) -> dict[str, Any]:
        """Waiting calls and agent states when the recording stopped."""
        m = self.m
        states: dict[str, int] = {}
        for aid in m.agent_ids():
            st = m.agent_state(aid).value
            states[st] = states.get(st, 0) + 1
        reqs = [len(m.eligible_requirements(a.id)) for a in self.agents]
        return {
            "waiting_calls": sum(m.waiting(q.id) for q in self.queues),
            "agents": states,
            "requirements_per_agent_mean": round(sum(reqs) / max(len(reqs), 1), 1),
        }

    def run(self, steady_events: int, warm_arrivals: int) -> Trace:
        """Generate and time the trace. The cyclic garbage collector is off meanwhile: the
        matcher leaves no cyclic garbage (test_bench_cli.py proves it on a trace), so an ACD
        process loses nothing by running without it, and its pauses (driven here mostly by
        the bench's own recording) would otherwise be charged to whichever event they hit."""
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run(steady_events, warm_arrivals)
        finally:
            if was_enabled:
                gc.enable()

    def _run(self, steady_events: int, warm_arrivals: int) -> Trace:
        for spec in self.agents:
            self.call("login", spec, 0.0)
        self.m.settle()  # roster loaded in bulk: index it now, not on the first calls
        self.trace.setup_events = len(self.trace.events)
        # Fill the centre quickly: a burst of arrivals over the first 30 s, then the steady
        # Poisson stream (from 30 s: both at once would offer 110% of the centre's capacity
        # and leave a backlog that the 100,000-agent window, about 50 virtual seconds, would
        # spend draining); measurement starts at 45 s, with the centre full.
        for _ in range(warm_arrivals):
            self.push(30.0 * self.u(), "arrival", None)
        self.push(30.0 + self.exp(1.0 / self.rate), "arrival", "poisson")
        self.push(self.exp(1.0 / (LOGOUT_RATE_PER_AGENT * len(self.agents))), "churn", None)
        warm_until = 45.0
        target = None
        heap = self.clock.heap
        while heap:
            at, _seq, kind, payload = heapq.heappop(heap)
            self.now = at
            if target is None and at >= warm_until:
                self.trace.warm_events = len(self.trace.events)
                target = self.trace.warm_events + steady_events
            if target is not None and len(self.trace.events) >= target:
                break
            self.handle(kind, payload)
        return self.trace

    def handle(self, kind: str, payload: Any) -> None:
        now = self.now
        if kind == "arrival":
            if payload == "poisson":
                self.push(now + self.exp(1.0 / self.rate), "arrival", "poisson")
            self.calls += 1
            cid = f"c{self.calls}"
            q = self.queues[int(self.queue_pick[self.calls % len(self.queue_pick)])]
            channel = "chat" if self.u() < P_CHAT else "voice"
            prio = PRIORITY_VIP if self.u() < P_VIP else PRIORITY_STANDARD
            self.live.add(cid)
            if payload is None:
                self.warm_calls.add(cid)
            self.channel_of[cid] = channel
            self.call("call_arrived", CallSpec(cid, q.id, channel, prio), now)
            if cid in self.live:
                self.push(now + self.exp(MEAN_PATIENCE), "abandon", cid)
                if prio != PRIORITY_VIP and self.u() < P_PROMOTE:
                    self.push(now + 20.0, "promote", cid)
        elif kind == "answer" or kind == "no_answer":
            cid, aid = payload
            if aid in self.ringing.get(cid, ()):
                self.ringing[cid].discard(aid)
                if kind == "answer":
                    self.ringing.pop(cid, None)
                    self.connected.add(cid)
                    self.call("answered", cid, aid, now)
                    channel = self.channel_of.pop(cid, "voice")
                    mean = CHAT_HANDLE if channel == "chat" else MEAN_HANDLE
                    if cid in self.warm_calls:
                        # The burst that fills the centre stands for calls already in
                        # progress: they end at the steady rate, not all ~3 minutes later.
                        self.warm_calls.discard(cid)
                        handle = self.residual(mean)
                    else:
                        handle = self.lognormal(mean)
                    self.push(now + handle, "end", (cid, aid))
                else:
                    if not self.ringing[cid]:
                        del self.ringing[cid]
                    self.call("no_answer", cid, aid, now)
        elif kind == "end":
            cid, aid = payload
            if cid in self.connected:
                self.connected.discard(cid)
                self.live.discard(cid)
                self.call("call_ended", cid, now)
                if self.u() < P_PAUSE and self.m.agent_state(aid) in (
                    AgentState.READY,
                    AgentState.WRAP_UP,
                ):
                    self.call("pause", aid, "break", now)
                    self.push(now + self.exp(MEAN_PAUSE), "resume", aid)
        elif kind == "abandon" or kind == "promote":
            cid = payload
            if cid in self.live and cid not in self.connected:
                if kind == "abandon":
                    self.live.discard(cid)
                    self.ringing.pop(cid, None)
                    self.call("hung_up", cid, now)
                else:
                    self.call("set_priority", cid, PRIORITY_VIP, now)
        elif kind == "resume":
            if self.m.agent_state(payload) is AgentState.PAUSED:
                self.call("resume", payload, now)
        elif kind == "timer":
            if self.clock.pending.get(payload) == now:
                del self.clock.pending[payload]
                self.call("timer_fired", payload, now)
        elif kind == "churn":
            spec = self.agents[int(self.u() * len(self.agents))]
            if self.m.agent_state(spec.id) in (AgentState.READY, AgentState.PAUSED):
                self.call("logout", spec.id, now)
                self.push(now + self.exp(300.0), "login", spec.id)
            self.push(
                now + self.exp(1.0 / (LOGOUT_RATE_PER_AGENT * len(self.agents))), "churn", None
            )
        elif kind == "login":
            self.call("login", self.by_id[payload], now)


class _NoTimers:
    """The reference replays recorded timer firings; its own requests are not needed."""

    def schedule(self, at: float, key: TimerKey) -> None:
        return None

    def cancel(self, key: TimerKey) -> None:
        return None


class _Requests:
    """The timed replay's scheduler: a request is one list append (as cheap as a host's timer
    wheel can be); the recorded trace already holds the timer firings."""

    def __init__(self) -> None:
        self.requests: list[tuple[TimerKey, float | None]] = []

    def schedule(self, at: float, key: TimerKey) -> None:
        self.requests.append((key, at))

    def cancel(self, key: TimerKey) -> None:
        self.requests.append((key, None))


@dataclass
class Replay:
    """One timed replay of a recorded trace through a fresh heap matcher."""

    latency_ns: np.ndarray  # one per event after the setup (warm-up and measured events)
    loop_ns: int  # wall time of the measured events' loop, timing overhead included
    identical: bool  # the same decisions as when the trace was recorded
    mismatch: str | None = None
    huge_pages: Collapse | None = None  # what was collapsed after the setup (None: not asked)


def replay_timed(trace: Trace, *, huge_pages: bool = False) -> Replay:
    """Replay the trace through a fresh `Matcher`, timing each call after the setup.

    The setup (the roster's logins, then `settle()`, as the driver did) is not timed. After it,
    as the ACD service does once its agents are in, the process's heap is collapsed into
    huge pages (acd/hugepages.py) if `huge_pages` (as `run`, the bench, does). Bound
    methods and arguments are looked up before the loop, so the timed region is exactly
    `fn(*args)` between two `perf_counter_ns()` reads; nothing else runs between two calls but
    storing the sample and the decision list.
    """
    m = Matcher(_Requests(), max_misses=2)
    for q in trace.queues:
        m.add_queue(q)
    events, decisions = trace.events, trace.decisions
    setup = trace.setup_events
    for i in range(setup):
        method, args = events[i]
        if getattr(m, method)(*args) != decisions[i]:
            return Replay(np.zeros(0, np.int64), 0, False, f"setup event {i} {method}")
    m.settle()
    collapsed = collapse_heap() if huge_pages else None
    fns = [getattr(m, method) for method, _ in events[setup:]]
    argss = [args for _, args in events[setup:]]
    k = len(fns)
    lat = [0] * k
    outs: list[Any] = [None] * k
    pc = time.perf_counter_ns
    warm = trace.warm_events - setup
    i = 0
    loop_start = 0
    for fn, args in zip(fns, argss, strict=True):
        if i == warm:
            loop_start = pc()
        t0 = pc()
        out = fn(*args)
        t1 = pc()
        lat[i] = t1 - t0
        outs[i] = out
        i += 1
    loop_ns = pc() - loop_start
    mismatch = None
    if outs != decisions[setup:]:
        j = next(j for j in range(k) if outs[j] != decisions[setup + j])
        mismatch = f"event {setup + j} {events[setup + j][0]}: replay {outs[j]} recorded"
        mismatch += f" {decisions[setup + j]}"
    return Replay(np.array(lat, dtype=np.int64), loop_ns, mismatch is None, mismatch, collapsed)


def replay_reference(trace: Trace, events: int) -> tuple[bool, int, float, str | None]:
    """Replay the first `events` non-setup events (after the setup) through the reference.

    Returns (identical, events compared, mean ns per event after setup, first mismatch).
    """
    ref = ReferenceMatcher(_NoTimers(), max_misses=2)
    for q in trace.queues:
        ref.add_queue(q)
    end = min(len(trace.events), trace.setup_events + events)
    for i in range(trace.setup_events):
        method, args = trace.events[i]
        if getattr(ref, method)(*args) != trace.decisions[i]:
            return False, i, 0.0, f"event {i} {method}{args[:1]}"
    ref.settle()
    total = 0
    for i in range(trace.setup_events, end):
        method, args = trace.events[i]
        fn = getattr(ref, method)
        t0 = time.perf_counter_ns()
        out = fn(*args)
        total += time.perf_counter_ns() - t0
        if out != trace.decisions[i]:
            return False, i, 0.0, f"event {i} {method}: heap {trace.decisions[i]} ref {out}"
    n = end - trace.setup_events
    return True, n, total / max(n, 1), None


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else 0.0


def _us(ns: float) -> float:
    return round(ns / 1e3, 2)


def host_loop_ns(rounds: int = 5, n: int = 100_000) -> float:
    """How fast this host runs plain CPython work, in the same run as the figures it explains:
    ns per iteration of a fixed loop (a dict lookup, a tuple compare, a heap push and pop on a
    64-entry heap, the matcher's staple operations), the best of `rounds`. The bench's absolute
    figures move with the host (the same code measured 2.6 times slower on one machine of this
    kind than on another, a day apart); this is how two runs' hosts compare."""
    heap = [((i * 37) % 64, i) for i in range(64)]
    heapq.heapify(heap)
    table = {i: (i % 64, i) for i in range(1024)}
    push, pop = heapq.heappush, heapq.heappop
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for i in range(n):
            item = table[i & 1023]
            if item < heap[0]:
                item = heap[0]
            push(heap, item)
            pop(heap)
        best = min(best, time.perf_counter_ns() - t0)
    return round(best / n, 1)


def generate(n_agents: int, steady: int, seed: int) -> Trace:
    """Record one size's trace (the driver plays the centre against a heap matcher)."""
    driver = _Driver(n_agents, seed)
    trace = driver.run(steady, warm_arrivals=int(n_agents * 0.95))
    trace.end_state = driver.end_state()
    return trace


def _collect() -> None:
    """Collect between replays, outside any timed region. A finished replay's matcher holds no
    cycle and is already freed by reference counting (test_bench_cli.py), so this finds nothing
    and, with the recorded traces frozen out of the collector's way, costs next to nothing; it
    stays as a guard, so that a cycle brought in later costs time here and not inside the
    next replay's timed loop."""
    gc.collect()


class _NoGc:
    """The cyclic collector off (and the traces frozen) while a bench runs: neither matcher
    leaves cyclic garbage per event, and collections traversing the recorded traces (millions
    of objects at 100,000 agents) would land on random events. Once recorded, the traces are
    frozen with no collection first: the recording driver and its matcher hold no cycle and
    are already freed by reference counting (test_bench_cli.py), so a collection would only
    walk the traces, seconds of work at 100,000 agents."""

    def __enter__(self) -> None:
        self.was = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        gc.unfreeze()
        if self.was:
            gc.enable()


def summarise(
    trace: Trace, replays: list[Replay], ref: tuple[bool, int, float, str | None]
) -> dict[str, Any]:
    """One size's figures: per-event medians over the replays, then mean and percentiles over
    the measured (steady) events."""
    setup, warm = trace.setup_events, trace.warm_events
    per_event = np.median(np.stack([r.latency_ns for r in replays]), axis=0)
    lat = per_event[warm - setup :]
    seconds = float(lat.sum()) / 1e9
    n = len(lat)
    steady_offers = sum(1 for out in trace.decisions[warm:] for d in out if isinstance(d, Offer))
    methods: dict[str, int] = {}
    waited = 0
    for (method, _), out in zip(trace.events[warm:], trace.decisions[warm:], strict=True):
        methods[method] = methods.get(method, 0) + 1
        if method == "call_arrived" and not out:
            waited += 1
    identical, compared, ref_ns, mismatch = ref
    heap_prefix_ns = float(per_event[:compared].mean()) if compared else 0.0
    replay_identical = all(r.identical for r in replays)
    in_driver = np.array(trace.latency_ns[warm:], dtype=np.int64)
    loop_s = float(np.median([r.loop_ns for r in replays])) / 1e9
    return {
        "agents": trace.agents,
        "events_measured": n,
        "replays": len(replays),
        "decisions_per_s": round(n / seconds) if seconds else 0,
        "decisions_per_s_loop": round(n / loop_s) if loop_s else 0,
        "offers_per_s": round(steady_offers / seconds) if seconds else 0,
        "mean_us": _us(float(lat.mean())),
        "p50_us": _us(_percentile(lat, 50)),
        "p99_us": _us(_percentile(lat, 99)),
        "p999_us": _us(_percentile(lat, 99.9)),
        "max_us": _us(float(lat.max())),
        "each_replay": [
            {
                "mean_us": _us(float(r.latency_ns[warm - setup :].mean())),
                "p99_us": _us(_percentile(r.latency_ns[warm - setup :], 99)),
            }
            for r in replays
        ],
        "in_driver": {
            "mean_us": _us(float(in_driver.mean())),
            "p99_us": _us(_percentile(in_driver, 99)),
        },
        "event_mix": methods,
        "arrivals_waiting_share": round(waited / max(methods.get("call_arrived", 0), 1), 3),
        "offers": steady_offers,
        "end_state": trace.end_state,
        "replay_identical": replay_identical,
        "replay_mismatch": next((r.mismatch for r in replays if r.mismatch), None),
        "reference": {
            "identical": identical,
            "events_compared": compared,
            "first_mismatch": mismatch,
            "ref_mean_us": round(ref_ns / 1e3, 1),
            "heap_mean_us_same_events": _us(heap_prefix_ns),
            "speedup": round(ref_ns / heap_prefix_ns, 1) if heap_prefix_ns else None,
        },
    }


def measure(
    n_agents: int,
    steady: int,
    ref_events: int,
    seed: int,
    repeats: int = 3,
    *,
    huge_pages: bool = False,
) -> dict[str, Any]:
    """Generate, time (`repeats` replays) and check one size."""
    with _NoGc():
        trace = generate(n_agents, steady, seed)
        gc.freeze()  # the traces: see _NoGc
        replays = []
        for _ in range(repeats):
            replays.append(replay_timed(trace, huge_pages=huge_pages))
            _collect()
        ref = replay_reference(trace, ref_events)
        return summarise(trace, replays, ref)


SIZES = (1_000, 10_000, 100_000)
REPEATS = 3


def run(
    *,
    quick: bool = False,
    seed: int = 20261125,
    repeats: int | None = None,
    huge_pages: bool = True,
) -> dict[str, Any]:
    """Every size: record the trace, then `repeats` rounds of timed replays (each round
    replays every size, so slow spells of a shared machine hit all sizes alike), then the
    reference. `quick` (a smoke run): shorter traces and, unless told, one round.
    `huge_pages` False: the heap stays on the kernel's small pages (the baseline)."""
    if repeats is None:
        repeats = 1 if quick else REPEATS
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    started = time.perf_counter()
    host_before = host_loop_ns()
    steady = 20_000 if quick else 100_000
    ref_events = {1_000: 2_000, 10_000: 100, 100_000: 5}
    if quick:
        ref_events = {1_000: 1_000, 10_000: 60, 100_000: 6}
    seconds: dict[int, dict[str, float]] = {n: {} for n in SIZES}
    with _NoGc():
        traces = {}
        for n in SIZES:
            t0 = time.perf_counter()
            traces[n] = generate(n, steady, seed)
            seconds[n]["generate"] = round(time.perf_counter() - t0, 2)
        gc.freeze()  # the traces: see _NoGc
        replays: dict[int, list[Replay]] = {n: [] for n in SIZES}
        for _ in range(repeats):
            for n in SIZES:
                t0 = time.perf_counter()
                replays[n].append(replay_timed(traces[n], huge_pages=huge_pages))
                _collect()
                seconds[n]["replays"] = round(
                    seconds[n].get("replays", 0.0) + time.perf_counter() - t0, 2
                )
        results = {}
        for n in SIZES:
            t0 = time.perf_counter()
            ref = replay_reference(traces[n], ref_events[n])
            seconds[n]["reference"] = round(time.perf_counter() - t0, 2)
            results[n] = summarise(traces[n], replays[n], ref)
            results[n]["seconds"] = seconds[n]
    r1, r10, r100 = results[1_000], results[10_000], results[100_000]
    growth = r100["mean_us"] / r1["mean_us"]
    per_round = [
        round(a["mean_us"] / b["mean_us"], 2)
        for a, b in zip(r100["each_replay"], r1["each_replay"], strict=True)
    ]
    summary = {
        "decisions_per_s_10k": r10["decisions_per_s"],
        "p99_us_10k": r10["p99_us"],
        "speedup_10k": r10["reference"]["speedup"],
        "growth_1k_to_100k": round(growth, 2),
        "growth_each_round": per_round,
        "identical": all(
            r["reference"]["identical"] and r["replay_identical"] for r in results.values()
        ),
        "offers_per_s_10k": r10["offers_per_s"],
        "decisions_per_s_10k_loop": r10["decisions_per_s_loop"],
        "targets": {
            "decisions_per_s_10k >= 100000": r10["decisions_per_s"] >= 100_000,
            "p99_us_10k <= 50": r10["p99_us"] <= 50,
            "speedup_10k >= 50": (r10["reference"]["speedup"] or 0) >= 50,
            "growth_1k_to_100k <= 2": growth <= 2,
        },
        "host_loop_ns": [host_before, host_loop_ns()],
        "huge_pages": _huge_pages_summary(huge_pages, replays),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    return {
        "summary": summary,
        "method": METHOD,
        "sizes": {str(n): r for n, r in results.items()},
        "python": sys.version.split()[0],
        "quick": quick,
        "repeats": repeats,
        "seed": seed,
    }


def _huge_pages_summary(asked: bool, replays: dict[int, list[Replay]]) -> dict[str, Any]:
    """Whether the replays ran on huge pages, and how much of the heap was collapsed."""
    done = [r.huge_pages for rs in replays.values() for r in rs if r.huge_pages is not None]
    return {
        "asked": asked,
        "thp_mode": thp_mode(),
        "supported": all(c.supported for c in done) if done else None,
        "reason": next((c.reason for c in done if c.reason), ""),
        "collapsed_mb": {
            str(n): max((r.huge_pages.collapsed_mb for r in rs if r.huge_pages), default=0.0)
            for n, rs in replays.items()
        },
        "seconds": round(sum(c.seconds for c in done), 2),
    }


METHOD = {
    "decision": "one event handled by the matcher (it returns its decisions, maybe none)",
    "trace": "recorded once per size by a driver that plays the centre against a heap matcher; "
    "the first 45 virtual seconds (logins, a burst of calls already in progress) are warm-up",
    "timing": "the recorded trace is replayed through a fresh Matcher; perf_counter_ns around "
    "each call only (bound method and arguments looked up before the loop); each event's "
    "figure is its median over the replays; decisions_per_s = events / sum of those figures; "
    "decisions_per_s_loop = events / wall time of the whole replay loop, timer reads included",
    "repeats": "rounds of replays, each replaying every size in turn",
    "growth": "mean per-event cost at 100,000 agents / at 1,000 (the per-event medians); "
    "growth_each_round uses one round's raw replays",
    "gc": "cyclic collector off while replaying; the traces are frozen (gc.freeze); the "
    "matcher holds no reference cycle, so a finished replay's is freed by reference counting, "
    "outside the timed loops",
    "huge_pages": "after each replay's setup (logins), the process's mostly-resident anonymous "
    "memory is collapsed into 2 MiB pages (madvise MADV_COLLAPSE, acd/hugepages.py), as the ACD "
    "service does once its agents are in; --no-huge-pages keeps the kernel's 4 KiB pages",
    "timers": "a timer request inside a matcher call is one list append; recorded firings "
    "are replayed as timer_fired events",
    "reference": "replays a prefix of the same trace from the start; speedup compares mean "
    "time per event on exactly those events",
    "identical": "every heap replay decides as the recording did, and the reference decides "
    "as the heap matcher on its prefix",
    "host_loop_ns": "the host's speed before and after the run: ns per iteration of a fixed "
    "pure-Python loop (dict lookup, tuple compare, heap push and pop); the absolute figures "
    "of runs on different hosts compare only through it",
}


def main() -> None:  # pragma: no cover - `ivr-engine acd bench` is the entry point
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
