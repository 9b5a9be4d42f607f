"""Discrete-event simulation of a day of traffic through the real matcher (no telephony).

Arrivals are Poisson with a rate that changes every half hour (a profile), handle times are
lognormal (or exponential, for the Erlang check), callers abandon after an exponential
patience, and calls are spread over queues by a mix. Every routing decision is taken by
`acd.matcher.Matcher`, driven by a virtual clock; the simulation only plays the callers and
the agents (answering after `ring_seconds`, hanging up after the handle time).

Reported per queue: offered, answered, abandoned, overflowed, service level (answered within
`sl_seconds` / offered), ASA (mean wait of answered calls), abandon rate, and the occupancy of
the agents eligible for the queue; Erlang C and Erlang A staffing for the busiest half hour are
shown beside the simulated outcome.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from acd import erlang
from acd.matcher import Matcher
from acd.model import (
    AgentSpec,
    CallSpec,
    Offer,
    Overflowed,
    QueueSpec,
    Step,
    Strategy,
    TimerKey,
)
from acd.requirement import parse

HALF_HOUR = 1800.0


@dataclass(frozen=True)
class Scenario:
    queues: tuple[QueueSpec, ...]
    agents: tuple[AgentSpec, ...]
    mix: dict[str, float]  # queue id -> share of the calls
    calls: float  # expected calls over the whole profile
    profile: tuple[float, ...]  # relative volume per half hour
    aht: float = 180.0  # mean handle time, seconds
    handle: str = "lognormal"  # or "exponential"
    handle_sigma: float = 0.6  # lognormal shape
    patience: float | None = 180.0  # mean patience (exponential); None: nobody abandons
    sl_seconds: float = 20.0
    sl_target: float = 0.8
    ring_seconds: float = 0.0
    seed: int = 1


@dataclass
class QueueStats:
    offered: int = 0
    answered: int = 0
    abandoned: int = 0
    overflowed: int = 0
    within_sl: int = 0
    wait_answered: float = 0.0
    busy_seconds: float = 0.0

    def as_dict(self, eligible_seconds: float) -> dict[str, Any]:
        offered = max(self.offered, 1)
        return {
            "offered": self.offered,
            "answered": self.answered,
            "abandoned": self.abandoned,
            "overflowed": self.overflowed,
            "service_level": round(self.within_sl / offered, 4),
            "asa_s": round(self.wait_answered / max(self.answered, 1), 2),
            "abandon_rate": round(self.abandoned / offered, 4),
            "occupancy_of_eligible": round(float(self.busy_seconds / eligible_seconds), 4)
            if eligible_seconds
            else 0.0,
        }


@dataclass
class SimReport:
    strategy: str
    queues: dict[str, dict[str, Any]]
    total: dict[str, Any]
    occupancy: float
    p_wait: float
    erlang: dict[str, Any] = field(default_factory=dict)


class _Clock:
    def __init__(self, events: list[tuple[float, int, str, Any]], counter: list[int]):
        self.events = events
        self.counter = counter
        self.pending: dict[TimerKey, float] = {}

    def schedule(self, at: float, key: TimerKey) -> None:
        self.pending[key] = at
        self.counter[0] += 1
        heapq.heappush(self.events, (at, self.counter[0], "timer", key))

    def cancel(self, key: TimerKey) -> None:
        self.pending.pop(key, None)


def simulate(scenario: Scenario, strategy: Strategy | None = None) -> SimReport:
    """Run the scenario; `strategy` overrides every queue's agent-selection strategy."""
    rng = np.random.default_rng(scenario.seed)
    queues = list(scenario.queues)
    if strategy is not None:
        queues = [dataclasses.replace(q, strategy=strategy) for q in queues]
    events: list[tuple[float, int, str, Any]] = []
    counter = [0]
    clock = _Clock(events, counter)
    matcher = Matcher(clock)
    for q in queues:
        matcher.add_queue(q)
    for a in scenario.agents:
        matcher.login(a, 0.0)

    qids = [q.id for q in queues]
    shares = np.array([scenario.mix.get(q, 0.0) for q in qids], dtype=float)
    if shares.sum() <= 0:
        raise ValueError("the mix gives no calls to any queue")
    shares /= shares.sum()
    profile = np.array(scenario.profile, dtype=float)
    rates = scenario.calls * profile / profile.sum() / HALF_HOUR
    arrivals: list[float] = []
    for i, rate in enumerate(rates):
        n = int(rng.poisson(rate * HALF_HOUR))
        arrivals.extend((i * HALF_HOUR + rng.random(n) * HALF_HOUR).tolist())
    arrivals.sort()
    n_calls = len(arrivals)
    which = rng.choice(len(qids), size=n_calls, p=shares)
    if scenario.handle == "exponential":
        handles = rng.exponential(scenario.aht, size=n_calls)
    else:
        sigma = scenario.handle_sigma
        handles = rng.lognormal(math.log(scenario.aht) - sigma * sigma / 2, sigma, size=n_calls)
    patience = (
        rng.exponential(scenario.patience, size=n_calls)
        if scenario.patience is not None
        else np.full(n_calls, math.inf)
    )
    for i, at in enumerate(arrivals):
        counter[0] += 1
        heapq.heappush(events, (at, counter[0], "arrive", i))

    stats = {q: QueueStats() for q in qids}
    arrived_at: dict[str, float] = {}
    queue_of: dict[str, str] = {}
    answered: set[str] = set()
    waited_any = 0
    busy_total = 0.0
    wrapup = {q.id: q.wrapup for q in queues}

    def follow(decisions: list[Any], now: float) -> None:
        for d in decisions:
            if isinstance(d, Offer):
                counter[0] += 1
                heapq.heappush(events, (now + scenario.ring_seconds, counter[0], "answer", d))
            elif isinstance(d, Overflowed):
                stats[d.queue].overflowed += 1

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            i = payload
            cid = f"c{i}"
            qid = qids[int(which[i])]
            arrived_at[cid] = now
            queue_of[cid] = qid
            stats[qid].offered += 1
            out = matcher.call_arrived(CallSpec(cid, qid), now)
            if not any(isinstance(d, Offer) for d in out):
                waited_any += 1  # no agent free on arrival
            follow(out, now)
            if math.isfinite(patience[i]) and matcher.call_state(cid) is not None:
                counter[0] += 1
                heapq.heappush(events, (now + float(patience[i]), counter[0], "abandon", cid))
        elif kind == "answer":
            d = payload
            if matcher.call_state(d.call) != "offered":
                continue
            follow(matcher.answered(d.call, d.agent, now), now)
            qid = queue_of[d.call]
            wait = now - arrived_at[d.call]
            st = stats[qid]
            st.answered += 1
            st.wait_answered += wait
            if wait <= scenario.sl_seconds:
                st.within_sl += 1
            answered.add(d.call)
            h = float(handles[int(d.call[1:])])
            st.busy_seconds += h + wrapup[qid]
            busy_total += h + wrapup[qid]
            counter[0] += 1
            heapq.heappush(events, (now + h, counter[0], "end", d.call))
        elif kind == "end":
            follow(matcher.call_ended(payload, now), now)
        elif kind == "abandon":
            cid = payload
            if cid not in answered and matcher.call_state(cid) is not None:
                stats[queue_of[cid]].abandoned += 1
                follow(matcher.hung_up(cid, now), now)
        elif kind == "timer":
            if clock.pending.get(payload) == now:
                del clock.pending[payload]
                follow(matcher.timer_fired(payload, now), now)

    open_intervals = np.nonzero(profile)[0]
    span = (
        float(open_intervals[-1] - open_intervals[0] + 1) * HALF_HOUR
        if len(open_intervals)
        else 0.0
    )
    agent_seconds = span * len(scenario.agents)
    queue_reports = {}
    for q in queues:
        eligible = sum(1 for a in scenario.agents if q.requirement.matches(a.skills))
        queue_reports[q.id] = stats[q.id].as_dict(eligible * span)
    tot = QueueStats()
    for st in stats.values():
        tot.offered += st.offered
        tot.answered += st.answered
        tot.abandoned += st.abandoned
        tot.overflowed += st.overflowed
        tot.within_sl += st.within_sl
        tot.wait_answered += st.wait_answered
        tot.busy_seconds += st.busy_seconds
    report = SimReport(
        strategy=strategy.value if strategy else "as configured",
        queues=queue_reports,
        total=tot.as_dict(agent_seconds),
        occupancy=round(busy_total / agent_seconds, 4) if agent_seconds else 0.0,
        p_wait=round(waited_any / max(tot.offered, 1), 4),
    )
    report.erlang = erlang_beside(scenario, queues, rates, shares)
    return report


