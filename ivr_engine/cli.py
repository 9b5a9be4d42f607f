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
import os
import pkgutil
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from ivr_engine import __version__, config
from ivr_engine import commands as commands_pkg
from ivr_engine import log as logsetup
from ivr_engine.errors import AmiLoginError, ConfigError, IvrError

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


def _config_file(args: argparse.Namespace) -> str | None:
    path: str | None = args.config or os.environ.get("IVR_ENGINE_CONFIG") or None
    return path


def _setting_source(args: argparse.Namespace, section: str, key: str) -> str:
    """Where the effective value of `section.key` came from, for an error message."""
    env = f"IVR_ENGINE_{section.upper()}_{key.upper()}"
    if env in os.environ:
        return f"the environment variable {env}"
    path = _config_file(args)
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if key in (data.get(section) or {}):
            return f"{path}: {section}.{key}"
        return f"the built-in default of {section}.{key} (not set in {path})"
    return f"the built-in default of {section}.{key} (no --config file given)"


def _config_message(args: argparse.Namespace, exc: ConfigError) -> str:
    """A ConfigError raised while checking a value at run time (a port that is taken, a bad
    network in agi.allow) knows its key but not where the value came from: add that."""
    text = f"ivr-engine: configuration error: {exc}"
    if exc.key and not exc.source and exc.key.count(".") == 1:
        section, key = exc.key.split(".")
        text += f" (the value comes from {_setting_source(args, section, key)})"
    return text


def _check_log_level(level: str) -> None:
    if not isinstance(logging.getLevelName(level.upper()), int):
        raise ConfigError(
            f"not a log level: {level!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)", key="log.level"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        overrides = {"log": {"level": args.log_level}} if args.log_level else None
        args.settings = config.load(args.config, overrides=overrides)
        _check_log_level(args.settings.log.level)
        logsetup.setup(args.settings.log.level.upper(), logfile=args.settings.log.file or None)
    except ConfigError as exc:
        print(_config_message(args, exc), file=sys.stderr)
        return 2
    except OSError as exc:  # the log file cannot be opened
        print(
            f"ivr-engine: configuration error: log.file: cannot open {exc.filename}: "
            f"{exc.strerror}",
            file=sys.stderr,
        )
        return 2
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        print(_config_message(args, exc), file=sys.stderr)
        return 2
    except AmiLoginError as exc:
        # Wrong credentials do not fix themselves: say which setting to change, and where.
        print(
            f"ivr-engine: configuration error: {exc}\n"
            f"  ami.username comes from {_setting_source(args, 'ami', 'username')}\n"
            f"  ami.secret comes from {_setting_source(args, 'ami', 'secret')}",
            file=sys.stderr,
        )
        return 2
    except IvrError as exc:
        print(f"ivr-engine: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A file or socket the command needed: one line, not a traceback.
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"ivr-engine: {exc.strerror or exc}{where}", file=sys.stderr)
        log.debug("OSError detail", exc_info=True)
        return 1
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
