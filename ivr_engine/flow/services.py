"""What the interpreter needs beyond the call channel: small protocols the composition root
implements (CIF data sources, the ACD queue, the audit log, the call-record store), plus the
one queue gateway that needs nothing but the channel: hand the call back to the dialplan.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from ivr_engine.flow.channel import CallChannel
from ivr_engine.prompts import Utterance

# A named data source ("cif.caller", "cif.verify_pin", ...): params in, a mapping out. The
# interpreter applies the node's timeout and sends any exception to the node's error exit.
DataSource = Callable[[Mapping[str, object]], Awaitable[Mapping[str, object]]]


class PromptRenderer(Protocol):
    """The part of `ivr_engine.prompts.PromptCatalogue` the interpreter uses."""

    def render(
        self, prompt_id: str, langs: Sequence[str], variables: Mapping[str, object] | None = None
    ) -> list[Utterance]: ...

    def say(self, kind: str, value: object, langs: Sequence[str]) -> list[Utterance]: ...


@dataclass(frozen=True)
class QueueRequest:
    call_id: str
    queue: str
    skills: str  # the ACD's skill expression, e.g. "cards & lang_yue"
    priority: int
    language: str
    data: Mapping[str, str]  # screen pop for the agent (never sensitive: lint checks)
    timeout: float


@dataclass(frozen=True)
class QueueOutcome:
    kind: str  # answered | timeout | abandoned | overflow | callback | closed | handed_off
    agent: str = ""
    detail: str = ""


class QueueGateway(Protocol):
    async def enqueue(self, channel: CallChannel, request: QueueRequest) -> QueueOutcome: ...


class DialplanQueueGateway:
    """Until the ACD routes calls itself: set IVR_NEXT=queue and friends, end the flow.

    The dialplan reads the variables after the AGI returns and runs Queue() itself."""

    async def enqueue(self, channel: CallChannel, request: QueueRequest) -> QueueOutcome:
        await channel.set_variable("IVR_NEXT", "queue")
        await channel.set_variable("IVR_QUEUE", request.queue)
        await channel.set_variable("IVR_PRIORITY", str(request.priority))
        await channel.set_variable("IVR_SKILLS", request.skills)
        await channel.set_variable("IVR_LANGUAGE", request.language)
        for key, value in request.data.items():
            await channel.set_variable(f"IVR_DATA_{key.upper()}", value)
        return QueueOutcome("handed_off")


@dataclass(frozen=True)
class AuditEntry:
    call_id: str
    flow: str
    node: str
    operation: str  # e.g. "transfer", "wealth_purchase", "card_block"
    details: Mapping[str, str]  # already masked by the flow (lint refuses sensitive values)
    outcome: str  # confirmed | re-enter | cancelled:silence | cancelled:invalid | cancelled:hangup


class AuditSink(Protocol):
    async def record(self, entry: AuditEntry) -> None: ...


@dataclass(frozen=True)
class FlowOutcome:
    """Where a call left the flow."""

    kind: str  # queue | transfer | hangup | caller_hangup | return | error
    flow: str
    node: str
    detail: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


class CallObserver(Protocol):
    """Everything a call does in the flow, for call records and traces. Values are already
    masked when sensitive. Must not block: implementations buffer."""

    def node_entered(self, call_id: str, flow: str, node: str, kind: str) -> None: ...

    def input_received(self, call_id: str, node: str, digits: str, status: str) -> None: ...

    def prompt_played(self, call_id: str, node: str, prompt: str, text: str) -> None: ...

    def variable_set(self, call_id: str, name: str, value: str) -> None: ...

    def flow_ended(self, call_id: str, outcome: FlowOutcome) -> None: ...


@dataclass(frozen=True)
class Services:
    sources: Mapping[str, DataSource]
    queue: QueueGateway
    audit: AuditSink
    observer: CallObserver
