"""`ivr-engine acd simulate|bench|latency`: the ACD core without telephony.

`latency` runs `acd/router_bench.py`: the router's decision latency (asyncio loop, timers, one
task per PBX command, a simulated AMI round trip) with 2,000 agents and 1,000 waiting calls.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ivr_engine.errors import ConfigError


def _simulate(args: argparse.Namespace) -> int:
    from acd import sim
    from acd.model import Strategy

    if args.agents < 1 or args.calls <= 0:
        raise ConfigError("--agents must be >= 1 and --calls > 0", source="command line")
    scenario = sim.bank_day(agents=args.agents, calls=args.calls, seed=args.seed)
    if args.strategy == "all":
        strategies: list[Strategy | None] = [None, *Strategy]
    elif args.strategy == "configured":
        strategies = [None]
    else:
        strategies = [Strategy(args.strategy)]
    reports = [sim.simulate(scenario, s) for s in strategies]
    if args.json:
        print(json.dumps([_report_dict(r) for r in reports], indent=2, default=float))
        return 0
    first = reports[0]
    print(
        f"bank day: {len(scenario.agents)} agents, {first.total['offered']} calls, "
        f"service level target {scenario.sl_target:.0%} in {scenario.sl_seconds:.0f} s"
    )
    for r in reports:
        print(
            f"\nstrategy: {r.strategy}   occupancy {r.occupancy:.1%}   waited at all {r.p_wait:.1%}"
        )
        print(
            f"  {'queue':<12}{'offered':>8}{'SL':>8}{'ASA s':>8}{'aband.':>8}"
            f"{'overfl.':>8}{'occ.elig':>9}"
        )
        for qid, q in [*r.queues.items(), ("ALL", r.total)]:
            print(
                f"  {qid:<12}{q['offered']:>8}{q['service_level']:>8.1%}{q['asa_s']:>8.1f}"
                f"{q['abandon_rate']:>8.1%}{q['overflowed']:>8}"
                f"{q['occupancy_of_eligible']:>9.1%}"
            )
    e = first.erlang
    print(
        f"\nErlang staffing for the busiest half hour (#{e['peak_half_hour']}), "
        f"target {scenario.sl_target:.0%}/{scenario.sl_seconds:.0f}s:"
    )
    print(f"  {'queue':<12}{'calls':>7}{'erlangs':>9}{'C':>5}{'A':>5}{'eligible':>10}{'sim SL':>8}")
    for qid, row in e["queues"].items():
        print(
            f"  {qid:<12}{row['calls_per_half_hour']:>7.0f}{row['erlangs']:>9.1f}"
            f"{row['agents_erlang_c']:>5}{row.get('agents_erlang_a', '-'):>5}"
            f"{row['eligible_agents']:>10}{first.queues[qid]['service_level']:>8.1%}"
        )
    c = e["centre"]
    print(
        f"  {'centre':<12}{c['calls_per_half_hour']:>7.0f}{c['erlangs']:>9.1f}"
        f"{c['agents_erlang_c']:>5}{c.get('agents_erlang_a', '-'):>5}"
        f"{c['agents_on_roster']:>10}{first.total['service_level']:>8.1%}"
    )
    print(
        "  (C, A: agents Erlang C / Erlang A need for the target if the queue had its own "
        "agents; skills-based routing shares agents across queues)"
    )
    return 0


def _report_dict(r: Any) -> dict[str, Any]:
    return {
        "strategy": r.strategy,
        "occupancy": r.occupancy,
        "p_wait": r.p_wait,
        "total": r.total,
        "queues": r.queues,
        "erlang": r.erlang,
    }


def _bench(args: argparse.Namespace) -> int:
    from acd import bench

    if args.repeats is not None and args.repeats < 1:
        raise ConfigError("--repeats must be >= 1", source="command line")
    result = bench.run(
        quick=args.quick, seed=args.seed, repeats=args.repeats, huge_pages=args.huge_pages
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        s = result["summary"]
        print(json.dumps(s, indent=2))
        for n, r in result["sizes"].items():
            ref = r["reference"]
            print(
                f"{n:>7} agents: {r['decisions_per_s']:>8} decisions/s  mean {r['mean_us']} us"
                f"  p99 {r['p99_us']} us  reference x{ref['speedup']} "
                f"({ref['events_compared']} events, identical={ref['identical']})"
            )
    return 0 if result["summary"]["identical"] else 1


def _latency(args: argparse.Namespace) -> int:
    import asyncio

    from acd import router_bench

    if args.agents < 10:
        raise ConfigError("--agents must be >= 10", source="command line")
    if args.waiting < 1:
        raise ConfigError("--waiting must be >= 1", source="command line")
    if args.events < 2:
        raise ConfigError("--events must be >= 2", source="command line")
    if not 0 <= args.rtt_ms <= 1000:
        raise ConfigError("--rtt-ms must be 0..1000", source="command line")
    result = asyncio.run(
        router_bench.run(args.agents, args.waiting, args.events, args.rtt_ms / 1000, args.seed)
    )
    print(json.dumps(result, indent=2) if args.json else router_bench.report(result))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from acd.model import Strategy

    parser = sub.add_parser("acd", help="ACD core: simulate a day, benchmark the matcher")
    cmds = parser.add_subparsers(dest="acd_command", metavar="ACTION", required=True)
    s = cmds.add_parser("simulate", help="a day of bank-hotline traffic through the matcher")
    s.add_argument("--agents", type=int, default=70)
    s.add_argument("--calls", type=float, default=6000.0, help="expected calls in the day")
    s.add_argument(
        "--strategy",
        default="all",
        choices=["all", "configured", *(st.value for st in Strategy)],
        help="compare every strategy (default), keep each queue's own, or force one",
    )
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_simulate)
    b = cmds.add_parser("bench", help="heap matcher vs brute-force reference at 1k/10k/100k")
    b.add_argument("--json", action="store_true", help="print the full JSON result")
    b.add_argument("--quick", action="store_true", help="shorter traces (a smoke run)")
    b.add_argument("--seed", type=int, default=20261125)
    b.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed replays per size; each event's figure is its median (default 3, quick 1)",
    )
    b.add_argument(
        "--no-huge-pages",
        dest="huge_pages",
        action="store_false",
        help="do not collapse the heap into 2 MiB pages after the logins (the baseline; by "
        "default it is, as the ACD service does; under the kernel's THP 'always' setting "
        "some memory may be on huge pages anyway: see summary.huge_pages.thp_mode)",
    )
    b.set_defaults(func=_bench)
    lat = cmds.add_parser(
        "latency",
        help="router decision latency (event in -> Redirect) with agents busy and calls waiting",
    )
    lat.add_argument("--agents", type=int, default=2000)
    lat.add_argument("--waiting", type=int, default=1000, help="calls kept waiting")
    lat.add_argument("--events", type=int, default=2000, help="measured events (half each kind)")
    lat.add_argument("--rtt-ms", type=float, default=1.0, help="simulated AMI round trip")
    lat.add_argument("--seed", type=int, default=7)
    lat.add_argument("--json", action="store_true")
    lat.set_defaults(func=_latency)
