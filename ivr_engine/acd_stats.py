"""Live ACD statistics: per queue, every second, as retained MQTT topics.

    <prefix>/acd/stats/<queue>    one per queue (the roster's queues and any queue seen)
    <prefix>/acd/stats/_all       the whole ACD

docs/acd-stats.md has the payload field by field. In short, for voice calls:

- `waiting`: calls in the queue not answered yet (those being offered to an agent included;
  `ringing` says how many of them are); `longest_wait`: seconds since the oldest of them
  entered the ACD (a call moved to another queue by an overflow rule keeps its wait).
- `today` (the daemon's local day) and `recent` (a rolling window, 15 minutes by default):
  offered, answered, answered within the service-level threshold (20 s: holdtime <= 20 s),
  abandoned, overflowed (left by a max-wait or empty-queue rule), completed (conversation
  ended), and from them: `service_level` = answered within 20 s / (answered + abandoned +
  overflowed), `abandon_rate` = abandoned / (answered + abandoned + overflowed), `asa` = mean
  holdtime of the answered calls, `aht` = mean talk time (CONNECT to COMPLETE*) of the
  completed ones. A window counts each outcome at the time it happened.
- `agents`: how many agents are ready, reserved, on-call, wrap-up, paused, logged-out; per
  queue, the agents whose skills match a requirement the queue's calls carried today (or one
  of its relaxation steps); `null` until the queue has had a call.
- `tasks_waiting`: non-voice work (chat, sms, email, callback) waiting, by channel; it does not
  enter the voice figures.

Everything about calls is computed from the router's queue events (acd/queue_events.py) in O(1)
per event (amortised: the rolling window expires what it added; the longest wait is the head
of a heap with lazy deletion). Agent states are read from `router.agents()` once per publish:
the end of wrap-up is a timer in the matcher, not a queue event. `ivr-engine report` uses the
same `Tally` and `deltas`, so the live day and the report count alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import logging
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from acd.errors import AcdError
from acd.queue_events import QueueEvent
from acd.requirement import Requirement, parse
from ivr_engine.errors import IvrError
from ivr_engine.queue_log import QueueLog, store_path

if TYPE_CHECKING:
    from acd.roster import Roster
    from ivr_engine.acd_gateway import AcdService

log = logging.getLogger(__name__)

ALL = "_all"
TOPIC = "acd/stats"
SL_THRESHOLD = 20.0
WINDOW = 900.0
VOICE = "voice"
AGENT_STATES = ("ready", "reserved", "on-call", "wrap-up", "paused", "logged-out")


def local_day(at: float) -> str:
    """The local calendar day of an epoch time, as YYYY-MM-DD."""
    return dt.datetime.fromtimestamp(at).date().isoformat()


def work_kind(event: QueueEvent) -> str:
    """ENTERQUEUE's `channel` is the Asterisk channel name of a call (PJSIP/...) and the
    channel kind (chat, sms, ...) of a non-voice task."""
    channel = str(event.data.get("channel") or "")
    return VOICE if not channel or "/" in channel else channel


class Delta(NamedTuple):
    """What one event adds to a queue's counts."""

    offered: int = 0
    answered: int = 0
    answered_in_sl: int = 0
    abandoned: int = 0
    overflowed: int = 0
    completed: int = 0
    hold_time: float = 0.0
    talk_time: float = 0.0


