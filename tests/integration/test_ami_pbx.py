"""AmiClient against the real Asterisk 22 of the dev PBX (`dev_pbx` fixture, AMI on loopback).

Besides the basics (login, CoreStatus/CoreSettings, Ping, list actions, a refused password),
these prove the least-privilege `manager.conf` from the engine's side (issue 8): the engine user
cannot run `Originate` with `Application=System` (the attack behind CVE-2024-42365) nor read
files with `GetConfig`, traversal included.

A small TCP proxy between the client and Asterisk breaks the connection on purpose: it splits
Asterisk's bytes inside a UTF-8 character, and it swallows Asterisk's replies while still
forwarding our actions (a half-open connection); it counts the Originates that reach Asterisk.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ivr_engine.config import AmiSettings
from ivr_engine.errors import AmiActionError, AmiDisconnected, AmiLoginError
from ivr_engine.protocol.ami import (
    AmiEvent,
    AmiResponse,
    DialBegin,
    FullyBooted,
    Hangup,
    Newchannel,
    OriginateResponse,
    VarSet,
)
from ivr_engine.transport.ami import AmiClient, AmiConnectionLost, AmiConnectionMade, Backoff

pytestmark = pytest.mark.pbx

DEFAULT_SECRET = AmiSettings().secret


def ami_settings(dev_pbx: Any, **kw: Any) -> AmiSettings:
    base: dict[str, Any] = dict(host="127.0.0.1", port=dev_pbx.ami_port, action_timeout=5.0)
    base.update(kw)
    return AmiSettings(**base)


@pytest.fixture
async def client(dev_pbx: Any) -> AsyncIterator[AmiClient]:
    c = AmiClient(ami_settings(dev_pbx))
    await c.connect()
    yield c
    await c.close()


def _read(path: Path) -> str:
    return path.read_text(errors="replace")


def _exists(path: Path) -> bool:
    return path.exists()


class Recorder:
    def __init__(self) -> None:
        self.events: list[AmiEvent] = []
        self.times: list[float] = []
        self._changed = asyncio.Event()
        self._taken: set[int] = set()

    def __call__(self, event: AmiEvent) -> None:
        self.events.append(event)
        self.times.append(time.monotonic())
        self._changed.set()

    async def next(self, name: str, limit: float = 10.0) -> AmiEvent:
        async with asyncio.timeout(limit):
            while True:
                for i, event in enumerate(self.events):
                    if event.name == name and i not in self._taken:
                        self._taken.add(i)
                        return event
                self._changed.clear()
                await self._changed.wait()


class Proxy:
    """TCP proxy to Asterisk's AMI. `split_utf8`: every chunk from Asterisk that holds a
    multi-byte character is written in two parts cut inside that character. `swallow_replies`:
    bytes from Asterisk are dropped while ours are still forwarded (half-open)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.split_utf8 = False
        self.swallow_replies = False
        self.originates_forwarded = 0
        self.splits = 0
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.transport.abort()
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self._server is not None:
            await self._server.wait_closed()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._spawn(self._connect(reader, writer), "ami-proxy-accept")

    async def _connect(
        self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        self._writers.append(c_writer)
        try:
            u_reader, u_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target_port), 5
            )
        except (OSError, TimeoutError):
            c_writer.transport.abort()
            return
        self._writers.append(u_writer)
        self._spawn(self._pump(c_reader, u_writer, c_writer, up=True), "ami-proxy-up")
        self._spawn(self._pump(u_reader, c_writer, u_writer, up=False), "ami-proxy-down")

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        other: asyncio.StreamWriter,
        *,
        up: bool,
    ) -> None:
        try:
            while True:
                data = await asyncio.wait_for(reader.read(65536), 120)
                if not data:
                    break
                if up:
                    self.originates_forwarded += data.lower().count(b"action: originate\r\n")
                elif self.swallow_replies:
                    continue
                cut = next((i for i, b in enumerate(data) if b >= 0xC0), None)
                if not up and self.split_utf8 and cut is not None:
                    self.splits += 1
                    writer.write(data[: cut + 1])
                    await writer.drain()
                    await asyncio.sleep(0.02)
                    writer.write(data[cut + 1 :])
                else:
                    writer.write(data)
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.transport.abort()
            other.transport.abort()


