"""Agent-sent confirmations: an agent hands a risky operation to the caller, who hears the same
read-back as in self-service and confirms it with 1; then caller and agent talk again.

```
agent desktop --MQTT <prefix>/agent/<id>/confirm ----+
  {"id", "call_id", "operation", "amount", "account"} |
agent's AMI client --UserEvent AgentConfirm ----------+--> AgentConfirmations.start()
  (Agent, Id, Call, Operation, Amount, Account)             |  the ACD router knows the call:
                                                            |  connected to this agent, its
                                                            |  caller channel, customer, language
   Getvar BRIDGEPEER (caller channel) -> the agent's channel
   Setvar IVR_CONFIRM_* on the caller channel (account: last 4 digits only)
   Redirect caller -> [agent-confirm] (AGI .../agent_confirm: flows/agent_confirm.yaml, which
            ExtraChannel agent -> [agent-confirm-hold]    asks `agent.confirm_request` here)
   [agent-confirm]: UserEvent AgentConfirmDone (Outcome: ${IVR_CONFIRM}), Bridge() back to the agent
   --> <prefix>/agent/<id>/confirm/result {"id", "call_id", "operation", "amount", "account":
       "****1234", "outcome": "confirmed" | "reenter" | "cancelled" | "failed", "ok": true}
```

A request that cannot be carried out (malformed, a call this agent is not talking to, a call
already confirming, the PBX refusing the Redirect) is answered on the same result topic with
`"ok": false` and the reason, and the call is left as it was: the agent still has the caller.
A caller who hangs up while confirming: outcome `cancelled` (reason `caller-hung-up`); the
dialplan's `h` extension sends the agent's channel to a goodbye, and the router's
`channel_gone` ends the ACD call, which frees the agent.

The full account number never leaves `parse_request`: only its last 4 digits are kept,
published, logged or put in a channel variable. The audit record (operation and outcome) is
written by the flow's confirm node, as for self-service.

Plugged into the ACD service by `ivr_engine/acd_extensions.py` (`extension`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import aiomqtt

from ivr_engine.errors import AmiError
from ivr_engine.protocol.ami import AmiEvent, AmiResponse, Hangup

if TYPE_CHECKING:
    from ivr_engine.acd_gateway import AcdService
    from ivr_engine.transport.ami import AmiClient

log = logging.getLogger(__name__)

CONFIRM_TOPIC = "agent/+/confirm"  # under the MQTT topic prefix
CONFIRM_CONTEXT = "agent-confirm"  # asterisk-conf/extensions-confirm.conf
HOLD_CONTEXT = "agent-confirm-hold"
OPERATIONS = ("transfer", "wealth_purchase")
MAX_AMOUNT = Decimal("10000000.00")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}\Z")
_AGENT_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,32}\Z")
_FIELDS = {"id", "call_id", "operation", "amount", "account"}

#: The running instance of each ACD service, for the flow's data source (`pending_for`).
_LIVE: weakref.WeakKeyDictionary[Any, AgentConfirmations] = weakref.WeakKeyDictionary()


class RequestError(ValueError):
    """A confirmation request that cannot be carried out (the reason goes back to the agent)."""


@dataclass(frozen=True, slots=True)
class ConfirmRequest:
    id: str
    agent: str
    call_id: str
    operation: str
    amount: Decimal
    account_last4: str

    def public(self) -> dict[str, str]:
        """What may be published or logged: the account as its last 4 digits."""
        return {
            "id": self.id,
            "call_id": self.call_id,
            "operation": self.operation,
            "amount": f"{self.amount:.2f}",
            "account": f"****{self.account_last4}",
        }


@dataclass
class PendingConfirm:
    request: ConfirmRequest
    customer_id: str
    language: str
    caller_channel: str
    agent_channel: str
    started: float = field(default_factory=time.monotonic)


def parse_request(agent: str, body: Mapping[str, Any]) -> ConfirmRequest:
    """Validate one request; raise RequestError naming what is wrong (never quoting the
    account number)."""
    if not _AGENT_ID.match(agent):
        raise RequestError("agent id must be 1-32 characters of letters, digits and _.-")
    unknown = set(body) - _FIELDS
    if unknown:
        raise RequestError(f"unknown field(s): {', '.join(sorted(unknown))}")
    missing = _FIELDS - set(body)
    if missing:
        raise RequestError(f"missing field(s): {', '.join(sorted(missing))}")
    request_id = body["id"]
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise RequestError("id must be 1-64 characters of letters, digits and _.-")
    call_id = body["call_id"]
    if not isinstance(call_id, str) or not 1 <= len(call_id) <= 128:
        raise RequestError("call_id must be the call's id (a string)")
    operation = body["operation"]
    if operation not in OPERATIONS:
        raise RequestError(f"operation must be one of {', '.join(OPERATIONS)}")
    raw_amount = body["amount"]
    if isinstance(raw_amount, bool) or not isinstance(raw_amount, str | int | float):
        raise RequestError('amount must be a number of yuan, e.g. "5000.00"')
    try:
        amount = Decimal(str(raw_amount))
    except InvalidOperation:
        raise RequestError('amount must be a number of yuan, e.g. "5000.00"') from None
    if not amount.is_finite() or amount <= 0 or amount > MAX_AMOUNT:
        raise RequestError(f"amount must be positive and at most {MAX_AMOUNT}")
    if amount != amount.quantize(Decimal("0.01")):
        raise RequestError("amount has more than 2 decimals (fen)")
    account = body["account"]
    if not isinstance(account, str) or not account.isdigit() or not 4 <= len(account) <= 24:
        raise RequestError("account must be the account number (or its last 4 digits), digits only")
    return ConfirmRequest(
        request_id, agent, call_id, str(operation), amount.quantize(Decimal("0.01")), account[-4:]
    )


def pending_for(service: Any, call_id: str) -> PendingConfirm | None:
    """The confirmation the caller of `call_id` is asked for now (the flow's data source)."""
    running = _LIVE.get(service) if service is not None else None
    return running.pending.get(call_id) if running is not None else None


class AgentConfirmations:
    """Runs beside the ACD router (one per `AcdService`): requests in over MQTT and AMI,
    Redirects out, outcomes back to the agent."""

    def __init__(self, service: AcdService, *, ami: AmiClient | None = None) -> None:
        self.service = service
        self.router = service.router
        self.ami = ami or service.ami
        self.publisher = service.publisher
        self.mqtt = service.mqtt
        self.pending: dict[str, PendingConfirm] = {}
        self.results: list[dict[str, Any]] = []  # the last results published (bounded)
        self._unsubscribe: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AgentConfirmations]:
        for name, callback in (("UserEvent", self._on_user_event), ("Hangup", self._on_hangup)):
            self._unsubscribe.append(self.ami.subscribe(name, callback))
        if self.mqtt is not None:
            self._spawn(self._listen(), "agent-confirm-mqtt")
        _LIVE[self.service] = self
        try:
            yield self
        finally:
            _LIVE.pop(self.service, None)
            for unsubscribe in self._unsubscribe:
                unsubscribe()
            self._unsubscribe.clear()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ requests in

    async def handle_message(self, topic: str, payload: bytes) -> None:
        """One MQTT message on `<prefix>/agent/<agent>/confirm`."""
        parts = topic.split("/")
        agent = parts[-2] if len(parts) >= 2 else ""
        request_id = ""
        try:
            body = json.loads(payload)
            if not isinstance(body, dict):
                raise RequestError("a confirmation request is a JSON object")
            request_id = str(body.get("id", ""))
            request = parse_request(agent, body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._refuse(agent, request_id, f"not JSON: {exc.__class__.__name__}")
            return
        except RequestError as exc:
            self._refuse(agent, request_id, str(exc))
            return
        await self.start(request)

    def _on_user_event(self, event: AmiEvent) -> None:
        f = event.fields
        kind = f.get("UserEvent", "")
        if kind == "AgentConfirm":  # sent by an agent's AMI client (Action: UserEvent)
            body = {
                k: f.get(h, "")
                for k, h in (
                    ("id", "Id"),
                    ("call_id", "Call"),
                    ("operation", "Operation"),
                    ("amount", "Amount"),
                    ("account", "Account"),
                )
            }
            agent = f.get("Agent", "")
            try:
                request = parse_request(agent, body)
            except RequestError as exc:
                self._refuse(agent, body["id"], str(exc))
                return
            self._spawn(self.start(request), f"agent-confirm-{request.call_id}")
        elif kind == "AgentConfirmDone":
            self.finish(
                f.get("Call", ""),
                f.get("Outcome", ""),
                f.get("Reason", ""),
                request_id=f.get("Id", ""),
            )

    def _on_hangup(self, event: AmiEvent) -> None:
        if not isinstance(event, Hangup):
            return
        for call_id, pending in list(self.pending.items()):
            if pending.caller_channel == event.channel:
                self.finish(call_id, "cancelled", "caller-hung-up")

    async def start(self, request: ConfirmRequest) -> None:
        """Send the caller of `request.call_id` to the confirmation; refuse with a reason."""
        try:
            pending = await self._start(request)
        except RequestError as exc:
            self._refuse(request.agent, request.id, str(exc))
            return
        except AmiError as exc:
            self.pending.pop(request.call_id, None)
            log.error(
                "agent confirm %s: the PBX refused (%s); the call stays with agent %s",
                request.id,
                exc,
                request.agent,
            )
            self._refuse(request.agent, request.id, f"PBX: {exc}")
            return
        log.info(
            "agent %s sent %s of %s to account %s to the caller of %s for confirmation",
            request.agent,
            request.operation,
            f"{request.amount:.2f}",
            f"****{request.account_last4}",
            request.call_id,
        )
        self.publisher.publish(
            f"agent/{request.agent}/state",
            {
                "event": "ConfirmStarted",
                "agent": request.agent,
                **request.public(),
                "customer": pending.customer_id,
            },
        )

    async def _start(self, request: ConfirmRequest) -> PendingConfirm:
        call = self.router.calls.get(request.call_id)
        if call is None or call.state != "connected" or call.agent != request.agent:
            raise RequestError(f"agent {request.agent} is not talking to call {request.call_id}")
        if request.call_id in self.pending:
            raise RequestError(f"call {request.call_id} is already confirming an operation")
        entry = self.router.roster.agents.get(request.agent)
        if entry is None:
            raise RequestError(f"agent {request.agent} is not in the roster")
        pending = PendingConfirm(
            request,
            customer_id=str(call.screen_pop.get("customer", "")),
            language=call.language or "cmn",
            caller_channel=call.channel,
            agent_channel="",
        )
        self.pending[request.call_id] = pending  # from here on a second request is refused
        peer = await self._getvar(call.channel, "BRIDGEPEER")
        if not peer.startswith(f"{entry.endpoint}-"):
            # Not bridged to this agent's phone (on hold elsewhere, transferred, ...).
            self.pending.pop(request.call_id, None)
            raise RequestError(
                f"call {request.call_id} is not bridged to agent {request.agent}'s phone"
            )
        pending.agent_channel = peer
        for name, value in (
            ("IVR_CONFIRM_ID", request.id),
            ("IVR_CONFIRM_AGENT", request.agent),
            ("IVR_CONFIRM_PEER", peer),
            ("IVR_CONFIRM_OPERATION", request.operation),
            ("IVR_CONFIRM_AMOUNT", f"{request.amount:.2f}"),
            ("IVR_CONFIRM_ACCOUNT", request.account_last4),
        ):
            await self.ami.action(
                {"Action": "Setvar", "Channel": call.channel, "Variable": name, "Value": value}
            )
        await self.ami.action(
            {
                "Action": "Redirect",
                "Channel": call.channel,
                "Context": CONFIRM_CONTEXT,
                "Exten": "s",
                "Priority": "1",
                "ExtraChannel": peer,
                "ExtraContext": HOLD_CONTEXT,
                "ExtraExten": "s",
                "ExtraPriority": "1",
            }
        )
        return pending

    async def _getvar(self, channel: str, name: str) -> str:
        reply = await self.ami.action({"Action": "Getvar", "Channel": channel, "Variable": name})
        if isinstance(reply, AmiResponse):
            return reply.fields.get_str("Value")
        return ""

    # ------------------------------------------------------------------ outcomes out

    def finish(self, call_id: str, outcome: str, reason: str = "", *, request_id: str = "") -> None:
        """The caller answered (or hung up): tell the agent. Idempotent per confirmation."""
        pending = self.pending.get(call_id)
        if pending is None or (request_id and request_id != pending.request.id):
            return
        del self.pending[call_id]
        request = pending.request
        outcome = outcome if outcome in ("confirmed", "reenter", "cancelled") else "failed"
        result: dict[str, Any] = {
            **request.public(),
            "ok": True,
            "outcome": outcome,
            "seconds": round(time.monotonic() - pending.started, 1),
        }
        if reason:
            result["reason"] = reason
        self.publisher.publish(f"agent/{request.agent}/confirm/result", result)
        self.results = [*self.results[-99:], result]
        log.info(
            "agent confirm %s on call %s: %s%s",
            request.id,
            call_id,
            outcome,
            f" ({reason})" if reason else "",
        )

    def _refuse(self, agent: str, request_id: str, reason: str) -> None:
        log.warning("agent confirm request %r from agent %r refused: %s", request_id, agent, reason)
        if not _AGENT_ID.match(agent) or not _REQUEST_ID.match(request_id):
            return  # nowhere to answer
        self.publisher.publish(
            f"agent/{agent}/confirm/result", {"id": request_id, "ok": False, "error": reason}
        )

    # ------------------------------------------------------------------ MQTT

    async def _listen(self) -> None:
        """A subscriber connection of its own (as the ACD's command channel has)."""
        settings = self.mqtt
        if settings is None:
            return
        topic = "/".join((settings.topic_prefix.strip("/"), CONFIRM_TOPIC))
        delay = 0.5
        while True:
            try:
                async with aiomqtt.Client(
                    settings.host,
                    settings.port,
                    identifier=f"ivr-engine-confirm-{os.getpid()}-{id(self):x}",
                    username=settings.username or None,
                    password=settings.password or None,
                    timeout=5,
                ) as client:
                    await client.subscribe(topic, qos=1)
                    delay = 0.5
                    async for message in client.messages:
                        if isinstance(message.payload, bytes):
                            await self.handle_message(str(message.topic), message.payload)
            except aiomqtt.MqttError as exc:
                log.warning("agent confirm: MQTT %s:%d: %s", settings.host, settings.port, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def extension(service: AcdService) -> contextlib.AbstractAsyncContextManager[Any]:
    """The `acd_extensions.EXTENSIONS` factory."""
    return AgentConfirmations(service).running()
