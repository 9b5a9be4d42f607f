"""The offline side of the interpreter: a scripted `CallChannel`, fixture data sources, an
in-memory audit sink, a transcript observer and a text-only prompt renderer.

`ivr-engine flows try` and the unit tests run the real interpreter against these.

Input script: comma-separated entries, each pressed in order. An entry is digits (`1`,
`123456#`), `t`/`timeout` (the caller stays silent for one wait) or `h`/`hangup`. The caller
listens to each prompt to its end before keying an entry; `!` in front of an entry (`!2`)
presses its first digit during the prompt instead (barge-in: it cuts the prompt short when
the prompt allows it, and is lost when it does not, as with legal text). The end of an entry
is a pause: a collect still waiting for more digits sees its inter-digit timeout there. When
the script runs out, the caller hangs up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from ivr_engine.errors import ChannelHangup, FlowError
from ivr_engine.flow.channel import CallChannel, CallerInfo, TransferStatus
from ivr_engine.flow.services import (
    AuditEntry,
    DataSource,
    FlowOutcome,
    QueueOutcome,
    QueueRequest,
)
from ivr_engine.prompts import Utterance

_TIMEOUT = "\x00t"
_HANGUP = "\x00h"
_PAUSE = "\x00p"


def parse_script(script: str | Sequence[str]) -> list[str]:
    """'1,123#,t,h' -> ['1', '1','2','3','#' (then a pause), timeout, hangup] as events."""
    entries = [s.strip() for s in script.split(",")] if isinstance(script, str) else list(script)
    events: list[str] = []
    for i, entry in enumerate(entries):
        low = entry.lower()
        if low in ("t", "timeout"):
            events.append(_TIMEOUT)
        elif low in ("h", "hangup"):
            events.append(_HANGUP)
        elif entry and all(ch in "0123456789*#" for ch in entry.removeprefix("!")) and entry != "!":
            if entry.startswith("!"):
                events.append("!" + entry[1])
                events.extend(entry[2:])
            else:
                events.extend(entry)
            events.append(_PAUSE)
        elif entry == "" and len(entries) == 1:
            continue
        else:
            raise FlowError(
                f"input entry {i + 1} {entry!r}: "
                "expected digits (0-9 * #), 't' (timeout) or 'h' (hang-up)"
            )
    return events


class FakeChannel:
    """A `CallChannel` that answers instantly from a script. It records what the flow did to
    the channel (prompts, variables, transfer, hang-up), never the digits (they may be a PIN)."""

    def __init__(
        self,
        caller: CallerInfo,
        script: str | Sequence[str] = "",
        *,
        call_id: str = "try-1",
        transfer_status: TransferStatus = "answered",
        record: bool = True,
    ):
        self._call_id = call_id
        self._caller = caller
        self._events = parse_script(script)
        self._pos = 0
        self._in_entry = False  # digits of the current entry were read and more may follow
        self.transfer_status = transfer_status
        self.record = record
        self.log: list[dict[str, Any]] = []
        self.variables: dict[str, str] = {}
        self.hung_up = False
        self.answered = False

    @property
    def call_id(self) -> str:
        return self._call_id

    @property
    def caller(self) -> CallerInfo:
        return self._caller

    def _peek(self) -> str | None:
        return self._events[self._pos] if self._pos < len(self._events) else None

    def _check(self) -> None:
        if self.hung_up:
            raise ChannelHangup("channel hung up")

    async def answer(self) -> None:
        self._check()
        self.answered = True

    async def play(self, utterances: Sequence[Utterance], *, interrupt: str = "") -> str | None:
        self._check()
        # a pause left over from the previous entry is not input for a new prompt
        if self._peek() == _PAUSE:
            self._pos += 1
        self._in_entry = False
        nxt = self._peek()
        pressed = nxt[1] if nxt is not None and nxt.startswith("!") else None
        barged = pressed is not None and pressed in interrupt
        if self.record:
            entry: dict[str, Any] = {"action": "play", "files": [u.file for u in utterances]}
            if pressed is not None:
                entry["pressed"] = "barge-in" if barged else "ignored (no barge-in)"
            self.log.append(entry)
        if pressed is not None:
            self._pos += 1  # a key pressed into a prompt that does not allow barge-in is lost
            self._in_entry = barged
            return pressed if barged else None
        return None

    async def wait_digit(self, timeout: float) -> str | None:  # noqa: ASYNC109
        self._check()
        nxt = self._peek()
        if nxt is None or nxt == _HANGUP:
            self.hung_up = True
            if nxt is not None:
                self._pos += 1
            raise ChannelHangup("caller hung up" if nxt else "caller hung up (input script ended)")
        self._pos += 1
        if nxt in (_TIMEOUT, _PAUSE):
            self._in_entry = False
            return None
        self._in_entry = True
        return nxt[-1]  # "!d" read here: the prompt had already ended

    async def flush_digits(self) -> None:
        """Drop type-ahead: what is left of an entry the caller is in the middle of keying.
        Later entries are keyed after the next prompt, so they are not type-ahead yet."""
        self._check()
        if not self._in_entry:
            return
        while (nxt := self._peek()) is not None and len(nxt) == 1:
            self._pos += 1

    async def set_variable(self, name: str, value: str) -> None:
        self._check()
        self.variables[name] = value
        if self.record:
            self.log.append({"action": "set_variable", "name": name, "value": value})

    async def transfer(self, target: str, *, timeout: float) -> TransferStatus:  # noqa: ASYNC109
        self._check()
        if self.record:
            self.log.append({"action": "transfer", "to": target, "status": self.transfer_status})
        return self.transfer_status

    async def hangup(self) -> None:
        self.hung_up = True
        if self.record:
            self.log.append({"action": "hangup"})


class InstantChannel:
    """For the benchmark: every digit is `digit`, nothing is recorded."""

    def __init__(self, digit: str = "1"):
        self._caller = CallerInfo("13800138000")
        self.digit = digit

    @property
    def call_id(self) -> str:
        return "bench"

    @property
    def caller(self) -> CallerInfo:
        return self._caller

    async def answer(self) -> None:
        return None

    async def play(self, utterances: Sequence[Utterance], *, interrupt: str = "") -> str | None:
        return None

    async def wait_digit(self, timeout: float) -> str | None:  # noqa: ASYNC109
        return self.digit

    async def flush_digits(self) -> None:
        return None

    async def set_variable(self, name: str, value: str) -> None:
        return None

    async def transfer(self, target: str, *, timeout: float) -> TransferStatus:  # noqa: ASYNC109
        return "answered"

    async def hangup(self) -> None:
        return None


class TextPrompts:
    """A renderer that needs no catalogue: each prompt is its id and its values.

    Used by `flows try` when the prompt catalogue is not available, and by tests."""

    def render(
        self, prompt_id: str, langs: Sequence[str], variables: Mapping[str, object] | None = None
    ) -> list[Utterance]:
        lang = langs[0] if langs else "cmn"
        text = f"[{prompt_id}]"
        if variables:
            text += " " + " ".join(f"{k}={_show(v)}" for k, v in variables.items())
        return [Utterance(f"{lang}/{prompt_id}", text, lang)]

    def say(self, kind: str, value: object, langs: Sequence[str]) -> list[Utterance]:
        lang = langs[0] if langs else "cmn"
        if kind == "masked":
            digits = "".join(ch for ch in str(value) if ch.isdigit())
            return [Utterance(f"{lang}/word/ending_in", f"ending in {digits[-4:]}", lang)]
        return [Utterance(f"{lang}/say/{kind}", f"<{kind} {_show(value)}>", lang)]


def _show(v: object) -> str:
    if isinstance(v, Decimal):
        return f"{v:.2f}"
    return str(v)


@dataclass
class MemoryAudit:
    entries: list[AuditEntry] = field(default_factory=list)

    async def record(self, entry: AuditEntry) -> None:
        self.entries.append(entry)


@dataclass
class ScriptedQueue:
    """Queue gateway answering with one outcome (answered by `agent`, timeout, ...)."""

    outcome: str = "answered"
    agent: str = "agent-1"
    requests: list[QueueRequest] = field(default_factory=list)

    async def enqueue(self, channel: CallChannel, request: QueueRequest) -> QueueOutcome:
        self.requests.append(request)
        return QueueOutcome(self.outcome, self.agent if self.outcome == "answered" else "")


class Transcript:
    """A `CallObserver` that keeps every event in order, for `flows try` and tests."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.outcome: FlowOutcome | None = None

    def node_entered(self, call_id: str, flow: str, node: str, kind: str) -> None:
        self.events.append({"event": "node", "flow": flow, "node": node, "kind": kind})

    def input_received(self, call_id: str, node: str, digits: str, status: str) -> None:
        self.events.append({"event": "input", "node": node, "digits": digits, "status": status})

    def prompt_played(self, call_id: str, node: str, prompt: str, text: str) -> None:
        self.events.append({"event": "prompt", "node": node, "prompt": prompt, "text": text})

    def variable_set(self, call_id: str, name: str, value: str) -> None:
        self.events.append({"event": "set", "name": name, "value": value})

    def flow_ended(self, call_id: str, outcome: FlowOutcome) -> None:
        self.outcome = outcome

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    def nodes(self) -> list[str]:
        return [e["node"] for e in self.of("node")]

    def lines(self) -> list[str]:
        out = []
        for e in self.events:
            kind = e["event"]
            if kind == "node":
                out.append(f"[{e['flow']}/{e['node']}] {e['kind']}")
            elif kind == "prompt":
                out.append(f"    says {e['prompt']}: {e['text']}")
            elif kind == "input":
                shown = e["digits"] or "(silence)"
                out.append(f"    caller: {shown} -> {e['status']}")
            elif kind == "set":
                out.append(f"    {e['name']} = {e['value'] if e['value'] != '' else chr(34) * 2}")
        if self.outcome is not None:
            detail = ", ".join(f"{k}={v}" for k, v in self.outcome.detail.items() if v != "")
            out.append(
                f"END {self.outcome.kind} at {self.outcome.flow}/{self.outcome.node}"
                + (f": {detail}" if detail else "")
            )
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "outcome": None
            if self.outcome is None
            else {
                "kind": self.outcome.kind,
                "flow": self.outcome.flow,
                "node": self.outcome.node,
                "detail": dict(self.outcome.detail),
            },
        }


