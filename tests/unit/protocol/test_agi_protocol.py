"""The sans-I/O AGI protocol fed raw bytes: environment, quoting, replies, state machine."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ivr_engine.errors import AgiError, AgiProtocolError
from ivr_engine.protocol.agi import (
    AGI_BUF_LEN,
    NEED_DATA,
    AgiArgumentError,
    AgiConnection,
    AgiEnvironmentError,
    AgiResult,
    AgiSequenceError,
    ConnectionClosed,
    ConnectionState,
    EnvironmentReceived,
    HangupNoticed,
    ReplyReceived,
    format_command,
    parse_command_line,
    parse_environment,
    parse_reply,
)

# What Asterisk 22's res_agi.c launch_netscript() + setup_env() send, in their order.
ENV_BLOCK = (
    b"agi_network: yes\n"
    b"agi_network_script: hotline\n"
    b"agi_request: agi://127.0.0.1:4573/hotline\n"
    b"agi_channel: PJSIP/carrier-00000007\n"
    b"agi_language: zh\n"
    b"agi_type: PJSIP\n"
    b"agi_uniqueid: 1764075600.42\n"
    b"agi_version: 22.0.0\n"
    b"agi_callerid: 13800138000\n"
    b"agi_calleridname: \xe5\xbc\xa0\xe4\xb8\x89\n"
    b"agi_callingpres: 0\n"
    b"agi_callingani2: 0\n"
    b"agi_callington: 0\n"
    b"agi_callingtns: 0\n"
    b"agi_dnid: 4008\n"
    b"agi_rdnis: unknown\n"
    b"agi_context: from-carrier\n"
    b"agi_extension: 4008\n"
    b"agi_priority: 2\n"
    b"agi_enhanced: 0.0\n"
    b"agi_accountcode: \n"
    b"agi_threadid: 139689736754944\n"
    b"agi_arg_1: hotline\n"
    b"agi_arg_2: with space\n"
    b"\n"
)


def events(conn: AgiConnection) -> list[object]:
    out: list[object] = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return out


def ready_connection() -> AgiConnection:
    conn = AgiConnection()
    conn.receive_data(ENV_BLOCK)
    (event,) = events(conn)
    assert isinstance(event, EnvironmentReceived)
    return conn


# --------------------------------------------------------------------------- environment


def test_environment_accessors() -> None:
    env = parse_environment(ENV_BLOCK)
    assert env.network is True
    assert env.network_script == "hotline"
    assert env.request == "agi://127.0.0.1:4573/hotline"
    assert env.channel == "PJSIP/carrier-00000007"
    assert env.channel_type == "PJSIP"
    assert env.uniqueid == "1764075600.42"
    assert env.callerid == "13800138000" and env.caller_number == "13800138000"
    assert env.calleridname == "张三" and env.caller_name == "张三"
    assert env.callingpres == 0
    assert env.dnid == "4008" and env.extension == "4008" and env.context == "from-carrier"
    assert env.priority == 2
    assert env.language == "zh"
    assert env.enhanced is False
    assert env.accountcode == ""
    assert env.threadid == 139689736754944
    assert env.arguments == ("hotline", "with space")
    assert env.undecodable == frozenset()
    assert env.get("rdnis") == "unknown" and env.get("agi_nosuch", "x") == "x"
    assert hash(env) == hash(parse_environment(ENV_BLOCK))  # frozen: usable as a key
    with pytest.raises(TypeError):
        env.raw["agi_channel"] = "x"  # type: ignore[index]


def test_environment_unknown_caller_and_bad_numbers_are_lenient() -> None:
    block = ENV_BLOCK.replace(b"agi_callerid: 13800138000", b"agi_callerid: unknown")
    block = block.replace(b"agi_priority: 2", b"agi_priority: label")
    env = parse_environment(block)
    assert env.callerid == "unknown" and env.caller_number == ""
    assert env.priority is None


@pytest.mark.parametrize("cut", range(1, len(ENV_BLOCK)))
def test_environment_split_at_every_byte(cut: int) -> None:
    conn = AgiConnection()
    conn.receive_data(ENV_BLOCK[:cut])
    assert events(conn) == []
    conn.receive_data(ENV_BLOCK[cut:])
    (event,) = events(conn)
    assert isinstance(event, EnvironmentReceived)
    assert event.env == parse_environment(ENV_BLOCK)
    assert event.env.calleridname == "张三"  # UTF-8 split mid-character still decodes


def test_environment_byte_by_byte() -> None:
    conn = AgiConnection()
    got: list[object] = []
    for i in range(len(ENV_BLOCK)):
        conn.receive_data(ENV_BLOCK[i : i + 1])
        got += events(conn)
    assert len(got) == 1 and isinstance(got[0], EnvironmentReceived)


def test_environment_non_utf8_is_replaced_and_reported() -> None:
    gbk_name = "张三".encode("gbk")
    block = ENV_BLOCK.replace("张三".encode(), gbk_name)
    env = parse_environment(block)
    assert env.undecodable == frozenset({"agi_calleridname"})
    assert "\ufffd" in env.calleridname
    assert env.callerid == "13800138000"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not an AGI environment line"),
        (b"\n", "empty environment block"),
        (b"agi_request: x\nagi_channel: y\n\n", "lacks agi_uniqueid"),
        (ENV_BLOCK.replace(b"agi_dnid", b"agi_language"), "duplicate key agi_language"),
        (ENV_BLOCK.replace(b"agi_arg_1", b"agi_arg_3"), "not contiguous"),
        (ENV_BLOCK.replace(b"1764075600.42", b"a\x01b"), "not a printable id"),
        (ENV_BLOCK[:-1], "before the empty line"),
        (ENV_BLOCK[:-5], "in the middle of a line"),
        (ENV_BLOCK + b"200 result=0\n", "data after the environment"),
    ],
)
def test_environment_errors_are_specific(block: bytes, message: str) -> None:
    with pytest.raises(AgiProtocolError, match=message):
        parse_environment(block)


def test_oversized_environment_line() -> None:
    conn = AgiConnection(max_line=1024)
    conn.receive_data(b"agi_request: " + b"x" * 2000)  # no newline yet: refused already
    with pytest.raises(AgiProtocolError, match="line longer than 1024 bytes"):
        conn.next_event()
    # sticky: the same error again, and new bytes are ignored
    conn.receive_data(b"\n\n")
    with pytest.raises(AgiProtocolError, match="line longer than 1024 bytes"):
        conn.next_event()
    assert conn.state is ConnectionState.FAILED


def test_too_many_environment_lines() -> None:
    conn = AgiConnection(max_env_lines=50)
    conn.receive_data(b"".join(b"agi_arg_%d: x\n" % i for i in range(1, 60)))
    with pytest.raises(AgiEnvironmentError, match="more than 50 lines"):
        conn.next_event()


def test_environment_byte_budget() -> None:
    conn = AgiConnection(max_env_bytes=4096)
    conn.receive_data(b"".join(b"agi_arg_%d: %s\n" % (i, b"y" * 100) for i in range(1, 60)))
    with pytest.raises(AgiEnvironmentError, match="more than 4096 bytes"):
        conn.next_event()


def test_closed_before_any_byte_is_a_clean_event() -> None:
    conn = AgiConnection()
    conn.receive_eof()
    assert conn.next_event() == ConnectionClosed(pending=None, before_environment=True)
    assert conn.next_event() == ConnectionClosed(pending=None, before_environment=True)


# --------------------------------------------------------------------------- commands


@pytest.mark.parametrize(
    ("verb", "args", "wire"),
    [
        ("ANSWER", (), b"ANSWER\n"),
        ("stream file", ("welcome", ""), b'STREAM FILE welcome ""\n'),
        ("GET DATA", ("enter-pin", 5000, 4), b"GET DATA enter-pin 5000 4\n"),
        ("SET VARIABLE", ("NAME", "Zhang San"), b'SET VARIABLE NAME "Zhang San"\n'),
        ("SET VARIABLE", ("Q", 'say "hi"'), b'SET VARIABLE Q "say \\"hi\\""\n'),
        ("SET VARIABLE", ("P", "C:\\x"), b'SET VARIABLE P "C:\\\\x"\n'),
        ("VERBOSE", ("tab\there", 1), b'VERBOSE "tab\there" 1\n'),
        ("SET VARIABLE", ("N", "张三"), "SET VARIABLE N 张三\n".encode()),
    ],
)
def test_format_command_quoting(verb: str, args: tuple[str | int, ...], wire: bytes) -> None:
    assert format_command(verb, *args) == wire
    assert parse_command_line(wire.decode()) == (*verb.upper().split(), *map(str, args))


@given(st.lists(st.text(st.characters(blacklist_characters="\r\n\0")), max_size=8))
def test_quoting_round_trips_through_asterisks_parser(args: list[str]) -> None:
    try:
        line = format_command("SET VARIABLE", *args)
    except AgiArgumentError as exc:
        # Only the length limit, or text with no UTF-8 encoding (a lone surrogate), refuses.
        assert "bytes" in str(exc)
        return
    assert parse_command_line(line.decode()) == ("SET", "VARIABLE", *args)


@pytest.mark.parametrize("bad", ["a\nHANGUP", "a\rEXEC System rm", "nul\0byte", "\n"])
def test_injection_is_refused_without_echoing_the_value(bad: str) -> None:
    with pytest.raises(AgiArgumentError) as exc:
        format_command("SET VARIABLE", "CALLERNAME", bad)
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, AgiError)
    assert "argument 2 of SET VARIABLE" in str(exc.value)
    assert bad.strip() not in str(exc.value) or not bad.strip()


@pytest.mark.parametrize(
    "verb", ["", "STREAM  FILE", "STREAM FILE\nHANGUP", "1X", "GET-DATA", " X"]
)
def test_bad_verbs_are_refused(verb: str) -> None:
    with pytest.raises(AgiArgumentError, match="invalid AGI verb"):
        format_command(verb)


def test_argument_types_and_limits() -> None:
    with pytest.raises(AgiArgumentError, match="must be str or int, not bool"):
        format_command("SET MUSIC", True)  # type: ignore[arg-type]
    with pytest.raises(AgiArgumentError, match="must be str or int, not float"):
        format_command("WAIT FOR DIGIT", 1.5)  # type: ignore[arg-type]
    # A line of exactly 2047 bytes (newline included) fits Asterisk's fgets() buffer ...
    head = len(b"VERBOSE ") + 1
    assert len(format_command("VERBOSE", "x" * (AGI_BUF_LEN - 1 - head))) == AGI_BUF_LEN - 1
    # ... one more byte would be split into a second command by Asterisk.
    with pytest.raises(AgiArgumentError, match="second command"):
        format_command("VERBOSE", "x" * (AGI_BUF_LEN - head))
    with pytest.raises(AgiArgumentError, match="keeps only 127"):
        format_command("EXEC", *(["a"] * 130))


def test_parse_command_line_matches_parse_args() -> None:
    assert parse_command_line('a "b c" d') == ("a", "b c", "d")
    assert parse_command_line('STREAM FILE x ""') == ("STREAM", "FILE", "x", "")
    assert parse_command_line("a\\ b  c\t d") == ("a b", "c", "d")
    assert parse_command_line('ab"c d"e') == ("abc de",)


# --------------------------------------------------------------------------- replies


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("200 result=0", AgiResult(code=200, result=0, result_text="0")),
        ("200 result=1 (timeout)", AgiResult(code=200, result=1, result_text="1", data="timeout")),
        (
            "200 result=49 endpos=8640",
            AgiResult(code=200, result=49, result_text="49", endpos=8640),
        ),
        (
            "200 result=0 (timeout) endpos=24807",
            AgiResult(code=200, result=0, result_text="0", data="timeout", endpos=24807),
        ),
        (
            "200 result=53 (dtmf) endpos=100",
            AgiResult(code=200, result=53, result_text="53", data="dtmf", endpos=100),
        ),
        ("200 result= (timeout)", AgiResult(code=200, result_text="", data="timeout")),
        (
            "200 result=0123 (timeout)",
            AgiResult(code=200, result=123, result_text="0123", data="timeout"),
        ),
        ("200 result=12#", AgiResult(code=200, result=None, result_text="12#")),
        ("200 result=1 (a(b) c)", AgiResult(code=200, result=1, result_text="1", data="a(b) c")),
        ("200 result=1 ()", AgiResult(code=200, result=1, result_text="1", data="")),
        (
            "200 result=1 (digit) digit=5 endpos=100",
            AgiResult(
                code=200,
                result=1,
                result_text="1",
                data="digit",
                endpos=100,
                fields=(("digit", "5"),),
            ),
        ),
        (
            "200 result=-1 Gosub label not found",
            AgiResult(code=200, result=-1, result_text="-1", message="Gosub label not found"),
        ),
        (
            "503 result=-2 Memory allocation failure",
            AgiResult(code=503, result=-2, result_text="-2", message="Memory allocation failure"),
        ),
        (
            "510 Invalid or unknown command",
            AgiResult(code=510, message="Invalid or unknown command"),
        ),
        (
            "511 Command Not Permitted on a dead channel or intercept routine",
            AgiResult(
                code=511, message="Command Not Permitted on a dead channel or intercept routine"
            ),
        ),
        (
            "520 Invalid command syntax.  Proper usage not available.",
            AgiResult(code=520, message="Invalid command syntax.  Proper usage not available."),
        ),
    ],
)
def test_reply_forms(line: str, expected: AgiResult) -> None:
    got = parse_reply(line)
    assert got == AgiResult(**{**expected.__dict__, "raw": line})


def test_reply_helpers() -> None:
    assert parse_reply("200 result=49").digit == "1"
    assert parse_reply("200 result=0").digit is None
    assert parse_reply("200 result=-1").digit is None
    assert parse_reply("200 result=1 (x) digit=5").field("digit") == "5"
    assert parse_reply("200 result=1").ok and not parse_reply("510 Invalid or unknown command").ok


def test_reply_non_utf8_is_marked_lossy() -> None:
    got = parse_reply(b"200 result=1 (\xd5\xc5)\n")
    assert got.lossy and got.data == "\ufffd\ufffd"


USAGE_REPLY = (
    b"520-Invalid command syntax.  Proper usage follows:\n"
    b" Usage: GET DATA <file to be streamed> [timeout] [max digits]\n"
    b"\tStream the given file, and receive DTMF data.\n"
    b"520 End of proper usage.\n"
)


def test_multiline_520_usage() -> None:
    got = parse_reply(USAGE_REPLY)
    assert got.code == 520 and not got.ok
    assert got.usage is not None and got.usage.splitlines()[0].startswith(" Usage: GET DATA")
    assert got.raw.endswith("520 End of proper usage.")


def test_multiline_520_with_the_end_marker_glued_to_the_usage() -> None:
    # Asterisk sends the usage with "%s" and no newline of its own.
    got = parse_reply(
        b"520-Invalid command syntax.  Proper usage follows:\n"
        b"Returns the digits received from the channel at the other end.520 End of proper usage.\n"
    )
    assert got.code == 520
    assert got.usage == "Returns the digits received from the channel at the other end."


def test_parse_reply_skips_hangup_and_provisional_lines() -> None:
    got = parse_reply("HANGUP\n100 result=0 Trying...\n200 result=0 Gosub complete\n")
    assert got == AgiResult(
        code=200,
        result=0,
        result_text="0",
        message="Gosub complete",
        raw="200 result=0 Gosub complete",
    )
    with pytest.raises(AgiProtocolError, match="no complete reply"):
        parse_reply("HANGUP\n")
    with pytest.raises(AgiProtocolError, match="more than one reply"):
        parse_reply("200 result=0\n200 result=1\n")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("hello", "garbled reply to STREAM FILE"),
        ("", "garbled reply"),
        ("20 result=0", "garbled reply"),
        ("999 result=0", "out of range"),
        ("200-result=0", "unexpected multi-line reply 200"),
        ("200 result=1 endpos=abc", "endpos is not a number"),
    ],
)
def test_garbled_replies(line: str, message: str) -> None:
    conn = ready_connection()
    conn.send_command("STREAM FILE", "x", "")
    conn.receive_data(line.encode() + b"\n")
    with pytest.raises(AgiProtocolError, match=message):
        conn.next_event()
    with pytest.raises(AgiProtocolError, match=message):
        conn.send_command("NOOP")  # sticky


# --------------------------------------------------------------------------- state machine

TRANSCRIPT_COMMANDS = [
    (("ANSWER",), b"200 result=0\n"),
    (("STREAM FILE", "welcome", "12"), b"200 result=49 endpos=8000\n"),
    (("GET DATA", "x", 3000, 4), USAGE_REPLY),
    (("EXEC", "Gosub", "sub,s,1"), b"100 result=0 Trying...\n200 result=0 Gosub complete\n"),
    (("WAIT FOR DIGIT", 5000), b"HANGUP\n200 result=-1\n"),
    (("STREAM FILE", "bye", ""), b"511 Command Not Permitted on a dead channel\n"),
    (("SET VARIABLE", "IVR_RESULT", "done"), b"200 result=1\n"),
]


def run_transcript(chunks: list[bytes]) -> list[object]:
    """Play Asterisk's side in `chunks` (env + replies), sending commands when idle."""
    conn = AgiConnection()
    got: list[object] = []
    commands = iter(TRANSCRIPT_COMMANDS)
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            got.append(event)
            if isinstance(event, EnvironmentReceived | ReplyReceived):
                nxt = next(commands, None)
                if nxt is not None:
                    verb, *args = nxt[0]
                    conn.send_command(verb, *args)
    conn.receive_eof()
    got += events(conn)
    return got


