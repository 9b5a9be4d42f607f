"""Bad input at the FastAGI door: a thousand connections that say nothing, and connections
from an address that is not allowed.

- Flood: 1,000 silent connections held open against the real daemon (each one reopened when
  the daemon closes it at `agi.header_timeout`) while a real call comes in through Asterisk:
  the call is served. Then the flood grows past `agi.max_sessions`: the connections over the
  cap are told FAILURE at once (Asterisk would fall back), the count never passes the cap.
- Access: a server that allows only 10.0.0.0/8 refuses 127.0.0.1 (closed unread, logged once
  per interval), and the daemon with such an allow-list sends a real call to the fallback."""

from __future__ import annotations

import asyncio
import logging
import selectors
import socket
import sqlite3
import threading
import time

import pytest

from ivr_engine.transport.fastagi import AgiSession, FastAgiServer
from tests.faults.support import call_hotline


class Flood:
    """Holds `n` silent TCP connections to host:port from a thread; reopens closed ones."""

    def __init__(self, port: int, n: int) -> None:
        self.port = port
        self.target = n
        self.sel = selectors.DefaultSelector()
        self.open = 0
        self.closed_by_server = 0
        self.failures = 0  # connections that were told "FAILURE" (over the cap)
        self.connect_errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agi-flood", daemon=True)

    def _connect(self) -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect_ex(("127.0.0.1", self.port))
        except OSError:
            self.connect_errors += 1
            s.close()
            return
        self.sel.register(s, selectors.EVENT_READ)
        self.open += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            while self.open < self.target:
                self._connect()
            for key, _ in self.sel.select(timeout=0.1):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(64)
                except OSError:
                    data = b""
                if data and data.startswith(b"FAILURE"):
                    self.failures += 1
                if data and not data.startswith(b"FAILURE"):
                    continue
                self.sel.unregister(s)
                s.close()
                self.open -= 1
                self.closed_by_server += 1
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()

    def start(self) -> None:
        self._thread.start()

    def grow(self, n: int) -> None:
        self.target = n

    def wait_open(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.open < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.open} of {n} flood connections open")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.pbx
@pytest.mark.sip
@pytest.mark.slow
def test_thousand_silent_connections_a_real_call_is_served_the_cap_holds(
    dev_pbx, hotline, prompts_built, daemons
):
    cap = 1100
    d = daemons(IVR_ENGINE_AGI_MAX_SESSIONS=str(cap), IVR_ENGINE_AGI_HEADER_TIMEOUT="5")
    d.seed(customers=0)
    d.start()
    flood = Flood(4573, 1000)
    flood.start()
    try:
        flood.wait_open(1000)
        time.sleep(0.5)
        call = call_hotline(dev_pbx.sip_port, "13500000004", "p2,0")
        served_during = flood.open
        # Past the cap: every connection over it is told FAILURE at once.
        flood.grow(cap + 500)
        deadline = time.monotonic() + 20
        while flood.failures < 150 and time.monotonic() < deadline:
            time.sleep(0.1)
        over_cap = flood.failures
    finally:
        flood.stop()
    logs = d.logs()
    code = d.stop()
    assert code == 0, d.output()
    print(
        f"AGI flood: real call served with {served_during} silent connections open (first "
        f"prompt after {call.first_speech:.2f}s); {over_cap} connections over the cap of {cap} "
        f"told FAILURE; {flood.closed_by_server} closed by the daemon; "
        f"{logs.count('sent no complete environment')} header-timeout log lines"
    )
    assert call.speech >= 1 and call.first_speech is not None and call.first_speech < 4.0
    with sqlite3.connect(d.db) as db:
        rows = db.execute("SELECT caller, outcome FROM call_records").fetchall()
    assert rows == [("135****0004", "queued")], rows
    assert over_cap >= 150, over_cap
    # The cap is logged at WARNING, but not once per refused connection (the rest at DEBUG).
    cap_warnings = [
        line for line in logs.splitlines() if " WARNING " in line and "agi.max_sessions" in line
    ]
    assert 1 <= len(cap_warnings) <= 5, cap_warnings
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
        r.getMessage() for r in caplog.records
        if r.levelno == logging.WARNING and "not in agi.allow" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings  # once per interval, the rest at DEBUG
    assert "refused connection from 127.0.0.1" in warnings[0]


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
