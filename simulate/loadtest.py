"""Load tests of the IVR-only journey: SIPp callers at a Poisson rate, the daemon watched.

```
ivr-engine loadtest --rate 300 --duration 60
  daemon     `ivr-engine serve` spawned with its own SQLite files (or --daemon-pid to watch one)
  callers    an injection file: seeded customers, non-customers, withheld (the mix)
  SIPp       from the dev PBX root (DevPbx.sipp_cmd), simulate/sipp/ivr_only.xml:
             INVITE 4008 -> 200 -> ACK -> INFO digit -> BYE; a log line per call event
  sampler    /proc/<daemon>/stat and status every 0.5 s: CPU, RSS, peak RSS (VmHWM)
  after      SIPp's per-call log -> offered/answered/failed, answer latency, calls in system;
             SIPp's statistics -> its failure counters; the daemon's log -> calls it served,
             calls that failed, AGI step latency (DEBUG lines); the PBX log -> dialplan
             fallbacks (ivr-fallback: the daemon did not take the call)
```

Several rates (`--rate 100,200,300`) run one after the other against the same daemon; the
highest one with zero failed calls is the rate sustained.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import os
import random
import re
import shutil
import signal
import statistics
import string
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

XML_TEMPLATE = Path(__file__).parent / "sipp" / "ivr_only.xml"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MIX_KINDS = ("known", "unknown", "withheld")


class LoadTestError(RuntimeError):
    """The load test could not run (SIPp or the daemon would not start, bad plan)."""


@dataclass(frozen=True)
class Plan:
    rate: float  # calls per second (mean of the Poisson arrivals)
    duration: float  # seconds of arrivals
    hold: float = 1.0  # seconds from the key press to the caller's BYE
    digit_at: float = 0.5  # seconds from the answer to the key press (barges into the greeting)
    digits: str = "1"  # keys drawn from, one per call
    mix: Mapping[str, float] = field(default_factory=lambda: {"known": 0.7, "unknown": 0.2,
                                                               "withheld": 0.1})
    arrival_spread: float = 1.0  # mean seconds of the exponential shift (Poisson arrivals)
    max_calls: int = 6000  # SIPp's -l: calls alive at once, the arrival delay included
    # SIPp's RTP port in the SDP (outside the PBX's 10000-19999): SIPp sends no audio; the
    # port must be non-zero, or Asterisk refuses the offer (488: a rejected stream).
    media_port: int = 30000
    seed: int = 7

    @property
    def calls(self) -> int:
        return max(1, round(self.rate * self.duration))

    def check(self) -> None:
        if not 0 < self.rate <= 2000:
            raise LoadTestError("rate must be in (0, 2000] calls/s")
        if not 0 < self.duration <= 3600:
            raise LoadTestError("duration must be in (0, 3600] s")
        if self.hold < 0 or self.digit_at < 0:
            raise LoadTestError("hold and digit_at must be >= 0")
        if not self.digits or set(self.digits) - set("0123456789*#"):
            raise LoadTestError("digits: one or more of 0-9 * #")
        if set(self.mix) - set(MIX_KINDS) or not self.mix or sum(self.mix.values()) <= 0:
            raise LoadTestError(f"mix: weights of {', '.join(MIX_KINDS)}")
        if any(w < 0 for w in self.mix.values()):
            raise LoadTestError("mix weights must be >= 0")


def parse_mix(text: str) -> dict[str, float]:
    """`known=0.7,unknown=0.2,withheld=0.1` -> weights."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in MIX_KINDS:
            raise LoadTestError(f"mix: {part!r}; use e.g. known=0.7,unknown=0.2,withheld=0.1")
        try:
            out[name] = float(value)
        except ValueError:
            raise LoadTestError(f"mix: {part!r}: weight is not a number") from None
    return out


# ------------------------------------------------------------------ callers


