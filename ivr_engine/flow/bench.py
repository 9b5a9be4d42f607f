"""`ivr-engine flows bench`: interpreter overhead per node, and lint time of a 1,000-node flow.

Both numbers come with a baseline measured in the same run:
- per node: the same channel calls the flow makes (play, wait_digit) awaited directly on the
  same instant channel; overhead = (flow time - baseline) / nodes;
- lint: `yaml.compose` of the same text (what any YAML tool pays), against our full load +
  checks.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from ivr_engine.flow.fake import InstantChannel
from ivr_engine.flow.interpreter import Interpreter
from ivr_engine.flow.loader import load_texts, raise_first
from ivr_engine.flow.services import AuditEntry, FlowOutcome, QueueOutcome, QueueRequest, Services
from ivr_engine.flow.yamltree import LOADER
from ivr_engine.prompts import Utterance

TARGET_NODE_US = 50.0
TARGET_LINT_S = 1.0


def generate_flow(nodes: int, name: str = "bench") -> str:
    """A flow of `nodes` nodes cycling through set, switch, play, menu, lookup, collect."""
    lines = [
        f"flow: {name}",
        "start: n0",
        "languages: [cmn]",
        "vars:",
        "  x: {type: int, default: 0}",
        "  acct: str",
        "sources:",
        "  data.get:",
        "    params: {n: int}",
        "    fields: {value: int, name: str}",
        "maps:",
        "  tiers: {type: int, default: 1, values: {vip: 10, group: 8, local: 3}}",
        "nodes:",
    ]
    kinds = ("set", "switch", "play", "menu", "lookup", "collect")
    for i in range(nodes - 1):
        nxt = f"n{i + 1}"
        kind = kinds[i % len(kinds)]
        lines.append(f"  n{i}:")
        if kind == "set":
            lines += [
                "    type: set",
                "    vars: {x: \"x + tiers['vip'] % 7\"}",
                f"    next: {nxt}",
            ]
        elif kind == "switch":
            lines += [
                "    type: switch",
                "    cases:",
                f"      - {{when: \"x > 1000000 and call.lang == 'yue'\", goto: {nxt}}}",
                f"    default: {nxt}",
            ]
        elif kind == "play":
            lines += [
                "    type: play",
                "    prompt: {prompt: p_info, vars: {n: x}}",
                f"    next: {nxt}",
            ]
        elif kind == "menu":
            lines += [
                "    type: menu",
                "    prompt: p_menu",
                f"    options: {{'1': {nxt}, '2': {nxt}}}",
                f"    no_input: {{max: 3, exit: {nxt}}}",
                f"    no_match: {{max: 3, exit: {nxt}}}",
            ]
        elif kind == "lookup":
            lines += [
                "    type: lookup",
                "    source: data.get",
                "    params: {n: x}",
                "    result: r",
                f"    next: {nxt}",
                f"    error: {nxt}",
            ]
        else:
            lines += [
                "    type: collect",
                "    prompt: p_acct",
                "    var: acct",
                "    max_digits: 1",
                f"    no_input: {{max: 3, exit: {nxt}}}",
                f"    no_match: {{max: 3, exit: {nxt}}}",
                f"    next: {nxt}",
            ]
    lines += [f"  n{nodes - 1}:", "    type: hangup", "    reason: done"]
    return "\n".join(lines) + "\n"


class _NullObserver:
    def node_entered(self, call_id: str, flow: str, node: str, kind: str) -> None:
        return None

    def input_received(self, call_id: str, node: str, digits: str, status: str) -> None:
        return None

    def prompt_played(self, call_id: str, node: str, prompt: str, text: str) -> None:
        return None

    def variable_set(self, call_id: str, name: str, value: str) -> None:
        return None

    def flow_ended(self, call_id: str, outcome: FlowOutcome) -> None:
        return None


class _NullAudit:
    async def record(self, entry: AuditEntry) -> None:
        return None


class _NullQueue:
    async def enqueue(self, channel: Any, request: QueueRequest) -> QueueOutcome:
        return QueueOutcome("answered")


class _ConstPrompts:
    """A renderer that costs (almost) nothing: I/O and TTS are not the interpreter's overhead."""

    def __init__(self) -> None:
        self._utt = [Utterance("cmn/x", "x", "cmn")]

    def render(
        self, prompt_id: str, langs: Sequence[str], variables: Mapping[str, object] | None = None
    ) -> list[Utterance]:
        return self._utt

    def say(self, kind: str, value: object, langs: Sequence[str]) -> list[Utterance]:
        return self._utt


