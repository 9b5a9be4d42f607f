"""YAML flows -> the frozen model, with `path:line:col` on every problem.

`load_paths()` reads files or directories (every `*.yaml`/`*.yml` directly inside), parses each
flow, then runs the set-wide checks of `lint.check_flow_set`. It returns every diagnostic it
found (errors and warnings) and the `FlowSet` when there were no errors. `load_flow_set()` is
the strict form the daemon uses: it raises `FlowError` naming the first error.

The file format is documented in docs/flows.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ivr_engine.errors import FlowError
from ivr_engine.flow import expr as ex
from ivr_engine.flow.fields import (
    CONTEXT_VARS,
    NAME,
    NODE_ID,
    RESERVED,
    SOURCE_NAME,
    Fields,
    c_bool,
    c_name,
    c_pos_int,
    c_str,
    c_str_list,
    scalar,
)
from ivr_engine.flow.model import (
    LANGUAGES,
    NODE_TYPES,
    Flow,
    FlowSet,
    Loc,
    MapDecl,
    Node,
    SourceDecl,
)
from ivr_engine.flow.node_parsers import NodeParsers
from ivr_engine.flow.parser import Skip
from ivr_engine.flow.yamltree import Diagnostic, Y, YMap, YScalar, YSeq, describe, parse


class FlowParser(NodeParsers):
    """A whole flow file: declarations, then nodes, then the targets they name."""

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
            f = Fields(self.ctx, sy, f"source '{name}'")
            params = self.decls(f.raw("params"), "parameter", allow_default=False)
            fields = self.decls(f.raw("fields"), "field", allow_default=False)
            f.finish(())
            self.sources[name] = SourceDecl(
                name,
                MappingProxyType({k: v.type for k, v in params.items()}),
                MappingProxyType({k: v.type for k, v in fields.items()}),
                frozenset(k for k, v in fields.items() if v.sensitive),
                kloc,
                frozenset(k for k, v in params.items() if v.sensitive),
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
            f = Fields(self.ctx, my, f"map '{name}'")
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
                    s = scalar(self.ctx, v, f"a {t}")
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
                s = scalar(self.ctx, dy, f"a {t}")
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
        f = Fields(ctx, self.root, "the flow")
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

    def _hotkeys(self, y: Y) -> dict[str, str]:
        ctx = self.ctx
        if not isinstance(y, YMap):
            ctx.error(
                "'hotkeys' must be a mapping: operator: <node>, repeat: true, back: true", y.loc
            )
            return {}
        f = Fields(ctx, y, "hotkeys")
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
        f = Fields(ctx, y, f"node '{node_id}'")
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
        except Skip:
            node = None
        f.finish(allowed)
        return node


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
