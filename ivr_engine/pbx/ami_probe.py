"""A tiny blocking AMI client for the dev PBX tooling: log in, wait for FullyBooted, log off.

The engine's real AMI client is asyncio (ivr_engine.transport.ami); this one serves the
synchronous `ivr-engine pbx up` command and the test fixture, which only need to know that
Asterisk is fully booted and that the engine's credentials work.

`AmiFramer` is sans-I/O: bytes in, messages out.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from ivr_engine.errors import DevPbxError

MAX_MESSAGE = 256 * 1024


class AmiProbeError(DevPbxError):
    """The dev PBX's AMI did not answer as expected."""


@dataclass(frozen=True)
class AmiMessage:
    headers: tuple[tuple[str, str], ...]

    def get(self, key: str, default: str | None = None) -> str | None:
        low = key.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return default


class AmiFramer:
    """Split an AMI byte stream into its banner line and `\\r\\n\\r\\n`-terminated messages."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.banner: str | None = None

    def feed(self, data: bytes) -> list[AmiMessage]:
        self._buf += data
        out: list[AmiMessage] = []
        if self.banner is None:
            end = self._buf.find(b"\r\n")
            if end < 0:
                if len(self._buf) > 1024:
                    raise AmiProbeError("AMI banner longer than 1 KiB: not an Asterisk manager")
                return out
            self.banner = self._buf[:end].decode("utf-8", "replace")
            del self._buf[: end + 2]
            if not self.banner.startswith("Asterisk Call Manager/"):
                raise AmiProbeError(f"not an Asterisk manager banner: {self.banner!r}")
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_MESSAGE:
                    raise AmiProbeError("AMI message larger than 256 KiB")
                return out
            block = self._buf[:end].decode("utf-8", "replace")
            del self._buf[: end + 4]
            headers: list[tuple[str, str]] = []
            for line in block.split("\r\n"):
                key, sep, value = line.partition(":")
                if sep:
                    headers.append((key.strip(), value.strip()))
            if headers:
                out.append(AmiMessage(tuple(headers)))


def encode_action(name: str, **fields: str) -> bytes:
    """One AMI action. Values with CR or LF are refused: they would inject headers."""
    lines = [f"Action: {name}"]
    for key, value in fields.items():
        if "\r" in value or "\n" in value:
            raise AmiProbeError(f"AMI header {key} contains a line break")
        lines.append(f"{key}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


@dataclass(frozen=True)
class BootInfo:
    banner: str
    uptime: str | None


def wait_fully_booted(
    host: str, port: int, username: str, secret: str, *, timeout: float
) -> BootInfo:
    """Connect (retrying until `timeout`), log in, and wait for the FullyBooted event.

    FullyBooted is sent to a session whose user reads the `system` class, right after login
    when Asterisk is already booted, or later when boot completes (Asterisk 22 manager.c).
    """
    deadline = time.monotonic() + timeout
    sock = _connect(host, port, deadline)
    try:
        framer = AmiFramer()
        sock.sendall(
            encode_action(
                "Login", ActionID="probe-login", Username=username, Secret=secret, Events="system"
            )
        )
        logged_in = False
        while True:
            for msg in _read(sock, framer, deadline, host, port):
                if msg.get("ActionID") == "probe-login":
                    if msg.get("Response") != "Success":
                        raise AmiProbeError(
                            f"AMI at {host}:{port} refused user {username!r}: "
                            f"{msg.get('Message', 'no reason given')}"
                        )
                    logged_in = True
                elif logged_in and msg.get("Event") == "FullyBooted":
                    try:
                        sock.sendall(encode_action("Logoff", ActionID="probe-logoff"))
                    except OSError:
                        pass  # we are leaving anyway
                    return BootInfo(banner=framer.banner or "", uptime=msg.get("Uptime"))
    finally:
        sock.close()


def _connect(host: str, port: int, deadline: float) -> socket.socket:
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            return socket.create_connection(
                (host, port), timeout=max(0.1, deadline - time.monotonic())
            )
        except OSError as exc:  # not listening yet
            last = exc
            time.sleep(0.1)
    raise AmiProbeError(f"AMI at {host}:{port} did not accept a connection in time ({last})")


def _read(
    sock: socket.socket, framer: AmiFramer, deadline: float, host: str, port: int
) -> list[AmiMessage]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise AmiProbeError(f"AMI at {host}:{port}: no FullyBooted in time")
    sock.settimeout(remaining)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        raise AmiProbeError(f"AMI at {host}:{port}: no FullyBooted in time") from None
    except OSError as exc:
        raise AmiProbeError(f"AMI at {host}:{port}: {exc}") from None
    if not data:
        raise AmiProbeError(f"AMI at {host}:{port} closed the connection")
    return framer.feed(data)
