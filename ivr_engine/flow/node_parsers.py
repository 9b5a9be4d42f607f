"""One parser per node type: `node_<type>` builds that node from its fields."""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any

from ivr_engine.flow import expr as ex
from ivr_engine.flow.fields import (
    CHANNEL_VAR,
    CHECKS,
    DAYS,
    RESERVED,
    Ctx,
    Fields,
    c_bool,
    c_key,
    c_name,
    c_pos_int,
    c_seconds,
    c_str,
    c_str_list,
)
from ivr_engine.flow.model import (
    DTMF_KEYS,
    QUEUE_OUTCOMES,
    AuditSpec,
    Case,
    CollectNode,
    ConfirmNode,
    HangupNode,
    Loc,
    LookupNode,
    MenuNode,
    Node,
    PlayNode,
    QueueNode,
    ReturnNode,
    ScheduleNode,
    SetNode,
    SubflowNode,
    SwitchNode,
    TransferNode,
    Validation,
)
from ivr_engine.flow.parser import ParserBase, Skip
from ivr_engine.flow.yamltree import Y, YMap, YSeq


class NodeParsers(ParserBase):
    def _input_common(
        self, f: Fields, kind: str, default_ni: int, default_nm: int
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

    def node_play(self, node_id: str, loc: Loc, f: Fields, common: dict[str, Any]) -> Node:
        prompt = f.get("prompt", self.prompts)
        nxt = f.get("next", self.target)
        barge = f.get("barge_in", c_bool, True)
        self._need(prompt, nxt, barge)
        return PlayNode(node_id, loc, prompt, nxt, barge, **common)

    def node_menu(self, node_id: str, loc: Loc, f: Fields, common: dict[str, Any]) -> Node:
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

    def node_collect(self, node_id: str, loc: Loc, f: Fields, common: dict[str, Any]) -> Node:
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
        f = Fields(ctx, y, "validate")
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

    def node_confirm(self, node_id: str, loc: Loc, f: Fields, common: dict[str, Any]) -> Node:
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
                af = Fields(ctx, ay, "audit")
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

    def node_switch(self, node_id: str, loc: Loc, f: Fields, common: dict[str, Any]) -> Node:
        ctx = self.ctx
        cy = f.get("cases", lambda c, v: v)
        default = f.get("default", self.target)
        cases: list[Case] = []
        if isinstance(cy, YSeq):
            for item in cy.items:
                if not isinstance(item, YMap):
                    ctx.error("each case is a mapping: {when: <condition>, goto: <node>}", item.loc)
                    continue
                cf = Fields(ctx, item, "a case")
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

    def node_schedule(self, node_id: str, loc: Loc, f: Fields, common: dict[str, Any]) -> Node:
        ctx = self.ctx
        tz = f.get("timezone", c_str, None)
        if tz is not None:
            self._check_tz(tz, f.key_loc("timezone"))
        hy = f.get("hours", lambda c, v: v)
        week: list[list[tuple[int, int]]] = [[] for _ in DAYS]
        if isinstance(hy, YMap):
            for spec, (kl, ry) in hy.entries.items():
                days = parse_days(spec)
                if days is None:
                    ctx.error(f"bad day spec {spec!r} (e.g. mon-fri, sat, sun, daily)", kl)
                    continue
                ranges = parse_ranges(ctx, ry)
                for d in days:
                    week[d].extend(ranges)
        elif hy is not None:
            ctx.error("hours must be a mapping: mon-fri: 08:00-20:00", hy.loc)
        holidays: set[str] = set()
        if f.has("holidays"):
            for text, hl in c_str_list(ctx, f.raw("holidays") or YSeq(f.map.loc)):
                if not valid_holiday(text):
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

    def node_set(self, node_id: str, loc: Loc, f: Fields, common: dict[str, Any]) -> Node:
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

    def node_lookup(self, node_id: str, loc: Loc, f: Fields, common: dict[str, Any]) -> Node:
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
            for k, e in params:
                if e.sensitive and k not in decl.sensitive_params:
                    ctx.error(
                        f"{e.source!r} is sensitive but parameter {k!r} of {source!r} is not "
                        "declared sensitive (the source would not know to protect it)",
                        f.key_loc("params"),
                    )
        if result is not None and (result in self.var_decls or result in RESERVED):
            ctx.error(f"result {result!r} clashes with a declared variable", f.key_loc("result"))
        self._need(source, timeout, nxt, err)
        return LookupNode(node_id, loc, source, params, result, nxt, err, timeout, **common)

    def node_subflow(self, node_id: str, loc: Loc, f: Fields, common: dict[str, Any]) -> Node:
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

    def node_return(self, node_id: str, loc: Loc, f: Fields, common: dict[str, Any]) -> Node:
        exit_ = f.get("exit", c_name, "next")
        values: tuple[tuple[str, ex.Expr], ...] = ()
        vy = f.raw("values")
        if vy is not None:
            values = self.assignments(vy, "values")
        self._need(exit_)
        return ReturnNode(node_id, loc, exit=exit_, values=values, **common)

    def node_queue(self, node_id: str, loc: Loc, f: Fields, common: dict[str, Any]) -> Node:
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
            raise Skip
        return QueueNode(
            node_id, loc, queue=queue, skills=skills, priority=priority, language=language,
            data=data, timeout=timeout, on=MappingProxyType(on), **common,
        )  # fmt: skip

    def node_transfer(self, node_id: str, loc: Loc, f: Fields, common: dict[str, Any]) -> Node:
        to = f.get("to", lambda c, v: self.template(v))
        timeout = f.get("timeout", c_seconds, 30.0)
        busy = f.get("busy", self.target)
        fail = f.get("fail", self.target)
        noanswer = f.get("noanswer", self.target, None)
        if to is not None and to.sensitive:
            self.ctx.error("transfer target reads a sensitive value", f.key_loc("to"))
        self._need(to, timeout, busy, fail)
        return TransferNode(node_id, loc, to, timeout, busy, fail, noanswer, **common)

    def node_hangup(self, node_id: str, loc: Loc, f: Fields, common: dict[str, Any]) -> Node:
        prompt = f.get("prompt", self.prompts, ())
        reason = f.get("reason", c_str, "completed")
        self._need(reason)
        return HangupNode(node_id, loc, prompt=prompt, reason=reason, **common)


def parse_days(spec: str) -> list[int] | None:
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


def parse_ranges(ctx: Ctx, y: Y) -> list[tuple[int, int]]:
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


def valid_holiday(text: str) -> bool:
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
