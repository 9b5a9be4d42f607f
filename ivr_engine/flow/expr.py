"""Safe, typed expressions for flow conditions and values: own tokenizer, parser and compiler.

Nothing here calls `eval`. An expression is parsed once at load time, checked against the
types of the variables the flow can have, and compiled into a tree of small closures that
read a flat environment (`{"cust.tier": "vip", "call.day": 25, ...}`).

Grammar (lowest precedence first)::

    expr    := and ('or' and)*
    and     := not ('and' not)*
    not     := 'not' not | cmp
    cmp     := add (('=='|'!='|'<'|'<='|'>'|'>='|'in'|'not' 'in') add)?
    add     := mul (('+'|'-') mul)*
    mul     := unary (('*'|'/'|'%') unary)*
    unary   := '-' unary | primary
    primary := NUMBER | STRING | 'true' | 'false' | '[' [expr (',' expr)*] ']'
             | NAME '(' [expr (',' expr)*] ')'         (a built-in function)
             | NAME '[' expr ']'                       (a map declared in the flow)
             | NAME ('.' NAME)*                        (a variable)
             | '(' expr ')'

Types: str, int, num (decimal), bool, date, and list[T] for list literals. Taint: an
expression that reads a sensitive variable is sensitive, except through `mask()`.

Standard library only (the flow model layer).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from ivr_engine.errors import FlowError

SCALAR_TYPES = ("str", "int", "num", "bool", "date")

Env = Mapping[str, object]
Evaluator = Callable[[Env], object]


class ExprError(FlowError):
    """An expression that does not parse or does not type-check; `offset` is 0-based."""

    def __init__(self, message: str, *, source: str, offset: int):
        self.source = source
        self.offset = offset
        super().__init__(message)


class ExprRuntimeError(FlowError):
    """An expression failed while a call ran (division by zero, bad conversion).

    Messages never quote the value: it may be a PIN."""


@dataclass(frozen=True)
class VarInfo:
    type: str
    sensitive: bool = False


@dataclass(frozen=True)
class Scope:
    """What an expression may read: variables (dotted names) and the flow's maps."""

    variables: Mapping[str, VarInfo]
    maps: Mapping[str, tuple[str, Mapping[str, object], object]]  # name -> (type, table, default)


@dataclass(frozen=True)
class Expr:
    source: str
    type: str
    sensitive: bool
    names: frozenset[str]
    evaluate: Evaluator

    def __call__(self, env: Env) -> object:
        return self.evaluate(env)


