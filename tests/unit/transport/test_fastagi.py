"""The FastAGI server over real sockets on 127.0.0.1, against a fake Asterisk client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ivr_engine.config import AgiSettings
from ivr_engine.errors import (
    AgiCommandError,
    AgiDeadChannel,
    AgiHangup,
    AgiProtocolError,
    AgiTimeout,
    ConfigError,
)
from ivr_engine.log import call_id_var
from ivr_engine.protocol.agi import (
    AgiArgumentError,
    AgiSequenceError,
    environment_lines,
    parse_command_line,
)
from ivr_engine.transport.fastagi import AgiSession, DigitsInput, FastAgiServer

IO_TIMEOUT = 5.0


def env_block(uniqueid: str = "1764075600.42", **extra: str) -> bytes:
    env = {
        "agi_network": "yes",
        "agi_network_script": "hotline",
        "agi_request": "agi://127.0.0.1/hotline",
        "agi_channel": "PJSIP/carrier-00000007",
        "agi_language": "en",
        "agi_type": "PJSIP",
        "agi_uniqueid": uniqueid,
        "agi_version": "22.0.0",
        "agi_callerid": "13800138000",
        "agi_calleridname": "Zhang San",
        "agi_callingpres": "0",
        "agi_dnid": "4008",
        "agi_context": "from-carrier",
        "agi_extension": "4008",
        "agi_priority": "2",
        "agi_enhanced": "0.0",
        "agi_accountcode": "",
        "agi_threadid": "1",
        **extra,
    }
    return environment_lines(env)


def open_sockets() -> int:
    """Sockets this process holds (Linux /proc): the test for leaked connections."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


class FakeAsterisk:
    """Asterisk's side of FastAGI: sends the environment, reads commands, sends replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> FakeAsterisk:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self) -> tuple[str, ...]:
        async with asyncio.timeout(IO_TIMEOUT):
            line = await self.reader.readline()
        assert line.endswith(b"\n"), f"server closed instead of sending a command: {line!r}"
        return parse_command_line(line.decode())

    async def expect(self, *words: str, reply: bytes | str) -> None:
        got = await self.command()
        assert got == words
        await self.send(reply.encode() if isinstance(reply, str) else reply)

    async def expect_failure(self) -> None:
        """As Asterisk does on a "failure" line: AGISTATUS=FAILURE, HANGUP, close."""
        assert await self.command() == ("FAILURE",)
        await self.send(b"HANGUP\n")
        await self.close()

    async def assert_closed_by_server(self) -> None:
        async with asyncio.timeout(IO_TIMEOUT):
            rest = await self.reader.read()
        assert rest == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


Handler = Callable[[AgiSession], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(handler: Handler, **options: Any) -> AsyncIterator[FastAgiServer]:
    options.setdefault("header_timeout", 2.0)
    options.setdefault("command_timeout", 2.0)
    options.setdefault("drain_timeout", 2.0)
    sockets_before = open_sockets()
    server = FastAgiServer(handler, host="127.0.0.1", port=0, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.close()
    assert server.active_sessions == 0
    await asyncio.sleep(0)  # let transports finish closing
    assert open_sockets() == sockets_before, "a socket was left open"
    # every session task has ended: nothing but the test itself is left running
    assert {t for t in asyncio.all_tasks() if not t.done()} == {asyncio.current_task()}


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(IO_TIMEOUT):
        while not predicate():  # noqa: ASYNC110 - test-only poll of server state
            await asyncio.sleep(0.01)


class Recorder:
    """What a handler saw; tests assert on it after the session ended."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.done = asyncio.Event()


# --------------------------------------------------------------------------- a whole call