@dataclass(slots=True)
class Tally:
    offered: int = 0
    answered: int = 0
    answered_in_sl: int = 0
    abandoned: int = 0
    overflowed: int = 0
    completed: int = 0
    hold_time: float = 0.0
    talk_time: float = 0.0

    def add(self, d: Delta, sign: int = 1) -> None:
        self.offered += sign * d.offered
        self.answered += sign * d.answered
        self.answered_in_sl += sign * d.answered_in_sl
        self.abandoned += sign * d.abandoned
        self.overflowed += sign * d.overflowed
        self.completed += sign * d.completed
        # Sums of floats added and taken away drift; an empty tally is exactly zero.
        self.hold_time = self.hold_time + sign * d.hold_time if self.answered else 0.0
        self.talk_time = self.talk_time + sign * d.talk_time if self.completed else 0.0

    def to_json(self) -> dict[str, Any]:
        ended = self.answered + self.abandoned + self.overflowed
        return {
            "offered": self.offered,
            "answered": self.answered,
            "answered_in_sl": self.answered_in_sl,
            "abandoned": self.abandoned,
            "overflowed": self.overflowed,
            "completed": self.completed,
            "service_level": round(self.answered_in_sl / ended, 4) if ended else None,
            "abandon_rate": round(self.abandoned / ended, 4) if ended else None,
            "asa": round(self.hold_time / self.answered, 3) if self.answered else None,
            "aht": round(self.talk_time / self.completed, 3) if self.completed else None,
            "talk_time": round(self.talk_time, 3),
        }


def _seconds(event: QueueEvent, key: str) -> float:
    try:
        return max(0.0, float(event.data.get(key) or 0.0))
    except (TypeError, ValueError):
        return 0.0


def deltas(
    event: QueueEvent, *, requeued: bool, threshold: float = SL_THRESHOLD
) -> list[tuple[str, Delta]]:
    """What a voice call's event adds, per scope (its queue, `ALL`, an overflow's target).

    `requeued`: for EXITWITHTIMEOUT, whether the call went on waiting in the target queue of
    the ACD (then it is offered there and has not left the ACD) or left it."""
    q = event.queue
    verb = event.verb
    if verb == "ENTERQUEUE":
        d = Delta(offered=1)
        return [(q, d), (ALL, d)]
    if verb == "CONNECT":
        hold = _seconds(event, "holdtime")
        d = Delta(answered=1, answered_in_sl=int(hold <= threshold), hold_time=hold)
        return [(q, d), (ALL, d)]
    if verb in ("COMPLETECALLER", "COMPLETEAGENT"):
        d = Delta(completed=1, talk_time=_seconds(event, "calltime"))
        return [(q, d), (ALL, d)]
    if verb == "ABANDON":
        d = Delta(abandoned=1)
        return [(q, d), (ALL, d)]
    if verb == "EXITWITHTIMEOUT":
        out = Delta(overflowed=1)
        target = str(event.data.get("target") or "")
        if requeued:
            return [(q, out), (target, Delta(offered=1))]
        return [(q, out), (ALL, out)]
    return []


@dataclass(slots=True)
class _Call:
    queue: str
    entered: float
    kind: str
    waiting: bool = True
    ringing: bool = False


@dataclass(slots=True)
class _Window:
    """A rolling window of deltas: what is older than `length` seconds is taken away."""

    length: float
    tallies: defaultdict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    log: deque[tuple[float, str, Delta]] = field(default_factory=deque)

    def add(self, at: float, scope: str, d: Delta) -> None:
        self.tallies[scope].add(d)
        self.log.append((at, scope, d))

    def expire(self, now: float) -> None:
        edge = now - self.length
        while self.log and self.log[0][0] <= edge:
            _, scope, d = self.log.popleft()
            self.tallies[scope].add(d, -1)


