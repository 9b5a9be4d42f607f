"""The FastAGI server: Asterisk's `AGI(agi://host:port/script)` connects here, one call each.

`FastAgiServer` accepts connections from allowed peers, caps the number of concurrent calls,
reads each call's environment under a deadline and hands an `AgiSession` to the handler (one
task per call, named `agi-<uniqueid>`, with the call id in `ivr_engine.log.call_id_var`).
`AgiSession` sends one command at a time and reads its reply under a deadline, using the
sans-I/O `ivr_engine.protocol.agi.AgiConnection` for every byte.

Errors an `AgiSession` raises (all from `ivr_engine.errors`):

* `AgiHangup`: the caller is gone: a `HANGUP` notice came with the reply, a command that fails
  with -1 on a channel that turns out to be hung up, or the PBX closed the connection.
  `AgiDeadChannel` (a subclass) when Asterisk answered 511.
* `AgiCommandError`: Asterisk refused the command (510, 520 usage, 503) or a command failed on a
  live channel (a prompt file that does not exist).
* `AgiTimeout`: no reply within the deadline; the session is closed (the stream is out of step).
* `AgiProtocolError`: garbled bytes; the session is closed.
* `AgiArgumentError` (a ValueError): an argument we refuse to send (CR/LF/NUL, too long).

A handler, as the CallChannel adapter will write one::

    async def hotline(session: AgiSession) -> None:
        await session.answer()
        digit = await session.stream_file("welcome", escape_digits="123")
        pin = await session.get_data("enter-pin", timeout_ms=5000, max_digits=6, sensitive=True)
        await session.set_variable("IVR_RESULT", "ok")   # dead-channel safe

    server = FastAgiServer.from_settings(hotline, settings.agi)
    await server.start(); ...; await server.close()

Ending a call: when the handler returns, the connection is closed and Asterisk continues the
dialplan after AGI(). When the handler raises (anything but a hangup) or is cancelled at
shutdown, and when a connection comes over the session cap, the server first sends the line
"FAILURE", which res_agi.c takes as "the script could not run": AGISTATUS=FAILURE, and the
dialplan's fallback (an apology, an operator) takes the caller instead of silence.

Nothing here logs a DTMF-bearing reply above DEBUG, and a command marked `sensitive=True`
has its arguments and its reply replaced by `<withheld>` in every log line and error message.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import NoReturn

from ivr_engine.config import AgiSettings
from ivr_engine.errors import (
    AgiCommandError,
    AgiDeadChannel,
    AgiError,
    AgiHangup,
    AgiProtocolError,
    AgiTimeout,
    ConfigError,
)
from ivr_engine.log import call_id_var
from ivr_engine.protocol.agi import (
    FAILURE_LINE,
    AgiConnection,
    AgiEnvironment,
    AgiResult,
    AgiSequenceError,
    Arg,
    ConnectionClosed,
    EnvironmentReceived,
    Event,
    HangupNoticed,
    NeedData,
    ReplyReceived,
)

__all__ = ["AgiSession", "DigitsInput", "FastAgiServer", "SessionHandler"]

log = logging.getLogger(__name__)

READ_CHUNK = 65536
CLOSE_TIMEOUT = 2.0  # seconds to let a socket close politely before aborting it
PROBE_TIMEOUT = 5.0  # CHANNEL STATUS after a -1 result, to tell "hung up" from "failed"
REJECT_LIMIT = 64  # over-cap connections being told FAILURE at once; beyond, plain close
REFUSAL_LOG_INTERVAL = 60.0  # one WARNING per refused address (or for the cap) per interval
# Connections that have not sent their environment yet, apart from the calls in progress, so
# a flood of silent connections cannot take the calls' slots. Larger than LISTEN_BACKLOG: one
# burst of accepts (asyncio accepts up to `backlog` at a time, each pending until its task
# runs) must not fill it. Measured: a cap of 256 was overrun by such bursts at 200 calls/s.
MAX_PENDING = 2000
# A pending connection younger than this is not evicted to make room (one burst of accepts
# must not evict a real call before its environment could be read): the newcomer is told
# FAILURE instead, and the dialplan's fallback takes that caller.
PENDING_GRACE = 1.0
# The listen backlog. asyncio's default (100) overflows when Asterisk connects a few hundred
# calls within one scheduling hiccup of the loop; the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024
WITHHELD = "<withheld>"

SessionHandler = Callable[["AgiSession"], Awaitable[None]]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class DigitsInput:
    """What GET DATA collected: `digits` ("" if none) and whether the caller stopped typing
    (inter-digit timeout) rather than ending with `#` or reaching `max_digits`."""

    digits: str
    timed_out: bool

    def __repr__(self) -> str:  # digits may be a PIN: never in a repr that reaches a log
        return f"DigitsInput(digits=<{len(self.digits)} digits>, timed_out={self.timed_out})"


def _describe(verb: str, args: tuple[Arg, ...], sensitive: bool) -> str:
    if sensitive:
        return f"{verb.upper()} {WITHHELD}" if args else verb.upper()
    return " ".join([verb.upper(), *(repr(a) if isinstance(a, str) else str(a) for a in args)])


class _Described:
    """`_describe()` deferred until the text is needed (an error message, f-strings)."""

    __slots__ = ("verb", "args", "sensitive")

    def __init__(self, verb: str, args: tuple[Arg, ...], sensitive: bool) -> None:
        self.verb = verb
        self.args = args
        self.sensitive = sensitive

    def __str__(self) -> str:
        return _describe(self.verb, self.args, self.sensitive)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _describe_reply(result: AgiResult, sensitive: bool) -> str:
    if sensitive and result.code == 200:
        return f"200 result={WITHHELD}"
    return result.raw.splitlines()[0] if result.raw else str(result.code)


class AgiSession:
    """One FastAGI call: its environment, and the commands we send on it.

    Created by FastAgiServer and handed to the handler; not built by application code. One
    command at a time: a second concurrent `command()` raises AgiSequenceError.

    Dead channels: once the caller has hung up, a command raises AgiHangup unless it is sent
    with `dead_ok=True` (SET/GET VARIABLE, VERBOSE, NOOP pass it: Asterisk runs those on a dead
    channel, so the call's outcome can still be recorded on it).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        peer: str,
        command_timeout: float,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._peer = peer
        self._command_timeout = command_timeout
        self._conn = AgiConnection()
        self._closed = False  # no more commands
        self._socket_closed = False
        self._close_reason: AgiError | None = None
        self._hangup_logged = False
        self._dead = False  # a 511 reply: Asterisk runs the AGI in dead mode
        self.evicted = False  # closed by the server before its environment came (max_pending)
        self.connected_at = asyncio.get_running_loop().time()

    # -- what the handler can look at

    @property
    def env(self) -> AgiEnvironment:
        """The call's AGI environment (always set when the handler runs)."""
        env = self._conn.env
        if env is None:
            raise AgiSequenceError("the environment has not been received yet")
        return env

    @property
    def call_id(self) -> str:
        """Asterisk's uniqueid of the channel."""
        return self.env.uniqueid

    @property
    def peer(self) -> str:
        """The PBX address, `host:port`."""
        return self._peer

    @property
    def hung_up(self) -> bool:
        """True once Asterisk said the caller hung up (HANGUP notice or a 511 reply)."""
        return self._conn.hung_up or self._dead or isinstance(self._close_reason, AgiHangup)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the one primitive

    async def command(
        self,
        verb: str,
        *args: Arg,
        timeout: float | None = None,  # noqa: ASYNC109 - why: see the docstring
        sensitive: bool = False,
        dead_ok: bool = False,
    ) -> AgiResult:
        """Send one command and return its `200` reply.

        `timeout` (seconds) defaults to the server's command timeout. It is a parameter rather
        than an `asyncio.timeout()` around the call because a reply cut off half-read leaves
        the stream out of step: on this timeout the session is closed (AgiTimeout), and a
        caller's cancellation closes it too.

        `sensitive=True` keeps the arguments and the reply out of every log line and error
        message. `dead_ok=True` returns the reply even after the caller hung up (for commands
        Asterisk runs on a dead channel). Raises AgiHangup, AgiDeadChannel (511),
        AgiCommandError (510/520/503), AgiTimeout, AgiProtocolError, AgiArgumentError.
        """
        if self._closed:
            if isinstance(self._close_reason, AgiHangup):
                raise AgiHangup(f"cannot send {verb.upper()}: {self._close_reason}")
            reason = f": {self._close_reason}" if self._close_reason else ""
            raise AgiSequenceError(f"cannot send {verb.upper()}: the session is closed{reason}")
        if self.hung_up and not dead_ok:
            raise AgiHangup(f"cannot send {verb.upper()}: the caller has hung up")
        line = self._conn.send_command(verb, *args)  # AgiArgumentError: nothing was sent
        deadline = self._command_timeout if timeout is None else timeout
        # Described once per command and only when a line needs it: at INFO, hundreds of
        # commands a second would otherwise format arguments nobody reads.
        debug = log.isEnabledFor(logging.DEBUG)
        what = _describe(verb, args, sensitive) if debug else _Described(verb, args, sensitive)
        if debug:
            log.debug("-> %s", what)
        try:
            async with asyncio.timeout(deadline):
                self._writer.write(line)
                await self._writer.drain()
                reply = await self._await_reply(verb)
        except TimeoutError:
            err: AgiError = AgiTimeout(
                f"no reply to {what} within {deadline:.1f}s; session closed (the reply "
                "stream would be out of step)"
            )
            await self._fail(err)
            raise err from None
        except AgiProtocolError as exc:
            err = exc
            if sensitive:
                err = AgiProtocolError(f"garbled reply to {what} (content {WITHHELD})")
            await self._fail(err)
            if err is exc:
                raise
            raise err from None
        except AgiHangup as exc:
            await self._fail(exc)
            raise
        except OSError as exc:
            err = AgiHangup(f"connection to the PBX lost during {what}: {exc.strerror or exc}")
            await self._fail(err)
            raise err from None
        except asyncio.CancelledError:
            # The reply may be half-read: nothing could follow in step. Close without awaiting.
            self._close_reason = AgiSequenceError(f"cancelled while {what} awaited its reply")
            self._closed = True
            self._writer.close()
            raise
        result = reply.result
        if debug:
            log.debug("<- %s", _describe_reply(result, sensitive))
        if result.code == 511:
            self._dead = True
            raise AgiDeadChannel(f"{verb.upper()}: the channel is dead ({result.message})")
        if result.code != 200:
            detail = result.message
            if result.usage:
                detail += f" [{result.usage.strip().splitlines()[0].strip()}]"
            raise AgiCommandError(
                f"the PBX refused {what}: {result.code} {detail}",
                code=result.code,
                command=verb.upper(),
            )
        if self._conn.hung_up and not dead_ok:
            raise AgiHangup(f"the caller hung up during {verb.upper()}")
        return result

    async def _await_reply(self, verb: str) -> ReplyReceived:
        while True:
            event = await self._read_event()
            if isinstance(event, ReplyReceived):
                return event
            if isinstance(event, HangupNoticed):
                if not self._hangup_logged:
                    self._hangup_logged = True
                    # DEBUG: whoever handles the hangup logs it once, with where it happened.
                    log.debug("the PBX says the caller hung up (HANGUP notice)")
                continue
            if isinstance(event, ConnectionClosed):
                raise AgiHangup(
                    f"the PBX closed the connection while {verb.upper()} awaited its reply"
                )
            raise AgiProtocolError(f"unexpected {type(event).__name__} while awaiting a reply")

    async def _read_event(self) -> Event:
        while True:
            event = self._conn.next_event()
            if not isinstance(event, NeedData):
                return event
            try:
                data = await self._reader.read(READ_CHUNK)
            except ConnectionError as exc:
                log.debug("read from %s failed: %s; treated as end of stream", self._peer, exc)
                data = b""
            if data:
                self._conn.receive_data(data)
            else:
                self._conn.receive_eof()

    async def _read_environment(self) -> AgiEnvironment | None:
        """The environment, or None if the peer closed before sending a single byte."""
        event = await self._read_event()
        if isinstance(event, EnvironmentReceived):
            return event.env
        if isinstance(event, ConnectionClosed):
            return None
        raise AgiProtocolError(f"unexpected {type(event).__name__} before the environment")

    def _evict(self) -> None:
        """Before the environment: say FAILURE and close, without waiting (the server does
        this from its accept callback). The task reading the environment then sees the end
        of the stream and finishes."""
        self.evicted = True
        self._closed = True
        if self._socket_closed:
            return
        try:
            self._writer.write(FAILURE_LINE)
        except (OSError, RuntimeError):
            pass  # the transport is already closing: nothing to say it on
        self._writer.close()

    async def _fail(self, reason: AgiError) -> None:
        self._close_reason = reason
        await self.close()

    def _take_buffered_notices(self) -> None:
        """Read what is already buffered after a reply, without waiting: the HANGUP notice
        Asterisk writes right after a -1 reply has usually arrived with it (under load
        always), and then the CHANNEL STATUS probe, a round trip through Asterisk, is not
        needed. Anything else is left for the next read to report."""
        try:
            while self._conn.buffered:
                event = self._conn.next_event()
                if not isinstance(event, HangupNoticed):
                    return
                if not self._hangup_logged:
                    self._hangup_logged = True
                    log.debug("the PBX says the caller hung up (HANGUP notice)")
        except AgiProtocolError:
            return  # stored in the connection: the probe's read raises it as usual

    async def _check_failed(self, verb: str) -> NoReturn:
        """A `-1` result means "error or hangup": ask CHANNEL STATUS which one it was.

        On a hung-up channel Asterisk first sends HANGUP, then answers 511 (res_agi.c
        run_agi() switches to dead mode), so the probe raises AgiHangup/AgiDeadChannel.
        """
        if not self.hung_up:
            self._take_buffered_notices()
        if not self.hung_up:
            try:
                await self.command(
                    "CHANNEL STATUS", timeout=min(self._command_timeout, PROBE_TIMEOUT)
                )
            except AgiHangup as exc:
                # Seen with Asterisk 22.10: "200 result=-1 endpos=8480", then "HANGUP", then
                # 511 to the probe. Name the command that failed, keep the kind of hangup.
                raise type(exc)(f"{verb} returned -1: the caller hung up ({exc})") from exc
        if self.hung_up:
            raise AgiHangup(f"{verb}: the caller hung up")
        raise AgiCommandError(
            f"{verb} failed (result -1) on a live channel", code=200, command=verb
        )

    async def close(self) -> None:
        """Close the connection (idempotent).

        Asterisk then continues the dialplan after AGI(), with AGISTATUS=SUCCESS, or FAILURE
        if a command failed during the call (Asterisk 22: a missing prompt file, an unknown
        application). To make the dialplan fall back, use end_with_failure().
        """
        self._closed = True
        if self._socket_closed:
            return
        self._socket_closed = True
        await _close_writer(self._writer)

    async def end_with_failure(self) -> bool:
        """End the call's AGI with AGISTATUS=FAILURE, so the dialplan's fallback (an apology,
        then an operator) takes the caller, then close.

        Returns False, and only closes, when it can no longer be said: the session is closed,
        a command is in flight, or the caller is gone. The server does this by itself when a
        handler fails or is cancelled at shutdown.
        """
        if self._closed or self._conn.pending is not None or self.hung_up:
            await self.close()
            return False
        line = self._conn.end_with_failure()
        self._closed = True
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                self._writer.write(line)
                await self._writer.drain()
                # Asterisk reads the line, ends the AGI (sending HANGUP) and closes its end.
                # Closing ours first could reset the connection before it read the line.
                while not isinstance(await self._read_event(), ConnectionClosed):
                    pass
        except (TimeoutError, OSError, AgiProtocolError) as exc:
            log.debug("ending with FAILURE: %s did not close in step: %r", self._peer, exc)
        finally:
            await self.close()
        log.info("AGI ended with FAILURE: the dialplan fallback takes the caller")
        return True

    # -- conveniences (the API the CallChannel adapter builds on)

    async def answer(self) -> None:
        """Answer the channel if it is not answered yet."""
        result = await self.command("ANSWER")
        if result.result == -1:
            await self._check_failed("ANSWER")

    async def hangup(self) -> None:
        """Hang up the caller. Does nothing if the caller is already gone."""
        if self.hung_up or self._closed:
            return
        try:
            await self.command("HANGUP", dead_ok=True)
        except AgiHangup:
            pass  # gone already: what we wanted

    async def stream_file(
        self,
        name: str,
        escape_digits: str = "",
        *,
        offset: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - see command()
        sensitive: bool = False,
    ) -> str | None:
        """Play a sound file (no extension); return the escape digit pressed, or None.

        `timeout` bounds the whole playback (default: the command timeout), so pass one
        for prompts longer than that. A missing file raises AgiCommandError.
        """
        args: list[Arg] = [name, escape_digits]
        if offset is not None:
            args.append(offset)
        # `sensitive`: the digit that barges in may be the first digit of a PIN.
        result = await self.command("STREAM FILE", *args, timeout=timeout, sensitive=sensitive)
        if result.result == -1:
            await self._check_failed("STREAM FILE")
        return result.digit

    async def wait_for_digit(self, timeout_s: float, *, sensitive: bool = False) -> str | None:
        """Wait up to `timeout_s` seconds for one DTMF digit; None on timeout."""
        if not timeout_s > 0:
            raise ValueError(f"wait_for_digit timeout must be > 0 seconds, got {timeout_s!r}")
        result = await self.command(
            "WAIT FOR DIGIT",
            max(1, round(timeout_s * 1000)),
            timeout=timeout_s + self._command_timeout,
            sensitive=sensitive,
        )
        if result.result == -1:
            await self._check_failed("WAIT FOR DIGIT")
        return result.digit

    async def get_data(
        self,
        file: str,
        timeout_ms: int | None = None,
        max_digits: int | None = None,
        *,
        sensitive: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - see command()
    ) -> DigitsInput:
        """Play `file` and collect DTMF until `#`, `max_digits`, or `timeout_ms` between digits.

        `timeout` bounds the whole command (default: command timeout plus max_digits times
        the inter-digit timeout). Mark PINs and card numbers `sensitive=True`.
        """
        args: list[Arg] = [file]
        if timeout_ms is not None or max_digits is not None:
            if timeout_ms is not None and timeout_ms < 0:
                raise ValueError(f"timeout_ms must be >= 0, got {timeout_ms}")
            args.append(timeout_ms or 0)
        if max_digits is not None:
            if max_digits < 1:
                raise ValueError(f"max_digits must be >= 1, got {max_digits}")
            args.append(max_digits)
        if timeout is None:
            per_digit = (timeout_ms or 5000) / 1000
            timeout = self._command_timeout + (max_digits or 1) * per_digit
        result = await self.command("GET DATA", *args, timeout=timeout, sensitive=sensitive)
        if result.result_text == "-1":
            await self._check_failed("GET DATA")
        return DigitsInput(digits=result.result_text, timed_out=result.data == "timeout")

    async def set_variable(self, name: str, value: str | int) -> None:
        """Set a channel variable (works on a dead channel too)."""
        if not name:
            raise ValueError("set_variable needs a variable name")
        await self.command("SET VARIABLE", name, value, dead_ok=True)

    async def get_variable(self, name: str) -> str | None:
        """A channel variable's value, or None when it is not set."""
        result = await self.command("GET VARIABLE", name, dead_ok=True)
        return (result.data or "") if result.result == 1 else None

    async def get_full_variable(self, expression: str, channel: str | None = None) -> str | None:
        """Evaluate `${...}` expressions (functions too); None when empty/not set."""
        args: list[Arg] = [expression]
        if channel is not None:
            args.append(channel)
        result = await self.command("GET FULL VARIABLE", *args, dead_ok=True)
        return (result.data or "") if result.result == 1 else None

    async def exec(
        self,
        app: str,
        *options: str,
        timeout: float | None = None,  # noqa: ASYNC109 - see command()
    ) -> int:
        """Run a dialplan application; return what it returned (0 usually).

        Options are joined with "," into the application's argument string (Asterisk passes
        only the one argument after the application name). Raises AgiCommandError when the
        application does not exist (-2), AgiHangup when it returned -1 because the caller
        hung up; -1 on a live channel is returned as is.
        """
        args: list[Arg] = [app]
        if options:
            args.append(",".join(options))
        result = await self.command("EXEC", *args, timeout=timeout)
        code = result.result if result.result is not None else 0
        if code == -2:
            raise AgiCommandError(
                f"EXEC: no dialplan application {app!r}", code=200, command="EXEC"
            )
        if code == -1:
            try:
                await self._check_failed(f"EXEC {app}")
            except AgiCommandError:
                return -1
        return code

    async def verbose(self, message: str, level: int = 1) -> None:
        """Write to Asterisk's verbose log (never put caller secrets in it)."""
        await self.command("VERBOSE", message, level, dead_ok=True)

    async def say_digits(self, digits: str, escape_digits: str = "") -> str | None:
        """Say digits one by one; return the escape digit pressed, or None."""
        result = await self.command("SAY DIGITS", digits, escape_digits)
        if result.result == -1:
            await self._check_failed("SAY DIGITS")
        return result.digit

    async def say_number(
        self, number: int | str, escape_digits: str = "", gender: str | None = None
    ) -> str | None:
        """Say a number; return the escape digit pressed, or None."""
        args: list[Arg] = [number, escape_digits]
        if gender is not None:
            args.append(gender)
        result = await self.command("SAY NUMBER", *args)
        if result.result == -1:
            await self._check_failed("SAY NUMBER")
        return result.digit

    async def set_music(self, on: bool, music_class: str | None = None) -> None:
        """Start (`on=True`) or stop music on hold on the channel."""
        args: list[Arg] = ["on" if on else "off"]
        if music_class is not None:
            args.append(music_class)
        await self.command("SET MUSIC", *args)

    async def channel_status(self) -> int:
        """The channel state (6 = up, 4 = ringing; see AGI CHANNEL STATUS)."""
        result = await self.command("CHANNEL STATUS")
        if result.result is None:
            raise AgiProtocolError(f"CHANNEL STATUS reply without a number: {result.raw!r}")
        return result.result

    async def noop(self, text: str | None = None) -> None:
        """Do nothing (a round trip: proves the connection is alive and in step)."""
        await self.command("NOOP", *(() if text is None else (text,)), dead_ok=True)


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        writer.transport.abort()


class _WarningLimiter:
    """At most one WARNING per key per interval, then one summary line.

    The first occurrence of a key logs its own WARNING at once; later ones within the interval
    go to DEBUG and are counted, and when the interval ends (a `call_later` timer, not the next
    occurrence) one WARNING sums them up: "N more like this in the last 60s: ...". A flood of
    ten thousand connections therefore writes two WARNING lines a minute, not ten thousand."""

    def __init__(self, interval: float, max_keys: int = 1024) -> None:
        self._interval = interval
        self._max_keys = max_keys
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, tuple[int, str, tuple[object, ...]]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def log(self, key: str, now: float, message: str, *args: object) -> None:
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            count = self._suppressed.get(key, (0, message, args))[0] + 1
            self._suppressed[key] = (count, message, args)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(message, *args)
            if key not in self._timers:
                self._timers[key] = asyncio.get_running_loop().call_at(
                    last + self._interval, self._flush, key
                )
            return
        if len(self._last) >= self._max_keys:
            self.close()
            self._last.clear()
        self._last[key] = now
        log.warning(message, *args)

    def _flush(self, key: str) -> None:
        self._timers.pop(key, None)
        count, message, args = self._suppressed.pop(key, (0, "", ()))
        if count:
            log.warning(
                "%d more like this in the last %.0fs; the latest: " + message,
                count,
                self._interval,
                *args,
            )
            # Under a steady flood the summary is this interval's one line: the next
            # occurrences are counted into the next summary.
            self._last[key] = asyncio.get_running_loop().time()
        else:
            self._last.pop(key, None)  # quiet again: the next occurrence warns at once

    def close(self) -> None:
        """Write the pending summaries now and stop the timers (server shutdown)."""
        for key, timer in list(self._timers.items()):
            timer.cancel()
            self._flush(key)


def _parse_allow(allow: Iterable[str]) -> tuple[IpNetwork, ...]:
    if isinstance(allow, str):
        allow = (allow,)
    networks: list[IpNetwork] = []
    for entry in allow:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"not an IP address or network: {entry!r}", key="agi.allow") from None
    return tuple(networks)


