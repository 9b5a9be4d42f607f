"""`ivr-engine flows lint|try|deploy|versions|rollback|bench`."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from ivr_engine.errors import FlowError
from ivr_engine.flow.channel import CallerInfo
from ivr_engine.flow.deploy import DeployError, FlowStore, load_catalogue
from ivr_engine.flow.fake import (
    FakeChannel,
    MemoryAudit,
    ScriptedQueue,
    TextPrompts,
    Transcript,
    load_fixture,
)
from ivr_engine.flow.interpreter import Interpreter
from ivr_engine.flow.loader import LoadResult, load_paths
from ivr_engine.flow.services import DataSource, DialplanQueueGateway, QueueGateway, Services


def _catalogue(args: argparse.Namespace) -> Any:
    if getattr(args, "no_catalogue", False):
        return None
    return load_catalogue(args.settings.prompts.dir)


def _print_diagnostics(result: LoadResult, *, stream: Any = None) -> None:
    stream = stream or sys.stdout
    for d in result.diagnostics:
        print(d.render(), file=stream)


def _lint(args: argparse.Namespace) -> int:
    paths = args.paths or [args.settings.flows.dir]
    result = load_paths(paths, catalogue=_catalogue(args), max_menu_depth=args.max_menu_depth)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "severity": d.severity,
                        "message": d.message,
                        "path": d.loc.path if d.loc else None,
                        "line": d.loc.line if d.loc else None,
                        "col": d.loc.col if d.loc else None,
                        "flow": d.flow,
                        "node": d.node,
                    }
                    for d in result.diagnostics
                ],
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        _print_diagnostics(result)
        n_err, n_warn = len(result.errors), len(result.warnings)
        print(f"{n_err} error(s), {n_warn} warning(s)", file=sys.stderr)
    return 1 if result.errors else 0


def _parse_at(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise FlowError(
            f"--at {text!r}: expected an ISO time like 2026-11-25T10:30+08:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone(dt.timedelta(hours=8)))
    return when


def try_flow(
    *,
    flows_dir: str | Path,
    flow: str,
    caller: str,
    script: str,
    data: str | Path | None = None,
    at: dt.datetime | None = None,
    queue_outcome: str = "handed_off",
    transfer_status: str = "answered",
    catalogue: Any = None,
) -> tuple[Transcript, FakeChannel, MemoryAudit]:
    """Run `flow` offline against a scripted caller: what `flows try` prints."""
    path = Path(flow)
    name = flow
    if path.suffix in (".yaml", ".yml") and path.is_file():
        flows_dir = path.parent
        name = ""
    result = load_paths([flows_dir], catalogue=catalogue)
    if result.errors or result.flows is None:
        first = result.errors[0].render() if result.errors else "no flows"
        raise FlowError(f"the flows do not lint ({len(result.errors)} error(s)); first: {first}")
    flows = result.flows
    if not name:
        matches = [f.name for f in flows.flows.values() if Path(f.path).resolve() == path.resolve()]
        name = matches[0] if matches else ""
    flows.get(name)  # a clear error when it does not exist
    sources: dict[str, DataSource] = load_fixture(data) if data else {}
    queue: QueueGateway = (
        DialplanQueueGateway() if queue_outcome == "handed_off" else ScriptedQueue(queue_outcome)
    )
    transcript = Transcript()
    audit = MemoryAudit()
    services = Services(sources, queue, audit, transcript)
    prompts = catalogue if catalogue is not None else TextPrompts()
    clock = (lambda: at) if at is not None else None
    interp = Interpreter(flows, services, prompts, clock=clock)
    withheld = caller in ("", "anonymous", "withheld")
    channel = FakeChannel(
        CallerInfo("" if withheld else caller, withheld=withheld),
        script,
        transfer_status=transfer_status,  # type: ignore[arg-type]
    )
    asyncio.run(interp.run(channel, name))
    return transcript, channel, audit


def _try(args: argparse.Namespace) -> int:
    transcript, channel, audit = try_flow(
        flows_dir=args.dir or args.settings.flows.dir,
        flow=args.flow,
        caller=args.caller,
        script=args.input,
        data=args.data,
        at=_parse_at(args.at),
        queue_outcome=args.queue_outcome,
        transfer_status=args.transfer_status,
        catalogue=_catalogue(args),
    )
    if args.json:
        out = transcript.as_json()
        out["channel"] = channel.log
        out["audit"] = [
            {
                "operation": a.operation,
                "outcome": a.outcome,
                "node": a.node,
                "details": dict(a.details),
            }
            for a in audit.entries
        ]
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    for line in transcript.lines():
        print(line)
    for entry in audit.entries:
        details = ", ".join(f"{k}={v}" for k, v in entry.details.items())
        print(f"AUDIT {entry.operation} {entry.outcome} ({details})")
    for name, value in channel.variables.items():
        print(f"CHANNEL {name}={value}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    store = FlowStore(args.settings.flows.deploy_dir)
    sources = args.paths or [args.settings.flows.dir]
    try:
        version, result, changed = store.deploy(
            sources, catalogue=_catalogue(args), entry=args.settings.flows.entry
        )
    except DeployError as exc:
        if exc.result is not None:
            _print_diagnostics(exc.result, stream=sys.stderr)
        print(f"ivr-engine: {exc.message}", file=sys.stderr)
        return 1
    for d in result.warnings:
        print(d.render(), file=sys.stderr)
    print(f"{'deployed' if changed else 'already current'}: {version}")
    return 0


def _versions(args: argparse.Namespace) -> int:
    store = FlowStore(args.settings.flows.deploy_dir)
    versions = store.versions()
    if args.json:
        print(json.dumps([v.__dict__ for v in versions], indent=2))
        return 0
    if not versions:
        print("no deployed versions")
    for v in versions:
        mark = "*" if v.current else " "
        print(f"{mark} {v.version}  {v.deployed_at}  {len(v.files)} file(s)  from {v.source}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    store = FlowStore(args.settings.flows.deploy_dir)
    try:
        version = store.rollback(
            args.version, catalogue=_catalogue(args), entry=args.settings.flows.entry
        )
    except DeployError as exc:
        if exc.result is not None:
            _print_diagnostics(exc.result, stream=sys.stderr)
        print(f"ivr-engine: {exc.message}", file=sys.stderr)
        return 1
    print(f"current: {version}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ivr_engine.flow import bench

    interp = bench.bench_interpreter(args.nodes, args.calls)
    lint = bench.bench_lint(args.nodes)
    if args.json:
        print(json.dumps({"interpreter": interp, "lint": lint}, indent=2))
    else:
        print(
            f"interpreter: {interp['nodes']} nodes x {interp['calls']} calls: "
            f"{interp['overhead_us_per_node']:.1f} us/node overhead "
            f"(total {interp['total_us_per_node']:.1f} us/node, baseline channel calls "
            f"{interp['baseline_ms_median']:.3f} ms/call, "
            f"ratio {interp['ratio_flow_to_baseline']:.1f}x); "
            f"target < {bench.TARGET_NODE_US:.0f} us"
        )
        print(
            f"lint: {lint['nodes']} nodes ({lint['lines']} lines): "
            f"{lint['lint_s_median'] * 1e3:.0f} ms "
            f"(yaml compose alone {lint['yaml_compose_s_median'] * 1e3:.0f} ms, "
            f"ratio {lint['ratio_lint_to_compose']:.2f}x); "
            f"target < {bench.TARGET_LINT_S * 1e3:.0f} ms"
        )
    ok = (
        interp["overhead_us_per_node"] < bench.TARGET_NODE_US
        and lint["lint_s_median"] < bench.TARGET_LINT_S
    )
    return 0 if ok else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("flows", help="lint, try, deploy and benchmark IVR flows")
    cmds = parser.add_subparsers(dest="flows_command", metavar="ACTION", required=True)

    p = cmds.add_parser("lint", help="check flow files; exit 1 on errors")
    p.add_argument("paths", nargs="*", help="files or directories (default: settings flows.dir)")
    p.add_argument(
        "--max-menu-depth", type=int, default=None, help="warn past this many menu levels"
    )
    p.add_argument(
        "--no-catalogue", action="store_true", help="do not check prompts against the catalogue"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_lint)

    p = cmds.add_parser("try", help="run a flow offline against a scripted caller")
    p.add_argument("flow", help="flow name (in --dir) or a flow file")
    p.add_argument("--caller", default="", help="caller number ('' or anonymous: withheld)")
    p.add_argument(
        "--input", default="", help='comma-separated entries: digits, "t" timeout, "h" hang-up'
    )
    p.add_argument("--data", help="YAML/JSON fixture of data-source results")
    p.add_argument("--dir", help="flows directory (default: settings flows.dir)")
    p.add_argument("--at", help="call time, ISO 8601 (default now; +08:00 when no zone)")
    p.add_argument(
        "--queue-outcome",
        default="handed_off",
        choices=[
            "handed_off",
            "answered",
            "timeout",
            "overflow",
            "callback",
            "abandoned",
            "closed",
        ],
        help="what the queue does (default: hand back to the dialplan)",
    )
    p.add_argument(
        "--transfer-status",
        default="answered",
        choices=["answered", "busy", "noanswer", "failed", "hangup"],
    )
    p.add_argument("--no-catalogue", action="store_true", help="show prompt ids instead of texts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_try)

    p = cmds.add_parser("deploy", help="validate and atomically make flows current")
    p.add_argument("paths", nargs="*", help="files or directories (default: settings flows.dir)")
    p.add_argument("--no-catalogue", action="store_true")
    p.set_defaults(func=_deploy)

    p = cmds.add_parser("versions", help="list deployed versions (* = current)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_versions)

    p = cmds.add_parser("rollback", help="make an earlier version current (default: the previous)")
    p.add_argument("version", nargs="?", help="hash or unique prefix")
    p.add_argument("--no-catalogue", action="store_true")
    p.set_defaults(func=_rollback)

    p = cmds.add_parser("bench", help="interpreter overhead per node and lint time of a big flow")
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_bench)
