"""`ivr-engine simulate SCENARIO.yaml ...`: scripted SIP callers and agents against the PBX."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from ivr_engine.errors import ConfigError


def _simulate(args: argparse.Namespace) -> int:
    # Imported here: pjsua2 is part of the simulator extra, not of the daemon.
    from simulate import report
    from simulate.runner import run_scenarios
    from simulate.scenario import ScenarioError, load

    try:
        scenarios = [load(p) for p in args.scenario]
    except ScenarioError as exc:
        raise ConfigError(str(exc), source=exc.source, key=exc.where) from None
    ami = None if args.no_ami else args.settings.ami
    record_dir = Path(args.report) / "audio" if args.report else None
    results = asyncio.run(run_scenarios(
        scenarios, pbx=args.pbx, ami=ami, record_dir=record_dir, store=args.store, seed=args.seed
    ))
    if args.report:
        md, js = report.write(results, Path(args.report))
        if not args.json:
            print(f"report: {md} and {js}")
    if args.json:
        print(json.dumps([report.to_dict(r) for r in results], ensure_ascii=False, indent=2))
    else:
        print(report.markdown(results))
    return 0 if all(r.ok for r in results) else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="run SIP call scenarios (callers, agents, expectations) against the PBX",
        description="Each scenario (YAML, see simulate/scenario.py and docs/loadtest.md) places "
        "its calls one after the other through the PBX, with its agent phones registered, and "
        "checks what every call heard and reached. Exit 1 when an expectation failed.",
    )
    p.add_argument("scenario", nargs="+", help="scenario files (simulate/scenarios/*.yaml)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--report", metavar="DIR", help="write report.md, report.json and the audio")
    p.add_argument("--pbx", default="127.0.0.1:5060", help="PBX SIP address (default %(default)s)")
    p.add_argument("--store", metavar="PATH",
                   help="the daemon's store for `calls show` (default: settings store.path)")
    p.add_argument("--no-ami", action="store_true",
                   help="do not watch AMI; queue/skills/priority come from the call record")
    p.add_argument("--seed", type=int, default=1, help="seed of the agents' random draws")
    p.set_defaults(func=_simulate)