class QueueStats:
    """The live figures, fed by `on_event` (a router listener) and read by `snapshot`.

    `is_acd_queue(name)` says whether an overflow target is a queue of the ACD (the call waits
    on there) or somewhere else (operators, voicemail: the call left the ACD); an
    EXITWITHTIMEOUT with a boolean `requeued` in its data is taken at its word.
    """

    def __init__(
        self,
        *,
        threshold: float = SL_THRESHOLD,
        window: float = WINDOW,
        is_acd_queue: Callable[[str], bool] = lambda name: False,
        day_of: Callable[[float], str] = local_day,
    ) -> None:
        if threshold <= 0 or window <= 0:
            raise ValueError("the service-level threshold and the window must be > 0")
        self.threshold = threshold
        self.window = window
        self._is_acd_queue = is_acd_queue
        self._day_of = day_of
        self.day = ""
        self._day_ends = float("-inf")
        self.today: defaultdict[str, Tally] = defaultdict(Tally)
        self.recent = _Window(window)
        self.queues: set[str] = set()
        self._calls: dict[str, _Call] = {}
        self._waiting: defaultdict[str, int] = defaultdict(int)
        self._ringing: defaultdict[str, int] = defaultdict(int)
        self._heads: defaultdict[str, list[tuple[float, str]]] = defaultdict(list)
        self._tasks: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.events = 0
        self._before: set[str] = set()  # calls that entered before a restart (`replay`)

    def replay(self, events: Iterable[QueueEvent]) -> int:
        """Rebuild today's and the window's counts from the queue log after a restart. Which
        calls waited then is not taken over: the router rebuilds those that still wait, and
        their new ENTERQUEUE is not offered twice. Returns the events replayed."""
        count = 0
        for event in events:
            self.on_event(event)
            count += 1
            if event.verb == "ENTERQUEUE":
                self._before.add(event.call_id)
        self._calls.clear()
        self._waiting.clear()
        self._ringing.clear()
        self._heads.clear()
        self._tasks.clear()
        return count

    # ------------------------------------------------------------------ events in

    def __call__(self, event: QueueEvent) -> None:
        self.on_event(event)

    def on_event(self, event: QueueEvent) -> None:
        self.events += 1
        verb = event.verb
        if not event.call_id:
            return  # agent events: agent states are read from the router
        self._roll(event.time)
        self.recent.expire(event.time)
        if event.queue:
            self.queues.add(event.queue)
        call = self._calls.get(event.call_id)
        again = False
        if verb == "ENTERQUEUE":
            # The same call entering again (the router rebuilt it after a restart) is one call.
            again = call is not None or event.call_id in self._before
            if call is not None:
                self._leave(event.call_id, call)
            kind = work_kind(event)
            call = _Call(event.queue, event.time, kind)
            self._calls[event.call_id] = call
            if kind != VOICE:
                self._tasks[event.queue][kind] += 1
                return
            self._join(event.call_id, call)
        elif call is not None and call.kind != VOICE:
            self._task_event(event, call)
            return
        elif verb == "RINGING":
            if call is not None and call.waiting and not call.ringing:
                call.ringing = True
                self._ringing[call.queue] += 1
                self._ringing[ALL] += 1
        elif verb == "RINGNOANSWER":
            self._unring(call)
        elif verb == "CONNECT":
            if call is not None:
                self._unwait(call)
        elif verb in ("COMPLETECALLER", "COMPLETEAGENT", "ABANDON"):
            if call is not None:
                self._leave(event.call_id, call)
        requeued = False
        if verb == "EXITWITHTIMEOUT":
            requeued = self._overflow(event, call)
        if again:
            return
        for scope, d in deltas(event, requeued=requeued, threshold=self.threshold):
            self.today[scope].add(d)
            self.recent.add(event.time, scope, d)

    def _task_event(self, event: QueueEvent, call: _Call) -> None:
        """Non-voice work: only its waiting count per queue and channel."""
        verb = event.verb
        if verb == "EXITWITHTIMEOUT" and self._requeued(event):
            target = str(event.data.get("target") or "")
            if call.waiting:
                self._tasks[call.queue][call.kind] -= 1
                self._tasks[target][call.kind] += 1
            call.queue = target
            return
        if call.waiting and verb in ("CONNECT", "ABANDON", "EXITWITHTIMEOUT"):
            call.waiting = False
            self._tasks[call.queue][call.kind] -= 1
        if verb in ("COMPLETECALLER", "COMPLETEAGENT", "ABANDON", "EXITWITHTIMEOUT"):
            del self._calls[event.call_id]

    def _join(self, call_id: str, call: _Call) -> None:
        self._waiting[call.queue] += 1
        self._waiting[ALL] += 1
        heapq.heappush(self._heads[call.queue], (call.entered, call_id))
        heapq.heappush(self._heads[ALL], (call.entered, call_id))

    def _unring(self, call: _Call | None) -> None:
        if call is not None and call.ringing:
            call.ringing = False
            self._ringing[call.queue] -= 1
            self._ringing[ALL] -= 1

    def _unwait(self, call: _Call) -> None:
        self._unring(call)
        if call.waiting:
            call.waiting = False
            self._waiting[call.queue] -= 1
            self._waiting[ALL] -= 1

    def _leave(self, call_id: str, call: _Call) -> None:
        if call.kind == VOICE:
            self._unwait(call)
        elif call.waiting:
            self._tasks[call.queue][call.kind] -= 1
        del self._calls[call_id]

    def _requeued(self, event: QueueEvent) -> bool:
        flag = event.data.get("requeued")
        if isinstance(flag, bool):
            return flag
        target = str(event.data.get("target") or "")
        return bool(target) and target != event.queue and self._is_acd_queue(target)

    def _overflow(self, event: QueueEvent, call: _Call | None) -> bool:
        requeued = self._requeued(event)
        if call is None:
            return requeued
        if not requeued:
            self._leave(event.call_id, call)
            return False
        target = str(event.data.get("target") or "")
        self._unring(call)
        if call.waiting:
            self._waiting[call.queue] -= 1
            self._waiting[target] += 1
        call.queue = target
        call.waiting = True
        heapq.heappush(self._heads[target], (call.entered, event.call_id))
        self.queues.add(target)
        return True

    def _roll(self, at: float) -> None:
        if at < self._day_ends:
            return
        day = self._day_of(at)
        if day > self.day:
            self.day = day
            self.today.clear()
            self._before.clear()
        if self._day_of is local_day:  # the next check at the next local midnight
            start = dt.datetime.fromtimestamp(at).date() + dt.timedelta(days=1)
            self._day_ends = dt.datetime.combine(start, dt.time()).timestamp()

    # ------------------------------------------------------------------ figures out

    def waiting(self, scope: str) -> int:
        return self._waiting.get(scope, 0)

    def longest_wait(self, scope: str, now: float) -> float:
        heap = self._heads.get(scope)
        while heap:
            entered, call_id = heap[0]
            call = self._calls.get(call_id)
            if (
                call is not None
                and call.waiting
                and call.entered == entered
                and (scope == ALL or call.queue == scope)
            ):
                return round(max(0.0, now - entered), 3)
            heapq.heappop(heap)
        return 0.0

    def snapshot(
        self,
        now: float,
        *,
        queues: Iterable[str] = (),
        agents: Mapping[str, str] | None = None,
        serving: Mapping[str, Iterable[str]] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """The payload of every scope: `queues` (the roster's) and those seen, and `ALL`.
        `agents` maps agent -> state; `serving` queue -> its agents."""
        self._roll(now)
        self.recent.expire(now)
        out: dict[str, dict[str, Any]] = {}
        for scope in sorted({*queues, *self.queues} - {ALL}) + [ALL]:
            if scope == ALL:
                counts = _count_states(agents, None)
                tasks: dict[str, int] = defaultdict(int)
                for per_queue in self._tasks.values():
                    for kind, n in per_queue.items():
                        tasks[kind] += n
            else:
                members = None if serving is None else serving.get(scope)
                counts = _count_states(agents, members) if members is not None else None
                tasks = self._tasks.get(scope, defaultdict(int))
            out[scope] = {
                "event": "QueueStats",
                "queue": scope,
                "at": round(now, 3),
                "waiting": self._waiting.get(scope, 0),
                "ringing": self._ringing.get(scope, 0),
                "longest_wait": self.longest_wait(scope, now),
                "sl_threshold": self.threshold,
                "today": {"date": self.day, **self.today.get(scope, Tally()).to_json()},
                "recent": {
                    "window": self.window,
                    **self.recent.tallies.get(scope, Tally()).to_json(),
                },
                "agents": counts,
                "tasks_waiting": {k: n for k, n in sorted(tasks.items()) if n},
            }
        return out


def _count_states(
    agents: Mapping[str, str] | None, members: Iterable[str] | None
) -> dict[str, int] | None:
    if agents is None:
        return None
    counts = dict.fromkeys(AGENT_STATES, 0)
    ids = agents.keys() if members is None else members
    for agent in ids:
        state = agents.get(agent)
        if state is not None:
            counts[state] = counts.get(state, 0) + 1
    return counts


class ServingAgents:
    """Which roster agents serve each queue: those with voice capacity whose skills match a
    requirement the queue's calls carried (noted at ENTERQUEUE) or one of the queue's
    relaxation steps. Recomputed when the roster is reloaded or a new requirement appears."""

    def __init__(self) -> None:
        self._requirements: defaultdict[str, set[str]] = defaultdict(set)
        self._cache: dict[str, frozenset[str]] = {}
        self._roster: Roster | None = None

    def note(self, queue: str, requirement: str) -> None:
        texts = self._requirements[queue]
        if requirement not in texts:
            texts.add(requirement)
            self._cache.pop(queue, None)

    def serving(self, roster: Roster) -> dict[str, frozenset[str]]:
        if roster is not self._roster:
            self._roster = roster
            self._cache.clear()
        for queue, texts in self._requirements.items():
            if queue not in self._cache:
                self._cache[queue] = self._compute(roster, queue, texts)
        return dict(self._cache)

    @staticmethod
    def _compute(roster: Roster, queue: str, texts: Iterable[str]) -> frozenset[str]:
        accepts = [*texts, *(accept for _, accept in roster.policy(queue).steps)]
        requirements: list[Requirement] = []
        for text in accepts:
            try:
                requirements.append(parse(text))
            except AcdError:
                log.warning("queue %s: requirement %r does not parse; ignored", queue, text)
        return frozenset(
            agent_id
            for agent_id, entry in roster.agents.items()
            if VOICE in entry.spec.capacity
            and any(r.matches(entry.spec.skills) for r in requirements)
        )


async def replay_today(
    stats: QueueStats, path: Path, *, now: float | None = None, limit: float = 5.0
) -> int:
    """Feed today's events from the queue log at `path` into `stats` (after a restart the day's
    figures go on, not from zero). A log that is missing, locked or slower than `limit` is
    logged and the figures start from zero: the ACD waits at most `limit` s for them."""
    at = time.time() if now is None else now
    midnight = dt.datetime.combine(dt.datetime.fromtimestamp(at).date(), dt.time()).timestamp()
    try:
        async with asyncio.timeout(limit):
            async with await QueueLog.open(path, readonly=True, busy_timeout=1.0) as queue_log:
                events = await queue_log.events(midnight, at + 1.0)
    except (IvrError, TimeoutError) as exc:
        log.info("ACD statistics: today's figures start from zero (queue log %s: %s)", path, exc)
        return 0
    count = stats.replay(events)
    log.info("ACD statistics: today's figures rebuilt from %d queue events in %s", count, path)
    return count


def topic_name(queue: str) -> str:
    """A queue name as one MQTT topic level (no separators or wildcards)."""
    return "".join("_" if c in "/+#" else c for c in queue) or "_"


@contextlib.asynccontextmanager
async def acd_stats_extension(
    service: AcdService, *, interval: float = 1.0
) -> AsyncIterator[QueueStats]:
    """The AcdService extension: feeds on the router's events and publishes every second."""
    router = service.router
    stats = QueueStats(
        is_acd_queue=lambda name: name != "*" and name in router.roster.queues,
    )
    serving = ServingAgents()
    try:
        await replay_today(stats, store_path(service))
    except IvrError as exc:  # the settings could not be read again: figures from zero
        log.warning("ACD statistics: today's figures start from zero (%s)", exc)

    def listener(event: QueueEvent) -> None:
        stats.on_event(event)
        if event.verb == "ENTERQUEUE":
            queue = event.queue
        elif event.verb == "EXITWITHTIMEOUT":
            queue = str(event.data.get("target") or "")
        else:
            return
        call = router.calls.get(event.call_id)
        if call is not None and call.kind == VOICE and queue:
            serving.note(queue, call.requirement)

    def publish_once() -> None:
        roster = router.roster
        states = {a["agent"]: str(a["state"]) for a in router.agents()}
        snapshot = stats.snapshot(
            time.time(),
            queues=[q for q in roster.queues if q != "*"],
            agents=states,
            serving=serving.serving(roster),
        )
        for scope, payload in snapshot.items():
            service.publisher.publish(f"{TOPIC}/{topic_name(scope)}", payload, retain=True)

    async def publisher() -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                publish_once()
            except Exception:  # a bug here must not stop the next second's figures
                failures += 1
                if failures == 1 or failures % 600 == 0:
                    log.exception("ACD statistics could not be published (%d times)", failures)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    router.listeners.append(listener)
    task = asyncio.get_running_loop().create_task(publisher(), name="acd-stats-publisher")
    try:
        yield stats
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(ValueError):
            router.listeners.remove(listener)


# ---------------------------------------------------------------------- the report


@dataclass(slots=True)
class AgentTally:
    offered: int = 0
    answered: int = 0
    ring_no_answer: int = 0
    completed: int = 0
    talk_time: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "answered": self.answered,
            "ring_no_answer": self.ring_no_answer,
            "completed": self.completed,
            "talk_time": round(self.talk_time, 3),
            "aht": round(self.talk_time / self.completed, 3) if self.completed else None,
        }


