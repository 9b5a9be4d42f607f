"""AmiClient against a fake AMI server (asyncio, 127.0.0.1, port 0), plus the sans-I/O parts.

The fake speaks just enough AMI: banner, Login, Logoff, Ping, CoreStatus, a list action
(CoreShowChannels), Originate (async, with a later OriginateResponse event), anything else is
`Response: Error`. It counts every action it receives, can drop the connection when a given
action arrives, can go silent while keeping the socket (half-open), and pushes events in chunks.
Nothing asserts inside the server: it records, the tests assert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import settings as settings_h
from hypothesis import strategies as st

from ivr_engine.config import AmiSettings
from ivr_engine.errors import AmiActionError, AmiDisconnected, AmiError, AmiLoginError
from ivr_engine.protocol.ami import (
    AmiEncodingError,
    AmiEvent,
    AmiFrame,
    AmiFramer,
    AmiProtocolError,
    AmiResponse,
    BridgeEnter,
    BridgeLeave,
    ContactStatus,
    DeviceStateChange,
    DialEnd,
    DtmfBegin,
    DtmfEnd,
    FullyBooted,
    Hangup,
    Newchannel,
    OriginateResponse,
    PeerStatus,
    PendingAction,
    encode_action,
    parse_event,
    parse_frame,
)
from ivr_engine.transport.ami import (
    AmiActionFailed,
    AmiClient,
    AmiConnectionLost,
    AmiConnectionMade,
    AmiTimeout,
    Backoff,
)

SECRET = "Zq9-very-secret-ami-password"
CRLF = "\r\n"


def frame(*pairs: tuple[str, str]) -> bytes:
    return (CRLF.join(f"{k}: {v}" for k, v in pairs) + CRLF + CRLF).encode("utf-8")


class FakeAmi:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.logins: list[dict[str, str]] = []
        self.drop_on: set[str] = set()
        self.silent = False  # stop answering, keep the socket: half-open
        self.fully_booted = True
        self.shutting_down = False  # Asterisk refuses every login while it stops or restarts
        self.originate_event_first = False  # a fast failure can overtake the "queued" reply
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection (Asterisk going away)."""
        if self.server is not None:
            self.server.close()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        if self._handlers:
            await asyncio.wait(self._handlers)
        if self.server is not None:
            await self.server.wait_closed()
            self.server = None

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer), name="fake-ami")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        writer.write(b"Asterisk Call Manager/9.0.0\r\n")
        try:
            while True:
                raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                msg: dict[str, str] = {}
                for line in raw.decode("utf-8").split(CRLF):
                    if ": " in line:
                        k, v = line.split(": ", 1)
                        msg.setdefault(k.lower(), v)
                action = msg.get("action", "").lower()
                self.counts[action] += 1
                if action in self.drop_on:
                    writer.transport.abort()
                    return
                if self.silent:
                    continue
                for chunk in self.reply(action, msg):
                    writer.write(chunk)
                await writer.drain()
                if action == "logoff":
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            if writer in self.writers:
                self.writers.remove(writer)
            writer.transport.abort()

    def reply(self, action: str, msg: dict[str, str]) -> list[bytes]:
        aid = ("ActionID", msg.get("actionid", ""))
        if action == "login":
            self.logins.append(msg)
            if self.shutting_down:
                return [frame(("Response", "Error"), aid, ("Message", "Asterisk is shutting down"))]
            if msg.get("username") == "ivr-engine" and msg.get("secret") == SECRET:
                out = [frame(("Response", "Success"), aid, ("Message", "Authentication accepted"))]
                if self.fully_booted:
                    out.append(
                        frame(
                            ("Event", "FullyBooted"),
                            ("Privilege", "system,all"),
                            ("Uptime", "12"),
                            ("LastReload", "12"),
                            ("Status", "Fully Booted"),
                        )
                    )
                return out
            return [frame(("Response", "Error"), aid, ("Message", "Authentication failed"))]
        if action == "ping":
            return [frame(("Response", "Success"), aid, ("Ping", "Pong"), ("Timestamp", "1.5"))]
        if action == "logoff":
            return [frame(("Response", "Goodbye"), aid, ("Message", "Thanks for all the fish."))]
        if action == "corestatus":
            return [
                frame(
                    ("Response", "Success"),
                    aid,
                    ("CoreStartupDate", "2026-11-25"),
                    ("CoreCurrentCalls", "2"),
                )
            ]
        if action == "coreshowchannels":
            return [
                frame(
                    ("Response", "Success"),
                    aid,
                    ("EventList", "start"),
                    ("Message", "Channels will follow"),
                ),
                *(
                    frame(
                        ("Event", "CoreShowChannel"),
                        aid,
                        ("Channel", f"PJSIP/caller-0000000{i}"),
                        ("CallerIDName", "陈先生"),
                    )
                    for i in (1, 2)
                ),
                frame(
                    ("Event", "CoreShowChannelsComplete"),
                    aid,
                    ("EventList", "Complete"),
                    ("ListItems", "2"),
                ),
            ]
        if action == "originate":
            out = [
                frame(("Response", "Success"), aid, ("Message", "Originate successfully queued")),
                frame(
                    ("Event", "OriginateResponse"),
                    aid,
                    ("Response", "Success"),
                    ("Channel", msg.get("channel", "")),
                    ("Context", msg.get("context", "")),
                    ("Exten", msg.get("exten", "")),
                    ("Reason", "4"),
                    ("Uniqueid", "1700000000.7"),
                    ("CallerIDNum", "13800138000"),
                    ("CallerIDName", "陈先生"),
                ),
            ]
            return out[::-1] if self.originate_event_first else out
        return [frame(("Response", "Error"), aid, ("Message", "Invalid/unknown command"))]

    async def push(self, data: bytes, *, split_at: int | None = None) -> None:
        """Send bytes to every client, optionally as two TCP writes split at a byte offset."""
        parts = [data] if split_at is None else [data[:split_at], data[split_at:]]
        for i, part in enumerate(parts):
            for w in list(self.writers):
                w.write(part)
                await w.drain()
            if i + 1 < len(parts):
                await asyncio.sleep(0.05)  # let the first part arrive as its own chunk


