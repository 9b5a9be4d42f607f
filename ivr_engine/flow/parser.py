"""The shared half of the flow parser: expressions, templates, prompts, retries, declarations."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ivr_engine.flow import expr as ex
from ivr_engine.flow.fields import (
    NAME,
    RESERVED,
    SAY_KINDS,
    Ctx,
    Fields,
    Template,
    c_bool,
    c_pos_int,
    c_str,
    expr_loc,
    scalar,
)
from ivr_engine.flow.model import (
    Loc,
    PromptRef,
    Prompts,
    Retry,
    SourceDecl,
    VarDecl,
)
from ivr_engine.flow.yamltree import Diagnostic, Y, YMap, YScalar, YSeq, describe


class Skip(Exception):
    """A required field was missing or wrong: the node is not built (already reported)."""


class ParserBase:
    def __init__(self, path: str, root: Y, diags: list[Diagnostic]):
        self.ctx = Ctx(path, diags)
        self.path = path
        self.root = root
        self.scope = ex.Scope({}, {})
        self.var_decls: dict[str, VarDecl] = {}
        self.targets: list[tuple[str, Loc, str]] = []  # (target, loc, from node)
        self.sources: dict[str, SourceDecl] = {}
        self.results: dict[str, str] = {}

    # -- expressions in this flow's scope
    def expr(self, y: Y, want: str | None = None) -> ex.Expr | None:
        s = scalar(self.ctx, y, "an expression")
        if s is None:
            return None
        try:
            return ex.compile_expr(s.value, self.scope, want=want)
        except ex.ExprError as exc:
            self.ctx.error(f"in expression {s.value!r}: {exc.message}", expr_loc(y, exc.offset))
            return None

    def template(self, y: Y) -> ex.Expr | None:
        s = scalar(self.ctx, y, "a string")
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
                    self.ctx.error(f"unclosed '{{' in {text!r}", expr_loc(y, i))
                    return None
                inner = text[i + 1 : end]
                try:
                    part = ex.compile_expr(inner, self.scope)
                except ex.ExprError as exc:
                    self.ctx.error(
                        f"in {{{inner}}}: {exc.message}", expr_loc(y, i + 1 + exc.offset)
                    )
                    return None
                if buf:
                    parts.append(buf)
                    buf = ""
                parts.append(part)
                i = end + 1
                continue
            if ch == "}":
                self.ctx.error(f"stray '}}' in {text!r} (write '}}}}')", expr_loc(y, i))
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

    def target(self, ctx: Ctx, y: Y) -> str | None:
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
        f = Fields(self.ctx, y, "a prompt")
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

    def prompts(self, ctx: Ctx, y: Y) -> Prompts:
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

    def retry(self, ctx: Ctx, y: Y, what: str, default_max: int) -> Retry | None:
        if not isinstance(y, YMap):
            ctx.error(f"{what} must be a mapping with max, exit and optional prompts", y.loc)
            return None
        f = Fields(ctx, y, what)
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
            f = Fields(self.ctx, y, f"{what} '{name}'")
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
            s = scalar(self.ctx, default_y, f"a default {t}")
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

    def _check_tz(self, tz: str | None, loc: Loc) -> None:
        if tz is None:
            return
        try:
            if not re.fullmatch(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*", tz):
                raise ValueError(tz)
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            self.ctx.error(f"unknown time zone {tz!r} (e.g. Asia/Shanghai)", loc)

    def _need(self, *values: object) -> None:
        if any(v is None for v in values):
            raise Skip
