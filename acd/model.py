"""The ACD data model: what the application tells the matcher, and what the matcher decides.

Inputs are frozen specs (`AgentSpec`, `QueueSpec`, `CallSpec`), validated on construction so
that bad configuration fails with a specific message before any routing happens. Outputs are
small named tuples (`Offer`, `Withdraw`, `Overflowed`): the router turns them into PBX or MQTT
commands. Timers are requested through a `Scheduler` with a hashable `TimerKey`; the matcher
never reads a clock and never polls.

Priorities: a LOWER number is MORE urgent (0 is the most urgent), so the natural order of a
min-heap is the service order. `PRIORITY_VIP` is 1 and `PRIORITY_STANDARD` is 5.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from acd.errors import ConfigurationError
from acd.requirement import MAX_LEVEL, Requirement, parse

PRIORITY_MIN = 0
PRIORITY_MAX = 9
PRIORITY_VIP = 1
PRIORITY_STANDARD = 5

VOICE = "voice"
CHAT = "chat"
EMAIL = "email"
SMS = "sms"
CALLBACK = "callback"
#: Channels whose work occupies the agent completely: while on one, nothing else is offered,
#: and one is offered only to an agent with no work at all.
EXCLUSIVE_CHANNELS = frozenset({VOICE, CALLBACK})

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}\Z")
_CHANNEL = re.compile(r"^[a-z][a-z0-9_\-]{0,31}\Z")


class Strategy(enum.StrEnum):
    """How a queue picks among several idle eligible agents."""

    LONGEST_IDLE = "longest-idle"
    LEAST_OCCUPIED = "least-occupied"
    FEWEST_CALLS = "fewest-calls"
    ROUND_ROBIN = "round-robin"
    HIGHEST_PROFICIENCY = "highest-proficiency"
    RING_ALL = "ring-all"


def _check_id(kind: str, value: str) -> None:
    if not isinstance(value, str) or not _ID.match(value):
        raise ConfigurationError(
            f"{kind} id {value!r} must be 1-128 characters of letters, digits and _.:@-"
        )


def _check_time(what: str, value: float, *, positive: bool = False) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigurationError(f"{what} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigurationError(f"{what} must be {'> 0' if positive else '>= 0'}, got {value}")


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """An agent's skills (levels 1-10) and channel capacities (e.g. voice 1, chat 3)."""

    id: str
    skills: Mapping[str, int]
    capacity: Mapping[str, int] = field(default_factory=lambda: {VOICE: 1})

    def __post_init__(self) -> None:
        _check_id("agent", self.id)
        for skill, level in self.skills.items():
            if not isinstance(skill, str) or not _CHANNEL.match(skill):
                raise ConfigurationError(f"agent {self.id}: bad skill name {skill!r}")
            if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= 10:
                raise ConfigurationError(
                    f"agent {self.id}: skill {skill!r} level must be 1..{MAX_LEVEL}, got {level!r}"
                )
        if not self.capacity:
            raise ConfigurationError(f"agent {self.id}: needs at least one channel")
        for channel, cap in self.capacity.items():
            if not isinstance(channel, str) or not _CHANNEL.match(channel):
                raise ConfigurationError(f"agent {self.id}: bad channel name {channel!r}")
            if not isinstance(cap, int) or isinstance(cap, bool) or not 1 <= cap <= 100:
                raise ConfigurationError(
                    f"agent {self.id}: capacity on {channel!r} must be 1..100, got {cap!r}"
                )
            if channel in EXCLUSIVE_CHANNELS and cap != 1:
                raise ConfigurationError(
                    f"agent {self.id}: {channel!r} is exclusive and takes capacity 1, got {cap}"
                )
        object.__setattr__(self, "skills", dict(self.skills))
        object.__setattr__(self, "capacity", dict(self.capacity))


