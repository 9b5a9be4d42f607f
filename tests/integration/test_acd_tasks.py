"""Non-voice tasks end to end (issue 6, "every channel in one queue"): the real daemon
(`ivr-engine serve` with IVR_ACD_ROSTER="", the repository's asterisk-conf/agents.yaml) and a
private Mosquitto. Submissions, agent logins and listings go through the CLI as a developer
would type them; the agent desktop is an MQTT client on `<prefix>/agent/<id>/task`.

The daemon's AMI points at a closed port: chat tasks need no PBX, and a second ACD on the
shared dev PBX's AMI would take other engineers' waiting callers for unknown calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.support.daemon import Daemon
from tests.support.mqtt_broker import PrivateBroker, free_port

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    b = PrivateBroker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def daemon(broker: PrivateBroker, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(
        tmp_path,
        extra_env={
            "IVR_ACD_ROSTER": "",
            "IVR_ENGINE_MQTT_PORT": str(broker.port),
            "IVR_ENGINE_AMI_PORT": str(free_port()),  # nothing listens: no PBX
            "IVR_ENGINE_AGI_PORT": str(free_port()),
        },
    )
    d.start()
    try:
        yield d
    finally:
        assert d.stop() == 0, d.output()


@dataclass
class Desk:
    """What arrived on the broker, with arrival times; `wait` blocks until a match."""

    client: aiomqtt.Client
    seen: list[tuple[float, str, dict[str, Any], int]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, topic: str) -> list[dict[str, Any]]:
        return [p for _, t, p, _ in self.seen if t == topic]

    async def wait(
        self, topic: str, match: Callable[[dict[str, Any]], bool], within: float = 10.0
    ) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                for _, t, p, _ in self.seen:
                    if t == topic and match(p):
                        return p
                self.arrived.clear()
                await self.arrived.wait()

    async def reply(self, agent: str, task_id: str, action: str) -> None:
        body = json.dumps({"task_id": task_id, "action": action})
        await self.client.publish(f"ivr/agent/{agent}/task/reply", body, qos=1)


@contextlib.asynccontextmanager
async def desk(port: int) -> AsyncIterator[Desk]:
    async with aiomqtt.Client("127.0.0.1", port, identifier="tasks-desk") as client:
        await client.subscribe("ivr/agent/#", qos=1)
        await client.subscribe("ivr/acd/task/#", qos=1)
        d = Desk(client)

        async def read() -> None:
            async for m in client.messages:
                if isinstance(m.payload, bytes):
                    d.seen.append((time.monotonic(), str(m.topic), json.loads(m.payload), m.qos))
                    d.arrived.set()

        reader = asyncio.create_task(read(), name="desk-reader")
        try:
            yield d
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def cli(daemon: Daemon, *args: str, ok: bool = True) -> Any:
    """`ivr-engine ARGS --json` in a thread (the desk keeps reading meanwhile)."""
    import subprocess
    import sys

    from tests.support.daemon import REPO

    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ivr_engine.cli", *args, "--json"],
        cwd=REPO,
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (proc.returncode == 0) is ok, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def offered(task_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda p: p["event"] == "TaskOffered" and p["task_id"] == task_id


def chat(task_id: str, *extra: str) -> tuple[str, ...]:
    return (
        "tasks",
        "submit",
        "--id",
        task_id,
        "--channel",
        "chat",
        "--queue",
        "general",
        "--skills",
        "cards",
        "--number",
        "13800138000",
        "--name",
        "Wang",
        "--body",
        "my card 6222021234567890 was declined",
        *extra,
    )


async def agent_state(daemon: Daemon, agent: str) -> str:
    agents = await cli(daemon, "agents", "list")
    return str(next(a["state"] for a in agents if a["agent"] == agent))


async def test_chat_tasks_reach_the_chat_agent_with_capacity_three_and_wrap_up(
    daemon: Daemon, broker: PrivateBroker
) -> None:
    async with desk(broker.port) as d:
        await cli(daemon, "agents", "login", "1007")  # cards 6 but voice only
        await cli(daemon, "agents", "login", "1008")  # cards 5, chat 3

        # A bad submission: its reason back, nothing queued.
        refused = await cli(
            daemon,
            *("tasks", "submit", "--id", "bad-1", "--channel", "chat", "--queue", "nosuch"),
            *("--skills", "cards", "--body", "x"),
            ok=False,
        )
        assert refused["ok"] is False and refused["error"].startswith("unknown queue 'nosuch'")
        refused = await cli(daemon, *chat("bad-2", "--priority", "99"), ok=False)
        assert refused["error"].startswith("priority must be an integer 0..10")
        assert (await cli(daemon, "tasks", "list"))["tasks"] == []

        answer = await cli(daemon, *chat("chat-1"))
        assert answer["ok"] and answer["task"]["state"] == "offered"
        assert answer["task"]["agent"] == "1008"
        pop = await d.wait("ivr/agent/1008/task", offered("chat-1"))
        assert pop["task"]["customer"] == {"number": "*******8000", "name": "Wang"}
        assert pop["task"]["body"] == "my card ************7890 was declined"
        assert pop["accept_within"] == 15
        assert {q for _, t, _, q in d.seen if t == "ivr/agent/1008/task"} == {1}
        await d.reply("1008", "chat-1", "accept")
        await d.wait("ivr/agent/1008/task", lambda p: p["event"] == "TaskAccepted")
        assert await agent_state(daemon, "1008") == "on-call"

        # Two more fill 1008's three chat slots; the fourth waits for a free one.
        for task_id in ("chat-2", "chat-3"):
            await cli(daemon, *chat(task_id))
            await d.wait("ivr/agent/1008/task", offered(task_id))
            await d.reply("1008", task_id, "accept")
            await d.wait("ivr/acd/task/status/" + task_id, lambda p: p["event"] == "TaskAccepted")
        answer = await cli(daemon, *chat("chat-4"))
        assert answer["task"]["state"] == "waiting"
        await asyncio.sleep(1.0)
        assert not [p for p in d.of("ivr/agent/1008/task") if p["task_id"] == "chat-4"]
        listed = {t["id"]: t["state"] for t in (await cli(daemon, "tasks", "list"))["tasks"]}
        assert listed == {
            "chat-1": "working",
            "chat-2": "working",
            "chat-3": "working",
            "chat-4": "waiting",
        }

        # A duplicate id is refused and does not disturb the original.
        dup = await cli(daemon, *chat("chat-2"), ok=False)
        assert dup["error"].startswith("duplicate id chat-2")

        await d.reply("1008", "chat-1", "done")
        await d.wait("ivr/agent/1008/task", offered("chat-4"))  # the freed slot
        for task_id in ("chat-4",):
            await d.reply("1008", task_id, "accept")
            await d.wait("ivr/acd/task/status/" + task_id, lambda p: p["event"] == "TaskAccepted")
        for task_id in ("chat-2", "chat-3", "chat-4"):
            await d.reply("1008", task_id, "done")
            await d.wait("ivr/acd/task/status/" + task_id, lambda p: p["event"] == "TaskDone")
        # After the last task: wrap-up (the roster's default 5 s), then ready.
        assert await agent_state(daemon, "1008") == "wrap-up"
        deadline = time.monotonic() + 15
        while await agent_state(daemon, "1008") != "ready":
            assert time.monotonic() < deadline, "1008 never left wrap-up"
            await asyncio.sleep(0.5)
        assert (await cli(daemon, "tasks", "list"))["tasks"] == []

    # The voice-only agent was never offered a chat; nothing published a whole number.
    assert d.of("ivr/agent/1007/task") == []
    published = json.dumps([p for _, t, p, _ in d.seen if t != "ivr/acd/task/submit"])
    assert "13800138000" not in published and "6222021234567890" not in published
    assert [p["event"] for p in d.of("ivr/acd/task/status/chat-1")] == [
        "TaskQueued",
        "TaskOffered",
        "TaskAccepted",
        "TaskDone",
    ]
    assert "6222021234567890" not in daemon.logs()


async def test_an_offer_not_accepted_is_requeued_and_a_cancel_withdraws_it(
    daemon: Daemon, broker: PrivateBroker
) -> None:
    async with desk(broker.port) as d:
        await cli(daemon, "agents", "login", "1008")
        await cli(daemon, *chat("slow-1"))
        first = await d.wait("ivr/agent/1008/task", offered("slow-1"))
        # Nobody answers: at the ring timeout (15 s) the offer expires and the task is offered
        # again (the only chat agent); the router's guard would only act 10 s later.
        expired = await d.wait(
            "ivr/agent/1008/task", lambda p: p["event"] == "TaskOfferExpired", within=25
        )
        again = await d.wait(
            "ivr/agent/1008/task", lambda p: offered("slow-1")(p) and p["offer"] == 2
        )
        times = {id(p): at for at, _, p, _ in d.seen}
        assert 14.0 <= times[id(expired)] - times[id(first)] <= 18.0
        assert times[id(again)] >= times[id(expired)]
        await d.reply("1008", "slow-1", "reject")
        # Two misses in a row (expired, declined) pause the agent, as a phone left ringing
        # twice does; resumed, 1008 gets the task again.
        await d.wait("ivr/acd/task/status/slow-1", lambda p: p.get("reason") == "declined")
        assert await agent_state(daemon, "1008") == "paused"
        await cli(daemon, "agents", "resume", "1008")
        await d.wait("ivr/agent/1008/task", lambda p: offered("slow-1")(p) and p["offer"] == 3)
        cancelled = await cli(daemon, "tasks", "cancel", "slow-1", "--reason", "solved")
        assert cancelled["task"]["state"] == "cancelled"
        await d.wait("ivr/agent/1008/task", lambda p: p["event"] == "TaskCancelled")
        gone = await cli(daemon, "tasks", "cancel", "slow-1", ok=False)
        assert gone["error"] == "no task slow-1 is with the ACD (unknown, done or cancelled)"
        assert (await cli(daemon, "tasks", "list"))["tasks"] == []
    requeued = [p for p in d.of("ivr/acd/task/status/slow-1") if p["event"] == "TaskRequeued"]
    assert [p["reason"] for p in requeued] == ["timeout", "declined"]


async def test_tasks_outlive_a_sigkilled_daemon(daemon: Daemon, broker: PrivateBroker) -> None:
    """Killed with one chat being worked and one offered: the new daemon queues the offered
    one again (to the agent once logged in again) and leaves the worked one with its agent."""
    kept_file = daemon.db.with_name(f"{daemon.db.stem}.tasks.json")
    async with desk(broker.port) as d:
        await cli(daemon, "agents", "login", "1008")  # cards 5, chat 3
        await cli(daemon, *chat("chat-1"))
        await d.wait("ivr/agent/1008/task", offered("chat-1"))
        await d.reply("1008", "chat-1", "accept")
        await d.wait("ivr/acd/task/status/chat-1", lambda p: p["event"] == "TaskAccepted")
        await cli(daemon, *chat("chat-2"))
        await d.wait("ivr/agent/1008/task", offered("chat-2"))  # not accepted before the kill
        kept = json.loads(kept_file.read_text())["tasks"]
        daemon.kill()
        await asyncio.to_thread(daemon.start)
        listed = {t["id"]: t["state"] for t in (await cli(daemon, "tasks", "list"))["tasks"]}
        assert listed == {"chat-2": "waiting"}  # agents logged in by hand come back out
        offers = [p for p in d.of("ivr/agent/1008/task") if p.get("event") == "TaskOffered"]
        await cli(daemon, "agents", "login", "1008")
        await d.wait(
            "ivr/agent/1008/task",
            lambda p: offered("chat-2")(p) and p["offer"] == 1 and p not in offers,
        )
        await d.reply("1008", "chat-2", "accept")
        await d.reply("1008", "chat-2", "done")
        await d.wait("ivr/acd/task/status/chat-2", lambda p: p["event"] == "TaskDone")
        # The chat worked across the restart is the agent's; this daemon never had it.
        await d.reply("1008", "chat-1", "done")
        refused = await d.wait(
            "ivr/agent/1008/task", lambda p: p.get("event") == "TaskReplyRefused"
        )
        assert refused["task_id"] == "chat-1"
        assert json.loads(kept_file.read_text())["tasks"] == {}
    assert {k: (v["state"], v["agent"]) for k, v in kept.items()} == {
        "chat-1": ("working", "1008"),
        "chat-2": ("offered", "1008"),
    }
    assert kept["chat-2"]["task"]["customer"]["number"] == "13800138000"
    assert "6222021234567890" not in kept_file.read_text()  # masked, as agents see it
    logs = daemon.logs()
    assert "1 task(s) from before the restart queued again, 1 left with the agents" in logs
    assert "task chat-1 was being worked by agent 1008 when the daemon stopped" in logs
