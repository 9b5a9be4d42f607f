"""`ivr-engine stats` against a real Mosquitto: the daemon's statistics extension publishing
through the real MQTT notifier (a router with a fake PBX: no calls need to reach Asterisk to
produce figures), the command run as an admin runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from acd.roster import Roster
from acd.router import Router
from ivr_engine.acd_stats import acd_stats_extension
from ivr_engine.config import MqttSettings, Settings, StoreSettings
from ivr_engine.events import MqttNotifier
from tests.support.daemon import REPO
from tests.support.mqtt_broker import PrivateBroker

pytestmark = [pytest.mark.mqtt]

ROSTER = """
queues:
  vip: {wrapup: 0}
  general: {wrapup: 0}
agents:
  "1001": {skills: {private_banking: 8}}
  "1002": {skills: {mandarin: 8}}
"""


class Pbx:
    async def redirect(self, channel: str, context: str, exten: str, priority: int = 1) -> None:
        await asyncio.sleep(0)

    async def set_variable(self, channel: str, name: str, value: str) -> None:
        return None

    async def hangup(self, channel: str, cause: int = 16) -> None:
        return None


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    b = PrivateBroker(tmp_path)
    b.start()
    yield b
    b.stop()


#: `python -m ivr_engine.cli`, with Ctrl-C working as in a terminal. A process started in the
#: background by a shell without job control (`make test &` in a script) has SIGINT ignored,
#: and its children inherit that: the command would then rightly ignore our Ctrl-C too.
CTRL_C_LIVE = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'ivr-engine'; runpy.run_module('ivr_engine.cli', run_name='__main__')"
)


async def run(port: int, *args: str, stop_after: float | None = None) -> tuple[int, str, str]:
    """`ivr-engine stats ARGS` against the broker on `port`; Ctrl-C after `stop_after` s."""
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-c", CTRL_C_LIVE, "stats", *args],
        cwd=REPO,
        # faulthandler: a command that hangs is made to print where (SIGABRT below)
        env={**os.environ, "IVR_ENGINE_MQTT_PORT": str(port), "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if stop_after is not None:
        await asyncio.sleep(stop_after)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
    communicate = asyncio.ensure_future(proc.communicate())
    done, _ = await asyncio.wait({communicate}, timeout=60)
    if not done:
        # Never leave it running (its pipes would be reported as leaked in a later test):
        # make it dump every thread's stack, then fail with what it printed.
        proc.send_signal(signal.SIGABRT)
        try:
            out, err = await asyncio.wait_for(communicate, 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            err = b"(no stack: it did not end on SIGABRT either, and was killed)"
        raise AssertionError(f"`ivr-engine stats {' '.join(args)}` did not end within 60 s "
                             f"(SIGINT after {stop_after} s): {err.decode()[-4000:]}")
    out, err = communicate.result()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_stats_once_live_and_without_figures(broker: Any, tmp_path: Path) -> None:
    code, _, err = await run(broker.port, "--once", "--timeout", "1")
    assert code == 2 and "no ACD statistics" in err  # nothing published yet

    notifier = MqttNotifier(MqttSettings(port=broker.port), client_id="stats-cli-test")
    await notifier.start()
    router = Router(Roster.parse(ROSTER), Pbx(), notifier, ring_timeout=5)
    settings = Settings(store=StoreSettings(path=str(tmp_path / "none.sqlite3")))
    service: Any = SimpleNamespace(router=router, publisher=notifier, settings=settings)
    try:
        async with router, acd_stats_extension(service, interval=0.2):
            router.contact_changed("1002", True)
            router.register("c1", queue="vip", requirement="private_banking", priority=5,
                            language="cmn", screen_pop={})
            router.call_waiting("c1", "PJSIP/trunk-1")  # nobody with the skill: it waits
            await asyncio.sleep(1.0)

            code, out, err = await run(broker.port, "--once", "--json")
            assert code == 0, err
            body = json.loads(out)
            assert set(body) == {"vip", "general", "_all"}
            assert body["vip"]["waiting"] == 1 and body["vip"]["today"]["offered"] == 1
            assert body["vip"]["agents"]["logged-out"] == 1  # 1001, the one who could serve
            assert body["_all"]["agents"]["ready"] == 1

            code, out, err = await run(broker.port, "--once")
            assert code == 0, err
            vip = next(line for line in out.splitlines() if line.startswith("vip "))
            assert vip.split()[:2] == ["vip", "1"] and "STALE" not in out

            # Live: a table per refresh until Ctrl-C.
            code, out, err = await run(broker.port, stop_after=3.0)
            assert code == 130, err
            tables = out.count("queue ")
            assert tables >= 2, out
    finally:
        await notifier.close()
    # The daemon is gone; the broker keeps the last figures, and the command says they are old.
    await asyncio.sleep(6.0)
    code, out, _ = await run(broker.port, "--once")
    assert code == 0 and "STALE" in out
