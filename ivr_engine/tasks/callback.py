"""Web callbacks over AMI: the reserved agent's phone first, then the customer.

When the router reserves an agent for a callback task, `AmiCallbackDialer.ring()` originates
the agent's phone (`Channel=PJSIP/<agent>`, ring timeout = the router's) into
`[task-callback]` of asterisk-conf/extensions-tasks.conf. Nothing is dialled towards the
customer until the agent has answered: the agent hears a short notice, then the dialplan Dials
the customer's number. The dialplan reports each step as a UserEvent keyed by the task id:

    AcdTaskAnswered    Task, Agent, Owner          the agent picked up (the router's "accepted")
    AcdTaskDialResult  Task, Agent, Owner, Status  the customer leg's DIALSTATUS
    AcdTaskEnded       Task, Agent, Owner, Status  the agent's channel hung up ("done")

`Owner` is this dialer's TASK_OWNER: events of callbacks another daemon placed are ignored.

An agent who does not answer makes Asterisk's OriginateResponse a Failure (reason 3, no
answer): `ring()` returns False and the task goes back to the head of its queue.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Protocol

from ivr_engine.errors import AmiError
from ivr_engine.protocol.ami import AmiEvent
from ivr_engine.transport.ami import AmiClient

log = logging.getLogger(__name__)

CONTEXT = "task-callback"
#: Seconds beyond the ring timeout to wait for OriginateResponse (Asterisk sends it at the
#: answer or when the ring times out; the slack covers a loaded PBX).
RESPONSE_SLACK = 5.0


class CallbackEvents(Protocol):
    """What the dialplan's UserEvents turn into (the task service implements it)."""

    def callback_answered(self, task_id: str, agent: str, channel: str) -> None: ...

    def callback_result(self, task_id: str, agent: str, status: str) -> None: ...

    def callback_ended(self, task_id: str, agent: str) -> None: ...


class CallbackDialer(Protocol):
    """Rings agents for callbacks; `AmiCallbackDialer` is the real one, tests pass fakes."""

    async def ring(
        self, task_id: str, agent: str, endpoint: str, number: str, ring_timeout: float
    ) -> bool: ...

    async def hangup(self, channel: str) -> None: ...


#: The [acd] settings' default (ivr_engine.config.AcdSettings.callback_dial).
DEFAULT_DIAL = "PJSIP/devtrunk/sip:{number}@127.0.0.1:5062"


class AmiCallbackDialer:
    """`CallbackDialer` over an `AmiClient`. `dial` is the PBX dial string of the customer's
    number (`{number}` replaced; the `[acd]` setting `callback_dial`, shared with the voice
    callbacks), `customer_ring` how long the customer's phone rings (`callback_ring`)."""

    def __init__(
        self,
        ami: AmiClient,
        events: CallbackEvents,
        *,
        dial: str = DEFAULT_DIAL,
        customer_ring: float = 30.0,
    ) -> None:
        if "{number}" not in dial:
            raise ValueError(f"callback dial string {dial!r} has no {{number}}")
        self._ami = ami
        self._events = events
        #: Rides along as TASK_OWNER and comes back in every UserEvent: another daemon on the
        #: same PBX (a standby, a test run) never acts on this one's callbacks, nor it on theirs.
        self.owner = secrets.token_hex(8)
        self._owners = {self.owner}
        self._dial = dial
        self._customer_ring = customer_ring
        self._unsubscribe: Callable[[], None] | None = None

    def adopt(self, owner: str) -> None:
        """Also act on the callbacks rung by `owner`: the daemon before a restart, whose ring
        may still be answered (`TaskService.restore`)."""
        if owner:
            self._owners.add(owner)

    def start(self) -> None:
        self._unsubscribe = self._ami.subscribe("UserEvent", self._on_user_event)

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def ring(
        self, task_id: str, agent: str, endpoint: str, number: str, ring_timeout: float
    ) -> bool:
        """Originate the agent's phone into [task-callback]; True once the agent answered,
        False when the phone was not answered (or the PBX refused the Originate)."""
        variables = {
            "TASK_ID": task_id,
            "TASK_AGENT": agent,
            "TASK_OWNER": self.owner,
            "TASK_NUMBER": number,  # validated digits (schema); the dialplan checks again
            "TASK_DIAL": self._dial.format(number=number),
            "TASK_RING": str(max(1, round(self._customer_ring))),
        }
        try:
            action_id = await self._ami.originate(
                channel=endpoint,
                context=CONTEXT,
                exten="s",
                caller_id=f'"Web callback" <{agent}>',
                variables=variables,
                ring_timeout=ring_timeout,
            )
            response = await self._ami.originate_response(
                action_id, timeout=ring_timeout + RESPONSE_SLACK
            )
        except AmiError as exc:
            log.warning("callback %s: ringing agent %s failed: %s", task_id, agent, exc)
            return False
        if not response.success:
            log.info(
                "callback %s: agent %s did not answer (reason %s)", task_id, agent, response.reason
            )
        return response.success

    async def hangup(self, channel: str) -> None:
        try:
            await self._ami.action({"Action": "Hangup", "Channel": channel, "Cause": "16"})
        except AmiError as exc:
            log.warning("callback: hangup of %s failed: %s", channel, exc)

    def _on_user_event(self, event: AmiEvent) -> None:
        f = event.fields
        kind = f.get("UserEvent", "")
        task_id, agent = f.get("Task", ""), f.get("Agent", "")
        if not kind.startswith("AcdTask") or not task_id or f.get("Owner", "") not in self._owners:
            return
        try:
            if kind == "AcdTaskAnswered":
                self._events.callback_answered(task_id, agent, f.get("Channel", ""))
            elif kind == "AcdTaskDialResult":
                self._events.callback_result(task_id, agent, f.get("Status", ""))
            elif kind == "AcdTaskEnded":
                if f.get("Status", ""):  # the agent hung up during the customer leg
                    self._events.callback_result(task_id, agent, f.get("Status", ""))
                self._events.callback_ended(task_id, agent)
        except Exception:  # an AMI subscriber must not raise into the client's reader
            log.exception("callback %s: %s from agent %s not handled", task_id, kind, agent)
