"""Set-wide checks on loaded flows: graph, subflows, prompts, sensitive data, menu depth.

The loader has already checked each file's structure, types, expressions and that targets
exist. Here we look at the whole: unreachable nodes, loops nothing bounds, calls between
flows, prompts against the catalogue in every language of the flow, places where a sensitive
value could be spoken or sent on, and how deep the menus go.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from ivr_engine.flow.expr import Expr
from ivr_engine.flow.model import (
    CHANNEL_KINDS,
    INPUT_KINDS,
    ConfirmNode,
    Flow,
    FlowSet,
    HangupNode,
    InputNode,
    MenuNode,
    Node,
    PlayNode,
    PromptRef,
    Prompts,
    ReturnNode,
    SetNode,
    SubflowNode,
)
from ivr_engine.flow.yamltree import Diagnostic

# Which expression types each placeholder kind accepts.
PLACEHOLDER_TYPES = {
    "money": {"num", "int"},
    "number": {"num", "int"},
    "date": {"date"},
    "time": {"str"},
    "digits": {"str", "int"},
    "masked": {"str", "int"},
    "text": {"str"},
    "ordinal": {"int"},
    "surname": {"str"},
    "title": {"str"},
    "region": {"str"},
}


class Catalogue(Protocol):
    """What lint needs from the prompt catalogue (PromptCatalogue has it)."""

    def ids(self) -> frozenset[str]: ...

    def has(self, prompt_id: str, lang: str) -> bool: ...

    def placeholders(self, prompt_id: str) -> dict[str, str]: ...


def check_flow_set(
    flows: FlowSet, *, catalogue: Catalogue | None = None, max_menu_depth: int | None = None
) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    if flows.entry is not None and flows.entry not in flows.flows:
        out.append(Diagnostic("error", f"entry flow {flows.entry!r} is not defined"))
    _check_sources(flows, out)
    for flow in flows.flows.values():
        _check_reachable(flow, out)
        _check_loops(flow, out)
        _check_on_hangup(flow, out)
        _check_subflows(flow, flows, out)
        _check_returns(flow, out)
        _check_prompts(flow, catalogue, out)
        _check_hotkeys(flow, out)
        _check_unused(flow, out)
    _check_recursion(flows, out)
    _check_menu_depth(flows, max_menu_depth, out)
    if catalogue is None and flows.flows:
        out.append(Diagnostic("warning", "no prompt catalogue given: prompt ids were not checked"))
    return out


def _err(
    out: list[Diagnostic], flow: Flow, node: Node | None, message: str, loc: Any = None
) -> None:
    out.append(
        Diagnostic(
            "error",
            message,
            loc or (node.loc if node else flow.loc),
            node.id if node else None,
            flow.name,
        )
    )


def _edges(flow: Flow) -> dict[str, list[tuple[str, str, bool]]]:
    graph: dict[str, list[tuple[str, str, bool]]] = {}
    for nid, node in flow.nodes.items():
        edges = [(label, t, driven) for label, t, driven in node.targets() if t in flow.nodes]
        if (
            isinstance(node, InputNode)
            and node.hotkeys
            and not (isinstance(node, MenuNode) and "0" in node.options)
        ):
            op = flow.hotkeys.get("0", "")
            if op.startswith("operator:"):
                edges.append(("hotkey 0", op.split(":", 1)[1], True))
        graph[nid] = edges
    return graph


def _roots(flow: Flow) -> list[str]:
    roots = [flow.start]
    for extra in (flow.on_hangup, flow.on_error):
        if extra:
            roots.append(extra)
    op = flow.hotkeys.get("0", "")
    if op.startswith("operator:"):
        roots.append(op.split(":", 1)[1])
    return [r for r in roots if r in flow.nodes]


def _reach(graph: Mapping[str, list[tuple[str, str, bool]]], roots: list[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(t for _, t, _ in graph.get(n, ()))
    return seen


def _check_reachable(flow: Flow, out: list[Diagnostic]) -> None:
    seen = _reach(_edges(flow), _roots(flow))
    for nid, node in flow.nodes.items():
        if nid not in seen:
            _err(out, flow, node, f"unreachable: no path from start {flow.start!r} leads here")


def _sccs(nodes: list[str], succ: Mapping[str, list[str]]) -> Iterator[list[str]]:
    """Tarjan's strongly connected components, iterative (flows may have thousands of nodes)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            children = succ.get(v, [])
            recurse = False
            while i < len(children):
                w = children[i]
                i += 1
                if w not in index:
                    work.append((v, i))
                    work.append((w, 0))
                    recurse = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if recurse:
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                yield comp
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])


