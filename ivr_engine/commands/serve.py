"""`ivr-engine serve` (the daemon) and `ivr-engine demo` (dev PBX + demo data + the daemon)."""

from __future__ import annotations

import argparse
import asyncio

from ivr_engine.app import Engine, serve


def _ready_line(engine: Engine) -> None:
    s = engine.settings
    port = engine.server.port if engine.server else s.agi.port
    print(f"ivr-engine: serving FastAGI on {s.agi.host}:{port}; Ctrl-C stops", flush=True)


def _serve(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args.settings, on_ready=_ready_line))


def _demo(args: argparse.Namespace) -> int:
    from ivr_engine.demo import prepare

    prepare(args.settings, customers=args.customers)

    def ready(engine: Engine) -> None:
        _ready_line(engine)
        print(
            "\nThe demo hotline is live on the dev PBX: extension 4008 at sip:4008@127.0.0.1:5060."
            "\nPlace a call from another terminal, as a carrier would:\n"
            "  .venv/bin/ivr-engine call 4008 --from 13800138000 --script 'w,2,w,0'"
            "     # Wang: bill due, then a person\n"
            "  .venv/bin/ivr-engine call 4008 --from 13926000001 --script 'w,h'"
            "         # Chen: VIP green channel\n"
            "Then: .venv/bin/ivr-engine calls list",
            flush=True,
        )

    return asyncio.run(serve(args.settings, on_ready=ready))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the daemon: FastAGI for calls, AMI, MQTT")
    p.set_defaults(func=_serve)
    d = sub.add_parser(
        "demo",
        help="bring up the dev PBX, seed the demo customers, build prompts, run the daemon",
    )
    d.add_argument("--customers", type=int, default=10_000, help="synthetic customers to seed")
    d.set_defaults(func=_demo)


