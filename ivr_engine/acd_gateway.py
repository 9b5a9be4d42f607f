"""The flows' queue gateway when ivr-engine's own ACD routes the calls.

A flow's `queue` node gives the call's queue name, skill expression, priority (app_queue's
sense: higher is more urgent, VIP 10), language and screen-pop data. `AcdQueueGateway`
describes the call to the `acd.router.Router` and ends the flow with `IVR_NEXT=acd`: the
dialplan parks the caller in `[acd-wait]` (music on hold) and tells the router it waits
(UserEvent AcdWaiting). A call the ACD cannot take (a skill expression it refuses, the router
not running) goes the old way, `DialplanQueueGateway`'s app_queue, so the caller still reaches
a person.

The screen pop carries only what the flow put in `data` (the flow lint refuses sensitive
values there) plus the caller's number masked to its last four digits.
"""

from __future__ import annotations

import logging

from acd.errors import AcdError
from acd.router import Router
from ivr_engine.flow.channel import CallChannel
from ivr_engine.flow.services import DialplanQueueGateway, QueueGateway, QueueOutcome, QueueRequest

log = logging.getLogger(__name__)


def mask_number(number: str) -> str:
    """'13800138000' -> '*******8000'; short or empty numbers are masked whole."""
    digits = number.strip()
    if len(digits) <= 4:
        return "*" * len(digits)
    return "*" * (len(digits) - 4) + digits[-4:]


class AcdQueueGateway:
    """`QueueGateway` onto the router; `fallback` (app_queue by default) when it refuses."""

    def __init__(self, router: Router, fallback: QueueGateway | None = None) -> None:
        self._router = router
        self._fallback = fallback or DialplanQueueGateway()

    async def enqueue(self, channel: CallChannel, request: QueueRequest) -> QueueOutcome:
        pop = dict(request.data)
        pop.setdefault("caller", mask_number(channel.caller.number))
        try:
            self._router.register(
                request.call_id,
                queue=request.queue,
                requirement=request.skills,
                priority=request.priority,
                language=request.language,
                screen_pop=pop,
            )
        except (AcdError, RuntimeError) as exc:
            log.error(
                "ACD refused call %s for queue %s (%s): app_queue takes it",
                request.call_id,
                request.queue,
                exc,
            )
            return await self._fallback.enqueue(channel, request)
        await channel.set_variable("IVR_NEXT", "acd")
        await channel.set_variable("IVR_QUEUE", request.queue)
        return QueueOutcome("handed_off", detail="acd")
