"""Helpers for the flow tests: load flows from text, run them against the fake channel."""

from __future__ import annotations

import datetime as dt
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ivr_engine.flow.channel import CallerInfo
from ivr_engine.flow.fake import FakeChannel, MemoryAudit, ScriptedQueue, TextPrompts, Transcript
from ivr_engine.flow.interpreter import Interpreter
from ivr_engine.flow.loader import LoadResult, load_texts
from ivr_engine.flow.model import FlowSet
from ivr_engine.flow.services import DataSource, FlowOutcome, Services


class FakeCatalogue:
    """A tiny catalogue: id -> {lang: text}; placeholders as {name:kind}."""

    def __init__(
        self,
        prompts: Mapping[str, Mapping[str, str]],
        placeholders: Mapping[str, dict[str, str]] | None = None,
    ):
        self.prompts = prompts
        self._ph = placeholders or {}

    def ids(self) -> frozenset[str]:
        return frozenset(self.prompts)

    def has(self, prompt_id: str, lang: str) -> bool:
        return lang in self.prompts.get(prompt_id, {})

    def placeholders(self, prompt_id: str) -> dict[str, str]:
        return dict(self._ph.get(prompt_id, {}))


def load(text: str, *more: str, catalogue: Any = None, entry: str | None = None) -> LoadResult:
    texts = [("main.yaml", textwrap.dedent(text))]
    texts += [(f"extra{i}.yaml", textwrap.dedent(t)) for i, t in enumerate(more)]
    return load_texts(texts, catalogue=catalogue, entry=entry)


def flows(text: str, *more: str, entry: str | None = None) -> FlowSet:
    result = load(text, *more, entry=entry)
    errors = [d.render() for d in result.errors]
    assert not errors, errors
    assert result.flows is not None
    return result.flows


def errors_of(text: str, *more: str, catalogue: Any = None) -> list[str]:
    return [d.render() for d in load(text, *more, catalogue=catalogue).errors]


@dataclass
class Run:
    outcome: FlowOutcome
    transcript: Transcript
    channel: FakeChannel
    audit: MemoryAudit
    queue: ScriptedQueue

    def nodes(self) -> list[str]:
        return self.transcript.nodes()

    def prompts(self) -> list[str]:
        return [e["prompt"] for e in self.transcript.of("prompt")]

    def inputs(self) -> list[tuple[str, str, str]]:
        return [(e["node"], e["digits"], e["status"]) for e in self.transcript.of("input")]


async def run(
    flow_set: FlowSet,
    script: str | Sequence[str] = "",
    *,
    flow: str | None = None,
    caller: str = "13800138000",
    sources: Mapping[str, DataSource] | None = None,
    at: dt.datetime | None = None,
    queue_outcome: str = "answered",
    transfer_status: str = "answered",
    prompts: Any = None,
    params: Mapping[str, object] | None = None,
) -> Run:
    transcript = Transcript()
    audit = MemoryAudit()
    queue = ScriptedQueue(queue_outcome)
    services = Services(dict(sources or {}), queue, audit, transcript)
    clock = (lambda: at) if at is not None else None
    interp = Interpreter(flow_set, services, prompts or TextPrompts(), clock=clock)
    channel = FakeChannel(CallerInfo(caller), script, transfer_status=transfer_status)  # type: ignore[arg-type]
    name = flow or next(iter(flow_set.flows))
    outcome = await interp.run(channel, name, params=params)
    return Run(outcome, transcript, channel, audit, queue)


CST = dt.timezone(dt.timedelta(hours=8))
NOON = dt.datetime(2026, 11, 25, 12, 0, tzinfo=CST)  # a Wednesday