@pytest.fixture
async def proxy(dev_pbx: Any) -> AsyncIterator[Proxy]:
    p = Proxy(dev_pbx.ami_port)
    await p.start()
    yield p
    await p.stop()


async def test_login_core_status_settings_and_ping(dev_pbx: Any) -> None:
    client = AmiClient(ami_settings(dev_pbx))
    rec = Recorder()
    client.subscribe("*", rec)
    await client.connect()
    try:
        made = await rec.next("AmiConnected")
        assert isinstance(made, AmiConnectionMade) and client.connected
        assert client.version  # from the banner, e.g. "9.0.0" or later
        booted = await rec.next("FullyBooted")
        assert isinstance(booted, FullyBooted) and booted.status == "Fully Booted"

        status = await client.action({"Action": "CoreStatus"})
        assert isinstance(status, AmiResponse) and status.success
        assert int(status.fields["CoreCurrentCalls"]) >= 0
        settings = await client.action({"Action": "CoreSettings"})
        assert isinstance(settings, AmiResponse)
        assert settings.fields["AsteriskVersion"].startswith("22")
        pong = await client.action({"Action": "Ping"})
        assert isinstance(pong, AmiResponse)
        assert pong.response == "Success" and pong.fields["Ping"] == "Pong"
    finally:
        await client.close()


async def test_list_actions(client: AmiClient) -> None:
    channels = await client.list_action({"Action": "CoreShowChannels"})
    assert all(e.name == "CoreShowChannel" for e in channels)
    queues = await client.list_action({"Action": "QueueStatus"})
    assert queues and all(e.name in {"QueueParams", "QueueMember", "QueueEntry"} for e in queues)
    assert any(e.fields.get("Queue") == "operators" for e in queues)
    summary = await client.list_action({"Action": "QueueSummary"})
    assert summary and all(e.name == "QueueSummary" for e in summary)
    hints = await client.list_action({"Action": "ExtensionStateList"})
    assert all(e.name == "ExtensionStatus" for e in hints)
    # PJSIPShow* need the `system` write class, which the engine user does not get.
    with pytest.raises(AmiActionError, match="PJSIPShowEndpoints: Permission denied"):
        await client.list_action({"Action": "PJSIPShowEndpoints"})


async def test_originate_correlates_its_response_and_events_come_out_typed(
    client: AmiClient,
) -> None:
    rec = Recorder()
    client.subscribe("*", rec)
    marker = secrets.token_hex(6)
    # A Local channel into the echo test (agents,600): answered at once, gone after Wait(1).
    action_id = await client.originate(
        channel="Local/600@agents",
        application="Wait",
        data="1",
        caller_id="陈先生 <13800138000>",
        variables={"IVR_TEST": marker},
    )
    result = await client.originate_response(action_id, timeout=10)
    assert isinstance(result, OriginateResponse) and result.success and result.reason == 4
    assert result.action_id == action_id and result.caller_id_name == "陈先生"
    channel = result.channel
    assert channel.startswith("Local/600@agents-") and channel.endswith(";1")

    async def first(kind: type[AmiEvent], **match: object) -> AmiEvent:
        while True:
            event = await rec.next(kind.__name__)  # these classes carry Asterisk's names
            if isinstance(event, kind) and all(getattr(event, k) == v for k, v in match.items()):
                return event

    await first(Newchannel, channel=channel)
    var = await first(VarSet, channel=channel, variable="IVR_TEST")
    assert isinstance(var, VarSet) and var.value == marker
    dial = await first(DialBegin)
    assert isinstance(dial, DialBegin) and dial.dest_channel == channel
    hangup = await first(Hangup, channel=channel)
    assert isinstance(hangup, Hangup) and hangup.fields["CallerIDName"] == "陈先生"
    assert hangup.uniqueid == result.uniqueid


