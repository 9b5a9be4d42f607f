"""YAML text -> a small located tree (maps, sequences, raw scalars), via yaml's compose API.

We keep scalars raw (the text the admin wrote) and decide their type where the field is known,
so `terminator: "#"`, `hours: {mon: 08:00-20:00}` and `priority: 10` all mean what they say.
Duplicate keys, non-scalar keys and aliases (reused anchors: a way to build huge or recursive
documents) are errors. Every failure is a `Diagnostic`, never another exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from ivr_engine.flow.model import Loc

MAX_NESTING = 40
_BASE: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LOADER(_BASE):  # type: ignore[valid-type,misc]
    """libyaml's composer (several times faster, same marks) without implicit tag resolution:
    we keep every scalar raw and type it where the field is known."""

    yaml_implicit_resolvers: dict[str, list[object]] = {}


NULLS = frozenset({"", "~", "null", "Null", "NULL"})
MAX_BYTES = 2_000_000


@dataclass(frozen=True)
class Diagnostic:
    severity: str  # "error" | "warning"
    message: str
    loc: Loc | None = None
    node: str | None = None
    flow: str | None = None

    def render(self) -> str:
        where = str(self.loc) if self.loc else (self.flow or "<flow>")
        node = f"node {self.node!r}: " if self.node else ""
        return f"{where}: {self.severity}: {node}{self.message}"


@dataclass
class Y:
    loc: Loc


@dataclass
class YScalar(Y):
    value: str
    tag: str
    quoted: bool

    @property
    def is_null(self) -> bool:
        return not self.quoted and self.value in NULLS


@dataclass
class YMap(Y):
    entries: dict[str, tuple[Loc, Y]] = field(default_factory=dict)


@dataclass
class YSeq(Y):
    items: list[Y] = field(default_factory=list)


def describe(y: Y) -> str:
    if isinstance(y, YMap):
        return "a mapping"
    if isinstance(y, YSeq):
        return "a list"
    if isinstance(y, YScalar) and y.is_null:
        return "nothing (null)"
    return f"{y.value!r}" if isinstance(y, YScalar) else "something else"


def _loc(path: str, mark: yaml.Mark | None) -> Loc:
    if mark is None:
        return Loc(path, 1, 1)
    return Loc(path, mark.line + 1, mark.column + 1)


class _Builder:
    def __init__(self, path: str, diags: list[Diagnostic]):
        self.path = path
        self.diags = diags
        self.seen: set[int] = set()

    def error(self, message: str, loc: Loc) -> None:
        self.diags.append(Diagnostic("error", message, loc))

    def build(self, node: yaml.Node, depth: int = 0) -> Y | None:
        loc = _loc(self.path, node.start_mark)
        if depth > MAX_NESTING:
            self.error(f"nested more than {MAX_NESTING} levels deep", loc)
            return None
        if id(node) in self.seen:
            self.error("YAML aliases (*name) are not supported in flows; use a subflow", loc)
            return None
        self.seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            return YScalar(loc, str(node.value), node.tag or "", node.style in ("'", '"', "|", ">"))
        if isinstance(node, yaml.SequenceNode):
            seq = YSeq(loc)
            for item in node.value:
                built = self.build(item, depth + 1)
                if built is not None:
                    seq.items.append(built)
            return seq
        if isinstance(node, yaml.MappingNode):
            out = YMap(loc)
            for key_node, value_node in node.value:
                kloc = _loc(self.path, key_node.start_mark)
                if not isinstance(key_node, yaml.ScalarNode):
                    self.error("a key must be a plain name, not a list or mapping", kloc)
                    continue
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self.error("merge keys (<<) are not supported in flows", kloc)
                    continue
                key = str(key_node.value)
                if key in out.entries:
                    first = out.entries[key][0]
                    self.error(f"duplicate key {key!r} (first at line {first.line})", kloc)
                    continue
                built = self.build(value_node, depth + 1)
                if built is not None:
                    out.entries[key] = (kloc, built)
            return out
        self.error("unsupported YAML node", loc)
        return None


def parse(text: str, path: str, diags: list[Diagnostic]) -> Y | None:
    """Compose one YAML document into a located tree; problems go to `diags`."""
    if len(text) > MAX_BYTES:
        diags.append(Diagnostic("error", f"file larger than {MAX_BYTES} bytes", Loc(path, 1, 1)))
        return None
    try:
        node = yaml.compose(text, Loader=LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "invalid YAML"
        diags.append(Diagnostic("error", f"YAML syntax: {what}", _loc(path, mark)))
        return None
    except yaml.YAMLError as exc:
        diags.append(Diagnostic("error", f"YAML syntax: {exc}", Loc(path, 1, 1)))
        return None
    except RecursionError:
        diags.append(Diagnostic("error", "YAML nested too deeply", Loc(path, 1, 1)))
        return None
    if node is None:
        diags.append(Diagnostic("error", "empty file", Loc(path, 1, 1)))
        return None
    try:
        return _Builder(path, diags).build(node)
    except RecursionError:
        diags.append(Diagnostic("error", "YAML nested too deeply", Loc(path, 1, 1)))
        return None
