"""`ivr-engine audit verify|list|head`: the hash-chained audit log of risky operations."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any


async def _open(args: argparse.Namespace) -> Any:
    from ivr_engine.audit import AuditLog

    # Read-only: verifying a missing file must fail, not create an empty "intact" log.
    return await AuditLog.open(args.path or args.settings.store.audit_path, readonly=True)


async def _verify(args: argparse.Namespace) -> int:
    async with await _open(args) as audit:
        result = await audit.verify(expected_head=args.expect_head)
    if args.json:
        print(json.dumps({"ok": result.ok, "records": result.records,
                          "first_bad_seq": result.first_bad_seq, "reason": result.reason,
                          "head_seq": result.head_seq, "head_hash": result.head_hash}))
    elif result.ok:
        print(f"audit log intact: {result.records} records, head {result.head_seq} "
              f"{result.head_hash}")
    else:
        print(f"AUDIT LOG BROKEN at record {result.first_bad_seq}: {result.reason}")
    return 0 if result.ok else 1


async def _list(args: argparse.Namespace) -> int:
    async with await _open(args) as audit:
        records = await audit.records(limit=args.limit)
    if args.json:
        print(json.dumps([r.to_json() for r in records], ensure_ascii=False, indent=2))
        return 0
    for r in records:
        details = json.dumps(r.details, ensure_ascii=False, sort_keys=True)
        print(f"{r.seq:>6} {r.time} call={r.call_id or '-'} customer={r.customer_id or '-'} "
              f"{r.operation} {r.outcome} {details} {r.hash[:12]}")
    return 0


async def _head(args: argparse.Namespace) -> int:
    async with await _open(args) as audit:
        seq, digest = await audit.head()
    print(f"{seq} {digest}")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("audit", help="audit log of risky operations: verify, list, head")
    cmds = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    p = cmds.add_parser("verify", help="check the hash chain; exit 1 naming the first bad record")
    p.add_argument("--path", help="the audit database (default: settings store.audit_path)")
    p.add_argument("--expect-head", metavar="HASH",
                   help="the head hash kept outside the database (catches a truncated tail)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: asyncio.run(_verify(a)))
    p = cmds.add_parser("list", help="the most recent records")
    p.add_argument("--path", help="the audit database (default: settings store.audit_path)")
    p.add_argument("--limit", type=_positive, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: asyncio.run(_list(a)))
    p = cmds.add_parser("head", help="print the last seq and hash (to keep elsewhere)")
    p.add_argument("--path", help="the audit database (default: settings store.audit_path)")
    p.set_defaults(func=lambda a: asyncio.run(_head(a)))