async def test_wrong_password_is_refused_and_never_logged(
    dev_pbx: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = f"wrong-{secrets.token_hex(8)}"
    client = AmiClient(ami_settings(dev_pbx, secret=wrong))
    with pytest.raises(AmiLoginError) as info:
        await client.connect()
    await client.close()
    assert "ivr-engine" in str(info.value)
    for text in (caplog.text, str(info.value), repr(info.value)):
        assert wrong not in text and DEFAULT_SECRET not in text
    assert wrong not in _read(Path(dev_pbx.log_path()))  # nor Asterisk's own log


async def test_engine_user_cannot_originate_application_system(
    dev_pbx: Any, client: AmiClient
) -> None:
    marker = f"ami-system-{secrets.token_hex(6)}"
    for async_ in (True, False):
        with pytest.raises(AmiActionError) as info:
            await client.originate(
                channel="Local/s@ivr-next",
                application="System",
                data=f"touch /tmp/{marker}",
                async_=async_,
            )
        assert info.value.action == "Originate"
        # Asterisk 22: "Originate Access Forbidden: app or data blacklisted"
        assert "forbidden" in str(info.value).lower(), str(info.value)
    # Nor sneaked through another spelling of the application name.
    with pytest.raises(AmiActionError):
        await client.action(
            {
                "Action": "Originate",
                "Channel": "Local/s@ivr-next",
                "Application": "system",
                "Data": f"touch /tmp/{marker}",
            }
        )
    await asyncio.sleep(1.0)
    assert not _exists(Path("/tmp") / marker)
    assert not _exists(Path(dev_pbx.root) / "tmp" / marker)


@pytest.mark.parametrize(
    "filename", ["/etc/passwd", "../../../etc/passwd", "manager.conf", "extensions.conf"]
)
async def test_engine_user_cannot_getconfig(client: AmiClient, filename: str) -> None:
    with pytest.raises(AmiActionError) as info:
        await client.action({"Action": "GetConfig", "Filename": filename})
    assert "permission denied" in str(info.value).lower()
    assert "root:" not in str(info.value)


async def test_chinese_name_split_mid_character_by_the_network(dev_pbx: Any, proxy: Proxy) -> None:
    proxy.split_utf8 = True
    client = AmiClient(ami_settings(dev_pbx, port=proxy.port))
    rec = Recorder()
    client.subscribe("UserEvent", rec)
    await client.connect()
    try:
        for name in ("陈先生", "x陈先生", "xy陈先生"):  # the cut lands on each byte of 陈
            await client.action({"Action": "UserEvent", "UserEvent": "CallerName", "Name": name})
            event = await rec.next("UserEvent")
            assert event.fields["Name"] == name
        assert proxy.splits >= 3
    finally:
        await client.close()


async def test_half_open_detected_reconnected_and_originate_not_replayed(
    dev_pbx: Any, proxy: Proxy
) -> None:
    interval = 1.0
    client = AmiClient(
        ami_settings(dev_pbx, port=proxy.port, ping_interval=interval),
        backoff=Backoff(initial=0.1, cap=0.5),
    )
    rec = Recorder()
    client.subscribe("*", rec)
    await client.connect()
    try:
        await rec.next("AmiConnected")
        await asyncio.sleep(interval)  # a ping answered: the last proof of life
        proxy.swallow_replies = True
        silent_since = time.monotonic()
        # An Originate to an extension that does not exist: harmless, but it reaches Asterisk.
        with pytest.raises(AmiDisconnected):
            await client.originate(
                channel="Local/no-such-extension@agents", application="Wait", data="1",
                timeout=10,
            )  # fmt: skip
        lost = await rec.next("AmiDisconnected")
        detected_after = rec.times[rec.events.index(lost)] - silent_since
        print(f"half-open detected after {detected_after:.3f}s (ping_interval {interval}s)")
        assert detected_after <= interval + 0.3, detected_after
        assert isinstance(lost, AmiConnectionLost) and "half-open" in lost.reason
        proxy.swallow_replies = False
        made = await rec.next("AmiConnected")
        assert isinstance(made, AmiConnectionMade) and made.reconnect
        await rec.next("FullyBooted")
        assert isinstance(await client.action({"Action": "Ping"}), AmiResponse)
        await asyncio.sleep(0.5)
        assert proxy.originates_forwarded == 1  # reached Asterisk once, never replayed
        assert proxy.connections == 2
    finally:
        await client.close()
