"""Fuzzing the AGI state machine: any bytes give events or AgiProtocolError, nothing else."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivr_engine.errors import AgiProtocolError
from ivr_engine.protocol.agi import (
    NEED_DATA,
    AgiConnection,
    AgiResult,
    ConnectionClosed,
    ConnectionState,
    EnvironmentReceived,
    HangupNoticed,
    ReplyReceived,
    environment_lines,
    parse_reply,
)

ENV = environment_lines(
    {"agi_request": "agi://127.0.0.1/x", "agi_channel": "PJSIP/a-1", "agi_uniqueid": "1.1"}
)

# Lines Asterisk really sends, and near misses of them.
REPLY_LINES = [
    b"200 result=0\n",
    b"200 result=49 endpos=100\n",
    b"200 result= (timeout)\n",
    b"200 result=1 (a(b)c)\n",
    b"200 result=1 (digit) digit=5 endpos=3\n",
    b"100 result=0 Trying...\n",
    b"HANGUP\n",
    b"510 Invalid or unknown command\n",
    b"511 Command Not Permitted on a dead channel\n",
    b"520-Invalid command syntax.  Proper usage follows:\n",
    b" Usage: X\n",
    b"520 End of proper usage.\n",
    b"usage text520 End of proper usage.\n",
    b"520 Invalid command syntax.  Proper usage not available.\n",
    b"\n",
    b"\r\n",
    b"200 result=1 endpos=x\n",
    b"200-\n",
    b"\xff\xfe\n",
    b"agi_request: x\n",
]

chunks = st.lists(st.binary(max_size=40), max_size=30)
soup = st.lists(st.one_of(st.sampled_from(REPLY_LINES), st.binary(max_size=30)), max_size=40)


def drive(conn: AgiConnection, pieces: list[bytes], eof: bool) -> list[object]:
    """Feed pieces, sending a command whenever the connection is idle; check invariants."""
    got: list[object] = []
    sent: list[str] = []
    try:
        for piece in [*pieces, None]:
            if piece is None:
                if not eof:
                    break
                conn.receive_eof()
            else:
                conn.receive_data(piece)
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                got.append(event)
                if isinstance(event, ConnectionClosed):
                    assert conn.state is ConnectionState.CLOSED
                    return got
                assert isinstance(event, EnvironmentReceived | ReplyReceived | HangupNoticed)
                if isinstance(event, ReplyReceived):
                    assert event.command == sent[-1]
                    assert isinstance(event.result, AgiResult)
                    assert conn.pending is None
                if conn.state is ConnectionState.IDLE and conn.pending is None:
                    verb = ["NOOP", "STREAM FILE", "GET DATA"][len(sent) % 3]
                    conn.send_command(verb, "x")
                    sent.append(verb)
    except AgiProtocolError:
        assert conn.state is ConnectionState.FAILED
        try:
            conn.next_event()
        except AgiProtocolError:
            pass  # sticky, as documented
        else:
            raise AssertionError("a protocol error was not sticky") from None
    return got


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=chunks, eof=st.booleans())
def test_any_bytes_before_the_environment(pieces: list[bytes], eof: bool) -> None:
    drive(AgiConnection(max_line=256, max_env_lines=20), pieces, eof)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(lines=soup, cuts=st.lists(st.integers(0, 2000), max_size=10), eof=st.booleans())
def test_reply_soup_after_a_valid_environment(
    lines: list[bytes], cuts: list[int], eof: bool
) -> None:
    data = ENV + b"".join(lines)
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    got = drive(AgiConnection(max_line=256, max_usage_lines=5), pieces, eof)
    if got:
        assert isinstance(got[0], EnvironmentReceived)


@settings(max_examples=400)
@given(text=st.one_of(st.binary(max_size=60), st.text(max_size=60)))
def test_parse_reply_any_text(text: bytes | str) -> None:
    try:
        result = parse_reply(text)
    except AgiProtocolError:
        return
    assert 200 <= result.code <= 599