def caller_rows(plan: Plan, known_numbers: Sequence[str], count: int) -> list[str]:
    """SIPp injection rows `number;host;digit`, drawn by the mix (deterministic per seed)."""
    rng = random.Random(plan.seed)
    kinds = [k for k in MIX_KINDS if plan.mix.get(k, 0) > 0]
    weights = [plan.mix[k] for k in kinds]
    if "known" in kinds and not known_numbers:
        raise LoadTestError("the mix asks for known customers but none were given")
    rows = []
    for _ in range(count):
        kind = rng.choices(kinds, weights)[0]
        digit = rng.choice(plan.digits)
        if kind == "known":
            rows.append(f"{rng.choice(known_numbers)};127.0.0.1;{digit}")
        elif kind == "unknown":
            # Beijing landlines: the synthetic book holds mobiles only, so never a customer.
            rows.append(f"010{rng.randrange(2 * 10**7, 9 * 10**7):08d};127.0.0.1;{digit}")
        else:
            rows.append(f"anonymous;anonymous.invalid;{digit}")
    return rows


def seeded_numbers(customers: int) -> list[str]:
    """The numbers `ivr-engine cif seed --customers N` loads (dev data: same seed, same book)."""
    from ivr_engine.cif.seed import NON_CUSTOMER_NUMBERS, PERSONA_NUMBERS, synthetic

    book = synthetic(customers, seed=20261125, today=dt.date.today(), pin_hash="-")
    numbers = [p.number for c in book for p in c.phones]
    return numbers + [n for n in PERSONA_NUMBERS.values() if n not in NON_CUSTOMER_NUMBERS]


# ------------------------------------------------------------------ the daemon and /proc


@dataclass(frozen=True)
class ProcSample:
    t: float  # wall clock
    cpu: float  # seconds of user + system CPU so far
    rss: int  # bytes
    hwm: int  # peak RSS so far, bytes


def read_proc(pid: int) -> ProcSample:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read().decode()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    rss = hwm = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return ProcSample(time.time(), cpu, rss, hwm)


async def sample_proc(pid: int, sink: list[ProcSample], every: float = 0.5) -> None:
    while True:
        try:
            sink.append(read_proc(pid))
        except (FileNotFoundError, ProcessLookupError):
            return  # the daemon is gone: the report says so
        await asyncio.sleep(every)


