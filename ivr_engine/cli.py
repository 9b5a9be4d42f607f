"""The `ivr-engine` command.

Each subcommand lives in its own module under `ivr_engine.commands`; a module there exposes
`register(subparsers)` and sets `func=handler` on its parser, where `handler(args) -> int`.
Modules are discovered, so adding a command touches no other file. Only this module decides
exit codes: 0 success, 1 a reported failure (lint errors, verify failed), 2 usage or
configuration errors, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from ivr_engine import __version__, config
from ivr_engine import commands as commands_pkg
from ivr_engine import log as logsetup
from ivr_engine.errors import ConfigError, IvrError

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ivr-engine",
        description="Telephony-first IVR and ACD engine beside an Asterisk PBX.",
    )
    parser.add_argument("--version", action="version", version=f"ivr-engine {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (TOML); default $IVR_ENGINE_CONFIG, else built-in defaults",
    )
    parser.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands_pkg.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        overrides = {"log": {"level": args.log_level}} if args.log_level else None
        args.settings = config.load(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"ivr-engine: configuration error: {exc}", file=sys.stderr)
        return 2
    logsetup.setup(args.settings.log.level, logfile=args.settings.log.file or None)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        print(f"ivr-engine: configuration error: {exc}", file=sys.stderr)
        return 2
    except IvrError as exc:
        print(f"ivr-engine: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
