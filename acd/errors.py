"""Errors of the routing core.

```
AcdError                    anything the ACD core refuses
 +-- RequirementError       a skill-requirement expression that does not parse (names the column)
 +-- ConfigurationError     a queue, agent or call spec that is inconsistent
 +-- UnknownAgent           an agent id the matcher has never seen
 +-- UnknownCall            a call id the matcher does not hold (or no longer holds)
 +-- UnknownQueue           a queue id that was never added
 +-- IllegalTransition      an agent state change the transition table forbids
 +-- InvalidEvent           an event that contradicts the current state (answer without offer, ...)
 +-- InvariantViolation     the bookkeeping contradicts itself (a bug; raised, never asserted)
```

`acd` imports nothing from `ivr_engine`; the application maps `AcdError` into its own tree.
"""

from __future__ import annotations


class AcdError(Exception):
    """Base of every error the ACD core raises on purpose."""


class RequirementError(AcdError):
    """A requirement expression that cannot be parsed; `column` is 1-based."""

    def __init__(self, message: str, *, text: str, column: int | None = None):
        self.text = text
        self.column = column
        where = f" at column {column}" if column is not None else ""
        super().__init__(f"requirement {text!r}{where}: {message}")


class ConfigurationError(AcdError):
    """A queue, agent or call description that is inconsistent."""


class UnknownAgent(AcdError):
    """An agent id the matcher has never seen."""


class UnknownCall(AcdError):
    """A call id the matcher does not hold."""


class UnknownQueue(AcdError):
    """A queue id that was never added."""


class IllegalTransition(AcdError):
    """The transition table forbids this change of agent state."""

    def __init__(self, agent_id: str, event: str, state: str, target: str | None = None):
        self.agent_id = agent_id
        self.event = event
        self.state = state
        self.target = target
        to = f" -> {target}" if target else ""
        super().__init__(f"agent {agent_id}: {event!r} not allowed in state {state}{to}")


class InvalidEvent(AcdError):
    """An event that contradicts the state the matcher holds."""


class InvariantViolation(AcdError):
    """The matcher's own bookkeeping contradicts itself: a bug, never an input problem."""
