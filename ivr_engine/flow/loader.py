"""YAML flows -> the frozen model, with `path:line:col` on every problem.

`load_paths()` reads files or directories (every `*.yaml`/`*.yml` directly inside), parses each
flow, then runs the set-wide checks of `lint.check_flow_set`. It returns every diagnostic it
found (errors and warnings) and the `FlowSet` when there were no errors. `load_flow_set()` is
the strict form the daemon uses: it raises `FlowError` naming the first error.

The file format is documented in docs/flows.md.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ivr_engine.errors import FlowError
from ivr_engine.flow import expr as ex
from ivr_engine.flow.model import (
    DTMF_KEYS,
    LANGUAGES,
    NODE_TYPES,
    QUEUE_OUTCOMES,
    AuditSpec,
    Case,
    CollectNode,
    ConfirmNode,
    Flow,
    FlowSet,
    HangupNode,
    Loc,
    LookupNode,
    MapDecl,
    MenuNode,
    Node,
    PlayNode,
    PromptRef,
    Prompts,
    QueueNode,
    Retry,
    ReturnNode,
    ScheduleNode,
    SetNode,
    SourceDecl,
    SubflowNode,
    SwitchNode,
    TransferNode,
    Validation,
    VarDecl,
)
from ivr_engine.flow.yamltree import Diagnostic, Y, YMap, YScalar, YSeq, describe, parse

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NODE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
SOURCE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
CHANNEL_VAR = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
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

_MISSING = object()


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


class _Ctx:
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


class _Fields:
    """Typed access to a mapping's keys; reports unknown keys when done."""

    def __init__(self, ctx: _Ctx, ymap: YMap, what: str):
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

    def get(self, key: str, conv: Callable[[_Ctx, Y], Any], default: Any = _MISSING) -> Any:
        y = self.raw(key)
        if y is None:
            if default is _MISSING:
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


def _scalar(ctx: _Ctx, y: Y, what: str) -> YScalar | None:
    if not isinstance(y, YScalar) or y.is_null:
        ctx.error(f"expected {what}, got {describe(y)}", y.loc)
        return None
    return y


def c_str(ctx: _Ctx, y: Y) -> str | None:
    s = _scalar(ctx, y, "a string")
    return s.value if s else None


def c_name(ctx: _Ctx, y: Y) -> str | None:
    s = c_str(ctx, y)
    if s is not None and not NAME.match(s):
        ctx.error(f"{s!r} is not a valid name (letters, digits, _)", y.loc)
        return None
    return s


def c_int(ctx: _Ctx, y: Y) -> int | None:
    s = _scalar(ctx, y, "a whole number")
    if s is None:
        return None
    if s.quoted or not re.fullmatch(r"[-+]?\d{1,9}", s.value):
        ctx.error(f"expected a whole number, got {s.value!r}", y.loc)
        return None
    return int(s.value)


def c_pos_int(ctx: _Ctx, y: Y) -> int | None:
    v = c_int(ctx, y)
    if v is not None and v < 1:
        ctx.error(f"expected a number of at least 1, got {v}", y.loc)
        return None
    return v


def c_seconds(ctx: _Ctx, y: Y) -> float | None:
    s = _scalar(ctx, y, "a number of seconds")
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


def c_bool(ctx: _Ctx, y: Y) -> bool | None:
    s = _scalar(ctx, y, "true or false")
    if s is None:
        return None
    low = s.value.lower()
    if s.quoted or low not in ("true", "false", "yes", "no", "on", "off"):
        ctx.error(f"expected true or false, got {s.value!r}", y.loc)
        return None
    return low in ("true", "yes", "on")


def c_key(ctx: _Ctx, y: Y) -> str | None:
    s = c_str(ctx, y)
    if s is not None and (len(s) != 1 or s not in DTMF_KEYS):
        ctx.error(f"expected one DTMF key (0-9, * or #), got {s!r}", y.loc)
        return None
    return s


def c_str_list(ctx: _Ctx, y: Y) -> list[tuple[str, Loc]]:
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


def _expr_loc(y: Y, offset: int) -> Loc:
    extra = 1 if isinstance(y, YScalar) and y.quoted else 0
    return Loc(y.loc.path, y.loc.line, y.loc.col + extra + offset)


# ---------------------------------------------------------------------------------- the parser


