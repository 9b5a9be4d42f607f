"""`ivr-engine config show`: the effective settings, secrets masked."""

from __future__ import annotations

import argparse
import json


def _show(args: argparse.Namespace) -> int:
    print(json.dumps(args.settings.redacted(), indent=2, ensure_ascii=False))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("config", help="show the effective settings (secrets masked)")
    cmds = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = cmds.add_parser("show", help="print the merged settings as JSON")
    show.set_defaults(func=_show)