class SpawnedDaemon:
    """`ivr-engine serve` with its own SQLite files and log under `workdir`."""

    def __init__(self, workdir: Path, *, log_level: str, customers: int,
                 profile: Path | None = None) -> None:
        self.workdir = workdir
        self.log = workdir / "daemon.log"
        self.customers = customers
        self.profile = profile
        self.env = {
            **os.environ,
            "IVR_ENGINE_STORE_PATH": str(workdir / "ivr.sqlite3"),
            "IVR_ENGINE_STORE_AUDIT_PATH": str(workdir / "audit.sqlite3"),
            "IVR_ENGINE_FLOWS_DEPLOY_DIR": str(workdir / "deployed"),
            "IVR_ENGINE_LOG_FILE": str(self.log),
            "IVR_ENGINE_LOG_LEVEL": log_level,
            # A load run publishes nothing anyone reads; a missing broker must not matter.
            "IVR_ENGINE_MQTT_ENABLED": os.environ.get("IVR_ENGINE_MQTT_ENABLED", "false"),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log.unlink(missing_ok=True)  # a stale "serving FastAGI" must not count as ready
        cli = [sys.executable, "-m", "ivr_engine.cli"]
        subprocess.run([*cli, "cif", "seed", "--customers", str(self.customers)], env=self.env,
                       check=True, capture_output=True, timeout=600)
        serve = [*cli, "serve"]
        if self.profile is not None:
            serve = [sys.executable, "-m", "cProfile", "-o", str(self.profile),
                     "-m", "ivr_engine.cli", "serve"]
        out = open(self.workdir / "daemon.out", "wb")  # noqa: SIM115 (the child keeps the fd)
        with out:
            # stderr carries a copy of every log line (a cost at DEBUG, measured with it).
            self.proc = subprocess.Popen(serve, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out_text = (self.workdir / "daemon.out").read_text(errors="replace")
                last = out_text.strip().splitlines()[-1:] or ["(no output)"]
                raise LoadTestError(f"the daemon exited with {self.proc.returncode}: {last[0]}"
                                    f" (see {self.workdir / 'daemon.out'})")
            if self.log.exists() and "serving FastAGI" in self.log.read_text(errors="replace"):
                return self.proc.pid
            time.sleep(0.1)
        self.stop()
        raise LoadTestError(f"the daemon did not start within {timeout:.0f}s")

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        return code


# ------------------------------------------------------------------ SIPp


@dataclass
class CallTimes:
    offered: float  # seconds since the first offer
    answered: float | None = None
    ended: float | None = None


def parse_sipp_log(text: str) -> list[CallTimes]:
    """`tick;call;event` lines (ms) -> per-call times in seconds from the first offer."""
    raw: dict[int, dict[str, int]] = defaultdict(dict)
    for line in text.splitlines():
        parts = line.strip().split(";")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            continue
        raw[int(parts[1])][parts[2]] = int(parts[0])
    offers = [ev["offered"] for ev in raw.values() if "offered" in ev]
    if not offers:
        return []
    t0 = min(offers)
    calls = []
    for ev in raw.values():
        if "offered" not in ev:
            continue
        calls.append(CallTimes(
            (ev["offered"] - t0) / 1000,
            (ev["answered"] - t0) / 1000 if "answered" in ev else None,
            (ev["ended"] - t0) / 1000 if "ended" in ev else None,
        ))
    calls.sort(key=lambda c: c.offered)
    return calls


def parse_sipp_stats(text: str) -> dict[str, str]:
    """The last row of SIPp's `-trace_stat` file, by column name."""
    rows = [line.rstrip(";\n").split(";") for line in text.splitlines() if line.strip()]
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def _xml(plan: Plan) -> str:
    return string.Template(XML_TEMPLATE.read_text(encoding="ascii")).substitute(
        arrival_ms=max(1, round(plan.arrival_spread * 1000)),
        digit_ms=round(plan.digit_at * 1000),
        hold_ms=round(plan.hold * 1000),
    )


@dataclass
class SippRun:
    returncode: int
    calls: list[CallTimes]
    stats: dict[str, str]
    errors: str
    started: float  # wall clock when SIPp was started
    seconds: float


async def run_sipp(pbx: Any, plan: Plan, rows: Sequence[str], *, target: str) -> SippRun:
    """Run SIPp in the dev PBX root for `plan`; its files live in the root's /tmp."""
    inside = f"/tmp/ivr-loadtest-{os.getpid()}-{time.monotonic_ns()}"
    host_dir = pbx.in_root(inside)
    host_dir.mkdir(parents=True)
    try:
        (host_dir / "scenario.xml").write_text(_xml(plan), encoding="ascii")
        (host_dir / "callers.csv").write_text("SEQUENTIAL\n" + "\n".join(rows) + "\n",
                                              encoding="ascii")
        argv = pbx.sipp_cmd(
            target, "-sf", f"{inside}/scenario.xml", "-inf", f"{inside}/callers.csv",
            "-i", "127.0.0.1", "-mi", "127.0.0.1", "-mp", str(plan.media_port),
            "-r", f"{plan.rate:g}", "-rp", "1000", "-m", str(plan.calls),
            "-l", str(plan.max_calls),
            "-trace_logs", "-log_file", f"{inside}/calls.log",
            "-trace_stat", "-stf", f"{inside}/stats.csv", "-fd", "1",
            "-trace_err", "-error_file", f"{inside}/errors.log",
            "-max_recv_loops", "10000", "-nostdin", "-timeout", f"{plan.duration + 120:.0f}s",
            "-timeout_error",
        )
        started = time.time()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(plan.duration + 180):
                _, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise LoadTestError("SIPp did not finish in time") from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        seconds = time.time() - started

        def read(name: str) -> str:
            p = host_dir / name
            return p.read_text(errors="replace") if p.exists() else ""

        errors = read("errors.log")
        if err:
            errors = err.decode(errors="replace") + errors
        return SippRun(proc.returncode or 0, parse_sipp_log(read("calls.log")),
                       parse_sipp_stats(read("stats.csv")), errors[-4000:], started, seconds)
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)


# ------------------------------------------------------------------ the daemon's log

_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+)\s+(\S+) \[([^\]]*)\] (.*)$"
)