TRANSCRIPT = ENV_BLOCK + b"".join(reply for _, reply in TRANSCRIPT_COMMANDS)


def test_transcript_in_one_piece() -> None:
    got = run_transcript([TRANSCRIPT])
    kinds = [type(e).__name__ for e in got]
    assert kinds == [
        "EnvironmentReceived",
        *["ReplyReceived"] * 4,
        "HangupNoticed",
        *["ReplyReceived"] * 3,
        "ConnectionClosed",
    ]
    replies = [e for e in got if isinstance(e, ReplyReceived)]
    assert [r.command for r in replies] == [
        "ANSWER",
        "STREAM FILE",
        "GET DATA",
        "EXEC",
        "WAIT FOR DIGIT",
        "STREAM FILE",
        "SET VARIABLE",
    ]
    assert [r.result.code for r in replies] == [200, 200, 520, 200, 200, 511, 200]
    assert replies[1].result.digit == "1"
    assert replies[3].result.message == "Gosub complete"
    assert got[-1] == ConnectionClosed(pending=None, before_environment=False)


def test_transcript_split_at_every_byte_boundary() -> None:
    whole = run_transcript([TRANSCRIPT])
    for cut in range(1, len(TRANSCRIPT)):
        assert run_transcript([TRANSCRIPT[:cut], TRANSCRIPT[cut:]]) == whole, cut


