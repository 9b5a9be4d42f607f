"""Fault: the daemon starts before the PBX (AMI refused), or the PBX refuses its login.

The daemon serves FastAGI at once and keeps trying AMI with backoff in its owned task
"ami-connect"; when a manager appears it logs in, and from then on `AmiClient` keeps the
connection up. A refused login at start-up stops the daemon (see test_cli_errors.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from pathlib import Path

from ivr_engine.app import Engine
from ivr_engine.config import Settings
from ivr_engine.errors import AmiLoginError

REPO = Path(__file__).resolve().parents[2]


class FakeManager:
    """Just enough of Asterisk's AMI: the banner, Login (accepted or refused), Ping."""

    def __init__(self, port: int, *, accept: bool = True) -> None:
        self.port = port
        self.accept = accept
        self.logins = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Asterisk Call Manager/9.0.0\r\n")
        try:
            while True:
                async with asyncio.timeout(30):
                    block = await reader.readuntil(b"\r\n\r\n")
                fields = dict(
                    line.split(": ", 1) for line in block.decode().split("\r\n") if ": " in line
                )
                action = fields.get("Action", "").lower()
                aid = fields.get("ActionID", "")
                if action == "login":
                    self.logins += 1
                    if self.accept:
                        reply = "Response: Success\r\nMessage: Authentication accepted\r\n"
                    else:
                        reply = "Response: Error\r\nMessage: Authentication failed\r\n"
                elif action == "ping":
                    reply = "Response: Success\r\nPing: Pong\r\n"
                else:
                    reply = "Response: Success\r\n"
                writer.write(f"{reply}ActionID: {aid}\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings(tmp_path: Path, ami_port: int) -> Settings:
    s = Settings()
    return dataclasses.replace(
        s,
        agi=dataclasses.replace(s.agi, port=0),
        ami=dataclasses.replace(s.ami, port=ami_port, ping_interval=1.0),
        mqtt=dataclasses.replace(s.mqtt, enabled=False),
        store=dataclasses.replace(
            s.store, path=str(tmp_path / "ivr.sqlite3"), audit_path=str(tmp_path / "a.sqlite3")
        ),
        flows=dataclasses.replace(s.flows, deploy_dir=str(tmp_path / "deployed")),
    )


async def test_pbx_that_comes_later_is_connected_in_the_background(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ivr_engine.app")
    port = free_port()
    engine = Engine(settings(tmp_path, port), base_dir=REPO)
    run = asyncio.create_task(engine.run(), name="engine")
    manager = FakeManager(port)
    try:
        async with asyncio.timeout(20):
            await engine.ready.wait()  # serving calls although AMI is not there
        assert engine.ami is not None and not engine.ami.connected
        connected = asyncio.Event()
        engine.ami.subscribe("AmiConnected", lambda event: connected.set())
        await asyncio.sleep(1.0)
        await manager.start()
        async with asyncio.timeout(30):
            await connected.wait()
        assert engine.ami.connected and manager.logins == 1
        # The background task is done; AmiClient's supervisor owns the connection now.
        assert engine._ami_task is not None and engine._ami_task.done()
    finally:
        engine.stop()
        async with asyncio.timeout(30):
            await run
        await manager.close()
    text = caplog.text
    assert "AMI not connected yet" in text and "AMI connected after" in text


async def test_refused_login_at_start_up_raises(tmp_path):
    port = free_port()
    manager = FakeManager(port, accept=False)
    await manager.start()
    engine = Engine(settings(tmp_path, port), base_dir=REPO)
    try:
        async with asyncio.timeout(20):
            try:
                await engine.run()
            except AmiLoginError as exc:
                assert "ami.secret" in str(exc)
            else:
                raise AssertionError("a refused login did not stop start-up")
    finally:
        await manager.close()
    assert not engine.ready.is_set() and engine.server is None