def report(events: Iterable[QueueEvent], *, threshold: float = SL_THRESHOLD) -> dict[str, Any]:
    """Per queue, for the whole ACD (`all`) and per agent, over a period's events: the same
    definitions as the live `today` figures (voice calls; tasks are left out). An overflow is a
    move inside the ACD when the event says `requeued`, or else when the call has an event in
    the target queue in the period."""
    events = list(events)
    tasks: set[str] = set()
    seen: set[tuple[str, str]] = set()
    for event in events:
        if event.call_id:
            seen.add((event.call_id, event.queue))
            if event.verb == "ENTERQUEUE" and work_kind(event) != VOICE:
                tasks.add(event.call_id)
    queues: defaultdict[str, Tally] = defaultdict(Tally)
    agents: defaultdict[str, AgentTally] = defaultdict(AgentTally)
    entered: set[tuple[str, str]] = set()
    for event in events:
        if not event.call_id or event.call_id in tasks:
            continue
        if event.verb == "ENTERQUEUE":
            if (event.call_id, event.queue) in entered:
                continue  # entered again: the router rebuilt it after a restart
            entered.add((event.call_id, event.queue))
        requeued = False
        if event.verb == "EXITWITHTIMEOUT":
            flag = event.data.get("requeued")
            target = str(event.data.get("target") or "")
            requeued = (
                flag
                if isinstance(flag, bool)
                else target != event.queue and (event.call_id, target) in seen
            )
        for scope, d in deltas(event, requeued=requeued, threshold=threshold):
            queues[scope].add(d)
        if event.agent:
            agent = agents[event.agent]
            if event.verb == "RINGING":
                agent.offered += 1
            elif event.verb == "CONNECT":
                agent.answered += 1
            elif event.verb == "RINGNOANSWER":
                agent.ring_no_answer += 1
            elif event.verb in ("COMPLETECALLER", "COMPLETEAGENT"):
                agent.completed += 1
                agent.talk_time += _seconds(event, "calltime")
    total = queues.pop(ALL, Tally())
    return {
        "sl_threshold": threshold,
        "events": len(events),
        "queues": {name: queues[name].to_json() for name in sorted(queues)},
        "all": total.to_json(),
        "agents": {name: agents[name].to_json() for name in sorted(agents)},
    }
