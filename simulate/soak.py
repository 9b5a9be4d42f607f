"""The soak: hours of a bank's day compressed into minutes, then the checks of issue #8.

```
ivr-engine loadtest --soak 30m --agents 40 [--rate R]    (R defaults to half the capacity)
  the ACD's daemon, the load flow, SIPp agents and callers as in simulate/acdload.py, plus:
  callers      a share hang up after a drawn patience (in the queue, ringing or talking)
  agents       a share of offers not answered (480 after the ring: ring-no-answer)
  chaos        every few seconds one agent is paused or logged out over the MQTT agent
               commands, and resumed / logged in again a little later
  sampled      every second: the daemon's RSS, open file descriptors (/proc/<pid>/fd),
               threads (/proc/<pid>/status)
  afterwards   the checks below, on a drained system
```

Checks (each a name, pass/fail and the evidence):
- no double offers: no offer to an agent who held an offer or a call, nor of a call already
  offered (the ACD's events), and no INVITE to a phone still ringing or talking (the phones);
- no agent stuck: after the drain, every agent the chaos left logged in is `ready` (none
  `reserved` or `on-call`);
- no call lost: every SIPp call ended, none failed (abandons are callers' choices), and every
  call the daemon took has an end and an outcome in its record (`ivr-engine calls list`);
- RSS flat: the median RSS of the last tenth of the soak within 10% of the median of the tenth
  after the warm-up (the first fifth);
- no descriptor growth: open fds after the drain no more than before the first call + 2;
- asyncio tasks: not readable from outside the daemon today (see docs/load/README.md);
  threads are reported instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from simulate import acdload as al
from simulate.loadtest import LoadTestError


def parse_duration(text: str) -> float:
    """`30m`, `3m`, `90s`, `1h`, `45` (seconds) -> seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError:
        raise LoadTestError(f"soak duration {text!r}: e.g. 30m, 3m, 90s") from None
    if not 10 <= value <= 24 * 3600:
        raise LoadTestError("soak duration: 10 s to 24 h")
    return value


@dataclass(frozen=True)
class SoakPlan:
    duration: float
    agents: al.AgentPlan
    rate: float  # calls/s
    hangup: float = 0.1  # share of callers who hang up after a drawn patience
    patience: tuple[float, float] = (2.0, 40.0)
    chaos_every: float = 5.0  # seconds between two agent disruptions
    away: tuple[float, float] = (3.0, 15.0)  # seconds an agent stays paused / logged out
    max_wait: float = 300.0
    seed: int = 11

    def callers(self) -> al.CallerPlan:
        return al.CallerPlan(rate=self.rate, duration=self.duration, hangup=self.hangup,
                             patience=self.patience, max_wait=self.max_wait, seed=self.seed)


@dataclass(frozen=True)
class Sample:
    t: float
    rss: int
    fds: int
    threads: int


def sample(pid: int) -> Sample:
    rss = threads = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return Sample(time.time(), rss, len(os.listdir(f"/proc/{pid}/fd")), threads)


async def sample_loop(pid: int, sink: list[Sample], every: float = 1.0) -> None:
    while True:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            sink.append(sample(pid))
        await asyncio.sleep(every)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class SoakResult:
    plan: dict[str, Any]
    step: al.RouterStep
    checks: list[Check]
    chaos: dict[str, int]
    samples: list[Sample]
    records: dict[str, int]
    stuck: list[str]
    started: float
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "ok": self.ok, "checks": [asdict(c) for c in self.checks],
                "chaos": self.chaos, "records": self.records, "stuck": self.stuck,
                "step": self.step.to_dict(), "context": self.context,
                "samples": {"t": [s.t - self.started for s in self.samples],
                            "rss": [s.rss for s in self.samples],
                            "fds": [s.fds for s in self.samples],
                            "threads": [s.threads for s in self.samples]}}