def settings(port: int, **kw: object) -> AmiSettings:
    base: dict[str, object] = dict(
        host="127.0.0.1",
        port=port,
        username="ivr-engine",
        secret=SECRET,
        ping_interval=5.0,
        action_timeout=2.0,
    )
    base.update(kw)
    return AmiSettings(**base)  # type: ignore[arg-type]


FAST = Backoff(initial=0.05, factor=2.0, cap=0.2)


@pytest.fixture
async def fake() -> AsyncIterator[FakeAmi]:
    server = FakeAmi()
    await server.start()
    yield server
    await server.stop()


class Recorder:
    """Records events; `next(name)` returns the oldest one of that name not yet taken."""

    def __init__(self) -> None:
        self.events: list[AmiEvent] = []
        self.times: list[float] = []
        self._taken: set[int] = set()
        self._changed = asyncio.Event()

    def __call__(self, event: AmiEvent) -> None:
        self.events.append(event)
        self.times.append(time.monotonic())
        self._changed.set()

    async def next(self, name: str, timeout: float = 3.0) -> AmiEvent:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while True:
                for i, event in enumerate(self.events):
                    if event.name == name and i not in self._taken:
                        self._taken.add(i)
                        return event
                self._changed.clear()
                await self._changed.wait()

    def names(self) -> list[str]:
        return [e.name for e in self.events]


def other_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


# --- sans-I/O ------------------------------------------------------------------------------


def test_framer_decodes_chinese_fed_byte_by_byte() -> None:
    data = b"Asterisk Call Manager/9.0.0\r\n" + frame(
        ("Event", "Newchannel"), ("CallerIDName", "陈先生"), ("Channel", "PJSIP/x-1")
    )
    framer = AmiFramer()
    frames = []
    for i in range(len(data)):
        frames += framer.feed(data[i : i + 1])
    assert framer.version == "9.0.0"
    assert len(frames) == 1
    assert frames[0].fields["calleridname"] == "陈先生"


_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    max_size=20,
)
_key = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,10}", fullmatch=True)