async def test_full_mini_call(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rec = Recorder()

    async def handler(session: AgiSession) -> None:
        rec.values["env"] = session.env
        rec.values["task"] = asyncio.current_task().get_name()  # type: ignore[union-attr]
        rec.values["call_id_var"] = call_id_var.get()
        await session.answer()
        rec.values["digit"] = await session.stream_file("welcome", "12")
        rec.values["pin"] = await session.get_data("enter-pin", 5000, 4, sensitive=True)
        rec.values["confirm"] = await session.wait_for_digit(2.0, sensitive=True)
        await session.set_variable("IVR_RESULT", 'menu "1" \\ done')
        rec.values["var"] = await session.get_variable("CALLERID(name)")
        rec.values["unset"] = await session.get_variable("NOSUCH")
        rec.values["status"] = await session.channel_status()
        rec.values["exec"] = await session.exec("Playback", "silence/1", "noanswer")
        await session.hangup()
        rec.done.set()

    async with serving(handler) as server:
        ast = await FakeAsterisk.connect(server.port)
        await ast.send(env_block())
        await ast.expect("ANSWER", reply="200 result=0\n")
        await ast.expect("STREAM", "FILE", "welcome", "12", reply="200 result=49 endpos=8000\n")
        await ast.expect("GET", "DATA", "enter-pin", "5000", "4", reply="200 result=2468\n")
        await ast.expect("WAIT", "FOR", "DIGIT", "2000", reply="200 result=55\n")
        await ast.expect(
            "SET", "VARIABLE", "IVR_RESULT", 'menu "1" \\ done', reply="200 result=1\n"
        )
        await ast.expect(
            "GET", "VARIABLE", "CALLERID(name)", reply="200 result=1 (Zhang (Z) San)\n"
        )
        await ast.expect("GET", "VARIABLE", "NOSUCH", reply="200 result=0\n")
        await ast.expect("CHANNEL", "STATUS", reply="200 result=6\n")
        await ast.expect("EXEC", "Playback", "silence/1,noanswer", reply="200 result=0\n")
        await ast.expect("HANGUP", reply="200 result=1\n")
        await ast.assert_closed_by_server()
        await ast.close()
        await wait_until(lambda: server.active_sessions == 0, "session end")

    assert rec.done.is_set()
    assert rec.values["env"].caller_number == "13800138000"
    assert rec.values["task"] == "agi-1764075600.42"
    assert rec.values["call_id_var"] == "1764075600.42"
    assert rec.values["digit"] == "1"
    assert rec.values["pin"] == DigitsInput(digits="2468", timed_out=False)
    assert rec.values["var"] == "Zhang (Z) San"
    assert rec.values["unset"] is None
    assert rec.values["status"] == 6
    assert rec.values["exec"] == 0
    text = caplog.text
    assert rec.values["confirm"] == "7"
    assert "2468" not in text and "result=55" not in text, "a sensitive reply reached the log"
    assert "2468" not in repr(rec.values["pin"])
    assert "GET DATA <withheld>" in text and "200 result=<withheld>" in text
    assert "STREAM FILE 'welcome' '12'" in text  # non-sensitive commands are logged at DEBUG
    assert all(r.levelno <= logging.DEBUG for r in caplog.records if "result=49" in r.message)


async def test_reading_answers_split_into_single_bytes() -> None:
    rec = Recorder()

    async def handler(session: AgiSession) -> None:
        rec.values["v"] = await session.get_variable("X")

    async with serving(handler) as server:
        ast = await FakeAsterisk.connect(server.port)
        for b in env_block():
            await ast.send(bytes([b]))
        assert await ast.command() == ("GET", "VARIABLE", "X")
        for b in "HANGUP\n200 result=1 (值)\n".encode():
            await ast.send(bytes([b]))
        await ast.assert_closed_by_server()
        await ast.close()
    assert rec.values["v"] == "值"


# --------------------------------------------------------------------------- hangups


async def test_hangup_notice_before_the_reply_keeps_the_session_in_step() -> None:
    rec = Recorder()

    async def handler(session: AgiSession) -> None:
        try:
            await session.stream_file("welcome")
        except AgiHangup as exc:
            rec.values["hangup"] = exc
        rec.values["hung_up"] = session.hung_up
        # dead-channel-safe commands still work, and get their own reply
        await session.set_variable("IVR_OUTCOME", "caller-hung-up")
        rec.values["var"] = await session.get_variable("IVR_OUTCOME")
        try:
            await session.stream_file("bye")
        except AgiHangup as exc:
            rec.values["second"] = exc

    async with serving(handler) as server:
        ast = await FakeAsterisk.connect(server.port)
        await ast.send(env_block())
        await ast.expect("STREAM", "FILE", "welcome", "", reply="HANGUP\n200 result=0 endpos=99\n")
        await ast.expect("SET", "VARIABLE", "IVR_OUTCOME", "caller-hung-up", reply="200 result=1\n")
        await ast.expect("GET", "VARIABLE", "IVR_OUTCOME", reply="200 result=1 (caller-hung-up)\n")
        await ast.assert_closed_by_server()  # the 2nd STREAM FILE was never sent
        await ast.close()
    assert isinstance(rec.values["hangup"], AgiHangup)
    assert rec.values["hung_up"] is True
    assert rec.values["var"] == "caller-hung-up"
    assert "has hung up" in str(rec.values["second"])


async def test_511_is_a_dead_channel_and_minus_one_is_probed() -> None:
    rec = Recorder()

    async def handler(session: AgiSession) -> None:
        with pytest.raises(AgiDeadChannel, match="dead"):
            await session.command("SAY ALPHA", "abc", "")
        assert session.hung_up
        with pytest.raises(AgiHangup, match="has hung up"):
            await session.answer()  # not even sent
        await session.verbose("outcome recorded", 3)  # dead-channel safe: sent
        rec.values["ok"] = True

    async with serving(handler) as server:
        ast = await FakeAsterisk.connect(server.port)
        await ast.send(env_block())
        await ast.expect(
            "SAY", "ALPHA", "abc", "", reply="511 Command Not Permitted on a dead channel\n"
        )
        await ast.expect("VERBOSE", "outcome recorded", "3", reply="200 result=1\n")
        await ast.assert_closed_by_server()
        await ast.close()
    assert rec.values["ok"]


async def test_minus_one_on_a_live_channel_is_a_command_error_on_a_dead_one_a_hangup() -> None:
    rec = Recorder()

    async def handler(session: AgiSession) -> None:
        with pytest.raises(AgiCommandError, match="failed .result -1. on a live channel"):
            await session.stream_file("no-such-prompt")
        assert not session.hung_up
        with pytest.raises(AgiHangup):
            await session.wait_for_digit(1.0)
        rec.values["ok"] = True

    async with serving(handler) as server:
        ast = await FakeAsterisk.connect(server.port)
        await ast.send(env_block())
        await ast.expect("STREAM", "FILE", "no-such-prompt", "", reply="200 result=-1 endpos=0\n")
        await ast.expect("CHANNEL", "STATUS", reply="200 result=6\n")
        await ast.expect("WAIT", "FOR", "DIGIT", "1000", reply="200 result=-1\n")
        await ast.expect(
            "CHANNEL", "STATUS", reply="HANGUP\n511 Command Not Permitted on a dead channel\n"
        )
        await ast.assert_closed_by_server()
        await ast.close()
    assert rec.values["ok"]


async def test_hangup_notice_that_came_with_the_minus_one_reply_saves_the_probe() -> None:
    """Asterisk writes HANGUP right after a -1 reply; when both are already read, the
    CHANNEL STATUS round trip is not needed: the next line the fake reads is the SET
    VARIABLE sent on the dead channel, not a probe."""
    rec = Recorder()

    async def handler(session: AgiSession) -> None:
        with pytest.raises(AgiHangup, match="STREAM FILE: the caller hung up"):
            await session.stream_file("greeting")
        assert session.hung_up
        await session.set_variable("IVR_NEXT", "hangup")
        rec.values["ok"] = True

    async with serving(handler) as server:
        ast = await FakeAsterisk.connect(server.port)
        await ast.send(env_block())
        await ast.expect(
            "STREAM", "FILE", "greeting", "", reply="200 result=-1 endpos=8480\nHANGUP\n"
        )
        await ast.expect("SET", "VARIABLE", "IVR_NEXT", "hangup", reply="200 result=1\n")
        await ast.assert_closed_by_server()
        await ast.close()
    assert rec.values["ok"]


async def test_client_disconnects_mid_command() -> None:
    rec = Recorder()

    async def handler(session: AgiSession) -> None:
        try:
            await session.stream_file("long-legal-text")
        except AgiHangup as exc:
            rec.values["exc"] = exc
        rec.values["closed"] = session.closed
        with pytest.raises(AgiHangup):
            await session.noop()

    async with serving(handler) as server:
        ast = await FakeAsterisk.connect(server.port)
        await ast.send(env_block())
        assert await ast.command() == ("STREAM", "FILE", "long-legal-text", "")
        await ast.close()
        await wait_until(lambda: "exc" in rec.values and server.active_sessions == 0, "hangup")
    assert "closed the connection while STREAM FILE awaited its reply" in str(rec.values["exc"])
    assert rec.values["closed"] is True


# --------------------------------------------------------------------------- refused commands


async def test_510_and_520_are_command_errors_and_the_session_goes_on() -> None:
    rec = Recorder()

    async def handler(session: AgiSession) -> None:
        with pytest.raises(AgiCommandError) as e510:
            await session.command("FROB")
        with pytest.raises(AgiCommandError) as e520:
            await session.command("GET DATA")
        rec.values["codes"] = (e510.value.code, e520.value.code)
        rec.values["usage_in_message"] = "Usage: GET DATA" in str(e520.value)
        await session.noop()

    async with serving(handler) as server:
        ast = await FakeAsterisk.connect(server.port)
        await ast.send(env_block())
        await ast.expect("FROB", reply="510 Invalid or unknown command\n")
        await ast.expect(
            "GET",
            "DATA",
            reply=(
                "520-Invalid command syntax.  Proper usage follows:\n"
                " Usage: GET DATA <file to be streamed> [timeout] [max digits]\n"
                "520 End of proper usage.\n"
            ),
        )
        await ast.expect("NOOP", reply="200 result=0\n")
        await ast.assert_closed_by_server()
        await ast.close()
    assert rec.values["codes"] == (510, 520)
    assert rec.values["usage_in_message"]


async def test_injection_is_refused_before_anything_is_sent() -> None:
    rec = Recorder()

    async def handler(session: AgiSession) -> None:
        with pytest.raises(AgiArgumentError):
            await session.set_variable("CIF_NAME", "Mallory\nEXEC System reboot")
        await session.noop()  # the session is still usable and in step
        rec.values["ok"] = True

    async with serving(handler) as server:
        ast = await FakeAsterisk.connect(server.port)
        await ast.send(env_block())
        await ast.expect("NOOP", reply="200 result=0\n")
        await ast.assert_closed_by_server()
        await ast.close()
    assert rec.values["ok"]


# --------------------------------------------------------------------------- bad peers


async def test_garbled_reply_closes_the_session(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()

    async def handler(session: AgiSession) -> None:
        try:
            await session.get_data("enter-pin", 3000, 4, sensitive=True)
        except AgiProtocolError as exc:
            rec.values["exc"] = exc
            raise

    async with serving(handler) as server:
        ast = await FakeAsterisk.connect(server.port)
        await ast.send(env_block())
        assert (await ast.command())[:2] == ("GET", "DATA")
        await ast.send(b"SOMETHING 1234 ELSE\n")
        await ast.assert_closed_by_server()
        await ast.close()
    assert "withheld" in str(rec.values["exc"])
    assert "1234" not in caplog.text
    assert "call ended on a FastAGI error: AgiProtocolError" in caplog.text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GET / HTTP/1.1\r\nHost: ivr\r\n\r\n", "not an AGI environment line"),
        (b"agi_request: " + b"x" * 20000, "line longer than"),
        (b"agi_network: yes\n", "sent no complete environment within"),
    ],
)
async def test_bad_environment_is_logged_and_closed(
    caplog: pytest.LogCaptureFixture, data: bytes, message: str
) -> None:
    called = False

    async def handler(session: AgiSession) -> None:
        nonlocal called
        called = True

    async with serving(handler, header_timeout=0.3) as server:
        ast = await FakeAsterisk.connect(server.port)
        await ast.send(data)
        await ast.assert_closed_by_server()
        await ast.close()
        await wait_until(lambda: server.active_sessions == 0, "session end")
    assert not called
    assert message in caplog.text
    assert "127.0.0.1:" in caplog.text