async def chaos(mqtt: al.MqttWatcher, plan: SoakPlan, counts: dict[str, int],
                away: set[str]) -> None:
    """Every `chaos_every` s: one agent paused or logged out, back after a drawn time."""
    rng = random.Random(plan.seed)

    async def disrupt(agent: str, verb: str) -> None:
        away.add(agent)
        try:
            reply = await mqtt.command(verb, agent, reason="soak" if verb == "pause" else "")
            _bump(counts, verb if reply.get("ok") else f"{verb} refused: {_why(reply)}")
            await asyncio.sleep(rng.uniform(*plan.away))
            back = "resume" if verb == "pause" else "login"
            reply = await mqtt.command(back, agent)
            _bump(counts, back if reply.get("ok") else f"{back} refused: {_why(reply)}")
        except TimeoutError:
            _bump(counts, "no reply")
        finally:
            away.discard(agent)

    async with asyncio.TaskGroup() as tg:
        while True:
            await asyncio.sleep(plan.chaos_every)
            # Agents the ACD paused after missed rings come back, as a person would.
            with contextlib.suppress(TimeoutError):
                listed = await mqtt.command("list")
                for a in listed.get("agents", []):
                    if a.get("state") == "paused" and a.get("reason") != "soak" \
                            and a.get("agent") not in away:
                        reply = await mqtt.command("resume", str(a["agent"]))
                        _bump(counts, "resumed after missed rings" if reply.get("ok")
                              else f"resume refused: {_why(reply)}")
            free = [a for a in plan.agents.agents if a not in away]
            if len(free) <= plan.agents.count // 2:
                continue  # keep at least half the agents working
            agent = rng.choice(free)
            verb = rng.choice(("pause", "logout"))
            tg.create_task(disrupt(agent, verb), name=f"soak-{verb}-{agent}")


def _why(reply: dict[str, Any]) -> str:
    """The kind of refusal, without the agent's number (the counts group them)."""
    return "".join(c for c in str(reply.get("error", "?"))[:60] if not c.isdigit()).strip()


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def records_of(store: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "ivr_engine.cli", "calls", "list", "--json", "--limit",
         "1000000", "--path", str(store)], capture_output=True, text=True, timeout=300,
        check=False)
    if proc.returncode != 0:
        raise LoadTestError(f"ivr-engine calls list failed: {proc.stderr.strip()[-300:]}")
    data = json.loads(proc.stdout)
    return list(data if isinstance(data, list) else data.get("calls", []))


def _median(xs: list[int]) -> float:
    return float(statistics.median(xs)) if xs else 0.0


def evaluate(plan: SoakPlan, step: al.RouterStep, samples: list[Sample], started: float,
             before_fds: int | None, after_fds: int | None, states: dict[str, str],
             records: list[dict[str, Any]]) -> tuple[list[Check], list[str], dict[str, int]]:
    checks = [
        Check("no double offers (router events)", not step.double_offers,
              f"{len(step.double_offers)} found; {step.offers} offers"
              + (f": {step.double_offers[:3]}" if step.double_offers else "")),
        Check("no double offers (agents' phones)", not step.phone_double_offers,
              f"{len(step.phone_double_offers)} found"
              + (f": {step.phone_double_offers[:3]}" if step.phone_double_offers else "")),
    ]
    stuck = sorted(a for a, s in states.items() if s in ("reserved", "on-call"))
    checks.append(Check("no agent stuck reserved or on a call", not stuck and bool(states),
                        f"states after the drain: {dict(sorted(_count(states).items()))}"
                        + (f"; stuck: {stuck}" if stuck else "")))
    ended = sum(1 for r in records if r.get("ended") and r.get("outcome"))
    rec = {"records": len(records), "with an end": ended}
    lost = step.offered - step.answered - step.abandoned
    checks.append(Check(
        "no call lost", step.failed == 0 and lost == 0 and ended == len(records)
        and step.offered == plan.callers().calls,
        f"{step.offered} offered of {plan.callers().calls}: {step.answered} answered by an "
        f"agent, {step.abandoned} abandoned, {step.failed} failed {step.failures or ''}; "
        f"{len(records)} call records, {ended} with an end and an outcome"))
    warm = started + plan.duration * 0.2
    tenth = plan.duration * 0.1
    base = [s.rss for s in samples if warm <= s.t < warm + tenth]
    last = [s.rss for s in samples if started + plan.duration - tenth <= s.t
            < started + plan.duration]
    b, e = _median(base), _median(last)
    growth = (e - b) / b if b else float("inf")
    checks.append(Check("RSS flat within 10% after warm-up", bool(base and last)
                        and growth <= 0.10,
                        f"median RSS {b / 1e6:.1f} MB after warm-up, {e / 1e6:.1f} MB at the "
                        f"end ({growth:+.1%}); peak "
                        f"{max((s.rss for s in samples), default=0) / 1e6:.1f} MB"))
    checks.append(Check("no growth in open file descriptors",
                        before_fds is not None and after_fds is not None
                        and after_fds <= before_fds + 2,
                        f"{before_fds} before the first call, {after_fds} after the drain; "
                        f"max {max((s.fds for s in samples), default=0)} during"))
    threads = [s.threads for s in samples]
    checks.append(Check("no growth in threads (asyncio tasks: not exposed by the daemon)",
                        bool(threads) and threads[-1] <= threads[0] + 2,
                        f"threads {threads[0] if threads else '-'} at the start, "
                        f"{threads[-1] if threads else '-'} at the end, max "
                        f"{max(threads, default=0)}"))
    return checks, stuck, rec


