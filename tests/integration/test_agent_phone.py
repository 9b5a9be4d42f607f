"""Agents on their phones (issue 6), on the real PBX: feature codes *90-*93 dialled from a
registered pjsua2 phone run flows/agent.yaml in the real daemon (ACD on, private Mosquitto);
a supervisor's phone listens to, whispers to and barges into a real ACD call through
`ivr-engine supervise`; an auto-login agent follows its phone's registration.

Witnesses, as a user would check: `ivr-engine agents list --json` asked of the running daemon,
what the phones heard (voice activity in the received audio), which phones rang, the exit code
and message of `ivr-engine supervise`, and the call records the daemon stored.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulate.sip import AgentPhone, SimCall, SipStack
from tests.support.daemon import REPO, Daemon, run_cli
from tests.support.mqtt_broker import PrivateBroker

pytestmark = [pytest.mark.pbx, pytest.mark.sip, pytest.mark.mqtt, pytest.mark.slow]

CHEN = "13926000001"  # VIP, Cantonese: straight to the vip queue, "cantonese and private_banking"
ROSTER = """
queues:
  vip: {wrapup: 1}
agents:
  "1005": {skills: {cantonese: 9, private_banking: 8, mandarin: 5}, login: manual}
  "1006": {skills: {cantonese: 8, english: 6}}
"""


@pytest.fixture(scope="module")
def prompts_built() -> None:
    run_cli("prompts", "build")


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> str:
    """About 170 s of speech (a built prompt, repeated with pauses): someone talking."""
    d = tmp_path_factory.mktemp("speech")
    src = REPO / "prompts/sounds/en/agent_pause_reason_menu.wav"
    out = d / "talk.wav"
    subprocess.run(
        ["sox", *([str(src)] * 4), str(out), "pad", "0", "0.5", "repeat", "3"],
        check=True,
        capture_output=True,
    )
    return str(out)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
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


def agents_state(daemon: Daemon) -> dict[str, dict[str, Any]]:
    out = daemon.cli("agents", "list", "--json", "--timeout", "10")
    return {a["agent"]: a for a in json.loads(out.stdout)}


def wait_states(
    stack: SipStack, daemon: Daemon, want: dict[str, str], timeout: float = 15.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        states = agents_state(daemon)
        if all(states[a]["state"] == s for a, s in want.items()):
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"agents never reached {want}: {states}\n{daemon.logs()[-3000:]}")
        stack.pump(0.3)


def phone(stack: SipStack, sip_port: int, ext: str, **kw: Any) -> AgentPhone:
    acc = stack.agent(ext, f"agent-{ext}-dev", registrar=f"sip:127.0.0.1:{sip_port}", **kw)
    acc.wait_registered(10)
    return acc


def dial(stack: SipStack, acc: AgentPhone, sip_port: int, number: str) -> SimCall:
    """The agent's phone dials `number` (a feature code, an extension)."""
    import pjsua2 as pj

    call = SimCall(stack, acc)
    stack.calls.append(call)
    call.makeCall(f"sip:{number}@127.0.0.1:{sip_port}", pj.CallOpParam(True))
    return call


def feature(
    stack: SipStack, acc: AgentPhone, sip_port: int, code: str, keys: str = ""
) -> dict[str, Any]:
    """Dial a feature code, key `keys` after the first prompt, hear it out to the daemon's
    hang-up; return what the phone heard."""
    call = dial(stack, acc, sip_port, code)
    call.wait_connected(15)
    if keys:
        call.wait_prompt_end(silence=0.8, timeout=20)
        call.send_dtmf(keys, method="rfc4733")
    call.wait_ended(30)
    speech = call.speech()
    return {
        "speech": speech.count,
        "seconds": sum(e - s for s, e in speech.segments),
        "ended_locally": call.ended_locally,
    }