def _ts(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass
class DaemonLog:
    calls: int = 0  # "call from ..." lines: calls the daemon served
    failed: int = 0  # calls with a handler failure, a FastAGI error or an AGI FAILURE
    flow_errors: int = 0  # calls whose flow hit an error (the caller went to `technical`)
    errors: list[str] = field(default_factory=list)
    think_ms: list[float] = field(default_factory=list)  # reply read -> next command written
    think_at: list[float] = field(default_factory=list)  # wall time of each think sample
    round_trip_ms: dict[str, list[float]] = field(default_factory=dict)  # by AGI verb


# A call that failed in the daemon: the handler failed (the caller went to a person through
# the dialplan), a FastAGI error, or the flow hit an error (the caller went to `technical`).
_FAILURE = ("call failed", "call handler failed", "call ended on a FastAGI error",
            "AGI ended with FAILURE", "flow error")


def parse_daemon_log(lines: Iterator[str], since: float, until: float) -> DaemonLog:
    """Count calls and failures; AGI step latency from the DEBUG `->`/`<-` lines of each call.

    Timestamps have millisecond resolution: latencies are whole milliseconds."""
    out = DaemonLog()
    last_reply: dict[str, float] = {}
    sent: dict[str, tuple[float, str]] = {}
    failed: set[str] = set()
    flow_errors: set[str] = set()
    for line in lines:
        m = _LINE.match(line)
        if not m:
            continue
        t = _ts(m.group(1))
        if t < since or t > until:
            continue
        call, msg = m.group(4), m.group(5)
        if msg.startswith("call from "):
            out.calls += 1
        elif msg.startswith(_FAILURE):  # "AGI ended with FAILURE" is an INFO line
            (flow_errors if msg.startswith("flow error") else failed).add(call)
            if len(out.errors) < 20:
                out.errors.append(line.strip()[:300])
        elif msg.startswith("-> "):
            verb = " ".join(msg[3:].split()[:2]).upper()
            if call in last_reply:
                out.think_ms.append((t - last_reply.pop(call)) * 1000)
                out.think_at.append(t)
            sent[call] = (t, verb)
        elif msg.startswith("<- ") and call in sent:
            t_sent, verb = sent.pop(call)
            out.round_trip_ms.setdefault(verb, []).append((t - t_sent) * 1000)
            last_reply[call] = t
    out.failed = len(failed - flow_errors)
    out.flow_errors = len(flow_errors)
    return out


def _size(path: Path | None) -> int:
    try:
        return os.stat(path).st_size if path is not None else 0
    except FileNotFoundError:
        return 0


def read_lines(path: Path, start: int) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        f.seek(start)
        yield from f


# ------------------------------------------------------------------ results


def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


@dataclass
class StepResult:
    plan: Plan
    offered: int
    answered: int
    completed: int
    failed: int
    failed_sipp: int
    fallbacks: int
    daemon_calls: int
    daemon_failed: int
    flow_errors: int  # calls that met a flow error: content, not capacity (see errors)
    arrival_rate: float  # offers per second measured over the arrival window
    dispersion: float  # variance/mean of per-second offers (1 for Poisson)
    answer_ms_p50: float | None
    answer_ms_p99: float | None
    agi_think_ms_p50: float | None
    agi_think_ms_p99: float | None
    agi_round_trip_ms: dict[str, dict[str, float | None]]
    peak_in_system: int
    cpu_percent: float | None  # daemon CPU over the run, % of one core
    asterisk_cpu_percent: float | None  # Asterisk's CPU over the run, % of one core
    machine_cpu_percent: float | None  # all CPUs busy (/proc/stat), % of the machine
    rss_start: int | None
    rss_peak: int | None
    bytes_per_call: float | None  # (peak RSS - RSS before) / peak calls in system
    sipp_seconds: float
    sipp_failures: dict[str, str]
    errors: list[str]
    series: dict[str, list[float]]

    @property
    def zero_failures(self) -> bool:
        return self.failed == 0 and self.offered == self.plan.calls

    @property
    def capacity_failures(self) -> int:
        """Failed calls that were not flow errors: SIP, AGI, dialplan fallbacks."""
        return self.failed - self.flow_errors

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["plan"] = {**asdict(self.plan), "calls": self.plan.calls}
        d["zero_failures"] = self.zero_failures
        d["capacity_failures"] = self.capacity_failures
        return d


def in_system(calls: Sequence[CallTimes], at: Sequence[float]) -> list[int]:
    """Calls answered and not yet ended at each instant (the daemon holds these)."""
    starts = sorted(c.answered for c in calls if c.answered is not None)
    ends = sorted(c.ended if c.ended is not None else math.inf
                  for c in calls if c.answered is not None)
    import bisect

    return [bisect.bisect_right(starts, t) - bisect.bisect_right(ends, t) for t in at]


def _cpu_percent(samples: Sequence[ProcSample]) -> float | None:
    if len(samples) < 2 or samples[-1].t <= samples[0].t:
        return None
    return 100 * (samples[-1].cpu - samples[0].cpu) / (samples[-1].t - samples[0].t)


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return float(sum(values) - idle), float(sum(values))


def summarise(plan: Plan, sipp: SippRun, procs: Sequence[ProcSample], dlog: DaemonLog | None,
              fallbacks: int, *, sl_threshold: float = 1.0,
              asterisk: Sequence[ProcSample] = (),
              machine: tuple[tuple[float, float], tuple[float, float]] | None = None,
              ) -> StepResult:
    calls = sipp.calls
    answered = [c for c in calls if c.answered is not None]
    completed = [c for c in calls if c.ended is not None]
    stats = sipp.stats
    failed_sipp = int(stats.get("FailedCall(C)", "0") or 0)
    # A call is failed when SIPp says so, when it never completed, or when the dialplan had to
    # take it because the daemon did not (ivr-fallback), or the daemon failed it.
    daemon_failed = dlog.failed if dlog else 0
    flow_errors = dlog.flow_errors if dlog else 0
    failed = (max(failed_sipp, len(calls) - len(completed)) + fallbacks + daemon_failed
              + flow_errors)
    answer_ms = [(c.answered - c.offered) * 1000 for c in answered if c.answered is not None]
    horizon = max((c.ended or c.answered or c.offered) for c in calls) if calls else 0.0
    seconds = list(range(int(horizon) + 2))
    per_sec = [0] * len(seconds)
    for c in calls:
        per_sec[min(int(c.offered), len(per_sec) - 1)] += 1
    # The steady part of the arrivals: the exponential shift ramps the first seconds up.
    lead = math.ceil(3 * plan.arrival_spread)
    window = per_sec[lead : int(plan.duration)] if plan.duration > lead + 2 else per_sec[:1]
    mean = statistics.fmean(window) if window else 0.0
    dispersion = statistics.pvariance(window) / mean if mean else 0.0
    sl, ans_p50, ans_p99 = [], [], []
    by_sec: dict[int, list[float]] = defaultdict(list)
    for c in calls:
        by_sec[int(c.offered)].append(
            (c.answered - c.offered) if c.answered is not None else math.inf)
    for s in seconds:
        xs = by_sec.get(s, [])
        sl.append(100.0 * sum(1 for x in xs if x <= sl_threshold) / len(xs) if xs else math.nan)
        finite = [x * 1000 for x in xs if x != math.inf]
        ans_p50.append(pct(finite, 50) or math.nan)
        ans_p99.append(pct(finite, 99) or math.nan)
    system = in_system(calls, [float(s) for s in seconds])
    offset = sipp.started  # wall time of SIPp's start; SIPp's first offer comes right after it
    cpu_series, rss_series = [], []
    for s in seconds:
        near = [p for p in procs if offset + s <= p.t < offset + s + 1]
        rss_series.append(near[-1].rss / 1e6 if near else math.nan)
    for a, b in zip(procs, procs[1:], strict=False):
        if b.t > a.t:
            cpu_series.append(((b.t - offset), 100 * (b.cpu - a.cpu) / (b.t - a.t)))
    cpu_percent = None
    rss_start = rss_peak = None
    bytes_per_call = None
    if len(procs) >= 2:
        cpu_percent = 100 * (procs[-1].cpu - procs[0].cpu) / (procs[-1].t - procs[0].t)
        rss_start = procs[0].rss
        rss_peak = max(p.rss for p in procs)
        peak = max(system, default=0)
        if peak:
            bytes_per_call = (rss_peak - rss_start) / peak
    think_p50 = think_p99 = None
    round_trip: dict[str, dict[str, float | None]] = {}
    think_series_p50: list[float] = []
    think_series_p99: list[float] = []
    if dlog is not None:
        think_p50, think_p99 = pct(dlog.think_ms, 50), pct(dlog.think_ms, 99)
        for verb, xs in sorted(dlog.round_trip_ms.items()):
            round_trip[verb] = {"n": float(len(xs)), "p50": pct(xs, 50), "p99": pct(xs, 99)}
        per: dict[int, list[float]] = defaultdict(list)
        for t, v in zip(dlog.think_at, dlog.think_ms, strict=True):
            per[int(t - offset)].append(v)
        for s in seconds:
            think_series_p50.append(pct(per.get(s, []), 50) or math.nan)
            think_series_p99.append(pct(per.get(s, []), 99) or math.nan)
    failures = {k: v for k, v in stats.items() if k.startswith("Failed") and k.endswith("(C)")
                and v not in ("0", "")}
    return StepResult(
        plan=plan, offered=len(calls), answered=len(answered), completed=len(completed),
        failed=failed, failed_sipp=failed_sipp, fallbacks=fallbacks,
        daemon_calls=dlog.calls if dlog else 0, daemon_failed=daemon_failed,
        flow_errors=flow_errors,
        arrival_rate=mean, dispersion=dispersion,
        answer_ms_p50=pct(answer_ms, 50), answer_ms_p99=pct(answer_ms, 99),
        agi_think_ms_p50=think_p50, agi_think_ms_p99=think_p99, agi_round_trip_ms=round_trip,
        peak_in_system=max(system, default=0), cpu_percent=cpu_percent,
        asterisk_cpu_percent=_cpu_percent(asterisk),
        machine_cpu_percent=(100 * (machine[1][0] - machine[0][0])
                             / (machine[1][1] - machine[0][1])
                             if machine and machine[1][1] > machine[0][1] else None),
        rss_start=rss_start, rss_peak=rss_peak, bytes_per_call=bytes_per_call,
        sipp_seconds=sipp.seconds, sipp_failures=failures,
        errors=([sipp.errors] if failed_sipp and sipp.errors else [])
        + (dlog.errors if dlog else []),
        series={
            "t": [float(s) for s in seconds], "offered": [float(x) for x in per_sec],
            "in_system": [float(x) for x in system], "service_level": sl,
            "answer_ms_p50": ans_p50, "answer_ms_p99": ans_p99,
            "agi_think_ms_p50": think_series_p50, "agi_think_ms_p99": think_series_p99,
            "rss_mb": rss_series,
            "cpu_t": [t for t, _ in cpu_series], "cpu_percent": [c for _, c in cpu_series],
        },
    )


async def run_step(pbx: Any, plan: Plan, rows: Sequence[str], *, daemon_pid: int,
                   daemon_log: Path | None, target: str, sl_threshold: float = 1.0,
                   settle: float = 3.0) -> StepResult:
    """One rate: SIPp runs while /proc of the daemon is sampled; then everything is read."""
    plan.check()
    procs: list[ProcSample] = []
    ast: list[ProcSample] = []
    ast_pid = pbx.status().pid
    log_start = _size(daemon_log)
    mark = pbx.mark()
    t0 = time.time()
    async with asyncio.TaskGroup() as tg:
        samplers = [tg.create_task(sample_proc(daemon_pid, procs), name="loadtest-daemon-proc")]
        if ast_pid:
            samplers.append(tg.create_task(sample_proc(ast_pid, ast), name="loadtest-pbx-proc"))
        m0 = machine_busy()
        try:
            sipp = await run_sipp(pbx, plan, rows, target=target)
            m1 = machine_busy()
            await asyncio.sleep(settle)  # the daemon finishes the last calls' records
        finally:
            for sampler in samplers:
                sampler.cancel()
    fallbacks = sum(1 for line in pbx.lines_since(mark) if "ivr-fallback" in line)
    dlog = None
    if daemon_log is not None and _size(daemon_log):
        dlog = await asyncio.to_thread(
            parse_daemon_log, read_lines(daemon_log, log_start), t0 - 1, time.time() + 1
        )
    return summarise(plan, sipp, procs, dlog, fallbacks, sl_threshold=sl_threshold,
                     asterisk=ast, machine=(m0, m1))
