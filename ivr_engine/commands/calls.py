"""`ivr-engine calls list|show`: read the call records (masked as stored)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any


async def _open(args: argparse.Namespace) -> Any:
    from ivr_engine.records import CallRecordStore

    return await CallRecordStore.open(args.path or args.settings.store.path, readonly=True)


async def _list(args: argparse.Namespace) -> int:
    async with await _open(args) as store:
        records = await store.list(limit=args.limit)
    if args.json:
        print(json.dumps(records, ensure_ascii=False, indent=2))
        return 0
    print(f"{'id':<24} {'started':<24} {'caller':<14} {'cust':>6} {'tier':<13} "
          f"{'lang':<4} {'queue':<12} outcome")
    for r in records:
        print(f"{r['id']:<24} {r['started']:<24} {r['caller']:<14} "
              f"{r['customer_id'] if r['customer_id'] is not None else '-':>6} "
              f"{r['tier'] or '-':<13} {r['language'] or '-':<4} "
              f"{(r['queue'] or {}).get('name', '-'):<12} {r['outcome'] or '(in progress)'}")
    return 0


async def _show(args: argparse.Namespace) -> int:
    async with await _open(args) as store:
        record = await store.get(args.id)
    if record is None:
        print(f"no call record {args.id!r}")
        return 1
    if args.json:
        print(json.dumps(record, ensure_ascii=False, indent=2))
        return 0
    for key in ("id", "started", "ended", "caller", "customer_id", "tier", "region", "language",
                "outcome"):
        print(f"{key + ':':<13}{record[key] if record[key] is not None else '-'}")
    flow = record["flow"]
    print(f"{'flow:':<13}{flow['name'] or '-'} {flow['version'] or ''}".rstrip())
    q = record["queue"]
    if q:
        print(f"{'queue:':<13}{q['name']} skills={','.join(q['skills'])} priority={q['priority']}")
    for s in record["steps"]:
        inputs = " ".join(f"{k}={v}" for k, v in s["inputs"].items())
        result = f" -> {s['result']}" if s.get("result") else ""
        print(f"  step {s['at']} {s['node']} ({s['type']}) {inputs}{result}".rstrip())
    for a in record["announcements"]:
        print(f"  played {a}")
    for e in record["events"]:
        extra = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("at", "kind"))
        print(f"  event {e['at']} {e['kind']} {extra}".rstrip())
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("calls", help="call records: list, show")
    cmds = parser.add_subparsers(dest="calls_command", metavar="ACTION", required=True)
    p = cmds.add_parser("list", help="the most recent calls")
    p.add_argument("--limit", type=_positive, default=50)
    p.add_argument("--json", action="store_true")
    p.add_argument("--path", help="the store (default: settings store.path)")
    p.set_defaults(func=lambda a: asyncio.run(_list(a)))
    p = cmds.add_parser("show", help="one call, every step")
    p.add_argument("id", help="the call id (Asterisk uniqueid)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--path", help="the store (default: settings store.path)")
    p.set_defaults(func=lambda a: asyncio.run(_show(a)))