def test_feature_codes_log_in_pause_resume_log_out(dev_pbx, daemon):
    port = dev_pbx.sip_port
    with SipStack() as stack:
        agent = phone(stack, port, "1005", auto_answer_after=None)
        stranger = phone(stack, port, "1009", auto_answer_after=None)  # a phone, not an agent
        stack.pump(1.0)
        # login: manual, so registering is not logging in
        assert agents_state(daemon)["1005"]["state"] == "logged-out"

        heard = {"*90": feature(stack, agent, port, "*90")}
        states = wait_states(stack, daemon, {"1005": "ready"})
        assert states["1005"]["reason"] is None

        heard["*92"] = feature(stack, agent, port, "*92", keys="2")
        states = wait_states(stack, daemon, {"1005": "paused"})
        assert states["1005"]["reason"] == "lunch"

        heard["*93"] = feature(stack, agent, port, "*93")
        wait_states(stack, daemon, {"1005": "ready"})

        heard["*91"] = feature(stack, agent, port, "*91")
        wait_states(stack, daemon, {"1005": "logged-out"})

        before = agents_state(daemon)
        heard["1009 *90"] = feature(stack, stranger, port, "*90")
        heard["1005 *97"] = feature(stack, agent, port, "*97")
        after = agents_state(daemon)
        agent.unregister()
        stranger.unregister()
        stack.pump(0.5)

    # Every code was answered by voice, and the daemon hung up (not the phone).
    for code, h in heard.items():
        assert h["speech"] >= 1 and h["seconds"] > 0.8, (code, h)
        assert not h["ended_locally"], (code, h)
    # *92 heard the reason menu and then the confirmation
    assert heard["*92"]["speech"] >= 2, heard["*92"]
    # A phone that is not an agent, an unknown code: nothing changed.
    assert {a: s["state"] for a, s in after.items()} == {a: s["state"] for a, s in before.items()}

    # The call records: the flow, the prompts the agent heard, the agent events.
    agent_calls = agent_records(daemon, 6)
    blob = json.dumps(agent_calls, ensure_ascii=False)
    for prompt in (
        "agent_logged_in",
        "agent_pause_reason_menu",
        "agent_paused_lunch",
        "agent_resumed",
        "agent_logged_out",
        "agent_unknown_phone",
        "agent_unknown_code",
    ):
        assert prompt in blob, (prompt, blob[:3000])
    feats = [e for r in agent_calls for e in r.get("events", []) if e["kind"] == "agent-feature"]
    assert [(e["verb"], e["status"]) for e in feats] == [
        ("login", "done"),
        ("pause", "done"),
        ("resume", "done"),
        ("logout", "done"),
    ], feats


def agent_records(daemon: Daemon, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The daemon's call records of the agent flow, once `count` of them are stored."""
    deadline = time.monotonic() + timeout
    while True:
        out = daemon.cli("calls", "list", "--json", "--limit", "100").stdout
        found = [r for r in json.loads(out) if (r.get("flow") or {}).get("name") == "agent"]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) == count, json.dumps(found, ensure_ascii=False)[:3000]
            return sorted(found, key=lambda r: r["started"])
        time.sleep(0.5)


