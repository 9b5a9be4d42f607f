"""Expectations against what a simulated call observed: pure functions, no I/O.

`Observed` is everything the simulator learned about one call from the network (the SIP call,
the audio it received, the AMI variables of its channel, the engine's call record via the
CLI); `evaluate()` compares it with the scenario's `Expect` and returns one `Check` per
expectation, each with what was expected and what was seen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from simulate.scenario import Expect, skills_of

Interval = tuple[float, float]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    expected: str
    actual: str


@dataclass
class Observed:
    connected: bool
    duration: float  # seconds from INVITE to the end of the call
    prompts: int  # speech segments heard before an agent answered
    dead_air: float  # longest silence nobody asked for (seconds)
    ended_by: str  # caller | agent | pbx
    answered_by: str | None  # extension of the agent phone that answered
    variables: Mapping[str, str] = field(default_factory=dict)  # AMI VarSet, last value wins
    record: Mapping[str, Any] | None = None  # `ivr-engine calls show ID --json`
    error: str | None = None


def dead_air(speech: Sequence[Interval], pauses: Sequence[Interval], until: float) -> float:
    """The longest silence between the start of media (0) and `until`, between speech
    segments, not counting time the caller spent in a pause of its own script."""
    edges = [0.0]
    for start, end in speech:
        if start >= until:
            break
        edges.extend((start, min(end, until)))
    edges.append(until)
    longest = 0.0
    for gap_start, gap_end in zip(edges[::2], edges[1::2], strict=True):
        if gap_end <= gap_start:
            continue
        paused = sum(
            max(0.0, min(gap_end, p_end) - max(gap_start, p_start)) for p_start, p_end in pauses
        )
        longest = max(longest, gap_end - gap_start - paused)
    return longest


def _variable(obs: Observed, name: str, record_value: Any) -> tuple[str | None, str]:
    """A channel variable from AMI, else the engine's call record; with where it came from."""
    if name in obs.variables:
        return obs.variables[name], "AMI"
    if record_value is not None:
        return str(record_value), "call record"
    return None, "not seen"


def _queue(obs: Observed) -> Mapping[str, Any]:
    record = obs.record or {}
    q = record.get("queue")
    return q if isinstance(q, Mapping) else {}


def evaluate(expect: Expect, obs: Observed) -> list[Check]:
    checks = [Check("connected", obs.connected, "answered by the PBX",
                    "answered" if obs.connected else f"not answered ({obs.error or '-'})")]
    if not obs.connected:
        return checks
    if obs.error:
        checks.append(Check("script", False, "ran to the end", obs.error))
    q = _queue(obs)
    if expect.next is not None:
        value, src = _variable(obs, "IVR_NEXT", "queue" if q else None)
        checks.append(Check("next", value == expect.next, expect.next, f"{value} ({src})"))
    if expect.queue is not None:
        value, src = _variable(obs, "IVR_QUEUE", q.get("name"))
        checks.append(Check("queue", value == expect.queue, expect.queue, f"{value} ({src})"))
    if expect.skills is not None:
        rec_skills = " and ".join(q["skills"]) if q.get("skills") else None
        value, src = _variable(obs, "IVR_SKILLS", rec_skills)
        skills = skills_of(value) if value is not None else None
        checks.append(Check("skills", skills == expect.skills,
                            " and ".join(sorted(expect.skills)),
                            f"{' and '.join(sorted(skills)) if skills else None} ({src})"))
    if expect.priority is not None:
        value, src = _variable(obs, "IVR_PRIORITY", q.get("priority"))
        checks.append(Check("priority", value == str(expect.priority), str(expect.priority),
                            f"{value} ({src})"))
    if expect.prompts is not None:
        checks.append(Check("prompts heard", expect.prompts.contains(obs.prompts),
                            expect.prompts.describe(), str(obs.prompts)))
    if expect.dead_air is not None:
        checks.append(Check("dead air", obs.dead_air <= expect.dead_air,
                            f"<= {expect.dead_air:g}s", f"{obs.dead_air:.2f}s"))
    if expect.ended_by is not None:
        checks.append(Check("ended by", obs.ended_by == expect.ended_by, expect.ended_by,
                            obs.ended_by))
    if expect.duration is not None:
        checks.append(Check("duration", expect.duration.contains(obs.duration),
                            f"{expect.duration.describe()}s", f"{obs.duration:.1f}s"))
    if expect.answered_by is not None:
        agent = obs.answered_by or "none"
        checks.append(Check("answered by", agent == expect.answered_by, expect.answered_by,
                            agent))
    for key, want in expect.record.items():
        if obs.record is None:
            checks.append(Check(f"record.{key}", False, want, "no call record from the engine"))
            continue
        field_value = obs.record.get(key)
        text = "" if field_value is None else str(field_value)
        checks.append(Check(f"record.{key}", text == want, want, text or "(empty)"))
    return checks
