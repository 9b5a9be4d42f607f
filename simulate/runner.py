"""Run a scenario against the PBX: SIP callers and agent phones (pjsua2), AMI, the engine's CLI.

```
asyncio (this module)                 worker thread (asyncio.to_thread)
  AMI: Newchannel/VarSet/Hangup  <--    SipStack: agent phones register, auto-answer,
       collected with Asterisk's         talk, hang up, sometimes let it ring;
       own timestamps                    callers call one after the other, run their
  after the calls: match channels        DTMF script, record what they hear
  by time, read each call's record
  (`ivr-engine calls show ID --json`),
  evaluate the expectations
```

The simulator talks to the engine only as the network does: SIP and RTP through Asterisk,
AMI events, and the CLI's JSON output. pjsua2 lives entirely in the worker thread (one
`SipStack`, created and closed there); the event loop never waits on it except through
`to_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ivr_engine.config import AmiSettings
from ivr_engine.protocol.ami import AmiEvent, Newchannel, VarSet
from ivr_engine.transport.ami import AmiClient, EventStream
from simulate.checks import Check, Interval, Observed, dead_air, evaluate
from simulate.scenario import AgentSpec, CallSpec, Scenario
from simulate.script import Step

log = logging.getLogger(__name__)

# Channel variables the hotline sets for the dialplan (asterisk-conf/extensions.conf).
IVR_VARIABLES = ("IVR_NEXT", "IVR_QUEUE", "IVR_SKILLS", "IVR_PRIORITY", "IVR_LANGUAGE",
                 "IVR_AGENT", "IVR_FALLBACK", "IVR_FALLBACK_REASON")
CLI = (sys.executable, "-m", "ivr_engine.cli")


@dataclass
class AgentLeg:
    """One offer of a call to an agent phone."""

    ext: str
    rang_at: float  # wall clock
    answered_at: float | None = None
    ended_at: float | None = None
    declined: bool = False  # the agent let it ring (no answer, or still wrapping up)
    hung_up_by_agent: bool = False


@dataclass
class SipCall:
    """What one caller did and heard (wall-clock times, media-relative speech)."""

    spec: CallSpec
    started: float
    connected_at: float | None = None
    media_at: float | None = None
    ended_at: float | None = None
    status: int = 0
    reason: str = ""
    steps: list[str] = field(default_factory=list)
    speech: list[Interval] = field(default_factory=list)
    pauses: list[Interval] = field(default_factory=list)
    heard: float = 0.0
    ended_locally: bool = False
    legs: list[AgentLeg] = field(default_factory=list)
    error: str | None = None
    wav: str | None = None


@dataclass
class CallResult:
    sip: SipCall
    observed: Observed
    checks: list[Check]
    uniqueid: str | None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


@dataclass
class ScenarioResult:
    scenario: Scenario
    calls: list[CallResult]
    started: float
    seconds: float
    ami_events: int
    ami_dropped: int

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.calls)


# ------------------------------------------------------------------ the SIP side (worker thread)


class _AgentDesk:
    """The scenario's agent phones: ring, maybe answer, talk for a drawn time, hang up."""

    def __init__(self, stack: Any, specs: Sequence[AgentSpec], rng: random.Random,
                 registrar: str) -> None:
        self.stack = stack
        self.rng = rng
        self.legs: list[tuple[AgentLeg, Any]] = []
        self._free_at: dict[str, float] = {}
        self.phones = [
            stack.agent(spec.ext, spec.password, registrar=registrar, auto_answer_after=None,
                        on_incoming=lambda call, spec=spec: self._incoming(spec, call))
            for spec in specs
        ]

    def wait_registered(self, timeout: float = 10.0) -> None:
        for phone in self.phones:
            phone.wait_registered(timeout)

    def _incoming(self, spec: AgentSpec, call: Any) -> None:
        leg = AgentLeg(spec.ext, time.time())
        self.legs.append((leg, call))
        wrapping_up = time.monotonic() < self._free_at.get(spec.ext, 0.0)
        if wrapping_up or self.rng.random() < spec.no_answer:
            leg.declined = True
            return
        self.stack.later(spec.ring, lambda: self._answer(spec, call, leg))

    def _answer(self, spec: AgentSpec, call: Any, leg: AgentLeg) -> None:
        if call.is_ended or call.is_connected:
            return  # the caller left, or the queue moved on
        call.answer(200)
        leg.answered_at = time.time()
        talk = self.rng.uniform(*spec.talk)
        self.stack.later(talk, lambda: self._hang_up(spec, call, leg))

    def _hang_up(self, spec: AgentSpec, call: Any, leg: AgentLeg) -> None:
        if not call.is_ended:
            call.end()
            leg.hung_up_by_agent = True
        self._free_at[spec.ext] = time.monotonic() + spec.wrap_up

    def settle(self) -> None:
        for leg, call in self.legs:
            if leg.ended_at is None and call.disconnected_at is not None:
                leg.ended_at = _wall(call.disconnected_at)

    def unregister(self) -> None:
        for phone in self.phones:
            with contextlib.suppress(Exception):  # pjsua2 raises its own Error on a dead account
                phone.unregister()