def test_transcript_byte_by_byte() -> None:
    whole = run_transcript([TRANSCRIPT])
    assert run_transcript([TRANSCRIPT[i : i + 1] for i in range(len(TRANSCRIPT))]) == whole


def test_hangup_before_the_reply_keeps_replies_in_step() -> None:
    conn = ready_connection()
    conn.send_command("STREAM FILE", "welcome", "")
    conn.receive_data(b"HANGUP\n")
    assert conn.next_event() == HangupNoticed()
    assert conn.hung_up and conn.pending == "STREAM FILE"
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"200 result=-1 endpos=160\n")
    reply = conn.next_event()
    assert isinstance(reply, ReplyReceived) and reply.result.endpos == 160
    # the next command gets its own reply, not the previous one
    conn.send_command("GET VARIABLE", "X")
    conn.receive_data(b"200 result=1 (after)\n")
    reply = conn.next_event()
    assert isinstance(reply, ReplyReceived) and reply.result.data == "after"


def test_hangup_while_idle_and_after_a_reply() -> None:
    conn = ready_connection()
    conn.receive_data(b"HANGUP\n")
    assert conn.next_event() == HangupNoticed()
    conn.send_command("NOOP")
    conn.receive_data(b"200 result=0\nHANGUP\n")
    assert isinstance(conn.next_event(), ReplyReceived)
    assert conn.next_event() == HangupNoticed()
    assert conn.state is ConnectionState.IDLE


