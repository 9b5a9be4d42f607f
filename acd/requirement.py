"""Skill-requirement expressions, parsed without `eval` into a form the matcher can index.

Grammar (keywords are case-insensitive, skills are lower-case names)::

    expr   := conj ("or" conj)*
    conj   := unary ("and" unary)*
    unary  := "not" unary | "(" expr ")" | "any" | "none" | skill [op level]
    op     := ">=" | ">" | "<=" | "<" | "==" | "!="
    level  := 0..10

A bare skill means `skill >= 1`; an agent without a skill has level 0 in it, so `not mandarin`
means "level 0 in mandarin". `any` matches every agent, `none` no agent.

Every expression is normalised into disjunctive normal form: a tuple of conjunctions, each a
sorted tuple of `(skill, lo, hi)` level intervals. Conjunctions implied by another one are
dropped, so the canonical text (`Requirement.text`) is the same for equivalent spellings and the
matcher can share one index entry per distinct requirement. A conjunction with an interval that
excludes level 0 is *anchored* on that skill: only agents holding the skill can satisfy it, which
is what lets the matcher find the requirements an agent satisfies without testing all of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from acd.errors import RequirementError

MAX_LEVEL = 10
MAX_CONJUNCTIONS = 64

Interval = tuple[str, int, int]
Conjunction = tuple[Interval, ...]

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_\-]*)|(?P<op>>=|<=|==|!=|>|<)|(?P<par>[()]))"
)
_KEYWORDS = frozenset({"and", "or", "not", "any", "none"})


@dataclass(frozen=True, slots=True)
class Requirement:
    """A normalised requirement: OR over `conjunctions`, each an AND of level intervals."""

    conjunctions: tuple[Conjunction, ...]

    @property
    def text(self) -> str:
        if not self.conjunctions:
            return "none"
        parts = []
        for conj in self.conjunctions:
            if not conj:
                return "any"
            parts.append(" and ".join(_interval_text(iv) for iv in conj))
        if len(parts) == 1:
            return parts[0]
        return " or ".join(f"({p})" if " and " in p else p for p in parts)

    def matches(self, skills: Mapping[str, int]) -> bool:
        """Evaluate against an agent's skill levels (missing skills are level 0)."""
        for conj in self.conjunctions:
            for skill, lo, hi in conj:
                level = skills.get(skill, 0)
                if level < lo or level > hi:
                    break
            else:
                return True
        return False

    def skills(self) -> tuple[str, ...]:
        """Skills the requirement asks for (a positive lower bound), in first-mention order."""
        seen: dict[str, None] = {}
        for conj in self.conjunctions:
            for skill, lo, _hi in conj:
                if lo >= 1:
                    seen.setdefault(skill, None)
        return tuple(seen)

    def union(self, other: Requirement) -> Requirement:
        """`self or other`, normalised (used for cumulative relaxation steps)."""
        return Requirement(_simplify(self.conjunctions + other.conjunctions))

    def __str__(self) -> str:
        return self.text


ANY = Requirement(((),))


def _interval_text(iv: Interval) -> str:
    skill, lo, hi = iv
    if lo == 0 and hi == 0:
        return f"not {skill}"
    if lo == hi:
        return f"{skill} == {lo}"
    if hi == MAX_LEVEL:
        return skill if lo == 1 else f"{skill} >= {lo}"
    if lo == 0:
        return f"{skill} <= {hi}"
    return f"{skill} >= {lo} and {skill} <= {hi}"


def anchor(conj: Conjunction) -> str | None:
    """The skill an agent must hold to satisfy `conj` (None if level 0 everywhere may pass)."""
    for skill, lo, _hi in conj:
        if lo >= 1:
            return skill
    return None


def parse(text: str) -> Requirement:
    """Parse and normalise a requirement; raises `RequirementError` naming the column."""
    if not isinstance(text, str):
        raise RequirementError("must be a string", text=repr(text))
    tokens = _tokenize(text)
    parser = _Parser(text, tokens)
    try:
        dnf = parser.expr(negate=False)
    except RequirementError as exc:
        if exc.text != "<expression>":
            raise
        raise RequirementError(str(exc).split(": ", 1)[1], text=text) from None
    if parser.pos != len(tokens):
        raise RequirementError(
            f"unexpected {tokens[parser.pos][1]!r}", text=text, column=tokens[parser.pos][2]
        )
    try:
        return Requirement(_simplify(dnf))
    except RequirementError as exc:
        raise RequirementError(str(exc).split(": ", 1)[1], text=text) from None


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    stripped = text.rstrip()
    while pos < len(stripped):
        m = _TOKEN.match(stripped, pos)
        if m is None or m.end() == pos:
            col = pos + 1 + (len(stripped[pos:]) - len(stripped[pos:].lstrip()))
            bad = stripped[col - 1] if col - 1 < len(stripped) else "end"
            raise RequirementError(f"unexpected character {bad!r}", text=text, column=col)
        kind = m.lastgroup or ""
        value = m.group(kind)
        col = m.start(kind) + 1
        if kind == "name":
            low = value.lower()
            if low in _KEYWORDS:
                kind, value = "kw", low
            elif value != low:
                raise RequirementError(
                    f"skill names are lower case: {value!r}", text=text, column=col
                )
        out.append((kind, value, col))
        pos = m.end()
    if not out:
        raise RequirementError("empty expression", text=text, column=1)
    return out