def erlang_beside(
    scenario: Scenario, queues: list[QueueSpec], rates: np.ndarray, shares: np.ndarray
) -> dict[str, Any]:
    """Erlang C / A staffing for the busiest half hour, per queue and for the whole centre."""
    peak = int(np.argmax(rates))
    out: dict[str, Any] = {"peak_half_hour": peak, "queues": {}}
    t, target = scenario.sl_seconds, scenario.sl_target
    for q, share in zip(queues, shares, strict=True):
        rate = float(rates[peak] * share)
        if rate <= 0:
            continue
        row: dict[str, Any] = {
            "calls_per_half_hour": round(rate * HALF_HOUR, 1),
            "erlangs": round(rate * scenario.aht, 2),
            "agents_erlang_c": erlang.staffing_c(rate, scenario.aht, target, t),
            "eligible_agents": sum(1 for a in scenario.agents if q.requirement.matches(a.skills)),
        }
        if scenario.patience is not None:
            row["agents_erlang_a"] = erlang.staffing_a(
                rate, scenario.aht, scenario.patience, target, t
            )
        out["queues"][q.id] = row
    rate = float(rates[peak])
    centre: dict[str, Any] = {
        "calls_per_half_hour": round(rate * HALF_HOUR, 1),
        "erlangs": round(rate * scenario.aht, 2),
        "agents_erlang_c": erlang.staffing_c(rate, scenario.aht, target, t),
        "agents_on_roster": len(scenario.agents),
    }
    n = len(scenario.agents)
    centre["erlang_c_service_level_with_roster"] = round(
        erlang.service_level_c(n, rate, scenario.aht, t), 4
    )
    if scenario.patience is not None:
        centre["agents_erlang_a"] = erlang.staffing_a(
            rate, scenario.aht, scenario.patience, target, t
        )
        a = erlang.erlang_a(n, rate, scenario.aht, scenario.patience, t)
        centre["erlang_a_with_roster"] = {
            "service_level": round(a.service_level, 4),
            "abandon_rate": round(a.p_abandon, 4),
        }
    out["centre"] = centre
    return out


