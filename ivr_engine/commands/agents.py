"""`ivr-engine agents list|login|logout|pause|resume|reload`: talk to the running daemon's ACD.

The command is one MQTT message on `<prefix>/acd/command`; the daemon answers on
`<prefix>/acd/reply/<id>` (schema in `ivr_engine.acd_gateway`). Exit 0 when the daemon did it,
1 when it refused (the reason is printed), 2 when no daemon answered within --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from typing import Any


async def _request(args: argparse.Namespace, command: dict[str, str]) -> dict[str, Any] | None:
    import aiomqtt

    from ivr_engine.acd_gateway import COMMAND_TOPIC, REPLY_TOPIC

    mqtt = args.settings.mqtt
    prefix = mqtt.topic_prefix.strip("/")
    request_id = f"cli-{secrets.token_hex(6)}"
    command = {"id": request_id, **command}
    async with aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        identifier=request_id,
        username=mqtt.username or None,
        password=mqtt.password or None,
        timeout=5,
    ) as client:
        await client.subscribe(f"{prefix}/{REPLY_TOPIC}/{request_id}", qos=1)
        await client.publish(f"{prefix}/{COMMAND_TOPIC}", json.dumps(command), qos=1)
        try:
            async with asyncio.timeout(args.timeout):
                async for message in client.messages:
                    payload = message.payload
                    if isinstance(payload, bytes | str):
                        reply: dict[str, Any] = json.loads(payload)
                        return reply
        except TimeoutError:
            return None
    return None


async def _run(args: argparse.Namespace) -> int:
    command = {"verb": args.agents_command}
    if getattr(args, "agent", None):
        command["agent"] = args.agent
    if getattr(args, "reason", None):
        command["reason"] = args.reason
    try:
        reply = await _request(args, command)
    except Exception as exc:  # aiomqtt.MqttError and OSError: no broker to ask
        print(f"agents: cannot reach the MQTT broker: {exc}", file=sys.stderr)
        return 2
    if reply is None:
        print(
            f"agents: no answer from the daemon within {args.timeout:g}s "
            "(is `ivr-engine serve` running with the ACD on?)",
            file=sys.stderr,
        )
        return 2
    if not reply.get("ok"):
        print(f"agents: {reply.get('error', 'refused')}", file=sys.stderr)
        return 1
    agents = reply.get("agents", [])
    if args.json:
        print(json.dumps(agents, ensure_ascii=False, indent=2))
        return 0
    print(f"{'agent':<8} {'state':<11} {'reason':<12} {'phone':<6} skills")
    for a in agents:
        skills = ",".join(f"{k}:{v}" for k, v in sorted(a["skills"].items()))
        print(
            f"{a['agent']:<8} {a['state']:<11} {a['reason'] or '-':<12} "
            f"{'up' if a['registered'] else '-':<6} {skills}"
        )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("agents", help="ACD agents of the running daemon")
    cmds = parser.add_subparsers(dest="agents_command", metavar="ACTION", required=True)
    for verb, text in (
        ("list", "every roster agent and its state"),
        ("login", "log an agent in"),
        ("logout", "log an agent out"),
        ("pause", "pause an agent with a reason"),
        ("resume", "make a paused agent ready"),
        ("reload", "re-read the roster file"),
    ):
        p = cmds.add_parser(verb, help=text)
        if verb not in ("list", "reload"):
            p.add_argument("agent", help="the agent's extension, e.g. 1001")
        if verb == "pause":
            p.add_argument("reason", help="a reason code, e.g. break, training")
        p.add_argument("--json", action="store_true")
        p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon")
        p.set_defaults(func=lambda a: asyncio.run(_run(a)))
