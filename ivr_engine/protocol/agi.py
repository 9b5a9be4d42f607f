"""FastAGI without I/O: bytes in, frozen dataclasses out; commands out as bytes.

Everything here is pure and synchronous (standard library only), so it can be fed raw bytes in
tests, split at any boundary, and fuzzed. `ivr_engine.transport.fastagi` puts it on a socket.

The wire, as Asterisk's `res/res_agi.c` speaks it (read at the 13+/22 sources):

* On connect Asterisk sends the environment: `agi_network: yes`, then `agi_key: value` lines
  (`setup_env()`), then `agi_arg_1..N`, then an empty line.
* We send one command per line. Asterisk reads it with `fgets()` into `AGI_BUF_LEN` (2048) bytes;
  a longer line is cut and the rest runs as a *second command*, so we refuse long lines.
  Arguments are split by `parse_args()`: blanks separate words, `"` toggles quoting, `\\`
  escapes the next character.
* Replies: `200 result=N [(data)] [key=value ...] [text]`, `100 result=0 Trying...` (provisional,
  Gosub), `503 result=-2 Memory allocation failure`, `510 Invalid or unknown command`,
  `511 Command Not Permitted on a dead channel[ or intercept routine]`,
  `520 Invalid command syntax.  Proper usage not available.`, or the multi-line
  `520-Invalid command syntax.  Proper usage follows:` / usage text / `520 End of proper usage.`
  (the usage is sent with `"%s"`, so the end marker may be glued to its last line).
* `HANGUP` on a line of its own: the channel hung up (`run_agi()` sends it when it notices, and
  again when the AGI ends). It is a notice, not a reply: it may come while no command is in
  flight, after a command was sent but before its reply, or after a reply. The reply to the
  command in flight still follows and must be read, or every later reply is out of step.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from ivr_engine.errors import AgiError, AgiProtocolError

__all__ = [
    "AGI_BUF_LEN",
    "MAX_ARGS",
    "AgiArgumentError",
    "AgiConnection",
    "AgiEnvironment",
    "AgiEnvironmentError",
    "AgiResult",
    "AgiSequenceError",
    "ConnectionClosed",
    "ConnectionState",
    "EnvironmentReceived",
    "Event",
    "HangupNoticed",
    "NEED_DATA",
    "NeedData",
    "ReplyReceived",
    "format_command",
    "parse_command_line",
    "parse_environment",
    "parse_reply",
]

# res_agi.c: `#define AGI_BUF_LEN 2048` is the fgets() buffer for one command line, NUL
# included, so a command line (with its "\n") may be at most 2047 bytes.
AGI_BUF_LEN: Final = 2048
# res_agi.c: `#define MAX_ARGS 128`; parse_args() keeps at most MAX_ARGS - 1 words (verb
# words included) and silently drops the rest.
MAX_ARGS: Final = 128

DEFAULT_MAX_LINE: Final = 8192  # env lines and reply lines (GET VARIABLE values can be long)
DEFAULT_MAX_ENV_LINES: Final = 256  # ~22 standard keys + up to 127 agi_arg_N + slack
DEFAULT_MAX_USAGE_LINES: Final = 200  # a 520 usage text is a few dozen lines at most
# agi_exec_full() copies the whole AGI() argument into AGI_BUF_LEN bytes, so a real block
# (about 20 keys plus the arguments) stays well under 8 KiB; 32 KiB bounds what one
# connection can make us hold before its header deadline.
DEFAULT_MAX_ENV_BYTES: Final = 32768

HANGUP_NOTICE: Final = "HANGUP"
FAILURE_LINE: Final = b"FAILURE\n"
USAGE_END: Final = "520 End of proper usage."

_SNIPPET = 80


def _snippet(text: str) -> str:
    """A short, printable excerpt of peer text for error messages."""
    if len(text) > _SNIPPET:
        text = text[:_SNIPPET] + "..."
    return repr(text)


# ---------------------------------------------------------------------------------------------
# Errors (leaves of the shared tree in ivr_engine.errors)


class AgiEnvironmentError(AgiProtocolError):
    """The environment block is not AGI: a bad line, too long, too many lines, missing keys."""


class AgiSequenceError(AgiProtocolError):
    """A command was sent out of turn: before the environment, after close, or while another
    command is still waiting for its reply (AGI allows exactly one in flight)."""


class AgiArgumentError(AgiError, ValueError):
    """A command we refuse to send: a bad verb, an argument with CR/LF/NUL (it would inject a
    second command), a line longer than Asterisk reads, or too many words."""


# ---------------------------------------------------------------------------------------------
# Environment


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


_ENV_KEY = re.compile(r"agi_[A-Za-z0-9_]+")
_ARG_KEY = re.compile(r"agi_arg_([1-9][0-9]*)")
REQUIRED_ENV_KEYS: Final = ("agi_request", "agi_channel", "agi_uniqueid")


@dataclass(frozen=True)
class AgiEnvironment:
    """The `agi_*` variables Asterisk sends when a FastAGI call starts.

    `raw` holds every key exactly as received (read-only). Accessors return "" for a missing
    string key and None for a missing or non-numeric number. Asterisk writes "unknown" for an
    absent caller ID number/name; `caller_number`/`caller_name` turn that into "".
    `undecodable` names the keys whose bytes were not UTF-8 (decoded with U+FFFD).
    """

    raw: Mapping[str, str]
    undecodable: frozenset[str] = field(default=frozenset())

    def __hash__(self) -> int:  # the mapping is read-only; hash its items
        return hash((tuple(sorted(self.raw.items())), self.undecodable))

    def get(self, key: str, default: str = "") -> str:
        """A raw value by its full key (`agi_request`) or its short name (`request`)."""
        if not key.startswith("agi_"):
            key = "agi_" + key
        return self.raw.get(key, default)

    @property
    def request(self) -> str:
        return self.get("agi_request")

    @property
    def network(self) -> bool:
        return self.get("agi_network") == "yes"

    @property
    def network_script(self) -> str:
        return self.get("agi_network_script")

    @property
    def channel(self) -> str:
        return self.get("agi_channel")

    @property
    def channel_type(self) -> str:
        return self.get("agi_type")

    @property
    def uniqueid(self) -> str:
        return self.get("agi_uniqueid")

    @property
    def version(self) -> str:
        return self.get("agi_version")

    @property
    def callerid(self) -> str:
        return self.get("agi_callerid")

    @property
    def calleridname(self) -> str:
        return self.get("agi_calleridname")

    @property
    def caller_number(self) -> str:
        value = self.callerid
        return "" if value == "unknown" else value

    @property
    def caller_name(self) -> str:
        value = self.calleridname
        return "" if value == "unknown" else value

    @property
    def callingpres(self) -> int | None:
        return _int_or_none(self.raw.get("agi_callingpres"))

    @property
    def callingani2(self) -> int | None:
        return _int_or_none(self.raw.get("agi_callingani2"))

    @property
    def callington(self) -> int | None:
        return _int_or_none(self.raw.get("agi_callington"))

    @property
    def callingtns(self) -> int | None:
        return _int_or_none(self.raw.get("agi_callingtns"))

    @property
    def dnid(self) -> str:
        return self.get("agi_dnid")

    @property
    def rdnis(self) -> str:
        return self.get("agi_rdnis")

    @property
    def context(self) -> str:
        return self.get("agi_context")

    @property
    def extension(self) -> str:
        return self.get("agi_extension")

    @property
    def priority(self) -> int | None:
        return _int_or_none(self.raw.get("agi_priority"))

    @property
    def language(self) -> str:
        return self.get("agi_language")

    @property
    def enhanced(self) -> bool:
        return self.get("agi_enhanced") == "1.0"

    @property
    def accountcode(self) -> str:
        return self.get("agi_accountcode")

    @property
    def threadid(self) -> int | None:
        return _int_or_none(self.raw.get("agi_threadid"))

    @property
    def arguments(self) -> tuple[str, ...]:
        """`agi_arg_1..N` in order (validated contiguous when parsed)."""
        out: list[str] = []
        n = 1
        while (value := self.raw.get(f"agi_arg_{n}")) is not None:
            out.append(value)
            n += 1
        return tuple(out)


class _EnvironmentBuilder:
    """Collects environment lines one by one, validating as it goes."""

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._bytes = 0
        self._values: dict[str, str] = {}
        self._undecodable: set[str] = set()
        self.count = 0

    def add(self, line: str, *, lossy: bool) -> None:
        self.count += 1
        self._bytes += len(line) + 1
        if self._bytes > self._max_bytes:
            raise AgiEnvironmentError(
                f"environment block too large: more than {self._max_bytes} bytes "
                "without the terminating empty line"
            )
        if self.count > self._max_lines:
            raise AgiEnvironmentError(
                f"environment block too long: more than {self._max_lines} lines "
                "without the terminating empty line"
            )
        key, sep, value = line.partition(":")
        if not sep or not _ENV_KEY.fullmatch(key):
            raise AgiEnvironmentError(
                f"not an AGI environment line (line {self.count}): {_snippet(line)}; "
                "expected 'agi_<name>: <value>'"
            )
        if key in self._values:
            raise AgiEnvironmentError(f"duplicate key {key} in the environment block")
        # setup_env() writes "agi_key: value"; an empty value is "agi_key: " (one blank).
        if value.startswith(" "):
            value = value[1:]
        self._values[key] = value
        if lossy:
            self._undecodable.add(key)

    def build(self) -> AgiEnvironment:
        if not self._values:
            raise AgiEnvironmentError("empty environment block (an empty line came first)")
        missing = [k for k in REQUIRED_ENV_KEYS if k not in self._values]
        if missing:
            raise AgiEnvironmentError(
                f"environment block lacks {', '.join(missing)} (not sent by an Asterisk AGI?)"
            )
        uniqueid = self._values["agi_uniqueid"]
        if not uniqueid or len(uniqueid) > 150 or not uniqueid.isprintable():
            # AST_MAX_UNIQUEID is 150; it names our task and every log line of the call.
            raise AgiEnvironmentError(f"agi_uniqueid is not a printable id: {_snippet(uniqueid)}")
        numbers = sorted(int(m.group(1)) for k in self._values if (m := _ARG_KEY.fullmatch(k)))
        if numbers != list(range(1, len(numbers) + 1)):
            raise AgiEnvironmentError(f"agi_arg_N keys are not contiguous from 1: {numbers[:10]}")
        return AgiEnvironment(
            raw=MappingProxyType(dict(self._values)),
            undecodable=frozenset(self._undecodable),
        )


def _decode(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def parse_environment(
    data: bytes,
    *,
    max_line: int = DEFAULT_MAX_LINE,
    max_lines: int = DEFAULT_MAX_ENV_LINES,
) -> AgiEnvironment:
    """Parse one complete environment block (lines ending with an empty line).

    Raises AgiEnvironmentError if it is not one; bytes after the empty line are an error too.
    """
    conn = AgiConnection(max_line=max_line, max_env_lines=max_lines)
    conn.receive_data(data)
    conn.receive_eof()
    event = conn.next_event()
    if not isinstance(event, EnvironmentReceived):
        raise AgiEnvironmentError("no terminating empty line: the environment block is truncated")
    if conn.buffered:
        raise AgiEnvironmentError("data after the environment block")
    return event.env


# ---------------------------------------------------------------------------------------------
# Commands


_VERB = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?: [A-Za-z][A-Za-z0-9_]*)*")
_NEEDS_QUOTES = re.compile(r'[\s"\\]')
_FORBIDDEN = ("\r", "\n", "\0")

Arg = str | int


def _quote(arg: str) -> str:
    if arg and not _NEEDS_QUOTES.search(arg):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def format_command(verb: str, *args: Arg) -> bytes:
    """Encode one AGI command line, quoted so that Asterisk's parse_args() gives back `args`.

    `verb` is one or more words of letters/digits/underscores ("STREAM FILE"); it is sent
    upper-case. Each argument is a str or an int. Empty arguments and arguments with blanks,
    `"` or `\\` are double-quoted with `"` and `\\` backslash-escaped. An argument holding CR,
    LF or NUL is refused (AgiArgumentError): caller-supplied text (a CIF name, a caller ID)
    must never be able to end our line and start a command of its own. A line longer than
    Asterisk's 2047-byte read, or more than MAX_ARGS - 1 words, is refused for the same reason
    (Asterisk would split or truncate it).
    """
    if not isinstance(verb, str) or not _VERB.fullmatch(verb):
        raise AgiArgumentError(
            f"invalid AGI verb {verb!r}: expected words of letters, digits and '_' "
            "separated by single spaces (e.g. 'STREAM FILE')"
        )
    verb = verb.upper()
    parts = [verb]
    for i, arg in enumerate(args, start=1):
        if isinstance(arg, bool) or not isinstance(arg, str | int):
            raise AgiArgumentError(
                f"argument {i} of {verb} must be str or int, not {type(arg).__name__}"
            )
        text = str(arg)
        if any(ch in text for ch in _FORBIDDEN):
            # The value is not echoed: it may be caller data.
            raise AgiArgumentError(
                f"argument {i} of {verb} contains CR, LF or NUL; refused (it would end the "
                "command line and inject another command)"
            )
        parts.append(_quote(text))
    words = len(verb.split()) + len(args)
    if words > MAX_ARGS - 1:
        raise AgiArgumentError(
            f"{verb} has {words} words; Asterisk keeps only {MAX_ARGS - 1} (res_agi MAX_ARGS)"
        )
    try:
        line = (" ".join(parts) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from undecodable caller data) has no UTF-8 bytes to send.
        raise AgiArgumentError(
            f"{verb} has an argument that is not valid Unicode text (no UTF-8 bytes); refused"
        ) from None
    if len(line) > AGI_BUF_LEN - 1:
        raise AgiArgumentError(
            f"{verb} command line is {len(line)} bytes; Asterisk reads at most "
            f"{AGI_BUF_LEN - 1} and would run the rest as a second command"
        )
    return line


def parse_command_line(line: str) -> tuple[str, ...]:
    """Split a command line exactly as Asterisk's parse_args() does (for tests and fakes).

    Blanks (space, tab) separate words outside quotes; `"` toggles quoting and, after a blank,
    starts a word (so `""` is an empty word); `\\` makes the next character literal.
    """
    words: list[list[str]] = []
    cur: list[str] | None = None  # None while between words
    quoted = escaped = False
    for ch in line.rstrip("\n"):
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and cur is None:
                cur = []
                words.append(cur)
            continue
        if ch in " \t" and not quoted and not escaped:
            cur = None
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if cur is None:
            cur = []
            words.append(cur)
        cur.append(ch)
        escaped = False
    return tuple("".join(w) for w in words)


# ---------------------------------------------------------------------------------------------
# Replies


@dataclass(frozen=True)
class AgiResult:
    """One reply to a command.

    code        200, or 503/510/511/520 (the reply's three-digit code)
    result      the integer after `result=`; None when absent or not an integer
                (GET DATA sends the digits, `200 result= (timeout)` when none)
    result_text the text after `result=` exactly as sent ("" when absent)
    data        the text in parentheses: "timeout", "dtmf", a variable's value; None if absent
    endpos      the sample offset from `endpos=` (STREAM FILE and friends); None if absent
    fields      other `key=value` pairs after the result (`digit=`, `results=`)
    message     trailing free text ("Gosub complete", "Invalid or unknown command")
    usage       the usage text of a multi-line 520 reply; None otherwise
    raw         the reply exactly as received (all lines of a 520, "\\n"-joined)
    lossy       True when the reply had bytes that were not UTF-8 (replaced by U+FFFD)
    """

    code: int
    result: int | None = None
    result_text: str = ""
    data: str | None = None
    endpos: int | None = None
    fields: tuple[tuple[str, str], ...] = ()
    message: str = ""
    usage: str | None = None
    raw: str = ""
    lossy: bool = False

    @property
    def ok(self) -> bool:
        return self.code == 200

    def field(self, key: str) -> str | None:
        for k, v in self.fields:
            if k == key:
                return v
        return None

    @property
    def digit(self) -> str | None:
        """The DTMF digit that `result` encodes as its ASCII code (0 or less: none)."""
        if self.result is None or self.result <= 0 or self.result > 0x10FFFF:
            return None
        return chr(self.result)


_STATUS = re.compile(r"(\d{3})([ -])(.*)", re.DOTALL)
_TRAILER = re.compile(r"(?:\s+[A-Za-z_][A-Za-z0-9_]*=\S*)*\s*")
_MAX_TRAILER = 256
_KV = re.compile(r"\s+([A-Za-z_][A-Za-z0-9_]*)=(\S*)")


def _split_trailer(rest: str) -> tuple[tuple[tuple[str, str], ...], str]:
    """`key=value ...` pairs then free text (e.g. ` endpos=123` or ` Gosub complete`)."""
    pairs: list[tuple[str, str]] = []
    pos = 0
    while True:
        m = _KV.match(rest, pos)
        if not m:
            break
        pairs.append((m.group(1), m.group(2)))
        pos = m.end()
    return tuple(pairs), rest[pos:].strip()


def _parse_result_line(code: int, body: str, raw: str, lossy: bool) -> AgiResult:
    """Parse the text after `NNN ` of a one-line reply."""
    if not body.startswith("result="):
        # 510 Invalid or unknown command / 511 ... / 520 ... not available.
        return AgiResult(code=code, message=body.strip(), raw=raw, lossy=lossy)
    rest = body[len("result=") :]
    m = re.match(r"\S*", rest)
    result_text = m.group(0) if m else ""
    rest = rest[len(result_text) :]
    data: str | None = None
    stripped = rest.lstrip(" ")
    if stripped.startswith("("):
        inner = stripped[1:]
        # A value in parentheses may itself hold ')' (GET VARIABLE of "a(b)"): take the last
        # ')' after which only key=value pairs follow, else the first ')'. Real trailers are
        # short (" endpos=123456"), so only the tail is searched: no quadratic scan.
        close = -1
        for idx in range(len(inner) - 1, max(-1, len(inner) - 1 - _MAX_TRAILER), -1):
            if inner[idx] == ")" and _TRAILER.fullmatch(inner[idx + 1 :]):
                close = idx
                break
        if close < 0:
            close = inner.find(")")
        if close >= 0:
            data = inner[:close]
            rest = inner[close + 1 :]
        else:
            data = inner  # unterminated: keep what there is, nothing follows
            rest = ""
    pairs, message = _split_trailer(rest)
    endpos: int | None = None
    others: list[tuple[str, str]] = []
    for key, value in pairs:
        if key == "endpos" and endpos is None:
            endpos = _int_or_none(value)
            if endpos is None:
                raise AgiProtocolError(f"endpos is not a number in reply {_snippet(raw)}")
        else:
            others.append((key, value))
    return AgiResult(
        code=code,
        result=_int_or_none(result_text) if result_text else None,
        result_text=result_text,
        data=data,
        endpos=endpos,
        fields=tuple(others),
        message=message,
        raw=raw,
        lossy=lossy,
    )


def parse_reply(text: str | bytes) -> AgiResult:
    """Parse one complete reply (one line, or all lines of a multi-line 520).

    `HANGUP` notice lines and provisional `100` lines before the reply are skipped; use
    AgiConnection to see them as events. Raises AgiProtocolError for anything else.
    """
    data = text.encode("utf-8", errors="surrogateescape") if isinstance(text, str) else text
    if not data.endswith(b"\n"):
        data += b"\n"
    conn = AgiConnection()
    conn._start_without_environment()
    conn._pending = "(parse_reply)"
    conn._state = ConnectionState.AWAITING_REPLY
    conn.receive_data(data)
    conn.receive_eof()
    while True:
        event = conn.next_event()
        if isinstance(event, ReplyReceived):
            if conn.buffered:
                raise AgiProtocolError("more than one reply in the text")
            return event.result
        if isinstance(event, HangupNoticed):
            continue
        raise AgiProtocolError("no complete reply in the text")


# ---------------------------------------------------------------------------------------------
# The connection state machine


class NeedData:
    """next_event() has nothing more until receive_data() or receive_eof() is called."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


@dataclass(frozen=True)
class EnvironmentReceived:
    env: AgiEnvironment


@dataclass(frozen=True)
class ReplyReceived:
    command: str  # the verb it answers ("STREAM FILE")
    result: AgiResult


@dataclass(frozen=True)
class HangupNoticed:
    """Asterisk's `HANGUP` line: the caller is gone. Not a reply; one may still be due."""


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed the connection at a line boundary.

    `pending` is the verb still waiting for its reply, if any (then the reply is lost);
    `before_environment` is True when it closed before sending any byte (a TCP health check).
    """

    pending: str | None = None
    before_environment: bool = False


Event = EnvironmentReceived | ReplyReceived | HangupNoticed | ConnectionClosed


class ConnectionState(enum.Enum):
    ENVIRONMENT = "reading the environment"
    IDLE = "idle"
    AWAITING_REPLY = "awaiting a reply"
    ENDED = "ended with FAILURE"  # we told Asterisk to end the AGI; HANGUP and EOF follow
    CLOSED = "closed"
    FAILED = "failed"


class AgiConnection:
    """The FastAGI conversation seen from the server (our) side, without I/O.

    Feed bytes with receive_data()/receive_eof(), then call next_event() until it returns
    NEED_DATA. Send with send_command(), which returns the bytes to write. Exactly one command
    may be in flight. A protocol error is raised as AgiProtocolError and is sticky: every later
    next_event()/send_command() raises it again.
    """

    def __init__(
        self,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        max_env_lines: int = DEFAULT_MAX_ENV_LINES,
        max_env_bytes: int = DEFAULT_MAX_ENV_BYTES,
        max_usage_lines: int = DEFAULT_MAX_USAGE_LINES,
    ) -> None:
        if max_line < 64 or max_env_lines < 1 or max_usage_lines < 1:
            raise ValueError("AgiConnection limits are too small")
        self._max_line = max_line
        self._max_usage_lines = max_usage_lines
        self._buf = bytearray()
        self._scan = 0  # bytes of _buf already known to hold no "\n"
        self._eof = False
        self._received_any = False
        self._state = ConnectionState.ENVIRONMENT
        self._env_builder: _EnvironmentBuilder | None = _EnvironmentBuilder(
            max_env_lines, max_env_bytes
        )
        self._env: AgiEnvironment | None = None
        self._pending: str | None = None
        self._usage: list[str] | None = None
        self._usage_first = ""
        self._usage_lossy = False
        self._hung_up = False
        self._error: AgiProtocolError | None = None
        self._closed_event: ConnectionClosed | None = None

    # -- introspection

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def env(self) -> AgiEnvironment | None:
        return self._env

    @property
    def pending(self) -> str | None:
        """The verb of the command in flight, if any."""
        return self._pending

    @property
    def hung_up(self) -> bool:
        """True once a HANGUP notice has been read."""
        return self._hung_up

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._buf)

    # -- input

    def receive_data(self, data: bytes) -> None:
        if self._error is not None or self._state is ConnectionState.CLOSED:
            return
        if self._eof:
            self._fail(AgiSequenceError("receive_data() after receive_eof()"))
            return
        if data:
            self._received_any = True
            self._buf += data

    def receive_eof(self) -> None:
        self._eof = True

    # -- output

    def send_command(self, verb: str, *args: Arg) -> bytes:
        """Return the bytes of one command; the connection then awaits its reply."""
        if self._error is not None:
            raise self._error
        if self._state is ConnectionState.ENVIRONMENT:
            raise AgiSequenceError("cannot send a command before the environment block ended")
        if self._state is ConnectionState.CLOSED or self._eof:
            raise AgiSequenceError(f"cannot send {verb}: the connection is closed")
        if self._state is ConnectionState.ENDED:
            raise AgiSequenceError(f"cannot send {verb}: the AGI was ended with FAILURE")
        if self._pending is not None:
            raise AgiSequenceError(
                f"cannot send {verb}: {self._pending} is still waiting for its reply "
                "(AGI allows one command in flight)"
            )
        line = format_command(verb, *args)
        self._pending = verb.upper()
        self._state = ConnectionState.AWAITING_REPLY
        return line

    def end_with_failure(self) -> bytes:
        """Return the line that makes Asterisk end the AGI with `AGISTATUS=FAILURE`.

        res_agi.c run_agi() treats a line starting with "failure" as "the script could not
        run": it stops reading commands and sets AGISTATUS to FAILURE, so the dialplan's
        fallback (an apology and an operator) takes the caller. A plain close would leave
        AGISTATUS at SUCCESS. Only between commands; afterwards expect HANGUP, then EOF.
        """
        if self._error is not None:
            raise self._error
        if self._state is not ConnectionState.IDLE or self._eof:
            raise AgiSequenceError(f"cannot end the AGI while {self._state.value}")
        self._state = ConnectionState.ENDED
        return FAILURE_LINE

    # -- events

    def next_event(self) -> Event | NeedData:
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except AgiProtocolError as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: AgiProtocolError) -> None:
        self._error = exc
        self._state = ConnectionState.FAILED
        self._buf.clear()
        self._scan = 0

    def _start_without_environment(self) -> None:
        """For parse_reply(): a connection that is past its environment block."""
        self._env_builder = None
        self._state = ConnectionState.IDLE

    def _next_line(self) -> tuple[str, bool] | None:
        idx = self._buf.find(b"\n", self._scan)
        if idx < 0:
            if len(self._buf) > self._max_line:
                raise AgiProtocolError(
                    f"line longer than {self._max_line} bytes ({self._state.value})"
                )
            self._scan = len(self._buf)
            return None
        if idx > self._max_line:
            raise AgiProtocolError(f"line longer than {self._max_line} bytes ({self._state.value})")
        raw = bytes(self._buf[:idx])
        del self._buf[: idx + 1]
        self._scan = 0
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        return _decode(raw)

    def _next_event(self) -> Event | NeedData:
        while True:
            if self._closed_event is not None:
                return self._closed_event
            got = self._next_line()
            if got is None:
                return self._at_end_of_buffer()
            line, lossy = got
            if self._state is ConnectionState.ENVIRONMENT:
                event = self._environment_line(line, lossy)
            else:
                event = self._reply_line(line, lossy)
            if event is not None:
                return event

    def _at_end_of_buffer(self) -> Event | NeedData:
        if not self._eof:
            return NEED_DATA
        if self._buf:
            raise AgiProtocolError(
                f"connection closed in the middle of a line ({self._state.value}): "
                f"{_snippet(self._buf.decode('utf-8', errors='replace'))}"
            )
        if self._state is ConnectionState.ENVIRONMENT and self._received_any:
            count = self._env_builder.count if self._env_builder else 0
            raise AgiEnvironmentError(
                f"connection closed after {count} environment lines, before the empty line "
                "that ends the block"
            )
        if self._usage is not None:
            raise AgiProtocolError(
                f"connection closed inside a 520 usage text (reply to {self._pending})"
            )
        before_env = self._state is ConnectionState.ENVIRONMENT
        pending = self._pending
        self._state = ConnectionState.CLOSED
        self._pending = None
        self._closed_event = ConnectionClosed(pending=pending, before_environment=before_env)
        return self._closed_event

    def _environment_line(self, line: str, lossy: bool) -> Event | None:
        builder = self._env_builder
        if builder is None:  # pragma: no cover - guarded by the state
            raise AgiSequenceError("environment line outside the environment state")
        if line == "":
            self._env = builder.build()
            self._env_builder = None
            self._state = ConnectionState.IDLE
            return EnvironmentReceived(self._env)
        builder.add(line, lossy=lossy)
        return None

    def _reply_line(self, line: str, lossy: bool) -> Event | None:
        if self._usage is not None:
            return self._usage_line(line, lossy)
        if line == HANGUP_NOTICE:
            self._hung_up = True
            return HangupNoticed()
        if self._pending is None:
            raise AgiProtocolError(
                f"unexpected line while no command is in flight: {_snippet(line)}"
            )
        m = _STATUS.fullmatch(line)
        if not m:
            raise AgiProtocolError(f"garbled reply to {self._pending}: {_snippet(line)}")
        code, sep, body = int(m.group(1)), m.group(2), m.group(3)
        if code == 100:
            # "100 result=0 Trying..." (Gosub): provisional, the real reply follows.
            return None
        if sep == "-":
            if code != 520:
                raise AgiProtocolError(
                    f"unexpected multi-line reply {code} to {self._pending}: {_snippet(line)}"
                )
            self._usage = []
            self._usage_first = line
            self._usage_lossy = lossy
            return None
        if code < 200 or code > 599:
            raise AgiProtocolError(f"reply code {code} out of range: {_snippet(line)}")
        return self._complete(_parse_result_line(code, body, line, lossy))

    def _usage_line(self, line: str, lossy: bool) -> Event | None:
        usage = self._usage
        if usage is None:  # pragma: no cover - guarded by the caller
            raise AgiSequenceError("usage line outside a 520 reply")
        self._usage_lossy = self._usage_lossy or lossy
        if line.endswith(USAGE_END):
            # res_agi sends the usage with "%s" and no newline of its own, so the end marker
            # may share the last usage line.
            head = line[: -len(USAGE_END)]
            if head:
                usage.append(head)
            raw = "\n".join([self._usage_first, *usage, USAGE_END])
            result = AgiResult(
                code=520,
                message=self._usage_first[4:].strip(),
                usage="\n".join(usage).strip("\n"),
                raw=raw,
                lossy=self._usage_lossy,
            )
            self._usage = None
            return self._complete(result)
        usage.append(line)
        if len(usage) > self._max_usage_lines:
            raise AgiProtocolError(
                f"520 usage text longer than {self._max_usage_lines} lines "
                f"(reply to {self._pending}); no '{USAGE_END}'"
            )
        return None

    def _complete(self, result: AgiResult) -> ReplyReceived:
        command = self._pending or ""
        self._pending = None
        self._state = ConnectionState.IDLE
        return ReplyReceived(command=command, result=result)


def environment_lines(env: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """Encode an environment block as Asterisk sends it (for tests and fake servers)."""
    items = env.items() if isinstance(env, Mapping) else env
    return b"".join(f"{k}: {v}\n".encode() for k, v in items) + b"\n"
