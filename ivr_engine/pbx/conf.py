"""Reading the Asterisk configuration we ship: just enough to know where the PBX listens.

Asterisk's `.conf` syntax: `[section]`, `[section](!)` (a template), `[section](tpl,...)`
(inherits), `key = value` or `key => value`, `;` comments (`\\;` is a literal semicolon),
`#include file`. Sections may repeat (pjsip.conf keys endpoint, aor and auth by one name), so
sections are kept as an ordered list, not a dict.

Pure: no I/O except `load_conf_dir`, which only reads files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ivr_engine.errors import DevPbxError

_SECTION = re.compile(r"^\[(?P<name>[^\]]+)\](?:\((?P<opts>[^)]*)\))?\s*$")
_KEYVAL = re.compile(r"^(?P<key>[A-Za-z0-9_.\-]+)\s*=>?\s*(?P<value>.*)$")

# Files whose change needs an Asterisk restart: `core reload` does not load or unload modules
# and does not re-read asterisk.conf's directories.
RESTART_FILES = frozenset({"modules.conf", "asterisk.conf"})


class ConfSyntaxError(DevPbxError):
    """A line of an Asterisk .conf file that is neither a section, a key nor a directive."""

    def __init__(self, message: str, *, path: str, line: int):
        self.path = path
        self.line = line
        super().__init__(f"{path}:{line}: {message}")


@dataclass(frozen=True)
class ConfSection:
    name: str
    options: tuple[str, ...]  # ("!",) for a template, template names for inheritance
    items: tuple[tuple[str, str], ...]
    line: int

    @property
    def is_template(self) -> bool:
        return "!" in self.options

    def get(self, key: str, default: str | None = None) -> str | None:
        """The last value of `key` in this section (Asterisk: the last one wins for scalars)."""
        found = default
        for k, v in self.items:
            if k == key:
                found = v
        return found

    def get_all(self, key: str) -> list[str]:
        return [v for k, v in self.items if k == key]


@dataclass(frozen=True)
class ConfFile:
    path: str
    sections: tuple[ConfSection, ...]
    includes: tuple[str, ...] = field(default=())

    def sections_named(self, name: str) -> list[ConfSection]:
        return [s for s in self.sections if s.name == name]

    def sections_of_type(self, typ: str) -> list[ConfSection]:
        """PJSIP-style sections whose `type` key is `typ` (templates excluded)."""
        return [s for s in self.sections if not s.is_template and s.get("type") == typ]


def _strip_comment(line: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line) and line[i + 1] == ";":
            out.append(";")
            i += 2
            continue
        if ch == ";":
            break
        out.append(ch)
        i += 1
    return "".join(out).strip()


def parse_conf(text: str, *, path: str = "<conf>") -> ConfFile:
    """Parse one Asterisk .conf file. Raises ConfSyntaxError with file:line on bad lines."""
    sections: list[ConfSection] = []
    includes: list[str] = []
    current: tuple[str, tuple[str, ...], int] | None = None
    items: list[tuple[str, str]] = []

    def close() -> None:
        if current is not None:
            sections.append(ConfSection(current[0], current[1], tuple(items), current[2]))

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if not line:
            continue
        if line.startswith("#"):
            directive, _, arg = line[1:].partition(" ")
            if directive in {"include", "tryinclude"}:
                includes.append(arg.strip().strip('"'))
                continue
            if directive == "exec":
                raise ConfSyntaxError(
                    "#exec is not allowed in shipped config", path=path, line=lineno
                )
            raise ConfSyntaxError(f"unknown directive #{directive}", path=path, line=lineno)
        m = _SECTION.match(line)
        if m:
            close()
            opts = tuple(o.strip() for o in (m.group("opts") or "").split(",") if o.strip())
            current = (m.group("name").strip(), opts, lineno)
            items = []
            continue
        # `same => n,...` (a dialplan continuation) is a key like any other here.
        kv = _KEYVAL.match(line)
        if not kv:
            raise ConfSyntaxError(
                f"expected 'key = value', got {raw.strip()!r}", path=path, line=lineno
            )
        if current is None:
            raise ConfSyntaxError("key outside any [section]", path=path, line=lineno)
        items.append((kv.group("key"), kv.group("value").strip()))
    close()
    return ConfFile(path=path, sections=tuple(sections), includes=tuple(includes))


@dataclass(frozen=True)
class Listeners:
    """Where the shipped configuration makes Asterisk listen."""

    ami_host: str
    ami_port: int
    sip_host: str
    sip_port: int
    rtp_start: int
    rtp_end: int


def _split_hostport(value: str, *, default_port: int, where: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    try:
        return host, int(port)
    except ValueError:
        raise DevPbxError(f"{where}: bad port in {value!r}") from None


def _int(value: str | None, *, where: str) -> int:
    if value is None:
        raise DevPbxError(f"{where}: missing")
    try:
        return int(value)
    except ValueError:
        raise DevPbxError(f"{where}: expected a number, got {value!r}") from None


def listeners(manager: ConfFile, pjsip: ConfFile, rtp: ConfFile) -> Listeners:
    """Read AMI, SIP and RTP addresses from manager.conf, pjsip.conf and rtp.conf."""
    general = manager.sections_named("general")
    if not general:
        raise DevPbxError(f"{manager.path}: no [general] section")
    ami_port = _int(general[-1].get("port", "5038"), where=f"{manager.path}: [general] port")
    ami_host = general[-1].get("bindaddr", "0.0.0.0") or "0.0.0.0"
    transports = [s for s in pjsip.sections_of_type("transport") if s.get("protocol") == "udp"]
    if not transports:
        raise DevPbxError(f"{pjsip.path}: no UDP transport")
    bind = transports[0].get("bind")
    if not bind:
        raise DevPbxError(f"{pjsip.path}: [{transports[0].name}] has no bind")
    sip_host, sip_port = _split_hostport(bind, default_port=5060, where=f"{pjsip.path}: bind")
    rtp_general = rtp.sections_named("general")
    if not rtp_general:
        raise DevPbxError(f"{rtp.path}: no [general] section")
    start = _int(rtp_general[-1].get("rtpstart"), where=f"{rtp.path}: rtpstart")
    end = _int(rtp_general[-1].get("rtpend"), where=f"{rtp.path}: rtpend")
    if not 1024 <= start < end <= 65535:
        raise DevPbxError(f"{rtp.path}: RTP range {start}-{end} is not a valid port range")
    return Listeners(ami_host, ami_port, sip_host, sip_port, start, end)


def conf_sources(dirs: Sequence[Path]) -> list[Path]:
    """The files installed into /etc/asterisk: every `*.conf` of the given folders.

    `*.conf.example` files are documentation (carrier templates) and are not installed.
    Two folders shipping the same file name is an error: one would silently hide the other.
    """
    seen: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            raise DevPbxError(f"config folder {d} does not exist")
        for p in sorted(d.glob("*.conf")):
            if p.name in seen:
                raise DevPbxError(f"{p} and {seen[p.name]} both define {p.name}")
            seen[p.name] = p
    if not seen:
        raise DevPbxError(f"no .conf files in {', '.join(str(d) for d in dirs)}")
    return [seen[name] for name in sorted(seen)]


def digests(files: Iterable[Path]) -> dict[str, str]:
    """sha256 of each file, keyed by file name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def change_kind(old: dict[str, str], new: dict[str, str]) -> str:
    """'none', 'reload' (core reload suffices) or 'restart' (modules or paths changed)."""
    if old == new:
        return "none"
    changed = {n for n in old.keys() | new.keys() if old.get(n) != new.get(n)}
    return "restart" if changed & RESTART_FILES else "reload"
