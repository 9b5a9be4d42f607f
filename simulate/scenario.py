"""Simulator scenarios: who calls, what they press, who answers, and what must have happened.

A scenario is a YAML file (`simulate/scenarios/*.yaml`):

```yaml
name: wang-bill-due
description: Wang (statement due) asks for a person
agents:                       # phones registered to the PBX for this run (optional)
  - {ext: "1009", ring: 1.0, talk: [2, 4], no_answer: 0.0}
calls:                        # placed one after the other
  - caller: "13800138000"     # or withheld: true
    dial: "4008"
    script: "w,0"             # simulate/script.py: w, pN, digits, s:digits, h
    max_seconds: 90             # the caller hangs up after this (then ended_by is caller)
    prompt_timeout: 90          # how long a `w` waits for a prompt to end
    expect:
      next: queue             # IVR_NEXT the daemon set (AMI VarSet)
      queue: general          # IVR_QUEUE
      skills: mandarin and any
      priority: 5
      prompts: {min: 3}       # speech segments heard (webrtcvad), or an exact number
      dead_air: 3.0           # longest silence nobody asked for, in seconds
      ended_by: pbx           # caller | agent | pbx
      duration: {max: 60}     # seconds from INVITE to the end of the call
      answered_by: "1009"     # an agent phone answered (ext), or none
      record: {outcome: queued, tier: local, language: cmn}   # the daemon's call record
```

Every error names the file and the key that is wrong; nothing unknown is accepted silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simulate.script import ScriptError, Step, parse

AGENT_EXTENSIONS = tuple(str(n) for n in range(1001, 1011))
ENDED_BY = ("caller", "agent", "pbx")
_NUMBER = re.compile(r"^\+?[0-9]{3,20}$")
_DIALLED = re.compile(r"^[0-9*#+]{1,32}$")
RECORD_KEYS = ("outcome", "tier", "language", "region", "customer_id", "caller")


class ScenarioError(ValueError):
    """A scenario file that cannot be run: names the file and the key."""

    def __init__(self, source: str, where: str, message: str) -> None:
        super().__init__(f"{source}: {where}: {message}")
        self.source = source
        self.where = where


@dataclass(frozen=True)
class Range:
    """A closed interval; either end may be open (None)."""

    min: float | None = None
    max: float | None = None

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        if self.min is not None and self.min == self.max:
            return f"{self.min:g}"
        if self.max is None:
            return f">= {self.min:g}"
        if self.min is None:
            return f"<= {self.max:g}"
        return f"{self.min:g}..{self.max:g}"


@dataclass(frozen=True)
class AgentSpec:
    ext: str
    ring: float = 1.0  # seconds the phone rings before it answers
    talk: tuple[float, float] = (2.0, 4.0)  # talk time drawn uniformly from this range
    no_answer: float = 0.0  # probability that the agent lets it ring
    wrap_up: float = 0.0  # seconds after a call before the phone answers again

    @property
    def password(self) -> str:
        # The dev PBX's pattern (asterisk-conf/pjsip.conf); a deployment replaces every one.
        return f"agent-{self.ext}-dev"


@dataclass(frozen=True)
class Expect:
    next: str | None = None
    queue: str | None = None
    skills: frozenset[str] | None = None
    priority: int | None = None
    prompts: Range | None = None
    dead_air: float | None = 3.0
    ended_by: str | None = None
    duration: Range | None = None
    answered_by: str | None = None  # an extension, or "none"
    record: Mapping[str, str] = field(default_factory=dict)

    @property
    def needs_record(self) -> bool:
        return bool(self.record)


@dataclass(frozen=True)
class CallSpec:
    name: str
    caller: str  # "" when withheld
    withheld: bool
    dial: str
    script_text: str
    steps: tuple[Step, ...]
    max_seconds: float
    expect: Expect
    display_name: str = ""
    prompt_timeout: float = 90.0  # how long a `w` step waits for a prompt to end


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    source: str
    agents: tuple[AgentSpec, ...]
    calls: tuple[CallSpec, ...]


def skills_of(expression: str) -> frozenset[str]:
    """`"cantonese and private_banking"` -> {"cantonese", "private_banking"}."""
    return frozenset(s.strip() for s in expression.split(" and ") if s.strip())


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ScenarioError:
        return ScenarioError(self.source, where, message)

    def mapping(self, value: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"must be a mapping, not {type(value).__name__}")
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            raise self.fail(where, f"unknown key(s) {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(allowed))}")
        return value

    def text(self, value: Any, where: str) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.fail(where, "must be text (quote numbers: \"13800138000\")")
        return str(value)

    def number(self, value: Any, where: str, *, low: float = 0.0, high: float = 3600.0) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(where, "must be a number")
        if not low <= float(value) <= high:
            raise self.fail(where, f"must be between {low:g} and {high:g}")
        return float(value)

    def range(self, value: Any, where: str) -> Range:
        if isinstance(value, int | float) and not isinstance(value, bool):
            v = self.number(value, where, high=10_000)
            return Range(v, v)
        m = self.mapping(value, where, {"min", "max"})
        if not m:
            raise self.fail(where, "needs min and/or max")
        lo = self.number(m["min"], f"{where}.min", high=10_000) if "min" in m else None
        hi = self.number(m["max"], f"{where}.max", high=10_000) if "max" in m else None
        if lo is not None and hi is not None and lo > hi:
            raise self.fail(where, "min is above max")
        return Range(lo, hi)


def _agent(r: _Reader, raw: Any, where: str) -> AgentSpec:
    m = r.mapping(raw, where, {"ext", "ring", "talk", "no_answer", "wrap_up"})
    if "ext" not in m:
        raise r.fail(where, "needs ext (an agent phone 1001-1010)")
    ext = r.text(m["ext"], f"{where}.ext")
    if ext not in AGENT_EXTENSIONS:
        raise r.fail(f"{where}.ext", f"{ext!r} is not an agent phone of the dev PBX (1001-1010)")
    talk = (2.0, 4.0)
    if "talk" in m:
        t = m["talk"]
        if isinstance(t, int | float) and not isinstance(t, bool):
            v = r.number(t, f"{where}.talk")
            talk = (v, v)
        elif isinstance(t, list) and len(t) == 2:
            lo = r.number(t[0], f"{where}.talk[0]")
            hi = r.number(t[1], f"{where}.talk[1]")
            if lo > hi:
                raise r.fail(f"{where}.talk", "the first bound is above the second")
            talk = (lo, hi)
        else:
            raise r.fail(f"{where}.talk", "a number of seconds or [min, max]")
    return AgentSpec(
        ext=ext,
        ring=r.number(m.get("ring", 1.0), f"{where}.ring", high=120),
        talk=talk,
        no_answer=r.number(m.get("no_answer", 0.0), f"{where}.no_answer", high=1.0),
        wrap_up=r.number(m.get("wrap_up", 0.0), f"{where}.wrap_up", high=600),
    )


def _expect(r: _Reader, raw: Any, where: str) -> Expect:
    keys = {"next", "queue", "skills", "priority", "prompts", "dead_air", "ended_by",
            "duration", "answered_by", "record"}
    m = r.mapping(raw if raw is not None else {}, where, keys)
    ended_by = None
    if "ended_by" in m:
        ended_by = r.text(m["ended_by"], f"{where}.ended_by")
        if ended_by not in ENDED_BY:
            raise r.fail(f"{where}.ended_by", f"one of {', '.join(ENDED_BY)}")
    answered_by = None
    if "answered_by" in m:
        answered_by = r.text(m["answered_by"], f"{where}.answered_by")
        if answered_by not in (*AGENT_EXTENSIONS, "none"):
            raise r.fail(f"{where}.answered_by", "an agent extension 1001-1010, or none")
    priority = None
    if "priority" in m:
        p = m["priority"]
        if isinstance(p, bool) or not isinstance(p, int):
            raise r.fail(f"{where}.priority", "must be an integer")
        priority = p
    record: dict[str, str] = {}
    if "record" in m:
        rm = r.mapping(m["record"], f"{where}.record", set(RECORD_KEYS))
        record = {str(k): r.text(v, f"{where}.record.{k}") for k, v in rm.items()}
    dead_air: float | None = 3.0
    if "dead_air" in m:
        dead_air = None if m["dead_air"] is None else r.number(m["dead_air"], f"{where}.dead_air")
    return Expect(
        next=r.text(m["next"], f"{where}.next") if "next" in m else None,
        queue=r.text(m["queue"], f"{where}.queue") if "queue" in m else None,
        skills=skills_of(r.text(m["skills"], f"{where}.skills")) if "skills" in m else None,
        priority=priority,
        prompts=r.range(m["prompts"], f"{where}.prompts") if "prompts" in m else None,
        dead_air=dead_air,
        ended_by=ended_by,
        duration=r.range(m["duration"], f"{where}.duration") if "duration" in m else None,
        answered_by=answered_by,
        record=record,
    )


def _call(r: _Reader, raw: Any, where: str, index: int) -> CallSpec:
    keys = {"name", "caller", "withheld", "display_name", "dial", "script", "max_seconds",
            "prompt_timeout", "expect"}
    m = r.mapping(raw, where, keys)
    withheld = m.get("withheld", False)
    if not isinstance(withheld, bool):
        raise r.fail(f"{where}.withheld", "true or false")
    caller = "" if withheld else r.text(m.get("caller", ""), f"{where}.caller")
    if withheld and "caller" in m:
        raise r.fail(where, "a withheld call has no caller number; drop one of the two")
    if not withheld and not _NUMBER.match(caller):
        raise r.fail(f"{where}.caller", "a number of 3-20 digits (or withheld: true)")
    if caller in AGENT_EXTENSIONS:
        # pjsip.conf identifies by username first: this caller would be challenged as an agent.
        raise r.fail(f"{where}.caller", "an agent's extension cannot call in on the trunk")
    dial = r.text(m.get("dial", "4008"), f"{where}.dial")
    if not _DIALLED.match(dial):
        raise r.fail(f"{where}.dial", "digits, * # or + only")
    script_text = r.text(m.get("script", ""), f"{where}.script")
    try:
        steps = tuple(parse(script_text))
    except ScriptError as exc:
        raise r.fail(f"{where}.script", str(exc)) from None
    return CallSpec(
        name=r.text(m.get("name", f"call-{index + 1}"), f"{where}.name"),
        caller=caller,
        withheld=withheld,
        display_name=r.text(m.get("display_name", ""), f"{where}.display_name"),
        dial=dial,
        script_text=script_text,
        steps=steps,
        max_seconds=r.number(m.get("max_seconds", 90), f"{where}.max_seconds", low=1),
        prompt_timeout=r.number(m.get("prompt_timeout", 90), f"{where}.prompt_timeout", low=1),
        expect=_expect(r, m.get("expect"), f"{where}.expect"),
    )


def from_mapping(data: Any, source: str) -> Scenario:
    r = _Reader(source)
    m = r.mapping(data, "scenario", {"name", "description", "agents", "calls"})
    if "calls" not in m or not isinstance(m["calls"], list) or not m["calls"]:
        raise r.fail("calls", "a non-empty list of calls")
    agents_raw = m.get("agents", []) or []
    if not isinstance(agents_raw, list):
        raise r.fail("agents", "a list")
    agents = tuple(_agent(r, a, f"agents[{i}]") for i, a in enumerate(agents_raw))
    exts = [a.ext for a in agents]
    if len(set(exts)) != len(exts):
        raise r.fail("agents", "an extension is listed twice")
    calls = tuple(_call(r, c, f"calls[{i}]", i) for i, c in enumerate(m["calls"]))
    for i, c in enumerate(calls):
        if c.expect.answered_by not in (None, "none") and c.expect.answered_by not in exts:
            raise r.fail(f"calls[{i}].expect.answered_by",
                         f"{c.expect.answered_by} is not among this scenario's agents")
    return Scenario(
        name=r.text(m.get("name", Path(source).stem), "name"),
        description=r.text(m.get("description", ""), "description"),
        source=source,
        agents=agents,
        calls=calls,
    )


def load(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(str(p), "file", exc.strerror or str(exc)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "yaml"
        raise ScenarioError(str(p), where, "not valid YAML") from None
    return from_mapping(data, str(p))
