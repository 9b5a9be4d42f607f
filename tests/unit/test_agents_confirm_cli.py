"""`ivr-engine agents confirm`: one request on agent/<id>/confirm, the caller's outcome back."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from tests.support.mqtt_broker import PrivateBroker

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.mqtt


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    b = PrivateBroker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


async def answer_one(port: int, reply: dict[str, object]) -> dict[str, object]:
    """Play the daemon: take one request, answer it on the result topic with its id."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="fake-daemon") as client:
        await client.subscribe("ivr/agent/+/confirm", qos=1)
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            request: dict[str, object] = json.loads(message.payload)
            agent = str(message.topic).split("/")[2]
            await client.publish(
                f"ivr/agent/{agent}/confirm/result",
                json.dumps({"id": "someone-else", "ok": True, "outcome": "confirmed"}),
                qos=1,
            )
            await client.publish(
                f"ivr/agent/{agent}/confirm/result",
                json.dumps({"id": request["id"], **reply}),
                qos=1,
            )
            return request
    raise AssertionError("no request")


async def run_cli(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IVR_ENGINE_MQTT_PORT": str(port), "IVR_ENGINE_MQTT_TOPIC_PREFIX": "ivr"}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ivr_engine.cli", "agents", "confirm", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("reply", "code", "shown"),
    [
        ({"ok": True, "outcome": "confirmed", "account": "****1234"}, 0, "confirmed"),
        ({"ok": True, "outcome": "cancelled", "reason": "silence"}, 1, "cancelled (silence)"),
        ({"ok": False, "error": "agent 1001 is not talking to call c1"}, 1, "not talking"),
    ],
)
async def test_confirm_waits_for_its_own_outcome(
    broker: PrivateBroker, reply: dict[str, object], code: int, shown: str
) -> None:
    daemon = asyncio.create_task(answer_one(broker.port, reply))
    await asyncio.sleep(0.5)  # subscribed before the request goes out
    proc = await run_cli(broker.port, "1001", "c1", "transfer", "5000.00", "6222021234")
    request = await daemon
    assert proc.returncode == code, proc.stderr
    assert shown in proc.stdout + proc.stderr
    assert request["call_id"] == "c1" and request["operation"] == "transfer"
    assert request["amount"] == "5000.00"
    assert "6222021234" not in proc.stdout + proc.stderr  # masked to the last 4 when printed


async def test_no_daemon_is_exit_2(broker: PrivateBroker) -> None:
    proc = await run_cli(
        broker.port, "1001", "c1", "wealth_purchase", "10", "1234", "--timeout", "1"
    )
    assert proc.returncode == 2 and "no outcome from the daemon" in proc.stderr
