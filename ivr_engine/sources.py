"""What the hotline flows call: the named data sources, the audit sink and the call trace.

The flows (`flows/*.yaml`) declare each source with its parameters and result fields; this
module implements them on the CIF store, the call record and the audit log. Each call gets its
own `CallContext`, so a lookup also fills in the call's record (customer, tier, region,
language) and a survey score lands on the call it was given on.

Values handed back to the interpreter are plain str/bool/int/Decimal/date, as the flow's field
types expect. Sensitive parameters (PIN, full card or account numbers) are used and dropped:
never logged, never stored, never put in an error message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Protocol

from ivr_engine.agent_sources import build_agent_sources
from ivr_engine.cif.masking import mask_value
from ivr_engine.cif.model import CallerProfile, CardStatus
from ivr_engine.cif.store import CifStore
from ivr_engine.errors import StoreError
from ivr_engine.flow.channel import CallChannel
from ivr_engine.flow.services import (
    AuditEntry,
    DataSource,
    FlowOutcome,
    QueueGateway,
    QueueOutcome,
    QueueRequest,
)
from ivr_engine.records import CallRecord

if TYPE_CHECKING:
    from ivr_engine.app import Engine
    from ivr_engine.audit import AuditLog

log = logging.getLogger(__name__)

#: The languages a greeting may be spoken in (the hotline flow's `languages`).
_LANGUAGES = ("cmn", "yue", "en")
#: Flows the dialplan runs on a hotline caller's channel after the hotline flow (agent-sent
#: confirmation, post-call survey): their call records are `<call id>+<flow>`.
FOLLOW_ON_FLOWS = frozenset({"agent_confirm", "survey"})


class Notifier(Protocol):
    def publish(
        self, topic: str, payload: Mapping[str, Any], *, retain: bool = False, qos: int = 0
    ) -> None: ...


class SourceError(Exception):
    """A source could not answer; the interpreter sends the call to the node's error exit."""


@dataclass
class CallContext:
    call_id: str
    record: CallRecord
    customer_id: int | None = None

    def finish(self, outcome: FlowOutcome) -> None:
        kind = {
            "queue": "queued",
            "transfer": "transferred",
            "hangup": "completed",
            "caller_hangup": "hangup-by-caller",
            "return": "completed",
            "error": "fallback",
        }.get(outcome.kind, "fallback")
        self.record.event("flow-ended", how=outcome.kind, flow=outcome.flow, node=outcome.node)
        self.record.end(kind)


def _customer_id(params: Mapping[str, object]) -> int:
    raw = str(params.get("customer_id") or "")
    if not raw.isdigit():
        raise SourceError("no customer on this call")
    return int(raw)


def _cents(value: object) -> int:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise SourceError("amount is not a number") from None
    if amount <= 0 or amount != amount.quantize(Decimal("0.01")):
        raise SourceError("amount must be positive, in fen")
    return int(amount * 100)


def caller_fields(profile: CallerProfile) -> dict[str, object]:
    """The `cif.caller` result the hotline flow declares (flows/hotline.yaml)."""
    c = profile.customer
    main_card = next((k for k in profile.cards if k.status is not CardStatus.CANCELLED), None)
    bill = profile.unpaid_bill
    fields: dict[str, object] = {
        "found": c is not None,
        "customer_id": str(c.id) if c else "",
        "surname": c.surname if c else "",
        "title": str(c.title) if c else "",
        "tier": str(c.tier) if c else "",
        "service_tier": str(profile.service_tier),
        "preferred_language": str(c.preferred_language) if c and c.preferred_language else "",
        "cantonese_region": profile.region.is_cantonese_region,
        "region": profile.region.label() if profile.region.known else "",
        "bound": profile.bound,
        "bill_unpaid": bill is not None,
        "risk_flagged": profile.risk_flagged,
        "calls_today": profile.calls_today,
        "card_ref": str(main_card.id) if main_card else "",
        "card_last4": main_card.last4 if main_card else "",
        "account_last4": "",
        "pin_locked": profile.pin_locked,
    }
    if bill is not None:
        fields.update(bill_amount=bill.amount, bill_minimum=bill.minimum, bill_due=bill.due_date)
    return fields