async def test_silent_client_is_closed_after_header_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(session: AgiSession) -> None:
        raise AssertionError("not reached")

    async with serving(handler, header_timeout=0.3) as server:
        ast = await FakeAsterisk.connect(server.port)
        started = time.monotonic()
        await ast.assert_closed_by_server()
        elapsed = time.monotonic() - started
        await ast.close()
        await wait_until(lambda: server.active_sessions == 0, "session end")
    assert 0.2 < elapsed < 2.0
    assert "sent no complete environment within 0.3s" in caplog.text


async def test_health_check_connect_and_close_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def handler(session: AgiSession) -> None:
        raise AssertionError("not reached")

    async with serving(handler) as server:
        for _ in range(3):
            ast = await FakeAsterisk.connect(server.port)
            await ast.close()
        await wait_until(lambda: server.active_sessions == 0, "session end")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_command_timeout_closes_the_session() -> None:
    rec = Recorder()

    async def handler(session: AgiSession) -> None:
        started = time.monotonic()
        try:
            await session.answer()
        except AgiTimeout as exc:
            rec.values["exc"] = exc
            rec.values["elapsed"] = time.monotonic() - started
        rec.values["closed"] = session.closed
        with pytest.raises(AgiSequenceError, match="session is closed"):
            await session.noop()

    async with serving(handler, command_timeout=0.3) as server:
        ast = await FakeAsterisk.connect(server.port)
        await ast.send(env_block())
        assert await ast.command() == ("ANSWER",)
        await ast.assert_closed_by_server()  # no reply from us: the server gives up and closes
        await ast.close()
    assert "no reply to ANSWER within 0.3s" in str(rec.values["exc"])
    assert 0.25 < rec.values["elapsed"] < 2.0
    assert rec.values["closed"] is True


