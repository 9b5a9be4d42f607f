"""Bad input at the FastAGI door: thousands of connections that say nothing, and connections
from an address that is not allowed.

- Flood: 2,000 silent connections held open against the real daemon (each one reopened when
  the daemon closes it at `agi.header_timeout`), which fills the cap of connections that have
  not sent their environment (`MAX_PENDING`, counted apart from `agi.max_sessions`), while a
  real call comes in through Asterisk: the oldest silent one makes room and the call is
  served. Then the flood grows past the cap: the oldest silent connections are told FAILURE
  (Asterisk would fall back); the warnings are one line and one summary, not one each.
- Access: a server that allows only 10.0.0.0/8 refuses 127.0.0.1 (closed unread, logged once
  per interval), and the daemon with such an allow-list sends a real call to the fallback."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import selectors
import socket
import sqlite3
import time

import pytest

from ivr_engine.transport.fastagi import MAX_PENDING, AgiSession, FastAgiServer
from tests.faults.support import call_hotline


class Flood:
    """Holds `n` silent TCP connections to host:port from a child process; reopens closed ones.

    A child process, not a thread: pjsip's ioqueue is select()-based, so a SIP stack in a
    process that already holds 2,000 sockets gets descriptors past FD_SETSIZE (1024) and cannot
    open its transport (pjsua2.Error in transportCreate). The counters are shared values."""

    def __init__(self, port: int, n: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.port = port
        self._target = ctx.Value("i", n)
        self._open = ctx.Value("i", 0)
        self._closed_by_server = ctx.Value("i", 0)
        self._failures = ctx.Value("i", 0)  # connections told "FAILURE" (over the cap)
        self._stop = ctx.Event()
        self._process = ctx.Process(target=self._run, name="agi-flood", daemon=True)

    @property
    def open(self) -> int:
        return self._open.value

    @property
    def failures(self) -> int:
        return self._failures.value

    @property
    def closed_by_server(self) -> int:
        return self._closed_by_server.value

    def _connect(self, sel: selectors.BaseSelector) -> bool:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect_ex(("127.0.0.1", self.port))
        except OSError:
            s.close()
            return False
        sel.register(s, selectors.EVENT_READ)
        self._open.value += 1
        return True

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        while not self._stop.is_set():
            while self._open.value < self._target.value:
                if not self._connect(sel):
                    break
            for key, _ in sel.select(timeout=0.1):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(64)
                except OSError:
                    data = b""
                if data and data.startswith(b"FAILURE"):
                    self._failures.value += 1
                if data and not data.startswith(b"FAILURE"):
                    continue
                sel.unregister(s)
                s.close()
                self._open.value -= 1
                self._closed_by_server.value += 1
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        sel.close()

    def start(self) -> None:
        self._process.start()

    def grow(self, n: int) -> None:
        self._target.value = n

    def wait_open(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.open < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.open} of {n} flood connections open")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)


@pytest.mark.pbx
@pytest.mark.sip
@pytest.mark.slow
def test_silent_connection_flood_a_real_call_is_served_the_pending_cap_holds(
    dev_pbx, hotline, prompts_built, daemons
):
    # MAX_PENDING (2000) connections that have not sent their environment: the flood fills it.
    d = daemons(IVR_ENGINE_AGI_MAX_SESSIONS="20", IVR_ENGINE_AGI_HEADER_TIMEOUT="5")
    d.seed(customers=0)
    d.start()
    flood = Flood(4573, MAX_PENDING)
    flood.start()
    try:
        flood.wait_open(MAX_PENDING)
        time.sleep(1.5)  # older than PENDING_GRACE: the oldest may now be evicted
        # Silent connections are not calls: 2,000 of them and max_sessions=20 still serve it.
        call = call_hotline(dev_pbx.sip_port, "13500000004", "p2,0")
        served_during = flood.open
        # Past the pending cap: the oldest silent ones are told FAILURE and closed.
        flood.grow(MAX_PENDING + 500)
        deadline = time.monotonic() + 20
        while flood.failures < 150 and time.monotonic() < deadline:
            time.sleep(0.1)
        over_cap = flood.failures
    finally:
        flood.stop()
    logs = d.logs()
    code = d.stop()
    assert code == 0, d.output()
    warnings = [line for line in logs.splitlines() if " WARNING " in line]
    header_timeouts = [w for w in warnings if "sent no complete environment" in w]
    pending_cap = [w for w in warnings if "agi.max_pending" in w]
    print(
        f"AGI flood: real call served with {served_during} silent connections open (first "
        f"prompt after {call.first_speech:.2f}s); {over_cap} silent connections past the "
        f"pending cap of {MAX_PENDING} told FAILURE; {flood.closed_by_server} closed by the "
        f"daemon; WARNING lines: {len(header_timeouts)} header timeout, {len(pending_cap)} "
        "pending cap"
    )
    assert call.speech >= 1 and call.first_speech is not None and call.first_speech < 4.0
    with sqlite3.connect(d.db) as db:
        rows = db.execute("SELECT caller, outcome FROM call_records").fetchall()
    assert rows == [("135****0004", "queued")], rows
    assert over_cap >= 150, over_cap
    # Issue 8: under a flood, one line then one summary per interval, not one per connection.
    assert len(header_timeouts) <= 3, header_timeouts
    assert 1 <= len(pending_cap) <= 6, pending_cap
    assert not [w for w in warnings if "agi.max_sessions" in w]  # silent ones are not calls
    assert "Traceback" not in logs + d.output()


async def test_connection_from_a_non_allowed_address_is_refused_and_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="ivr_engine.transport.fastagi")
    handled: list[AgiSession] = []

    async def handler(session: AgiSession) -> None:
        handled.append(session)

    server = FastAgiServer(handler, host="127.0.0.1", port=0, allow=("10.0.0.0/8",))
    await server.start()
    try:
        for _ in range(50):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"agi_request: agi://127.0.0.1/hotline\nagi_uniqueid: 1.1\n\n")
            async with asyncio.timeout(5):
                data = await reader.read()  # closed without a word
            assert data == b""
            writer.close()
            await writer.wait_closed()
        assert server.active_sessions == 0
    finally:
        await server.close()
    assert handled == []
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "not in agi.allow" in r.getMessage()
    ]
    # Once at once, the rest at DEBUG and summed up in one line (here at close).
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("FastAGI: refused connection from 127.0.0.1")
    assert warnings[1].startswith("49 more like this in the last 60s"), warnings


@pytest.mark.pbx
@pytest.mark.sip
@pytest.mark.slow
def test_daemon_with_an_allow_list_excluding_asterisk_sends_the_call_to_the_fallback(
    dev_pbx, hotline, prompts_built, daemons
):
    d = daemons(IVR_ENGINE_AGI_ALLOW="10.0.0.0/8")
    d.seed(customers=0)
    d.start()
    mark = dev_pbx.mark()
    call = call_hotline(dev_pbx.sip_port, "13500000004", "p4,h")
    code = d.stop()
    assert code == 0, d.output()
    pbx_log = "\n".join(dev_pbx.lines_since(mark))
    # The refused connection is closed without a word, which res_agi takes as a script that
    # ended (AGISTATUS=SUCCESS) with no IVR_NEXT: the dialplan's "no-next" fallback.
    assert "ivr-fallback" in pbx_log and "reason=no-next" in pbx_log, pbx_log
    assert call.speech >= 1  # the apology, not silence
    assert "refused connection from 127.0.0.1" in d.logs()
    with sqlite3.connect(d.db) as db:
        assert db.execute("SELECT count(*) FROM call_records").fetchone() == (0,)
