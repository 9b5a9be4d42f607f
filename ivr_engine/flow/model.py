"""The flow data model: frozen dataclasses built by the loader, run by the interpreter.

Every element carries its `Loc` (file, line, column) so that lint and run-time errors point
at the YAML an admin wrote. Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from ivr_engine.flow.expr import Expr

HOTKEY_OPERATOR = "0"
HOTKEY_REPEAT = "*"
HOTKEY_BACK = "#"
DTMF_KEYS = frozenset("0123456789*#")
LANGUAGES = ("cmn", "yue", "en")


def frozen_map(d: Mapping[str, object] | None = None) -> Mapping[str, object]:
    return MappingProxyType(dict(d or {}))


class Loc(NamedTuple):
    path: str
    line: int  # 1-based
    col: int  # 1-based

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


@dataclass(frozen=True)
class PromptRef:
    """One thing to say: a catalogue prompt (with placeholder values) or a direct `say`."""

    loc: Loc
    prompt: str | None = None
    vars: tuple[tuple[str, Expr], ...] = ()
    say: str | None = None  # number | money | date | time | digits | masked
    value: Expr | None = None


Prompts = tuple[PromptRef, ...]  # played in sequence


@dataclass(frozen=True)
class Retry:
    """No-input or no-match policy: its own maximum, escalating prompts, its own exit."""

    max: int
    exit: str
    prompts: tuple[Prompts, ...] = ()  # attempt 1, 2, ...; the last one repeats
    loc: Loc | None = None

    def prompt_for(self, attempt: int) -> Prompts:
        if not self.prompts:
            return ()
        return self.prompts[min(attempt, len(self.prompts)) - 1]


@dataclass(frozen=True)
class Validation:
    pattern: str | None = None
    luhn: bool = False
    check: str | None = None  # a named built-in check (see interpreter.CHECKS)


@dataclass(frozen=True)
class Node:
    id: str
    loc: Loc
    max_visits: int | None = field(default=None, kw_only=True)
    on_max_visits: str | None = field(default=None, kw_only=True)

    kind = "node"

    def targets(self) -> list[tuple[str, str, bool]]:
        """(label, target, caller_driven) for every exit: lint builds the graph from this."""
        out: list[tuple[str, str, bool]] = []
        if self.on_max_visits:
            out.append(("on_max_visits", self.on_max_visits, False))
        return out


@dataclass(frozen=True)
class InputNode(Node):
    prompt: Prompts = ()
    reprompt: Prompts = ()  # greet-long then greet-short: attempts after the first say this
    no_input: Retry = field(default_factory=lambda: Retry(1, ""), kw_only=True)
    no_match: Retry = field(default_factory=lambda: Retry(1, ""), kw_only=True)
    barge_in: bool = field(default=True, kw_only=True)
    hotkeys: bool = field(default=True, kw_only=True)

    def targets(self) -> list[tuple[str, str, bool]]:
        out = super().targets()
        out.append(("no_input", self.no_input.exit, False))
        out.append(("no_match", self.no_match.exit, False))
        return out


@dataclass(frozen=True)
class PlayNode(Node):
    prompt: Prompts
    next: str
    barge_in: bool = True
    kind = "play"

    def targets(self) -> list[tuple[str, str, bool]]:
        return [*super().targets(), ("next", self.next, False)]


@dataclass(frozen=True)
class MenuNode(InputNode):
    options: Mapping[str, str] = field(default_factory=frozen_map)  # type: ignore[arg-type]
    timeout: float = 5.0
    kind = "menu"

    def targets(self) -> list[tuple[str, str, bool]]:
        out = super().targets()
        out.extend((f"option {k}", t, True) for k, t in self.options.items())
        return out


@dataclass(frozen=True)
class CollectNode(InputNode):
    var: str = ""
    next: str = ""
    min_digits: int = 1
    max_digits: int = 20
    terminator: str = "#"
    first_digit_timeout: float = 5.0
    inter_digit_timeout: float = 3.0
    validation: Validation = field(default_factory=Validation)
    sensitive: bool = False
    kind = "collect"

    def targets(self) -> list[tuple[str, str, bool]]:
        return [*super().targets(), ("next", self.next, True)]


@dataclass(frozen=True)
class AuditSpec:
    operation: str
    details: tuple[tuple[str, Expr], ...] = ()


@dataclass(frozen=True)
class ConfirmNode(InputNode):
    yes: str = ""
    retry: str = ""
    confirm_key: str = "1"
    retry_key: str = "2"
    timeout: float = 5.0
    audit: AuditSpec | None = None
    kind = "confirm"

    def targets(self) -> list[tuple[str, str, bool]]:
        return [*super().targets(), ("yes", self.yes, True), ("retry", self.retry, True)]


@dataclass(frozen=True)
class Case:
    when: Expr
    goto: str
    loc: Loc


@dataclass(frozen=True)
class SwitchNode(Node):
    cases: tuple[Case, ...]
    default: str
    kind = "switch"

    def targets(self) -> list[tuple[str, str, bool]]:
        out = super().targets()
        out.extend((f"case {i + 1}", c.goto, False) for i, c in enumerate(self.cases))
        out.append(("default", self.default, False))
        return out


@dataclass(frozen=True)
class ScheduleNode(Node):
    timezone: str
    # weekday (0 = Monday) -> ((start_minute, end_minute), ...), end exclusive
    hours: tuple[tuple[tuple[int, int], ...], ...]
    holidays: frozenset[str]  # ISO dates "2026-10-01" or yearly "10-01"
    open: str
    closed: str
    holiday: str | None = None
    kind = "schedule"

    def targets(self) -> list[tuple[str, str, bool]]:
        out = [*super().targets(), ("open", self.open, False), ("closed", self.closed, False)]
        if self.holiday:
            out.append(("holiday", self.holiday, False))
        return out


@dataclass(frozen=True)
class SetNode(Node):
    assign: tuple[tuple[str, Expr], ...]
    next: str
    language: Expr | None = None
    channel: tuple[tuple[str, Expr], ...] = ()  # channel variables for the dialplan
    kind = "set"

    def targets(self) -> list[tuple[str, str, bool]]:
        return [*super().targets(), ("next", self.next, False)]


@dataclass(frozen=True)
class LookupNode(Node):
    source: str
    params: tuple[tuple[str, Expr], ...]
    result: str | None
    next: str
    error: str
    timeout: float = 3.0
    kind = "lookup"

    def targets(self) -> list[tuple[str, str, bool]]:
        return [*super().targets(), ("next", self.next, False), ("error", self.error, False)]


@dataclass(frozen=True)
class SubflowNode(Node):
    flow: str
    params: tuple[tuple[str, Expr], ...]
    outputs: tuple[tuple[str, str], ...]  # (local var, returned name)
    next: str | None
    exits: Mapping[str, str]
    kind = "subflow"

    def targets(self) -> list[tuple[str, str, bool]]:
        out = super().targets()
        if self.next:
            out.append(("next", self.next, False))
        out.extend((f"exit {k}", t, False) for k, t in self.exits.items())
        return out


@dataclass(frozen=True)
class ReturnNode(Node):
    exit: str = "next"
    values: tuple[tuple[str, Expr], ...] = ()
    kind = "return"


@dataclass(frozen=True)
class QueueNode(Node):
    queue: Expr
    skills: Expr | None
    priority: Expr
    language: Expr | None
    data: tuple[tuple[str, Expr], ...]
    timeout: float
    on: Mapping[str, str]  # outcome -> target; unlisted outcomes end the flow
    kind = "queue"

    def targets(self) -> list[tuple[str, str, bool]]:
        return [*super().targets(), *((f"on {k}", t, False) for k, t in self.on.items())]


QUEUE_OUTCOMES = (
    "answered",
    "timeout",
    "abandoned",
    "overflow",
    "callback",
    "closed",
    "handed_off",
)


@dataclass(frozen=True)
class TransferNode(Node):
    to: Expr
    timeout: float
    busy: str
    fail: str
    noanswer: str | None = None
    kind = "transfer"

    def targets(self) -> list[tuple[str, str, bool]]:
        out = [*super().targets(), ("busy", self.busy, False), ("fail", self.fail, False)]
        if self.noanswer:
            out.append(("noanswer", self.noanswer, False))
        return out


@dataclass(frozen=True)
class HangupNode(Node):
    prompt: Prompts = ()
    reason: str = "completed"
    kind = "hangup"


NODE_TYPES: dict[str, type[Node]] = {
    cls.kind: cls
    for cls in (
        PlayNode,
        MenuNode,
        CollectNode,
        ConfirmNode,
        SwitchNode,
        ScheduleNode,
        SetNode,
        LookupNode,
        SubflowNode,
        ReturnNode,
        QueueNode,
        TransferNode,
        HangupNode,
    )
}
INPUT_KINDS = frozenset({"menu", "collect", "confirm"})
# Nodes that need a live caller: not allowed in the on_hangup path.
CHANNEL_KINDS = frozenset({"play", "menu", "collect", "confirm", "queue", "transfer", "subflow"})


@dataclass(frozen=True)
class VarDecl:
    name: str
    type: str
    default: object
    sensitive: bool
    loc: Loc


@dataclass(frozen=True)
class SourceDecl:
    """A data source the flow calls: the fields its result has (typed)."""

    name: str
    params: Mapping[str, str]  # param -> type
    fields: Mapping[str, str]  # field -> type
    sensitive_fields: frozenset[str]
    loc: Loc
    sensitive_params: frozenset[str] = frozenset()  # may carry a PIN or a full card number


@dataclass(frozen=True)
class MapDecl:
    name: str
    type: str
    table: Mapping[str, object]
    default: object
    loc: Loc


@dataclass(frozen=True)
class Flow:
    name: str
    path: str
    loc: Loc
    start: str
    nodes: Mapping[str, Node]
    vars: Mapping[str, VarDecl]
    params: tuple[str, ...]  # names of vars that are parameters (in declaration order)
    returns: Mapping[str, VarDecl]
    sources: Mapping[str, SourceDecl]
    results: Mapping[str, str]  # record var -> source name
    maps: Mapping[str, MapDecl]
    languages: tuple[str, ...]
    language: str
    timezone: str
    hotkeys: Mapping[str, str]  # key -> "operator:<target>" | "repeat" | "back"
    on_hangup: str | None
    on_error: str | None
    max_menu_depth: int
    max_subflow_depth: int
    description: str = ""

    def sensitive_names(self) -> frozenset[str]:
        names = {v.name for v in self.vars.values() if v.sensitive}
        for var, src in self.results.items():
            decl = self.sources.get(src)
            if decl:
                names.update(f"{var}.{f}" for f in decl.sensitive_fields)
        return frozenset(names)


@dataclass(frozen=True)
class FlowSet:
    """Every flow of a deployment; `version` is the content hash of the YAML files."""

    flows: Mapping[str, Flow]
    version: str
    entry: str | None = None

    def get(self, name: str) -> Flow:
        from ivr_engine.errors import FlowError

        flow = self.flows.get(name)
        if flow is None:
            raise FlowError(f"no flow named {name!r} (have: {', '.join(sorted(self.flows))})")
        return flow
