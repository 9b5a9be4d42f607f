"""Live statistics and the queue-log report on the real PBX (issue 6): the real daemon with its
ACD, real SIP callers and an agent phone (pjsua2), a private Mosquitto, the real SQLite file.

What the test does, as Chen (VIP, straight to the vip queue):
1. no agent logged in: a caller waits (the retained `acd/stats/vip` topic, read with
   `ivr-engine stats --once --json` as an admin would, says 1 waiting), then hangs up: abandoned;
2. agent 1001's phone registers; a second caller: the phone rings and is not answered (ring
   timeout: RINGNOANSWER), the call is offered again and answered, the caller ends the talk;
3. a third caller: answered, the agent ends the talk.
Then `ivr-engine report --json` must count exactly that (3 offered, 2 answered, 1 abandoned,
1 ring-no-answer) and its times must agree with what the test measured on its side.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ivr_engine.queue_log import QueueLog
from simulate.sip import SimCall, SipStack
from tests.support.daemon import REPO, Daemon, run_cli
from tests.support.mqtt_broker import PrivateBroker

pytestmark = [pytest.mark.pbx, pytest.mark.sip, pytest.mark.mqtt, pytest.mark.slow]

CHEN = "13926000001"
ROSTER = """
queues:
  vip: {wrapup: 1}
agents:
  "1001": {skills: {private_banking: 8, cantonese: 7}}
