"""`ivr-engine tasks submit|list|cancel`: non-voice tasks for developers, over MQTT.

Each command is one message to the running daemon (`<prefix>/acd/task/submit`, `.../cancel`,
`.../list`) and waits for its answer on `<prefix>/acd/task/reply/<id>` (docs/tasks.md).
Exit 0 when the daemon took it, 1 when it refused (the reason is printed), 2 when no daemon
answered within --timeout or the broker cannot be reached.

    ivr-engine tasks submit --channel chat --queue general --skills cards --body "hello"
    ivr-engine tasks submit --payload task.json      # a whole submission, sent as written
    ivr-engine tasks list
    ivr-engine tasks cancel web-1 --reason "solved on the web"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any


async def _request(args: argparse.Namespace, topic: str, request_id: str, payload: bytes) -> Any:
    import aiomqtt

    from ivr_engine.tasks.schema import TaskRejected, check_id
    from ivr_engine.tasks.service import REJECTED_TOPIC, REPLY_TOPIC

    mqtt = args.settings.mqtt
    prefix = mqtt.topic_prefix.strip("/")
    async with aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        identifier=f"ivr-engine-tasks-cli-{secrets.token_hex(4)}",
        username=mqtt.username or None,
        password=mqtt.password or None,
        timeout=5,
    ) as client:
        try:
            check_id(request_id)
            await client.subscribe(f"{prefix}/{REPLY_TOPIC}/{request_id}", qos=1)
        except TaskRejected:  # the daemon can only answer this one on the shared topic
            await client.subscribe(f"{prefix}/{REJECTED_TOPIC}", qos=1)
        await client.publish(f"{prefix}/{topic}", payload, qos=1)
        try:
            async with asyncio.timeout(args.timeout):
                async for message in client.messages:
                    if isinstance(message.payload, bytes | str):
                        return json.loads(message.payload)
        except TimeoutError:
            return None
    return None


class UsageError(ValueError):
    """Options that do not make a submission (exit 2)."""


def _submission(args: argparse.Namespace) -> tuple[str, bytes]:
    """(id, payload): from --payload as written (an id is added when it has none), or from
    the options."""
    if args.payload:
        text = sys.stdin.read() if args.payload == "-" else Path(args.payload).read_text()
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError:
            raise UsageError(f"{args.payload} is not JSON") from None
        if isinstance(loaded, dict) and isinstance(loaded.get("id"), str):
            return loaded["id"], text.encode()
        if isinstance(loaded, dict) and "id" not in loaded:
            loaded["id"] = args.id or f"cli-{int(time.time())}-{secrets.token_hex(3)}"
            return str(loaded["id"]), json.dumps(loaded, ensure_ascii=False).encode()
        raise UsageError("the payload needs a string id (or none, and one is added)")
    missing = [o for o in ("channel", "queue", "skills") if not getattr(args, o)]
    if missing:
        raise UsageError(f"submit needs --{', --'.join(missing)} (or --payload FILE)")
    task_id = args.id or f"cli-{int(time.time())}-{secrets.token_hex(3)}"
    body: dict[str, Any] = {
        "id": task_id,
        "channel": args.channel,
        "queue": args.queue,
        "skills": args.skills,
        "priority": args.priority,
        "language": args.language,
    }
    customer = {
        k: v
        for k, v in (
            ("number", args.number),
            ("name", args.name),
            ("email", args.email),
            ("cif", args.cif),
        )
        if v
    }
    if customer:
        body["customer"] = customer
    for key in ("subject", "body", "callback_number"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    return task_id, json.dumps(body, ensure_ascii=False).encode()


def _print_tasks(tasks: list[dict[str, Any]]) -> None:
    print(f"{'id':<24} {'channel':<9} {'queue':<10} {'state':<8} {'agent':<6} {'age':>7}  customer")
    for t in tasks:
        who = " ".join(str(v) for v in t.get("customer", {}).values())
        print(
            f"{t['id']:<24} {t['channel']:<9} {t['queue']:<10} {t['state']:<8} "
            f"{t['agent'] or '-':<6} {t['age']:>7.1f}  {who}"
        )


async def _run(args: argparse.Namespace) -> int:
    from ivr_engine.tasks.service import CANCEL_TOPIC, LIST_TOPIC, SUBMIT_TOPIC

    verb = args.tasks_command
    if verb == "submit":
        try:
            request_id, payload = _submission(args)
        except (UsageError, OSError) as exc:
            print(f"tasks: {exc}", file=sys.stderr)
            return 2
        topic = SUBMIT_TOPIC
    elif verb == "cancel":
        request_id = args.task
        body = {"id": args.task, **({"reason": args.reason} if args.reason else {})}
        payload, topic = json.dumps(body, ensure_ascii=False).encode(), CANCEL_TOPIC
    else:
        request_id = f"cli-{secrets.token_hex(6)}"
        payload, topic = json.dumps({"id": request_id}).encode(), LIST_TOPIC
    try:
        reply = await _request(args, topic, request_id, payload)
    except Exception as exc:  # aiomqtt.MqttError and OSError: no broker to ask
        print(f"tasks: cannot reach the MQTT broker: {exc}", file=sys.stderr)
        return 2
    if reply is None:
        print(
            f"tasks: no answer from the daemon within {args.timeout:g}s "
            "(is `ivr-engine serve` running with the ACD on?)",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps(reply, ensure_ascii=False, indent=2))
    if not reply.get("ok"):
        if not args.json:
            print(f"tasks: refused: {reply.get('error', '?')}", file=sys.stderr)
        return 1
    if not args.json:
        if verb == "list":
            _print_tasks(reply.get("tasks", []))
        else:
            task = reply.get("task", {})
            state = task.get("state", "?")
            agent = f" (agent {task['agent']})" if task.get("agent") else ""
            print(f"task {task.get('id', request_id)}: {state}{agent}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("tasks", help="non-voice ACD tasks (chat, SMS, e-mail, callback)")
    cmds = parser.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)
    submit = cmds.add_parser("submit", help="submit a task and wait for the daemon's answer")
    submit.add_argument("--payload", metavar="FILE", help="a whole JSON submission (- = stdin)")
    submit.add_argument("--id", help="the task id (default: a fresh cli-... id)")
    submit.add_argument("--channel", choices=("chat", "sms", "email", "callback"))
    submit.add_argument("--queue", help="a roster queue, e.g. general")
    submit.add_argument("--skills", help="a skill expression, e.g. 'cards and mandarin'")
    submit.add_argument("--priority", type=int, default=0, help="0-10, higher is more urgent")
    submit.add_argument("--language", default="cmn", help="cmn, yue or en")
    submit.add_argument("--number", help="the customer's phone number")
    submit.add_argument("--name", help="the customer's name")
    submit.add_argument("--email", help="the customer's e-mail address")
    submit.add_argument("--cif", help="the customer's CIF id")
    submit.add_argument("--subject")
    submit.add_argument("--body")
    submit.add_argument("--callback-number", help="callback tasks: the number to call")
    cancel = cmds.add_parser("cancel", help="withdraw a task")
    cancel.add_argument("task", help="the task id")
    cancel.add_argument("--reason", help="why (shown to the agent)")
    listing = cmds.add_parser("list", help="the tasks with the ACD now")
    for p in (submit, cancel, listing):
        p.add_argument("--json", action="store_true", help="print the daemon's reply as JSON")
        p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon")
        p.set_defaults(func=lambda a: asyncio.run(_run(a)))