async def test_handler_exception_is_logged_with_the_call_id() -> None:
    seen: list[tuple[str, str, bool]] = []

    class CallIdCapture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), call_id_var.get(), record.exc_info is not None))

    capture = CallIdCapture(level=logging.ERROR)
    logging.getLogger("ivr_engine.transport.fastagi").addHandler(capture)

    async def handler(session: AgiSession) -> None:
        raise RuntimeError("CIF lookup exploded")

    try:
        async with serving(handler) as server:
            ast = await FakeAsterisk.connect(server.port)
            await ast.send(env_block(uniqueid="1764075600.77"))
            # the dialplan gets AGISTATUS=FAILURE and sends the caller to its fallback
            await ast.expect_failure()
    finally:
        logging.getLogger("ivr_engine.transport.fastagi").removeHandler(capture)
    assert ("call handler failed", "1764075600.77", True) in seen


async def test_uncaught_command_error_ends_with_failure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def handler(session: AgiSession) -> None:
        await session.stream_file("missing")  # AgiCommandError, not caught

    async with serving(handler) as server:
        ast = await FakeAsterisk.connect(server.port)
        await ast.send(env_block())
        await ast.expect("STREAM", "FILE", "missing", "", reply="200 result=-1 endpos=0\n")
        await ast.expect("CHANNEL", "STATUS", reply="200 result=6\n")
        await ast.expect_failure()
        await wait_until(lambda: server.active_sessions == 0, "session end")
    assert "AgiCommandError: STREAM FILE failed" in caplog.text
    assert "AGI ended with FAILURE" in caplog.text


# --------------------------------------------------------------------------- admission


async def test_refused_peer_is_closed_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    called = False

    async def handler(session: AgiSession) -> None:
        nonlocal called
        called = True

    async with serving(handler, allow=("10.0.0.0/8",)) as server:
        for _ in range(3):
            ast = await FakeAsterisk.connect(server.port)
            await ast.send(env_block())
            await ast.assert_closed_by_server()
            await ast.close()
    assert not called
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # One at once, then (here at close, else when the interval ends) one summary line.
    assert len(warnings) == 2, warnings
    assert "refused connection from 127.0.0.1:" in warnings[0]
    assert warnings[1].startswith("2 more like this in the last 60s; the latest: ")