def _count(states: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in states.values():
        out[s] = out.get(s, 0) + 1
    return out


async def run_soak(pbx: Any, folder: Path, plan: SoakPlan, *, sl_threshold: float = 20.0
                   ) -> SoakResult:
    plan.agents.check()
    plan.callers().check()
    target = f"127.0.0.1:{pbx.sip_port}"
    ami = al.AmiWatcher(pbx.listeners.ami_port)
    await ami.start()
    counts: dict[str, int] = dict.fromkeys(("pause", "resume", "logout", "login"), 0)
    samples: list[Sample] = []
    try:
        async with al.AgentPhones(pbx, plan.agents, target=target,
                                  keep_errors=folder / "agents-sipp-errors.log") as phones, \
                al.router_daemon(folder, "acd", plan.agents, soak=True) as (daemon, prefix):
            pid = daemon.proc.pid
            mqtt = al.MqttWatcher(prefix)
            await mqtt.start()
            sampler: asyncio.Task[None] | None = None
            try:
                await al.wait_agents_ready(mqtt, plan.agents)
                before_fds = sample(pid).fds
                started = time.time()
                away: set[str] = set()
                sampler = asyncio.get_running_loop().create_task(
                    sample_loop(pid, samples), name="soak-proc")
                chaos_task = asyncio.get_running_loop().create_task(
                    chaos(mqtt, plan, counts, away), name="soak-chaos")
                try:
                    step = await al.run_router_step(
                        pbx, "acd", plan.callers(), plan.agents, router_index=0, step=0,
                        daemon_pid=pid, daemon_log=daemon.log, ami=ami, mqtt=mqtt,
                        phones=phones, sl_threshold=sl_threshold, folder=folder)
                finally:
                    chaos_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await chaos_task
                # Agents the chaos left paused or logged out come back: the drained system is
                # checked with everybody in.
                for agent in plan.agents.agents:
                    with contextlib.suppress(TimeoutError):
                        await mqtt.command("login", agent)
                        await mqtt.command("resume", agent)
                await asyncio.sleep(3.0)
                reply = await mqtt.command("list")
                states = {a["agent"]: a["state"] for a in reply.get("agents", [])}
                after_fds = sample(pid).fds
            finally:
                if sampler is not None:
                    sampler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sampler
                await mqtt.close()
            records = await asyncio.to_thread(records_of, daemon.workdir / "ivr.sqlite3")
    finally:
        await ami.close()
    checks, stuck, rec = evaluate(plan, step, samples, started, before_fds, after_fds, states,
                                  records)
    plan_d = asdict(plan)
    plan_d["agents"] = asdict(plan.agents)
    plan_d["capacity calls/s"] = round(plan.agents.capacity, 3)
    return SoakResult(plan_d, step, checks, counts, samples, rec, stuck, started, {
        "machine": f"{os.cpu_count()} cores; SIPp, Asterisk and the daemon share them",
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "daemon": f"pid {pid}, log level INFO",
    })


# ------------------------------------------------------------------ report


def markdown(result: SoakResult, *, command: str) -> str:
    p, s = result.plan, result.step
    lines = [f"# Soak: {p['duration'] / 60:g} minutes through the ACD with chaos", "",
             f"Command: `{command}`", "",
             f"- agents: {p['agents']['count']}, ring {p['agents']['ring']} s, talk "
             f"{p['agents']['talk']} s, ring-no-answer {p['agents']['no_answer']:.0%}; capacity "
             f"about {p['capacity calls/s']} calls/s; offered {p['rate']:g} calls/s",
             f"- callers: {p['hangup']:.0%} hang up after {p['patience']} s; "
             f"chaos every {p['chaos_every']:g} s: {result.chaos}",
             *(f"- {k}: {v}" for k, v in result.context.items()),
             "", f"**{'PASS' if result.ok else 'FAIL'}**", "", "| check | result | evidence |",
             "|---|---|---|"]
    for c in result.checks:
        lines.append(f"| {c.name} | {'pass' if c.ok else '**FAIL**'} | {c.detail} |")
    lines += ["", f"Calls: offered {s.offered}, answered {s.answered}, abandoned {s.abandoned}, "
              f"failed {s.failed}; ASA {s.asa or 0:.2f} s, service level "
              f"{s.service_level or 0:.1f}% within {s.sl_threshold:g} s, AHT {s.aht or 0:.2f} s; "
              f"decision latency p50/p99 {s.decision_ms_p50 or 0:.0f}/{s.decision_ms_p99 or 0:.0f}"
              f" ms over {s.decisions} decisions; daemon CPU {s.daemon_cpu_percent or 0:.0f}%",
              "", "Plot: `soak.png` (calls in system and waiting, service level, decision "
              "latency, daemon RSS / fds / threads).", ""]
    return "\n".join(lines)


def plot(result: SoakResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.step.series
    fig, axes = plt.subplots(4, 1, figsize=(9, 12), sharex=True)
    ax = axes[0]
    ax.plot(s["t"], s["in_system"], label="calls in system")
    ax.plot(s["t"], s["waiting"], label="waiting for an agent")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_ylabel("calls")
    ax.set_title(f"soak {result.plan['duration'] / 60:g} min at {result.plan['rate']:g} calls/s: "
                 f"{'PASS' if result.ok else 'FAIL'}")
    ax = axes[1]
    ax.plot(s["t"], s["service_level"], ".", color="tab:green", markersize=3)
    ax.set_ylabel(f"% within {result.step.sl_threshold:g} s")
    ax.set_ylim(-5, 105)
    ax = axes[2]
    ax.plot(s["t"], s["decision_ms_p50"], ".", label="decision p50", markersize=3)
    ax.plot(s["t"], s["decision_ms_p99"], ".", label="decision p99", markersize=3)
    ax.set_ylabel("ms")
    ax.set_yscale("symlog", linthresh=1)
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[3]
    t = [x.t - result.started for x in result.samples]
    ax.plot(t, [x.rss / 1e6 for x in result.samples], color="tab:purple", label="RSS MB")
    ax.set_ylabel("RSS MB")
    ax2 = ax.twinx()
    ax2.plot(t, [x.fds for x in result.samples], color="tab:red", label="open fds")
    ax2.plot(t, [x.threads for x in result.samples], color="tab:gray", label="threads")
    ax2.set_ylabel("fds / threads")
    ax2.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("seconds since the first call")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(result: SoakResult, folder: Path, *, command: str) -> Path:
    from simulate.loadreport import _no_nan

    folder.mkdir(parents=True, exist_ok=True)
    data = {"command": command, **result.to_dict()}
    (folder / "report.json").write_text(json.dumps(_no_nan(data), indent=1, allow_nan=False),
                                        encoding="utf-8")
    plot(result, folder / "soak.png")
    md = folder / "report.md"
    md.write_text(markdown(result, command=command), encoding="utf-8")
    return md