class FlowParser:
    def __init__(self, path: str, root: Y, diags: list[Diagnostic]):
        self.ctx = _Ctx(path, diags)
        self.path = path
        self.root = root
        self.scope = ex.Scope({}, {})
        self.var_decls: dict[str, VarDecl] = {}
        self.targets: list[tuple[str, Loc, str]] = []  # (target, loc, from node)
        self.sources: dict[str, SourceDecl] = {}
        self.results: dict[str, str] = {}

    # -- expressions in this flow's scope
    def expr(self, y: Y, want: str | None = None) -> ex.Expr | None:
        s = _scalar(self.ctx, y, "an expression")
        if s is None:
            return None
        try:
            return ex.compile_expr(s.value, self.scope, want=want)
        except ex.ExprError as exc:
            self.ctx.error(f"in expression {s.value!r}: {exc.message}", _expr_loc(y, exc.offset))
            return None

    def template(self, y: Y) -> ex.Expr | None:
        s = _scalar(self.ctx, y, "a string")
        if s is None:
            return None
        text = s.value
        parts: list[str | ex.Expr] = []
        i = 0
        buf = ""
        while i < len(text):
            ch = text[i]
            if ch == "{" and text.startswith("{{", i):
                buf += "{"
                i += 2
                continue
            if ch == "}" and text.startswith("}}", i):
                buf += "}"
                i += 2
                continue
            if ch == "{":
                end = text.find("}", i)
                if end < 0:
                    self.ctx.error(f"unclosed '{{' in {text!r}", _expr_loc(y, i))
                    return None
                inner = text[i + 1 : end]
                try:
                    part = ex.compile_expr(inner, self.scope)
                except ex.ExprError as exc:
                    self.ctx.error(
                        f"in {{{inner}}}: {exc.message}", _expr_loc(y, i + 1 + exc.offset)
                    )
                    return None
                if buf:
                    parts.append(buf)
                    buf = ""
                parts.append(part)
                i = end + 1
                continue
            if ch == "}":
                self.ctx.error(f"stray '}}' in {text!r} (write '}}}}')", _expr_loc(y, i))
                return None
            buf += ch
            i += 1
        if buf:
            parts.append(buf)
        exprs = [p for p in parts if isinstance(p, ex.Expr)]
        tpl = Template(
            text,
            tuple(parts),
            any(p.sensitive for p in exprs),
            frozenset().union(*(p.names for p in exprs)) if exprs else frozenset(),
        )
        return tpl.as_expr()

    def target(self, ctx: _Ctx, y: Y) -> str | None:
        s = c_str(ctx, y)
        if s is not None:
            self.targets.append((s, y.loc, ctx.node or ""))
        return s

    def assignments(
        self, y: Y, what: str, want_types: dict[str, str] | None = None
    ) -> tuple[tuple[str, ex.Expr], ...]:
        if not isinstance(y, YMap):
            self.ctx.error(f"{what} must be a mapping of name: expression", y.loc)
            return ()
        out = []
        for key, (_kloc, value) in y.entries.items():
            want = want_types.get(key) if want_types else None
            e = self.expr(value, want)
            if e is not None:
                out.append((key, e))
        return tuple(out)

    # -- prompts
    def prompt_ref(self, y: Y) -> PromptRef | None:
        if isinstance(y, YScalar):
            s = c_str(self.ctx, y)
            return PromptRef(y.loc, prompt=s) if s else None
        if not isinstance(y, YMap):
            self.ctx.error(
                f"expected a prompt id or {{prompt: ..}} / {{say: ..}}, got {describe(y)}", y.loc
            )
            return None
        f = _Fields(self.ctx, y, "a prompt")
        if f.has("say"):
            kind = f.get("say", c_str)
            if kind is not None and kind not in SAY_KINDS:
                self.ctx.error(
                    f"unknown say kind {kind!r} (known: {', '.join(sorted(SAY_KINDS))})",
                    f.key_loc("say"),
                )
                kind = None
            vy = f.raw("value")
            value = self.expr(vy) if vy is not None else None
            if vy is None:
                self.ctx.error("a say needs 'value'", y.loc)
            f.finish(())
            if kind is None or value is None:
                return None
            return PromptRef(y.loc, say=kind, value=value)
        pid = f.get("prompt", c_str)
        vy = f.raw("vars")
        variables: tuple[tuple[str, ex.Expr], ...] = ()
        if vy is not None:
            variables = self.assignments(vy, "vars")
        f.finish(())
        if pid is None:
            return None
        return PromptRef(y.loc, prompt=pid, vars=variables)

    def prompts(self, ctx: _Ctx, y: Y) -> Prompts:
        if isinstance(y, YSeq) and not y.items:
            ctx.error("empty prompt list", y.loc)
            return ()
        items = y.items if isinstance(y, YSeq) else [y]
        out = []
        for item in items:
            ref = self.prompt_ref(item)
            if ref is not None:
                out.append(ref)
        return tuple(out)

    def retry(self, ctx: _Ctx, y: Y, what: str, default_max: int) -> Retry | None:
        if not isinstance(y, YMap):
            ctx.error(f"{what} must be a mapping with max, exit and optional prompts", y.loc)
            return None
        f = _Fields(ctx, y, what)
        mx = f.get("max", c_pos_int, default_max)
        exit_ = f.get("exit", self.target)
        prompts: list[Prompts] = []
        py = f.raw("prompts")
        if py is not None:
            items = py.items if isinstance(py, YSeq) else [py]
            for item in items:
                prompts.append(self.prompts(ctx, item))
        f.finish(())
        if mx is None or exit_ is None:
            return None
        if mx > 10:
            ctx.error(f"{what} max is {mx}; at most 10 attempts make sense", f.key_loc("max"))
        return Retry(mx, exit_, tuple(prompts), y.loc)

    # -- declarations
    def var_decl(
        self, name: str, kloc: Loc, y: Y, what: str, *, allow_default: bool = True
    ) -> VarDecl | None:
        if not NAME.match(name) or name in RESERVED:
            self.ctx.error(f"{name!r} cannot be a {what} name", kloc)
            return None
        sensitive = False
        default_y: Y | None = None
        if isinstance(y, YMap):
            f = _Fields(self.ctx, y, f"{what} '{name}'")
            t = f.get("type", c_str)
            sensitive = bool(f.get("sensitive", c_bool, False))
            if allow_default:
                default_y = f.raw("default")
            f.finish(())
        else:
            t = c_str(self.ctx, y)
        if t is None:
            return None
        if t not in ex.SCALAR_TYPES:
            self.ctx.error(f"unknown type {t!r} (known: {', '.join(ex.SCALAR_TYPES)})", y.loc)
            return None
        default: object = ex.default_of(t)
        if default_y is not None:
            s = _scalar(self.ctx, default_y, f"a default {t}")
            if s is not None:
                try:
                    default = ex.coerce(s.value, t)
                except ex.ExprRuntimeError as exc:
                    self.ctx.error(f"bad default: {exc}", default_y.loc)
        if sensitive and default_y is not None:
            self.ctx.error("a sensitive variable cannot have a default", default_y.loc)
        return VarDecl(name, t, default, sensitive, kloc)

    def decls(self, y: Y | None, what: str, *, allow_default: bool = True) -> dict[str, VarDecl]:
        out: dict[str, VarDecl] = {}
        if y is None:
            return out
        if not isinstance(y, YMap):
            self.ctx.error(f"'{what}s' must be a mapping of name: type", y.loc)
            return out
        for name, (kloc, vy) in y.entries.items():
            d = self.var_decl(name, kloc, vy, what, allow_default=allow_default)
            if d is not None:
                out[name] = d
        return out

    def source_decls(self, y: Y | None) -> None:
        if y is None:
            return
        if not isinstance(y, YMap):
            self.ctx.error("'sources' must be a mapping of source name: {params, fields}", y.loc)
            return
        for name, (kloc, sy) in y.entries.items():
            if not SOURCE_NAME.match(name):
                self.ctx.error(f"{name!r} is not a valid source name (e.g. cif.caller)", kloc)
                continue
            if not isinstance(sy, YMap):
                self.ctx.error(f"source '{name}' must be a mapping with params and fields", sy.loc)
                continue
            f = _Fields(self.ctx, sy, f"source '{name}'")
            params = self.decls(f.raw("params"), "parameter", allow_default=False)
            fields = self.decls(f.raw("fields"), "field", allow_default=False)
            f.finish(())
            self.sources[name] = SourceDecl(
                name,
                MappingProxyType({k: v.type for k, v in params.items()}),
                MappingProxyType({k: v.type for k, v in fields.items()}),
                frozenset(k for k, v in fields.items() if v.sensitive),
                kloc,
            )

    def map_decls(self, y: Y | None) -> dict[str, MapDecl]:
        out: dict[str, MapDecl] = {}
        if y is None:
            return out
        if not isinstance(y, YMap):
            self.ctx.error("'maps' must be a mapping of name: {type, values, default}", y.loc)
            return out
        for name, (kloc, my) in y.entries.items():
            if not NAME.match(name) or name in RESERVED:
                self.ctx.error(f"{name!r} cannot be a map name", kloc)
                continue
            if not isinstance(my, YMap):
                self.ctx.error(f"map '{name}' must be a mapping with type, values, default", my.loc)
                continue
            f = _Fields(self.ctx, my, f"map '{name}'")
            t = f.get("type", c_str)
            vy = f.get("values", lambda c, v: v)
            dy = f.raw("default")
            f.finish(())
            if t not in ex.SCALAR_TYPES:
                if t is not None:
                    self.ctx.error(f"unknown type {t!r}", f.key_loc("type"))
                continue
            table: dict[str, object] = {}
            if isinstance(vy, YMap):
                for k, (_vkloc, v) in vy.entries.items():
                    s = _scalar(self.ctx, v, f"a {t}")
                    if s is None:
                        continue
                    try:
                        table[k] = ex.coerce(s.value, t)
                    except ex.ExprRuntimeError as exc:
                        self.ctx.error(f"map '{name}' key {k!r}: {exc}", v.loc)
            elif vy is not None:
                self.ctx.error(f"map '{name}' values must be a mapping", vy.loc)
            default = ex.default_of(t)
            if dy is not None:
                s = _scalar(self.ctx, dy, f"a {t}")
                if s is not None:
                    try:
                        default = ex.coerce(s.value, t)
                    except ex.ExprRuntimeError as exc:
                        self.ctx.error(f"map '{name}' default: {exc}", dy.loc)
            else:
                self.ctx.error(
                    f"map '{name}' needs a 'default' (what an unknown key gives)", my.loc
                )
            out[name] = MapDecl(name, t, MappingProxyType(table), default, kloc)
        return out

    # -- the flow
    def parse_flow(self) -> Flow | None:
        ctx = self.ctx
        if not isinstance(self.root, YMap):
            ctx.error(f"a flow file must be a mapping, got {describe(self.root)}", self.root.loc)
            return None
        f = _Fields(ctx, self.root, "the flow")
        name = f.get("flow", c_name)
        ctx.flow = name
        description = f.get("description", c_str, "")
        languages = (
            tuple(s for s, _ in c_str_list(ctx, f.raw("languages") or YSeq(f.map.loc)))
            if f.has("languages")
            else LANGUAGES
        )
        for lang in languages:
            if lang not in LANGUAGES:
                ctx.error(
                    f"unknown language {lang!r} (known: {', '.join(LANGUAGES)})",
                    f.key_loc("languages"),
                )
        language = f.get("language", c_str, languages[0] if languages else "cmn")
        if language not in languages:
            ctx.error(
                f"default language {language!r} is not among languages {list(languages)}",
                f.key_loc("language"),
            )
        timezone = f.get("timezone", c_str, "Asia/Shanghai")
        self._check_tz(timezone, f.key_loc("timezone"))
        max_menu_depth = f.get("max_menu_depth", c_pos_int, 3)
        max_subflow_depth = f.get("max_subflow_depth", c_pos_int, 5)

        params = self.decls(f.raw("params"), "parameter")
        variables = self.decls(f.raw("vars"), "variable")
        returns = self.decls(f.raw("returns"), "return value", allow_default=False)
        for n in params.keys() & variables.keys():
            ctx.error(f"{n!r} is declared both as a parameter and a variable", variables[n].loc)
        self.source_decls(f.raw("sources"))
        maps = self.map_decls(f.raw("maps"))
        self.var_decls = {**variables, **params}

        nodes_y = f.raw("nodes")
        if nodes_y is None:
            ctx.error("the flow needs 'nodes'", self.root.loc)
            nodes_y = YMap(self.root.loc)
        elif not isinstance(nodes_y, YMap):
            ctx.error("'nodes' must be a mapping of node id: node", nodes_y.loc)
            nodes_y = YMap(nodes_y.loc)
        self._bind_results(nodes_y)

        scope_vars: dict[str, ex.VarInfo] = dict(CONTEXT_VARS)
        for d in self.var_decls.values():
            scope_vars[d.name] = ex.VarInfo(d.type, d.sensitive)
        for var, src in self.results.items():
            decl = self.sources[src]
            for fname, ftype in decl.fields.items():
                scope_vars[f"{var}.{fname}"] = ex.VarInfo(ftype, fname in decl.sensitive_fields)
        self.scope = ex.Scope(
            MappingProxyType(scope_vars),
            MappingProxyType({m.name: (m.type, m.table, m.default) for m in maps.values()}),
        )

        hotkeys: dict[str, str] = {}
        hy = f.raw("hotkeys")
        if hy is not None:
            hotkeys = self._hotkeys(hy)
        start = f.get("start", self.target)
        on_hangup = f.get("on_hangup", self.target, None)
        on_error = f.get("on_error", self.target, None)
        f.finish(())

        nodes: dict[str, Node] = {}
        for node_id, (kloc, ny) in nodes_y.entries.items():
            ctx.node = node_id
            if not NODE_ID.match(node_id):
                ctx.error(f"{node_id!r} is not a valid node id (letters, digits, _ and -)", kloc)
                continue
            node = self.parse_node(node_id, kloc, ny)
            if node is not None:
                nodes[node_id] = node
        ctx.node = None
        for target, loc, from_node in self.targets:
            if target not in nodes_y.entries:
                import difflib

                close = difflib.get_close_matches(target, list(nodes_y.entries), n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                ctx.node = from_node or None
                ctx.error(f"target {target!r} is not a node of this flow{hint}", loc)
        ctx.node = None
        if name is None or start is None:
            return None
        return Flow(
            name=name,
            path=self.path,
            loc=self.root.loc,
            start=start,
            nodes=MappingProxyType(nodes),
            vars=MappingProxyType(self.var_decls),
            params=tuple(params),
            returns=MappingProxyType(returns),
            sources=MappingProxyType(self.sources),
            results=MappingProxyType(self.results),
            maps=MappingProxyType(maps),
            languages=languages,
            language=language or "cmn",
            timezone=timezone or "Asia/Shanghai",
            hotkeys=MappingProxyType(hotkeys),
            on_hangup=on_hangup,
            on_error=on_error,
            max_menu_depth=max_menu_depth or 3,
            max_subflow_depth=max_subflow_depth or 5,
            description=description or "",
        )

    def _check_tz(self, tz: str | None, loc: Loc) -> None:
        if tz is None:
            return
        try:
            if not re.fullmatch(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*", tz):
                raise ValueError(tz)
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            self.ctx.error(f"unknown time zone {tz!r} (e.g. Asia/Shanghai)", loc)

    def _hotkeys(self, y: Y) -> dict[str, str]:
        ctx = self.ctx
        if not isinstance(y, YMap):
            ctx.error(
                "'hotkeys' must be a mapping: operator: <node>, repeat: true, back: true", y.loc
            )
            return {}
        f = _Fields(ctx, y, "hotkeys")
        out: dict[str, str] = {}
        if f.has("operator"):
            t = f.get("operator", self.target)
            if t:
                out["0"] = "operator:" + t
        if f.get("repeat", c_bool, False):
            out["*"] = "repeat"
        if f.get("back", c_bool, False):
            out["#"] = "back"
        f.finish(())
        return out

    def _bind_results(self, nodes_y: YMap) -> None:
        """Pre-pass: which variables hold which source's result (expressions need the fields)."""
        for _node_id, (_kloc, ny) in nodes_y.entries.items():
            if not isinstance(ny, YMap):
                continue
            t = ny.entries.get("type")
            if not (t and isinstance(t[1], YScalar) and t[1].value == "lookup"):
                continue
            src = ny.entries.get("source")
            res = ny.entries.get("result")
            if not (src and res and isinstance(src[1], YScalar) and isinstance(res[1], YScalar)):
                continue
            var, source = res[1].value, src[1].value
            if source not in self.sources:
                continue  # reported when the node is parsed
            if not NAME.match(var) or var in RESERVED or var in self.var_decls:
                continue
            prev = self.results.get(var)
            if prev is not None and prev != source:
                self.ctx.error(
                    f"result variable {var!r} holds {prev!r} elsewhere; "
                    f"use another name for {source!r}",
                    res[1].loc,
                )
                continue
            self.results[var] = source

    # -- nodes
    def parse_node(self, node_id: str, kloc: Loc, y: Y) -> Node | None:
        ctx = self.ctx
        if not isinstance(y, YMap):
            ctx.error(f"a node must be a mapping with a 'type', got {describe(y)}", y.loc)
            return None
        f = _Fields(ctx, y, f"node '{node_id}'")
        kind = f.get("type", c_str)
        if kind is None:
            return None
        if kind not in NODE_TYPES:
            import difflib

            close = difflib.get_close_matches(kind, list(NODE_TYPES), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            ctx.error(
                f"unknown node type {kind!r} ({hint}known: {', '.join(NODE_TYPES)})",
                f.key_loc("type"),
            )
            return None
        common: dict[str, Any] = {}
        common["max_visits"] = f.get("max_visits", c_pos_int, None)
        common["on_max_visits"] = f.get("on_max_visits", self.target, None)
        if (common["max_visits"] is None) != (common["on_max_visits"] is None):
            ctx.error("max_visits and on_max_visits go together", y.loc)
            common["max_visits"] = common["on_max_visits"] = None
        f.get("note", c_str, "")
        loc = kloc
        builder = getattr(self, f"node_{kind}")
        allowed = ("type", "max_visits", "on_max_visits", "note")
        try:
            node: Node | None = builder(node_id, loc, f, common)
        except _Skip:
            node = None
        f.finish(allowed)
        return node

    def _need(self, *values: object) -> None:
        if any(v is None for v in values):
            raise _Skip

    def _input_common(
        self, f: _Fields, kind: str, default_ni: int, default_nm: int
    ) -> dict[str, Any]:
        ctx = self.ctx
        out: dict[str, Any] = {}
        out["prompt"] = f.get("prompt", self.prompts, ())
        out["reprompt"] = f.get("reprompt", self.prompts, ())
        for key, dmax in (("no_input", default_ni), ("no_match", default_nm)):
            y = f.raw(key)
            if y is None:
                ctx.error(f"a {kind} needs a '{key}' exit: {{max: N, exit: <node>}}", f.map.loc)
                out[key] = None
            else:
                out[key] = self.retry(ctx, y, key, dmax)
        out["barge_in"] = f.get("barge_in", c_bool, kind != "confirm")
        out["hotkeys"] = f.get("hotkeys", c_bool, kind == "menu")
        return out

    def node_play(self, node_id: str, loc: Loc, f: _Fields, common: dict[str, Any]) -> Node:
        prompt = f.get("prompt", self.prompts)
        nxt = f.get("next", self.target)
        barge = f.get("barge_in", c_bool, True)
        self._need(prompt, nxt, barge)
        return PlayNode(node_id, loc, prompt, nxt, barge, **common)

    def node_menu(self, node_id: str, loc: Loc, f: _Fields, common: dict[str, Any]) -> Node:
        ic = self._input_common(f, "menu", 3, 3)
        timeout = f.get("timeout", c_seconds, 5.0)
        oy = f.get("options", lambda c, v: v)
        options: dict[str, str] = {}
        if isinstance(oy, YMap):
            for key, (kl, ty) in oy.entries.items():
                if len(key) != 1 or key not in DTMF_KEYS:
                    self.ctx.error(f"menu option {key!r} is not one DTMF key (0-9, * or #)", kl)
                    continue
                t = self.target(self.ctx, ty)
                if t:
                    options[key] = t
            if not oy.entries:
                self.ctx.error("a menu needs at least one option", oy.loc)
        elif oy is not None:
            self.ctx.error("options must be a mapping of key: node", oy.loc)
        if not ic["prompt"]:
            self.ctx.error("a menu needs a 'prompt'", f.map.loc)
        self._need(timeout, ic["no_input"], ic["no_match"], ic["barge_in"], ic["hotkeys"])
        return MenuNode(
            node_id, loc, options=MappingProxyType(options), timeout=timeout, **ic, **common
        )

    def node_collect(self, node_id: str, loc: Loc, f: _Fields, common: dict[str, Any]) -> Node:
        ctx = self.ctx
        ic = self._input_common(f, "collect", 3, 3)
        var = f.get("var", c_name)
        nxt = f.get("next", self.target)
        min_d = f.get("min_digits", c_pos_int, 1)
        max_d = f.get("max_digits", c_pos_int)
        term = f.get("terminator", c_str, "#")
        fdt = f.get("first_digit_timeout", c_seconds, 5.0)
        idt = f.get("inter_digit_timeout", c_seconds, 3.0)
        sensitive = f.get("sensitive", c_bool, False)
        validation = Validation()
        vy = f.raw("validate")
        if vy is not None:
            validation = self._validation(vy) or validation
        if term is not None and term not in ("", "#", "*"):
            ctx.error(
                f"terminator must be '#', '*' or '' (none), got {term!r}", f.key_loc("terminator")
            )
        if min_d is not None and max_d is not None and min_d > max_d:
            ctx.error(f"min_digits {min_d} > max_digits {max_d}", f.key_loc("min_digits"))
        if max_d is not None and max_d > 64:
            ctx.error(f"max_digits {max_d} is more than 64", f.key_loc("max_digits"))
        if var is not None:
            decl = self.var_decls.get(var)
            if decl is None:
                ctx.error(f"variable {var!r} is not declared in vars", f.key_loc("var"))
            else:
                if decl.type not in ("str", "int", "num"):
                    ctx.error(f"collect stores digits; {var!r} is {decl.type}", f.key_loc("var"))
                if decl.sensitive and sensitive is False:
                    ctx.error(
                        f"{var!r} is a sensitive variable: mark the collect 'sensitive: true'",
                        f.key_loc("var"),
                    )
                if sensitive and not decl.sensitive:
                    ctx.error(
                        f"this collect is sensitive but {var!r} is not: "
                        "declare it with sensitive: true",
                        f.key_loc("var"),
                    )
        if not ic["prompt"]:
            ctx.error("a collect needs a 'prompt'", f.map.loc)
        if sensitive and ic["hotkeys"]:
            ctx.error("hotkeys cannot be on for a sensitive collect", f.key_loc("hotkeys"))
        self._need(
            var, nxt, min_d, max_d, term, fdt, idt, sensitive, ic["no_input"], ic["no_match"]
        )
        self._need(ic["barge_in"], ic["hotkeys"])
        return CollectNode(
            node_id,
            loc,
            var=var,
            next=nxt,
            min_digits=min_d,
            max_digits=max_d,
            terminator=term,
            first_digit_timeout=fdt,
            inter_digit_timeout=idt,
            validation=validation,
            sensitive=sensitive,
            **ic,
            **common,
        )

    def _validation(self, y: Y) -> Validation | None:
        ctx = self.ctx
        if not isinstance(y, YMap):
            ctx.error("validate must be a mapping: pattern, luhn, check", y.loc)
            return None
        f = _Fields(ctx, y, "validate")
        pattern = f.get("pattern", c_str, None)
        luhn = f.get("luhn", c_bool, False)
        check = f.get("check", c_str, None)
        f.finish(())
        if pattern is not None:
            try:
                re.compile(pattern)
            except (re.error, RecursionError, OverflowError) as exc:
                ctx.error(f"bad pattern {pattern!r}: {exc}", f.key_loc("pattern"))
                pattern = None
        if check is not None and check not in CHECKS:
            ctx.error(
                f"unknown check {check!r} (known: {', '.join(sorted(CHECKS))})", f.key_loc("check")
            )
            check = None
        return Validation(pattern, bool(luhn), check)

    def node_confirm(self, node_id: str, loc: Loc, f: _Fields, common: dict[str, Any]) -> Node:
        ctx = self.ctx
        ic = self._input_common(f, "confirm", 1, 2)
        yes = f.get("yes", self.target)
        retry = f.get("retry", self.target)
        ck = f.get("confirm_key", c_key, "1")
        rk = f.get("retry_key", c_key, "2")
        timeout = f.get("timeout", c_seconds, 5.0)
        audit = None
        ay = f.raw("audit")
        if ay is not None:
            if isinstance(ay, YMap):
                af = _Fields(ctx, ay, "audit")
                op = af.get("operation", c_str)
                dy = af.raw("details")
                details = self.assignments(dy, "audit details") if dy is not None else ()
                af.finish(())
                if op:
                    audit = AuditSpec(op, details)
            else:
                ctx.error("audit must be a mapping: operation, details", ay.loc)
        if ck is not None and ck == rk:
            ctx.error("confirm_key and retry_key must differ", f.key_loc("retry_key"))
        if not ic["prompt"]:
            ctx.error("a confirm needs a 'prompt' (the read-back)", f.map.loc)
        self._need(
            yes,
            retry,
            ck,
            rk,
            timeout,
            ic["no_input"],
            ic["no_match"],
            ic["barge_in"],
            ic["hotkeys"],
        )
        return ConfirmNode(
            node_id, loc, yes=yes, retry=retry, confirm_key=ck, retry_key=rk, timeout=timeout,
            audit=audit, **ic, **common,
        )  # fmt: skip

    def node_switch(self, node_id: str, loc: Loc, f: _Fields, common: dict[str, Any]) -> Node:
        ctx = self.ctx
        cy = f.get("cases", lambda c, v: v)
        default = f.get("default", self.target)
        cases: list[Case] = []
        if isinstance(cy, YSeq):
            for item in cy.items:
                if not isinstance(item, YMap):
                    ctx.error("each case is a mapping: {when: <condition>, goto: <node>}", item.loc)
                    continue
                cf = _Fields(ctx, item, "a case")
                wy = cf.raw("when")
                when = self.expr(wy, "bool") if wy is not None else None
                if wy is None:
                    ctx.error("a case needs 'when'", item.loc)
                goto = cf.get("goto", self.target)
                cf.finish(())
                if when is not None and goto is not None:
                    cases.append(Case(when, goto, item.loc))
        elif cy is not None:
            ctx.error("cases must be a list of {when, goto}", cy.loc)
        self._need(cy, default)
        return SwitchNode(node_id, loc, tuple(cases), default, **common)

    def node_schedule(self, node_id: str, loc: Loc, f: _Fields, common: dict[str, Any]) -> Node:
        ctx = self.ctx
        tz = f.get("timezone", c_str, None)
        if tz is not None:
            self._check_tz(tz, f.key_loc("timezone"))
        hy = f.get("hours", lambda c, v: v)
        week: list[list[tuple[int, int]]] = [[] for _ in DAYS]
        if isinstance(hy, YMap):
            for spec, (kl, ry) in hy.entries.items():
                days = _parse_days(spec)
                if days is None:
                    ctx.error(f"bad day spec {spec!r} (e.g. mon-fri, sat, sun, daily)", kl)
                    continue
                ranges = _parse_ranges(ctx, ry)
                for d in days:
                    week[d].extend(ranges)
        elif hy is not None:
            ctx.error("hours must be a mapping: mon-fri: 08:00-20:00", hy.loc)
        holidays: set[str] = set()
        if f.has("holidays"):
            for text, hl in c_str_list(ctx, f.raw("holidays") or YSeq(f.map.loc)):
                if not _valid_holiday(text):
                    ctx.error(f"bad holiday {text!r} (YYYY-MM-DD, or MM-DD for every year)", hl)
                else:
                    holidays.add(text)
        open_ = f.get("open", self.target)
        closed = f.get("closed", self.target)
        holiday = f.get("holiday", self.target, None)
        self._need(hy, open_, closed)
        return ScheduleNode(
            node_id, loc, timezone=tz or "", hours=tuple(tuple(sorted(d)) for d in week),
            holidays=frozenset(holidays), open=open_, closed=closed, holiday=holiday, **common,
        )  # fmt: skip

    def node_set(self, node_id: str, loc: Loc, f: _Fields, common: dict[str, Any]) -> Node:
        ctx = self.ctx
        nxt = f.get("next", self.target)
        language = None
        if f.has("language"):
            language = self.template(f.raw("language"))  # type: ignore[arg-type]
        assign: list[tuple[str, ex.Expr]] = []
        vy = f.raw("vars")
        if isinstance(vy, YMap):
            for name, (kl, ey) in vy.entries.items():
                decl = self.var_decls.get(name)
                if decl is None:
                    ctx.error(f"variable {name!r} is not declared in vars", kl)
                    continue
                e = self.expr(ey, decl.type)
                if e is None:
                    continue
                if e.sensitive and not decl.sensitive:
                    ctx.error(
                        f"{e.source!r} reads a sensitive value; "
                        f"{name!r} is not sensitive (use mask())",
                        ey.loc,
                    )
                    continue
                assign.append((name, e))
        elif vy is not None:
            ctx.error("vars must be a mapping of name: expression", vy.loc)
        channel: list[tuple[str, ex.Expr]] = []
        cy = f.raw("channel")
        if isinstance(cy, YMap):
            for name, (kl, ey) in cy.entries.items():
                if not CHANNEL_VAR.match(name):
                    ctx.error(f"{name!r} is not a channel variable name (A-Z, 0-9, _)", kl)
                    continue
                e = self.expr(ey)
                if e is not None and e.sensitive:
                    ctx.error(f"channel variable {name} reads a sensitive value", ey.loc)
                elif e is not None:
                    channel.append((name, e))
        elif cy is not None:
            ctx.error("channel must be a mapping of VARIABLE: expression", cy.loc)
        if vy is None and cy is None and not f.has("language"):
            ctx.error("a set needs 'vars', 'channel' or 'language'", f.map.loc)
        if language is not None and language.sensitive:
            ctx.error("language cannot come from a sensitive value", f.key_loc("language"))
        self._need(nxt)
        return SetNode(node_id, loc, tuple(assign), nxt, language, tuple(channel), **common)

    def node_lookup(self, node_id: str, loc: Loc, f: _Fields, common: dict[str, Any]) -> Node:
        ctx = self.ctx
        source = f.get("source", c_str)
        timeout = f.get("timeout", c_seconds, 3.0)
        nxt = f.get("next", self.target)
        err = f.get("error", self.target)
        result = f.get("result", c_name, None)
        decl = self.sources.get(source) if source else None
        if source is not None and decl is None:
            ctx.error(f"source {source!r} is not declared under 'sources'", f.key_loc("source"))
        params: tuple[tuple[str, ex.Expr], ...] = ()
        py = f.raw("params")
        if py is not None:
            params = self.assignments(py, "params", dict(decl.params) if decl else None)
        if decl is not None:
            given = {k for k, _ in params}
            if isinstance(py, YMap):
                for k, (kl, _) in py.entries.items():
                    if k not in decl.params:
                        ctx.error(f"source {source!r} has no parameter {k!r}", kl)
            missing = [
                k
                for k in decl.params
                if k not in given and not (isinstance(py, YMap) and k in py.entries)
            ]
            if missing:
                ctx.error(f"source {source!r} needs parameter(s) {', '.join(missing)}", loc)
        if result is not None:
            if result in self.var_decls or result in RESERVED:
                ctx.error(
                    f"result {result!r} clashes with a declared variable", f.key_loc("result")
                )
            elif source is not None and self.results.get(result) not in (None, source):
                pass  # reported in the pre-pass
        self._need(source, timeout, nxt, err)
        return LookupNode(node_id, loc, source, params, result, nxt, err, timeout, **common)

    def node_subflow(self, node_id: str, loc: Loc, f: _Fields, common: dict[str, Any]) -> Node:
        ctx = self.ctx
        flow = f.get("flow", c_name)
        params: tuple[tuple[str, ex.Expr], ...] = ()
        py = f.raw("params")
        if py is not None:
            params = self.assignments(py, "params")
        outputs: list[tuple[str, str]] = []
        oy = f.raw("outputs")
        if isinstance(oy, YMap):
            for local, (kl, ry) in oy.entries.items():
                if local not in self.var_decls:
                    ctx.error(f"output variable {local!r} is not declared in vars", kl)
                    continue
                r = c_name(ctx, ry)
                if r:
                    outputs.append((local, r))
        elif oy is not None:
            ctx.error("outputs must be a mapping of local variable: returned name", oy.loc)
        nxt = f.get("next", self.target, None)
        exits: dict[str, str] = {}
        ey = f.raw("exits")
        if isinstance(ey, YMap):
            for label, (_kl, ty) in ey.entries.items():
                t = self.target(ctx, ty)
                if t:
                    exits[label] = t
        elif ey is not None:
            ctx.error("exits must be a mapping of return label: node", ey.loc)
        if nxt is None and not exits:
            ctx.error("a subflow needs 'next' or 'exits'", f.map.loc)
        self._need(flow)
        return SubflowNode(
            node_id, loc, flow, params, tuple(outputs), nxt, MappingProxyType(exits), **common
        )

    def node_return(self, node_id: str, loc: Loc, f: _Fields, common: dict[str, Any]) -> Node:
        exit_ = f.get("exit", c_name, "next")
        values: tuple[tuple[str, ex.Expr], ...] = ()
        vy = f.raw("values")
        if vy is not None:
            values = self.assignments(vy, "values")
        self._need(exit_)
        return ReturnNode(node_id, loc, exit=exit_, values=values, **common)

    def node_queue(self, node_id: str, loc: Loc, f: _Fields, common: dict[str, Any]) -> Node:
        ctx = self.ctx
        queue = f.get("queue", lambda c, v: self.template(v))
        skills = f.get("skills", lambda c, v: self.template(v), None)
        py = f.raw("priority")
        priority = self.expr(py, "int") if py is not None else ex.literal_expr(0, "int")
        language = f.get("language", lambda c, v: self.template(v), None)
        data: tuple[tuple[str, ex.Expr], ...] = ()
        dy = f.raw("data")
        if dy is not None:
            data = self.assignments(dy, "data")
        timeout = f.get("timeout", c_seconds, 600.0)
        on: dict[str, str] = {}
        oy = f.raw("on")
        if isinstance(oy, YMap):
            for outcome, (kl, ty) in oy.entries.items():
                if outcome not in QUEUE_OUTCOMES or outcome in ("answered", "handed_off"):
                    ok = [o for o in QUEUE_OUTCOMES if o not in ("answered", "handed_off")]
                    ctx.error(f"unknown queue outcome {outcome!r} (known: {', '.join(ok)})", kl)
                    continue
                t = self.target(ctx, ty)
                if t:
                    on[outcome] = t
        elif oy is not None:
            ctx.error("on must be a mapping of outcome: node", oy.loc)
        for label, e in [
            ("queue", queue),
            ("skills", skills),
            ("priority", priority),
            ("language", language),
        ]:
            if e is not None and e.sensitive:
                ctx.error(f"{label} reads a sensitive value", f.key_loc(label))
        for k, e in data:
            if e.sensitive:
                ctx.error(
                    f"queue data {k!r} reads a sensitive value; use mask()", f.key_loc("data")
                )
        self._need(queue, timeout)
        if priority is None:
            raise _Skip
        return QueueNode(
            node_id, loc, queue=queue, skills=skills, priority=priority, language=language,
            data=data, timeout=timeout, on=MappingProxyType(on), **common,
        )  # fmt: skip

    def node_transfer(self, node_id: str, loc: Loc, f: _Fields, common: dict[str, Any]) -> Node:
        to = f.get("to", lambda c, v: self.template(v))
        timeout = f.get("timeout", c_seconds, 30.0)
        busy = f.get("busy", self.target)
        fail = f.get("fail", self.target)
        noanswer = f.get("noanswer", self.target, None)
        if to is not None and to.sensitive:
            self.ctx.error("transfer target reads a sensitive value", f.key_loc("to"))
        self._need(to, timeout, busy, fail)
        return TransferNode(node_id, loc, to, timeout, busy, fail, noanswer, **common)

    def node_hangup(self, node_id: str, loc: Loc, f: _Fields, common: dict[str, Any]) -> Node:
        prompt = f.get("prompt", self.prompts, ())
        reason = f.get("reason", c_str, "completed")
        self._need(reason)
        return HangupNode(node_id, loc, prompt=prompt, reason=reason, **common)


class _Skip(Exception):
    """A required field was missing or wrong: the node is not built (already reported)."""


def _parse_days(spec: str) -> list[int] | None:
    spec = spec.strip().lower()
    if spec in ("daily", "all", "every day"):
        return list(range(7))
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            a, _, b = part.partition("-")
            if a.strip() not in DAYS or b.strip() not in DAYS:
                return None
            i, j = DAYS.index(a.strip()), DAYS.index(b.strip())
            if i > j:
                return None
            out.extend(range(i, j + 1))
        elif part in DAYS:
            out.append(DAYS.index(part))
        else:
            return None
    return out


def _parse_ranges(ctx: _Ctx, y: Y) -> list[tuple[int, int]]:
    items = y.items if isinstance(y, YSeq) else [y]
    out = []
    for item in items:
        s = c_str(ctx, item)
        if s is None:
            continue
        if s.strip().lower() == "closed":
            continue
        m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", s)
        if not m:
            ctx.error(f"bad hours {s!r} (e.g. 08:00-20:00, or closed)", item.loc)
            continue
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59 or end > 24 * 60 or start >= end:
            ctx.error(f"bad hours {s!r}: start must be before end, within 00:00-24:00", item.loc)
            continue
        out.append((start, end))
    return out


def _valid_holiday(text: str) -> bool:
    import datetime as dt

    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            dt.date.fromisoformat(text)
            return True
        if re.fullmatch(r"\d{2}-\d{2}", text):
            dt.date.fromisoformat("2024-" + text)  # a leap year accepts 02-29
            return True
    except ValueError:
        return False
    return False


# ------------------------------------------------------------------------------------- public


@dataclass(frozen=True)
class LoadResult:
    flows: FlowSet | None
    diagnostics: tuple[Diagnostic, ...]

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]


def flow_files(paths: Sequence[str | Path]) -> list[Path]:
    """The YAML files named, directories expanded to the `*.yaml`/`*.yml` directly inside."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            out.extend(
                sorted(q for q in path.iterdir() if q.suffix in (".yaml", ".yml") and q.is_file())
            )
        else:
            out.append(path)
    return out


def parse_flow_text(text: str, path: str, diags: list[Diagnostic]) -> Flow | None:
    """One flow file's text -> a Flow (no set-wide checks); problems go to `diags`."""
    root = parse(text, path, diags)
    if root is None:
        return None
    try:
        return FlowParser(path, root, diags).parse_flow()
    except RecursionError:
        diags.append(Diagnostic("error", "flow too deeply nested", Loc(path, 1, 1)))
        return None


def load_texts(
    texts: Sequence[tuple[str, str]],
    *,
    catalogue: Any = None,
    entry: str | None = None,
    max_menu_depth: int | None = None,
) -> LoadResult:
    """Load flows from (path, text) pairs and run every check."""
    from ivr_engine.flow import lint

    diags: list[Diagnostic] = []
    flows: dict[str, Flow] = {}
    digest = hashlib.sha256()
    for path, text in sorted(texts):
        digest.update(
            path.rsplit("/", 1)[-1].encode() + b"\0" + text.encode("utf-8", "replace") + b"\0"
        )
        flow = parse_flow_text(text, path, diags)
        if flow is None:
            continue
        if flow.name in flows:
            other = flows[flow.name]
            diags.append(
                Diagnostic(
                    "error",
                    f"flow {flow.name!r} is also defined in {other.path}",
                    flow.loc,
                    None,
                    flow.name,
                )
            )
            continue
        flows[flow.name] = flow
    flow_set = FlowSet(MappingProxyType(flows), digest.hexdigest()[:16], entry)
    diags.extend(lint.check_flow_set(flow_set, catalogue=catalogue, max_menu_depth=max_menu_depth))
    has_errors = any(d.severity == "error" for d in diags)
    return LoadResult(None if has_errors else flow_set, tuple(diags))


def load_paths(
    paths: Sequence[str | Path],
    *,
    catalogue: Any = None,
    entry: str | None = None,
    max_menu_depth: int | None = None,
) -> LoadResult:
    texts: list[tuple[str, str]] = []
    diags: list[Diagnostic] = []
    files = flow_files(paths)
    if not files:
        diags.append(Diagnostic("error", f"no flow files in {', '.join(str(p) for p in paths)}"))
    for path in files:
        try:
            texts.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            diags.append(Diagnostic("error", f"cannot read: {exc}", Loc(str(path), 1, 1)))
    result = load_texts(texts, catalogue=catalogue, entry=entry, max_menu_depth=max_menu_depth)
    if diags:
        return LoadResult(None, tuple(diags) + result.diagnostics)
    return result


def raise_first(result: LoadResult) -> FlowSet:
    """The flow set, or FlowError for the first error (with how many more there are)."""
    errors = result.errors
    if errors or result.flows is None:
        first = errors[0] if errors else Diagnostic("error", "no flows")
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        loc = first.loc
        raise FlowError(
            first.message + more,
            path=loc.path if loc else None,
            line=loc.line if loc else None,
            col=loc.col if loc else None,
            node=first.node,
        )
    return result.flows


def load_flow_set(
    paths: Sequence[str | Path], *, catalogue: Any = None, entry: str | None = None
) -> FlowSet:
    return raise_first(load_paths(paths, catalogue=catalogue, entry=entry))