_MONO_TO_WALL = time.time() - time.monotonic()


def _wall(mono: float) -> float:
    return _MONO_TO_WALL + mono


def _run_steps(call: Any, steps: Sequence[Step], prompt_timeout: float) -> tuple[
        list[str], list[Interval]]:
    """Like simulate.script.run, and also note when the caller paused (media time)."""
    done: list[str] = []
    pauses: list[Interval] = []
    for step in steps:
        if call.is_ended:
            done.append(f"call ended before: {step.describe()}")
            break
        if step.kind == "wait":
            end = call.wait_prompt_end(timeout=prompt_timeout)
            done.append(f"prompt ended at {end:.2f}s")
        elif step.kind == "pause":
            start = call.heard_seconds()
            call.stack.pump(step.seconds)
            pauses.append((start, call.heard_seconds()))
            done.append(step.describe())
        elif step.kind == "dtmf":
            call.send_dtmf(step.value, mask=step.secret)
            done.append(step.describe())
        elif step.kind == "hangup":
            call.end()
            done.append("hung up")
    return done, pauses


def _place(stack: Any, spec: CallSpec, pbx: str, desk: _AgentDesk | None,
           record_dir: Path | None) -> SipCall:
    from simulate.sip import SimError

    result = SipCall(spec, started=time.time())
    first_leg = len(desk.legs) if desk else 0
    line = stack.caller(spec.caller, name=spec.display_name, withheld=spec.withheld)
    call = line.call(f"sip:{spec.dial}@{pbx}")
    deadline = time.monotonic() + spec.max_seconds
    try:
        call.wait_connected(min(15.0, spec.max_seconds))
        result.steps, result.pauses = _run_steps(call, spec.steps, spec.prompt_timeout)
        if not call.is_ended:
            stack.wait_for(lambda: call.is_ended, max(0.1, deadline - time.monotonic()),
                           "the call to end")
    except SimError as exc:
        result.error = str(exc)
    finally:
        call.end()
        stack.pump(0.3)
    if desk is not None:
        # Let an agent leg that is still up finish before the next caller.
        stack.wait_for(lambda: all(c.is_ended for _, c in desk.legs[first_leg:]), 10.0,
                       "agent legs to end")
        desk.settle()
        result.legs = [leg for leg, _ in desk.legs[first_leg:]]
    result.status, result.reason = call.last_status, call.last_reason
    result.connected_at = _wall(call.confirmed_at) if call.confirmed_at else None
    result.media_at = _wall(call.media_at) if call.media_at else None
    result.ended_at = _wall(call.disconnected_at) if call.disconnected_at else time.time()
    result.ended_locally = call.ended_locally
    result.speech = call.speech().segments
    result.heard = call.heard_seconds()
    if record_dir is not None:
        record_dir.mkdir(parents=True, exist_ok=True)
        result.wav = str(call.save_wav(record_dir / f"{spec.name}.wav"))
    return result


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """pjlib prints its banner to fd 1 before any log setting applies; keep stdout clean for
    `--json` by sending fd 1 to fd 2 while the endpoint is created."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def run_sip(scenarios: Sequence[Scenario], *, pbx: str, seed: int = 1,
            record_dir: Path | None = None) -> list[list[SipCall]]:
    """Place every scenario's calls one after the other (blocking: run it in a worker thread).

    One `SipStack` serves all scenarios: pjsua2 allows one endpoint per process, and a second
    one created after the first was destroyed aborts the process (pj::Error from C++)."""
    from simulate.sip import SipStack

    rng = random.Random(seed)
    results: list[list[SipCall]] = []
    with _stdout_to_stderr():
        stack = SipStack()
    with stack:
        for scenario in scenarios:
            desk = None
            if scenario.agents:
                desk = _AgentDesk(stack, scenario.agents, rng, registrar=f"sip:{pbx}")
                desk.wait_registered()
            calls: list[SipCall] = []
            try:
                folder = record_dir / scenario.name if record_dir else None
                for spec in scenario.calls:
                    calls.append(_place(stack, spec, pbx, desk, folder))
                    stack.pump(0.3)
            finally:
                if desk is not None:
                    desk.unregister()
                    stack.pump(0.3)
            results.append(calls)
    return results


# ------------------------------------------------------------------ matching and checking


@dataclass
class _Channel:
    uniqueid: str
    created: float
    variables: dict[str, str] = field(default_factory=dict)


def _timestamp(event: AmiEvent, received: float) -> float:
    try:  # manager.conf: timestampevents = yes (Asterisk's own clock, microseconds)
        return float(event.fields.get("Timestamp", ""))
    except ValueError:
        return received


def trunk_channels(events: Sequence[tuple[float, AmiEvent]], dial: str) -> list[_Channel]:
    """The calls that entered from the trunk for `dial`, oldest first, with their variables."""
    channels: dict[str, _Channel] = {}
    for received, event in events:
        if isinstance(event, Newchannel):
            if event.context == "from-trunk" and event.exten == dial:
                channels[event.uniqueid] = _Channel(event.uniqueid, _timestamp(event, received))
        elif isinstance(event, VarSet) and event.uniqueid in channels:
            if event.variable in IVR_VARIABLES:
                channels[event.uniqueid].variables[event.variable] = event.value
    return sorted(channels.values(), key=lambda c: c.created)


def _match(call: SipCall, channels: list[_Channel], taken: set[str]) -> _Channel | None:
    """The first unclaimed trunk channel created within the call's lifetime."""
    end = call.ended_at or call.started + call.spec.max_seconds
    for ch in channels:
        if ch.uniqueid not in taken and call.started - 1.0 <= ch.created <= end:
            taken.add(ch.uniqueid)
            return ch
    return None


