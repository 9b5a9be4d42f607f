"""Agent states and the explicit table of legal transitions.

```
               login                offer               answer
 LOGGED_OUT ---------> READY -------------> RESERVED -------------> ON_CALL
     ^  login(paused)   ^ |  ^               |  |  ^ \\ no-answer,     |  ^ |
     |       |          | |  | no-answer,    |  |  |  \\ withdraw      |  | | end (work left)
     |       v   resume | |  | withdraw      |  |  |   `-------------'  | |
     +--- PAUSED <------' |  +---------------'  |  |  offer (spare chat)| |
     |       ^   pause    |                     |  +--------------------' |
     |       +------------+  no-answer (N-th miss) ---> PAUSED            |
     |       |                                                            v
     +-------+--- logout ---------------------------- WRAP_UP <---- end (last task)
                             wrapup timer: WRAP_UP -> READY; end without wrap-up: -> READY
```

States mean: READY = logged in, no work, no offer; RESERVED = exactly one offer is ringing (the
agent may also hold non-exclusive work, e.g. chats); ON_CALL = at least one task in progress and
no offer; WRAP_UP = after-call work after the last task; PAUSED = not routable, with a reason.
An agent holds at most one offer at a time, which is what makes "no two offers on a
one-capacity channel" hold by construction.
"""

from __future__ import annotations

import enum

from acd.errors import IllegalTransition


class AgentState(enum.StrEnum):
    LOGGED_OUT = "logged-out"
    READY = "ready"
    RESERVED = "reserved"
    ON_CALL = "on-call"
    WRAP_UP = "wrap-up"
    PAUSED = "paused"


S = AgentState

#: (event, from-state) -> the states the event may lead to. Anything else is illegal.
TRANSITIONS: dict[tuple[str, AgentState], frozenset[AgentState]] = {
    ("login", S.LOGGED_OUT): frozenset({S.READY, S.PAUSED}),
    ("logout", S.READY): frozenset({S.LOGGED_OUT}),
    ("logout", S.PAUSED): frozenset({S.LOGGED_OUT}),
    ("logout", S.WRAP_UP): frozenset({S.LOGGED_OUT}),
    ("pause", S.READY): frozenset({S.PAUSED}),
    ("pause", S.WRAP_UP): frozenset({S.PAUSED}),
    ("pause", S.PAUSED): frozenset({S.PAUSED}),
    ("resume", S.PAUSED): frozenset({S.READY}),
    ("offer", S.READY): frozenset({S.RESERVED}),
    ("offer", S.ON_CALL): frozenset({S.RESERVED}),
    ("answer", S.RESERVED): frozenset({S.ON_CALL}),
    ("no-answer", S.RESERVED): frozenset({S.READY, S.ON_CALL, S.PAUSED}),
    ("withdraw", S.RESERVED): frozenset({S.READY, S.ON_CALL}),
    ("end", S.ON_CALL): frozenset({S.ON_CALL, S.WRAP_UP, S.READY}),
    ("end", S.RESERVED): frozenset({S.RESERVED}),
    ("wrapup-done", S.WRAP_UP): frozenset({S.READY}),
}

EVENTS = frozenset(event for event, _ in TRANSITIONS)

#: The same table indexed event first (what the matcher's hot path looks up).
BY_EVENT: dict[str, dict[AgentState, frozenset[AgentState]]] = {
    event: {state: targets for (e, state), targets in TRANSITIONS.items() if e == event}
    for event in EVENTS
}


def check(agent_id: str, event: str, state: AgentState, target: AgentState) -> AgentState:
    """Return `target` if the table allows `event` to move `state` there; raise otherwise."""
    allowed = TRANSITIONS.get((event, state))
    if allowed is None or target not in allowed:
        raise IllegalTransition(agent_id, event, state.value, target.value)
    return target


def allowed(event: str, state: AgentState) -> bool:
    """Whether `event` is legal at all in `state`."""
    return (event, state) in TRANSITIONS
