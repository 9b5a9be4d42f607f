"""`ivr-engine serve` (the daemon) and `ivr-engine demo` (dev PBX + demo data + the daemon)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ivr_engine.app import Engine, serve


def _ready_line(engine: Engine) -> None:
    s = engine.settings
    port = engine.server.port if engine.server else s.agi.port
    print(f"ivr-engine: serving FastAGI on {s.agi.host}:{port}; Ctrl-C stops", flush=True)


def _serve(args: argparse.Namespace) -> int:
    return asyncio.run(serve(args.settings, on_ready=_ready_line))


#: The demo's own call, placed once the daemon is ready: a caller reaching a simulated agent.
DEMO_SCENARIO = Path(__file__).resolve().parents[2] / "simulate" / "demo.yaml"
_background: set[asyncio.Task[None]] = set()


async def _walkthrough() -> None:
    """Chen calls the hotline and reaches agent 1002 (simulate/demo.yaml), through the SIP
    simulator in its own process (one pjsua2 stack per process), as a carrier and a phone
    would. Its report is printed; the daemon serves on either way."""
    print(
        "\ndemo: placing Chen's call (simulate/demo.yaml): VIP line -> ACD -> agent 1002 ...",
        flush=True,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ivr_engine.cli",
        "simulate",
        str(DEMO_SCENARIO),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    for line in out.decode(errors="replace").splitlines():
        print(f"demo | {line}", flush=True)
    verdict = "reached agent 1002" if proc.returncode == 0 else "did NOT go as expected"
    print(
        f"demo: Chen's call {verdict} (simulate exit {proc.returncode}); "
        "the daemon keeps serving, Ctrl-C stops",
        flush=True,
    )


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
        if args.walkthrough:
            task = asyncio.get_running_loop().create_task(_walkthrough(), name="demo-walkthrough")
            _background.add(task)
            task.add_done_callback(_background.discard)

    return asyncio.run(serve(args.settings, on_ready=ready))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the daemon: FastAGI for calls, AMI, MQTT")
    p.set_defaults(func=_serve)
    d = sub.add_parser(
        "demo",
        help="bring up the dev PBX, seed the demo customers, build prompts, run the daemon",
    )
    d.add_argument("--customers", type=int, default=10_000, help="synthetic customers to seed")
    d.add_argument(
        "--no-walkthrough",
        dest="walkthrough",
        action="store_false",
        help="do not place the demo call (Chen reaching agent 1002) once the daemon is up",
    )
    d.set_defaults(func=_demo)
