"""`ivr-engine report`: the ACD's figures for a day or a period, from the queue log.

Per queue and for the whole ACD: offered, answered, answered within the service-level
threshold, abandoned, overflowed, service level, abandon rate, ASA, AHT; per agent: offered,
answered, ring-no-answers, completed, talk time, AHT. The definitions are the live statistics'
(ivr_engine/acd_stats.py, docs/acd-stats.md). Days are the machine's local days.

Exit 0 with the report (an empty period too), 1 when the queue log cannot be read, 2 for bad
options.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _moment(text: str) -> float:
    """ISO date or date-time; without a zone it is local time."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date or time (YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]): {text!r}"
        ) from None
    return value.timestamp()


def _midnight(day: dt.date) -> float:
    return dt.datetime.combine(day, dt.time()).timestamp()


def period(args: argparse.Namespace, now: float) -> tuple[float, float]:
    """[since, until) in epoch seconds from --date or --since/--until (default: today)."""
    if args.date is not None and (args.since is not None or args.until is not None):
        raise ValueError("--date cannot be combined with --since/--until")
    if args.since is None and args.until is None:
        day = args.date or dt.datetime.fromtimestamp(now).date()
        return _midnight(day), _midnight(day + dt.timedelta(days=1))
    since = args.since if args.since is not None else 0.0
    until = args.until if args.until is not None else now
    if until <= since:
        raise ValueError("--until must be after --since")
    return since, until


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def render(body: dict[str, Any]) -> str:
    lines = [
        f"ACD report {body['since']} .. {body['until']}  "
        f"(service level: answered within {body['sl_threshold']:g} s; "
        f"{body['events']} queue events)",
        "",
        f"{'queue':<14}{'offered':>8}{'answered':>9}{'in SL':>7}{'abandon':>8}{'overfl':>7}"
        f"{'SL':>8}{'aband%':>8}{'ASA':>8}{'AHT':>8}",
    ]
    rows = [*body["queues"].items(), ("(all)", body["all"])]
    for name, q in rows:
        lines.append(
            f"{name:<14}{q['offered']:>8}{q['answered']:>9}{q['answered_in_sl']:>7}"
            f"{q['abandoned']:>8}{q['overflowed']:>7}{_pct(q['service_level']):>8}"
            f"{_pct(q['abandon_rate']):>8}{_secs(q['asa']):>8}{_secs(q['aht']):>8}"
        )
    lines += [
        "",
        f"{'agent':<14}{'offered':>8}{'answered':>9}{'no-ans':>7}{'done':>6}{'talk':>10}{'AHT':>8}",
    ]
    for name, a in body["agents"].items():
        lines.append(
            f"{name:<14}{a['offered']:>8}{a['answered']:>9}{a['ring_no_answer']:>7}"
            f"{a['completed']:>6}{_secs(a['talk_time']):>10}{_secs(a['aht']):>8}"
        )
    if not body["agents"]:
        lines.append("(no agent was offered a call)")
    return "\n".join(lines)


async def _read(path: Path, since: float, until: float) -> list[Any]:
    from ivr_engine.queue_log import QueueLog

    async with await QueueLog.open(path, readonly=True) as log:
        return await log.events(since, until)


def _run(args: argparse.Namespace) -> int:
    from ivr_engine.acd_stats import report

    try:
        since, until = period(args, time.time())
    except ValueError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    if args.sl <= 0:
        print("report: --sl must be > 0 seconds", file=sys.stderr)
        return 2
    path = Path(args.path or args.settings.store.path)
    if not path.exists():
        print(
            f"report: no queue log at {path} (store.path): the daemon has not run with the ACD "
            "there yet",
            file=sys.stderr,
        )
        return 1
    events = asyncio.run(_read(path, since, until))
    body = {"since": _iso(since), "until": _iso(until), **report(events, threshold=args.sl)}
    if args.json:
        print(json.dumps(body, ensure_ascii=False, indent=2))
    else:
        print(render(body))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        help="ACD figures from the queue log: ASA, AHT, service level, abandon rate per queue",
    )
    p.add_argument("--date", type=_day, help="a local day, YYYY-MM-DD (default: today)")
    p.add_argument("--since", type=_moment, help="start (ISO date or date-time, local)")
    p.add_argument("--until", type=_moment, help="end, exclusive (default: now)")
    p.add_argument("--sl", type=float, default=20.0, help="service-level threshold in seconds")
    p.add_argument("--path", help="the SQLite file (default: store.path)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)