def _check_loops(flow: Flow, out: list[Diagnostic]) -> None:
    """A cycle that needs no caller key press can spin forever unless a node bounds it."""
    succ: dict[str, list[str]] = {}
    for nid, edges in _edges(flow).items():
        succ[nid] = [t for label, t, driven in edges if not driven and label != "no_match"]
    for comp in _sccs(list(flow.nodes), succ):
        if len(comp) == 1 and comp[0] not in succ.get(comp[0], []):
            continue
        if any(flow.nodes[n].max_visits for n in comp):
            continue
        first = min(comp, key=lambda n: (flow.nodes[n].loc.line, flow.nodes[n].loc.col))
        cycle = " -> ".join(sorted(comp))
        _err(
            out,
            flow,
            flow.nodes[first],
            f"loop with no bound: {cycle} can repeat without any key press; "
            "give one node max_visits and on_max_visits",
        )


def _check_on_hangup(flow: Flow, out: list[Diagnostic]) -> None:
    if not flow.on_hangup or flow.on_hangup not in flow.nodes:
        return
    for nid in _reach(_edges(flow), [flow.on_hangup]):
        node = flow.nodes[nid]
        if (
            node.kind in CHANNEL_KINDS
            or (isinstance(node, HangupNode) and node.prompt)
            or (isinstance(node, SetNode) and node.channel)
        ):
            _err(
                out,
                flow,
                node,
                f"runs after hang-up (from on_hangup) but a {node.kind} needs the caller",
            )


def _return_labels(flow: Flow) -> dict[str, ReturnNode]:
    labels: dict[str, ReturnNode] = {}
    for node in flow.nodes.values():
        if isinstance(node, ReturnNode):
            labels.setdefault(node.exit, node)
    return labels


def _compatible(want: str, got: str) -> bool:
    return want == got or (want == "num" and got == "int")


def _check_subflows(flow: Flow, flows: FlowSet, out: list[Diagnostic]) -> None:
    for node in flow.nodes.values():
        if not isinstance(node, SubflowNode):
            continue
        callee = flows.flows.get(node.flow)
        if callee is None:
            _err(
                out,
                flow,
                node,
                f"subflow {node.flow!r} is not defined (have: {', '.join(sorted(flows.flows))})",
            )
            continue
        for name, e in node.params:
            decl = callee.vars.get(name)
            if decl is None or name not in callee.params:
                _err(out, flow, node, f"flow {callee.name!r} has no parameter {name!r}")
                continue
            if not _compatible(decl.type, e.type):
                _err(
                    out,
                    flow,
                    node,
                    f"parameter {name!r} of {callee.name!r} is {decl.type}, got {e.type}",
                )
            if e.sensitive and not decl.sensitive:
                _err(
                    out,
                    flow,
                    node,
                    f"parameter {name!r} gets a sensitive value "
                    f"but is not sensitive in {callee.name!r}",
                )
        for local, returned in node.outputs:
            rdecl = callee.returns.get(returned)
            ldecl = flow.vars.get(local)
            if rdecl is None:
                _err(out, flow, node, f"flow {callee.name!r} returns no {returned!r}")
                continue
            if ldecl is not None:
                if not _compatible(ldecl.type, rdecl.type):
                    _err(
                        out,
                        flow,
                        node,
                        f"{local!r} is {ldecl.type} but {callee.name!r} returns {rdecl.type}",
                    )
                if rdecl.sensitive and not ldecl.sensitive:
                    _err(
                        out,
                        flow,
                        node,
                        f"{returned!r} is sensitive; {local!r} must be declared sensitive",
                    )
        labels = _return_labels(callee)
        if not labels:
            _err(
                out,
                flow,
                node,
                f"flow {callee.name!r} has no return node, so it never comes back here",
            )
        for label in labels:
            if label == "next" and not node.next:
                _err(
                    out,
                    flow,
                    node,
                    f"{callee.name!r} can return plainly; give this subflow a 'next'",
                )
            elif label != "next" and label not in node.exits:
                _err(
                    out,
                    flow,
                    node,
                    f"{callee.name!r} can return with exit {label!r}; map it under 'exits'",
                )
        for label in node.exits:
            if label not in labels:
                _err(out, flow, node, f"{callee.name!r} never returns with exit {label!r}")


