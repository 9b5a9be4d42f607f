"""The sans-I/O AMI framer used by `pbx up` to wait for FullyBooted, and the probe itself
against a fake manager on loopback."""

from __future__ import annotations

import socket
import threading

import pytest

from ivr_engine.pbx.ami_probe import AmiFramer, AmiProbeError, encode_action, wait_fully_booted

BANNER = b"Asterisk Call Manager/11.0.0\r\n"


def test_banner_then_messages_split_anywhere() -> None:
    stream = (
        BANNER
        + b"Response: Success\r\nActionID: a\r\nMessage: Authentication accepted\r\n\r\n"
        + "Event: FullyBooted\r\nPrivilege: system,all\r\nNote: 你好\r\n\r\n".encode()
    )
    for cut in range(1, len(stream)):
        f = AmiFramer()
        msgs = f.feed(stream[:cut]) + f.feed(stream[cut:])
        assert f.banner == "Asterisk Call Manager/11.0.0"
        assert [m.get("Response") or m.get("Event") for m in msgs] == ["Success", "FullyBooted"]
        assert msgs[1].get("note") == "你好"  # keys are case-insensitive; UTF-8 kept whole


def test_not_a_manager() -> None:
    with pytest.raises(AmiProbeError, match="not an Asterisk manager"):
        AmiFramer().feed(b"SSH-2.0-OpenSSH_9.6\r\n")
    with pytest.raises(AmiProbeError, match="banner longer"):
        AmiFramer().feed(b"x" * 2000)


def test_oversized_message() -> None:
    f = AmiFramer()
    f.feed(BANNER)
    with pytest.raises(AmiProbeError, match="larger than"):
        f.feed(b"Event: x\r\nData: " + b"y" * 300_000)


def test_encode_action_refuses_header_injection() -> None:
    assert encode_action("Login", Username="u") == b"Action: Login\r\nUsername: u\r\n\r\n"
    with pytest.raises(AmiProbeError, match="line break"):
        encode_action("Login", Username="u\r\nAction: Originate")


def _fake_manager(script: list[bytes]) -> tuple[int, threading.Thread]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def run() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            conn.sendall(BANNER)
            conn.settimeout(5)
            conn.recv(4096)  # the Login action
            for chunk in script:
                conn.sendall(chunk)
            conn.settimeout(1)
            try:
                conn.recv(4096)  # Logoff, or nothing
            except TimeoutError:
                pass

    t = threading.Thread(target=run, name="fake-ami", daemon=True)
    t.start()
    return port, t


def test_probe_waits_for_fully_booted() -> None:
    port, t = _fake_manager(
        [
            b"Response: Success\r\nActionID: probe-login\r\n\r\n",
            b"Event: Newchannel\r\n\r\n",
            b"Event: FullyBooted\r\nUptime: 3\r\n\r\n",
        ]
    )
    info = wait_fully_booted("127.0.0.1", port, "u", "s", timeout=5)
    assert info.uptime == "3" and info.banner.startswith("Asterisk Call Manager/")
    t.join(5)


def test_probe_reports_refused_login() -> None:
    port, t = _fake_manager(
        [b"Response: Error\r\nActionID: probe-login\r\nMessage: Authentication failed\r\n\r\n"]
    )
    with pytest.raises(AmiProbeError, match="refused user 'u': Authentication failed"):
        wait_fully_booted("127.0.0.1", port, "u", "s", timeout=5)
    t.join(5)


def test_probe_times_out_without_fully_booted() -> None:
    port, t = _fake_manager([b"Response: Success\r\nActionID: probe-login\r\n\r\n"])
    with pytest.raises(AmiProbeError, match="no FullyBooted in time"):
        wait_fully_booted("127.0.0.1", port, "u", "s", timeout=0.5)
    t.join(5)


def test_probe_nothing_listening() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = s.getsockname()[1]
    try:
        with pytest.raises(AmiProbeError, match="did not accept a connection"):
            wait_fully_booted("127.0.0.1", port, "u", "s", timeout=0.3)
    finally:
        s.close()
