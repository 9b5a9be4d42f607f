"""The agent roster: a YAML file an admin edits, reloaded without a restart.

```yaml
defaults:            # optional: applied to every queue below
  wrapup: 5
queues:              # the flows' queue names (vip, risk, ...): how each is served
  vip:
    strategy: longest-idle        # acd.model.Strategy values
    wrapup: 10                    # seconds of after-call work
    weight: 30                    # head start in seconds against other queues
    max_wait: 600                 # 0 = none; then the call overflows to `overflow`
    overflow: operators           # a queue name, `operators` or `voicemail`
    join_empty: true              # false: a call no logged-in agent could serve overflows
    leave_when_empty: false       # true: waiting calls overflow when their last agent leaves
    operator: false               # true: the caller may press the operator key while waiting
    callback: true                # the caller may press the callback key while waiting
    steps:                        # relaxation: after N seconds also accept this requirement
      - {after: 30, accept: private_banking}
agents:
  "1001":
    name: Agent 1001
    endpoint: PJSIP/1001          # default PJSIP/<id>
    skills: {private_banking: 8, mandarin: 9, english: 5}
    channels: {voice: 1, chat: 2} # default {voice: 1}
    login: auto                   # auto: logged in while the phone is registered; manual
```

The call's own requirement comes from the flow (`skills:` of its queue node); the roster says
how a queue is served (strategy, relaxation, wrap-up, limits) and who can serve it. `yaml` is
imported here, not in the matcher: the core stays standard-library only.

Every error names the file and the key (`agents.yaml: agents.1001.skills.cards: ...`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from acd.errors import AcdError, ConfigurationError
from acd.model import AgentSpec, QueueSpec, Step, Strategy
from acd.requirement import parse

_EXTENSION = re.compile(r"^[0-9]{2,8}\Z")
_ENDPOINT = re.compile(r"^PJSIP/[A-Za-z0-9_.\-]{1,64}\Z")
_QUEUE_KEYS = frozenset(
    {
        "strategy",
        "wrapup",
        "weight",
        "max_wait",
        "max_length",
        "overflow",
        "steps",
        "ring_all_limit",
        "join_empty",
        "leave_when_empty",
        "operator",
        "callback",
    }
)
_AGENT_KEYS = frozenset({"name", "endpoint", "skills", "channels", "login"})
LOGIN_MODES = ("auto", "manual")


class RosterError(ConfigurationError):
    """A roster file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """How a named queue is served; `spec_for(requirement)` builds the matcher's QueueSpec."""

    name: str
    strategy: Strategy = Strategy.LONGEST_IDLE
    wrapup: float = 0.0
    weight: float = 0.0
    max_wait: float = 0.0
    max_length: int = 0
    overflow: str | None = None
    steps: tuple[tuple[float, str], ...] = ()
    ring_all_limit: int = 16
    join_empty: bool = True
    leave_when_empty: bool = False
    operator: bool = False
    callback: bool = True

    def spec_for(self, queue_id: str, requirement: str) -> QueueSpec:
        """The matcher queue for calls of this queue that ask for `requirement`."""
        return QueueSpec(
            id=queue_id,
            requirement=parse(requirement),
            strategy=self.strategy,
            steps=tuple(Step(after, parse(text)) for after, text in self.steps),
            weight=self.weight,
            max_wait=self.max_wait,
            max_length=self.max_length,
            overflow=self.overflow,
            wrapup=self.wrapup,
            ring_all_limit=self.ring_all_limit,
        )