def test_one_command_in_flight() -> None:
    conn = ready_connection()
    conn.send_command("ANSWER")
    with pytest.raises(AgiSequenceError, match="ANSWER is still waiting for its reply"):
        conn.send_command("NOOP")
    conn.receive_data(b"200 result=0\n")
    assert isinstance(conn.next_event(), ReplyReceived)
    conn.send_command("NOOP")  # fine now


def test_no_command_before_the_environment_or_after_eof() -> None:
    conn = AgiConnection()
    with pytest.raises(AgiSequenceError, match="before the environment"):
        conn.send_command("ANSWER")
    conn = ready_connection()
    conn.receive_eof()
    with pytest.raises(AgiSequenceError, match="closed"):
        conn.send_command("ANSWER")


def test_bad_arguments_do_not_change_the_state() -> None:
    conn = ready_connection()
    with pytest.raises(AgiArgumentError):
        conn.send_command("SET VARIABLE", "X", "a\nb")
    assert conn.pending is None and conn.state is ConnectionState.IDLE


def test_unsolicited_reply_is_an_error() -> None:
    conn = ready_connection()
    conn.receive_data(b"200 result=0\n")
    with pytest.raises(AgiProtocolError, match="no command is in flight"):
        conn.next_event()


def test_eof_mid_command_reports_the_pending_verb() -> None:
    conn = ready_connection()
    conn.send_command("STREAM FILE", "welcome", "")
    conn.receive_eof()
    assert conn.next_event() == ConnectionClosed(pending="STREAM FILE")