async def test_session_cap(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()
    running = asyncio.Event()

    async def handler(session: AgiSession) -> None:
        running.set()
        await release.wait()

    async with serving(handler, max_sessions=1) as server:
        first = await FakeAsterisk.connect(server.port)
        await first.send(env_block(uniqueid="1.1"))
        async with asyncio.timeout(IO_TIMEOUT):
            await running.wait()
        assert server.active_sessions == 1
        second = await FakeAsterisk.connect(server.port)
        await second.send(env_block(uniqueid="1.2"))
        await second.expect_failure()  # at once: AGISTATUS=FAILURE, the dialplan falls back
        await wait_until(lambda: not server._rejects, "reject done")
        assert "agi.max_sessions" in caplog.text
        release.set()
        await first.assert_closed_by_server()
        await first.close()
        await wait_until(lambda: server.active_sessions == 0, "first session end")
        # a free slot again
        third = await FakeAsterisk.connect(server.port)
        running.clear()
        await third.send(env_block(uniqueid="1.3"))
        async with asyncio.timeout(IO_TIMEOUT):
            await running.wait()
        await third.assert_closed_by_server()
        await third.close()


async def test_silent_connections_do_not_take_call_slots_and_the_oldest_is_evicted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 8: connections that have not sent their environment have a cap of their own.
    A flood of them neither counts against max_sessions nor keeps a real call out: past
    max_pending the oldest silent one is told FAILURE and closed."""
    monkeypatch.setattr("ivr_engine.transport.fastagi.PENDING_GRACE", 0.0)
    served: list[str] = []

    async def handler(session: AgiSession) -> None:
        served.append(session.call_id)

    async with serving(handler, max_sessions=1, max_pending=5, header_timeout=30.0) as server:
        silent = [await FakeAsterisk.connect(server.port) for _ in range(5)]
        await wait_until(lambda: server.pending_connections == 5, "5 pending")
        assert server.active_sessions == 0  # silent connections are not calls
        # Three more silent ones: the three oldest make room, told FAILURE then closed.
        silent += [await FakeAsterisk.connect(server.port) for _ in range(3)]
        for old in silent[:3]:
            async with asyncio.timeout(IO_TIMEOUT):
                assert await old.reader.read() == b"FAILURE\n"
        await wait_until(lambda: server.pending_connections == 5, "still 5 pending")
        # A real call gets through the full pending cap and through max_sessions=1.
        call = await FakeAsterisk.connect(server.port)
        await call.send(env_block(uniqueid="real.1"))
        await call.assert_closed_by_server()
        await call.close()
        assert served == ["real.1"]
        # The silent ones still open are the newest: the first of them was evicted by `call`.
        async with asyncio.timeout(IO_TIMEOUT):
            assert await silent[3].reader.read() == b"FAILURE\n"
        for s in silent:
            await s.close()
        await wait_until(lambda: server.pending_connections == 0, "silent ones gone")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    evictions = [w for w in warnings if "agi.max_pending" in w]
    assert len(evictions) == 2, warnings  # one at once, one summary, not one per eviction
    assert evictions[1].startswith("3 more like this in the last 60s")
    assert not [w for w in warnings if "agi.max_sessions" in w]


async def test_evicted_connections_still_closing_are_not_counted_as_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under an accept burst many evicted connections are still closing (their tasks have not
    seen the end of the stream yet). They are not calls: a real call still gets the one slot
    of max_sessions=1. (The PBX flood test found them filling agi.max_sessions.)"""
    monkeypatch.setattr("ivr_engine.transport.fastagi.PENDING_GRACE", 0.0)

    def evict_slowly(self: AgiSession) -> None:  # FAILURE said, the stream left open
        self.evicted = True
        self._writer.write(b"FAILURE\n")

    monkeypatch.setattr(AgiSession, "_evict", evict_slowly)
    served: list[str] = []

    async def handler(session: AgiSession) -> None:
        served.append(session.call_id)

    async with serving(handler, max_sessions=1, max_pending=2, header_timeout=30.0) as server:
        silent = [await FakeAsterisk.connect(server.port) for _ in range(5)]
        for old in silent[:3]:
            async with asyncio.timeout(IO_TIMEOUT):
                assert await old.reader.readline() == b"FAILURE\n"
        assert len(server._sessions) == 5 and server.pending_connections == 2
        assert server.active_sessions == 0
        call = await FakeAsterisk.connect(server.port)
        await call.send(env_block(uniqueid="real.1"))
        await call.assert_closed_by_server()
        await call.close()
        assert served == ["real.1"]
        for s in silent:
            await s.close()


async def test_a_pending_connection_younger_than_the_grace_is_not_evicted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A burst of accepts must not evict a connection whose environment could not be read
    yet: while every pending one is younger than PENDING_GRACE (1 s), the newcomer is told
    FAILURE instead (the dialplan's fallback takes that caller) and the pending ones stay."""

    async def handler(session: AgiSession) -> None:
        raise AssertionError("not reached")

    async with serving(handler, max_pending=3, header_timeout=30.0) as server:
        young = [await FakeAsterisk.connect(server.port) for _ in range(3)]
        await wait_until(lambda: server.pending_connections == 3, "3 pending")
        newcomer = await FakeAsterisk.connect(server.port)
        await newcomer.expect_failure()
        assert server.pending_connections == 3
        for conn in young:
            await conn.close()
        await wait_until(lambda: server.pending_connections == 0, "closed")
    assert "none for 1.0s yet; told 127.0.0.1:" in caplog.text


async def test_header_timeouts_under_a_flood_log_one_line_then_one_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="ivr_engine.transport.fastagi")

    async def handler(session: AgiSession) -> None:
        raise AssertionError("not reached")

    async with serving(handler, header_timeout=0.2) as server:
        flood = [await FakeAsterisk.connect(server.port) for _ in range(20)]
        for conn in flood:
            await conn.assert_closed_by_server()  # closed unread, no FAILURE: nothing came
            await conn.close()
        await wait_until(lambda: server.pending_connections == 0, "flood closed")
        timeouts = [r for r in caplog.records if "sent no complete environment" in r.getMessage()]
        assert sum(r.levelno == logging.WARNING for r in timeouts) == 1
        assert sum(r.levelno == logging.DEBUG for r in timeouts) == 19
    summary = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage().startswith("19 more like this")
    ]
    assert len(summary) == 1 and "sent no complete environment within 0.2s" in summary[0]