async def fetch_record(uniqueid: str, *, cli: Sequence[str] = CLI, store: str | None = None,
                       wait: float = 10.0) -> dict[str, Any] | None:
    """The engine's record of a call (`ivr-engine calls show ID --json`), once it has ended.

    The daemon writes records in the background: retry until the record shows an end."""
    args = [*cli, "calls", "show", uniqueid, "--json", *(["--path", store] if store else [])]
    deadline = time.monotonic() + wait
    while True:
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with asyncio.timeout(30.0):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode == 0:
            record: dict[str, Any] = json.loads(out)
            if record.get("ended"):
                return record
        elif proc.returncode != 1:  # 1: no such record (yet)
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): "
                               f"{err.decode(errors='replace').strip()[-500:]}")
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.3)


def observe(call: SipCall, channel: _Channel | None, record: dict[str, Any] | None) -> Observed:
    answered = next((leg for leg in call.legs if leg.answered_at is not None), None)
    end = call.ended_at or call.started
    media = call.media_at or call.connected_at or call.started
    # Dead air and prompts count for the IVR part: until an agent answered, else the end.
    ivr_end = answered.answered_at if answered and answered.answered_at else end
    until = max(0.0, min(call.heard, ivr_end - media))
    if call.ended_locally:
        ended_by = "caller"
    elif answered is not None and answered.hung_up_by_agent:
        ended_by = "agent"
    else:
        ended_by = "pbx"
    return Observed(
        connected=call.connected_at is not None,
        duration=end - call.started,
        prompts=sum(1 for s in call.speech if s[0] < until),
        dead_air=dead_air(call.speech, call.pauses, until),
        ended_by=ended_by,
        answered_by=answered.ext if answered else None,
        variables=dict(channel.variables) if channel else {},
        record=record,
        error=call.error,
    )