def _check_returns(flow: Flow, out: list[Diagnostic]) -> None:
    for node in flow.nodes.values():
        if not isinstance(node, ReturnNode):
            continue
        for name, e in node.values:
            decl = flow.returns.get(name)
            if decl is None:
                _err(out, flow, node, f"{name!r} is not declared under 'returns'")
                continue
            if not _compatible(decl.type, e.type):
                _err(out, flow, node, f"return value {name!r} is {decl.type}, got {e.type}")
            if e.sensitive and not decl.sensitive:
                _err(
                    out,
                    flow,
                    node,
                    f"return value {name!r} reads a sensitive value; "
                    "declare it sensitive or mask()",
                )


def _check_recursion(flows: FlowSet, out: list[Diagnostic]) -> None:
    succ: dict[str, list[str]] = {}
    for flow in flows.flows.values():
        succ[flow.name] = [
            n.flow
            for n in flow.nodes.values()
            if isinstance(n, SubflowNode) and n.flow in flows.flows
        ]
    for comp in _sccs(list(succ), succ):
        if len(comp) > 1 or comp[0] in succ.get(comp[0], []):
            flow = flows.flows[sorted(comp)[0]]
            _err(
                out, flow, None, f"subflows call each other in a cycle: {' -> '.join(sorted(comp))}"
            )


def _check_sources(flows: FlowSet, out: list[Diagnostic]) -> None:
    seen: dict[str, tuple[Flow, Any]] = {}
    for flow in flows.flows.values():
        for name, decl in flow.sources.items():
            if name in seen:
                other_flow, other = seen[name]
                if (dict(other.params), dict(other.fields)) != (
                    dict(decl.params),
                    dict(decl.fields),
                ):
                    _err(
                        out, flow, None,
                        f"source {name!r} is declared differently in {other_flow.path}", decl.loc,
                    )  # fmt: skip
            else:
                seen[name] = (flow, decl)


def _check_hotkeys(flow: Flow, out: list[Diagnostic]) -> None:
    for node in flow.nodes.values():
        if isinstance(node, MenuNode) and node.hotkeys:
            for key in node.options:
                if key in flow.hotkeys and key != "0":
                    out.append(
                        Diagnostic(
                            "warning",
                            f"option {key!r} hides the flow's {flow.hotkeys[key]} hotkey here",
                            node.loc,
                            node.id,
                            flow.name,
                        )  # fmt: skip
                    )


def _node_prompts(node: Node) -> Iterator[tuple[str, Prompts]]:
    if isinstance(node, PlayNode | HangupNode):
        yield "prompt", node.prompt
    if isinstance(node, InputNode):
        yield "prompt", node.prompt
        yield "reprompt", node.reprompt
        for label, retry in (("no_input", node.no_input), ("no_match", node.no_match)):
            for p in retry.prompts:
                yield label, p


def _check_prompts(flow: Flow, catalogue: Catalogue | None, out: list[Diagnostic]) -> None:
    ids = catalogue.ids() if catalogue is not None else None
    for node in flow.nodes.values():
        for _label, prompts in _node_prompts(node):
            for ref in prompts:
                _check_prompt_ref(flow, node, ref, catalogue, ids, out)
        if isinstance(node, ConfirmNode) and node.audit:
            for key, e in node.audit.details:
                if e.sensitive:
                    _err(
                        out, flow, node, f"audit detail {key!r} reads a sensitive value; use mask()"
                    )


