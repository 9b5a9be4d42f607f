"""`ivr-engine call`: place one real SIP call into the PBX, as a carrier would, with DTMF."""

from __future__ import annotations

import argparse
import json

from ivr_engine.errors import ConfigError


def _call(args: argparse.Namespace) -> int:
    # Imported here: pjsua2 is part of the simulator extra, not of the daemon.
    from simulate.script import ScriptError, parse, run
    from simulate.sip import SimError, SipStack

    try:
        steps = parse(args.script)
    except ScriptError as exc:
        raise ConfigError(str(exc), source="command line", key="--script") from None
    result: dict[str, object] = {"target": args.number, "from": args.caller or "withheld"}
    with SipStack() as stack:
        line = stack.caller(args.caller, name=args.name, withheld=args.withheld or not args.caller)
        call = line.call(f"sip:{args.number}@{args.pbx}")
        try:
            call.wait_connected(args.answer_timeout)
            result["steps"] = run(call, steps)
            if not call.is_ended:
                stack.wait_for(lambda: call.is_ended, args.max_seconds, "the PBX to end the call")
        except SimError as exc:
            result["error"] = str(exc)
        finally:
            call.end()
            stack.pump(0.3)
        speech = call.speech()
        result.update(
            status=call.last_status,
            reason=call.last_reason,
            heard_seconds=round(call.heard_seconds(), 2),
            prompts_heard=speech.count,
            speech=[[round(a, 2), round(b, 2)] for a, b in speech.segments],
            longest_silence=round(speech.longest_gap(), 2),
        )
        if args.record:
            call.save_wav(args.record)
            result["recording"] = args.record
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        for key, value in result.items():
            if key == "steps":
                for line_ in value:  # type: ignore[attr-defined]
                    print(f"  step: {line_}")
            else:
                print(f"{key}: {value}")
    return 1 if "error" in result else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "call",
        help="place one SIP call into the PBX (as a carrier would) and run a DTMF script",
        description="Steps: w (wait for the prompt to end), pN (pause N s), digits, "
        "s:digits (secret, masked), h (hang up). Example: --script 'w,1,w,h'",
    )
    p.add_argument("number", nargs="?", default="4008", help="number to call (default 4008)")
    p.add_argument("--from", dest="caller", default="13800138000", help="caller ID number")
    p.add_argument("--name", default="", help="caller ID name")
    p.add_argument("--withheld", action="store_true", help="withhold the caller ID")
    p.add_argument("--script", default="w,h", help="DTMF script (default: hear the greeting)")
    p.add_argument("--pbx", default="127.0.0.1:5060", help="PBX SIP address (default %(default)s)")
    p.add_argument("--record", metavar="WAV", help="save what the caller heard")
    p.add_argument("--answer-timeout", type=float, default=10.0)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_call)