async def test_warning_summary_comes_when_the_interval_ends(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary is written by a timer at the end of the interval, not by the next event,
    and under a steady flood it is the interval's only line."""
    monkeypatch.setattr("ivr_engine.transport.fastagi.REFUSAL_LOG_INTERVAL", 0.3)

    async def handler(session: AgiSession) -> None:
        raise AssertionError("not reached")

    async with serving(handler, allow=("10.0.0.0/8",)) as server:
        for _ in range(3):
            conn = await FakeAsterisk.connect(server.port)
            await conn.assert_closed_by_server()
            await conn.close()
        await asyncio.sleep(0.5)  # the interval ended while nothing happened
        refused = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(refused) == 2 and refused[1].startswith("2 more like this in the last 0s")
        conn = await FakeAsterisk.connect(server.port)  # counted into the next summary
        await conn.assert_closed_by_server()
        await conn.close()
        await asyncio.sleep(0.5)
        refused = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(refused) == 3 and refused[2].startswith("1 more like this")


async def test_over_the_session_cap_when_the_environment_arrives_is_told_failure() -> None:
    """Both connected while no call ran (both pending); the second's environment arrives
    when the first already holds the one slot: FAILURE, the dialplan falls back."""
    release = asyncio.Event()
    served: list[str] = []

    async def handler(session: AgiSession) -> None:
        served.append(session.call_id)
        await release.wait()

    async with serving(handler, max_sessions=1) as server:
        first = await FakeAsterisk.connect(server.port)
        second = await FakeAsterisk.connect(server.port)
        await wait_until(lambda: server.pending_connections == 2, "both pending")
        await first.send(env_block(uniqueid="1.1"))
        await wait_until(lambda: server.active_sessions == 1, "first running")
        await second.send(env_block(uniqueid="1.2"))
        await second.expect_failure()
        release.set()
        await first.assert_closed_by_server()
        await first.close()
    assert served == ["1.1"]


# --------------------------------------------------------------------------- shutdown


async def test_close_drains_running_calls_then_cancels_the_rest() -> None:
    rec = Recorder()
    both_running = asyncio.Event()
    started: set[str] = set()

    async def handler(session: AgiSession) -> None:
        started.add(session.call_id)
        if len(started) == 2:
            both_running.set()
        if session.call_id == "quick":
            await session.noop()  # the fake answers only after close() began
            rec.values["quick"] = "finished"
        else:
            try:
                await asyncio.Event().wait()  # a call that would go on forever
            except asyncio.CancelledError:
                rec.values["slow"] = "cancelled"
                raise

    server = FastAgiServer(
        handler, host="127.0.0.1", port=0, drain_timeout=0.5, command_timeout=5.0
    )
    await server.start()
    port = server.port
    quick = await FakeAsterisk.connect(port)
    slow = await FakeAsterisk.connect(port)
    await quick.send(env_block(uniqueid="quick"))
    await slow.send(env_block(uniqueid="slow"))
    async with asyncio.timeout(IO_TIMEOUT):
        await both_running.wait()
    assert await quick.command() == ("NOOP",)

    t0 = time.monotonic()
    closing = asyncio.create_task(server.close(), name="test-close")
    await asyncio.sleep(0.1)
    assert server.closing
    with pytest.raises(OSError):  # no longer accepting
        await asyncio.open_connection("127.0.0.1", port)
    await quick.send(b"200 result=0\n")
    await quick.assert_closed_by_server()
    await slow.expect_failure()  # the cancelled call goes to the dialplan's fallback
    await closing
    elapsed = time.monotonic() - t0
    await quick.close()
    await slow.close()

    assert rec.values == {"quick": "finished", "slow": "cancelled"}
    assert 0.45 < elapsed < 3.0
    assert server.active_sessions == 0
    assert {t for t in asyncio.all_tasks() if not t.done()} == {asyncio.current_task()}


async def test_serve_forever_returns_after_close_and_cancel_aborts() -> None:
    async def handler(session: AgiSession) -> None:
        await asyncio.Event().wait()

    server = FastAgiServer(handler, host="127.0.0.1", port=0)
    serve = asyncio.create_task(server.serve_forever(), name="test-serve")
    await wait_until(lambda: server._server is not None, "listening")
    ast = await FakeAsterisk.connect(server.port)
    await ast.send(env_block())
    await wait_until(lambda: server.active_sessions == 1, "session")
    serve.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serve
    # The call was running (its environment read): cancelled, it says FAILURE, so the
    # dialplan's fallback takes the caller.
    async with asyncio.timeout(IO_TIMEOUT):
        assert await ast.reader.read() == b"FAILURE\n"
    await ast.close()
    assert server.active_sessions == 0

    server2 = FastAgiServer(handler, host="127.0.0.1", port=0)
    serve2 = asyncio.create_task(server2.serve_forever(), name="test-serve-2")
    await wait_until(lambda: server2._server is not None, "listening")
    await server2.close()
    async with asyncio.timeout(IO_TIMEOUT):
        await serve2


# --------------------------------------------------------------------------- settings


async def test_from_settings_and_validation() -> None:
    async def handler(session: AgiSession) -> None:
        return None

    settings = AgiSettings(port=0, allow=("127.0.0.1",), max_sessions=3)
    async with FastAgiServer.from_settings(handler, settings) as server:
        assert server.port > 0
    with pytest.raises(ConfigError, match="agi.allow: not an IP address or network: 'localhost'"):
        FastAgiServer(handler, allow=("localhost",))
    with pytest.raises(ConfigError, match="agi.max_sessions"):
        FastAgiServer(handler, max_sessions=0)
    with pytest.raises(ConfigError, match="agi.max_pending"):
        FastAgiServer(handler, max_pending=0)
    with pytest.raises(ConfigError, match="agi.backlog"):
        FastAgiServer(handler, backlog=0)
    with pytest.raises(ConfigError, match="agi.header_timeout"):
        FastAgiServer(handler, header_timeout=0)


# --------------------------------------------------------------------------- real Asterisk
#
# The same server against Asterisk 22 itself: a private instance run from the dev PBX root
# (`ivr-engine pbx build`, which `make test` runs first), with its own config and run
# directories under tmp_path and no network listener at all, so it never meets the shared
# dev PBX. Calls are Local channels originated from its CLI.

PBX_ROOT = Path(__file__).resolve().parents[3] / ".pbx" / "root"

EXTENSIONS_CONF = """\
[general]
[agitest]
exten => s,1,Set(MYCASE=${CASE})
 same => n,Set(CALLERID(num)=13800138000)
 same => n,Set(CALLERID(name)=张三)
 same => n,AGI(agi://127.0.0.1:${AGIPORT}/hotline,arg one,two)
 same => n,Set(DB(agitest/${MYCASE})=${AGISTATUS}|${IVR_RESULT})
 same => n,Hangup()
[sink]
exten => s,1,Answer()
 same => n,Wait(30)
"""

MODULES = [
    "pbx_config.so",
    "res_speech.so",  # res_agi needs it
    "res_agi.so",
    "func_db.so",
    "func_callerid.so",
    "format_gsm.so",
    "codec_gsm.so",
    "res_timing_timerfd.so",
    "res_clioriginate.so",
]


class PrivateAsterisk:
    def __init__(self, base: Path) -> None:
        root = PBX_ROOT
        binary = root / "usr/sbin/asterisk"
        if not binary.exists():
            pytest.fail(f"no Asterisk in the dev PBX root {root}: run `ivr-engine pbx build`")
        etc, data = base / "etc", base / "data"
        for sub in ("etc", "lib", "spool", "run", "log", "data/sounds"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        share = root / "usr/share/asterisk"
        # The root's sounds/en is an absolute symlink (alternatives): point at the real dir.
        (data / "sounds/en").symlink_to(share / "sounds/en_US_f_Allison")
        (data / "documentation").symlink_to(share / "documentation")
        (etc / "asterisk.conf").write_text(
            "[directories]\n"
            f"astetcdir => {etc}\nastmoddir => {root}/usr/lib/x86_64-linux-gnu/asterisk/modules\n"
            f"astvarlibdir => {base}/lib\nastdbdir => {base}/lib\nastkeydir => {base}/lib\n"
            f"astdatadir => {data}\nastagidir => {base}/lib\nastspooldir => {base}/spool\n"
            f"astrundir => {base}/run\nastlogdir => {base}/log\n[options]\n"
        )
        (etc / "modules.conf").write_text(
            "[modules]\nautoload=no\n" + "".join(f"load => {m}\n" for m in MODULES)
        )
        (etc / "logger.conf").write_text(
            "[general]\n[logfiles]\nmessages => notice,warning,error\n"
        )
        (etc / "extensions.conf").write_text(EXTENSIONS_CONF)
        # Run the root's binary with the root's own loader and libraries: no chroot, no mounts.
        libs = f"{root}/usr/lib/x86_64-linux-gnu:{root}/lib/x86_64-linux-gnu"
        self.argv = [
            str(root / "lib64/ld-linux-x86-64.so.2"),
            "--library-path",
            libs,
            str(binary),
            "-C",
            str(etc / "asterisk.conf"),
        ]
        self.out = (base / "log/stdout").open("wb")
        self.proc = subprocess.Popen(
            [*self.argv, "-f", "-n"],
            stdin=subprocess.DEVNULL,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while "fully booted" not in self.cli_sync("core waitfullybooted"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"private Asterisk did not boot; see {base}/log/stdout")
            time.sleep(0.2)

    def cli_sync(self, command: str) -> str:
        proc = subprocess.run(
            [*self.argv, "-rx", command], capture_output=True, timeout=15, check=False
        )
        return proc.stdout.decode(errors="replace")

    async def cli(self, command: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self.argv,
            "-rx",
            command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(15):
            out, _ = await proc.communicate()
        return out.decode(errors="replace")

    async def call(self, case: str, port: int) -> None:
        await self.cli(f"dialplan set global AGIPORT {port}")
        await self.cli(f"dialplan set global CASE {case}")
        await self.cli("channel originate Local/s@agitest extension s@sink")

    async def outcome(self, case: str) -> str:
        """AGISTATUS|IVR_RESULT as the dialplan saw them after AGI() returned."""
        async with asyncio.timeout(15):
            while True:
                out = await self.cli(f"database get agitest {case}")
                if out.startswith("Value: "):
                    return out[len("Value: ") :].strip()
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.out.close()


@pytest.fixture(scope="module")
def asterisk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateAsterisk]:
    pbx = PrivateAsterisk(tmp_path_factory.mktemp("ast"))
    try:
        yield pbx
    finally:
        pbx.stop()


TRICKY_VALUES = [
    'He said "hi"',
    "back\\slash and trailing \\",
    "(paren) value)",
    "张三 王五",
    "",
    "  two  spaces  ",
    "a;b,c|d$e{f}",
]


@pytest.mark.pbx
@pytest.mark.slow
async def test_real_asterisk_protocol(asterisk: PrivateAsterisk) -> None:
    rec = Recorder()

    async def handler(session: AgiSession) -> None:
        try:
            rec.values["env"] = session.env
            await session.answer()
            back = []
            for i, value in enumerate(TRICKY_VALUES):
                await session.set_variable(f"TRICKY{i}", value)
                back.append(await session.get_variable(f"TRICKY{i}") or "")
            rec.values["back"] = back
            rec.values["full"] = await session.get_full_variable("${CALLERID(name)}")
            for name, call in (
                ("510", session.command("FROB", "x")),
                ("520", session.command("GET DATA")),
                ("missing", session.stream_file("no-such-prompt")),
                ("noapp", session.exec("NoSuchApp")),
            ):
                try:
                    await call
                except AgiCommandError as exc:
                    rec.values[name] = exc
            rec.values["getdata"] = await session.get_data("beep", 200, 2)
            rec.values["wait"] = await session.wait_for_digit(0.1)
            rec.values["status"] = await session.channel_status()
            await session.set_variable("IVR_RESULT", "ok")
        finally:
            rec.done.set()

    async with serving(handler, command_timeout=10.0) as server:
        await asterisk.call("protocol", server.port)
        outcome = await asterisk.outcome("protocol")
    env = rec.values["env"]
    assert env.network and env.network_script == "hotline" and env.context == "agitest"
    assert env.caller_number == "13800138000" and env.caller_name == "张三"
    assert env.arguments == ("arg one", "two")
    assert env.version.startswith("22.")
    assert rec.values["back"] == TRICKY_VALUES
    assert rec.values["full"] == "张三"
    assert rec.values["510"].code == 510
    assert rec.values["520"].code == 520 and "GET DATA" in str(rec.values["520"])
    assert "failed (result -1) on a live channel" in str(rec.values["missing"])
    assert "no dialplan application" in str(rec.values["noapp"])
    assert rec.values["getdata"] == DigitsInput(digits="", timed_out=True)
    assert rec.values["wait"] is None
    assert rec.values["status"] == 6
    # Seen with 22.10: a command that failed (missing file, unknown application) leaves
    # AGISTATUS=FAILURE although the AGI ran to its end, so the dialplan must not take
    # AGISTATUS alone as "the daemon did not handle the call".
    assert outcome == "FAILURE|ok"


@pytest.mark.pbx
@pytest.mark.slow
async def test_real_asterisk_hangup_mid_prompt(asterisk: PrivateAsterisk) -> None:
    rec = Recorder()
    answered = asyncio.Event()

    async def handler(session: AgiSession) -> None:
        try:
            await session.answer()
            answered.set()
            try:
                await session.stream_file("demo-instruct", timeout=20)  # about 15 s long
            except AgiHangup as exc:
                rec.values["exc"] = exc
            rec.values["hung_up"] = session.hung_up
            await session.set_variable("IVR_RESULT", "hungup")  # dead channel: still works
            rec.values["dead_set"] = True
        finally:
            rec.done.set()

    async with serving(handler, command_timeout=10.0) as server:
        await asterisk.call("hangup", server.port)
        async with asyncio.timeout(IO_TIMEOUT):
            await answered.wait()
        await asyncio.sleep(0.5)  # into the prompt
        out = await asterisk.cli("channel request hangup all")
        assert "Requested Hangup" in out
        async with asyncio.timeout(IO_TIMEOUT):
            await rec.done.wait()
    assert isinstance(rec.values["exc"], AgiHangup)
    assert "STREAM FILE returned -1: the caller hung up" in str(rec.values["exc"])
    assert rec.values["hung_up"] is True and rec.values["dead_set"] is True


@pytest.mark.pbx
@pytest.mark.slow
async def test_real_asterisk_agistatus(asterisk: PrivateAsterisk) -> None:
    release = asyncio.Event()

    async def handler(session: AgiSession) -> None:
        case = await session.get_variable("MYCASE")
        if case == "crash":
            raise RuntimeError("handler bug (expected by the test)")
        if case == "hold":
            await release.wait()

    async with serving(handler) as server:
        await asterisk.call("plain", server.port)
        assert await asterisk.outcome("plain") == "SUCCESS|"
        await asterisk.call("crash", server.port)
        assert await asterisk.outcome("crash") == "FAILURE|"  # the dialplan fallback runs
    async with serving(handler, max_sessions=1) as server:
        await asterisk.call("hold", server.port)
        await wait_until(lambda: server.active_sessions == 1, "held call")
        await asterisk.call("overcap", server.port)
        assert await asterisk.outcome("overcap") == "FAILURE|"
        release.set()
        assert await asterisk.outcome("hold") == "SUCCESS|"