class _Parser:
    """Recursive descent straight into DNF; `negate` pushes `not` down by De Morgan."""

    def __init__(self, text: str, tokens: list[tuple[str, str, int]]):
        self.text = text
        self.tokens = tokens
        self.pos = 0

    def _peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _fail(self, message: str) -> RequirementError:
        tok = self._peek()
        col = tok[2] if tok else len(self.text.rstrip()) + 1
        return RequirementError(message, text=self.text, column=col)

    def expr(self, negate: bool) -> tuple[Conjunction, ...]:
        parts = [self.conj(negate)]
        while (tok := self._peek()) is not None and tok[:2] == ("kw", "or"):
            self.pos += 1
            parts.append(self.conj(negate))
        # not (a or b) == (not a) and (not b)
        return _and_all(parts) if negate else _or_all(parts)

    def conj(self, negate: bool) -> tuple[Conjunction, ...]:
        parts = [self.unary(negate)]
        while (tok := self._peek()) is not None and tok[:2] == ("kw", "and"):
            self.pos += 1
            parts.append(self.unary(negate))
        return _or_all(parts) if negate else _and_all(parts)

    def unary(self, negate: bool) -> tuple[Conjunction, ...]:
        tok = self._peek()
        if tok is None:
            raise self._fail("expression ends too early")
        kind, value, _col = tok
        if kind == "kw" and value == "not":
            self.pos += 1
            return self.unary(not negate)
        if kind == "par" and value == "(":
            self.pos += 1
            inner = self.expr(negate)
            close = self._peek()
            if close is None or close[:2] != ("par", ")"):
                raise self._fail("missing ')'")
            self.pos += 1
            return inner
        if kind == "kw" and value in ("any", "none"):
            self.pos += 1
            always = value == "any"
            return ((),) if always != negate else ()
        if kind != "name":
            raise self._fail(f"expected a skill name, got {value!r}")
        self.pos += 1
        skill = value
        op, level = ">=", 1
        nxt = self._peek()
        if nxt is not None and nxt[0] == "op":
            op = nxt[1]
            self.pos += 1
            num = self._peek()
            if num is None or num[0] != "num":
                raise self._fail(f"expected a level after {op!r}")
            level = int(num[1])
            if level > MAX_LEVEL:
                raise self._fail(f"level {level} is out of range 0..{MAX_LEVEL}")
            self.pos += 1
        return _atom(skill, op, level, negate)


_NEGATED = {">=": "<", ">": "<=", "<=": ">", "<": ">=", "==": "!=", "!=": "=="}


def _atom(skill: str, op: str, level: int, negate: bool) -> tuple[Conjunction, ...]:
    if negate:
        op = _NEGATED[op]
    if op == "!=":
        return _or_all([_atom(skill, "<", level, False), _atom(skill, ">", level, False)])
    lo, hi = {
        ">=": (level, MAX_LEVEL),
        ">": (level + 1, MAX_LEVEL),
        "<=": (0, level),
        "<": (0, level - 1),
        "==": (level, level),
    }[op]
    if lo > hi:
        return ()  # can never hold
    if lo == 0 and hi == MAX_LEVEL:
        return ((),)  # always holds
    return (((skill, lo, hi),),)


def _or_all(parts: list[tuple[Conjunction, ...]]) -> tuple[Conjunction, ...]:
    out: list[Conjunction] = []
    for p in parts:
        out.extend(p)
    return _simplify(tuple(out))


def _and_all(parts: list[tuple[Conjunction, ...]]) -> tuple[Conjunction, ...]:
    acc: tuple[Conjunction, ...] = ((),)
    for p in parts:
        nxt: list[Conjunction] = []
        for a in acc:
            for b in p:
                merged = _and_conj(a, b)
                if merged is not None:
                    nxt.append(merged)
        if len(nxt) > MAX_CONJUNCTIONS * 4:
            raise RequirementError("too complex", text="<expression>")
        acc = _simplify(tuple(nxt))
    return acc


def _and_conj(a: Conjunction, b: Conjunction) -> Conjunction | None:
    bounds: dict[str, tuple[int, int]] = {s: (lo, hi) for s, lo, hi in a}
    for s, lo, hi in b:
        if s in bounds:
            olo, ohi = bounds[s]
            lo, hi = max(lo, olo), min(hi, ohi)
            if lo > hi:
                return None
        bounds[s] = (lo, hi)
    return tuple(sorted((s, lo, hi) for s, (lo, hi) in bounds.items()))


def _implies(a: Conjunction, b: Conjunction) -> bool:
    """Every skill map satisfying `a` satisfies `b`."""
    amap = {s: (lo, hi) for s, lo, hi in a}
    for s, lo, hi in b:
        alo, ahi = amap.get(s, (0, MAX_LEVEL))
        if alo < lo or ahi > hi:
            return False
    return True


def _simplify(conjs: tuple[Conjunction, ...]) -> tuple[Conjunction, ...]:
    unique = sorted(set(conjs), key=lambda c: (len(c), c))
    kept: list[Conjunction] = []
    for c in unique:
        if not any(_implies(c, k) for k in kept):
            kept = [k for k in kept if not _implies(k, c)]
            kept.append(c)
    if len(kept) > MAX_CONJUNCTIONS:
        raise RequirementError(
            f"too complex: more than {MAX_CONJUNCTIONS} alternatives", text="<expression>"
        )
    return tuple(sorted(kept, key=lambda c: (len(c), c)))