def test_eof_inside_usage_text_is_an_error() -> None:
    conn = ready_connection()
    conn.send_command("GET DATA", "x")
    conn.receive_data(USAGE_REPLY[:-25])
    conn.receive_eof()
    with pytest.raises(AgiProtocolError, match="inside a 520 usage text"):
        events(conn)


def test_endless_usage_text_is_cut_off() -> None:
    conn = AgiConnection(max_usage_lines=10)
    conn.receive_data(ENV_BLOCK)
    events(conn)
    conn.send_command("GET DATA", "x")
    conn.receive_data(b"520-Invalid command syntax.  Proper usage follows:\n" + b"blah\n" * 20)
    with pytest.raises(AgiProtocolError, match="longer than 10 lines"):
        events(conn)


def test_oversized_reply_line() -> None:
    conn = AgiConnection(max_line=1000)
    conn.receive_data(ENV_BLOCK)
    events(conn)
    conn.send_command("GET VARIABLE", "BIG")
    conn.receive_data(b"200 result=1 (" + b"x" * 2000 + b")\n")
    with pytest.raises(AgiProtocolError, match="line longer than 1000 bytes"):
        conn.next_event()


def test_end_with_failure() -> None:
    conn = ready_connection()
    conn.send_command("NOOP")
    with pytest.raises(AgiSequenceError, match="awaiting a reply"):
        conn.end_with_failure()
    conn.receive_data(b"200 result=0\n")
    assert isinstance(conn.next_event(), ReplyReceived)
    assert conn.end_with_failure() == b"FAILURE\n"
    assert conn.state is ConnectionState.ENDED
    with pytest.raises(AgiSequenceError, match="ended with FAILURE"):
        conn.send_command("NOOP")
    # what Asterisk does next: HANGUP (end of run_agi), then it closes
    conn.receive_data(b"HANGUP\n")
    assert conn.next_event() == HangupNoticed()
    conn.receive_eof()
    assert conn.next_event() == ConnectionClosed()
    with pytest.raises(AgiSequenceError):
        AgiConnection().end_with_failure()  # not before the environment
