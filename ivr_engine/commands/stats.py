"""`ivr-engine stats`: the ACD's live queue statistics, as the daemon publishes them.

Subscribes to the retained topics `<prefix>/acd/stats/#` (ivr_engine/acd_stats.py) and shows a
table that refreshes as the figures arrive (every second); `--once` prints the current
snapshot and exits, `--json` prints it as JSON ({queue: payload}). Figures older than
`STALE_AFTER` seconds are marked: the daemon that published them has stopped.

Exit 0, 2 when there is no broker or no statistics on it within --timeout, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

STALE_AFTER = 5.0
_STATES = (
    ("ready", "rdy"),
    ("reserved", "res"),
    ("on-call", "call"),
    ("wrap-up", "wrap"),
    ("paused", "pause"),
    ("logged-out", "out"),
)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.0f}%"


def _secs(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f}s"


def render(stats: dict[str, dict[str, Any]], now: float) -> str:
    """The table of the latest payload per queue (`_all` last)."""
    names = sorted(n for n in stats if n != "_all") + (["_all"] if "_all" in stats else [])
    window = next((s["recent"].get("window") for s in stats.values() if "recent" in s), None)
    recent = f"{float(window) / 60:g}m" if window else "recent"
    header = (
        f"{'queue':<12}{'wait':>5}{'ring':>5}{'longest':>8}{'offer':>6}{'answ':>6}{'aband':>6}"
        f"{'SL':>6}{'SL ' + recent:>8}{'ASA':>6}{'AHT':>6}  agents"
    )
    lines = [header]
    newest = 0.0
    for name in names:
        s = stats[name]
        today, last = s.get("today", {}), s.get("recent", {})
        newest = max(newest, float(s.get("at", 0.0)))
        agents = s.get("agents")
        crew = (
            " ".join(f"{short}:{agents[state]}" for state, short in _STATES if agents.get(state))
            if agents
            else "-"
        )
        lines.append(
            f"{name:<12}{s.get('waiting', 0):>5}{s.get('ringing', 0):>5}"
            f"{_secs(s.get('longest_wait')):>8}{today.get('offered', 0):>6}"
            f"{today.get('answered', 0):>6}{today.get('abandoned', 0):>6}"
            f"{_pct(today.get('service_level')):>6}{_pct(last.get('service_level')):>8}"
            f"{_secs(today.get('asa')):>6}{_secs(today.get('aht')):>6}  {crew or '-'}"
        )
    if not names:
        lines.append("(no queue statistics yet)")
    age = now - newest
    footer = time.strftime("%H:%M:%S", time.localtime(newest)) if newest else "never"
    stale = (
        f"  STALE: no update for {age:.0f}s (is the daemon running?)" if age > STALE_AFTER else ""
    )
    lines.append(f"updated {footer}; SL = answered within {_threshold(stats)} s{stale}")
    return "\n".join(lines)


def _threshold(stats: dict[str, dict[str, Any]]) -> str:
    for s in stats.values():
        if "sl_threshold" in s:
            return f"{float(s['sl_threshold']):g}"
    return "20"


async def _watch(args: argparse.Namespace) -> int:
    import aiomqtt

    mqtt = args.settings.mqtt
    prefix = f"{mqtt.topic_prefix.strip('/')}/acd/stats/"
    stats: dict[str, dict[str, Any]] = {}
    tty = sys.stdout.isatty() and not args.once
    async with aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        username=mqtt.username or None,
        password=mqtt.password or None,
        timeout=5,
    ) as client:
        await client.subscribe(prefix + "#")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.timeout
        shown = 0.0
        once_by: float | None = None
        messages = client.messages.__aiter__()
        while True:
            # --once: the broker sends every retained topic in one burst after the subscribe;
            # 0.3 s after `_all` arrived they are all in (a fixed end: the daemon goes on
            # publishing every second, so "until quiet" might never come).
            if args.once and "_all" in stats:
                if once_by is None:
                    once_by = loop.time() + 0.3
                wait = once_by - loop.time()
            elif not stats:
                wait = deadline - loop.time()
            else:
                wait = 1.0
            try:
                async with asyncio.timeout(max(wait, 0.0)):
                    message = await messages.__anext__()
            except TimeoutError:
                if not stats:
                    print(
                        f"stats: no ACD statistics on {mqtt.host}:{mqtt.port} ({prefix}#) within "
                        f"{args.timeout:g}s (is `ivr-engine serve` running with the ACD on?)",
                        file=sys.stderr,
                    )
                    return 2
                if args.once:
                    break
                continue
            payload = message.payload
            if isinstance(payload, bytes | str):
                try:
                    body = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(body, dict):
                    stats[str(message.topic)[len(prefix) :]] = body
            now = time.time()
            if not args.once and "_all" in stats and now - shown >= 0.5:
                shown = now
                if args.json:
                    print(json.dumps(stats, ensure_ascii=False), flush=True)
                else:
                    clear = "\x1b[H\x1b[2J" if tty else "\n"
                    print(clear + render(stats, now), flush=True)
    if args.json:
        print(json.dumps(stats, ensure_ascii=False, indent=2))
    else:
        print(render(stats, time.time()))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        print("stats: --timeout must be > 0", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_watch(args))
    except Exception as exc:  # aiomqtt.MqttError, OSError: no broker
        mqtt = args.settings.mqtt
        print(
            f"stats: cannot reach the MQTT broker {mqtt.host}:{mqtt.port}: {exc}", file=sys.stderr
        )
        return 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stats", help="live ACD queue statistics (from MQTT), refreshing")
    p.add_argument("--once", action="store_true", help="print the current figures and exit")
    p.add_argument("--json", action="store_true", help="JSON: {queue: payload}")
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the first figures"
    )
    p.set_defaults(func=_run)