class FastAgiServer:
    """Accepts FastAGI connections and runs `handler(session)` for each call.

    handler          async callable taking an AgiSession; its exceptions are logged with the
                     call id and the session is closed (Asterisk continues the dialplan)
    host, port       where to listen (port 0: any free port, see `port`)
    allow            peers allowed to connect: addresses or CIDR networks (loopback default)
    max_sessions     concurrent calls (connections that sent their environment); one more is
                     told FAILURE at once, so the dialplan falls back
    max_pending      connections still to send their environment, counted apart from the
                     calls: when one more comes, the OLDEST is closed (told FAILURE), so a
                     flood of silent connections cannot keep a real call out
    header_timeout   seconds for a new connection to send its whole environment
    backlog          the listen backlog (the kernel caps it at net.core.somaxconn)
    command_timeout  default seconds for a command's reply
    drain_timeout    on close(), seconds running calls may go on before they are cancelled
    """

    def __init__(
        self,
        handler: SessionHandler,
        *,
        host: str = "127.0.0.1",
        port: int = 4573,
        allow: Iterable[str] = ("127.0.0.0/8", "::1"),
        max_sessions: int = 2000,
        max_pending: int = MAX_PENDING,
        header_timeout: float = 5.0,
        command_timeout: float = 30.0,
        drain_timeout: float = 20.0,
        backlog: int = LISTEN_BACKLOG,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"port out of range: {port}", key="agi.port")
        if max_sessions < 1:
            raise ConfigError(f"must be at least 1, got {max_sessions}", key="agi.max_sessions")
        if max_pending < 1:
            raise ConfigError(f"must be at least 1, got {max_pending}", key="agi.max_pending")
        if backlog < 1:
            raise ConfigError(f"must be at least 1, got {backlog}", key="agi.backlog")
        for key, value in (
            ("header_timeout", header_timeout),
            ("command_timeout", command_timeout),
            ("drain_timeout", drain_timeout),
        ):
            if not value > 0:
                raise ConfigError(f"must be > 0 seconds, got {value}", key=f"agi.{key}")
        self._handler = handler
        self._host = host
        self._port = port
        self._allow = _parse_allow(allow)
        self._max_sessions = max_sessions
        self._max_pending = max_pending
        self._backlog = backlog
        self._header_timeout = header_timeout
        self._command_timeout = command_timeout
        self._drain_timeout = drain_timeout
        self._server: asyncio.Server | None = None
        # Every connection's task; `_pending` (insertion-ordered: oldest first) is the subset
        # still waiting for its environment. Calls in progress = the difference.
        self._sessions: dict[asyncio.Task[None], AgiSession] = {}
        # The subset that sent its environment: calls. Not "sessions minus pending": a pending
        # connection evicted for a newer one is neither until its task ends, and counting it
        # as a call let a silent flood fill agi.max_sessions.
        self._calls: set[asyncio.Task[None]] = set()
        self._pending: dict[asyncio.Task[None], AgiSession] = {}
        self._rejects: set[asyncio.Task[None]] = set()
        self._closing = False
        self._stopped = asyncio.Event()
        self._warnings = _WarningLimiter(REFUSAL_LOG_INTERVAL)

    @classmethod
    def from_settings(cls, handler: SessionHandler, settings: AgiSettings) -> FastAgiServer:
        return cls(
            handler,
            host=settings.host,
            port=settings.port,
            allow=settings.allow,
            max_sessions=settings.max_sessions,
            header_timeout=settings.header_timeout,
            command_timeout=settings.command_timeout,
            drain_timeout=settings.drain_timeout,
            # Optional in the settings (older settings files have neither).
            max_pending=getattr(settings, "max_pending", MAX_PENDING),
            backlog=getattr(settings, "backlog", LISTEN_BACKLOG),
        )

    # -- state

    @property
    def port(self) -> int:
        """The port actually bound (useful with port=0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("FastAgiServer is not listening (call start() first)")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def active_sessions(self) -> int:
        """Calls in progress: connections that sent their environment and have not ended."""
        return len(self._calls)

    @property
    def pending_connections(self) -> int:
        """Connections still to send their environment (at most `max_pending`)."""
        return len(self._pending)

    @property
    def closing(self) -> bool:
        """True once close() began: handlers may use it to wrap calls up."""
        return self._closing

    # -- life cycle

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("FastAgiServer already started")
        if self._closing:
            raise RuntimeError("FastAgiServer was closed; make a new one")
        try:
            self._server = await asyncio.start_server(
                self._on_connect,
                self._host,
                self._port,
                reuse_address=True,
                backlog=self._backlog,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}",
                key="agi.port",
            ) from None
        log.info("FastAGI listening on %s:%d", self._host, self.port)

    async def serve_forever(self) -> None:
        """Serve until close() is called (starting first if needed).

        Cancelling it stops at once: no drain, running calls are cancelled.
        """
        if self._server is None:
            await self.start()
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await self._abort()
            raise

    async def close(self) -> None:
        """Stop accepting, let running calls finish until drain_timeout, then cancel them."""
        if self._closing:
            await self._stopped.wait()
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        try:
            tasks = list(self._sessions)
            if tasks:
                log.info(
                    "FastAGI closing: draining %d call(s) for up to %.1fs",
                    len(tasks),
                    self._drain_timeout,
                )
                _, pending = await asyncio.wait(tasks, timeout=self._drain_timeout)
                if pending:
                    log.warning(
                        "FastAGI closing: cancelling %d call(s) still running after %.1fs",
                        len(pending),
                        self._drain_timeout,
                    )
                    await self._cancel(pending)
            await self._cancel(set(self._rejects))
            if self._server is not None:
                await self._server.wait_closed()
        finally:
            self._warnings.close()
            self._stopped.set()
        log.info("FastAGI closed")

    async def _abort(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        await self._cancel(set(self._sessions) | self._rejects)
        self._warnings.close()
        self._stopped.set()

    async def _cancel(self, tasks: set[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT + 1.0)
            for task in stuck:
                log.error("FastAGI session task %s ignored cancellation", task.get_name())

    async def __aenter__(self) -> FastAgiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- connections

    def _allowed(self, address: IpAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self._allow)

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain function, not a coroutine: asyncio would otherwise run it in an unnamed task
        # it owns; we create (and own, and name) the session task ourselves.
        peername = writer.get_extra_info("peername")
        host, port = (str(peername[0]), int(peername[1])) if peername else ("?", 0)
        peer = f"{host}:{port}"
        now = asyncio.get_running_loop().time()
        if self._closing:
            writer.close()
            return
        try:
            address: IpAddress | None = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            address = None
        if address is None or not self._allowed(address):
            self._warnings.log(
                f"peer {host}", now, "FastAGI: refused connection from %s (not in agi.allow)", peer
            )
            writer.close()
            return
        if self.active_sessions >= self._max_sessions:
            self._warnings.log(
                "cap",
                now,
                "FastAGI: %d calls already running (agi.max_sessions); told %s FAILURE at "
                "once so the dialplan falls back",
                self.active_sessions,
                peer,
            )
            self._start_reject(reader, writer, peer)
            return
        if len(self._pending) >= self._max_pending and not self._evict_oldest_pending(now):
            self._warnings.log(
                "pending-full",
                now,
                "FastAGI: %d connections have not sent their environment (agi.max_pending), "
                "none for %.1fs yet; told %s FAILURE at once",
                len(self._pending),
                PENDING_GRACE,
                peer,
            )
            self._start_reject(reader, writer, peer)
            return
        session = AgiSession(reader, writer, peer=peer, command_timeout=self._command_timeout)
        task = asyncio.get_running_loop().create_task(
            self._run_session(session), name=f"agi-peer-{peer}"
        )
        self._sessions[task] = session
        self._pending[task] = session
        task.add_done_callback(self._session_done)

    def _start_reject(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        if len(self._rejects) >= REJECT_LIMIT:
            writer.close()
            return
        reject = asyncio.get_running_loop().create_task(
            self._reject(reader, writer), name=f"agi-reject-{peer}"
        )
        self._rejects.add(reject)
        reject.add_done_callback(self._reject_done)

    def _evict_oldest_pending(self, now: float) -> bool:
        """Make room for a new connection: the one that has waited longest (at least
        PENDING_GRACE) without sending its environment is told FAILURE and closed. A real
        Asterisk sends the environment as it connects, so that one is almost surely not a
        call; if it is, FAILURE sends the caller to the dialplan's fallback, not into silence.
        False when even the oldest is too young to evict."""
        task, session = next(iter(self._pending.items()))
        if now - session.connected_at < PENDING_GRACE:
            return False
        del self._pending[task]
        self._warnings.log(
            "pending-cap",
            now,
            "FastAGI: %d connections have not sent their environment (agi.max_pending); "
            "closed the oldest, from %s",
            self._max_pending,
            session.peer,
        )
        session._evict()
        return True

    async def _reject(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Over the cap: "FAILURE" without reading the environment (AGISTATUS=FAILURE),
        then wait for Asterisk to close, so our close cannot reset the line away."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                writer.write(FAILURE_LINE)
                await writer.drain()
                while await reader.read(READ_CHUNK):
                    pass
        except (TimeoutError, OSError):
            pass
        finally:
            await _close_writer(writer)

    def _reject_done(self, task: asyncio.Task[None]) -> None:
        self._rejects.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("FastAGI reject task %s failed: %r", task.get_name(), exc)

    def _session_done(self, task: asyncio.Task[None]) -> None:
        self._sessions.pop(task, None)
        self._pending.pop(task, None)
        self._calls.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("FastAGI session task %s failed: %r", task.get_name(), exc)

    async def _run_session(self, session: AgiSession) -> None:
        try:
            try:
                async with asyncio.timeout(self._header_timeout):
                    env = await session._read_environment()
            except TimeoutError:
                if session.evicted:
                    return
                self._warnings.log(
                    "header-timeout",
                    asyncio.get_running_loop().time(),
                    "FastAGI: %s sent no complete environment within %.1fs; closed",
                    session.peer,
                    self._header_timeout,
                )
                return
            except AgiProtocolError as exc:
                if not session.evicted:  # a flood of garbage: one line, then a summary
                    self._warnings.log(
                        "bad-environment",
                        asyncio.get_running_loop().time(),
                        "FastAGI: %s: %s; closed",
                        session.peer,
                        exc,
                    )
                return
            if env is None or session.evicted:
                if not session.evicted:
                    log.debug(
                        "FastAGI: %s closed without sending anything (health check?)",
                        session.peer,
                    )
                return
            task = asyncio.current_task()
            if task is not None:
                self._pending.pop(task, None)
            if self.active_sessions >= self._max_sessions:
                # Calls that were pending when this one connected have started since.
                self._warnings.log(
                    "cap",
                    asyncio.get_running_loop().time(),
                    "FastAGI: %d calls already running (agi.max_sessions); told %s FAILURE at "
                    "once so the dialplan falls back",
                    self.active_sessions,
                    session.peer,
                )
                await session.end_with_failure()
                return
            if task is not None:
                self._calls.add(task)
                task.set_name(f"agi-{env.uniqueid}")
            call_id_var.set(env.uniqueid)
            if env.undecodable:
                log.warning(
                    "environment values not valid UTF-8 (decoded with U+FFFD): %s",
                    ", ".join(sorted(env.undecodable)),
                )
            log.info(
                "call from %s: channel %s, script %r",
                session.peer,
                env.channel,
                env.network_script,
            )
            try:
                await self._handler(session)
            except AgiHangup as exc:
                log.info("call ended by the caller: %s", exc)
            except AgiError as exc:
                log.warning("call ended on a FastAGI error: %s: %s", type(exc).__name__, exc)
                await session.end_with_failure()
            except asyncio.CancelledError:
                log.warning("call cancelled (server shutting down)")
                await session.end_with_failure()
                raise
            except Exception:
                log.exception("call handler failed")
                await session.end_with_failure()
            else:
                log.debug("call handler finished")
        finally:
            await session.close()