def bank_day(agents: int = 70, calls: float = 6000.0, seed: int = 7) -> Scenario:
    """A bank hotline day: Cantonese/Mandarin/English callers, cards, loans, wealth, fraud."""
    rng = np.random.default_rng(seed)
    queues = (
        QueueSpec(
            id="cards-yue",
            requirement=parse("yue >= 3 and cards"),
            steps=(
                _step(30, "yue and cards"),
                _step(60, "cards"),
            ),
            wrapup=10.0,
        ),
        QueueSpec(
            id="cards-cmn",
            requirement=parse("cmn >= 3 and cards"),
            steps=(_step(45, "cards"),),
            wrapup=10.0,
        ),
        QueueSpec(id="loans", requirement=parse("loans >= 2 and (yue or eng)"), wrapup=20.0),
        QueueSpec(
            id="wealth-vip",
            requirement=parse("wealth >= 6"),
            strategy=Strategy.HIGHEST_PROFICIENCY,
            steps=(_step(40, "wealth"),),
            weight=30.0,
            wrapup=15.0,
        ),
        QueueSpec(
            id="fraud",
            requirement=parse("fraud >= 5"),
            max_wait=240.0,
            overflow="fraud-voicemail",
            weight=20.0,
            wrapup=30.0,
        ),
    )
    roster = []
    for i in range(agents):
        skills: dict[str, int] = {}
        for lang, p in (("yue", 0.7), ("cmn", 0.4), ("eng", 0.5)):
            if rng.random() < p:
                skills[lang] = int(rng.integers(2, 11))
        for prod, p in (("cards", 0.75), ("loans", 0.35), ("wealth", 0.2), ("fraud", 0.15)):
            if rng.random() < p:
                skills[prod] = int(rng.integers(1, 11))
        if not any(k in skills for k in ("yue", "cmn", "eng")):
            skills["yue"] = 5
        roster.append(AgentSpec(f"agent{i:03d}", skills))
    # 08:00-20:00, peaks late morning and early afternoon.
    profile = [0.0] * 16 + [
        2, 4, 6, 8, 9, 10, 9, 7, 6, 8, 9, 8, 7, 6, 5, 4, 4, 3, 3, 2, 2, 1, 1, 1,
    ] + [0.0] * 8  # fmt: skip
    return Scenario(
        queues=queues,
        agents=tuple(roster),
        mix={"cards-yue": 0.45, "cards-cmn": 0.2, "loans": 0.15, "wealth-vip": 0.1, "fraud": 0.1},
        calls=calls,
        profile=tuple(float(x) for x in profile),
        seed=seed,
    )


def _step(after: float, text: str) -> Step:
    return Step(float(after), parse(text))


def single_queue(
    agents: int, erlangs: float, *, calls: int, aht: float = 180.0, seed: int = 3
) -> Scenario:
    """One single-skill queue, exponential handling, no abandonment: an M/M/N (Erlang C) system."""
    rate = erlangs / aht
    intervals = max(1, round(calls / (rate * HALF_HOUR)))
    return Scenario(
        queues=(QueueSpec(id="cards", requirement=parse("cards")),),
        agents=tuple(AgentSpec(f"a{i}", {"cards": 5}) for i in range(agents)),
        mix={"cards": 1.0},
        calls=float(calls),
        profile=tuple([1.0] * intervals),
        aht=aht,
        handle="exponential",
        patience=None,
        seed=seed,
    )
