"""What happened in the queues, as the router sees it: one `QueueEvent` per step of a call or
an agent, named after Asterisk's queue_log verbs so that reporting tools find them familiar.

The router (`acd.router.Router`) calls each of its `listeners` synchronously with every event,
in order; a listener must not block (it buffers, and writes or publishes on its own time) and
an exception it raises is logged by the router and never reaches routing.

Verbs and their `data` (seconds as floats, rounded to milliseconds):

- ENTERQUEUE: the caller waits in [acd-wait]. data: priority, language, channel.
- RINGING: an agent is offered the call. data: waited.
- RINGNOANSWER: the offered agent did not take it. data: ringtime, status.
- CONNECT: the agent answered. data: holdtime (queued -> answered), ringtime.
- COMPLETECALLER / COMPLETEAGENT: the conversation ended; the caller / the agent hung up.
  data: holdtime, calltime.
- ABANDON: the caller hung up while waiting or while ringing. data: waittime, ringing (bool).
- EXITWITHTIMEOUT: the call left the queue by an overflow rule. data: waittime, target, reason.
- AGENTLOGIN (data: paused, the reason or None), AGENTLOGOFF, PAUSE (data: reason), UNPAUSE.

`queue` is the flow's queue name (vip, general, ...); agent events carry `queue` "" (an agent
serves several queues). `time` is the wall clock (epoch seconds), for logs and reports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

VERBS = frozenset(
    {
        "ENTERQUEUE",
        "RINGING",
        "RINGNOANSWER",
        "CONNECT",
        "COMPLETECALLER",
        "COMPLETEAGENT",
        "ABANDON",
        "EXITWITHTIMEOUT",
        "AGENTLOGIN",
        "AGENTLOGOFF",
        "PAUSE",
        "UNPAUSE",
    }
)


@dataclass(frozen=True, slots=True)
class QueueEvent:
    time: float
    verb: str
    call_id: str = ""
    queue: str = ""
    agent: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verb not in VERBS:
            raise ValueError(f"unknown queue event verb {self.verb!r}")


#: A listener: called synchronously with each event; must not block.
QueueListener = Callable[[QueueEvent], None]