@dataclass(frozen=True, slots=True)
class RosterAgent:
    spec: AgentSpec
    name: str
    endpoint: str
    login: str = "auto"

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True, slots=True)
class Roster:
    path: Path | None
    agents: Mapping[str, RosterAgent] = field(default_factory=dict)
    queues: Mapping[str, QueuePolicy] = field(default_factory=dict)

    def policy(self, queue: str) -> QueuePolicy:
        """The queue's policy; a queue the roster does not list is served with the defaults."""
        return self.queues.get(queue) or self.queues.get("*") or QueuePolicy(queue)

    def by_endpoint(self, endpoint: str) -> RosterAgent | None:
        for agent in self.agents.values():
            if agent.endpoint == endpoint:
                return agent
        return None

    @classmethod
    def load(cls, path: str | Path) -> Roster:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise RosterError(f"{p}: cannot read the roster: {exc.strerror or exc}") from None
        return cls.parse(text, source=p)

    @classmethod
    def parse(cls, text: str, *, source: Path | None = None) -> Roster:
        where = str(source) if source is not None else "<roster>"
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
            raise RosterError(f"{where}{at}: not valid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise RosterError(f"{where}: the roster must be a mapping with queues and agents")
        unknown = set(data) - {"defaults", "queues", "agents"}
        if unknown:
            raise RosterError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        defaults = _mapping(data.get("defaults"), f"{where}: defaults")
        queues: dict[str, QueuePolicy] = {}
        for name, body in _mapping(data.get("queues"), f"{where}: queues").items():
            merged = {**defaults, **_mapping(body, f"{where}: queues.{name}")}
            queues[str(name)] = _queue(str(name), merged, f"{where}: queues.{name}")
        if defaults and "*" not in queues:
            queues["*"] = _queue("*", dict(defaults), f"{where}: defaults")
        agents: dict[str, RosterAgent] = {}
        endpoints: dict[str, str] = {}
        for ext, body in _mapping(data.get("agents"), f"{where}: agents").items():
            agent = _agent(str(ext), _mapping(body, f"{where}: agents.{ext}"), where)
            if agent.endpoint in endpoints:
                raise RosterError(
                    f"{where}: agents.{ext}.endpoint {agent.endpoint} is also agent "
                    f"{endpoints[agent.endpoint]}'s"
                )
            endpoints[agent.endpoint] = agent.id
            agents[agent.id] = agent
        return cls(source, agents, queues)


def _mapping(value: Any, where: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RosterError(f"{where}: must be a mapping, got {type(value).__name__}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RosterError(f"{where}: must be a number of seconds, got {value!r}")
    return float(value)


def _queue(name: str, body: Mapping[str, Any], where: str) -> QueuePolicy:
    unknown = set(body) - _QUEUE_KEYS
    if unknown:
        raise RosterError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    steps: list[tuple[float, str]] = []
    raw_steps = body.get("steps") or []
    if not isinstance(raw_steps, list):
        raise RosterError(f"{where}.steps: must be a list of {{after, accept}}")
    for i, step in enumerate(raw_steps):
        if not isinstance(step, dict) or set(step) != {"after", "accept"}:
            raise RosterError(f"{where}.steps[{i}]: must be {{after: <seconds>, accept: <skills>}}")
        text = step["accept"]
        if not isinstance(text, str):
            raise RosterError(f"{where}.steps[{i}].accept: must be a skill expression")
        try:
            parse(text)
        except AcdError as exc:
            raise RosterError(f"{where}.steps[{i}].accept: {exc}") from None
        steps.append((_number(step["after"], f"{where}.steps[{i}].after"), text))
    strategy = body.get("strategy", Strategy.LONGEST_IDLE.value)
    try:
        strategy = Strategy(strategy)
    except ValueError:
        choices = ", ".join(s.value for s in Strategy)
        raise RosterError(f"{where}.strategy: {strategy!r} is not one of {choices}") from None
    overflow = body.get("overflow")
    if overflow is not None and not isinstance(overflow, str):
        raise RosterError(f"{where}.overflow: must be a queue name or 'operators'")
    flags = {}
    for key, default in (
        ("join_empty", True),
        ("leave_when_empty", False),
        ("operator", False),
        ("callback", True),
    ):
        value = body.get(key, default)
        if not isinstance(value, bool):
            raise RosterError(f"{where}.{key}: must be true or false, got {value!r}")
        flags[key] = value
    policy = QueuePolicy(
        name=name,
        strategy=strategy,
        wrapup=_number(body.get("wrapup", 0), f"{where}.wrapup"),
        weight=_number(body.get("weight", 0), f"{where}.weight"),
        max_wait=_number(body.get("max_wait", 0), f"{where}.max_wait"),
        max_length=int(_number(body.get("max_length", 0), f"{where}.max_length")),
        overflow=overflow,
        steps=tuple(steps),
        ring_all_limit=int(_number(body.get("ring_all_limit", 16), f"{where}.ring_all_limit")),
        **flags,
    )
    try:  # validate everything the matcher will check, now, with the key named
        policy.spec_for("check", "any")
    except AcdError as exc:
        raise RosterError(f"{where}: {exc}") from None
    return policy


def _agent(ext: str, body: Mapping[str, Any], where: str) -> RosterAgent:
    at = f"{where}: agents.{ext}"
    if not _EXTENSION.match(ext):
        raise RosterError(f"{at}: an agent is keyed by its extension (2-8 digits)")
    unknown = set(body) - _AGENT_KEYS
    if unknown:
        raise RosterError(f"{at}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    endpoint = body.get("endpoint", f"PJSIP/{ext}")
    if not isinstance(endpoint, str) or not _ENDPOINT.match(endpoint):
        raise RosterError(f"{at}.endpoint: must look like PJSIP/<name>, got {endpoint!r}")
    login = body.get("login", "auto")
    if login not in LOGIN_MODES:
        raise RosterError(f"{at}.login: must be one of {', '.join(LOGIN_MODES)}, got {login!r}")
    skills = _mapping(body.get("skills"), f"{at}.skills")
    channels = _mapping(body.get("channels"), f"{at}.channels") or {"voice": 1}
    try:
        spec = AgentSpec(ext, skills, channels)
    except AcdError as exc:
        raise RosterError(f"{at}: {exc}") from None
    name = body.get("name", f"Agent {ext}")
    if not isinstance(name, str):
        raise RosterError(f"{at}.name: must be text")
    return RosterAgent(spec, name, endpoint, login)