# ---------------------------------------------------------------------------------- fixtures


class FixtureError(FlowError):
    """A data fixture file for `flows try` that cannot be used."""


def _matches(rule: Mapping[str, Any], params: Mapping[str, object]) -> bool:
    want = rule.get("match") or {}
    return all(str(params.get(k)) == str(v) for k, v in want.items())


def fixture_sources(data: Mapping[str, Any], *, origin: str = "<fixture>") -> dict[str, DataSource]:
    """Data sources from a fixture: `{source: [{match: {param: v}, result: {..}} | {error: ..}]}`.

    The first rule whose `match` equals the call's params answers; no rule -> the lookup fails
    (the flow takes the node's error exit), just as a source that raised would."""
    if not isinstance(data, Mapping):
        raise FixtureError(f"{origin}: expected a mapping of source name: rules")
    out: dict[str, DataSource] = {}
    for name, rules in data.items():
        if isinstance(rules, Mapping):
            rules = [rules]
        if not isinstance(rules, list) or not all(isinstance(r, Mapping) for r in rules):
            raise FixtureError(f"{origin}: {name}: expected a list of {{match, result}} rules")
        for i, r in enumerate(rules):
            unknown = set(r) - {"match", "result", "error"}
            if unknown:
                raise FixtureError(f"{origin}: {name} rule {i + 1}: unknown keys {sorted(unknown)}")
            if ("result" in r) == ("error" in r):
                raise FixtureError(
                    f"{origin}: {name} rule {i + 1}: give exactly one of result or error"
                )
        out[str(name)] = _fixture_source(str(name), list(rules))
    return out


def _fixture_source(name: str, rules: list[Mapping[str, Any]]) -> DataSource:
    async def source(params: Mapping[str, object]) -> Mapping[str, object]:
        for rule in rules:
            if _matches(rule, params):
                if "error" in rule:
                    if rule["error"] == "timeout":
                        raise TimeoutError(f"{name}: fixture timeout")
                    raise FixtureError(f"{name}: {rule['error']}")
                result = rule["result"]
                return dict(result) if isinstance(result, Mapping) else {}
        raise FixtureError(f"{name}: no fixture rule matches")

    return source


def load_fixture(path: str | Path) -> dict[str, DataSource]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise FixtureError(f"{p}: cannot read data fixture: {exc}") from None
    return fixture_sources(data or {}, origin=str(p))