@dataclass(frozen=True, slots=True)
class Step:
    """A relaxation step: `after` seconds from the call's arrival, also accept `requirement`."""

    after: float
    requirement: Requirement


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue. `steps` relax the requirement over time; each step adds alternatives (cumulative).

    `weight` is a head start in seconds: across queues, an agent serving several takes the call
    with the best (priority, arrival time - weight). `max_wait` (seconds) and `max_length`
    (waiting calls) send calls to `overflow` (a queue id or a destination the router knows);
    0 means no limit. `wrapup` is the after-call work in seconds. `ring_all_limit` caps how many
    agents one ring-all offer rings. `highest-proficiency` ranks agents by the sum of their
    levels in `proficiency_skills`, by default the first skill the base requirement names.
    """

    id: str
    requirement: Requirement
    strategy: Strategy = Strategy.LONGEST_IDLE
    steps: tuple[Step, ...] = ()
    weight: float = 0.0
    service_level_target: float = 20.0
    max_wait: float = 0.0
    max_length: int = 0
    overflow: str | None = None
    wrapup: float = 0.0
    ring_all_limit: int = 16
    proficiency_skills: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_id("queue", self.id)
        if not isinstance(self.requirement, Requirement):
            raise ConfigurationError(f"queue {self.id}: requirement must be parsed (acd.parse)")
        object.__setattr__(self, "strategy", Strategy(self.strategy))
        last = 0.0
        for step in self.steps:
            _check_time(f"queue {self.id}: step time", step.after, positive=True)
            if step.after <= last:
                raise ConfigurationError(
                    f"queue {self.id}: relaxation steps must have increasing times"
                )
            last = step.after
        _check_time(f"queue {self.id}: weight", self.weight)
        _check_time(f"queue {self.id}: service_level_target", self.service_level_target)
        _check_time(f"queue {self.id}: max_wait", self.max_wait)
        _check_time(f"queue {self.id}: wrapup", self.wrapup)
        if not isinstance(self.max_length, int) or self.max_length < 0:
            raise ConfigurationError(f"queue {self.id}: max_length must be an integer >= 0")
        if not isinstance(self.ring_all_limit, int) or self.ring_all_limit < 1:
            raise ConfigurationError(f"queue {self.id}: ring_all_limit must be >= 1")
        if not self.proficiency_skills:
            object.__setattr__(self, "proficiency_skills", self.requirement.skills()[:1])

    @classmethod
    def build(
        cls,
        id: str,
        requirement: str,
        *,
        steps: tuple[tuple[float, str], ...] = (),
        **kwargs: object,
    ) -> QueueSpec:
        """Convenience: parse the requirement texts."""
        return cls(
            id=id,
            requirement=parse(requirement),
            steps=tuple(Step(after, parse(text)) for after, text in steps),
            **kwargs,  # type: ignore[arg-type]
        )

    def cumulative(self) -> tuple[Requirement, ...]:
        """The requirement in force at step 0, 1, ...: each step adds to the ones before."""
        out = [self.requirement]
        for step in self.steps:
            out.append(out[-1].union(step.requirement))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class CallSpec:
    """A call or task entering a queue."""

    id: str
    queue: str
    channel: str = VOICE
    priority: int = PRIORITY_STANDARD

    def __post_init__(self) -> None:
        _check_id("call", self.id)
        if not isinstance(self.channel, str) or not _CHANNEL.match(self.channel):
            raise ConfigurationError(f"call {self.id}: bad channel {self.channel!r}")
        check_priority(self.priority)


def check_priority(priority: int) -> None:
    if (
        not isinstance(priority, int)
        or isinstance(priority, bool)
        or not PRIORITY_MIN <= priority <= PRIORITY_MAX
    ):
        raise ConfigurationError(
            f"priority must be an integer {PRIORITY_MIN}..{PRIORITY_MAX} "
            f"(lower is more urgent), got {priority!r}"
        )


class Offer(NamedTuple):
    """Ring `agent` with `call` (ring-all emits one per agent for the same call)."""

    call: str
    agent: str
    queue: str
    channel: str


class Withdraw(NamedTuple):
    """Stop ringing `agent` for `call`: `reason` is 'caller-hung-up' or 'answered-elsewhere'."""

    call: str
    agent: str
    reason: str


class Overflowed(NamedTuple):
    """`call` left `queue` ('max-wait' or 'queue-full'); the router sends it to `target`."""

    call: str
    queue: str
    target: str | None
    reason: str


Decision = Offer | Withdraw | Overflowed

#: ("relax", call_id, step) | ("max-wait", call_id, 0) | ("wrapup", agent_id, epoch)
TimerKey = tuple[str, str, int]


class Scheduler(Protocol):
    """Where the matcher asks for timers. Production: loop.call_later; tests: a virtual clock.

    When a timer is due, the owner calls `matcher.timer_fired(key, now)`. A timer the matcher
    no longer needs is cancelled; firing one anyway is harmless (it is recognised as stale).
    """

    def schedule(self, at: float, key: TimerKey) -> None: ...

    def cancel(self, key: TimerKey) -> None: ...