@settings_h(max_examples=60, deadline=None)
@given(
    frames=st.lists(st.lists(st.tuples(_key, _text), min_size=1, max_size=6), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_framer_gives_the_same_frames_however_the_bytes_are_cut(
    frames: list[list[tuple[str, str]]], cuts: list[int]
) -> None:
    data = b"Asterisk Call Manager/9.0.0\r\n" + b"".join(frame(*f) for f in frames)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    framer = AmiFramer()
    got = []
    for a, b in zip(points, points[1:], strict=False):
        got += framer.feed(data[a:b])
    expected = [[(k, v) for k, v in f] for f in frames]
    assert [list(g.fields.pairs) for g in got] == expected


@settings_h(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_framer_on_garbage_gives_frames_or_a_protocol_error(data: bytes) -> None:
    framer = AmiFramer(max_frame=200)
    try:
        framer.feed(b"Asterisk Call Manager/9.0.0\r\n" + data)
        framer.feed(data)
    except AmiProtocolError:
        pass


def test_framer_refuses_a_peer_that_is_not_ami() -> None:
    with pytest.raises(AmiProtocolError, match="not an AMI banner"):
        AmiFramer().feed(b"SSH-2.0-OpenSSH_9.6\r\n")
    framer = AmiFramer(max_frame=100)
    framer.feed(b"Asterisk Call Manager/9.0.0\r\n")
    with pytest.raises(AmiProtocolError, match="longer than 100"):
        framer.feed(b"Event: X\r\nData: " + b"a" * 200)


def test_encode_action_refuses_header_injection() -> None:
    assert encode_action({"Action": "Ping", "ActionID": "1"}) == (
        b"Action: Ping\r\nActionID: 1\r\n\r\n"
    )
    assert b"Variable: A=1\r\nVariable: B=2\r\n" in encode_action(
        {"Action": "Originate", "Variable": ["A=1", "B=2"]}
    )
    with pytest.raises(AmiEncodingError, match="CallerID contains a line break"):
        encode_action({"Action": "Originate", "CallerID": "x\r\n\r\nAction: Originate"})
    with pytest.raises(AmiEncodingError, match="invalid AMI header name"):
        encode_action({"Action: Ping\r\n": "x"})


def test_parse_frame_tolerates_odd_lines() -> None:
    f = parse_frame("Response: Success\r\nEmpty:\r\nData: a: b\r\nTight:12\r\nno colon here\n")
    assert dict(f.fields) == {"Response": "Success", "Empty": "", "Data": "a: b", "Tight": "12"}
    assert f.unparsed == ("no colon here",)
    assert f.is_response and not f.is_event
    repeated = parse_frame("Event: X\r\nVariable: A=1\r\nvariable: B=2\r\n")
    assert repeated.fields["VARIABLE"] == "A=1"
    assert repeated.fields.getall("Variable") == ("A=1", "B=2")


def test_dtmf_digits_are_masked_at_parse_time() -> None:
    f = parse_frame("Event: DTMFEnd\r\nChannel: PJSIP/c-1\r\nDigit: 7\r\nDurationMs: 120\r\n")
    assert f.fields["Digit"] == "*"
    assert "7" not in repr(f)
    f2 = parse_frame("Event: VarSet\r\nSecret: hunter2\r\n")
    assert "hunter2" not in repr(f2.fields)


@pytest.mark.parametrize(
    ("text", "kind", "attrs"),
    [
        (
            "Event: DeviceStateChange\nDevice: PJSIP/agent-1001\nState: INUSE",
            DeviceStateChange,
            {"device": "PJSIP/agent-1001", "state": "INUSE"},
        ),
        (
            "Event: ContactStatus\nURI: sip:1001@127.0.0.1:5070\nContactStatus: Reachable\n"
            "AOR: agent-1001\nEndpointName: agent-1001\nRoundtripUsec: 812",
            ContactStatus,
            {"contact_status": "Reachable", "aor": "agent-1001", "roundtrip_usec": 812},
        ),
        (
            "Event: PeerStatus\nChannelType: PJSIP\nPeer: PJSIP/agent-1001\n"
            "PeerStatus: Unreachable",
            PeerStatus,
            {"peer": "PJSIP/agent-1001", "peer_status": "Unreachable"},
        ),
        (
            "Event: DialEnd\nChannel: PJSIP/trunk-1\nDestChannel: PJSIP/agent-1001-2\n"
            "DialStatus: NOANSWER",
            DialEnd,
            {"dest_channel": "PJSIP/agent-1001-2", "dial_status": "NOANSWER"},
        ),
        (
            "Event: DTMFBegin\nChannel: PJSIP/trunk-1\nDigit: 5\nDirection: Received",
            DtmfBegin,
            {"direction": "Received"},
        ),
        (
            "Event: Hangup\nChannel: PJSIP/trunk-1\nCause: not-a-number",
            Hangup,
            {"cause": None},
        ),
        ("Event: AgentCalled\nQueue: cards", AmiEvent, {"name": "AgentCalled"}),
    ],
)
def test_events_come_out_typed(text: str, kind: type[AmiEvent], attrs: dict[str, object]) -> None:
    event = parse_event(parse_frame(text))
    assert type(event) is kind
    for attr, value in attrs.items():
        assert getattr(event, attr) == value
    if kind is DtmfBegin:
        assert event.fields["Digit"] == "*" and "5" not in repr(event)


def test_list_reply_completes_on_the_complete_event_and_error_ends_at_once() -> None:
    p = PendingAction("QueueStatus", "a1")
    assert not p.feed(parse_frame("Response: Success\nActionID: a1\nEventList: start\n"))
    assert not p.feed(parse_frame("Event: QueueParams\nActionID: a1\nQueue: cards\n"))
    assert p.feed(parse_frame("Event: QueueStatusComplete\nActionID: a1\nEventList: Complete\n"))
    assert p.is_list and [e.name for e in p.events] == ["QueueParams"]
    e = PendingAction("PJSIPShowEndpoints", "a2")
    assert e.feed(parse_frame("Response: Error\nActionID: a2\nMessage: No endpoints found\n"))
    o = PendingAction("Originate", "a3")
    early = parse_frame("Event: OriginateResponse\nActionID: a3\nResponse: Failure\n")
    assert early.is_event and not early.is_response and not o.wants(early)
    with pytest.raises(AmiProtocolError):
        o.feed(early)
    assert o.feed(parse_frame("Response: Success\nActionID: a3\nMessage: Originate queued\n"))


def test_backoff_grows_is_capped_and_jittered() -> None:
    b = Backoff(initial=1.0, factor=2.0, cap=8.0)
    assert [b.delay(n, lambda: 1.0) for n in range(6)] == [1, 2, 4, 8, 8, 8]
    assert [b.delay(n, lambda: 0.0) for n in range(4)] == [0.5, 1, 2, 4]
    assert b.delay(10_000, lambda: 1.0) == 8.0  # no overflow for a long outage
    with pytest.raises(ValueError):
        Backoff(initial=0)


# --- the client ----------------------------------------------------------------------------


async def test_login_success_reports_connected_and_typed_events(fake: FakeAmi) -> None:
    client = AmiClient(settings(fake.port))
    rec = Recorder()
    client.subscribe("*", rec)
    await client.connect()
    assert client.connected
    booted = await rec.next("FullyBooted")
    assert isinstance(booted, FullyBooted) and booted.uptime == 12
    made = rec.events[0]
    assert isinstance(made, AmiConnectionMade) and made.name == "AmiConnected"
    assert not made.reconnect and client.version == "9.0.0"
    await client.close()
    assert not client.connected
    assert fake.counts["logoff"] == 1
    assert not other_tasks()


async def test_a_pbx_shutting_down_is_not_a_credentials_error(fake: FakeAmi) -> None:
    """During `core restart` Asterisk answers Login with "Asterisk is shutting down": a
    transient refusal (the daemon retries; start-up must not stop on it as on a bad secret)."""
    fake.shutting_down = True
    client = AmiClient(settings(fake.port))
    with pytest.raises(AmiDisconnected, match="shutting down") as info:
        await client.connect()
    assert not isinstance(info.value, AmiLoginError)
    fake.shutting_down = False
    await client.connect()
    assert client.connected
    await client.close()


async def test_refused_login_raises_once_and_never_logs_the_secret(
    fake: FakeAmi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = AmiClient(settings(fake.port, secret="wrong-" + SECRET))
    with pytest.raises(AmiLoginError) as info:
        await client.connect()
    msg = str(info.value)
    assert "refused login for user 'ivr-engine'" in msg and "Authentication failed" in msg
    assert f"127.0.0.1:{fake.port}" in msg
    await asyncio.sleep(0.3)
    assert fake.counts["login"] == 1  # no retry loop behind our back
    assert not client.connected
    assert not other_tasks()
    for text in (caplog.text, msg, repr(info.value), repr(client)):
        assert SECRET not in text
    await client.close()


async def test_refused_tcp_connect_names_host_and_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = AmiClient(settings(port))
    with pytest.raises(AmiDisconnected, match=f"127.0.0.1:{port}"):
        await client.connect()
    await client.close()


@pytest.mark.parametrize(
    ("greeting", "error", "match"),
    [
        (b"", AmiDisconnected, "no AMI banner from 127.0.0.1:"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", AmiProtocolError, "not an AMI banner"),
    ],
)
async def test_a_peer_that_is_not_ami_fails_connect_in_time(
    greeting: bytes, error: type[Exception], match: str
) -> None:
    peers: list[asyncio.StreamWriter] = []

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)
        writer.write(greeting)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = AmiClient(settings(port), connect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(error, match=match):
        await client.connect()
    assert time.monotonic() - started < 2
    await client.close()
    for w in peers:
        w.transport.abort()
    server.close()
    await server.wait_closed()
    assert not other_tasks()


async def test_action_success_and_error(fake: FakeAmi) -> None:
    async with AmiClient(settings(fake.port), events="call,system") as client:
        assert fake.logins[-1]["events"] == "call,system"
        reply = await client.action({"Action": "CoreStatus"})
        assert isinstance(reply, AmiResponse) and reply.success
        assert reply.fields["CoreCurrentCalls"] == "2"
        with pytest.raises(AmiActionError) as info:
            await client.action({"Action": "NoSuchAction"})
        assert str(info.value) == "NoSuchAction: Invalid/unknown command"
        assert info.value.action == "NoSuchAction"
        assert isinstance(info.value, AmiActionFailed)
        assert info.value.reason == "Invalid/unknown command"
        assert client.connected  # an error reply does not hurt the connection


async def test_list_action_returns_its_events_only_to_the_caller(fake: FakeAmi) -> None:
    async with AmiClient(settings(fake.port)) as client:
        rec = Recorder()
        client.subscribe("*", rec)
        events = await client.list_action({"Action": "CoreShowChannels"})
        assert [e.name for e in events] == ["CoreShowChannel", "CoreShowChannel"]
        assert events[1].fields["Channel"] == "PJSIP/caller-00000002"
        assert events[0].fields["CallerIDName"] == "陈先生"
        assert not [n for n in rec.names() if n.startswith("CoreShowChannel")]
        with pytest.raises(AmiActionError, match="did not answer with an event list"):
            await client.list_action({"Action": "CoreStatus"})


async def test_chinese_name_split_mid_character_arrives_intact(fake: FakeAmi) -> None:
    async with AmiClient(settings(fake.port)) as client:
        rec = Recorder()
        client.subscribe("Newchannel", rec)
        data = frame(
            ("Event", "Newchannel"),
            ("Channel", "PJSIP/trunk-00000001"),
            ("ChannelStateDesc", "Ring"),
            ("CallerIDNum", "13800138000"),
            ("CallerIDName", "陈先生"),
            ("Uniqueid", "1700000000.1"),
        )
        cut = data.index("陈".encode()) + 1  # inside the 3-byte sequence of 陈
        await fake.push(data, split_at=cut)
        event = await rec.next("Newchannel")
        assert isinstance(event, Newchannel)
        assert event.caller_id_name == "陈先生" and event.caller_id_num == "13800138000"
        assert event.state == "Ring"


async def test_typed_events_and_dtmf_digit_masked(
    fake: FakeAmi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with AmiClient(settings(fake.port)) as client:
        rec = Recorder()
        client.subscribe("*", rec)
        await fake.push(
            frame(("Event", "Hangup"), ("Channel", "PJSIP/c-1"), ("Cause", "16"))
            + frame(("Event", "BridgeEnter"), ("BridgeUniqueid", "b1"), ("BridgeNumChannels", "2"))
            + frame(("Event", "BridgeLeave"), ("BridgeUniqueid", "b1"), ("BridgeNumChannels", "1"))
            + frame(("Event", "DTMFEnd"), ("Channel", "PJSIP/c-1"), ("Digit", "#"))
        )
        dtmf = await rec.next("DTMFEnd")
        hangup, enter, leave = rec.events[-4:-1]
        assert isinstance(hangup, Hangup) and hangup.cause == 16
        assert isinstance(enter, BridgeEnter) and enter.bridge_num_channels == 2
        assert isinstance(leave, BridgeLeave) and not isinstance(leave, BridgeEnter)
        assert isinstance(dtmf, DtmfEnd) and dtmf.fields["Digit"] == "*"
        assert "#" not in repr(dtmf)
    assert "Digit: #" not in caplog.text and "'#'" not in caplog.text


async def test_drop_mid_action_fails_it_and_reconnects(fake: FakeAmi) -> None:
    client = AmiClient(settings(fake.port), backoff=FAST)
    rec = Recorder()
    client.subscribe("*", rec)
    await client.connect()
    await rec.next("AmiConnected")
    fake.drop_on = {"corestatus"}
    with pytest.raises(AmiDisconnected, match="lost before the reply to CoreStatus"):
        await client.action({"Action": "CoreStatus"})
    fake.drop_on = set()
    made = await rec.next("AmiConnected")
    assert isinstance(made, AmiConnectionMade) and made.reconnect
    assert "AmiDisconnected" in rec.names()
    assert isinstance(await client.action({"Action": "CoreStatus"}), AmiResponse)
    assert fake.counts["corestatus"] == 2  # the dropped one was not re-sent
    await client.close()
    assert not other_tasks()


async def test_originate_in_flight_at_the_drop_is_never_sent_twice(fake: FakeAmi) -> None:
    client = AmiClient(settings(fake.port), backoff=FAST)
    rec = Recorder()
    client.subscribe("*", rec)
    await client.connect()
    await rec.next("AmiConnected")
    await rec.next("FullyBooted")
    fake.drop_on = {"originate"}
    with pytest.raises(AmiDisconnected):
        await client.originate(channel="PJSIP/agent-1001", context="agents", exten="s")
    fake.drop_on = set()
    await rec.next("AmiConnected")
    await rec.next("FullyBooted")  # panoramisk would re-send on this event
    await client.action({"Action": "Ping"})
    await asyncio.sleep(0.2)
    assert fake.counts["originate"] == 1
    # panoramisk's own resend path is cut: no FullyBooted hook, and its queue is dropped.
    manager = client.manager
    assert manager is not None and not manager.awaiting_actions
    assert "FullyBooted" not in manager.callbacks
    assert all(pattern != "FullyBooted" for pattern, _ in manager.patterns)
    manager.awaiting_actions.append({"Action": "Originate"})
    await manager.send_awaiting_actions()
    assert not manager.awaiting_actions
    with pytest.raises(AmiError):
        manager.connect()
    with pytest.raises(AmiError, match="AmiClient.action"):
        manager.send_action({"Action": "Originate", "Channel": "PJSIP/agent-1001"})
    await client.close()
    assert fake.counts["originate"] == 1


@pytest.mark.parametrize("event_first", [False, True])
async def test_originate_returns_action_id_and_correlates_its_response(
    fake: FakeAmi, event_first: bool
) -> None:
    fake.originate_event_first = event_first
    async with AmiClient(settings(fake.port)) as client:
        action_id = await client.originate(
            channel="PJSIP/agent-1001",
            context="agents",
            exten="4008",
            caller_id='"陈先生" <13800138000>',
            variables={"IVR_CALL": "c1"},
        )
        result = await client.originate_response(action_id, timeout=2)
        assert isinstance(result, OriginateResponse)
        assert result.success and result.action_id == action_id
        assert result.channel == "PJSIP/agent-1001" and result.reason == 4
        assert result.caller_id_name == "陈先生"
        with pytest.raises(ValueError):
            await client.originate(channel="PJSIP/x")
        with pytest.raises(AmiEncodingError):
            await client.originate(channel="PJSIP/x\r\nAction: Originate", application="Wait")
    assert fake.counts["originate"] == 1


async def test_half_open_connection_is_detected_within_the_ping_interval(fake: FakeAmi) -> None:
    interval = 0.6
    client = AmiClient(settings(fake.port, ping_interval=interval), backoff=FAST)
    rec = Recorder()
    client.subscribe("*", rec)
    await client.connect()
    await rec.next("AmiConnected")
    await asyncio.sleep(interval)  # at least one ping answered
    assert fake.counts["ping"] >= 1
    fake.silent = True
    silent_since = time.monotonic()
    lost = await rec.next("AmiDisconnected", timeout=5)
    detected_after = rec.times[rec.events.index(lost)] - silent_since
    assert detected_after <= interval + 0.25, detected_after  # slack for a busy machine
    assert isinstance(lost, AmiConnectionLost) and "half-open" in lost.reason
    fake.silent = False
    made = await rec.next("AmiConnected")
    assert isinstance(made, AmiConnectionMade) and made.reconnect
    assert fake.connections == 2
    await client.close()
    assert not other_tasks()


async def test_ping_answered_with_error_counts_as_dead(fake: FakeAmi) -> None:
    client = AmiClient(settings(fake.port, ping_interval=0.2), backoff=FAST)
    rec = Recorder()
    client.subscribe("AmiDisconnected", rec)
    await client.connect()
    original = fake.reply
    fake.reply = lambda action, msg: (  # type: ignore[method-assign]
        original("nosuch", msg) if action == "ping" else original(action, msg)
    )
    await rec.next("AmiDisconnected")
    await client.close()


async def test_asterisk_restart_reconnects_with_backoff(fake: FakeAmi) -> None:
    client = AmiClient(settings(fake.port), backoff=FAST)
    rec = Recorder()
    client.subscribe("*", rec)
    await client.connect()
    await rec.next("AmiConnected")
    port = fake.port
    await fake.push(frame(("Event", "Shutdown"), ("Shutdown", "Cleanly"), ("Restart", "True")))
    await fake.stop()
    lost = await rec.next("AmiDisconnected")
    assert isinstance(lost, AmiConnectionLost)
    with pytest.raises(AmiDisconnected, match="not connected"):
        await client.action({"Action": "CoreStatus"})
    await asyncio.sleep(0.5)  # several refused attempts while "Asterisk" is away
    await fake.start(port)
    made = await rec.next("AmiConnected")
    assert isinstance(made, AmiConnectionMade) and made.reconnect
    assert "Shutdown" in rec.names()
    assert isinstance(await client.action({"Action": "CoreStatus"}), AmiResponse)
    await client.close()
    assert not other_tasks()


async def test_action_timeout_keeps_the_connection(fake: FakeAmi) -> None:
    async with AmiClient(settings(fake.port)) as client:
        fake.silent = True
        with pytest.raises(AmiTimeout, match="no reply to CoreStatus"):
            await client.action({"Action": "CoreStatus"}, timeout=0.2)
        fake.silent = False
        assert client.connected


async def test_event_stream_is_bounded_and_ends_at_close(fake: FakeAmi) -> None:
    client = AmiClient(settings(fake.port))
    await client.connect()
    stream = client.events("UserEvent", maxsize=2)
    rec = Recorder()
    client.subscribe("UserEvent", rec)
    for i in range(5):
        await fake.push(frame(("Event", "UserEvent"), ("UserEvent", f"n{i}")))
    while len(rec.events) < 5:
        await rec.next("UserEvent")
    assert stream.dropped == 3
    await client.close()
    got = [e.fields["UserEvent"] async for e in stream]
    assert got == ["n0", "n1"]


async def test_subscriber_errors_are_logged_and_do_not_stop_dispatch(
    fake: FakeAmi, caplog: pytest.LogCaptureFixture
) -> None:
    async with AmiClient(settings(fake.port)) as client:
        rec = Recorder()

        def broken(event: AmiEvent) -> None:
            raise RuntimeError("subscriber bug")

        async def coroutine(event: AmiEvent) -> None:
            pass

        with pytest.raises(TypeError, match="use events"):
            client.subscribe("UserEvent", coroutine)  # type: ignore[arg-type]
        client.subscribe("UserEvent", broken)
        unsubscribe = client.subscribe("UserEvent", rec)
        await fake.push(frame(("Event", "UserEvent"), ("UserEvent", "x")))
        await rec.next("UserEvent")
        assert "subscriber" in caplog.text and "UserEvent" in caplog.text
        unsubscribe()


async def test_connect_twice_and_after_close_are_errors(fake: FakeAmi) -> None:
    client = AmiClient(settings(fake.port))
    await client.connect()
    with pytest.raises(AmiError, match="already connected"):
        await client.connect()
    await client.close()
    await client.close()
    with pytest.raises(AmiError, match="closed"):
        await client.connect()
    with contextlib.suppress(AmiDisconnected):
        await client.action({"Action": "Ping"})


# --- events nobody wants are not parsed ----------------------------------------------------


def test_framer_drops_events_nobody_wants_before_parsing_them() -> None:
    wanted = {"hangup"}
    framer = AmiFramer(wants_event=lambda name: name.lower() in wanted)
    data = (
        b"Asterisk Call Manager/9.0.0\r\n"
        + frame(("Event", "Newexten"), ("Channel", "PJSIP/c-1"), ("Application", "NoOp"))
        + frame(("Event", "Hangup"), ("Channel", "PJSIP/c-1"), ("Cause", "16"))
        + frame(("Event", "VarSet"), ("Variable", "IVR_NEXT"), ("Value", "hangup"))
        # a list action's event and an OriginateResponse carry the ActionID: always kept
        + frame(("Event", "CoreShowChannel"), ("ActionID", "a-1"), ("Channel", "PJSIP/c-2"))
        + frame(("Event", "OriginateResponse"), ("ActionID", "a-2"), ("Response", "Failure"))
        + frame(("Response", "Success"), ("ActionID", "a-3"), ("Message", "ok"))
    )
    frames = [f for i in range(0, len(data), 7) for f in framer.feed(data[i : i + 7])]
    assert [f.event or f.response for f in frames] == [
        "Hangup", "CoreShowChannel", "OriginateResponse", "Success",
    ]  # fmt: skip
    assert framer.skipped == 2
    # Without the predicate every frame is parsed, as before.
    assert len(AmiFramer().feed(data)) == 6


async def test_client_parses_only_subscribed_events_and_star_takes_all(
    fake: FakeAmi, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ivr_engine.protocol.ami as ami_protocol

    parsed: list[str] = []
    real_parse = ami_protocol.parse_frame

    def counting_parse(text: str) -> AmiFrame:
        result = real_parse(text)
        parsed.append(result.event or result.response)
        return result

    monkeypatch.setattr(ami_protocol, "parse_frame", counting_parse)
    noise = frame(("Event", "Newstate"), ("Channel", "PJSIP/c-1")) * 50
    async with AmiClient(settings(fake.port)) as client:
        rec = Recorder()
        client.subscribe("Hangup", rec)
        await fake.push(noise + frame(("Event", "Hangup"), ("Channel", "PJSIP/c-1")))
        hangup = await rec.next("Hangup")
        assert isinstance(hangup, Hangup) and hangup.channel == "PJSIP/c-1"
        assert "Newstate" not in parsed and rec.names() == ["Hangup"]
        everything = Recorder()
        unsubscribe = client.subscribe("*", everything)
        await fake.push(frame(("Event", "Newstate"), ("Channel", "PJSIP/c-2")))
        assert (await everything.next("Newstate")).fields["Channel"] == "PJSIP/c-2"
        unsubscribe()
        await fake.push(noise + frame(("Event", "Hangup"), ("Channel", "PJSIP/c-3")))
        await rec.next("Hangup")
        assert parsed.count("Newstate") == 1  # only while "*" was subscribed
