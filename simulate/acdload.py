"""Load with agents: SIPp callers who ask for a person, SIPp agents who answer, and the same
traffic routed once by Asterisk's app_queue and once by ivr-engine's ACD.

```
ivr-engine loadtest --agents 40 --rate 2,4 --duration 60 --compare
  agents     N of the load endpoints 2000-2099 (asterisk-conf/pjsip.conf): one SIPp UAC
             registers them (sipp/agent_register.xml), one SIPp UAS answers for all of them
             (sipp/agent_uas.xml: ring delay, talk time, ring-no-answer, all drawn)
  flow       a generated `hotline` flow in the run folder: straight to queue `load`
  app_queue  the daemon without the ACD: the flow hands the caller to the dialplan's
             Queue(hotline-load) (queues.conf: the same agents, leastrecent, no wrap-up)
  acd        the daemon with a generated roster (queue `load`, longest-idle, no wrap-up):
             the dialplan parks the caller in [acd-wait], the router offers it
  callers    SIPp (sipp/caller_queue.xml), Poisson arrivals, a unique number per call
  watched    AMI as the read-only `monitor` user: Newchannel (number <-> channel) and
             app_queue's Queue* / Agent* events; MQTT: the daemon's ACD events (queued,
             screen pop = offer, connected, ring-no-answer, ended), each with the daemon's
             wall clock (`at`)
```

Per call: offered (SIPp), queued, offers, connected (the router's view), ended (SIPp: who
hung up). A call is *answered* when an agent took it, *abandoned* when the caller hung up
before that, *failed* otherwise (no answer from the daemon, never queued, ended by the PBX
without an agent (the operators' fallback), SIPp gave up waiting, or never completed).
Decision latency: from an agent becoming free (AgentComplete / the ACD's CallEnded) while a
caller waits with no offer, to the next offer (AgentCalled / the ACD's screen pop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import statistics
import string
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from simulate.loadtest import LoadTestError, pct

SIPP = Path(__file__).parent / "sipp"
FIRST_AGENT = 2000
MAX_AGENTS = 100  # the load endpoints of asterisk-conf/pjsip.conf: 2000-2099
ROUTERS = ("app_queue", "acd")
LOAD_QUEUE = "load"  # the flow's queue; app_queue's is hotline-load
APP_QUEUE = f"hotline-{LOAD_QUEUE}"


def agent_password(ext: str) -> str:
    return f"load-{ext}-dev"  # pjsip.conf: the load agents' dev passwords


# ------------------------------------------------------------------ plans


@dataclass(frozen=True)
class AgentPlan:
    count: int
    ring: tuple[float, float] = (0.5, 2.0)  # seconds the phone rings before it answers
    talk: tuple[float, float] = (4.0, 8.0)  # seconds of conversation
    no_answer: float = 0.05  # probability an offer is declined (480) after the ring
    branches: int = 8  # distinct values drawn from for ring and talk (SIPp branches)
    media_port: int = 30002  # in the SDP; nothing listens, no RTP is sent

    def check(self) -> None:
        if not 1 <= self.count <= MAX_AGENTS:
            raise LoadTestError(f"agents: 1 to {MAX_AGENTS} (the load endpoints 2000-2099)")
        for name, (lo, hi) in (("ring", self.ring), ("talk", self.talk)):
            if not 0 <= lo <= hi <= 3600:
                raise LoadTestError(f"agent {name}: MIN,MAX seconds with 0 <= MIN <= MAX")
        if self.ring[1] >= 15:
            raise LoadTestError("agent ring: at most 15 s (the ring timeout of both routers)")
        if not 0 <= self.no_answer < 1:
            raise LoadTestError("agent no-answer: a probability in [0, 1)")
        if not 1 <= self.branches <= 32:
            raise LoadTestError("branches: 1 to 32")

    @property
    def agents(self) -> list[str]:
        return [str(FIRST_AGENT + i) for i in range(self.count)]

    @property
    def capacity(self) -> float:
        """Calls/s the agents can serve with no idle time: each served call holds an agent
        for a ring and a talk, plus the rings of the offers declined before it."""
        ring = sum(self.ring) / 2
        talk = sum(self.talk) / 2
        per_call = ring + talk + ring * self.no_answer / (1 - self.no_answer)
        return self.count / per_call if per_call > 0 else math.inf


@dataclass(frozen=True)
class CallerPlan:
    rate: float  # calls per second (Poisson)
    duration: float  # seconds of arrivals
    arrival_spread: float = 1.0  # mean of each call's exponential shift (see docs/loadtest.md)
    hangup: float = 0.0  # probability the caller hangs up after a drawn patience
    patience: tuple[float, float] = (3.0, 30.0)  # seconds from the answer to that hang-up
    max_wait: float = 300.0  # a caller still waiting then gives up: a failed call
    branches: int = 8
    media_port: int = 30000
    max_calls: int = 6000  # SIPp -l
    seed: int = 7

    @property
    def calls(self) -> int:
        return max(1, round(self.rate * self.duration))

    def check(self) -> None:
        if not 0 < self.rate <= 500:
            raise LoadTestError("rate must be in (0, 500] calls/s with agents")
        if not 0 < self.duration <= 7200:
            raise LoadTestError("duration must be in (0, 7200] s")
        if not 0 <= self.hangup <= 1:
            raise LoadTestError("caller hang-up: a probability in [0, 1]")
        lo, hi = self.patience
        if not 0 <= lo <= hi <= self.max_wait:
            raise LoadTestError("patience: MIN,MAX seconds with 0 <= MIN <= MAX <= max wait")


# ------------------------------------------------------------------ generated files


def spread(lo: float, hi: float, n: int) -> list[int]:
    """`n` evenly spaced values (ms) across [lo, hi] s: a discrete uniform draw."""
    if n <= 1 or hi <= lo:
        return [round((lo + hi) / 2 * 1000)]
    return [round((lo + (hi - lo) * (i + 0.5) / n) * 1000) for i in range(n)]


def _chooser(prefix: str, count: int) -> list[str]:
    """Jump to one of `count` labels with equal probability (SIPp's `chance`)."""
    lines = []
    for i in range(count - 1):
        lines.append(f'  <nop next="{prefix}{i}" chance="{1 / (count - i):.6f}" />')
    lines.append(f'  <nop next="{prefix}{count - 1}" />')
    return lines


def wait_branches(prefix: str, values_ms: Sequence[int], request: str, ontimeout: str,
                  matched: str) -> str:
    """Branches that wait for `request` for one of `values_ms` (picked at random), then go
    to `ontimeout`; a `request` that arrives in time goes to `matched`."""
    lines = _chooser(prefix, len(values_ms))
    for i, ms in enumerate(values_ms):
        lines += [
            f'  <label id="{prefix}{i}" />',
            f'  <recv request="{request}" timeout="{ms}" ontimeout="{ontimeout}" />',
            f'  <nop next="{matched}" />',
        ]
    return "\n".join(lines)


def agent_xml(plan: AgentPlan) -> str:
    return string.Template((SIPP / "agent_uas.xml").read_text(encoding="ascii")).substitute(
        ring_branches=wait_branches("ring", spread(*plan.ring, plan.branches), "CANCEL",
                                    "pickup", "cancelled"),
        talk_branches=wait_branches("talk", spread(*plan.talk, plan.branches), "BYE",
                                    "agent_bye", "caller_bye"),
        no_answer=f"{plan.no_answer:.6f}",
        media_port=plan.media_port,
    )


def caller_xml(plan: CallerPlan) -> str:
    patient = "\n".join([
        '  <label id="patient" />',
        f'  <recv request="BYE" timeout="{round(plan.max_wait * 1000)}" ontimeout="gave_up" />',
        '  <nop next="pbx_bye" />',
    ])
    if plan.hangup > 0:
        impatient = wait_branches("wait", spread(*plan.patience, plan.branches), "BYE",
                                  "hangup", "pbx_bye")
        head = [f'  <nop next="patient" chance="{1 - plan.hangup:.6f}" />'] if plan.hangup < 1 \
            else []
        body = "\n".join([*head, impatient, patient])
    else:
        body = patient
    return string.Template((SIPP / "caller_queue.xml").read_text(encoding="ascii")).substitute(
        arrival_ms=max(1, round(plan.arrival_spread * 1000)),
        wait_branches=body,
        media_port=plan.media_port,
    )


def register_xml(uas_port: int, expires: int) -> str:
    return string.Template((SIPP / "agent_register.xml").read_text(encoding="ascii")).substitute(
        uas_port=uas_port, expires=expires)


def roster_yaml(plan: AgentPlan) -> str:
    """The ACD roster of a run: queue `load` served longest-idle (app_queue's leastrecent),
    no wrap-up and no maximum wait (as hotline-load), the run's agents logged in while their
    phone is registered."""
    lines = [
        "# Generated by simulate/acdload.py for one load run.",
        "defaults: {wrapup: 0, max_wait: 0}",
        "queues:",
        f"  {LOAD_QUEUE}: {{strategy: longest-idle}}",
        "agents:",
    ]
    for ext in plan.agents:
        lines.append(f'  "{ext}": {{name: Load {ext}, skills: {{mandarin: 5}}, login: auto}}')
    return "\n".join(lines) + "\n"


LOAD_FLOW = """\
# Generated by simulate/acdload.py: the load journey with agents. The dialplan runs flow
# `hotline` for 4008; this one answers and asks for a person at once (queue `load`).
flow: hotline
description: Load test with agents - the caller asks for a person
languages: [cmn]
language: cmn
on_error: failed
start: to_person
nodes:
  to_person:
    type: queue
    queue: load
    skills: "any"
    priority: 5
    data: {reason: "'load'"}
  failed:
    type: hangup
    reason: load flow error
"""


def caller_numbers(count: int, router: int, step: int) -> list[str]:
    """Unique 11-digit numbers (never an agent's extension): the key that joins a SIPp call to
    the PBX's and the daemon's events."""
    return [f"0{router + 1}{step % 100:02d}{i:07d}" for i in range(count)]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ SIPp logs


@dataclass
class CallerCall:
    number: str
    offered: float  # wall clock
    answered: float | None = None
    ended: float | None = None
    end: str = ""  # pbx-bye | caller-bye | gave-up | "" (never ended)


def parse_caller_log(text: str, started: float) -> dict[str, CallerCall]:
    """`tick;call;event;number` lines (ms since SIPp started at wall time `started`)."""
    calls: dict[str, CallerCall] = {}
    for line in text.splitlines():
        parts = line.strip().split(";")
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        t = started + int(parts[0]) / 1000
        event, number = parts[2], parts[3]
        if event == "offered":
            calls[number] = CallerCall(number, t)
            continue
        call = calls.get(number)
        if call is None:
            continue
        if event == "answered":
            call.answered = t
        elif event in ("pbx-bye", "caller-bye", "gave-up"):
            call.ended, call.end = t, event
    return calls


@dataclass(frozen=True)
class PhoneEvent:
    t: float
    agent: str
    event: str  # invited | answered | declined | cancelled | agent-bye | caller-bye
    call: str  # SIP Call-ID of the agent's leg


PHONE_ENDS = frozenset({"declined", "cancelled", "agent-bye", "caller-bye"})


def parse_agent_log(text: str, started: float) -> list[PhoneEvent]:
    out = []
    for line in text.splitlines():
        parts = line.strip().split(";")
        if len(parts) == 4 and parts[0].isdigit():
            out.append(PhoneEvent(started + int(parts[0]) / 1000, parts[1], parts[2], parts[3]))
    return out


def phone_double_offers(events: Iterable[PhoneEvent]) -> list[str]:
    """INVITEs that reached a phone which was still ringing or talking on another call."""
    busy: dict[str, str] = {}
    found = []
    for e in events:  # in log order: SIPp writes them as they happen
        if e.event == "invited":
            if e.agent in busy and busy[e.agent] != e.call:
                found.append(f"{e.agent}: {e.call} while on {busy[e.agent]}")
            busy[e.agent] = e.call
        elif e.event in PHONE_ENDS and busy.get(e.agent) == e.call:
            del busy[e.agent]
    return found


# ------------------------------------------------------------------ router events


#: Order of events with the same timestamp (the daemon's clock has millisecond resolution, and
#: its events travel on two MQTT connections, so arrival order is not event order): what frees
#: an agent or queues a call comes before the offer it causes, the offer before its answer.
KIND_ORDER = {"queued": 0, "complete": 1, "noanswer": 2, "abandon": 3, "offer": 4, "connect": 5}


def event_key(e: RouterEvent) -> tuple[float, int]:
    return (e.t, KIND_ORDER.get(e.kind, 9))


@dataclass(frozen=True)
class RouterEvent:
    t: float  # wall clock of the router's own record (AMI Timestamp; the daemon's `at`)
    kind: str  # queued | offer | noanswer | connect | complete | abandon
    call: str  # the caller channel's Uniqueid (= the daemon's call id)
    agent: str = ""


def _agent_of(member: str) -> str:
    """`PJSIP/2001` or `Load 2001` -> 2001."""
    return member.rsplit("/", 1)[-1].rsplit(" ", 1)[-1]


def app_queue_events(ami: Iterable[Mapping[str, str]], queue: str = APP_QUEUE
                     ) -> list[RouterEvent]:
    """app_queue's view from AMI (Asterisk 22 field names: Uniqueid is the caller's channel,
    Interface/MemberName the member). An AgentComplete sent after the caller's channel is gone
    carries no caller Uniqueid: it is the call that member was connected to."""
    kinds = {"QueueCallerJoin": "queued", "AgentCalled": "offer",
             "AgentRingNoAnswer": "noanswer", "AgentConnect": "connect",
             "AgentComplete": "complete", "QueueCallerAbandon": "abandon"}
    rows = []
    for e in ami:
        kind = kinds.get(e.get("Event", ""))
        if kind is None or e.get("Queue") != queue:
            continue
        member = e.get("Interface") or e.get("MemberName") or ""
        rows.append(RouterEvent(float(e["_t"]), kind, e.get("Uniqueid", ""),
                                _agent_of(member) if member else ""))
    rows.sort(key=event_key)
    on_call: dict[str, str] = {}
    out = []
    for r in rows:
        if r.kind == "connect":
            on_call[r.agent] = r.call
        elif r.kind == "complete":
            call = r.call or on_call.get(r.agent, "")
            if on_call.get(r.agent) == call:
                del on_call[r.agent]
            r = RouterEvent(r.t, r.kind, call, r.agent)
        out.append(r)
    return out


def acd_events(mqtt: Iterable[tuple[str, Mapping[str, Any]]]) -> list[RouterEvent]:
    """The ACD's view from its MQTT events (topics relative to the prefix)."""
    state_kinds = {"CallConnected": "connect", "RingNoAnswer": "noanswer",
                   "CallEnded": "complete", "OfferWithdrawn": "abandon"}
    out = []
    for topic, body in mqtt:
        parts = topic.split("/")
        at = body.get("at")
        if not isinstance(at, int | float):
            continue
        if parts[:2] == ["acd", "call"] and parts[-1] == "queued":
            out.append(RouterEvent(float(at), "queued", str(body.get("call_id", ""))))
        elif len(parts) == 3 and parts[0] == "agent" and parts[2] == "screenpop":
            out.append(RouterEvent(float(at), "offer", str(body.get("call_id", "")), parts[1]))
        elif len(parts) == 3 and parts[0] == "agent" and parts[2] == "state":
            kind = state_kinds.get(str(body.get("event", "")))
            if kind is not None:
                out.append(RouterEvent(float(at), kind, str(body.get("call_id", "")), parts[1]))
    out.sort(key=event_key)
    return out


def decision_latencies(events: Sequence[RouterEvent]) -> list[tuple[float, float]]:
    """(time agent freed, seconds to the next offer) for every agent that became free while
    at least one queued caller had no offer."""
    waiting: set[str] = set()  # queued calls without an offer now
    gone: set[str] = set()
    pending: list[float] = []
    out = []
    for e in events:
        if e.kind == "queued":
            waiting.add(e.call)
        elif e.kind == "offer":
            for t in pending:
                out.append((t, e.t - t))
            pending.clear()
            waiting.discard(e.call)
        elif e.kind == "noanswer" and e.call not in gone:
            waiting.add(e.call)
        elif e.kind in ("connect", "abandon"):
            waiting.discard(e.call)
            if e.kind == "abandon":
                gone.add(e.call)
        if e.kind == "complete":
            waiting.discard(e.call)
            gone.add(e.call)
            if waiting:
                pending.append(e.t)
    return out


def double_offers(events: Sequence[RouterEvent]) -> list[str]:
    """An offer to an agent who already holds an offer or a call, or of a call that is already
    offered elsewhere."""
    agent_busy: dict[str, str] = {}
    call_at: dict[str, str] = {}
    found = []
    for e in events:
        if e.kind == "offer":
            if e.agent in agent_busy:
                found.append(f"{e.t:.3f} {e.call} to {e.agent}, busy with {agent_busy[e.agent]}")
            if e.call in call_at:
                found.append(f"{e.t:.3f} {e.call} to {e.agent} while offered to "
                             f"{call_at[e.call]}")
            agent_busy[e.agent] = e.call
            call_at[e.call] = e.agent
        elif e.kind in ("noanswer", "abandon"):
            agent = e.agent or call_at.get(e.call, "")
            if agent_busy.get(agent) == e.call:
                del agent_busy[agent]
            call_at.pop(e.call, None)
        elif e.kind == "complete":
            agent = e.agent or call_at.get(e.call, "")
            if agent_busy.get(agent) == e.call or (e.agent and not e.call):
                agent_busy.pop(agent, None)
            call_at.pop(e.call, None)
    return found


# ------------------------------------------------------------------ per call


@dataclass
class QueueCall:
    number: str
    offered: float
    answered: float | None  # by the daemon (IVR)
    ended: float | None
    end: str
    call_id: str = ""
    queued: float | None = None
    offers: int = 0
    connected: float | None = None
    completed: float | None = None
    agent: str = ""
    outcome: str = "failed"  # answered | abandoned | failed
    reason: str = ""


def join_calls(callers: Mapping[str, CallerCall], numbers_of: Mapping[str, str],
               events: Sequence[RouterEvent]) -> list[QueueCall]:
    """One row per SIPp call; `numbers_of` maps a channel Uniqueid to the caller's number."""
    by_id: dict[str, list[RouterEvent]] = defaultdict(list)
    for e in events:
        by_id[e.call].append(e)
    ids_of: dict[str, str] = {}
    for call_id, number in numbers_of.items():
        if call_id in by_id or number not in ids_of:
            ids_of[number] = call_id
    out = []
    for number, c in sorted(callers.items(), key=lambda kv: kv[1].offered):
        q = QueueCall(number, c.offered, c.answered, c.ended, c.end, ids_of.get(number, ""))
        for e in by_id.get(q.call_id, []):
            if e.kind == "queued" and q.queued is None:
                q.queued = e.t
            elif e.kind == "offer":
                q.offers += 1
            elif e.kind == "connect" and q.connected is None:
                q.connected, q.agent = e.t, e.agent
            elif e.kind == "complete":
                q.completed = e.t
        q.outcome, q.reason = classify(q)
        out.append(q)
    return out


def classify(q: QueueCall) -> tuple[str, str]:
    if q.answered is None:
        return "failed", "the daemon did not answer"
    if q.ended is None:
        return "failed", "never ended"
    if q.connected is not None:
        return "answered", ""
    if q.end == "gave-up":
        return "failed", "waited past the maximum without an agent"
    if q.queued is None:
        return ("abandoned", "hung up before the queue") if q.end == "caller-bye" \
            else ("failed", "never reached the queue")
    if q.end == "caller-bye":
        return "abandoned", ""
    return "failed", "ended by the PBX without an agent"


# ------------------------------------------------------------------ results


@dataclass
class RouterStep:
    router: str
    rate: float
    duration: float
    agents: int
    offered: int
    answered: int
    abandoned: int
    failed: int
    asa: float | None  # mean seconds queued -> connected
    service_level: float | None  # % of offered calls answered within the threshold
    sl_threshold: float
    aht: float | None  # mean seconds connected -> completed
    decision_ms_p50: float | None
    decision_ms_p99: float | None
    decisions: int
    offers: int
    double_offers: list[str]
    phone_double_offers: list[str]
    failures: dict[str, int]  # reason -> calls
    pbx_fallbacks: int
    daemon_failed: int
    daemon_cpu_percent: float | None
    daemon_rss_peak: int | None
    series: dict[str, list[float]] = field(default_factory=dict)

    @property
    def zero_failures(self) -> bool:
        return self.failed == 0 and self.offered == round(self.rate * self.duration) \
            and self.daemon_failed == 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["zero_failures"] = self.zero_failures
        return d


def _mean(xs: Sequence[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def summarise(router: str, callers: CallerPlan, agents: AgentPlan, calls: Sequence[QueueCall],
              events: Sequence[RouterEvent], *, sl_threshold: float, t0: float,
              phone: Sequence[PhoneEvent] = (), pbx_fallbacks: int = 0,
              daemon_failed: int = 0, cpu: float | None = None, rss_peak: int | None = None
              ) -> RouterStep:
    answered = [c for c in calls if c.outcome == "answered"]
    asa = [c.connected - c.queued for c in answered
           if c.connected is not None and c.queued is not None]
    aht = [c.completed - c.connected for c in answered
           if c.completed is not None and c.connected is not None]
    within = sum(1 for c in answered if c.connected is not None and c.queued is not None
                 and c.connected - c.queued <= sl_threshold)
    lat = decision_latencies(events)
    failures: dict[str, int] = defaultdict(int)
    for c in calls:
        if c.outcome == "failed":
            failures[c.reason] += 1
    horizon = max([c.ended or c.offered for c in calls] + [t0]) - t0
    seconds = list(range(int(horizon) + 2))
    in_system = [0.0] * len(seconds)
    waiting = [0.0] * len(seconds)
    for c in calls:
        if c.answered is not None:
            end = c.ended if c.ended is not None else t0 + horizon
            for s in range(max(0, int(c.answered - t0)), min(len(seconds), int(end - t0) + 1)):
                in_system[s] += 1
        if c.queued is not None:
            end = c.connected or c.ended or (t0 + horizon)
            for s in range(max(0, int(c.queued - t0)), min(len(seconds), int(end - t0) + 1)):
                waiting[s] += 1
    sl_series = []
    by_sec: dict[int, list[QueueCall]] = defaultdict(list)
    for c in calls:
        by_sec[int(c.offered - t0)].append(c)
    for s in seconds:
        xs = by_sec.get(s, [])
        ok = sum(1 for c in xs if c.connected is not None and c.queued is not None
                 and c.connected - c.queued <= sl_threshold)
        sl_series.append(100.0 * ok / len(xs) if xs else math.nan)
    lat_by: dict[int, list[float]] = defaultdict(list)
    for t, v in lat:
        lat_by[int(t - t0)].append(v * 1000)
    return RouterStep(
        router=router, rate=callers.rate, duration=callers.duration, agents=agents.count,
        offered=len(calls), answered=len(answered),
        abandoned=sum(1 for c in calls if c.outcome == "abandoned"),
        failed=sum(1 for c in calls if c.outcome == "failed"),
        asa=_mean(asa), service_level=100.0 * within / len(calls) if calls else None,
        sl_threshold=sl_threshold, aht=_mean(aht),
        decision_ms_p50=pct([v * 1000 for _, v in lat], 50),
        decision_ms_p99=pct([v * 1000 for _, v in lat], 99), decisions=len(lat),
        offers=sum(1 for e in events if e.kind == "offer"),
        double_offers=double_offers(events)[:50],
        phone_double_offers=phone_double_offers(phone)[:50],
        failures=dict(failures), pbx_fallbacks=pbx_fallbacks, daemon_failed=daemon_failed,
        daemon_cpu_percent=cpu, daemon_rss_peak=rss_peak,
        series={
            "t": [float(s) for s in seconds], "in_system": in_system, "waiting": waiting,
            "service_level": sl_series,
            "decision_ms_p50": [pct(lat_by.get(s, []), 50) or math.nan for s in seconds],
            "decision_ms_p99": [pct(lat_by.get(s, []), 99) or math.nan for s in seconds],
        },
    )


# ------------------------------------------------------------------ watchers


class AmiWatcher:
    """Reads AMI events as the read-only `monitor` user (manager.conf): Newchannel for the
    number <-> channel join, app_queue's Queue*/Agent* events. Each event gets `_t`: Asterisk's
    Timestamp (timestampevents = yes), else the time it was read."""

    KEEP = frozenset({"Newchannel", "QueueCallerJoin", "QueueCallerLeave",
                      "QueueCallerAbandon", "AgentCalled", "AgentConnect", "AgentComplete",
                      "AgentRingNoAnswer", "AgentDump"})

    def __init__(self, port: int, user: str = "monitor", secret: str = "monitor-dev-secret",
                 host: str = "127.0.0.1") -> None:
        self.host, self.port, self.user, self.secret = host, port, user, secret
        self.events: list[dict[str, str]] = []
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self, within: float = 10.0) -> None:
        from ivr_engine.pbx.ami_probe import AmiFramer, encode_action

        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._writer = writer
            framer = AmiFramer()
            writer.write(encode_action("Login", Username=self.user, Secret=self.secret,
                                       Events="on"))
            await writer.drain()
            while True:
                data = await reader.read(65536)
                if not data:
                    raise LoadTestError("AMI closed the connection at login")
                replies = [m for m in framer.feed(data) if m.get("Response")]
                if replies:
                    if replies[0].get("Response") != "Success":
                        raise LoadTestError(f"AMI login as {self.user} refused")
                    break
        self._task = asyncio.get_running_loop().create_task(self._read(reader, framer),
                                                            name="acdload-ami")

    async def _read(self, reader: asyncio.StreamReader, framer: Any) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            now = time.time()
            for m in framer.feed(data):
                name = m.get("Event")
                if name not in self.KEEP:
                    continue
                e = dict(m.headers)
                try:
                    e["_t"] = str(float(e.get("Timestamp", "")))
                except ValueError:
                    e["_t"] = str(now)
                self.events.append(e)

    def numbers(self) -> dict[str, str]:
        """Uniqueid -> caller number of the hotline's inbound channels."""
        return {e["Uniqueid"]: e.get("CallerIDNum", "") for e in self.events
                if e.get("Event") == "Newchannel" and e.get("Exten") == "4008"
                and "Uniqueid" in e}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()


class MqttWatcher:
    """The daemon's ACD and agent events (`<prefix>/acd/#`, `<prefix>/agent/#`; not the
    per-call traces, which a long soak would pile up), with the agent command channel."""

    def __init__(self, prefix: str, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.prefix, self.host, self.port = prefix.strip("/"), host, port
        self.messages: list[tuple[float, str, dict[str, Any]]] = []
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._stack = contextlib.AsyncExitStack()

    async def start(self) -> None:
        import aiomqtt

        self._client = await self._stack.enter_async_context(aiomqtt.Client(
            self.host, self.port, identifier=f"acdload-{secrets.token_hex(4)}", timeout=5))
        await self._client.subscribe(f"{self.prefix}/acd/#", qos=1)
        await self._client.subscribe(f"{self.prefix}/agent/#", qos=1)
        self._task = asyncio.get_running_loop().create_task(self._read(), name="acdload-mqtt")

    async def _read(self) -> None:
        async for message in self._client.messages:
            topic = str(message.topic)[len(self.prefix) + 1:]
            try:
                body = json.loads(message.payload)
            except (TypeError, ValueError):
                continue
            if not isinstance(body, dict):
                continue
            self.messages.append((time.time(), topic, body))
            if topic.startswith("acd/reply/"):
                fut = self._replies.pop(topic.rsplit("/", 1)[-1], None)
                if fut is not None and not fut.done():
                    fut.set_result(body)

    async def command(self, verb: str, agent: str = "", reason: str = "",
                      within: float = 10.0) -> dict[str, Any]:
        """An agent command on `<prefix>/acd/command`; returns the daemon's reply."""
        request = f"load-{secrets.token_hex(6)}"
        body: dict[str, str] = {"id": request, "verb": verb}
        if agent:
            body["agent"] = agent
        if reason:
            body["reason"] = reason
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request] = fut
        await self._client.publish(f"{self.prefix}/acd/command", json.dumps(body), qos=1)
        try:
            async with asyncio.timeout(within):
                return await fut
        finally:
            self._replies.pop(request, None)

    def since(self, t: float) -> list[tuple[str, dict[str, Any]]]:
        return [(topic, body) for at, topic, body in self.messages if at >= t]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._stack.aclose()


# ------------------------------------------------------------------ SIPp processes


async def _sipp(pbx: Any, *args: str, limit: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *pbx.sipp_cmd(*args), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(limit):
            _, err = await proc.communicate()
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, err.decode(errors="replace")


class AgentPhones:
    """The agents' phones: one SIPp UAS answering for all, registered by a SIPp UAC.

    `async with AgentPhones(pbx, plan, folder) as phones:` registers `plan.count` agents and
    unregisters all 100 load endpoints when it leaves (and when it starts, in case an earlier
    run was killed)."""

    def __init__(self, pbx: Any, plan: AgentPlan, *, target: str,
                 keep_errors: Path | None = None) -> None:
        self.pbx, self.plan, self.target = pbx, plan, target
        self.keep_errors = keep_errors  # where SIPp's error log of the agents is copied
        self.inside = f"/tmp/ivr-acdload-{os.getpid()}-{time.monotonic_ns()}"
        self.dir = pbx.in_root(self.inside)
        self.port = free_udp_port()
        self.started = 0.0
        self._uas: asyncio.subprocess.Process | None = None
        self.log_text = ""
        self.errors = ""

    async def _register(self, count: int, expires: int) -> None:
        name = f"register-{expires}.xml"
        (self.dir / name).write_text(register_xml(self.port, expires), encoding="ascii")
        rows = [f"{ext};{agent_password(ext)}"
                for ext in (str(FIRST_AGENT + i) for i in range(count))]
        (self.dir / f"agents-{count}.csv").write_text("SEQUENTIAL\n" + "\n".join(rows) + "\n",
                                                      encoding="ascii")
        code, err = await _sipp(
            self.pbx, self.target, "-sf", f"{self.inside}/{name}",
            "-inf", f"{self.inside}/agents-{count}.csv", "-i", "127.0.0.1",
            "-m", str(count), "-r", "50", "-l", "50", "-nostdin", "-timeout", "60s",
            "-timeout_error", limit=90)
        if code != 0:
            raise LoadTestError(f"SIPp could not (un)register the agents (exit {code}): "
                                f"{err.strip()[-300:]}")

    async def __aenter__(self) -> AgentPhones:
        self.dir.mkdir(parents=True)
        (self.dir / "uas.xml").write_text(agent_xml(self.plan), encoding="ascii")
        await self._register(MAX_AGENTS, 0)  # a clean slate: nobody from an earlier run
        self.started = time.time()
        self._uas = await asyncio.create_subprocess_exec(
            *self.pbx.sipp_cmd(
                "-sf", f"{self.inside}/uas.xml", "-i", "127.0.0.1", "-p", str(self.port),
                "-mi", "127.0.0.1", "-trace_logs", "-log_file", f"{self.inside}/agents.log",
                "-trace_err", "-error_file", f"{self.inside}/agents-errors.log",
                "-max_recv_loops", "10000", "-nostdin"),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        await asyncio.sleep(0.5)
        if self._uas.returncode is not None:
            err = await self._uas.stderr.read() if self._uas.stderr else b""
            raise LoadTestError(f"the agents' SIPp UAS did not start: {err.decode()[-300:]}")
        await self._register(self.plan.count, 3600)
        return self

    def read_log(self) -> list[PhoneEvent]:
        path = self.dir / "agents.log"
        self.log_text = path.read_text(errors="replace") if path.exists() else ""
        return parse_agent_log(self.log_text, self.started)

    async def __aexit__(self, *exc: object) -> None:
        try:
            with contextlib.suppress(LoadTestError, TimeoutError):
                await self._register(MAX_AGENTS, 0)
        finally:
            if self._uas is not None and self._uas.returncode is None:
                self._uas.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(5):
                        await self._uas.wait()
                except TimeoutError:
                    self._uas.kill()
                    await self._uas.wait()
            self.read_log()
            err = self.dir / "agents-errors.log"
            self.errors = err.read_text(errors="replace")[-4000:] if err.exists() else ""
            if self.keep_errors is not None and err.exists():
                self.keep_errors.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(err, self.keep_errors)
            shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class CallerRun:
    returncode: int
    started: float
    seconds: float
    calls: dict[str, CallerCall]
    stats: dict[str, str]
    errors: str


async def run_callers(pbx: Any, plan: CallerPlan, numbers: Sequence[str], *, target: str
                      ) -> CallerRun:
    from simulate.loadtest import parse_sipp_stats

    inside = f"/tmp/ivr-acdcallers-{os.getpid()}-{time.monotonic_ns()}"
    host = pbx.in_root(inside)
    host.mkdir(parents=True)
    try:
        (host / "callers.xml").write_text(caller_xml(plan), encoding="ascii")
        (host / "callers.csv").write_text("SEQUENTIAL\n" + "\n".join(numbers) + "\n",
                                          encoding="ascii")
        started = time.time()
        code, err = await _sipp(
            pbx, target, "-sf", f"{inside}/callers.xml", "-inf", f"{inside}/callers.csv",
            "-i", "127.0.0.1", "-mi", "127.0.0.1", "-mp", str(plan.media_port),
            "-r", f"{plan.rate:g}", "-rp", "1000", "-m", str(plan.calls),
            "-l", str(plan.max_calls), "-trace_logs", "-log_file", f"{inside}/calls.log",
            "-trace_stat", "-stf", f"{inside}/stats.csv", "-fd", "1",
            "-trace_err", "-error_file", f"{inside}/errors.log", "-max_recv_loops", "10000",
            "-nostdin", "-timeout", f"{plan.duration + plan.max_wait + 120:.0f}s",
            "-timeout_error", limit=plan.duration + plan.max_wait + 180)

        def read(name: str) -> str:
            p = host / name
            return p.read_text(errors="replace") if p.exists() else ""

        return CallerRun(code, started, time.time() - started,
                         parse_caller_log(read("calls.log"), started),
                         parse_sipp_stats(read("stats.csv")), (err + read("errors.log"))[-4000:])
    finally:
        shutil.rmtree(host, ignore_errors=True)


# ------------------------------------------------------------------ the daemon


def daemon_env(flows: Path, router: str, roster: Path, prefix: str, *, soak: bool = False
               ) -> dict[str, str]:
    """Environment for `ivr-engine serve` of one router: the generated flow, MQTT on (the ACD's
    events and agent commands), the ACD on or off (`[acd]`, or IVR_ACD_ROSTER before it).

    Side by side, the ACD is set like hotline-load: no wait announcements (app_queue's
    announce-position = no) and no pause after missed rings (app_queue has no autopause). The
    soak keeps the ACD's own pause after `max_misses` (the soak's agents come back from it)."""
    env = {
        "IVR_ENGINE_FLOWS_DIR": str(flows),
        "IVR_ENGINE_MQTT_ENABLED": "true",
        "IVR_ENGINE_MQTT_TOPIC_PREFIX": prefix,
    }
    from ivr_engine.config import Settings

    acd_section = "acd" in Settings.__dataclass_fields__
    if router == "acd":
        env["IVR_ACD_ROSTER"] = str(roster)
        if acd_section:
            env["IVR_ENGINE_ACD_ENABLED"] = "true"
            env["IVR_ENGINE_ACD_ROSTER"] = str(roster)
            env["IVR_ENGINE_ACD_ANNOUNCE_EVERY"] = "0"
            if not soak:
                env["IVR_ENGINE_ACD_MAX_MISSES"] = "100"
    elif acd_section:
        env["IVR_ENGINE_ACD_ENABLED"] = "false"
    return env


async def wait_port_free(port: int, within: float = 120.0) -> None:
    """The FastAGI port may still be held by a daemon that is stopping (ours or a test's)."""
    deadline = time.monotonic() + within
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise LoadTestError(f"127.0.0.1:{port} is still taken after {within:.0f} s "
                                        f"(another daemon is serving FastAGI)") from None
        await asyncio.sleep(1.0)


def write_run_files(folder: Path, agents: AgentPlan) -> Path:
    """The generated flow and roster of a run; returns the roster's path."""
    (folder / "flows").mkdir(parents=True, exist_ok=True)
    (folder / "flows" / "hotline.yaml").write_text(LOAD_FLOW, encoding="utf-8")
    roster = folder / "roster.yaml"
    roster.write_text(roster_yaml(agents), encoding="utf-8")
    return roster


@contextlib.asynccontextmanager
async def router_daemon(folder: Path, router: str, agents: AgentPlan, *, log_level: str = "INFO",
                        soak: bool = False) -> AsyncIterator[tuple[Any, str]]:
    """A spawned daemon for `router` with its own files under `folder/<router>/daemon`."""
    from simulate import loadtest as lt

    roster = write_run_files(folder, agents)
    workdir = folder / router / "daemon"
    prefix = f"ivr-load-{os.getpid()}-{router}"
    daemon = lt.SpawnedDaemon(workdir, log_level=log_level, customers=0)
    daemon.env.pop("IVR_ACD_ROSTER", None)
    daemon.env.update(daemon_env(folder / "flows", router, roster, prefix, soak=soak))
    await wait_port_free(4573)
    await asyncio.to_thread(daemon.start, 180.0)
    try:
        yield daemon, prefix
    finally:
        code = await asyncio.to_thread(daemon.stop)
        if code not in (0, None):
            raise LoadTestError(f"the {router} daemon exited with {code}")


async def wait_agents_ready(mqtt: MqttWatcher, agents: AgentPlan, within: float = 30.0
                            ) -> int:
    """Until the ACD has every run agent logged in (their phones registered)."""
    deadline = time.monotonic() + within
    ready = 0
    while time.monotonic() < deadline:
        reply = await mqtt.command("list")
        states = {a["agent"]: a["state"] for a in reply.get("agents", [])}
        ready = sum(1 for ext in agents.agents if states.get(ext) not in (None, "logged-out"))
        if ready == agents.count:
            return ready
        await asyncio.sleep(0.5)
    raise LoadTestError(f"only {ready} of {agents.count} agents logged in to the ACD")


async def wait_app_queue_ready(pbx: Any, agents: AgentPlan, within: float = 30.0) -> int:
    """Until app_queue sees every run agent's phone (its member is not Unavailable)."""
    deadline = time.monotonic() + within
    ready = 0
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(pbx.cli, f"queue show {APP_QUEUE}")
        up = {_agent_of(line.split("(", 2)[1].split(")")[0])
              for line in str(text).splitlines()
              if "(PJSIP/" in line and "(Unavailable)" not in line}
        ready = sum(1 for ext in agents.agents if ext in up)
        if ready == agents.count:
            return ready
        await asyncio.sleep(0.5)
    raise LoadTestError(f"app_queue sees only {ready} of {agents.count} agents")


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


async def run_router_step(pbx: Any, router: str, callers: CallerPlan, agents: AgentPlan, *,
                          router_index: int, step: int, daemon_pid: int, daemon_log: Path,
                          ami: AmiWatcher, mqtt: MqttWatcher | None,
                          phones: AgentPhones, sl_threshold: float,
                          folder: Path | None = None) -> RouterStep:
    """One rate through one router: SIPp callers while AMI, MQTT and /proc are watched."""
    from simulate import loadtest as lt

    callers.check()
    numbers = caller_numbers(callers.calls, router_index, step)
    procs: list[lt.ProcSample] = []
    log_start = lt._size(daemon_log)
    mark = pbx.mark()
    ami_start = len(ami.events)
    t0 = time.time()
    async with asyncio.TaskGroup() as tg:
        sampler = tg.create_task(lt.sample_proc(daemon_pid, procs), name="acdload-proc")
        try:
            run = await run_callers(pbx, callers, numbers, target=f"127.0.0.1:{pbx.sip_port}")
            await asyncio.sleep(2.0)  # the last events reach AMI and MQTT
        finally:
            sampler.cancel()
    ami_events = ami.events[ami_start:]
    if router == "acd" and mqtt is not None:
        events = acd_events(mqtt.since(t0 - 1))
    else:
        events = app_queue_events(ami_events)
    events = [e for e in events if e.t >= t0 - 1]
    numbers_of = {uid: num for uid, num in ami.numbers().items() if num in set(numbers)}
    calls = join_calls(run.calls, numbers_of, events)
    if folder is not None:  # the raw material of the step, for whoever doubts a number
        await asyncio.to_thread(write_jsonl, folder / f"{router}-{callers.rate:g}cps-events.jsonl",
                                [asdict(e) for e in events])
        await asyncio.to_thread(write_jsonl, folder / f"{router}-{callers.rate:g}cps-calls.jsonl",
                                [asdict(c) for c in calls])
    phone = [e for e in phones.read_log() if e.t >= t0 - 1]
    lines = pbx.lines_since(mark)
    fallbacks = sum(1 for line in lines if "ivr-fallback" in line
                    or "without the ACD" in line)
    dlog = await asyncio.to_thread(lt.parse_daemon_log, lt.read_lines(daemon_log, log_start),
                                   t0 - 1, time.time() + 1)
    cpu = None
    if len(procs) >= 2 and procs[-1].t > procs[0].t:
        cpu = 100 * (procs[-1].cpu - procs[0].cpu) / (procs[-1].t - procs[0].t)
    return summarise(router, callers, agents, calls, events, sl_threshold=sl_threshold, t0=t0,
                     phone=phone, pbx_fallbacks=fallbacks, daemon_failed=dlog.failed,
                     cpu=cpu, rss_peak=max((p.rss for p in procs), default=None))


@dataclass
class CompareRun:
    agents: AgentPlan
    steps: list[RouterStep]
    context: dict[str, Any]


async def run_compare(pbx: Any, folder: Path, agents: AgentPlan, plans: Sequence[CallerPlan],
                      *, routers: Sequence[str] = ROUTERS, sl_threshold: float = 20.0,
                      pause: float = 5.0, stop_on_failure: bool = False,
                      log_level: str = "INFO") -> CompareRun:
    """Every rate of `plans` through each router in turn, with the same agents."""
    agents.check()
    for router in routers:
        if router not in ROUTERS:
            raise LoadTestError(f"router: one of {', '.join(ROUTERS)}")
    target = f"127.0.0.1:{pbx.sip_port}"
    steps: list[RouterStep] = []
    ami = AmiWatcher(pbx.listeners.ami_port)
    await ami.start()
    try:
        async with AgentPhones(pbx, agents, target=target,
                               keep_errors=folder / "agents-sipp-errors.log") as phones:
            for r_index, router in enumerate(routers):
                async with router_daemon(folder, router, agents, log_level=log_level) as (
                        daemon, prefix):
                    mqtt = MqttWatcher(prefix)
                    await mqtt.start()
                    try:
                        if router == "acd":
                            await wait_agents_ready(mqtt, agents)
                        else:
                            await wait_app_queue_ready(pbx, agents)
                        for i, plan in enumerate(plans):
                            step = await run_router_step(
                                pbx, router, plan, agents, router_index=r_index, step=i,
                                daemon_pid=daemon.proc.pid, daemon_log=daemon.log, ami=ami,
                                mqtt=mqtt, phones=phones, sl_threshold=sl_threshold,
                                folder=folder / router)
                            steps.append(step)
                            print(f"loadtest: {router} {plan.rate:g} calls/s: offered "
                                  f"{step.offered}, answered {step.answered}, abandoned "
                                  f"{step.abandoned}, failed {step.failed}, decision p50 "
                                  f"{step.decision_ms_p50 or 0:.0f} ms", flush=True,
                                  file=sys.stderr)
                            if step.failed and stop_on_failure:
                                break
                            await asyncio.sleep(pause)
                    finally:
                        await mqtt.close()
    finally:
        await ami.close()
    context = {
        "agents": f"{agents.count} (2000-{FIRST_AGENT + agents.count - 1}), ring "
                  f"{agents.ring[0]:g}-{agents.ring[1]:g} s, talk {agents.talk[0]:g}-"
                  f"{agents.talk[1]:g} s, no answer {agents.no_answer:.0%}; capacity about "
                  f"{agents.capacity:.2f} calls/s",
        "routers": ", ".join(routers),
        "service level threshold s": sl_threshold,
        "machine": f"{os.cpu_count()} cores; SIPp, Asterisk and the daemon share them",
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    return CompareRun(agents, steps, context)