async def _source(params: Mapping[str, object]) -> Mapping[str, object]:
    return {"value": 1, "name": "x"}


async def _baseline(channel: InstantChannel, plays: int, waits: int, lookups: int) -> None:
    utt = [Utterance("cmn/x", "x", "cmn")]
    for _ in range(plays):
        await channel.play(utt, interrupt="0123456789*#")
    for _ in range(waits):
        await channel.wait_digit(5.0)
    for _ in range(lookups):
        await _source({"n": 1})


def bench_interpreter(nodes: int = 1000, calls: int = 30) -> dict[str, float]:
    flows = raise_first(load_texts([("bench.yaml", generate_flow(nodes))], entry="bench"))
    services = Services({"data.get": _source}, _NullQueue(), _NullAudit(), _NullObserver())
    interp = Interpreter(flows, services, _ConstPrompts(), max_steps=nodes * 2)
    kinds = [n.kind for n in flows.flows["bench"].nodes.values()]
    plays = kinds.count("play") + kinds.count("menu") + kinds.count("collect")
    waits = kinds.count("menu") + kinds.count("collect")
    lookups = kinds.count("lookup")

    async def run() -> tuple[list[float], list[float]]:
        flow_t, base_t = [], []
        for _ in range(calls):
            ch = InstantChannel("1")
            t0 = time.perf_counter()
            out = await interp.run(ch)
            flow_t.append(time.perf_counter() - t0)
            if out.kind != "hangup":
                raise RuntimeError(f"bench flow ended with {out.kind}, not hangup")
            t0 = time.perf_counter()
            await _baseline(ch, plays, waits, lookups)
            base_t.append(time.perf_counter() - t0)
        return flow_t, base_t

    gc.collect()
    flow_t, base_t = asyncio.run(run())
    flow_med = statistics.median(flow_t)
    base_med = statistics.median(base_t)
    per_node = (flow_med - base_med) / nodes * 1e6
    return {
        "nodes": nodes,
        "calls": calls,
        "flow_ms_median": flow_med * 1e3,
        "baseline_ms_median": base_med * 1e3,
        "overhead_us_per_node": per_node,
        "total_us_per_node": flow_med / nodes * 1e6,
        "ratio_flow_to_baseline": flow_med / base_med if base_med else float("inf"),
        "target_us_per_node": TARGET_NODE_US,
    }


def bench_lint(nodes: int = 1000, repeat: int = 5) -> dict[str, float]:
    text = generate_flow(nodes)
    lint_t, compose_t = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = load_texts([("bench.yaml", text)], entry="bench")
        lint_t.append(time.perf_counter() - t0)
        if result.errors:
            raise RuntimeError(f"generated flow does not lint: {result.errors[0].render()}")
        t0 = time.perf_counter()
        yaml.compose(text, Loader=LOADER)
        compose_t.append(time.perf_counter() - t0)
    lint_med = statistics.median(lint_t)
    comp_med = statistics.median(compose_t)
    return {
        "nodes": nodes,
        "lines": text.count("\n"),
        "lint_s_median": lint_med,
        "yaml_compose_s_median": comp_med,
        "ratio_lint_to_compose": lint_med / comp_med if comp_med else float("inf"),
        "target_s": TARGET_LINT_S,
    }


def run_all(nodes: int = 1000) -> dict[str, dict[str, float]]:
    return {"interpreter": bench_interpreter(nodes), "lint": bench_lint(nodes)}
