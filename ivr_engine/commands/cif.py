"""`ivr-engine cif import|seed|show|bench`: the customer data (CIF)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from ivr_engine.cif.model import CallerProfile


def _path(args: argparse.Namespace) -> str:
    return str(args.path or args.settings.store.path)


async def _import(args: argparse.Namespace) -> int:
    from ivr_engine.cif.importer import import_csv
    from ivr_engine.cif.store import CifStore

    async with await CifStore.open(_path(args)) as store:
        result = await import_csv(store, args.file)
    for err in result.errors:
        print(f"{args.file}: {err}", file=sys.stderr)
    print(f"loaded {result.loaded} customers; {len(result.errors)} rows refused")
    return 0 if result.ok else 1


async def _seed(args: argparse.Namespace) -> int:
    from ivr_engine.cif.seed import seed
    from ivr_engine.cif.store import CifStore

    async with await CifStore.open(_path(args)) as store:
        result = await seed(store, customers=args.customers, rng_seed=args.seed)
    print(
        f"seeded {result.personas_added} personas and {result.synthetic_added} synthetic "
        f"customers; the CIF now holds {result.total_customers}"
    )
    return 0


def profile_json(p: CallerProfile) -> dict[str, Any]:
    c = p.customer
    return {
        "caller": p.number_masked,
        "region": {"country": p.region.country, "province": p.region.province,
                   "city": p.region.city, "mobile": p.region.is_mobile},
        "service_tier": str(p.service_tier),
        "language": str(p.language),
        "customer": None if c is None else {
            "id": c.id, "cif_no": c.cif_no, "greeting": c.greeting_name(p.language),
            "surname": c.surname, "tier": str(c.tier),
            "preferred_language": str(c.preferred_language) if c.preferred_language else None,
            "home": {"province": c.home_province, "city": c.home_city},
            "pin_locked": c.locked,
        },
        "bound": p.bound,
        "unpaid_bill": None if p.unpaid_bill is None else {
            "card": p.unpaid_bill.card_masked, "amount": str(p.unpaid_bill.amount),
            "minimum": str(p.unpaid_bill.minimum), "due": p.unpaid_bill.due_date.isoformat(),
        },
        "risk_flags": [{"code": f.code, "text": f.text} for f in p.risk_flags],
        "calls_today": p.calls_today,
        "cards": [{"id": k.id, "kind": k.kind, "number": k.masked, "status": str(k.status)}
                  for k in p.cards],
        "products": list(p.products),
    }


async def _show(args: argparse.Namespace) -> int:
    from ivr_engine.cif.store import CifStore

    async with await CifStore.open(_path(args)) as store:
        profile = await store.profile(args.number)
    data = profile_json(profile)
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print(f"caller:       {data['caller']} ({profile.region.label()})")
        print(f"service tier: {data['service_tier']}   language: {data['language']}")
        if profile.customer is None:
            print("customer:     not a customer")
        else:
            cust = data["customer"]
            print(f"customer:     {cust['greeting']} #{cust['id']} ({cust['cif_no']}), "
                  f"tier {cust['tier']}, home {profile.customer.home_city or '-'}, "
                  f"{profile.customer.home_province or '-'}"
                  + (", PIN LOCKED" if cust["pin_locked"] else ""))
            print(f"calls today:  {data['calls_today']}")
            for k in data["cards"]:
                print(f"card:         #{k['id']} {k['kind']} {k['number']} {k['status']}")
            if data["unpaid_bill"]:
                b = data["unpaid_bill"]
                print(f"unpaid bill:  {b['amount']} (minimum {b['minimum']}) due {b['due']} "
                      f"on {b['card']}")
            for f in data["risk_flags"]:
                print(f"risk flag:    {f['code']}: {f['text']}")
    return 0 if profile.customer is not None else 1


async def _bench(args: argparse.Namespace) -> int:
    from ivr_engine.cif.bench import render, run_bench

    result = await run_bench(customers=args.customers, lookups=args.lookups, path=args.path)
    print(json.dumps(result, sort_keys=True) if args.json else render(result))
    return 0


def _runner(coro_fn: Any) -> Any:
    def handler(args: argparse.Namespace) -> int:
        code: int = asyncio.run(coro_fn(args))
        return code

    return handler


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("cif", help="customer data: import, seed, show, bench")
    cmds = parser.add_subparsers(dest="cif_command", metavar="ACTION", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help_)
        p.add_argument("--path", help="the CIF database (default: settings store.path)")
        return p

    p = add("import", "load customers from a CSV file (bad rows reported, exit 1 if any)")
    p.add_argument("file", help="CSV file, UTF-8, with a header row")
    p.set_defaults(func=_runner(_import))
    p = add("seed", "load the demo personas and a synthetic book (idempotent)")
    p.add_argument("--customers", type=_positive, default=10_000)
    p.add_argument("--seed", type=int, default=20261125, help="random seed of the synthetic book")
    p.set_defaults(func=_runner(_seed))
    p = add("show", "show what the IVR knows about a caller number (masked); exit 1 if unknown")
    p.add_argument("number")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_runner(_show))
    p = add("bench", "benchmark caller-ID lookup (temporary database unless --path)")
    p.add_argument("--customers", type=_positive, default=10_000)
    p.add_argument("--lookups", type=_positive, default=5_000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_runner(_bench))