"""
TALK = 2.0


@pytest.fixture(scope="module")
def prompts_built() -> None:
    run_cli("prompts", "build")


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    b = PrivateBroker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def daemon(dev_pbx, hotline, prompts_built, broker, tmp_path):
    roster = tmp_path / "agents.yaml"
    roster.write_text(ROSTER)
    d = Daemon(
        tmp_path,
        extra_env={"IVR_ACD_ROSTER": str(roster), "IVR_ENGINE_MQTT_PORT": str(broker.port)},
    )
    d.seed(customers=0)
    d.start()
    yield d
    code = d.stop()
    assert code == 0, d.output()


def cli(stack: SipStack, daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """`ivr-engine ARGS` with the daemon's settings, the SIP stack pumped meanwhile."""
    with subprocess.Popen(
        [sys.executable, "-m", "ivr_engine.cli", *args],
        cwd=REPO,
        env=daemon.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        deadline = time.monotonic() + 60
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
            stack.pump(0.1)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stats(stack: SipStack, daemon: Daemon) -> dict[str, Any]:
    out = cli(stack, daemon, "stats", "--once", "--json", "--timeout", "5")
    assert out.returncode == 0, (out.stdout, out.stderr, daemon.logs()[-3000:])
    body: dict[str, Any] = json.loads(out.stdout)
    return body


def wait_stats(stack: SipStack, daemon: Daemon, check: Any, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        body = stats(stack, daemon)
        if "vip" in body and check(body["vip"]):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"stats never showed {what}: {body}\n{daemon.logs()[-3000:]}")
        stack.pump(0.5)


def agent_state(stack: SipStack, daemon: Daemon) -> str:
    out = cli(stack, daemon, "agents", "list", "--json", "--timeout", "10")
    assert out.returncode == 0, (out.stdout, out.stderr)
    return next(str(a["state"]) for a in json.loads(out.stdout) if a["agent"] == "1001")


def scenario(sip_port: int, daemon: Daemon) -> dict[str, Any]:
    """Runs in a worker thread; only plain values leave it (a pjsua2 object that outlives its
    stack aborts the process when the next stack starts)."""
    seen: dict[str, Any] = {"rings": []}
    with SipStack() as stack:
        calls(stack, sip_port, daemon, seen)
    return seen


def calls(stack: SipStack, sip_port: int, daemon: Daemon, seen: dict[str, Any]) -> None:
    target = f"sip:4008@127.0.0.1:{sip_port}"
    # 1. Nobody to answer: the caller waits, the stats say so, the caller gives up.
    first = stack.caller(CHEN).call(target)
    stack.wait_for(lambda: first.is_connected, 30, "the first caller to be answered by IVR")
    waiting = wait_stats(stack, daemon, lambda q: q["waiting"] == 1, "1 waiting")
    stack.pump(1.5)
    longer = stats(stack, daemon)["vip"]
    first.end()
    stack.pump(0.5)
    after = wait_stats(
        stack,
        daemon,
        lambda q: q["waiting"] == 0 and q["today"]["abandoned"] == 1,
        "the abandon",
    )
    seen.update(waiting=waiting, longer=longer, after_abandon=after)

    # 2. The agent's phone: the first offer rings out unanswered, the second is taken.
    def on_incoming(call: SimCall) -> None:
        seen["rings"].append(time.time())
        phone.auto_answer_after = None if len(seen["rings"]) == 1 else 0.3

    phone = stack.agent(
        "1001",
        "agent-1001-dev",
        registrar=f"sip:127.0.0.1:{sip_port}",
        auto_answer_after=0.3,
        on_incoming=on_incoming,
    )
    phone.wait_registered(10)
    deadline = time.monotonic() + 20
    while agent_state(stack, daemon) != "ready":
        assert time.monotonic() < deadline, "agent 1001 never became ready"
        stack.pump(0.3)
    talks: list[tuple[float, float, float]] = []  # placed, connected-to-agent, ended
    second = stack.caller(CHEN).call(target)
    placed = time.time()
    stack.wait_for(lambda: len(phone.incoming) >= 2, 60, "the second offer to 1001")
    agent_leg = phone.incoming[1]
    stack.wait_for(lambda: agent_leg.is_connected, 10, "1001 to answer")
    connected = time.time()
    stack.pump(TALK)
    second.end()  # the caller ends the conversation
    stack.wait_for(lambda: agent_leg.is_ended, 10, "the agent's leg to end")
    talks.append((placed, connected, time.time()))
    seen["second_rings"] = list(seen["rings"])

    # 3. A third caller, answered at once; the agent ends this one.
    stack.pump(2.0)  # wrap-up (1 s)
    third = stack.caller(CHEN).call(target)
    placed = time.time()
    stack.wait_for(lambda: len(phone.incoming) >= 3, 60, "the third offer to 1001")
    agent_leg = phone.incoming[2]
    stack.wait_for(lambda: agent_leg.is_connected, 10, "1001 to answer the third")
    connected = time.time()
    stack.pump(TALK)
    agent_leg.end()
    stack.wait_for(lambda: third.is_ended, 10, "the third caller's leg to end")
    talks.append((placed, connected, time.time()))
    stack.pump(1.0)
    seen["talks"] = talks
    seen["final"] = wait_stats(
        stack, daemon, lambda q: q["today"]["completed"] == 2, "two completed calls"
    )
    phone.unregister()
    stack.pump(0.5)
    for call in (first, second, third):
        call.end()


def figures_after(daemon: Daemon, at: float) -> dict[str, Any]:
    """The vip figures of `stats --once` once they were computed after `at`."""
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(
            [sys.executable, "-m", "ivr_engine.cli", "stats", "--once", "--json"],
            cwd=REPO,
            env=daemon.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        vip: dict[str, Any] = json.loads(out.stdout)["vip"] if out.returncode == 0 else {}
        if vip.get("at", 0) > at:
            return vip
        assert time.monotonic() < deadline, (out.stdout, out.stderr, daemon.logs()[-3000:])
        time.sleep(1.0)


async def test_report_counts_what_the_callers_and_the_agent_did(dev_pbx, daemon, broker):
    seen = await asyncio.to_thread(scenario, dev_pbx.sip_port, daemon)

    # The retained live figures while the first caller waited, and after it gave up.
    vip = seen["waiting"]["vip"]
    assert vip["waiting"] == 1 and vip["ringing"] == 0 and vip["today"]["offered"] == 1
    assert vip["agents"] is not None and vip["agents"]["ready"] == 0
    assert seen["waiting"]["_all"]["waiting"] == 1
    assert seen["longer"]["longest_wait"] >= vip["longest_wait"] + 1.0  # it grows as they wait
    gone = seen["after_abandon"]["vip"]["today"]
    assert (gone["abandoned"], gone["answered"], gone["abandon_rate"]) == (1, 0, 1.0)
    final = seen["final"]["vip"]
    assert final["waiting"] == 0 and final["today"]["answered"] == 2
    assert final["agents"]["on-call"] == 0

    out = daemon.cli("report", "--json")
    body = json.loads(out.stdout)
    q, total = body["queues"]["vip"], body["all"]
    counts = ("offered", "answered", "abandoned", "overflowed", "completed")
    assert [q[k] for k in counts] == [3, 2, 1, 0, 2], body
    assert [total[k] for k in counts] == [3, 2, 1, 0, 2], body
    assert q["abandon_rate"] == pytest.approx(1 / 3, abs=1e-4)
    agent = body["agents"]["1001"]
    assert (agent["offered"], agent["answered"], agent["ring_no_answer"]) == (3, 2, 1), agent
    assert agent["completed"] == 2

    # Times: each talk is what the test held (the legs' teardown adds a little), and the
    # ASA lies between what the callers waited after the agent's first ring and after dialling.
    (p2, c2, e2), (p3, c3, e3) = seen["talks"]
    measured_talk = (e2 - c2) + (e3 - c3)
    assert agent["talk_time"] == pytest.approx(measured_talk, abs=1.5), (agent, seen["talks"])
    assert q["aht"] == pytest.approx(measured_talk / 2, abs=0.75)
    rings = seen["rings"]
    low = [c2 - rings[0], c3 - rings[2]]  # queued before the first ring
    high = [c2 - p2, c3 - p3]  # and after the call was placed (the IVR comes first)
    assert sum(low) / 2 - 0.5 <= q["asa"] <= sum(high) / 2 + 0.5, (q, low, high)
    assert low[0] >= 10.0  # the unanswered ring lasted its ring timeout
    in_sl = q["answered_in_sl"]
    assert sum(h <= 20 for h in high) <= in_sl <= sum(lo <= 20 for lo in low), (q, low, high)
    assert q["service_level"] == pytest.approx(in_sl / 3, abs=1e-4)
    print(
        f"report vip: ASA {q['asa']}s (measured {low} .. {high}), AHT {q['aht']}s "
        f"(measured {measured_talk / 2:.2f}s), SL {q['service_level']}"
    )

    # A restart does not reset the day: the figures are read back from the queue log.
    assert daemon.stop() == 0, daemon.output()
    stopped = time.time()  # figures computed after this are the new daemon's
    daemon.start()
    restarted = await asyncio.to_thread(figures_after, daemon, stopped)
    day = restarted["today"]
    assert [day[k] for k in counts] == [3, 2, 1, 0, 2], restarted
    assert day["asa"] == q["asa"] and restarted["waiting"] == 0

    # The log itself: Asterisk's verbs, in order, per call.
    async with await QueueLog.open(daemon.db, readonly=True) as log:
        rows = await log.rows()
    by_call: dict[str, list[str]] = {}
    for row in rows:
        if row["callid"]:
            by_call.setdefault(row["callid"], []).append(row["event"])
    assert sorted(by_call.values(), key=len) == [
        ["ENTERQUEUE", "ABANDON"],
        ["ENTERQUEUE", "RINGING", "CONNECT", "COMPLETEAGENT"],
        ["ENTERQUEUE", "RINGING", "RINGNOANSWER", "RINGING", "CONNECT", "COMPLETECALLER"],
    ], (
        by_call,
        "the third call was ended by the agent: COMPLETEAGENT (without Dial's g option in "
        "[acd-connect] the caller's channel is hung up with the agent's and it reads as the "
        "caller's hangup)",
    )
    agent_rows = [(r["event"], r["agent"]) for r in rows if not r["callid"]]
    assert ("AGENTLOGIN", "1001") in agent_rows
