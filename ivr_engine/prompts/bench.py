"""`ivr-engine prompts bench`: what render() costs per call, against a floor from the same run.

The floor is handing out an already-rendered list of the same utterances (a dict lookup and a
list copy): what a cache of finished renders could do at best. The ratio says how much the
composition (parsing values, choosing words) adds. Numbers vary with the machine; compare
ratios.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

from ivr_engine.prompts.catalogue import PromptCatalogue
from ivr_engine.prompts.languages import language_chain
from ivr_engine.prompts.utterance import Utterance

CASES: tuple[tuple[str, Mapping[str, object]], ...] = (
    ("welcome", {}),
    ("queue_wait", {"minutes": 12}),
    ("transfer_readback", {"amount": Decimal("50000.00"), "target": "6222021234567890"}),
    ("bill_statement", {"amount": Decimal("1234.50"), "minimum": Decimal("123.45"),
                        "due": dt.date(2026, 11, 28)}),
)


@dataclass(frozen=True)
class BenchRow:
    prompt: str
    lang: str
    utterances: int
    render_us: float
    floor_us: float

    @property
    def ratio(self) -> float:
        return self.render_us / self.floor_us if self.floor_us else float("inf")


def _per_call_us(fn: Callable[[], object], seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            fn()
        n += 200
        now = time.perf_counter()
        if now >= deadline:
            return (now - start) / n * 1e6


def _cached(done: Mapping[str, list[Utterance]], pid: str) -> list[Utterance]:
    return list(done[pid])


def run(catalogue: PromptCatalogue, *, seconds: float = 0.3) -> list[BenchRow]:
    rows = []
    for lang in ("cmn", "yue", "en"):
        chain = language_chain(lang)
        for pid, variables in CASES:
            if pid not in catalogue.ids():
                continue
            done = {pid: catalogue.render(pid, chain, variables)}
            render_us = _per_call_us(partial(catalogue.render, pid, chain, variables), seconds)
            floor_us = _per_call_us(partial(_cached, done, pid), seconds)
            rows.append(BenchRow(pid, lang, len(done[pid]), render_us, floor_us))
    return rows


def report(rows: list[BenchRow]) -> str:
    lines = [f"{'prompt':<20} {'lang':<4} {'sounds':>6} {'render us':>10} {'floor us':>9} "
             f"{'ratio':>6}"]
    for r in rows:
        lines.append(f"{r.prompt:<20} {r.lang:<4} {r.utterances:>6} {r.render_us:>10.1f} "
                     f"{r.floor_us:>9.2f} {r.ratio:>6.0f}x")
    return "\n".join(lines)