async def _collect(stream: EventStream, sink: list[tuple[float, AmiEvent]]) -> None:
    async for event in stream:
        sink.append((time.time(), event))


async def run_scenarios(
    scenarios: Sequence[Scenario],
    *,
    pbx: str = "127.0.0.1:5060",
    ami: AmiSettings | None = None,
    record_dir: Path | None = None,
    store: str | None = None,
    cli: Sequence[str] = CLI,
    seed: int = 1,
) -> list[ScenarioResult]:
    """Run every call of every scenario (in order) and check its expectations.

    `ami` None runs without AMI: the expectations fall back to the call record. `store` is
    passed to `calls show --path` (default: the settings' store, as the daemon uses)."""
    started = time.time()
    events: list[tuple[float, AmiEvent]] = []
    dropped = 0
    async with contextlib.AsyncExitStack() as stack:
        stream: EventStream | None = None
        if ami is not None:
            client = AmiClient(ami)
            await client.connect()
            stack.push_async_callback(client.close)
            stream = client.events("Newchannel", "VarSet", "Hangup", maxsize=50_000)
        async with asyncio.TaskGroup() as tg:
            if stream is not None:
                tg.create_task(_collect(stream, events), name="simulate-ami-events")
            try:
                sip_runs = await asyncio.to_thread(
                    run_sip, scenarios, pbx=pbx, seed=seed, record_dir=record_dir
                )
            finally:
                if stream is not None:
                    await asyncio.sleep(0.5)  # the last VarSet/Hangup events in flight
                    stream.close()
        if stream is not None:
            dropped = stream.dropped
    taken: set[str] = set()
    by_dial: dict[str, list[_Channel]] = {}
    out: list[ScenarioResult] = []
    for scenario, sip_calls in zip(scenarios, sip_runs, strict=True):
        results: list[CallResult] = []
        for call in sip_calls:
            dial = call.spec.dial
            channels = by_dial.setdefault(dial, trunk_channels(events, dial))
            channel = _match(call, channels, taken)
            uniqueid = channel.uniqueid if channel else None
            record = None
            if uniqueid and call.connected_at is not None:
                record = await fetch_record(uniqueid, cli=cli, store=store)
            observed = observe(call, channel, record)
            checks = evaluate(call.spec.expect, observed)
            if ami is not None and call.connected_at is not None:
                checks.insert(1, Check("matched on AMI", channel is not None,
                                       "a from-trunk channel", uniqueid or "none"))
            if call.spec.expect.needs_record and uniqueid and record is None:
                checks.append(Check("call record", False, "a finished record", "none within 10s"))
            results.append(CallResult(call, observed, checks, uniqueid))
        first = results[0].sip.started if results else started
        last = results[-1].sip.ended_at if results and results[-1].sip.ended_at else first
        out.append(ScenarioResult(scenario, results, first, last - first, len(events), dropped))
    return out