def run_supervise(stack: SipStack, daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """`ivr-engine supervise ...` as an admin runs it, while this thread keeps the phones
    (pjsua2) answering."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ivr_engine.cli", "supervise", *args],
        cwd=REPO,
        env=daemon.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            break
        stack.pump(0.1)
    out, err = proc.communicate(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def originate_directly(stack: SipStack, channel: str, exten: str) -> str:
    """An AMI Originate into [supervise] that does not go through `ivr-engine supervise`
    (the engine's AMI user, as any script with its credentials could), pumping the phones."""
    from concurrent.futures import ThreadPoolExecutor

    from ivr_engine import config
    from ivr_engine.transport.ami import AmiClient

    async def go() -> str:
        async with AmiClient(config.load().ami) as ami:
            action_id = await ami.originate(
                channel=channel, context="supervise", exten=exten, ring_timeout=10
            )
            result = await ami.originate_response(action_id, timeout=20)
            return result.response

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(asyncio.run, go())
        while not future.done():
            stack.pump(0.1)
        return future.result()


def test_supervisor_listens_whispers_barges(dev_pbx, daemon, speech_wav):
    """The agent talks (a long recording). Listen: the supervisor hears the call; whisper and
    barge connect; a phone that is not a supervisor is refused by the command, and by the
    dialplan when it is originated around the command."""
    port = dev_pbx.sip_port
    results: dict[str, Any] = {}
    with SipStack() as stack:
        agent = phone(stack, port, "1005", auto_answer_after=0.3, play_file=speech_wav)
        supervisor = phone(stack, port, "1010", auto_answer_after=0.3)
        other = phone(stack, port, "1008", auto_answer_after=0.3)  # an agent, not a supervisor
        stack.pump(0.5)
        assert daemon.cli("agents", "login", "1005", "--timeout", "10").returncode == 0

        # Not on a call yet: refused, nothing rings.
        results["idle"] = run_supervise(stack, daemon, "listen", "1005", "--from", "1010")
        assert supervisor.incoming == []

        caller = stack.caller(CHEN).call(f"sip:4008@127.0.0.1:{port}")
        stack.wait_for(lambda: bool(agent.incoming), 60, "agent 1005's phone to ring")
        agent_call = agent.incoming[0]
        stack.wait_for(lambda: agent_call.is_connected, 10, "the agent to answer")
        stack.pump(1.0)

        results["stranger"] = run_supervise(stack, daemon, "listen", "1005", "--from", "1008")
        results["other_rang"] = len(other.incoming)
        # Around the command: the dialplan itself refuses a phone that is not a supervisor.
        results["direct"] = originate_directly(stack, "PJSIP/1008", "listen-1005")
        stack.pump(1.0)
        if other.incoming:
            direct = other.incoming[-1]
            stack.wait_for(lambda: direct.is_ended, 10, "the dialplan to hang up on 1008")
            results["direct_heard"] = direct.speech().count
            results["direct_lasted"] = (direct.disconnected_at or 0) - (direct.confirmed_at or 0)

        for mode in ("listen", "whisper", "barge"):
            n = len(supervisor.incoming)
            done = run_supervise(stack, daemon, mode, "1005", "--from", "1010")
            entry: dict[str, Any] = {"cli": done}
            if len(supervisor.incoming) > n:
                spy = supervisor.incoming[-1]
                stack.wait_for(lambda spy=spy: spy.is_connected or spy.is_ended, 10, "spy call")
                stack.pump(5.0)
                entry.update(
                    connected=spy.is_connected,
                    supervisor_heard=spy.speech().count,
                    caller_up=caller.is_connected,
                    agent_up=agent_call.is_connected,
                )
                spy.end()
                stack.wait_for(lambda spy=spy: spy.is_ended, 10, "the spy call to end")
                stack.pump(0.5)
            results[mode] = entry

        caller.end()
        stack.wait_for(lambda: agent_call.is_ended, 10, "the agent's call to end")
        stack.pump(2.0)
        results["after"] = run_supervise(stack, daemon, "listen", "1005", "--from", "1010")
        for acc in (agent, supervisor, other):
            acc.unregister()
        stack.pump(0.5)

    print({k: v for k, v in results.items() if k in ("listen", "whisper", "barge")})
    idle = results["idle"]
    assert idle.returncode == 1, idle
    assert "agent 1005 is not on a call" in idle.stderr
    stranger = results["stranger"]
    assert stranger.returncode == 1, stranger
    assert "1008 is not a supervisor" in stranger.stderr
    assert results["other_rang"] == 0
    # The Originate around the command rang 1008 and the dialplan hung up without a sound.
    assert results.get("direct_heard") == 0 and results["direct_lasted"] < 2.0, results
    for mode in ("listen", "whisper", "barge"):
        entry = results[mode]
        cli = entry["cli"]
        assert cli.returncode == 0, (mode, cli.stdout, cli.stderr)
        assert "supervisor 1010 is " in cli.stdout and "agent 1005" in cli.stdout
        assert entry["connected"] and entry["caller_up"] and entry["agent_up"], (mode, entry)
    # Listen: the supervisor hears the agent talking to the caller.
    assert results["listen"]["supervisor_heard"] >= 1, results["listen"]
    after = results["after"]
    assert after.returncode == 1 and "not on a call" in after.stderr, after


def test_auto_login_follows_the_phone_registration(dev_pbx, daemon):
    """`login: auto` (1006): registered -> ready, unregistered -> logged out, registered
    again -> ready again (AMI ContactStatus through AcdAmiBridge)."""
    port = dev_pbx.sip_port
    with SipStack() as stack:
        acc = phone(stack, port, "1006", auto_answer_after=None)
        up = wait_states(stack, daemon, {"1006": "ready"})
        assert up["1006"]["registered"]
        acc.unregister()
        down = wait_states(stack, daemon, {"1006": "logged-out"})
        assert not down["1006"]["registered"]
        acc.setRegistration(True)
        stack.wait_for(lambda: acc.registered, 10, "the phone to register again")
        again = wait_states(stack, daemon, {"1006": "ready"})
        assert again["1006"]["registered"]
        # A manual agent's phone registering does not log it in.
        assert again["1005"]["state"] == "logged-out"
        acc.unregister()
        wait_states(stack, daemon, {"1006": "logged-out"})
