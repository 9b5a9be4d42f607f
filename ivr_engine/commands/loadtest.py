"""`ivr-engine loadtest`: SIPp callers at Poisson rates through the dev PBX into the daemon."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ivr_engine.errors import ConfigError


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: comma-separated calls/s, e.g. 100,200"
        ) from None
    if not rates:
        raise argparse.ArgumentTypeError("at least one rate")
    return rates


def _pair(text: str) -> tuple[float, float]:
    """`MIN,MAX` seconds (or one value for both)."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: MIN,MAX seconds, e.g. 4,8") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not 0 <= values[0] <= values[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: MIN,MAX seconds with 0 <= MIN <= MAX")
    return values[0], values[1]


def _agent_plan(args: argparse.Namespace) -> Any:
    from simulate import acdload as al

    plan = al.AgentPlan(count=args.agents, ring=args.agent_ring, talk=args.agent_talk,
                        no_answer=args.agent_no_answer)
    plan.check()
    return plan


def _loadtest_agents(args: argparse.Namespace, pbx: Any, report: Path, command: str) -> int:
    """`--agents N`: callers who ask for a person; `--compare` runs app_queue then the ACD."""
    from simulate import acdload as al
    from simulate import loadreport

    agents = _agent_plan(args)
    plans = [al.CallerPlan(rate=rate, duration=args.duration, arrival_spread=args.arrival_spread,
                           hangup=args.caller_hangup, patience=args.patience,
                           max_wait=args.max_wait, seed=args.seed + i)
             for i, rate in enumerate(args.rate)]
    for plan in plans:
        plan.check()
    routers = al.ROUTERS if args.compare else (args.router,)
    run = asyncio.run(al.run_compare(pbx, report, agents, plans, routers=routers,
                                     sl_threshold=args.queue_sl_threshold, pause=args.pause,
                                     stop_on_failure=args.stop_on_failure,
                                     log_level=args.daemon_log_level))
    md = loadreport.write_agents(run.steps, report, command=command, context=run.context)
    print(md.read_text(encoding="utf-8"))
    return 0 if run.steps and all(s.zero_failures and not s.double_offers
                                  and not s.phone_double_offers for s in run.steps) else 1


def _soak(args: argparse.Namespace, pbx: Any, report: Path, command: str) -> int:
    from simulate import soak

    agents = _agent_plan(args)
    rate = args.rate[0] if args.rate_given else round(agents.capacity / 2, 2)
    plan = soak.SoakPlan(duration=args.soak, agents=agents, rate=rate,
                         hangup=args.caller_hangup if args.caller_hangup_given else 0.1,
                         patience=args.patience, chaos_every=args.chaos_every,
                         max_wait=args.max_wait, seed=args.seed)
    plan.callers().check()
    print(f"loadtest: soak {args.soak / 60:g} min at {rate:g} calls/s with {agents.count} "
          f"agents (capacity about {agents.capacity:.2f} calls/s)", file=sys.stderr, flush=True)
    result = asyncio.run(soak.run_soak(pbx, report, plan,
                                       sl_threshold=args.queue_sl_threshold))
    md = soak.write(result, report, command=command)
    print(md.read_text(encoding="utf-8"))
    return 0 if result.ok else 1


async def _run(args: argparse.Namespace, pbx: Any, report: Path) -> tuple[
        list[Any], dict[str, Any]]:
    from simulate import loadtest as lt

    workdir = report / "daemon"
    daemon: lt.SpawnedDaemon | None = None
    if args.daemon_pid:
        pid, log = args.daemon_pid, (Path(args.daemon_log) if args.daemon_log else None)
    else:
        profile = report / "daemon.prof" if args.profile else None
        daemon = lt.SpawnedDaemon(workdir, log_level=args.daemon_log_level,
                                  customers=args.customers, profile=profile)
        pid = await asyncio.to_thread(daemon.start)
        log = daemon.log
    steps = []
    try:
        numbers = lt.seeded_numbers(args.customers)
        for i, rate in enumerate(args.rate):
            plan = lt.Plan(rate=rate, duration=args.duration, hold=args.hold,
                           digit_at=args.digit_at, digits=args.digits, mix=args.mix,
                           arrival_spread=args.arrival_spread, seed=args.seed + i)
            plan.check()
            rows = lt.caller_rows(plan, numbers, plan.calls)
            print(f"loadtest: {rate:g} calls/s for {args.duration:g}s ({plan.calls} calls)...",
                  file=sys.stderr, flush=True)
            step = await lt.run_step(pbx, plan, rows, daemon_pid=pid, daemon_log=log,
                                     target=f"127.0.0.1:{pbx.sip_port}",
                                     sl_threshold=args.sl_threshold)
            steps.append(step)
            print(f"loadtest: {rate:g} calls/s: offered {step.offered}, failed {step.failed}, "
                  f"daemon CPU {step.cpu_percent or 0:.0f}%", file=sys.stderr, flush=True)
            if step.failed and args.stop_on_failure:
                break
            if i + 1 < len(args.rate):
                await asyncio.sleep(args.pause)
    finally:
        if daemon is not None:
            code = await asyncio.to_thread(daemon.stop)
            if code not in (0, None):
                print(f"loadtest: the daemon exited with {code}", file=sys.stderr)
    context = {
        "daemon": f"pid {pid}" + (" (spawned)" if daemon else " (attached)"),
        "daemon log level": args.daemon_log_level if daemon else "as running",
        "customers seeded": args.customers,
        "mix": args.mix, "digits": args.digits, "hold s": args.hold, "digit at s": args.digit_at,
        "machine": f"{os.cpu_count()} cores; SIPp, Asterisk and the daemon share them",
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    return steps, context


def _loadtest(args: argparse.Namespace) -> int:
    from ivr_engine.pbx import DevPbx
    from simulate import loadreport
    from simulate import loadtest as lt

    try:
        args.mix = lt.parse_mix(args.mix)
        lt.Plan(rate=(args.rate or [30.0])[0], duration=args.duration, hold=args.hold,
                digit_at=args.digit_at, digits=args.digits, mix=args.mix).check()
    except lt.LoadTestError as exc:
        raise ConfigError(str(exc), source="command line", key="loadtest") from None
    command = "ivr-engine " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.soak is not None:
        try:
            from simulate.soak import parse_duration

            args.soak = parse_duration(args.soak)
        except lt.LoadTestError as exc:
            raise ConfigError(str(exc), source="command line", key="soak") from None
        if not args.agents:
            raise ConfigError("--soak needs --agents N", source="command line", key="soak")
    args.rate_given = args.rate is not None
    args.rate = args.rate or [30.0]
    args.caller_hangup_given = args.caller_hangup is not None
    args.caller_hangup = args.caller_hangup or 0.0
    pbx = DevPbx.from_settings(args.settings, base=Path.cwd())
    if args.agents:
        with pbx.lease():
            pbx.up()
            try:
                if args.soak is not None:
                    return _soak(args, pbx, Path(args.report).resolve(), command)
                return _loadtest_agents(args, pbx, Path(args.report).resolve(), command)
            except lt.LoadTestError as exc:
                print(f"ivr-engine loadtest: {exc}", file=sys.stderr)
                return 1
    with pbx.lease():
        pbx.up()
        try:
            steps, context = asyncio.run(_run(args, pbx, Path(args.report).resolve()))
        except lt.LoadTestError as exc:
            print(f"ivr-engine loadtest: {exc}", file=sys.stderr)
            return 1
    md = loadreport.write(steps, Path(args.report), command=command, context=context)
    print(md.read_text(encoding="utf-8"))
    return 0 if steps and all(s.zero_failures for s in steps) else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "loadtest",
        help="SIPp callers at Poisson rates through the dev PBX into the daemon; report + plots",
        description="The IVR-only journey of the demo hotline (CIF lookup, greeting, menu, one "
        "key by SIP INFO, hang-up) at each --rate in turn. Spawns its own daemon unless "
        "--daemon-pid is given. Writes report.json, report.md and PNG plots to --report. "
        "Exit 1 when any call failed. See docs/loadtest.md.",
    )
    p.add_argument("--rate", type=_rates, default=None,
                   help="calls/s, or a list: 100,200,300 (default 30; a soak: half the agents' "
                   "capacity)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per rate")
    p.add_argument("--hold", type=float, default=1.0, help="seconds from the key to the BYE")
    p.add_argument("--digit-at", type=float, default=0.5, help="seconds from answer to the key")
    p.add_argument("--digits", default="1", help="keys drawn from, one per call (default 1)")
    p.add_argument("--mix", default="known=0.7,unknown=0.2,withheld=0.1",
                   help="callers: weights of known customers, unknown numbers, withheld")
    p.add_argument("--arrival-spread", type=float, default=1.0,
                   help="mean of the exponential shift of each arrival (s); see docs")
    p.add_argument("--customers", type=int, default=2000, help="synthetic customers to seed")
    p.add_argument("--daemon-pid", type=int, help="watch this running daemon instead")
    p.add_argument("--daemon-log", help="its log file (for AGI step latency at DEBUG)")
    p.add_argument("--daemon-log-level", default="DEBUG",
                   help="log level of the spawned daemon (DEBUG gives AGI step latency)")
    p.add_argument("--profile", action="store_true", help="run the spawned daemon under cProfile")
    p.add_argument("--sl-threshold", type=float, default=1.0,
                   help="service level: answered within this many seconds")
    p.add_argument("--pause", type=float, default=5.0, help="seconds between rates")
    p.add_argument("--stop-on-failure", action="store_true", help="stop at the first failed rate")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--report", default="loadtest-report", help="folder for the report")
    a = p.add_argument_group(
        "load with agents",
        "--agents N: callers ask for a person (a generated flow straight to queue `load`) and N "
        "SIPp agents (2000-...) answer; --compare routes the same traffic by app_queue, then by "
        "the ACD; --soak 30m runs the ACD with chaos and checks it (docs/loadtest.md)")
    a.add_argument("--agents", type=int, default=0, help="simulated agents (1-100)")
    a.add_argument("--compare", action="store_true", help="app_queue, then the ACD")
    a.add_argument("--router", choices=("acd", "app_queue"), default="acd",
                   help="without --compare: which router (default acd)")
    a.add_argument("--agent-ring", type=_pair, default=(0.5, 2.0), metavar="MIN,MAX",
                   help="seconds an agent's phone rings before answering (default 0.5,2)")
    a.add_argument("--agent-talk", type=_pair, default=(4.0, 8.0), metavar="MIN,MAX",
                   help="seconds of conversation (default 4,8)")
    a.add_argument("--agent-no-answer", type=float, default=0.05,
                   help="share of offers an agent declines after the ring (default 0.05)")
    a.add_argument("--caller-hangup", type=float, default=None,
                   help="share of callers who hang up after --patience (default 0; soak 0.1)")
    a.add_argument("--patience", type=_pair, default=(2.0, 40.0), metavar="MIN,MAX",
                   help="seconds from the answer to such a caller's hang-up (default 2,40)")
    a.add_argument("--max-wait", type=float, default=300.0,
                   help="a caller still without an agent then gives up: a failed call")
    a.add_argument("--queue-sl-threshold", type=float, default=20.0,
                   help="service level: answered by an agent within this many seconds")
    a.add_argument("--soak", default=None, metavar="DURATION",
                   help="soak through the ACD for e.g. 30m or 3m, then check it")
    a.add_argument("--chaos-every", type=float, default=5.0,
                   help="soak: seconds between agent pauses/logouts over MQTT (default 5)")
    p.set_defaults(func=_loadtest)
