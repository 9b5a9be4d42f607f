"""Typed access to the located YAML tree: field readers that report problems as diagnostics.

Scalars stay raw until a field says what it wants (a number of seconds, a DTMF key, a name);
each converter returns None after reporting, so one bad field does not hide the others.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ivr_engine.flow import expr as ex
from ivr_engine.flow.model import (
    DTMF_KEYS,
    Loc,
)
from ivr_engine.flow.yamltree import Diagnostic, Y, YMap, YScalar, YSeq, describe

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
NODE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*\Z")
SOURCE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
CHANNEL_VAR = re.compile(r"^[A-Z][A-Z0-9_]{0,63}\Z")
SAY_KINDS = frozenset({"number", "money", "date", "time", "digits", "masked"})
RESERVED = (
    frozenset({"caller", "call", "true", "false", "and", "or", "not", "in"}) | ex.FUNCTION_NAMES
)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CHECKS = frozenset({"luhn", "cn_mobile", "cn_id"})

# What every call has, besides the flow's own variables.
CONTEXT_VARS: dict[str, ex.VarInfo] = {
    "caller.number": ex.VarInfo("str"),
    "caller.name": ex.VarInfo("str"),
    "caller.dialled": ex.VarInfo("str"),
    "caller.withheld": ex.VarInfo("bool"),
    "call.id": ex.VarInfo("str"),
    "call.flow": ex.VarInfo("str"),
    "call.lang": ex.VarInfo("str"),
    "call.date": ex.VarInfo("date"),
    "call.day": ex.VarInfo("int"),
    "call.month": ex.VarInfo("int"),
    "call.year": ex.VarInfo("int"),
    "call.weekday": ex.VarInfo("int"),
    "call.hour": ex.VarInfo("int"),
    "call.minute": ex.VarInfo("int"),
    "call.time": ex.VarInfo("str"),
}

MISSING = object()


@dataclass(frozen=True)
class Template:
    """A string field with `{expr}` parts (e.g. `skills: "cards & lang_{call.lang}"`)."""

    source: str
    parts: tuple[str | ex.Expr, ...]
    sensitive: bool
    names: frozenset[str]

    def render(self, env: ex.Env) -> str:
        return "".join(p if isinstance(p, str) else ex.coerce(p(env), "str") for p in self.parts)  # type: ignore[misc]

    def as_expr(self) -> ex.Expr:
        if all(isinstance(p, str) for p in self.parts):
            text = "".join(p for p in self.parts if isinstance(p, str))
            return ex.Expr(self.source, "str", False, frozenset(), lambda e: text)
        return ex.Expr(self.source, "str", self.sensitive, self.names, self.render)


class Ctx:
    """Diagnostics for one file, with the node being parsed."""

    def __init__(self, path: str, diags: list[Diagnostic]):
        self.path = path
        self.diags = diags
        self.node: str | None = None
        self.flow: str | None = None

    def error(self, message: str, loc: Loc | None) -> None:
        self.diags.append(Diagnostic("error", message, loc, self.node, self.flow))

    def warning(self, message: str, loc: Loc | None) -> None:
        self.diags.append(Diagnostic("warning", message, loc, self.node, self.flow))


class Fields:
    """Typed access to a mapping's keys; reports unknown keys when done."""

    def __init__(self, ctx: Ctx, ymap: YMap, what: str):
        self.ctx = ctx
        self.map = ymap
        self.what = what
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.map.entries

    def raw(self, key: str) -> Y | None:
        self.used.add(key)
        entry = self.map.entries.get(key)
        return entry[1] if entry else None

    def key_loc(self, key: str) -> Loc:
        entry = self.map.entries.get(key)
        return entry[0] if entry else self.map.loc

    def get(self, key: str, conv: Callable[[Ctx, Y], Any], default: Any = MISSING) -> Any:
        y = self.raw(key)
        if y is None:
            if default is MISSING:
                self.ctx.error(f"{self.what} needs '{key}'", self.map.loc)
                return None
            return default
        return conv(self.ctx, y)

    def finish(self, allowed: Iterable[str]) -> None:
        import difflib

        allowed = list(allowed)
        known = sorted(set(allowed) | self.used)
        for key, (kloc, _) in self.map.entries.items():
            if key in self.used or key in allowed:
                continue
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            self.ctx.error(f"unknown field '{key}' in {self.what}{hint}", kloc)


# ---------------------------------------------------------------------------- scalar converters


def scalar(ctx: Ctx, y: Y, what: str) -> YScalar | None:
    if not isinstance(y, YScalar) or y.is_null:
        ctx.error(f"expected {what}, got {describe(y)}", y.loc)
        return None
    return y


def c_str(ctx: Ctx, y: Y) -> str | None:
    s = scalar(ctx, y, "a string")
    return s.value if s else None


def c_name(ctx: Ctx, y: Y) -> str | None:
    s = c_str(ctx, y)
    if s is not None and not NAME.match(s):
        ctx.error(f"{s!r} is not a valid name (letters, digits, _)", y.loc)
        return None
    return s


def c_int(ctx: Ctx, y: Y) -> int | None:
    s = scalar(ctx, y, "a whole number")
    if s is None:
        return None
    if s.quoted or not re.fullmatch(r"[-+]?\d{1,9}", s.value):
        ctx.error(f"expected a whole number, got {s.value!r}", y.loc)
        return None
    return int(s.value)


def c_pos_int(ctx: Ctx, y: Y) -> int | None:
    v = c_int(ctx, y)
    if v is not None and v < 1:
        ctx.error(f"expected a number of at least 1, got {v}", y.loc)
        return None
    return v


def c_seconds(ctx: Ctx, y: Y) -> float | None:
    s = scalar(ctx, y, "a number of seconds")
    if s is None:
        return None
    if s.quoted or not re.fullmatch(r"\d{1,6}(\.\d{1,6})?", s.value):
        ctx.error(f"expected a number of seconds, got {s.value!r}", y.loc)
        return None
    v = float(s.value)
    if not 0 < v <= 86400:
        ctx.error(f"seconds must be between 0 and 86400, got {s.value}", y.loc)
        return None
    return v


def c_bool(ctx: Ctx, y: Y) -> bool | None:
    s = scalar(ctx, y, "true or false")
    if s is None:
        return None
    low = s.value.lower()
    if s.quoted or low not in ("true", "false", "yes", "no", "on", "off"):
        ctx.error(f"expected true or false, got {s.value!r}", y.loc)
        return None
    return low in ("true", "yes", "on")


def c_key(ctx: Ctx, y: Y) -> str | None:
    s = c_str(ctx, y)
    if s is not None and (len(s) != 1 or s not in DTMF_KEYS):
        ctx.error(f"expected one DTMF key (0-9, * or #), got {s!r}", y.loc)
        return None
    return s


def c_str_list(ctx: Ctx, y: Y) -> list[tuple[str, Loc]]:
    if isinstance(y, YScalar) and not y.is_null:
        return [(y.value, y.loc)]
    if not isinstance(y, YSeq):
        ctx.error(f"expected a list, got {describe(y)}", y.loc)
        return []
    out = []
    for item in y.items:
        s = c_str(ctx, item)
        if s is not None:
            out.append((s, item.loc))
    return out


def expr_loc(y: Y, offset: int) -> Loc:
    extra = 1 if isinstance(y, YScalar) and y.quoted else 0
    return Loc(y.loc.path, y.loc.line, y.loc.col + extra + offset)


# ---------------------------------------------------------------------------------- the parser
