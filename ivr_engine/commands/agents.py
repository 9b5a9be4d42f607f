"""`ivr-engine agents list|login|logout|pause|resume|reload|confirm`: talk to the running
daemon's ACD.

The command is one MQTT message on `<prefix>/acd/command`; the daemon answers on
`<prefix>/acd/reply/<id>` (schema in `ivr_engine.acd_gateway`). Exit 0 when the daemon did it,
1 when it refused (the reason is printed), 2 when no daemon answered within --timeout.

`agents confirm AGENT CALL_ID OPERATION AMOUNT ACCOUNT` sends a risky operation to the caller
the agent is talking to (`<prefix>/agent/<agent>/confirm`, schema in
`ivr_engine.agent_confirm`) and waits for the caller's answer on `.../confirm/result`: exit 0
when the caller confirmed, 1 when the request was refused or the caller did not confirm
(re-enter, cancelled, failed: the outcome is printed), 2 without an answer in --timeout. The
account is masked to its last 4 digits in everything printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from typing import Any


async def _request(args: argparse.Namespace, command: dict[str, str]) -> dict[str, Any] | None:
    from ivr_engine.acd_gateway import COMMAND_TOPIC, REPLY_TOPIC

    prefix = args.settings.mqtt.topic_prefix.strip("/")
    request_id = f"cli-{secrets.token_hex(6)}"
    return await _ask(
        args,
        f"{prefix}/{COMMAND_TOPIC}",
        {"id": request_id, **command},
        f"{prefix}/{REPLY_TOPIC}/{request_id}",
    )


async def _ask(
    args: argparse.Namespace, topic: str, body: dict[str, str], reply_topic: str
) -> dict[str, Any] | None:
    """Publish `body` on `topic`; the first reply on `reply_topic` whose id is body's id."""
    import aiomqtt

    mqtt = args.settings.mqtt
    request_id = body["id"]
    async with aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        identifier=request_id,
        username=mqtt.username or None,
        password=mqtt.password or None,
        timeout=5,
    ) as client:
        await client.subscribe(reply_topic, qos=1)
        await client.publish(topic, json.dumps(body), qos=1)
        try:
            async with asyncio.timeout(args.timeout):
                async for message in client.messages:
                    payload = message.payload
                    if not isinstance(payload, bytes | str):
                        continue
                    try:
                        reply = json.loads(payload)
                    except ValueError:
                        continue
                    if isinstance(reply, dict) and reply.get("id") == request_id:
                        return reply
        except TimeoutError:
            return None
    return None


def _masked(account: str) -> str:
    return "*" * max(0, len(account) - 4) + account[-4:]


async def _confirm(args: argparse.Namespace) -> int:
    prefix = args.settings.mqtt.topic_prefix.strip("/")
    request_id = f"cli-{secrets.token_hex(6)}"
    body = {
        "id": request_id,
        "call_id": args.call_id,
        "operation": args.operation,
        "amount": args.amount,
        "account": args.account,
    }
    try:
        reply = await _ask(
            args,
            f"{prefix}/agent/{args.agent}/confirm",
            body,
            f"{prefix}/agent/{args.agent}/confirm/result",
        )
    except Exception as exc:  # aiomqtt.MqttError and OSError: no broker to ask
        print(f"agents: cannot reach the MQTT broker: {exc}", file=sys.stderr)
        return 2
    if reply is None:
        print(
            f"agents: no outcome from the daemon within {args.timeout:g}s "
            "(is the agent on that call, and `ivr-engine serve` running with the ACD on?)",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps(reply, ensure_ascii=False, indent=2))
    if not reply.get("ok"):
        print(f"agents: confirmation refused: {reply.get('error', 'refused')}", file=sys.stderr)
        return 1
    outcome = str(reply.get("outcome", ""))
    if not args.json:
        print(
            f"{args.operation} of {args.amount} to account {_masked(args.account)}: {outcome}"
            + (f" ({reply['reason']})" if reply.get("reason") else "")
        )
    return 0 if outcome == "confirmed" else 1


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
    c = cmds.add_parser(
        "confirm", help="send a risky operation to the agent's caller for confirmation"
    )
    c.add_argument("agent", help="the agent talking to the caller, e.g. 1001")
    c.add_argument("call_id", help="the caller's call id (the screen pop's call_id)")
    c.add_argument("operation", choices=("transfer", "wealth_purchase"))
    c.add_argument("amount", help='yuan, e.g. "5000.00"')
    c.add_argument("account", help="target (transfer) or source account; only its last 4 leave")
    c.add_argument("--json", action="store_true", help="print the daemon's result as JSON")
    c.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the caller's answer"
    )
    c.set_defaults(func=lambda a: asyncio.run(_confirm(a)))
