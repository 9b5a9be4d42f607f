"""One settings object, validated once at start-up.

Precedence: defaults < file (TOML) < `IVR_ENGINE_<SECTION>_<KEY>` environment < command line.
Unknown sections and keys are errors naming the file and the key. Secrets are never printed:
`Settings.redacted()` is what logs and `config show` use.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from ivr_engine.errors import ConfigError

SECRET_KEYS = frozenset({"secret", "password"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class AgiSettings:
    host: str = "127.0.0.1"
    port: int = 4573
    # Peers allowed to connect (exact addresses or CIDR); loopback only by default.
    allow: tuple[str, ...] = ("127.0.0.0/8", "::1")
    max_sessions: int = 2000
    command_timeout: float = 30.0
    header_timeout: float = 5.0
    drain_timeout: float = 20.0


@dataclass(frozen=True)
class AmiSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "ivr-engine"
    secret: str = "ivr-engine-dev-secret"
    ping_interval: float = 5.0
    action_timeout: float = 10.0


@dataclass(frozen=True)
class MqttSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "ivr"
    buffer: int = 10000
    username: str = ""
    password: str = ""


@dataclass(frozen=True)
class StoreSettings:
    path: str = "var/ivr-engine.sqlite3"
    audit_path: str = "var/audit.sqlite3"


@dataclass(frozen=True)
class FlowSettings:
    dir: str = "flows"
    entry: str = "hotline"
    deploy_dir: str = "var/flows"


@dataclass(frozen=True)
class PromptSettings:
    dir: str = "prompts"


@dataclass(frozen=True)
class PbxSettings:
    root: str = ".pbx/root"
    conf_dir: str = "asterisk-conf"
    trunk_dir: str = "sip-trunk"


@dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"
    file: str = ""


_KEY = frozenset("0123456789*#")


@dataclass(frozen=True)
class AcdSettings:
    """ivr-engine's own ACD (acd/router.py). Off: the dialplan's app_queue takes queued calls.

    Times are seconds. `announce_every` 0 = no position/wait announcements. `callback_key` and
    `operator_key` are DTMF keys the caller may press while waiting ("" = not offered; the
    operator key only where the roster's queue has `operator: true`). `callback_dial` is the
    PBX dial string of a customer's number for callbacks ({number} is replaced).
    `recordings_dir` is where Asterisk's MixMonitor writes agent calls, as Asterisk sees the
    path (in the dev PBX: inside its root). `huge_pages_every`: how often the heap (the
    matcher's agents and heaps) is collapsed into 2 MiB pages, first a minute after start-up
    (acd/hugepages.py; 0 = never)."""

    enabled: bool = True
    roster: str = "asterisk-conf/agents.yaml"
    ring_timeout: float = 15.0
    max_misses: int = 2
    announce_every: float = 30.0
    callback_key: str = "1"
    operator_key: str = "0"
    callback_dial: str = "PJSIP/devtrunk/sip:{number}@127.0.0.1:5062"
    callback_ring: float = 30.0
    callback_retries: int = 1
    callback_retry_after: float = 60.0
    recordings_dir: str = "/var/spool/asterisk/monitor/acd"
    huge_pages_every: float = 600.0

    def __post_init__(self) -> None:
        checks = (
            ("ring_timeout", 1.0 <= self.ring_timeout <= 300.0, "between 1 and 300 seconds"),
            ("max_misses", 1 <= self.max_misses <= 100, "between 1 and 100"),
            (
                "announce_every",
                self.announce_every == 0 or 10.0 <= self.announce_every <= 3600.0,
                "0 (off) or between 10 and 3600 seconds",
            ),
            (
                "callback_key",
                len(self.callback_key) <= 1 and set(self.callback_key) <= _KEY,
                "one key of 0-9 * # or empty",
            ),
            (
                "operator_key",
                len(self.operator_key) <= 1 and set(self.operator_key) <= _KEY,
                "one key of 0-9 * # or empty",
            ),
            ("callback_dial", "{number}" in self.callback_dial, "a dial string with {number}"),
            ("callback_ring", 5.0 <= self.callback_ring <= 300.0, "between 5 and 300 seconds"),
            ("callback_retries", 0 <= self.callback_retries <= 5, "between 0 and 5"),
            ("callback_retry_after", self.callback_retry_after >= 0, "0 or more seconds"),
            ("recordings_dir", self.recordings_dir.startswith("/"), "an absolute path"),
            (
                "huge_pages_every",
                self.huge_pages_every == 0 or 60.0 <= self.huge_pages_every <= 86400.0,
                "0 (never) or between 60 and 86400 seconds",
            ),
        )
        for key, ok, want in checks:
            if not ok:
                raise _Invalid(key, f"must be {want}, got {getattr(self, key)!r}")
        if self.callback_key and self.callback_key == self.operator_key:
            raise _Invalid("operator_key", "must differ from callback_key")


class _Invalid(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Settings:
    agi: AgiSettings = field(default_factory=AgiSettings)
    ami: AmiSettings = field(default_factory=AmiSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    flows: FlowSettings = field(default_factory=FlowSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    pbx: PbxSettings = field(default_factory=PbxSettings)
    log: LogSettings = field(default_factory=LogSettings)
    acd: AcdSettings = field(default_factory=AcdSettings)

    def redacted(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for f in fields(self):
            section = dataclasses.asdict(getattr(self, f.name))
            for key in section:
                if key in SECRET_KEYS and section[key]:
                    section[key] = "********"
            out[f.name] = section
        return out


def _coerce(value: Any, typ: Any, *, source: str, key: str) -> Any:
    """Check or convert one value to the field's type; strings come from env and CLI."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ == tuple[str, ...]:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"expected {name}, got {value!r}", source=source, key=key)


def _apply(base: Settings, overrides: Mapping[str, Mapping[str, Any]], *, source: str) -> Settings:
    sections = {f.name: f for f in fields(Settings)}
    new_sections: dict[str, Any] = {}
    for section_name, values in overrides.items():
        if section_name not in sections:
            raise ConfigError(
                f"unknown section (known: {', '.join(sorted(sections))})",
                source=source,
                key=section_name,
            )
        if not isinstance(values, Mapping):
            raise ConfigError("expected a table of keys", source=source, key=section_name)
        current = new_sections.get(section_name, getattr(base, section_name))
        hints = get_type_hints(type(current))
        changes: dict[str, Any] = {}
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(
                    f"unknown key (known: {', '.join(sorted(hints))})",
                    source=source,
                    key=f"{section_name}.{key}",
                )
            changes[key] = _coerce(value, hints[key], source=source, key=f"{section_name}.{key}")
        try:
            new_sections[section_name] = dataclasses.replace(current, **changes)
        except _Invalid as exc:
            raise ConfigError(str(exc), source=source, key=f"{section_name}.{exc.key}") from None
    return dataclasses.replace(base, **new_sections)


def _from_env(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith("IVR_ENGINE_") or name == "IVR_ENGINE_CONFIG":
            continue
        rest = name[len("IVR_ENGINE_") :].lower()
        section, _, key = rest.partition("_")
        if not key:
            raise ConfigError("expected IVR_ENGINE_<SECTION>_<KEY>", source="environment", key=name)
        out.setdefault(section, {})[key] = value
    return out


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build the settings: defaults, then the file, then the environment, then `overrides`."""
    environ = os.environ if environ is None else environ
    settings = Settings()
    if path is None and environ.get("IVR_ENGINE_CONFIG"):
        path = environ["IVR_ENGINE_CONFIG"]
    if path is not None:
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", source=str(p)) from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"not valid TOML: {exc}", source=str(p)) from None
        settings = _apply(settings, data, source=str(p))
    settings = _apply(settings, _from_env(environ), source="environment")
    if overrides:
        settings = _apply(settings, overrides, source="command line")
    return settings
