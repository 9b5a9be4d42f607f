"""Non-voice tasks (chat, SMS, e-mail, web callback) over MQTT: the router's `TaskSink`.

Topics (relative to the MQTT prefix, default `ivr`; payloads in docs/tasks.md):

    acd/task/submit         in   a task (schema: ivr_engine.tasks.schema)
    acd/task/cancel         in   {"id", "reason"?}: the customer or channel withdrew it
    acd/task/list           in   {"id"}: the tasks with the ACD now (the CLI's `tasks list`)
    acd/task/reply/<id>     out  {"id", "op", "ok": true, "task"|"tasks"} or {"ok": false, "error"}
    acd/task/rejected       out  refusals of messages with no usable id (nothing else to answer)
    acd/task/status/<id>    out  TaskQueued, TaskOffered, TaskAccepted, TaskRequeued, TaskDone,
                                 TaskCancelled, TaskDropped
    agent/<agent>/task      out  QoS 1: TaskOffered (the task, masked), TaskOfferExpired,
                                 TaskWithdrawn, TaskAccepted, TaskDone, TaskCancelled,
                                 TaskReplyRefused
    agent/<agent>/task/reply in  {"task_id", "action": "accept|reject|done", "reason"?}

An offer the agent does not accept within the router's ring timeout is rejected here, at that
timeout: the task goes back to the head of its queue (RINGNOANSWER, counted towards the
agent's auto-pause like a phone left ringing). The router's own guard (ring timeout + its
margin) would requeue it too, later; it is the backstop if this timer were lost. Callbacks are
different: the agent accepts by answering the phone the daemon rings when the agent is
*reserved* (see callback.py); their offer expires after the ring timeout plus the Originate's
slack.

Each message is handled to the end before the next is read: validation first, then one router
call. A refused submission leaves nothing behind (the id is not even remembered, so it can be
corrected and sent again); an accepted id is remembered (bounded) and a second submission with
it is refused, so a QoS 1 redelivery never queues a task twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import aiomqtt

from acd.errors import AcdError
from acd.model import CALLBACK
from acd.router import RoutedCall, Router
from ivr_engine.config import MqttSettings
from ivr_engine.queue_log import store_path
from ivr_engine.tasks.callback import RESPONSE_SLACK, AmiCallbackDialer, CallbackDialer
from ivr_engine.tasks.keep import STATES, KeptTask, TaskFile, tasks_path
from ivr_engine.tasks.schema import (
    TaskRejected,
    TaskRequest,
    check_id,
    load_object,
    parse_agent_reply,
    parse_cancel,
    parse_submission,
    request_id_of,
)

if TYPE_CHECKING:
    from ivr_engine.acd_gateway import AcdService

log = logging.getLogger(__name__)

SUBMIT_TOPIC = "acd/task/submit"
CANCEL_TOPIC = "acd/task/cancel"
LIST_TOPIC = "acd/task/list"
REPLY_TOPIC = "acd/task/reply"
REJECTED_TOPIC = "acd/task/rejected"
STATUS_TOPIC = "acd/task/status"
AGENT_REPLY_TOPIC = "agent/+/task/reply"


class TaskPublisher(Protocol):
    """The daemon's MqttNotifier (and its stand-in) take a QoS; agents' task topics use 1."""

    def publish(
        self, topic: str, payload: Mapping[str, Any], *, retain: bool = False, qos: int = 0
    ) -> None: ...


class TaskKeeper(Protocol):
    """Where the tasks go on every change (`ivr_engine.tasks.keep.TaskFile`): all of them.
    It logs storage failures itself; anything that escapes is logged and routing goes on."""

    def keep_tasks(self, kept: Mapping[str, KeptTask]) -> None: ...


@dataclass
class TaskRecord:
    """What this service knows of one task beside the router."""

    request: TaskRequest
    submitted_at: float  # unix time
    state: str = "waiting"  # waiting | offered | working (| dropped, inside submit only)
    agent: str = ""
    offers: int = 0
    announced: bool = False
    expiry: asyncio.TimerHandle | None = None
    channel: str = ""  # callback: the agent's PBX channel once answered
    outcome: str = ""  # callback: the customer leg's DIALSTATUS
    submission: dict[str, Any] = field(default_factory=dict)  # as kept for a restart

    def summary(self) -> dict[str, Any]:
        view = self.request.view()
        return {
            "id": self.request.id,
            "channel": self.request.channel,
            "queue": self.request.queue,
            "state": self.state,
            "agent": self.agent or None,
            "offers": self.offers,
            "age": round(time.time() - self.submitted_at, 3),
            "customer": view["customer"],
            "subject": view.get("subject", ""),
        }


class TaskService:
    """Takes task submissions, offers them to agents over MQTT and relays the agents' answers
    to the router. Set as `router.task_sink`; `running()` owns the MQTT subscription."""

    def __init__(
        self,
        router: Router,
        publisher: TaskPublisher,
        *,
        mqtt: MqttSettings | None = None,
        dialer: CallbackDialer | None = None,
        accept_timeout: float | None = None,
        remember: int = 100_000,
    ) -> None:
        self.router = router
        self.publisher = publisher
        self.mqtt = mqtt
        self.dialer = dialer
        self._accept_timeout = accept_timeout
        self.tasks: dict[str, TaskRecord] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self.messages_seen = 0
        self.rejected = 0
        self._task: asyncio.Task[None] | None = None
        #: Every change of the tasks goes here (None: in memory only); see tasks/keep.py.
        self.keeper: TaskKeeper | None = None
        self._unrestored: dict[str, KeptTask] = {}  # kept from before, refused now
        # Callbacks from before a restart waiting for the old ring to be over (see restore).
        self._pending: dict[str, tuple[KeptTask, asyncio.TimerHandle]] = {}

    @property
    def accept_timeout(self) -> float:
        """Seconds an agent has to accept an offer: the router's ring timeout by default."""
        return (
            self._accept_timeout if self._accept_timeout is not None else self.router.ring_timeout
        )

    # ------------------------------------------------------------------ lifecycle

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[TaskService]:
        self.router.task_sink = self
        if self.mqtt is not None:
            self._task = asyncio.get_running_loop().create_task(
                self._subscriber(self.mqtt), name="acd-tasks"
            )
        try:
            yield self
        finally:
            self.router.task_sink = None
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._task = None
            for record in self.tasks.values():
                self._stop_expiry(record)
            for _, handle in self._pending.values():
                handle.cancel()

    # ------------------------------------------------------------------ inputs

    def submit(self, payload: bytes) -> dict[str, Any]:
        """Validate and queue one task; raise `TaskRejected` with the reason (nothing queued)."""
        request = parse_submission(payload, self.router.roster)
        if request.id in self.tasks or request.id in self._seen:
            raise TaskRejected(f"duplicate id {request.id}: a task with this id was submitted")
        record = self._queue(request, time.time())
        log.info(
            "task %s (%s, queue %s) queued: %s",
            request.id,
            request.channel,
            request.queue,
            record.state,
        )
        return {"op": "submit", "ok": True, "task": record.summary()}

    def _queue(self, request: TaskRequest, submitted_at: float) -> TaskRecord:
        record = TaskRecord(request, submitted_at, submission=request.submission())
        self.tasks[request.id] = record
        self._unrestored.pop(request.id, None)  # submitted anew: this copy is the one kept
        try:
            self.router.submit_task(
                request.id,
                queue=request.queue,
                requirement=request.skills,
                priority=request.priority,
                channel=request.channel,
                language=request.language,
                payload=request.view(),
            )
        except AcdError as exc:
            self._stop_expiry(record)
            self.tasks.pop(request.id, None)
            raise TaskRejected(str(exc)) from None
        if record.state == "dropped":  # overflowed on arrival (max_length): nothing is left
            raise TaskRejected(
                f"queue {request.queue} cannot take it now ({record.outcome}); nothing queued"
            )
        self._seen[request.id] = None
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        self._announce(record)
        self._write()
        return record

    def restore(self, kept: Mapping[str, KeptTask]) -> tuple[int, int, int]:
        """At start, before any agent logs in: the tasks the daemon before this one had (see
        tasks/keep.py). Returns (queued again, left with their agents, refused now)."""
        queued = left = 0
        for task_id, k in sorted(kept.items(), key=lambda item: (item[1].submitted_at, item[0])):
            if k.state == "working":
                left += 1
                self._seen[task_id] = None  # a redelivery must not route it to a second agent
                log.warning(
                    "task %s was being worked by agent %s when the daemon stopped: left with "
                    "them, not routed again",
                    task_id,
                    k.agent or "?",
                )
                continue
            if k.state == "offered" and k.owner:
                # A web callback whose agent's phone was ringing: if that agent answers, the
                # PBX dials the customer by itself. Wait the ring out, listening for it.
                adopt = getattr(self.dialer, "adopt", None)
                if adopt is not None:
                    adopt(k.owner)
                wait = self.accept_timeout + RESPONSE_SLACK
                handle = asyncio.get_running_loop().call_later(wait, self._restore_due, task_id)
                self._pending[task_id] = (k, handle)
                queued += 1
                continue
            queued += self._restore_one(task_id, k)
        self._write()
        return queued, left, len(self._unrestored)

    def _restore_one(self, task_id: str, k: KeptTask) -> bool:
        try:
            payload = json.dumps(
                dict(k.submission), ensure_ascii=False, separators=(",", ":")
            ).encode("utf-8")
            request = parse_submission(payload, self.router.roster)
            if request.id != task_id:
                raise TaskRejected(f"its submission says id {request.id}")
            if request.id in self.tasks:
                return False
            self._queue(request, k.submitted_at)
            return True
        except TaskRejected as exc:
            self._unrestored[task_id] = k
            log.error(
                "task %s from before the restart cannot be queued again: %s; it stays in the "
                "task file",
                task_id,
                exc,
            )
            return False

    def _restore_due(self, task_id: str) -> None:
        pending = self._pending.pop(task_id, None)
        if pending is not None and not self._restore_one(task_id, pending[0]):
            self._write()  # refused now: kept as such

    def _write(self) -> None:
        if self.keeper is None:
            return
        kept = dict(self._unrestored)
        kept.update((task_id, k) for task_id, (k, _) in self._pending.items())
        owner = getattr(self.dialer, "owner", "")
        for task_id, r in self.tasks.items():
            state = r.state if r.state in STATES else "waiting"
            ringing = state == "offered" and r.request.channel == CALLBACK
            kept[task_id] = KeptTask(
                r.submission, r.submitted_at, state, r.agent, owner if ringing else ""
            )
        try:
            self.keeper.keep_tasks(kept)
        except Exception:  # the keeper's bug must never stop routing
            log.exception("tasks not kept for a restart")

    def cancel(self, payload: bytes) -> dict[str, Any]:
        request = parse_cancel(payload)
        record = self.tasks.get(request.id)
        if record is None:
            raise TaskRejected(f"no task {request.id} is with the ACD (unknown, done or cancelled)")
        agent, state = record.agent, record.state
        self._forget(record)
        # Told first: the router may offer the agent's freed capacity before it returns.
        if agent and state in ("offered", "working"):
            self._to_agent(agent, "TaskCancelled", record, reason=request.reason)
        self._status(record, "TaskCancelled", reason=request.reason, was=state)
        if record.channel and self.dialer is not None:
            self.router.spawn(self.dialer.hangup(record.channel), f"task-hangup-{request.id}")
        try:
            self.router.task_cancelled(request.id)
        except AcdError as exc:  # the router lost it already: the customer's view is the same
            log.warning("task %s: cancel: %s", request.id, exc)
        log.info("task %s cancelled while %s", request.id, state)
        return {"op": "cancel", "ok": True, "task": {**record.summary(), "state": "cancelled"}}

    def list(self) -> dict[str, Any]:
        tasks = sorted(self.tasks.values(), key=lambda r: r.submitted_at)
        return {"op": "list", "ok": True, "tasks": [r.summary() for r in tasks]}

    def agent_reply(self, agent: str, payload: bytes) -> None:
        """An agent's accept / reject / done; a refusal goes back on the agent's task topic."""
        reply = None
        try:
            reply = parse_agent_reply(payload)
            record = self.tasks.get(reply.task_id)
            if record is None:
                raise TaskRejected(f"no task {reply.task_id} is with the ACD")
            if reply.action == "accept":
                self._accept(record, agent)
            elif reply.action == "reject":
                self._check_offered(record, agent)
                log.info("task %s: agent %s declined (%s)", reply.task_id, agent, reply.reason)
                self._reject(record, agent, "declined")
            else:
                self._done(record, agent)
        except TaskRejected as exc:
            self.rejected += 1
            log.warning("task reply from agent %s refused: %s", agent, exc)
            self.publisher.publish(
                f"agent/{agent}/task",
                {
                    "event": "TaskReplyRefused",
                    "agent": agent,
                    "task_id": reply.task_id if reply else None,
                    "action": reply.action if reply else None,
                    "error": str(exc),
                },
                qos=1,
            )

    def _check_offered(self, record: TaskRecord, agent: str) -> None:
        if record.state != "offered" or record.agent != agent:
            raise TaskRejected(f"task {record.request.id} is not offered to agent {agent}")

    def _accept(self, record: TaskRecord, agent: str) -> None:
        self._check_offered(record, agent)
        if record.request.channel == CALLBACK:
            raise TaskRejected("a callback is accepted by answering the phone")
        self._accepted(record, agent)

    def _router_has(self, record: TaskRecord, agent: str, state: str) -> None:
        """The router's view decides; checked first so that the agent's acknowledgement goes
        out before any offer the router makes while handling the change."""
        call = self.router.calls.get(record.request.id)
        if call is None or call.state != state or call.agent != agent:
            doing = "offered to" if state == "ringing" else "being worked by"
            raise TaskRejected(f"task {record.request.id} is not {doing} agent {agent}")

    def _accepted(self, record: TaskRecord, agent: str) -> None:
        self._router_has(record, agent, "ringing")
        self._stop_expiry(record)
        record.state = "working"
        self._write()
        self._to_agent(agent, "TaskAccepted", record)
        self._status(record, "TaskAccepted", agent=agent)
        try:
            self.router.task_accepted(record.request.id, agent)
        except AcdError as exc:  # checked above: a router bug, said loudly
            log.error("task %s: accept by %s: %s", record.request.id, agent, exc)

    def _reject(self, record: TaskRecord, agent: str, reason: str) -> None:
        """Back to the head of the queue. The record is updated first: the router may offer
        the task again (to another agent, or this one) before `task_rejected` returns."""
        self._stop_expiry(record)
        record.state, record.agent = "waiting", ""
        try:
            self.router.task_rejected(record.request.id, agent)
        except AcdError as exc:  # requeued already (the router's guard) or gone
            log.warning("task %s: reject by %s: %s", record.request.id, agent, exc)
            return
        self._status(record, "TaskRequeued", agent=agent, reason=reason)

    def _done(self, record: TaskRecord, agent: str) -> None:
        if record.state != "working" or record.agent != agent:
            raise TaskRejected(f"task {record.request.id} is not being worked by agent {agent}")
        self._router_has(record, agent, "connected")
        self._forget(record)
        self._to_agent(agent, "TaskDone", record)
        extra = {"outcome": record.outcome} if record.outcome else {}
        self._status(record, "TaskDone", agent=agent, **extra)
        log.info("task %s done by agent %s", record.request.id, agent)
        try:
            self.router.task_done(record.request.id, agent)
        except AcdError as exc:  # checked above: a router bug, said loudly
            log.error("task %s: done by %s: %s", record.request.id, agent, exc)

    # ------------------------------------------------------------------ TaskSink

    def offer(self, call: RoutedCall, agent: str) -> None:
        record = self.tasks.get(call.call_id)
        if record is None:
            # Submitted to the router by someone else: nobody here can deliver it.
            log.error("router offered task %s to %s; not a task of this service", call, agent)
            return
        previous = record.agent
        self._stop_expiry(record)
        if previous and previous != agent and record.state == "offered":
            self._to_agent(previous, "TaskWithdrawn", record, reason="offered-elsewhere")
        record.state, record.agent = "offered", agent
        record.offers += 1
        self._announce(record)
        callback = record.request.channel == CALLBACK
        within = self.accept_timeout + (RESPONSE_SLACK if callback else 0.0)
        self._to_agent(
            agent,
            "TaskOffered",
            record,
            task=record.request.view(),
            accept_within=within,
            accept_by="phone" if callback else "mqtt",
            offer=record.offers,
        )
        self._status(record, "TaskOffered", agent=agent)
        loop = asyncio.get_running_loop()
        record.expiry = loop.call_later(within, self._expired, call.call_id, agent)
        if callback:
            self._write()  # a restart during this ring waits it out (restore)
            self._ring(record, agent)

    def dropped(self, call: RoutedCall, reason: str) -> None:
        record = self.tasks.get(call.call_id)
        if record is None:
            return
        self._forget(record)
        if not record.announced:  # still inside submit(): refused there, never announced
            record.state, record.outcome = "dropped", reason
            return
        log.warning("task %s left its queue unserved (%s)", call.call_id, reason)
        self._status(record, "TaskDropped", reason=reason)

    def _expired(self, task_id: str, agent: str) -> None:
        record = self.tasks.get(task_id)
        if record is None or record.state != "offered" or record.agent != agent:
            return
        record.expiry = None
        log.info("task %s: agent %s did not accept in time; requeued", task_id, agent)
        self._to_agent(agent, "TaskOfferExpired", record)
        self._reject(record, agent, "timeout")

    # ------------------------------------------------------------------ callbacks

    def _ring(self, record: TaskRecord, agent: str) -> None:
        if self.dialer is None:
            log.error("callback %s: no PBX connection to ring agent %s", record.request.id, agent)
            return  # the offer expires and the task waits for the next agent
        entry = self.router.roster.agents.get(agent)
        endpoint = entry.endpoint if entry is not None else f"PJSIP/{agent}"
        self.router.spawn(
            self._ring_agent(record.request.id, agent, endpoint), f"task-ring-{record.request.id}"
        )

    async def _ring_agent(self, task_id: str, agent: str, endpoint: str) -> None:
        record = self.tasks.get(task_id)
        if record is None or self.dialer is None:
            return
        answered = await self.dialer.ring(
            task_id, agent, endpoint, record.request.callback_number, self.accept_timeout
        )
        record = self.tasks.get(task_id)
        if record is None or record.agent != agent:
            return
        if answered:
            if record.state == "offered":
                self._accepted_by_phone(record, agent)
        elif record.state == "offered":
            self._to_agent(agent, "TaskOfferExpired", record)
            self._reject(record, agent, "no-answer")

    def _accepted_by_phone(self, record: TaskRecord, agent: str) -> None:
        try:
            self._accepted(record, agent)
        except TaskRejected as exc:
            log.error("callback %s answered by %s but refused: %s", record.request.id, agent, exc)

    def callback_answered(self, task_id: str, agent: str, channel: str) -> None:
        pending = self._pending.pop(task_id, None)
        if pending is not None:
            # The ring placed before the restart was answered: the PBX dials the customer.
            pending[1].cancel()
            self._write()
            log.info(
                "callback %s: agent %s answered a ring placed before the restart: started",
                task_id,
                agent,
            )
            return
        record = self.tasks.get(task_id)
        if record is None or record.agent != agent or record.state == "waiting":
            # Cancelled (or given to another agent) while this phone rang: no ghost call.
            log.warning(
                "callback %s answered by %s but no longer theirs: hanging up", task_id, agent
            )
            if channel and self.dialer is not None:
                self.router.spawn(self.dialer.hangup(channel), f"task-hangup-{task_id}")
            return
        record.channel = channel
        if record.state == "offered":
            self._accepted_by_phone(record, agent)

    def callback_result(self, task_id: str, agent: str, status: str) -> None:
        record = self.tasks.get(task_id)
        if record is not None and record.agent == agent and not record.outcome:
            record.outcome = status.upper()
            log.info("callback %s: customer leg %s", task_id, record.outcome)

    def callback_ended(self, task_id: str, agent: str) -> None:
        record = self.tasks.get(task_id)
        if record is None or record.agent != agent or record.state != "working":
            return
        record.channel = ""
        try:
            self._done(record, agent)
        except TaskRejected as exc:
            log.warning("callback %s ended: %s", task_id, exc)

    # ------------------------------------------------------------------ output

    def _announce(self, record: TaskRecord) -> None:
        if not record.announced:
            record.announced = True
            self._status(record, "TaskQueued", task=record.request.view())

    def _status(self, record: TaskRecord, event: str, **data: Any) -> None:
        task_id = record.request.id
        self.publisher.publish(
            f"{STATUS_TOPIC}/{task_id}",
            {"event": event, "id": task_id, "channel": record.request.channel, **data},
        )

    def _to_agent(self, agent: str, event: str, record: TaskRecord, **data: Any) -> None:
        self.publisher.publish(
            f"agent/{agent}/task",
            {"event": event, "task_id": record.request.id, "agent": agent, **data},
            qos=1,
        )

    def _forget(self, record: TaskRecord) -> None:
        self._stop_expiry(record)
        if self.tasks.pop(record.request.id, None) is not None:
            self._write()

    @staticmethod
    def _stop_expiry(record: TaskRecord) -> None:
        if record.expiry is not None:
            record.expiry.cancel()
            record.expiry = None

    # ------------------------------------------------------------------ MQTT

    def topics(self, prefix: str) -> dict[str, str]:
        p = prefix.strip("/")
        return {
            "submit": f"{p}/{SUBMIT_TOPIC}",
            "cancel": f"{p}/{CANCEL_TOPIC}",
            "list": f"{p}/{LIST_TOPIC}",
            "agent": f"{p}/{AGENT_REPLY_TOPIC}",
        }

    def handle(self, topic: str, payload: bytes, prefix: str) -> None:
        """One message from the broker, handled to the end (validate, then the router)."""
        self.messages_seen += 1
        p = prefix.strip("/")
        relative = topic[len(p) + 1 :] if topic.startswith(p + "/") else topic
        parts = relative.split("/")
        if len(parts) == 4 and parts[0] == "agent" and parts[2:] == ["task", "reply"]:
            self.agent_reply(parts[1], payload)
            return
        op = {SUBMIT_TOPIC: "submit", CANCEL_TOPIC: "cancel", LIST_TOPIC: "list"}.get(relative)
        if op is None:
            return
        request_id = request_id_of(payload)
        try:
            if op == "submit":
                reply = self.submit(payload)
            elif op == "cancel":
                reply = self.cancel(payload)
            else:
                check_id(load_object(payload, "a list request").get("id"))
                reply = self.list()
        except TaskRejected as exc:
            self.rejected += 1
            reply = {"op": op, "ok": False, "error": str(exc)}
            log.warning("task %s refused (id %r): %s", op, request_id or None, exc)
        if request_id:
            self.publisher.publish(f"{REPLY_TOPIC}/{request_id}", {"id": request_id, **reply})
        else:
            self.publisher.publish(REJECTED_TOPIC, {"id": None, **reply})

    async def _subscriber(self, settings: MqttSettings) -> None:
        """A subscriber connection of its own (the notifier only publishes); reconnects with
        a backoff like AcdService's command channel."""
        topics = self.topics(settings.topic_prefix)
        delay = 0.5
        while True:
            try:
                async with aiomqtt.Client(
                    settings.host,
                    settings.port,
                    identifier=f"ivr-engine-tasks-{os.getpid()}-{id(self):x}",
                    username=settings.username or None,
                    password=settings.password or None,
                    timeout=5,
                ) as client:
                    for topic in topics.values():
                        await client.subscribe(topic, qos=1)
                    delay = 0.5
                    log.info("ACD tasks: subscribed on %s:%d", settings.host, settings.port)
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes):
                            self._handle_safely(str(message.topic), payload, settings.topic_prefix)
            except aiomqtt.MqttError as exc:
                log.warning("ACD tasks: MQTT %s:%d: %s", settings.host, settings.port, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _handle_safely(self, topic: str, payload: bytes, prefix: str) -> None:
        try:
            self.handle(topic, payload, prefix)
        except Exception:  # one bad message must not end the subscription
            log.exception("ACD tasks: message on %s not handled", topic)


@contextlib.asynccontextmanager
async def task_extension(service: AcdService) -> AsyncIterator[TaskService]:
    """The `acd_extensions.EXTENSIONS` factory: tasks over MQTT, callbacks over AMI."""
    tasks = TaskService(service.router, cast(TaskPublisher, service.publisher), mqtt=service.mqtt)
    settings = service.settings
    dialer = AmiCallbackDialer(
        service.ami, tasks, dial=settings.callback_dial, customer_ring=settings.callback_ring
    )
    dialer.start()
    tasks.dialer = dialer
    try:
        async with tasks.running():
            yield tasks
    finally:
        dialer.close()


@contextlib.asynccontextmanager
async def task_keep_extension(service: AcdService) -> AsyncIterator[TaskFile | None]:
    """The `EXTENSIONS` factory that keeps the tasks across a restart (tasks/keep.py): listed
    after the queue_log and the statistics, so that they see the tasks queued again."""
    tasks = service.router.task_sink
    if not isinstance(tasks, TaskService):
        yield None
        return
    keeper = TaskFile(tasks_path(store_path(service)))
    kept = await asyncio.to_thread(keeper.load)
    tasks.keeper = keeper
    queued, left, refused = tasks.restore(kept)
    if kept:
        log.info(
            "ACD: %d task(s) from before the restart queued again, %d left with the agents "
            "working them, %d refused; kept in %s",
            queued,
            left,
            refused,
            keeper.path,
        )
    try:
        yield keeper
    finally:
        tasks.keeper = None
