"""The ACD router: async glue between the PBX's events, the matcher and the PBX's commands.

```
 flow queue node --register()--+                      +--> Publisher (MQTT): screen pop first
 dialplan [acd-wait] ---------->|                      |
   UserEvent AcdWaiting         |   Router  --events-->| Matcher (pure) --decisions-->
 [acd-connect] AcdAnswered ---->|  loop.call_later     |
   AcdDialResult, Hangup ------>|  as the Scheduler    +--> PbxCommands: Redirect the caller
 ContactStatus (phone reg.) --->|                            to [acd-connect],<agent>
 CLI / MQTT agent commands ---->+
```

The router never blocks an event on the PBX: a decision becomes an owned, named task that
runs the PBX command; its latency (event in -> command issued, and -> command acknowledged) is
measured here and kept in `Router.latency`.

Call life, as the dialplan in `asterisk-conf/extensions.conf` drives it:

1. `register(...)`: the flow's queue node describes the call (skills, priority, screen pop);
   the flow ends with IVR_NEXT=acd and the dialplan parks the caller in `[acd-wait]`.
2. `call_waiting(call_id, channel)` (UserEvent AcdWaiting): the call enters the matcher.
3. An `Offer`: the screen pop is published on `agent/<id>/screenpop` (with `pop_sender`, the
   broker's acknowledgement is awaited), *then* the caller's channel is redirected to
   `[acd-connect]`, which Dials the agent's phone with a ring timeout. Because Dial runs in the
   caller's channel, a caller who hangs up cancels the ring in Asterisk itself: no ghost call
   can reach the agent afterwards.
4. `answered` (UserEvent AcdAnswered from Dial's U() subroutine on the agent's channel),
   `dial_result` (UserEvent AcdDialResult after Dial: NOANSWER/BUSY/... -> ring-no-answer,
   the caller back in `[acd-wait]`; ANSWER -> the conversation is over), `channel_gone`
   (AMI Hangup of the caller's channel: abandon, cancelled ring, or end of the conversation).
5. A guard timer per offer: if the PBX never reports the ring's outcome (a Redirect lost with
   an AMI drop), the offer counts as not answered after the ring timeout plus a margin, so no
   agent stays reserved for ever.

Agents: `contact_changed(endpoint, registered)` logs roster agents with `login: auto` in and
out as their phones register and unregister; `login/logout/pause/resume` are the manual verbs
(CLI, MQTT). A change the state machine forbids now (logging out a ringing agent) is kept and
applied as soon as it becomes legal. Pauses and logouts by hand are handed to an `AgentKeeper`
on every change, so that a restarted daemon can `restore_kept` them (`KeptAgent`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from acd.agent_state import AgentState
from acd.errors import AcdError, InvalidEvent, UnknownAgent
from acd.matcher import Matcher
from acd.model import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    VOICE,
    CallSpec,
    Decision,
    Offer,
    Overflowed,
    TimerKey,
    Withdraw,
)
from acd.queue_events import VERBS, QueueEvent, QueueListener
from acd.requirement import Requirement
from acd.roster import QueuePolicy, Roster, RosterAgent

log = logging.getLogger(__name__)

#: Where the dialplan takes the caller (extensions.conf).
CONNECT_CONTEXT = "acd-connect"
WAIT_CONTEXT = "acd-wait"
OPERATORS = "operators"
VOICEMAIL = "voicemail"
#: Where a voicemail overflow takes the caller (extensions-acd.conf).
VOICEMAIL_CONTEXT = "acd-voicemail"
#: Handle time assumed for the wait estimate until a queue has served calls (seconds).
DEFAULT_HANDLE_TIME = 180.0
#: Handle times kept per queue for the wait estimate.
HANDLE_SAMPLES = 50
#: Dial statuses that mean "the agent did not take it" (app_dial's DIALSTATUS).
NOT_ANSWERED = frozenset({"NOANSWER", "BUSY", "CHANUNAVAIL", "CONGESTION"})


class PbxCommands(Protocol):
    """What the router asks of the PBX. `ivr_engine.pbx_commands.AmiPbxCommands` is the real one;
    tests pass fakes. Each raises on failure (the router logs it and keeps routing)."""

    async def redirect(self, channel: str, context: str, exten: str, priority: int = 1) -> None: ...

    async def set_variable(self, channel: str, name: str, value: str) -> None: ...

    async def hangup(self, channel: str, cause: int = 16) -> None: ...


class TaskSink(Protocol):
    """Where non-voice work (chat, SMS, e-mail, web callback) goes when the matcher picks an
    agent for it: the task service delivers it on the agent's MQTT topic, or originates the
    web callback. It answers through `Router.task_accepted/_rejected/_done/_cancelled`."""

    def offer(self, call: RoutedCall, agent: str) -> None: ...

    def dropped(self, call: RoutedCall, reason: str) -> None: ...


class Publisher(Protocol):
    """Where events for agents and wallboards go (MQTT). Never blocks."""

    def publish(self, topic: str, payload: Mapping[str, Any], *, retain: bool = False) -> None: ...


class CallbackPlacer(Protocol):
    """Originates a callback: the agent's phone first, then the customer's number
    (`ivr_engine.acd_gateway` over AMI). Raises when the PBX refuses it; the outcome comes
    back through `Router.answered`, `dial_result` and `callback_result`."""

    async def place(self, call: RoutedCall, agent: str, endpoint: str) -> None: ...


@dataclass(frozen=True, slots=True)
class KeptAgent:
    """What a restarted daemon must not lose of one agent: a pause with its `reason`, or a
    logout by hand (`reason` None: the phone's registration must not log the agent back in).
    `since` is the wall clock (epoch seconds) when it began. A logout because the phone went
    away is not kept: the phone's state after the restart says it again."""

    reason: str | None
    since: float


class AgentKeeper(Protocol):
    """Where the kept agents go (`ivr_engine.agent_keep.AgentStateFile`): called with all of
    them after every change. It must not raise for storage reasons (it logs them); the router
    logs anything that escapes and routes on."""

    def keep(self, kept: Mapping[str, KeptAgent]) -> None: ...


@dataclass(frozen=True, slots=True)
class KeptCallback:
    """A callback promised to a caller (the callback key, then the caller hung up) that the
    PBX has not started yet: what a restarted daemon needs to put it back in its queue.
    `requested` and `not_before` are the wall clock (epoch seconds); `not_before` is when a
    retry after a failed attempt is due (0: at once). `priority` is the ACD's (as in
    `RoutedCall`), `caller` the number to dial. `placed` (wall clock) is when an agent's
    phone was last rung for it: a restart within that ring's time waits it out (see
    `restore_callbacks`)."""

    call_id: str
    queue: str
    requirement: str
    priority: int
    language: str
    caller: str
    screen_pop: Mapping[str, str]
    requested: float
    attempts: int = 0
    not_before: float = 0.0
    placed: float = 0.0  # wall clock of the last time an agent's phone was rung for it


class CallbackKeeper(Protocol):
    """Where the promised callbacks go (`ivr_engine.callback_keep.CallbackFile`): called with
    all of them after every change. Like `AgentKeeper`, it logs storage failures itself."""

    def keep_callbacks(self, kept: Mapping[str, KeptCallback]) -> None: ...


class LoopScheduler:
    """The matcher's Scheduler on `loop.call_later`; `at` is on the loop's clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[TimerKey], None]) -> None:
        self._loop = loop
        self._fire = fire
        self._handles: dict[TimerKey, asyncio.TimerHandle] = {}

    def schedule(self, at: float, key: TimerKey) -> None:
        old = self._handles.pop(key, None)
        if old is not None:
            old.cancel()
        self._handles[key] = self._loop.call_at(at, self._due, key)

    def cancel(self, key: TimerKey) -> None:
        handle = self._handles.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _due(self, key: TimerKey) -> None:
        self._handles.pop(key, None)
        self._fire(key)

    def cancel_all(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()

    @property
    def pending(self) -> int:
        # Not __len__: an empty scheduler must stay truthy (`scheduler or default`).
        return len(self._handles)


@dataclass
class RoutedCall:
    """What the router knows of one call beside the matcher."""

    call_id: str
    queue: str  # the flow's queue name (vip, risk, ...)
    requirement: str
    priority: int
    language: str
    screen_pop: Mapping[str, str]
    channel: str = ""
    matcher_queue: str = ""
    agent: str = ""  # offered to or connected with
    state: str = "registered"  # registered | waiting | ringing | connected | gone
    registered_at: float = 0.0
    queued_at: float = 0.0
    ring_at: float = 0.0
    connected_at: float = 0.0
    kind: str = VOICE  # the matcher channel: voice, or chat/sms/email/callback for tasks
    guard: asyncio.TimerHandle | None = None
    caller: str = ""  # the caller's number (callbacks dial it; never published unmasked)
    callback: bool = False  # the caller asked to be called back and hung up
    callback_attempts: int = 0
    callback_requested: float = 0.0  # wall clock: when the caller asked (kept for a restart)
    recording: str = ""  # MixMonitor file of the agent call, as Asterisk wrote it


@dataclass(frozen=True)
class WaitInfo:
    """What a waiting caller is told: place in its queue and the estimated wait (seconds;
    None when no agent who could take the call is working now)."""

    position: int
    estimate: float | None
    agents: int
    handle_time: float


@dataclass
class LatencyLog:
    """Decision latencies in seconds: event in -> PBX command issued (`issued`) and -> the PBX
    acknowledged it (`acked`). Bounded: the most recent `keep` samples."""

    keep: int = 100_000
    issued: deque[float] = field(default_factory=deque)
    acked: deque[float] = field(default_factory=deque)

    def add(self, samples: deque[float], value: float) -> None:
        samples.append(value)
        if len(samples) > self.keep:
            samples.popleft()

    @staticmethod
    def percentile(samples: Iterable[float], q: float) -> float:
        ordered = sorted(samples)
        if not ordered:
            return float("nan")
        index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
        return ordered[index]


def acd_priority(flow_priority: int) -> int:
    """The flows speak app_queue's QUEUE_PRIO (higher is more urgent, VIP 10); the matcher's
    priorities are 0..9 with 0 the most urgent."""
    return max(PRIORITY_MIN, PRIORITY_MAX - max(0, min(int(flow_priority), PRIORITY_MAX)))


class Router:
    """Routes calls from PBX events through a `Matcher` to `PbxCommands`. One per daemon.

    Use as `async with Router(roster, pbx, publisher) as router:`; leaving it cancels the
    timers and the PBX commands still running.
    """

    def __init__(
        self,
        roster: Roster,
        pbx: PbxCommands,
        publisher: Publisher,
        *,
        ring_timeout: float = 15.0,
        max_misses: int = 2,
        guard_margin: float = 10.0,
        clock: Callable[[], float] | None = None,
        pop_sender: Callable[[str, Mapping[str, Any]], Awaitable[None]] | None = None,
        pop_timeout: float = 1.0,
    ) -> None:
        self.roster = roster
        self.pbx = pbx
        self.publisher = publisher
        self.ring_timeout = ring_timeout
        self.guard_margin = guard_margin
        self._max_misses = max_misses
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock = clock
        self.scheduler: LoopScheduler | None = None
        self.matcher: Matcher | None = None
        self.calls: dict[str, RoutedCall] = {}
        self._by_channel: dict[str, str] = {}
        self._matcher_queues: dict[tuple[str, str], str] = {}
        self._generation = 0
        self._registered: set[str] = set()  # agents whose phone is registered
        self._deferred: dict[str, Callable[[], None]] = {}  # agent -> change to apply later
        self._tasks: set[asyncio.Task[None]] = set()
        self._registrations: deque[tuple[float, str]] = deque()
        #: Seconds a described call may take to reach [acd-wait] before it is forgotten.
        self.unclaimed_after = 120.0
        self._task_seq = 0
        #: Awaited before each ring: the pop is with the broker before the phone rings.
        self.pop_sender = pop_sender
        self.pop_timeout = pop_timeout
        self.pop_failures = 0
        self.latency = LatencyLog()
        self.offers = 0
        self.errors = 0
        #: Called with every `QueueEvent` (queue_log, live statistics); see acd/queue_events.py.
        self.listeners: list[QueueListener] = []
        self.listener_errors = 0
        self._agent_seen: dict[str, AgentState] = {}
        #: Non-voice tasks are offered here (None: `submit_task` refuses them).
        self.task_sink: TaskSink | None = None
        #: Callbacks are originated here (None: the callback key is not honoured).
        self.callback_placer: CallbackPlacer | None = None
        #: Keys a waiting caller may press ("" = none); see `key_pressed`.
        self.callback_key = "1"
        self.operator_key = "0"
        #: A callback whose customer does not answer is tried again this many times, after
        #: `callback_retry_after` seconds, as a new arrival in its queue.
        self.callback_retries = 1
        self.callback_retry_after = 60.0
        self._handle_times: dict[str, deque[float]] = {}
        self._reach: dict[str, Requirement] = {}  # matcher queue -> its last relaxation step
        self._retries: set[asyncio.TimerHandle] = set()
        #: Pauses and logouts by hand go here on every change (None: in memory only). Set it
        #: before the first agent logs in (`restore_kept`).
        self.keeper: AgentKeeper | None = None
        self._kept: dict[str, KeptAgent] = {}
        self._kept_pending: set[str] = set()  # kept before the restart, not applied yet
        self._out_by_hand: set[str] = set()  # logged out by a verb, not by their phone
        self._restored: list[int] | None = None  # [pauses, logouts] until reported
        #: Callbacks promised and not yet started go here on every change (None: in memory
        #: only); `restore_callbacks` puts those of the daemon before this one back.
        self.callback_keeper: CallbackKeeper | None = None
        self._promised: dict[str, KeptCallback] = {}

    # ------------------------------------------------------------------ queue events

    def _emit(
        self, verb: str, call_id: str = "", queue: str = "", agent: str = "", **data: Any
    ) -> None:
        if verb not in VERBS:
            # Not (yet) a verb of acd/queue_events.py (callback and voicemail steps, rebuilt
            # calls): the daemon's log and the MQTT events carry these.
            log.info(
                "queue event %s call=%s queue=%s agent=%s %s", verb, call_id, queue, agent, data
            )
            return
        if not self.listeners:
            return
        event = QueueEvent(time.time(), verb, call_id, queue, agent, data)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must never stop routing
                self.listener_errors += 1
                log.exception("queue event listener %r failed on %s", listener, verb)

    def _since(self, at: float) -> float:
        return round(self.now() - at, 3) if at else 0.0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Router:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.scheduler = LoopScheduler(self._loop, self.timer_fired)
        self.matcher = Matcher(self.scheduler, max_misses=self._max_misses)

    async def aclose(self) -> None:
        if self.scheduler is not None:
            self.scheduler.cancel_all()
        for handle in self._retries:
            handle.cancel()
        self._retries.clear()
        for call in self.calls.values():
            if call.guard is not None:
                call.guard.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        if self._loop is None:
            raise RuntimeError("router not started")
        return self._loop.time()

    @property
    def m(self) -> Matcher:
        if self.matcher is None:
            raise RuntimeError("router not started")
        return self.matcher

    # ------------------------------------------------------------------ calls

    def register(
        self,
        call_id: str,
        *,
        queue: str,
        requirement: str,
        priority: int,
        language: str,
        screen_pop: Mapping[str, str],
        caller: str = "",
    ) -> RoutedCall:
        """Describe a call before the dialplan parks it (the flow's queue node). Validates the
        requirement now, so a bad expression fails the flow's node, not the waiting caller.
        `caller` is the number a callback would dial ("" = withheld: no callback)."""
        if call_id in self.calls and self.calls[call_id].state != "gone":
            raise InvalidEvent(f"call {call_id} is already with the ACD")
        call = RoutedCall(
            call_id,
            queue,
            requirement,
            acd_priority(priority),
            language,
            dict(screen_pop),
            registered_at=self.now(),
            caller=caller,
        )
        call.matcher_queue = self._matcher_queue(queue, requirement)
        self.calls[call_id] = call
        self._forget_unclaimed(call.registered_at)
        self._registrations.append((call.registered_at, call_id))
        return call

    def _forget_unclaimed(self, now: float) -> None:
        """Calls described by a flow whose caller hung up before reaching [acd-wait] never
        send AcdWaiting (nor a Hangup we can match: the channel is learnt there)."""
        while self._registrations and self._registrations[0][0] < now - self.unclaimed_after:
            _, call_id = self._registrations.popleft()
            call = self.calls.get(call_id)
            if call is not None and call.state == "registered":
                del self.calls[call_id]

    def _matcher_queue(self, queue: str, requirement: str) -> str:
        """One matcher queue per (flow queue, requirement): the flow sets the call's skills,
        the roster the queue's policy. Created on first use (few distinct pairs)."""
        key = (queue, requirement)
        found = self._matcher_queues.get(key)
        if found is None:
            found = f"{queue}.{self._generation}.{len(self._matcher_queues)}"
            self.m.add_queue(self.roster.policy(queue).spec_for(found, requirement))
            self._matcher_queues[key] = found
        return found

    def call_waiting(self, call_id: str, channel: str) -> None:
        """The caller is in [acd-wait] (UserEvent AcdWaiting): the call enters the matcher."""
        started = time.perf_counter()
        call = self.calls.get(call_id)
        if call is None:
            # The daemon restarted after the flow, or a call the engine never described: it
            # cannot be routed with its skills; the operators take it.
            log.warning("call %s waits in the ACD but was never registered: operators", call_id)
            self.spawn(self._redirect(channel, OPERATORS, "s", started, None), f"acd-op-{call_id}")
            return
        if call.state != "registered":
            log.debug("call %s: AcdWaiting again in state %s ignored", call_id, call.state)
            return
        call.channel = channel
        call.state = "waiting"
        call.queued_at = self.now()
        self._by_channel[channel] = call_id
        self.publisher.publish(
            f"acd/call/{call_id}/queued",
            {
                "event": "CallQueued",
                "call_id": call_id,
                "queue": call.queue,
                "priority": call.priority,
            },
        )
        self._emit(
            "ENTERQUEUE",
            call_id,
            call.queue,
            priority=call.priority,
            language=call.language,
            channel=channel,
        )
        policy = self.roster.policy(call.queue)
        if not policy.join_empty and not self._servable(call):
            self._left_empty(call, policy, started)
            return
        spec = CallSpec(call_id, call.matcher_queue, VOICE, call.priority)
        self._apply(self.m.call_arrived(spec, self.now()), started)

    def rebuild_waiting(
        self,
        call_id: str,
        channel: str,
        *,
        queue: str,
        requirement: str,
        priority: int,
        language: str,
        screen_pop: Mapping[str, str],
        caller: str = "",
    ) -> bool:
        """A caller found waiting in [acd-wait] after a daemon restart (its description read
        back from the channel's variables): it enters the matcher as a new arrival. False when
        the call is already known. Raises `AcdError` for a description the ACD refuses."""
        known = self.calls.get(call_id)
        if known is not None and known.state != "gone":
            return False
        self.register(
            call_id,
            queue=queue,
            requirement=requirement,
            priority=priority,
            language=language,
            screen_pop=screen_pop,
            caller=caller,
        )
        self._emit("REBUILT", call_id, queue, channel=channel)
        self.call_waiting(call_id, channel)
        return True

    # ------------------------------------------------------------------ waiting callers

    def _reach_of(self, call: RoutedCall) -> Requirement:
        """Who could ever take the call: its queue's requirement at the last relaxation step."""
        found = self._reach.get(call.matcher_queue)
        if found is None:
            spec = self.roster.policy(call.queue).spec_for("reach", call.requirement)
            found = self._reach[call.matcher_queue] = spec.cumulative()[-1]
        return found

    def _serving(self, call: RoutedCall, *, working_only: bool) -> int:
        """Agents logged in (`working_only`: and not paused) who could take the call."""
        reach = self._reach_of(call)
        count = 0
        for agent_id, entry in self.roster.agents.items():
            state = self._state(agent_id)
            if state in (None, AgentState.LOGGED_OUT):
                continue
            if working_only and state is AgentState.PAUSED:
                continue
            if entry.spec.capacity.get(call.kind, 0) > 0 and reach.matches(entry.spec.skills):
                count += 1
        return count

    def _servable(self, call: RoutedCall) -> bool:
        """app_queue's joinempty/leavewhenempty sense of "not empty": some agent who could take
        the call is logged in (paused, busy or in wrap-up still counts)."""
        return self._serving(call, working_only=False) > 0

    def _left_empty(self, call: RoutedCall, policy: QueuePolicy, started: float) -> None:
        target = policy.overflow or OPERATORS
        log.info(
            "call %s: no agent for queue %s is logged in: to %s", call.call_id, call.queue, target
        )
        # app_queue says EXITEMPTY; queue_events.py has no such verb yet: `reason` tells.
        self._emit(
            "EXITWITHTIMEOUT",
            call.call_id,
            call.queue,
            waittime=self._since(call.queued_at),
            target=target,
            reason="empty",
        )
        self._send_to(call, target, "empty", started)

    def _check_empty(self) -> None:
        """After an agent left: waiting callers of `leave_when_empty` queues whom nobody logged
        in could serve any more go to their queue's overflow."""
        for call in list(self.calls.values()):
            if call.state != "waiting" or call.kind != VOICE or not call.channel:
                continue
            policy = self.roster.policy(call.queue)
            if policy.leave_when_empty and not self._servable(call):
                started = time.perf_counter()
                if self.m.call_state(call.call_id) is not None:
                    self._apply(self.m.hung_up(call.call_id, self.now()), started)
                self._left_empty(call, policy, started)

    def wait_info(self, call_id: str) -> WaitInfo | None:
        """Position and estimated wait of a waiting voice call (None: not waiting now).

        Position: the call's place in its matcher queue's service order (priority, arrival
        with the queue's weight, FIFO), 1 = next. Estimate: position x mean handle time /
        working agents, where the handle time is the mean talk time of the queue's last
        `HANDLE_SAMPLES` calls (`DEFAULT_HANDLE_TIME` before the first) plus the queue's
        wrap-up, and the working agents are those logged in, not paused, who could take the
        call at its last relaxation step. With every such agent busy, one frees up every
        handle time / agents seconds on average, and `position` of them must free up."""
        call = self.calls.get(call_id)
        if call is None or call.state != "waiting" or call.kind != VOICE:
            return None
        try:
            order = self.m.waiting_calls(call.matcher_queue)
        except AcdError:
            return None
        if call_id not in order:
            return None
        position = order.index(call_id) + 1
        samples = self._handle_times.get(call.queue)
        talk = sum(samples) / len(samples) if samples else DEFAULT_HANDLE_TIME
        handle = talk + self.roster.policy(call.queue).wrapup
        agents = self._serving(call, working_only=True)
        estimate = position * handle / agents if agents else None
        return WaitInfo(position, estimate, agents, handle)

    def key_pressed(self, call_id: str, key: str) -> str:
        """A waiting caller pressed `key` ([acd-wait] runs AGI acd-key). Returns what the
        caller gets: "operator" (left the queue for the operator group: only where the queue
        has `operator: true`), "callback" (keeps its place; the caller hangs up and is called
        back when an agent is reserved), or "" (nothing: keep waiting)."""
        call = self.calls.get(call_id)
        if call is None or call.state != "waiting" or call.kind != VOICE or call.callback:
            return ""
        policy = self.roster.policy(call.queue)
        started = time.perf_counter()
        if key and key == self.operator_key and policy.operator:
            if self.m.call_state(call_id) is not None:
                self._apply(self.m.hung_up(call_id, self.now()), started)
            # app_queue says EXITWITHKEY; queue_events.py has no such verb yet: `reason` tells.
            self._emit(
                "EXITWITHTIMEOUT",
                call_id,
                call.queue,
                waittime=self._since(call.queued_at),
                target=OPERATORS,
                reason=f"key:{key}",
            )
            call.state = "gone"
            self._by_channel.pop(call.channel, None)
            self.calls.pop(call_id, None)
            return "operator"
        if (
            key
            and key == self.callback_key
            and policy.callback
            and call.caller
            and self.callback_placer is not None
        ):
            call.callback = True
            self._promise(call)
            self._emit("CALLBACK", call_id, call.queue, waittime=self._since(call.queued_at))
            self.publisher.publish(
                f"acd/call/{call_id}/callback",
                {"event": "CallbackRequested", "call_id": call_id, "queue": call.queue},
            )
            return "callback"
        return ""

    def voicemail_result(self, call_id: str, queue: str, status: str, mailbox: str) -> None:
        """The caller overflowed to voicemail and left it (VoiceMail's VMSTATUS)."""
        self._emit("VOICEMAIL", call_id, queue, status=status, mailbox=mailbox)
        self.publisher.publish(
            f"acd/call/{call_id}/voicemail",
            {
                "event": "VoicemailLeft" if status == "SUCCESS" else "VoicemailFailed",
                "call_id": call_id,
                "queue": queue,
                "status": status,
                "mailbox": mailbox,
            },
        )

    def answered(self, call_id: str, agent: str, recording: str = "") -> None:
        """The agent answered (for a callback: the agent's leg, before the customer's)."""
        call = self.calls.get(call_id)
        if call is None or call.state != "ringing" or call.agent != agent:
            if call_id in self._promised and (call is None or call.state == "waiting"):
                self._started_before_restart(call_id, agent)
                return
            log.warning("answer of %s by %s does not match an offer; ignored", call_id, agent)
            return
        self._clear_guard(call)
        call.state = "connected"
        call.connected_at = self.now()
        if call.callback:
            # The agent's leg is up: [acd-callback] dials the customer now, with or without
            # this daemon; a failure reported back (callback_result) promises a retry again.
            self._drop_promise(call_id)
        call.recording = recording
        extra = {"recording": recording} if recording else {}
        self._emit(
            "CONNECT",
            call_id,
            call.queue,
            agent,
            holdtime=self._since(call.queued_at),
            ringtime=self._since(call.ring_at),
            callback=call.callback,
            **extra,
        )
        self.publisher.publish(
            f"agent/{agent}/state",
            {"event": "CallConnected", "call_id": call_id, "agent": agent, **extra},
        )
        self._apply(self.m.answered(call_id, agent, self.now()), time.perf_counter())

    def dial_result(self, call_id: str, agent: str, status: str) -> None:
        """After Dial in [acd-connect]: the agent did not take the call, or the call is over."""
        started = time.perf_counter()
        call = self.calls.get(call_id)
        if call is None or call.state == "gone":
            return
        status = status.upper()
        if call.state == "ringing" and call.agent == agent and status in NOT_ANSWERED:
            self._clear_guard(call)
            call.state = "waiting"
            call.agent = ""
            self._emit(
                "RINGNOANSWER",
                call_id,
                call.queue,
                agent,
                ringtime=self._since(call.ring_at),
                status=status,
            )
            self.publisher.publish(
                f"agent/{agent}/state",
                {"event": "RingNoAnswer", "call_id": call_id, "agent": agent, "status": status},
            )
            self._apply(self.m.no_answer(call_id, agent, self.now()), started)
            self._apply_deferred(agent)
            self._publish_agent(agent)  # paused after too many misses, or ready again
        elif call.state == "connected" and status == "ANSWER":
            self._end(call, started, "COMPLETEAGENT")
        else:
            log.debug("dial result %s for %s/%s in state %s", status, call_id, agent, call.state)

    def channel_gone(self, channel: str) -> None:
        """The caller's channel hung up (AMI Hangup)."""
        call_id = self._by_channel.pop(channel, None)
        if call_id is None:
            return
        call = self.calls.get(call_id)
        if call is None or call.state == "gone":
            return
        if call.callback and call.state == "waiting":
            call.channel = ""  # hung up after asking for a callback: keeps its place
            return
        self._gone(call)

    def callback_result(self, call_id: str, agent: str, status: str) -> None:
        """[acd-callback] dialled the customer from the agent's phone (DIALSTATUS). ANSWER: the
        conversation is over. Anything else: the callback failed; it is recorded and tried
        again `callback_retries` times after `callback_retry_after` seconds."""
        started = time.perf_counter()
        call = self.calls.get(call_id)
        if call is None or call.state != "connected" or call.agent != agent:
            log.warning("callback result %s for %s/%s matches no callback", status, call_id, agent)
            return
        status = status.upper() or "AGENTHUNGUP"
        if status == "ANSWER":
            self._emit("CALLBACKDONE", call_id, call.queue, agent)
            self.publisher.publish(
                f"acd/call/{call_id}/callback",
                {
                    "event": "CallbackDone",
                    "call_id": call_id,
                    "queue": call.queue,
                    "agent": agent,
                    "attempt": call.callback_attempts + 1,
                },
            )
            self._end(call, started, "COMPLETEAGENT")
            return
        call.callback_attempts += 1
        retry = call.callback_attempts <= self.callback_retries
        if retry:
            self._promise(call, not_before=time.time() + self.callback_retry_after)
        else:
            self._drop_promise(call_id)
        self._emit(
            "CALLBACKFAILED",
            call_id,
            call.queue,
            agent,
            status=status,
            attempt=call.callback_attempts,
            retry=retry,
        )
        self.publisher.publish(
            f"acd/call/{call_id}/callback",
            {
                "event": "CallbackFailed",
                "call_id": call_id,
                "queue": call.queue,
                "status": status,
                "attempt": call.callback_attempts,
                "retry": retry,
            },
        )
        self._end(call, started, "COMPLETEAGENT")
        if retry:
            self._retry_later(call, self.callback_retry_after)

    def _retry_later(self, call: RoutedCall, delay: float) -> None:
        if self._loop is None:
            return
        handle: asyncio.TimerHandle | None = None

        def again() -> None:
            if handle is not None:
                self._retries.discard(handle)
            self._retry_callback(call)

        handle = self._loop.call_later(delay, again)
        self._retries.add(handle)

    def _retry_callback(self, call: RoutedCall) -> bool:
        """A callback (again) into its queue; False, with an ERROR, when the ACD refuses it
        now (the promise stays kept: a person must call)."""
        if call.call_id in self.calls or call.call_id not in self._promised:
            return True  # queued already, or started or given up while it waited
        started = time.perf_counter()
        try:
            call.matcher_queue = self._matcher_queue(call.queue, call.requirement)
        except AcdError as exc:
            log.error(
                "callback %s (queue %s) cannot be queued: %s; it stays kept, call the customer "
                "by hand",
                call.call_id,
                call.queue,
                exc,
            )
            return False
        call.state = "waiting"
        call.agent = ""
        call.queued_at = self.now()
        self.calls[call.call_id] = call
        self._emit(
            "ENTERQUEUE",
            call.call_id,
            call.queue,
            priority=call.priority,
            language=call.language,
            channel="",
            retry=call.callback_attempts,
        )
        spec = CallSpec(call.call_id, call.matcher_queue, VOICE, call.priority)
        self._apply(self.m.call_arrived(spec, self.now()), started)
        return True

    def _gone(self, call: RoutedCall) -> None:
        """The caller (or the task's customer) left: abandon, cancelled ring, or the end."""
        call_id = call.call_id
        started = time.perf_counter()
        if call.state == "connected":
            self._end(call, started, "COMPLETECALLER")
            return
        self._clear_guard(call)
        agent = call.agent
        self._emit(
            "ABANDON",
            call_id,
            call.queue,
            agent,
            waittime=self._since(call.queued_at),
            ringing=call.state == "ringing",
        )
        call.state = "gone"
        if agent:
            self.publisher.publish(
                f"agent/{agent}/state",
                {"event": "OfferWithdrawn", "call_id": call_id, "reason": "caller-hung-up"},
            )
        if self.m.call_state(call_id) is not None:
            self._apply(self.m.hung_up(call_id, self.now()), started)
        self.calls.pop(call_id, None)
        if agent:
            self._apply_deferred(agent)
        if call.callback and call_id in self._promised:
            # The caller asked for a callback, then an agent was rung for the live call and
            # the caller hung up as told: still owed, back in the queue as a callback.
            call.channel = ""
            self._retry_callback(call)

    def _end(self, call: RoutedCall, started: float, verb: str) -> None:
        agent = call.agent
        if call.kind == VOICE and call.connected_at:
            samples = self._handle_times.setdefault(call.queue, deque(maxlen=HANDLE_SAMPLES))
            samples.append(self.now() - call.connected_at)
        self._emit(
            verb,
            call.call_id,
            call.queue,
            agent,
            holdtime=round(call.connected_at - call.queued_at, 3) if call.connected_at else 0.0,
            calltime=self._since(call.connected_at),
        )
        call.state = "gone"
        self._by_channel.pop(call.channel, None)
        self.calls.pop(call.call_id, None)
        self._apply(self.m.call_ended(call.call_id, self.now()), started)
        self.publisher.publish(
            f"agent/{agent}/state", {"event": "CallEnded", "call_id": call.call_id}
        )
        self._apply_deferred(agent)

    # ------------------------------------------------------------------ non-voice tasks

    def submit_task(
        self,
        task_id: str,
        *,
        queue: str,
        requirement: str,
        priority: int,
        channel: str,
        language: str = "",
        payload: Mapping[str, Any] | None = None,
    ) -> RoutedCall:
        """A non-voice task (chat, sms, email, callback) enters the matcher at once. Raises
        `AcdError` (InvalidEvent, a bad requirement or channel) before anything is queued."""
        started = time.perf_counter()
        if channel == VOICE:
            raise InvalidEvent("voice calls enter through register() and call_waiting()")
        if self.task_sink is None:
            raise InvalidEvent("no task delivery is configured")
        old = self.calls.get(task_id)
        if old is not None and old.state != "gone":
            raise InvalidEvent(f"task {task_id} is already with the ACD")
        now = self.now()
        call = RoutedCall(
            task_id,
            queue,
            requirement,
            acd_priority(priority),
            language,
            dict(payload or {}),
            state="waiting",
            registered_at=now,
            queued_at=now,
            kind=channel,
        )
        call.matcher_queue = self._matcher_queue(queue, requirement)
        spec = CallSpec(task_id, call.matcher_queue, channel, call.priority)
        self.calls[task_id] = call
        try:
            decisions = self.m.call_arrived(spec, now)
        except AcdError:
            del self.calls[task_id]
            raise
        self._emit(
            "ENTERQUEUE", task_id, queue, priority=call.priority, language=language, channel=channel
        )
        self._apply(decisions, started)
        return call

    def _task(self, task_id: str) -> RoutedCall:
        call = self.calls.get(task_id)
        if call is None or call.kind == VOICE or call.state == "gone":
            raise InvalidEvent(f"no task {task_id} with the ACD")
        return call

    def task_accepted(self, task_id: str, agent: str) -> None:
        """The offered agent took the task (it is now 'on call' on its channel)."""
        call = self._task(task_id)
        if call.state != "ringing" or call.agent != agent:
            raise InvalidEvent(f"task {task_id} is not offered to agent {agent}")
        self.answered(task_id, agent)

    def task_rejected(self, task_id: str, agent: str) -> None:
        """The offered agent declined or did not accept in time: back to the head."""
        call = self._task(task_id)
        if call.state != "ringing" or call.agent != agent:
            raise InvalidEvent(f"task {task_id} is not offered to agent {agent}")
        self.dial_result(task_id, agent, "NOANSWER")

    def task_done(self, task_id: str, agent: str) -> None:
        """The agent finished the task: wrap-up starts on that channel."""
        call = self._task(task_id)
        if call.state != "connected" or call.agent != agent:
            raise InvalidEvent(f"task {task_id} is not being worked by agent {agent}")
        self._end(call, time.perf_counter(), "COMPLETEAGENT")

    def task_cancelled(self, task_id: str) -> None:
        """The customer withdrew the task (or it expired) before or while it was worked."""
        self._gone(self._task(task_id))

    # ------------------------------------------------------------------ agents

    def load_roster(self, roster: Roster) -> None:
        """Apply a (re)loaded roster: new queue policies for new calls, agents added, changed
        or removed. Agents busy now get their change when they free up."""
        old = self.roster
        self.roster = roster
        self._generation += 1
        self._matcher_queues.clear()
        self._reach.clear()
        for agent_id in old.agents:
            if agent_id not in roster.agents:
                self._when_legal(agent_id, "logout", functools.partial(self._logout, agent_id))
        gone = [agent_id for agent_id in self._kept if agent_id not in roster.agents]
        for agent_id in gone:
            del self._kept[agent_id]
            self._kept_pending.discard(agent_id)
        if gone:
            self._write_kept()
        for agent_id, entry in roster.agents.items():
            before = old.agents.get(agent_id)
            if (
                before is not None
                and before != entry
                and self._state(agent_id)
                not in (
                    None,
                    AgentState.LOGGED_OUT,
                )
            ):
                self._when_legal(agent_id, "logout", functools.partial(self._relogin, agent_id))
            elif entry.login == "auto" and agent_id in self._registered:
                if self._state(agent_id) in (None, AgentState.LOGGED_OUT):
                    self.login(agent_id)

    def _relogin(self, agent_id: str) -> None:
        reason = self.m.pause_reason(agent_id)
        self._logout(agent_id)
        entry = self.roster.agents.get(agent_id)
        if entry is not None:
            self._apply(self.m.login(entry.spec, self.now(), paused=reason), time.perf_counter())
            self._publish_agent(agent_id)

    def contact_changed(self, endpoint: str, registered: bool) -> None:
        """A phone registered (or became reachable) or went away (AMI ContactStatus)."""
        entry = self._entry_by_endpoint(endpoint)
        if entry is None:
            return
        if registered:
            self._registered.add(entry.id)
            if self._state(entry.id) in (None, AgentState.LOGGED_OUT):
                if entry.id in self._kept_pending:
                    self._restore(entry.id)
                elif entry.login == "auto":
                    self.login(entry.id)
        else:
            self._registered.discard(entry.id)
            if self._state(entry.id) not in (None, AgentState.LOGGED_OUT):
                log.info("agent %s: phone unregistered: logging out", entry.id)
                self._when_legal(entry.id, "logout", lambda: self._logout(entry.id))

    def _entry_by_endpoint(self, endpoint: str) -> RosterAgent | None:
        name = endpoint if endpoint.startswith("PJSIP/") else f"PJSIP/{endpoint}"
        return self.roster.by_endpoint(name)

    def login(self, agent_id: str, *, paused: str | None = None) -> None:
        entry = self.roster.agents.get(agent_id)
        if entry is None:
            raise UnknownAgent(f"agent {agent_id} is not in the roster {self.roster.path}")
        started = time.perf_counter()
        self._apply(self.m.login(entry.spec, self.now(), paused=paused), started)
        self._publish_agent(agent_id)

    def logout(self, agent_id: str) -> None:
        """Log out by hand (CLI, MQTT, the phone's *91): kept across a restart."""
        self._agent_known(agent_id)
        self._out_by_hand.add(agent_id)
        try:
            self._logout(agent_id)
        except AcdError:
            self._out_by_hand.discard(agent_id)
            raise
        # also when it was logged out already (by its phone)
        self._keep(agent_id, self._state(agent_id) or AgentState.LOGGED_OUT)

    def _logout(self, agent_id: str) -> None:
        if self._state(agent_id) in (None, AgentState.LOGGED_OUT):
            return
        self._apply(self.m.logout(agent_id, self.now()), time.perf_counter())
        self._publish_agent(agent_id)
        self._check_empty()

    def pause(self, agent_id: str, reason: str) -> None:
        self._agent_known(agent_id)
        self._apply(self.m.pause(agent_id, reason, self.now()), time.perf_counter())
        self._publish_agent(agent_id)

    def resume(self, agent_id: str) -> None:
        self._agent_known(agent_id)
        started = time.perf_counter()
        self._apply(self.m.resume(agent_id, self.now()), started)
        self._publish_agent(agent_id)

    def _agent_known(self, agent_id: str) -> None:
        if agent_id not in self.roster.agents and self._state(agent_id) is None:
            raise UnknownAgent(f"agent {agent_id} is not in the roster {self.roster.path}")

    def _state(self, agent_id: str) -> AgentState | None:
        try:
            return self.m.agent_state(agent_id)
        except UnknownAgent:
            return None

    def _when_legal(self, agent_id: str, event: str, change: Callable[[], None]) -> None:
        state = self._state(agent_id)
        if state in (AgentState.RESERVED, AgentState.ON_CALL):
            self._deferred[agent_id] = change
        else:
            change()

    def _apply_deferred(self, agent_id: str) -> None:
        if self._state(agent_id) in (AgentState.RESERVED, AgentState.ON_CALL):
            return
        change = self._deferred.pop(agent_id, None)
        if change is not None:
            change()

    def agents(self) -> list[dict[str, Any]]:
        """Every roster agent with its state (for `ivr-engine agents list`)."""
        out = []
        for agent_id, entry in sorted(self.roster.agents.items()):
            state = self._state(agent_id)
            out.append(
                {
                    "agent": agent_id,
                    "name": entry.name,
                    "state": (state or AgentState.LOGGED_OUT).value,
                    "reason": self.m.pause_reason(agent_id) if state else None,
                    "registered": agent_id in self._registered,
                    "skills": dict(entry.spec.skills),
                }
            )
        return out

    # ------------------------------------------------------------------ kept across a restart

    def restore_kept(self, kept: Mapping[str, KeptAgent]) -> None:
        """At start, before any agent logs in: what the daemon before this one kept. Each is
        applied when the agent's phone is found registered (`contact_changed`, which
        `AcdAmiBridge.rebuild` calls for every phone): a pause logs the agent in paused with
        its reason (never ready first, so no call is offered in between), a logout by hand
        keeps it logged out. A verb for the agent before that replaces it. Agents no longer
        in the roster are dropped."""
        dropped = sorted(agent_id for agent_id in kept if agent_id not in self.roster.agents)
        for agent_id in dropped:
            log.info(
                "agent %s: kept state dropped: not in the roster %s", agent_id, self.roster.path
            )
        self._kept = {a: k for a, k in kept.items() if a in self.roster.agents}
        self._kept_pending = set(self._kept)
        self._restored = [0, 0]
        if dropped:
            self._write_kept()

    def report_restored(self) -> None:
        """One line, after the first rebuild of the agents since `restore_kept`."""
        if self._restored is None:
            return
        (pauses, logouts), self._restored = self._restored, None
        log.info(
            "ACD: %d pause(s) restored from before the restart, %d agent(s) kept logged out "
            "by hand, %d waiting for their phone",
            pauses,
            logouts,
            len(self._kept_pending),
        )

    def kept(self) -> dict[str, KeptAgent]:
        """The pauses and logouts by hand a restart would keep now."""
        return dict(self._kept)

    def _restore(self, agent_id: str) -> None:
        self._kept_pending.discard(agent_id)
        kept = self._kept[agent_id]
        level = logging.DEBUG if self._restored is not None else logging.INFO
        if kept.reason is None:
            log.log(level, "agent %s: logged out by hand before the restart: stays so", agent_id)
            self._out_by_hand.add(agent_id)
            if self._restored is not None:
                self._restored[1] += 1
            return
        log.log(level, "agent %s: paused (%s) as before the restart", agent_id, kept.reason)
        if self._restored is not None:
            self._restored[0] += 1
        self.login(agent_id, paused=kept.reason)

    def _keep(self, agent_id: str, state: AgentState) -> None:
        """Bring the agent's kept state in line with `state`, its state now; write on a
        change."""
        if self.keeper is None:
            return
        self._kept_pending.discard(agent_id)
        if state is not AgentState.LOGGED_OUT:
            self._out_by_hand.discard(agent_id)
        old = self._kept.get(agent_id)
        new: KeptAgent | None = None
        if state is AgentState.PAUSED:
            reason = self.m.pause_reason(agent_id) or ""
            same = old is not None and old.reason == reason
            new = old if same else KeptAgent(reason, time.time())
        elif state is AgentState.LOGGED_OUT and agent_id in self._out_by_hand:
            same = old is not None and old.reason is None
            new = old if same else KeptAgent(None, time.time())
        if new is old:
            return
        if new is None:
            del self._kept[agent_id]
        else:
            self._kept[agent_id] = new
        self._write_kept()

    def _write_kept(self) -> None:
        if self.keeper is None:
            return
        try:
            self.keeper.keep(self._kept)
        except Exception:  # the keeper's bug must never stop routing
            log.exception("agent states not kept for a restart")

    # ------------------------------------------------------------------ promised callbacks

    def promised(self) -> dict[str, KeptCallback]:
        """The callbacks a restart would put back now: asked for, not yet started by the PBX
        (or due again after a failed attempt)."""
        return dict(self._promised)

    def _promise(self, call: RoutedCall, *, not_before: float = 0.0, placed: float = 0.0) -> None:
        if not call.callback_requested:
            call.callback_requested = time.time()
        self._promised[call.call_id] = KeptCallback(
            call.call_id,
            call.queue,
            call.requirement,
            call.priority,
            call.language,
            call.caller,
            dict(call.screen_pop),
            call.callback_requested,
            call.callback_attempts,
            not_before,
            placed,
        )
        self._write_promised()

    def _drop_promise(self, call_id: str) -> None:
        if self._promised.pop(call_id, None) is not None:
            self._write_promised()

    def _write_promised(self) -> None:
        if self.callback_keeper is None:
            return
        try:
            self.callback_keeper.keep_callbacks(self._promised)
        except Exception:  # the keeper's bug must never stop routing
            log.exception("promised callbacks not kept for a restart")

    def restore_callbacks(self, kept: Mapping[str, KeptCallback]) -> list[str]:
        """At start: the callbacks the daemon before this one had promised. Each enters its
        queue again as a new arrival, in the order they were asked for (a retry not due yet
        waits for its time), and is called back as any other. One the ACD refuses now (its
        requirement no longer parses) is logged as an ERROR and stays kept, so that it is
        not lost with the next write. Returns the ids that could not be put back."""
        refused: list[str] = []
        wall = time.time()
        for call_id, k in sorted(kept.items(), key=lambda item: (item[1].requested, item[0])):
            self._promised[call_id] = k
            known = self.calls.get(call_id)
            if known is not None and known.state != "gone":
                continue
            call = RoutedCall(
                call_id,
                k.queue,
                k.requirement,
                k.priority,
                k.language,
                dict(k.screen_pop),
                registered_at=self.now(),
                caller=k.caller,
                callback=True,
                callback_attempts=k.attempts,
            )
            call.callback_requested = k.requested
            # An agent's phone rung for it just before the restart may still be answered, and
            # the PBX then dials the customer without us: wait that ring out first (an answer
            # meanwhile is the callback started, see `answered`).
            ring_over = k.placed + self.ring_timeout + self.guard_margin if k.placed else 0.0
            due = max(k.not_before, ring_over)
            if due > wall:
                self._retry_later(call, due - wall)
            elif not self._retry_callback(call):
                refused.append(call_id)
        self._write_promised()
        return refused

    def _started_before_restart(self, call_id: str, agent: str) -> None:
        """An agent answered a callback's ring that a daemon before this one placed: the PBX
        dials the customer from there, so it is no longer owed (and not placed again)."""
        started = time.perf_counter()
        call = self.calls.pop(call_id, None)
        if call is not None and self.m.call_state(call_id) is not None:
            self._apply(self.m.hung_up(call_id, self.now()), started)
        self._drop_promise(call_id)
        log.info("callback %s: agent %s answered a ring placed before the restart", call_id, agent)

    def _publish_agent(self, agent_id: str) -> None:
        state = self._state(agent_id) or AgentState.LOGGED_OUT
        self._agent_event(agent_id, state)
        self._keep(agent_id, state)
        self.publisher.publish(
            f"agent/{agent_id}/status",
            {
                "agent": agent_id,
                "state": state.value,
                "reason": self.m.pause_reason(agent_id)
                if state is not AgentState.LOGGED_OUT
                else None,
            },
            retain=True,
        )

    def _agent_event(self, agent_id: str, state: AgentState) -> None:
        """AGENTLOGIN / AGENTLOGOFF / PAUSE / UNPAUSE on a change of the published state."""
        before = self._agent_seen.get(agent_id, AgentState.LOGGED_OUT)
        self._agent_seen[agent_id] = state
        if before is state:
            return
        if before is AgentState.LOGGED_OUT:
            reason = self.m.pause_reason(agent_id) if state is AgentState.PAUSED else None
            self._emit("AGENTLOGIN", agent=agent_id, paused=reason)
            return
        if state is AgentState.LOGGED_OUT:
            self._emit("AGENTLOGOFF", agent=agent_id)
        elif state is AgentState.PAUSED:
            self._emit("PAUSE", agent=agent_id, reason=self.m.pause_reason(agent_id))
        elif before is AgentState.PAUSED:
            self._emit("UNPAUSE", agent=agent_id)

    # ------------------------------------------------------------------ timers

    def timer_fired(self, key: TimerKey) -> None:
        started = time.perf_counter()
        try:
            decisions = self.m.timer_fired(key, self.now())
        except AcdError:
            log.exception("timer %r", key)
            return
        self._apply(decisions, started)
        if key[0] == "wrapup":
            self._publish_agent(key[1])

    def _guard_fired(self, call_id: str, agent: str) -> None:
        call = self.calls.get(call_id)
        if call is not None and call.state == "ringing" and call.agent == agent:
            log.error(
                "call %s: no ring outcome from the PBX for agent %s; requeued", call_id, agent
            )
            call.guard = None
            self.dial_result(call_id, agent, "NOANSWER")

    def _clear_guard(self, call: RoutedCall) -> None:
        if call.guard is not None:
            call.guard.cancel()
            call.guard = None

    # ------------------------------------------------------------------ decisions

    def _apply(self, decisions: list[Decision], started: float) -> None:
        for decision in decisions:
            if isinstance(decision, Offer):
                self._offer(decision, started)
            elif isinstance(decision, Withdraw):
                # Voice: Dial runs in the caller's channel, so Asterisk already cancelled it.
                log.info("offer of %s to %s withdrawn (%s)", *decision)
            elif isinstance(decision, Overflowed):
                self._overflow(decision, started)

    def _offer(self, offer: Offer, started: float) -> None:
        call = self.calls.get(offer.call)
        if call is None:
            raise InvalidEvent(f"offer of unknown call {offer.call}")
        entry = self.roster.agents.get(offer.agent)
        self.offers += 1
        call.state = "ringing"
        call.agent = offer.agent
        now = self.now()
        call.ring_at = now
        self._emit(
            "RINGING", call.call_id, call.queue, offer.agent, waited=round(now - call.queued_at, 3)
        )
        topic = f"agent/{offer.agent}/screenpop"
        pop = {
            "event": "ScreenPop",
            "call_id": call.call_id,
            "agent": offer.agent,
            "queue": call.queue,
            "language": call.language,
            "priority": call.priority,
            "waited": round(now - call.queued_at, 3),
            "data": dict(call.screen_pop),
        }
        if self._loop is not None:
            call.guard = self._loop.call_later(
                self.ring_timeout + self.guard_margin, self._guard_fired, call.call_id, offer.agent
            )
        if call.kind != VOICE:
            if self.task_sink is not None:
                self.task_sink.offer(call, offer.agent)
            return
        if call.callback and not call.channel:
            endpoint = entry.endpoint if entry is not None else f"PJSIP/{offer.agent}"
            if call.call_id in self._promised:
                self._promise(call, placed=time.time())  # a restart now waits this ring out
            self.publisher.publish(topic, pop)
            self.spawn(
                self._place_callback(call, offer.agent, endpoint), f"acd-callback-{call.call_id}"
            )
            return
        exten = entry.endpoint.split("/", 1)[1] if entry is not None else offer.agent
        if self.pop_sender is None:
            self.publisher.publish(topic, pop)
            redirect = self._redirect(call.channel, CONNECT_CONTEXT, exten, started, call.call_id)
        else:
            redirect = self._pop_then_redirect(topic, pop, call.channel, exten, started, call)
        self.spawn(redirect, f"acd-offer-{call.call_id}")

    async def _pop_then_redirect(
        self,
        topic: str,
        pop: dict[str, Any],
        channel: str,
        exten: str,
        started: float,
        call: RoutedCall,
    ) -> None:
        """The screen pop is acknowledged by the broker BEFORE the phone can ring. A pop that
        cannot be confirmed in `pop_timeout` is logged and the agent rung all the same: the
        caller reaching a person matters more than the pop."""
        if self.pop_sender is None:
            raise InvalidEvent("no pop sender")
        try:
            async with asyncio.timeout(self.pop_timeout):
                await self.pop_sender(topic, pop)
        except Exception as exc:  # TimeoutError, MQTT errors: ring anyway, say so
            self.pop_failures += 1
            log.warning(
                "screen pop for call %s not confirmed (%r): ringing anyway", call.call_id, exc
            )
            self.publisher.publish(topic, pop)
        if call.state != "ringing" or call.channel != channel:
            return  # the caller hung up while the pop was sent: never ring the agent
        await self._redirect(channel, CONNECT_CONTEXT, exten, started, call.call_id)

    async def _place_callback(self, call: RoutedCall, agent: str, endpoint: str) -> None:
        """The agent's phone first; the guard timer requeues if the PBX never answers."""
        if self.callback_placer is None:
            raise InvalidEvent("no callback placer")
        try:
            await self.callback_placer.place(call, agent, endpoint)
        except Exception as exc:  # refused or AMI away: the guard timer requeues the offer
            self.errors += 1
            log.warning("callback %s to agent %s not placed: %s", call.call_id, agent, exc)

    def _overflow(self, over: Overflowed, started: float) -> None:
        call = self.calls.get(over.call)
        if call is None:
            return
        target = over.target or OPERATORS
        log.info(
            "call %s overflowed from %s (%s) to %s", over.call, over.queue, over.reason, target
        )
        self._emit(
            "EXITWITHTIMEOUT",
            call.call_id,
            call.queue,
            waittime=self._since(call.queued_at),
            target=target,
            reason=over.reason,
        )
        self._send_to(call, target, over.reason, started)

    def _send_to(self, call: RoutedCall, target: str, reason: str, started: float) -> None:
        """A call leaving its queue (not in the matcher any more) goes to `target`: another
        queue of the roster, `voicemail`, or the operators (anything else)."""
        if target in self.roster.queues and target not in (call.queue, "*"):
            call.queue = target
            call.matcher_queue = self._matcher_queue(target, call.requirement)
            if call.callback and call.call_id in self._promised:
                self._promise(call)  # owed in the queue it is in now
            spec = CallSpec(call.call_id, call.matcher_queue, VOICE, call.priority)
            self._apply(self.m.call_arrived(spec, self.now()), started)
            return
        call.state = "gone"
        self._by_channel.pop(call.channel, None)
        self.calls.pop(call.call_id, None)
        if call.kind != VOICE:
            if self.task_sink is not None:
                self.task_sink.dropped(call, f"overflow:{reason}")
            return
        if not call.channel:  # a callback nobody could take: recorded, the customer not rung
            self._drop_promise(call.call_id)
            self._emit(
                "CALLBACKFAILED",
                call.call_id,
                call.queue,
                status=f"overflow:{reason}",
                attempt=call.callback_attempts,
                retry=False,
            )
            self.publisher.publish(
                f"acd/call/{call.call_id}/callback",
                {
                    "event": "CallbackFailed",
                    "call_id": call.call_id,
                    "queue": call.queue,
                    "status": f"overflow:{reason}",
                    "attempt": call.callback_attempts,
                    "retry": False,
                },
            )
            return
        # Still on the line: voicemail or the operators take the caller now.
        self._drop_promise(call.call_id)
        context = VOICEMAIL_CONTEXT if target == VOICEMAIL else OPERATORS
        self.spawn(
            self._redirect(call.channel, context, "s", started, None),
            f"acd-overflow-{call.call_id}",
        )

    async def _redirect(
        self, channel: str, context: str, exten: str, started: float, call_id: str | None
    ) -> None:
        self.latency.add(self.latency.issued, time.perf_counter() - started)
        try:
            await self.pbx.redirect(channel, context, exten)
        except Exception as exc:  # the PBX refused or is away: the guard timer requeues
            self.errors += 1
            log.warning("redirect of %s to %s,%s failed: %s", channel, context, exten, exc)
            return
        self.latency.add(self.latency.acked, time.perf_counter() - started)

    def spawn(self, coro: Any, name: str) -> None:
        self._task_seq += 1
        task = asyncio.get_running_loop().create_task(coro, name=f"{name}-{self._task_seq}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the PBX commands in flight (tests, benchmark)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