# --------------------------------------------------------------------------------- tokenizer

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>\d+(?:\.\d+)?)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|[<>+\-*/%().,\[\]])
    """,
    re.VERBOSE,
)

KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false"})
MAX_LENGTH = 2000
MAX_DEPTH = 60


@dataclass(frozen=True)
class Token:
    kind: str  # num str name op kw end
    text: str
    pos: int


def tokenize(source: str) -> list[Token]:
    if len(source) > MAX_LENGTH:
        raise ExprError(f"expression longer than {MAX_LENGTH} characters", source=source, offset=0)
    tokens: list[Token] = []
    pos = 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise ExprError(f"unexpected character {source[pos]!r}", source=source, offset=pos)
        kind = m.lastgroup or ""
        text = m.group()
        if kind != "ws":
            if kind == "name" and text in KEYWORDS:
                kind = "kw"
            tokens.append(Token(kind, text, pos))
        pos = m.end()
    tokens.append(Token("end", "", len(source)))
    return tokens


# ------------------------------------------------------------------------------------ parser


@dataclass(frozen=True)
class _Node:
    type: str
    sensitive: bool
    names: frozenset[str]
    fn: Evaluator
    const: bool = False


def _is_num(t: str) -> bool:
    return t in ("int", "num")


def _unescape(raw: str) -> str:
    body = raw[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def _to_decimal(v: object) -> Decimal:
    if isinstance(v, Decimal):
        return v
    if isinstance(v, bool):
        raise ExprRuntimeError(f"not a number (a {type(v).__name__})")
    if isinstance(v, int | float | str):
        try:
            return Decimal(str(v))
        except InvalidOperation:
            raise ExprRuntimeError(f"not a number (a {type(v).__name__})") from None
    raise ExprRuntimeError(f"not a number (a {type(v).__name__})")


def _mask(value: object) -> str:
    s = str(value)
    digits = "".join(ch for ch in s if ch.isdigit())
    return "****" + digits[-4:] if digits else "****"


def _to_int(v: object) -> int:
    try:
        if isinstance(v, Decimal):
            return int(v)
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, int):
            return v
        if isinstance(v, str):
            return int(v.strip())
    except ValueError:
        pass
    raise ExprRuntimeError(f"cannot convert a {type(v).__name__} value to int")


def _to_num(v: object) -> Decimal:
    if isinstance(v, str):
        try:
            return Decimal(v.strip())
        except InvalidOperation:
            raise ExprRuntimeError("cannot convert a str value to num") from None
    return _to_decimal(v)


def _to_str(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dt.date):
        return v.isoformat()
    return str(v)


def _days_until(env: Env, d: object) -> int:
    today = env.get("call.date")
    if not isinstance(d, dt.date) or not isinstance(today, dt.date):
        raise ExprRuntimeError("days_until needs a date")
    return (d - today).days


# name -> (argument types, result type or "same", implementation, takes_env)
# "any" matches any scalar type; "same" returns the first argument's type.
_FUNCTIONS: dict[str, tuple[tuple[str, ...], str, Callable[..., object], bool]] = {
    "len": (("str",), "int", lambda s: len(s), False),
    "lower": (("str",), "str", lambda s: s.lower(), False),
    "upper": (("str",), "str", lambda s: s.upper(), False),
    "startswith": (("str", "str"), "bool", lambda s, p: s.startswith(p), False),
    "endswith": (("str", "str"), "bool", lambda s, p: s.endswith(p), False),
    "contains": (("str", "str"), "bool", lambda s, p: p in s, False),
    "mask": (("any",), "str", _mask, False),
    "int": (("any",), "int", _to_int, False),
    "num": (("any",), "num", _to_num, False),
    "str": (("any",), "str", _to_str, False),
    "min": (("num", "num"), "same", min, False),
    "max": (("num", "num"), "same", max, False),
    "days_until": (("date",), "int", _days_until, True),
    "days_between": (("date", "date"), "int", lambda a, b: (b - a).days, False),
    "if": (("bool", "any", "any"), "same2", lambda c, a, b: a if c else b, False),
}
FUNCTION_NAMES = frozenset(_FUNCTIONS)


class _Parser:
    def __init__(self, source: str, scope: Scope):
        self.source = source
        self.scope = scope
        self.tokens = tokenize(source)
        self.i = 0
        self.depth = 0

    # -- helpers
    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def error(self, message: str, tok: Token | None = None) -> ExprError:
        pos = (tok or self.peek()).pos
        return ExprError(message, source=self.source, offset=pos)

    def expect(self, text: str) -> Token:
        tok = self.peek()
        if tok.text != text or tok.kind not in ("op", "kw"):
            shown = tok.text or "end of expression"
            raise self.error(f"expected {text!r}, found {shown!r}", tok)
        return self.take()

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error("expression nested too deeply")

    # -- grammar
    def parse(self) -> _Node:
        node = self.or_()
        if self.peek().kind != "end":
            raise self.error(f"unexpected {self.peek().text!r}")
        return node

    def or_(self) -> _Node:
        self.enter()
        left = self.and_()
        while self.peek().kind == "kw" and self.peek().text == "or":
            tok = self.take()
            right = self.and_()
            self._need_bool(left, tok, "or")
            self._need_bool(right, tok, "or")
            left = _combine("bool", (left, right), _or(left.fn, right.fn))
        self.depth -= 1
        return left

    def and_(self) -> _Node:
        left = self.not_()
        while self.peek().kind == "kw" and self.peek().text == "and":
            tok = self.take()
            right = self.not_()
            self._need_bool(left, tok, "and")
            self._need_bool(right, tok, "and")
            left = _combine("bool", (left, right), _and(left.fn, right.fn))
        return left

    def not_(self) -> _Node:
        tok = self.peek()
        if tok.kind == "kw" and tok.text == "not":
            self.take()
            self.enter()
            inner = self.not_()
            self.depth -= 1
            self._need_bool(inner, tok, "not")
            f = inner.fn
            return _combine("bool", (inner,), lambda e: not f(e))
        return self.cmp()

    def _need_bool(self, node: _Node, tok: Token, op: str) -> None:
        if node.type != "bool":
            raise self.error(f"'{op}' needs bool operands, got {node.type}", tok)

    def cmp(self) -> _Node:
        left = self.add()
        tok = self.peek()
        op = tok.text
        if tok.kind == "op" and op in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            right = self.add()
            return self._compare(op, left, right, tok)
        if tok.kind == "kw" and op == "in":
            self.take()
            right = self.add()
            return self._member(left, right, tok, negate=False)
        if tok.kind == "kw" and op == "not" and self.tokens[self.i + 1].text == "in":
            self.take()
            self.take()
            right = self.add()
            return self._member(left, right, tok, negate=True)
        return left

    def _compare(self, op: str, a: _Node, b: _Node, tok: Token) -> _Node:
        numeric = _is_num(a.type) and _is_num(b.type)
        if not numeric and a.type != b.type:
            raise self.error(f"cannot compare {a.type} with {b.type}", tok)
        if (op not in ("==", "!=") and a.type == "bool") or a.type.startswith("list"):
            raise self.error(f"'{op}' is not defined for {a.type}", tok)
        af, bf = a.fn, b.fn
        fns: dict[str, Callable[[object, object], bool]] = {
            "==": lambda x, y: x == y,
            "!=": lambda x, y: x != y,
            "<": lambda x, y: x < y,  # type: ignore[operator]
            "<=": lambda x, y: x <= y,  # type: ignore[operator]
            ">": lambda x, y: x > y,  # type: ignore[operator]
            ">=": lambda x, y: x >= y,  # type: ignore[operator]
        }
        f = fns[op]
        return _combine("bool", (a, b), lambda e: f(af(e), bf(e)))

    def _member(self, a: _Node, b: _Node, tok: Token, *, negate: bool) -> _Node:
        if b.type == "str":
            if a.type != "str":
                raise self.error(f"'in' a string needs a str on the left, got {a.type}", tok)
        elif b.type.startswith("list["):
            inner = b.type[5:-1]
            if inner != a.type and not (_is_num(inner) and _is_num(a.type)):
                raise self.error(f"cannot look for {a.type} in {b.type}", tok)
        else:
            raise self.error(f"'in' needs a list or a str on the right, got {b.type}", tok)
        af, bf = a.fn, b.fn
        if negate:
            return _combine("bool", (a, b), lambda e: af(e) not in bf(e))  # type: ignore[operator]
        return _combine("bool", (a, b), lambda e: af(e) in bf(e))  # type: ignore[operator]

    def add(self) -> _Node:
        left = self.mul()
        while self.peek().kind == "op" and self.peek().text in ("+", "-"):
            tok = self.take()
            right = self.mul()
            left = self._arith(tok, left, right)
        return left

    def mul(self) -> _Node:
        left = self.unary()
        while self.peek().kind == "op" and self.peek().text in ("*", "/", "%"):
            tok = self.take()
            right = self.unary()
            left = self._arith(tok, left, right)
        return left

    def _arith(self, tok: Token, a: _Node, b: _Node) -> _Node:
        op = tok.text
        af, bf = a.fn, b.fn
        if op == "+" and a.type == "str" and b.type == "str":
            return _combine("str", (a, b), lambda e: af(e) + bf(e))  # type: ignore[operator]
        if not (_is_num(a.type) and _is_num(b.type)):
            raise self.error(f"'{op}' needs numbers, got {a.type} and {b.type}", tok)
        result = "int" if a.type == b.type == "int" and op != "/" else "num"
        if result == "int":
            ifns: dict[str, Callable[[int, int], int]] = {
                "+": lambda x, y: x + y,
                "-": lambda x, y: x - y,
                "*": lambda x, y: x * y,
                "%": lambda x, y: x % y,
            }
            g = ifns[op]

            def int_op(e: Env) -> object:
                x, y = af(e), bf(e)
                if op == "%" and y == 0:
                    raise ExprRuntimeError(f"modulo by zero in {self.source!r}")
                return g(x, y)  # type: ignore[arg-type]

            return _combine("int", (a, b), int_op)
        dfns: dict[str, Callable[[Decimal, Decimal], Decimal]] = {
            "+": lambda x, y: x + y,
            "-": lambda x, y: x - y,
            "*": lambda x, y: x * y,
            "/": lambda x, y: x / y,
            "%": lambda x, y: x % y,
        }
        h = dfns[op]
        source = self.source

        def num_op(e: Env) -> object:
            x, y = _to_decimal(af(e)), _to_decimal(bf(e))
            if op in ("/", "%") and y == 0:
                raise ExprRuntimeError(f"division by zero in {source!r}")
            return h(x, y)

        return _combine("num", (a, b), num_op)

    def unary(self) -> _Node:
        tok = self.peek()
        if tok.kind == "op" and tok.text == "-":
            self.take()
            self.enter()
            inner = self.unary()
            self.depth -= 1
            if not _is_num(inner.type):
                raise self.error(f"'-' needs a number, got {inner.type}", tok)
            f = inner.fn
            return _combine(inner.type, (inner,), lambda e: -f(e))  # type: ignore[operator]
        return self.primary()

    def primary(self) -> _Node:
        tok = self.take()
        if tok.kind == "num":
            value: object = Decimal(tok.text) if "." in tok.text else int(tok.text)
            return _const("num" if "." in tok.text else "int", value)
        if tok.kind == "str":
            return _const("str", _unescape(tok.text))
        if tok.kind == "kw" and tok.text in ("true", "false"):
            return _const("bool", tok.text == "true")
        if tok.kind == "op" and tok.text == "(":
            inner = self.or_()
            self.expect(")")
            return inner
        if tok.kind == "op" and tok.text == "[":
            return self.list_literal(tok)
        if tok.kind == "name":
            nxt = self.peek()
            if nxt.kind == "op" and nxt.text == "(":
                return self.call(tok)
            if nxt.kind == "op" and nxt.text == "[":
                return self.index(tok)
            return self.variable(tok)
        shown = tok.text or "end of expression"
        raise self.error(f"unexpected {shown!r}", tok)

    def list_literal(self, start: Token) -> _Node:
        items: list[_Node] = []
        if not (self.peek().kind == "op" and self.peek().text == "]"):
            items.append(self.or_())
            while self.peek().kind == "op" and self.peek().text == ",":
                self.take()
                items.append(self.or_())
        self.expect("]")
        if not items:
            raise self.error("an empty list has no type", start)
        t = items[0].type
        for it in items[1:]:
            if it.type != t and not (_is_num(t) and _is_num(it.type)):
                raise self.error(f"list mixes {t} and {it.type}", start)
        if not all(it.const for it in items):
            fns = [it.fn for it in items]
            return _combine(f"list[{t}]", tuple(items), lambda e: [f(e) for f in fns])
        value = frozenset(it.fn({}) for it in items)
        return _Node(f"list[{t}]", False, frozenset(), lambda e: value, const=True)

    def variable(self, first: Token) -> _Node:
        parts = [first.text]
        while self.peek().kind == "op" and self.peek().text == ".":
            self.take()
            tok = self.take()
            if tok.kind != "name":
                raise self.error("expected a name after '.'", tok)
            parts.append(tok.text)
        name = ".".join(parts)
        info = self.scope.variables.get(name)
        if info is None:
            near = _nearest(name, self.scope.variables)
            hint = f" (did you mean {near!r}?)" if near else ""
            raise self.error(f"unknown variable {name!r}{hint}", first)

        def read(e: Env, name: str = name) -> object:
            return e[name]

        return _Node(info.type, info.sensitive, frozenset({name}), read)

    def index(self, name_tok: Token) -> _Node:
        table = self.scope.maps.get(name_tok.text)
        if table is None:
            raise self.error(f"unknown map {name_tok.text!r}", name_tok)
        self.expect("[")
        key = self.or_()
        self.expect("]")
        if key.type != "str":
            raise self.error(f"map keys are str, got {key.type}", name_tok)
        vtype, mapping, default = table
        kf = key.fn

        def get(e: Env) -> object:
            return mapping.get(str(kf(e)), default)

        return _Node(vtype, key.sensitive, key.names, get)

    def call(self, name_tok: Token) -> _Node:
        spec = _FUNCTIONS.get(name_tok.text)
        if spec is None:
            raise self.error(
                f"unknown function {name_tok.text!r} (known: {', '.join(sorted(_FUNCTIONS))})",
                name_tok,
            )
        self.expect("(")
        args: list[_Node] = []
        if not (self.peek().kind == "op" and self.peek().text == ")"):
            args.append(self.or_())
            while self.peek().kind == "op" and self.peek().text == ",":
                self.take()
                args.append(self.or_())
        self.expect(")")
        params, result, impl, takes_env = spec
        fname = name_tok.text
        if len(args) != len(params):
            raise self.error(
                f"{fname}() takes {len(params)} argument(s), got {len(args)}", name_tok
            )
        for i, (want, got) in enumerate(zip(params, args, strict=True)):
            ok = (
                want == "any"
                and not got.type.startswith("list")
                or want == got.type
                or (want == "num" and _is_num(got.type))
            )
            if not ok:
                raise self.error(
                    f"{fname}() argument {i + 1} must be {want}, got {got.type}", name_tok
                )
        if result == "same":
            result = "int" if all(a.type == "int" for a in args) else "num"
        elif result == "same2":
            a, b = args[1].type, args[2].type
            if a != b and not (_is_num(a) and _is_num(b)):
                raise self.error(f"if() branches differ: {a} and {b}", name_tok)
            result = a if a == b else "num"
        fns = [a.fn for a in args]
        sensitive = fname != "mask" and any(a.sensitive for a in args)
        names = frozenset().union(*(a.names for a in args)) if args else frozenset()
        if fname == "if":
            c, x, y = fns
            return _Node(
                result,
                any(a.sensitive for a in args),
                names,
                lambda e: x(e) if c(e) else y(e),
            )
        if takes_env:
            (f0,) = fns
            return _Node(result, sensitive, names, lambda e: impl(e, f0(e)))
        if len(fns) == 1:
            g0 = fns[0]
            return _Node(result, sensitive, names, lambda e: impl(g0(e)))
        return _Node(result, sensitive, names, lambda e: impl(*(f(e) for f in fns)))


def _or(lf: Evaluator, rf: Evaluator) -> Evaluator:
    return lambda e: bool(lf(e)) or bool(rf(e))


def _and(lf: Evaluator, rf: Evaluator) -> Evaluator:
    return lambda e: bool(lf(e)) and bool(rf(e))


def _const(t: str, value: object) -> _Node:
    return _Node(t, False, frozenset(), lambda e: value, const=True)


def _combine(t: str, parts: tuple[_Node, ...], fn: Evaluator) -> _Node:
    return _Node(
        t,
        any(p.sensitive for p in parts),
        frozenset().union(*(p.names for p in parts)),
        fn,
    )


def _nearest(name: str, names: Mapping[str, object]) -> str | None:
    import difflib

    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.75)
    return close[0] if close else None


def compile_expr(source: str, scope: Scope, *, want: str | None = None) -> Expr:
    """Parse and type-check `source`; `want` is the required result type, if any."""
    if not isinstance(source, str):
        raise ExprError("an expression must be a string", source=str(source), offset=0)
    if not source.strip():
        raise ExprError("empty expression", source=source, offset=0)
    node = _Parser(source, scope).parse()
    if want is not None and node.type != want and not (want == "num" and node.type == "int"):
        raise ExprError(f"expected a {want} expression, got {node.type}", source=source, offset=0)
    return Expr(source, node.type, node.sensitive, node.names, node.fn)


def literal_expr(value: object, t: str) -> Expr:
    """A constant as an Expr (YAML scalars given where an expression is allowed)."""
    return Expr(repr(value), t, False, frozenset(), lambda e: value)


def coerce(value: object, t: str) -> object:
    """Convert a data-source or default value to flow type `t`; raises ExprRuntimeError."""
    if t == "str":
        if value is None:
            return ""
        return _to_str(value)
    if t == "bool":
        if isinstance(value, bool):
            return value
        if value is None:
            return False
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int):
            return value != 0
        raise ExprRuntimeError(f"cannot convert {type(value).__name__} to bool")
    if t == "int":
        if value is None:
            return 0
        return _to_int(value)
    if t == "num":
        if value is None:
            return Decimal(0)
        return _to_num(value)
    if t == "date":
        if value is None:
            return dt.date.min
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                raise ExprRuntimeError("not an ISO date (YYYY-MM-DD)") from None
        raise ExprRuntimeError(f"cannot convert {type(value).__name__} to date")
    raise ExprRuntimeError(f"unknown type {t!r}")


def default_of(t: str) -> object:
    return coerce(None, t)