def build_sources(engine: Engine, ctx: CallContext) -> dict[str, DataSource]:
    """The data sources of one call, bound to its context."""
    cif = engine.cif
    recorder = engine.recorder
    if cif is None or recorder is None:
        raise RuntimeError("engine not started")
    store: CifStore = cif
    if ctx.record.flow_name in FOLLOW_ON_FLOWS and ctx.record.id == ctx.call_id:
        # The same Asterisk channel (uniqueid) as the hotline call it follows: under the same
        # id this record would replace the hotline call's record (an upsert). It gets its own.
        ctx.record.id = f"{ctx.call_id}+{ctx.record.flow_name}"
        ctx.record.event("follows", call=ctx.call_id)

    async def caller(params: Mapping[str, object]) -> Mapping[str, object]:
        number = str(params.get("number") or "")
        profile = await store.safe_profile(number or None)
        fields = caller_fields(profile)
        catalogue = engine.catalogue
        # A region the prompts cannot speak (a city outside the tables, or only "China")
        # would fail the greeting: greet without it instead. Load runs found ~1% such callers.
        region = str(fields["region"])
        if (
            catalogue is not None
            and region
            and not all(catalogue.can_say("region", region, lang) for lang in _LANGUAGES)
        ):
            log.info("caller's region is not in the speech tables; greeting without it")
            fields["region"] = ""
        # Likewise a surname outside the name tables (ivr_engine/prompts/names.py): the
        # customer is greeted without it rather than hearing "technical difficulties".
        surname = str(fields["surname"])
        if (
            catalogue is not None
            and surname
            and not all(catalogue.can_say("surname", surname, lang) for lang in _LANGUAGES)
        ):
            log.info("customer's surname is not in the speech tables; greeting without it")
            fields["surname"] = ""
        accounts: list[Any] = []
        if profile.customer is not None and not profile.degraded:
            try:
                async with asyncio.timeout(store.read_timeout):
                    accounts = await store.balance(profile.customer.id)
            except (StoreError, TimeoutError) as exc:
                # The greeting does not need the account: greet now, without its last 4.
                log.warning("CIF accounts unavailable for the greeting: %s", exc)
        if accounts:
            fields["account_last4"] = accounts[0].masked[-4:]
        r = ctx.record
        r.customer_id = profile.customer.id if profile.customer else None
        r.tier = str(profile.service_tier)
        r.region = profile.region.label() if profile.region.known else "unknown"
        r.language = str(profile.language)
        if profile.customer is not None:
            ctx.customer_id = profile.customer.id
            # noted now, written in the background: the greeting never waits on a write
            store.count_call(profile.customer.id)
        r.event(
            "caller-identified",
            known=profile.known,
            tier=str(profile.service_tier),
            calls_today=profile.calls_today,
            risk_flagged=profile.risk_flagged,
            degraded=profile.degraded,
        )
        return fields

    async def balance(params: Mapping[str, object]) -> Mapping[str, object]:
        accounts = await store.balance(_customer_id(params))
        if not accounts:
            raise SourceError("customer has no account")
        return {"available": accounts[0].balance}

    async def verify_pin(params: Mapping[str, object]) -> Mapping[str, object]:
        cid = _customer_id(params)
        ok = await store.verify_pin(cid, str(params.get("pin") or ""))
        state = await store.pin_state(cid)
        ctx.record.event("pin-verified" if ok else "pin-failed", locked=state.locked)
        return {"ok": ok, "locked": state.locked, "remaining": max(0, 3 - state.failures)}

    async def block_card(params: Mapping[str, object]) -> Mapping[str, object]:
        card = await store.block_card(_card_id(params), customer_id=_customer_id(params))
        ctx.record.event("card-blocked", card=card.masked)
        return {"ok": card.status is CardStatus.BLOCKED}

    async def activate_card(params: Mapping[str, object]) -> Mapping[str, object]:
        cid = _customer_id(params)
        card = await store.card_by_number(str(params.get("card_number") or ""))
        if card is None or card.customer_id != cid:
            return {"ok": False, "card_last4": ""}
        card = await store.activate_card(card.id, customer_id=cid)
        ctx.record.event("card-activated", card=card.masked)
        return {"ok": card.status is CardStatus.ACTIVE, "card_last4": card.last4}

    async def limit_raise(params: Mapping[str, object]) -> Mapping[str, object]:
        cid = _customer_id(params)
        card = await _credit_card(store, cid)
        # The hotline files a standard step (+20%, rounded to 1,000 yuan); the decision is
        # the credit department's.
        target = ((card.credit_limit_cents * 12 // 10) // 100_000 + 1) * 100_000
        req = await store.request_limit_raise(card.id, target, customer_id=cid)
        ctx.record.event("limit-raise-requested", request=req.id)
        return {"ok": True, "reference": f"L-{req.id:06d}"}

    async def instalment(params: Mapping[str, object]) -> Mapping[str, object]:
        cid = _customer_id(params)
        card = await _credit_card(store, cid)
        months = int(str(params.get("months") or 0))
        req = await store.request_instalment(card.id, months, customer_id=cid)
        ctx.record.event("instalment-requested", request=req.id, months=months)
        return {"ok": True, "amount": Decimal(req.amount_cents or 0) / 100}

    async def retention(params: Mapping[str, object]) -> Mapping[str, object]:
        cid = _customer_id(params)
        accepted = bool(params.get("accepted"))
        if accepted:
            ctx.record.event("retention-accepted")
            return {"ok": True}
        card = await store.cancel_card(_card_id(params), customer_id=cid)
        ctx.record.event("card-cancelled", card=card.masked)
        return {"ok": card.status is CardStatus.CANCELLED}

    async def transfer(params: Mapping[str, object]) -> Mapping[str, object]:
        cid = _customer_id(params)
        target = str(params.get("to_account") or "")
        if not target.isdigit() or not 8 <= len(target) <= 24:
            raise SourceError("target account number is not valid")
        ref = await store.debit(
            cid, _cents(params.get("amount")), kind="transfer", counterparty_last4=target[-4:]
        )
        ctx.record.event("transfer-done", reference=ref)
        return {"ok": True, "reference": ref}

    async def wealth_purchase(params: Mapping[str, object]) -> Mapping[str, object]:
        cid = _customer_id(params)
        ref = await store.debit(
            cid, _cents(params.get("amount")), kind="wealth_purchase", counterparty_last4=""
        )
        ctx.record.event("wealth-purchase-done", reference=ref)
        return {"ok": True, "reference": ref}

    async def confirm_request(params: Mapping[str, object]) -> Mapping[str, object]:
        # The operation an agent sent this caller to confirm (ivr_engine/agent_confirm.py):
        # held by the daemon, not read from channel variables, and only its last 4 digits.
        from ivr_engine.agent_confirm import pending_for

        pending = pending_for(engine.acd, str(params.get("call_id") or ""))
        if pending is None:
            raise SourceError("no agent-sent operation is waiting on this call")
        request = pending.request
        if pending.customer_id.isdigit():
            ctx.customer_id = int(pending.customer_id)
            ctx.record.customer_id = ctx.customer_id
        ctx.record.language = pending.language
        ctx.record.event(
            "agent-confirm", agent=request.agent, request=request.id, operation=request.operation
        )
        return {
            "operation": request.operation,
            "customer_id": pending.customer_id,
            "amount": request.amount,
            "account_last4": request.account_last4,
            "language": pending.language,
        }

    async def survey(params: Mapping[str, object]) -> Mapping[str, object]:
        score = int(str(params.get("score") or 0))
        if not 1 <= score <= 5:
            raise SourceError("survey score must be 1-5")
        ctx.record.event("survey", score=score)
        return {"ok": True}

    return {
        "cif.caller": caller,
        "cif.balance": balance,
        "cif.verify_pin": verify_pin,
        "cif.block_card": block_card,
        "cif.activate_card": activate_card,
        "cif.limit_raise": limit_raise,
        "cif.instalment": instalment,
        "cif.retention": retention,
        "cif.transfer": transfer,
        "cif.wealth_purchase": wealth_purchase,
        "records.survey": survey,
        "agent.confirm_request": confirm_request,
        **build_agent_sources(engine, ctx),
    }


def _card_id(params: Mapping[str, object]) -> int:
    raw = str(params.get("card_ref") or "")
    if not raw.isdigit():
        raise SourceError("no card on this call")
    return int(raw)


async def _credit_card(store: CifStore, customer_id: int) -> Any:
    cards = [c for c in await store.cards(customer_id) if c.kind == "credit"]
    active = [c for c in cards if c.status is CardStatus.ACTIVE]
    if not active:
        raise SourceError("customer has no active credit card")
    return active[0]


class RecordAuditSink:
    """Risky operations into the hash-chained audit log, and onto the call record."""

    def __init__(self, audit: AuditLog | None, ctx: CallContext) -> None:
        self._audit = audit
        self._ctx = ctx

    async def record(self, entry: AuditEntry) -> None:
        if self._audit is None:
            raise RuntimeError("audit log not open")
        rec = await self._audit.append(
            entry.operation,
            outcome=entry.outcome,
            details=dict(entry.details),
            call_id=entry.call_id,
            customer_id=self._ctx.customer_id,
        )
        self._ctx.record.event(
            "audited", operation=entry.operation, outcome=entry.outcome, seq=rec.seq
        )


class RecordingQueueGateway:
    """Notes the queue hand-off on the call record, then lets `inner` do it."""

    def __init__(self, inner: QueueGateway, ctx: CallContext, notifier: Notifier) -> None:
        self._inner = inner
        self._ctx = ctx
        self._notifier = notifier

    async def enqueue(self, channel: CallChannel, request: QueueRequest) -> QueueOutcome:
        self._ctx.record.queued(request.queue, [request.skills], request.priority)
        # what the agent is shown with the call (repeat caller, verified, reason ...)
        self._ctx.record.event("queue-data", language=request.language, **dict(request.data))
        self._notifier.publish(
            f"call/{self._ctx.call_id}/CallQueued",
            {
                "event": "CallQueued",
                "call_id": self._ctx.call_id,
                "queue": request.queue,
                "skills": request.skills,
                "priority": request.priority,
                "language": request.language,
            },
        )
        return await self._inner.enqueue(channel, request)


class CallTrace:
    """The interpreter's `CallObserver`: steps onto the call record, events onto MQTT."""

    def __init__(self, ctx: CallContext, notifier: Notifier) -> None:
        self._ctx = ctx
        self._notifier = notifier

    def _publish(self, event: str, **data: object) -> None:
        self._notifier.publish(
            f"call/{self._ctx.call_id}/{event}",
            {"event": event, "call_id": self._ctx.call_id, **data},
        )

    def node_entered(self, call_id: str, flow: str, node: str, kind: str) -> None:
        self._ctx.record.step(f"{flow}/{node}", kind)
        self._publish("NodeEntered", flow=flow, node=node, type=kind)

    def input_received(self, call_id: str, node: str, digits: str, status: str) -> None:
        # `digits` arrive already masked by the interpreter when the input is sensitive; the
        # record masks again by key (any 8+ digit run keeps only its last 4).
        record = self._ctx.record
        record.event("input", node=node, digits=digits, status=status)
        step = record.steps[-1] if record.steps else None
        if step is not None and step.node_id.rpartition("/")[2] == node:
            # the visited node shows its inputs in order: ["no-input", "5 match", ...]
            shown = mask_value("digits", digits) if digits else ""
            step.inputs.setdefault("keys", []).append(f"{shown} {status}".strip())

    def prompt_played(self, call_id: str, node: str, prompt: str, text: str) -> None:
        self._ctx.record.announce(prompt)

    def variable_set(self, call_id: str, name: str, value: str) -> None:
        if name == "call.lang":
            # the language the flow chose (preference, region) is the one the caller heard
            self._ctx.record.language = value
        self._ctx.record.event("set", name=name, value=value)

    def flow_ended(self, call_id: str, outcome: FlowOutcome) -> None:
        self._publish("FlowEnded", kind=outcome.kind, flow=outcome.flow, node=outcome.node)