def _check_prompt_ref(
    flow: Flow,
    node: Node,
    ref: PromptRef,
    catalogue: Catalogue | None,
    ids: frozenset[str] | None,
    out: list[Diagnostic],
) -> None:
    if ref.say is not None and ref.value is not None:
        if ref.value.sensitive and ref.say != "masked":
            _err(
                out,
                flow,
                node,
                f"would speak a sensitive value ({ref.value.source}) with say {ref.say}; "
                "only 'masked' may",
                ref.loc,
            )
        return
    if ref.prompt is None:
        return
    placeholders: dict[str, str] = {}
    if catalogue is not None and ids is not None:
        if ref.prompt not in ids:
            _err(out, flow, node, f"prompt {ref.prompt!r} is not in the catalogue", ref.loc)
            return
        missing = [lang for lang in flow.languages if not catalogue.has(ref.prompt, lang)]
        if missing:
            _err(
                out,
                flow,
                node,
                f"prompt {ref.prompt!r} has no text in {', '.join(missing)}",
                ref.loc,
            )
        placeholders = dict(catalogue.placeholders(ref.prompt))
        given = {k for k, _ in ref.vars}
        for name in placeholders:
            if name not in given:
                _err(
                    out,
                    flow,
                    node,
                    f"prompt {ref.prompt!r} needs a value for {{{name}}} under vars",
                    ref.loc,
                )
        for name in given - placeholders.keys():
            _err(out, flow, node, f"prompt {ref.prompt!r} has no placeholder {{{name}}}", ref.loc)
    for name, e in ref.vars:
        kind = placeholders.get(name)
        if kind is not None:
            allowed = PLACEHOLDER_TYPES.get(kind)
            if allowed is not None and e.type not in allowed:
                _err(
                    out,
                    flow,
                    node,
                    f"{{{name}:{kind}}} of {ref.prompt!r} needs "
                    f"{'/'.join(sorted(allowed))}, got {e.type}",
                    ref.loc,
                )
        if e.sensitive and kind != "masked":
            why = "" if catalogue is not None else " (no catalogue to prove the placeholder masked)"
            _err(
                out,
                flow,
                node,
                f"would speak sensitive {e.source!r} in prompt {ref.prompt!r} unmasked{why}",
                ref.loc,
            )


def _exprs(value: object) -> Iterator[Expr]:
    """Every expression inside a node (prompts, cases, assignments, audit details...)."""
    if isinstance(value, Expr):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _exprs(item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _exprs(getattr(value, f.name))


def _check_unused(flow: Flow, out: list[Diagnostic]) -> None:
    read: set[str] = set()
    for node in flow.nodes.values():
        for e in _exprs(node):
            read.update(e.names)
    for decl in flow.vars.values():
        if decl.name not in read:
            what = "parameter" if decl.name in flow.params else "variable"
            out.append(
                Diagnostic(
                    "warning", f"{what} {decl.name!r} is never read", decl.loc, None, flow.name
                )
            )


def _check_menu_depth(flows: FlowSet, limit: int | None, out: list[Diagnostic]) -> None:
    """Shortest number of menus a caller passes to reach each menu (0-1 weighted Dijkstra)."""
    edges = {f.name: _edges(f) for f in flows.flows.values()}
    dist: dict[tuple[str, str], int] = {}
    heap: list[tuple[int, str, str]] = []  # (menus passed, flow, node)
    entry = flows.entry
    entries = [entry] if entry is not None and entry in flows.flows else list(flows.flows)
    called = {
        n.flow for f in flows.flows.values() for n in f.nodes.values() if isinstance(n, SubflowNode)
    }
    for name in entries:
        if flows.entry is None and name in called:
            continue
        flow = flows.flows[name]
        if flow.start in flow.nodes:
            heapq.heappush(heap, (0, name, flow.start))
    while heap:
        d, fname, nid = heapq.heappop(heap)
        if (fname, nid) in dist:
            continue
        flow = flows.flows[fname]
        node = flow.nodes[nid]
        here = d + (1 if isinstance(node, MenuNode) else 0)
        dist[(fname, nid)] = here
        for _, t, _ in edges[fname].get(nid, ()):
            if (fname, t) not in dist:
                heapq.heappush(heap, (here, fname, t))
        if isinstance(node, SubflowNode) and node.flow in flows.flows:
            callee = flows.flows[node.flow]
            if callee.start in callee.nodes and (callee.name, callee.start) not in dist:
                heapq.heappush(heap, (here, callee.name, callee.start))
    for (fname, nid), depth in sorted(dist.items()):
        flow = flows.flows[fname]
        node = flow.nodes[nid]
        mx = limit if limit is not None else flow.max_menu_depth
        if isinstance(node, MenuNode) and depth > mx:
            out.append(
                Diagnostic(
                    "warning",
                    f"menu is {depth} levels deep (limit {mx}); callers should reach it faster",
                    node.loc,
                    node.id,
                    flow.name,
                )  # fmt: skip
            )


__all__ = ["Catalogue", "INPUT_KINDS", "check_flow_set"]
