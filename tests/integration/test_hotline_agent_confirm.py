"""Agent-sent confirmation (issue 4) on the real PBX: a pjsua2 caller (Zhao, group tier,
Guangzhou: Cantonese; 0 for a person, so he hears the survey invitation) reaches agent 1001 (a
pjsua2 phone) through the daemon's ACD; the agent sends a
transfer of 5,000.00 to an account ending 1234 over MQTT; the caller hears the read-back in
Cantonese and presses 1 (or nothing, or hangs up); the result comes back on MQTT and the two
talk again (audio both ways: each side plays a burst of speech every 1.4 s and the other side
must hear it). The audit chain holds the operation with its outcome and verifies.

Also here: the request's validation (pure), and the post-call survey after the agent hangs up
([ivr-survey] in asterisk-conf/extensions-confirm.conf).
"""

from __future__ import annotations

import json
import threading
import time
import wave
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from ivr_engine.agent_confirm import AgentConfirmations, RequestError, parse_request
from ivr_engine.protocol.ami import AmiResponse, Fields
from simulate.sip import SimCall, SipStack
from tests.support.daemon import REPO, Daemon, run_cli
from tests.support.mqtt_broker import PrivateBroker

ZHAO = "13500000004"
ACCOUNT = "6222020000001234"
ROSTER = """
queues:
  corporate: {wrapup: 1}
agents:
  "1001": {skills: {corporate: 8, cantonese: 7}}
"""


# ------------------------------------------------------------------ the request (pure)


def test_request_is_validated_and_the_account_masked() -> None:
    body = {
        "id": "r-1",
        "call_id": "1764000000.42",
        "operation": "transfer",
        "amount": "5000",
        "account": ACCOUNT,
    }
    request = parse_request("1001", body)
    assert request.account_last4 == "1234" and str(request.amount) == "5000.00"
    assert ACCOUNT not in repr(request) and ACCOUNT not in json.dumps(request.public())
    assert request.public()["account"] == "****1234"
    for change, error in (
        ({"operation": "withdraw"}, "operation must be one of"),
        ({"amount": "-5"}, "amount must be positive"),
        ({"amount": "1.234"}, "more than 2 decimals"),
        ({"amount": True}, "amount must be a number"),
        ({"account": "12ab"}, "account must be"),
        ({"id": ""}, "id must be"),
        ({"pin": "123456"}, "unknown field"),
    ):
        with pytest.raises(RequestError, match=error) as info:
            parse_request("1001", {**body, **change})
        assert ACCOUNT not in str(info.value) and "123456" not in str(info.value)
    with pytest.raises(RequestError, match="missing field"):
        parse_request("1001", {k: v for k, v in body.items() if k != "amount"})
    with pytest.raises(RequestError, match="agent id"):
        parse_request("10/01", body)


class FakeAmi:
    """Records actions; answers Getvar BRIDGEPEER with the agent's channel."""

    def __init__(self, peer: str = "PJSIP/1001-0000002a") -> None:
        self.peer = peer
        self.actions: list[dict[str, str]] = []
        self.subscribed: list[str] = []

    def subscribe(self, name: str, callback: Any) -> Any:
        self.subscribed.append(name)
        return lambda: None

    async def action(self, action: dict[str, str], **_: Any) -> AmiResponse:
        self.actions.append(dict(action))
        fields = Fields([("Value", self.peer)] if action["Action"] == "Getvar" else [])
        return AmiResponse(action["Action"], "1", "Success", "", fields)


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def publish(self, topic: str, payload: Any, *, retain: bool = False) -> None:
        self.sent.append((topic, dict(payload)))


def fake_service(peer: str = "PJSIP/1001-0000002a") -> tuple[Any, FakeAmi, FakePublisher]:
    call = SimpleNamespace(
        state="connected",
        agent="1001",
        channel="PJSIP/trunk-00000010",
        language="yue",
        screen_pop={"customer": "1001"},
    )
    roster = SimpleNamespace(agents={"1001": SimpleNamespace(endpoint="PJSIP/1001")})
    router = SimpleNamespace(calls={"c-1": call}, roster=roster)
    ami, publisher = FakeAmi(peer), FakePublisher()
    service = SimpleNamespace(router=router, publisher=publisher, mqtt=None, bridge=None)
    return service, ami, publisher


async def test_request_redirects_both_channels_and_the_outcome_goes_to_the_agent() -> None:
    service, ami, publisher = fake_service()
    confirm = AgentConfirmations(service, ami=ami)  # type: ignore[arg-type]
    body = {
        "id": "r-1",
        "call_id": "c-1",
        "operation": "transfer",
        "amount": "5000",
        "account": ACCOUNT,
    }
    await confirm.handle_message("ivr/agent/1001/confirm", json.dumps(body).encode())
    redirect = ami.actions[-1]
    assert redirect["Action"] == "Redirect" and redirect["Channel"] == "PJSIP/trunk-00000010"
    assert redirect["Context"] == "agent-confirm"
    assert redirect["ExtraChannel"] == "PJSIP/1001-0000002a"
    assert redirect["ExtraContext"] == "agent-confirm-hold"
    setvars = {a["Variable"]: a["Value"] for a in ami.actions if a["Action"] == "Setvar"}
    assert setvars["IVR_CONFIRM_ACCOUNT"] == "1234" and setvars["IVR_CONFIRM_AMOUNT"] == "5000.00"
    assert ACCOUNT not in json.dumps(ami.actions)
    pending = confirm.pending["c-1"]
    assert pending.customer_id == "1001" and pending.language == "yue"
    # a second request while the caller is confirming is refused, the first one stands
    await confirm.handle_message(
        "ivr/agent/1001/confirm", json.dumps({**body, "id": "r-2"}).encode()
    )
    assert publisher.sent[-1] == (
        "agent/1001/confirm/result",
        {"id": "r-2", "ok": False, "error": "call c-1 is already confirming an operation"},
    )
    confirm.finish("c-1", "confirmed", request_id="r-1")
    confirm.finish("c-1", "cancelled", "caller-hung-up")  # the Hangup after: ignored
    results = [p for t, p in publisher.sent if t == "agent/1001/confirm/result" and p["ok"]]
    assert [(r["id"], r["outcome"], r["account"]) for r in results] == [
        ("r-1", "confirmed", "****1234")
    ]
    assert ACCOUNT not in json.dumps(publisher.sent)


async def test_request_for_another_agents_call_or_an_unbridged_call_is_refused() -> None:
    service, ami, publisher = fake_service()
    confirm = AgentConfirmations(service, ami=ami)  # type: ignore[arg-type]
    body = {
        "id": "r-1",
        "call_id": "c-1",
        "operation": "transfer",
        "amount": "10",
        "account": "1234",
    }
    await confirm.handle_message("ivr/agent/1002/confirm", json.dumps(body).encode())
    assert publisher.sent[-1][1]["error"] == "agent 1002 is not talking to call c-1"
    await confirm.handle_message("ivr/agent/1001/confirm", b"{not json")
    assert len(publisher.sent) == 1  # no usable id: nowhere to answer, logged
    service, ami, publisher = fake_service(peer="PJSIP/1007-00000001")  # on another phone
    confirm = AgentConfirmations(service, ami=ami)  # type: ignore[arg-type]
    await confirm.handle_message("ivr/agent/1001/confirm", json.dumps(body).encode())
    assert "not bridged to agent 1001" in publisher.sent[-1][1]["error"]
    assert not confirm.pending and all(a["Action"] != "Redirect" for a in ami.actions)


# ------------------------------------------------------------------ on the PBX


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


class Capture:
    """Every message under ivr/agent/# (paho's own thread), and a publisher."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[float, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="confirm-test")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise AssertionError("test MQTT client did not connect")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe("ivr/agent/#", qos=1)
        self._ready.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append((time.time(), message.topic, json.loads(message.payload)))

    def of(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [p for _, topic, p in self.messages if topic.endswith(suffix)]

    def publish(self, topic: str, body: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(body), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def bursts(path: Path, count: int = 150) -> Path:
    """A short spoken word, then 0.8 s of silence, `count` times (about 3.5 minutes)."""
    with wave.open(str(REPO / "prompts" / "sounds" / "en" / "greeting_name-1.wav")) as w:
        word = w.readframes(w.getnframes())
        rate = w.getframerate()
    silence = b"\0\0" * int(rate * 0.8)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((word + silence) * count)
    return path


def agents_ready(daemon: Daemon, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        out = daemon.cli("agents", "list", "--json", "--timeout", "10")
        states = {a["agent"]: a["state"] for a in json.loads(out.stdout)}
        if states.get("1001") == "ready":
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"agent 1001 never ready: {states}\n{daemon.logs()[-3000:]}")
        time.sleep(0.3)


def speech_after(call: SimCall, at: float) -> list[tuple[float, float]]:
    return [s for s in call.speech().segments if s[0] >= at]


def confirm_call(
    sip_port: int, capture: Capture, daemon: Daemon, tmp_path: Path, answer: str
) -> dict[str, Any]:
    """Zhao reaches agent 1001, who sends the transfer; the caller answers with `answer`
    ("1", "" = nothing, "h" = hangs up). Returns what both sides saw (plain values)."""
    out: dict[str, Any] = {}
    agent_wav = bursts(tmp_path / "agent.wav")
    caller_wav = bursts(tmp_path / "caller.wav")
    with SipStack() as stack:
        phone = stack.agent(
            "1001",
            "agent-1001-dev",
            registrar=f"sip:127.0.0.1:{sip_port}",
            auto_answer_after=0.3,
            play_file=str(agent_wav),
        )
        phone.wait_registered(10)
        stack.pump(0.5)
        agents_ready(daemon)
        call = stack.caller(ZHAO).call(f"sip:4008@127.0.0.1:{sip_port}")
        call.wait_connected(15)
        stack.pump(2.0)
        call.send_dtmf("0")  # a person, over the greeting
        try:
            stack.wait_for(
                lambda: bool(phone.incoming) and phone.incoming[0].is_connected,
                90,
                "agent 1001 to answer Zhao",
            )
            agent_call = phone.incoming[0]
            call.play(caller_wav)  # the caller talks too, from now on
            stack.wait_for(lambda: bool(capture.of("agent/1001/screenpop")), 10, "screen pop")
            call_id = capture.of("agent/1001/screenpop")[0]["call_id"]
            out["call_id"] = call_id
            stack.pump(3.0)  # a conversation
            out["talk_before"] = (
                len(speech_after(call, call.heard_seconds() - 2.5)),
                len(speech_after(agent_call, agent_call.heard_seconds() - 2.5)),
            )
            sent_caller, sent_agent = call.heard_seconds(), agent_call.heard_seconds()
            capture.publish(
                "ivr/agent/1001/confirm",
                {
                    "id": "req-1",
                    "call_id": call_id,
                    "operation": "transfer",
                    "amount": "5000.00",
                    "account": ACCOUNT,
                },
            )
            # the read-back, then the confirm node's 8 s wait (the agent's bursts have 0.8 s
            # gaps: 1.5 s of silence is the IVR waiting for a key)
            out["readback_end"] = call.wait_prompt_end(silence=1.5, timeout=60, after=sent_caller)
            out["readback_speech"] = round(
                sum(
                    min(e, out["readback_end"]) - max(s, sent_caller)
                    for s, e in call.speech().segments
                    if e > sent_caller
                ),
                2,
            )
            if answer == "h":
                call.end()
                stack.wait_for(
                    lambda: bool(capture.of("agent/1001/confirm/result")), 20, "the result"
                )
                stack.wait_for(lambda: agent_call.is_ended, 20, "the agent's line to end")
                out["agent_ended_remotely"] = not agent_call.ended_locally
                out["agent_heard_on_hold"] = speech_after(agent_call, sent_agent)
                # released by the router after the 1 s wrap-up, while the phone is still
                # registered (unregistering at the end logs the agent out)
                agents_ready(daemon, timeout=30)
                out["agent_ready_after"] = True
                return out
            if answer:
                call.send_dtmf(answer)
            stack.wait_for(
                lambda: bool(capture.of("agent/1001/confirm/result")), 30, "the result on MQTT"
            )
            back_caller, back_agent = call.heard_seconds(), agent_call.heard_seconds()
            out["agent_heard_on_hold"] = [
                s for s in agent_call.speech().segments if sent_agent <= s[0] < back_agent
            ]
            stack.pump(6.0)
            out["connected_after"] = call.is_connected and agent_call.is_connected
            # audio both ways again (after the cancelled prompt, if any)
            out["caller_hears_agent"] = len(speech_after(call, back_caller + 3.0))
            out["agent_hears_caller"] = len(speech_after(agent_call, back_agent + 1.0))
            # the agent ends the call: the caller goes to the survey and gives 4
            hung = call.heard_seconds()
            agent_call.end()
            out["survey_prompt_end"] = call.wait_prompt_end(silence=1.5, timeout=40, after=hung)
            call.send_dtmf("4")
            stack.wait_for(lambda: call.is_ended, 40, "the survey to end the call")
            out["caller_ended_remotely"] = not call.ended_locally
        finally:
            call.end()
            stack.pump(0.5)
            phone.unregister()
            stack.pump(0.5)
    return out


def audit_entries(daemon: Daemon) -> list[dict[str, Any]]:
    listed = daemon.cli("audit", "list", "--json", "--limit", "50")
    return list(json.loads(listed.stdout))


@pytest.mark.pbx
@pytest.mark.sip
@pytest.mark.mqtt
@pytest.mark.slow
@pytest.mark.parametrize(("answer", "outcome"), [("1", "confirmed"), ("", "cancelled")])
def test_agent_sends_a_transfer_caller_confirms_and_is_back_with_the_agent(
    dev_pbx, daemon, broker, tmp_path, answer: str, outcome: str
) -> None:
    capture = Capture(broker.port)
    try:
        seen = confirm_call(dev_pbx.sip_port, capture, daemon, tmp_path, answer)
        time.sleep(1.0)
        results = capture.of("agent/1001/confirm/result")
        states = capture.of("agent/1001/state")
    finally:
        capture.close()
    logs = daemon.logs()
    print(f"agent confirm ({outcome}): {json.dumps(seen, default=str)}")
    # the conversation before: each heard the other
    assert seen["talk_before"][0] >= 1 and seen["talk_before"][1] >= 1, seen
    # the caller heard the read-back (several seconds of Cantonese speech)
    assert seen["readback_speech"] >= 3.0, seen
    assert len(results) == 1, results
    result = results[0]
    assert result["ok"] is True and result["outcome"] == outcome, result
    assert result["id"] == "req-1" and result["call_id"] == seen["call_id"]
    assert result["account"] == "****1234" and result["amount"] == "5000.00"
    assert any(s.get("event") == "ConfirmStarted" for s in states), states
    # the agent waited on a quiet line ("one moment please" at most), not hearing the IVR
    assert len(seen["agent_heard_on_hold"]) <= 2, seen
    # back together, audio both ways
    assert seen["connected_after"], seen
    assert seen["caller_hears_agent"] >= 2 and seen["agent_hears_caller"] >= 2, seen
    # the agent hung up: the caller had the survey, answered 4, and the PBX ended the call
    assert seen["caller_ended_remotely"], seen
    # audit: the operation with its outcome, by the agent; the chain verifies
    verify = daemon.cli("audit", "verify")
    assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout
    entries = audit_entries(daemon)
    mine = [e for e in entries if e.get("call_id") == seen["call_id"]]
    expected = "confirmed" if outcome == "confirmed" else "cancelled:silence"
    assert [(e["operation"], e["outcome"]) for e in mine] == [("transfer", expected)], entries
    assert mine[0]["details"]["target"] == "****1234" and mine[0]["details"]["by"] == "agent"
    # records: the hotline call keeps its record; the confirmation and the survey have theirs
    records = {r["id"]: r for r in json.loads(daemon.cli("calls", "list", "--json").stdout)}
    call_id = seen["call_id"]
    assert records[call_id]["flow"]["name"] == "hotline", records.keys()
    assert records[f"{call_id}+agent_confirm"]["customer_id"] is not None
    survey = records[f"{call_id}+survey"]
    assert {"kind": "survey", "score": 4}.items() <= next(
        e for e in survey["events"] if e["kind"] == "survey"
    ).items(), survey
    # the account number never appears in the daemon's log or on MQTT
    assert ACCOUNT not in logs and ACCOUNT not in json.dumps(results + states)


@pytest.mark.pbx
@pytest.mark.sip
@pytest.mark.mqtt
@pytest.mark.slow
def test_caller_hanging_up_while_confirming_cancels_and_releases_the_agent(
    dev_pbx, daemon, broker, tmp_path
) -> None:
    capture = Capture(broker.port)
    try:
        seen = confirm_call(dev_pbx.sip_port, capture, daemon, tmp_path, "h")
        time.sleep(1.0)
        results = capture.of("agent/1001/confirm/result")
    finally:
        capture.close()
    print(f"agent confirm (caller hung up): {json.dumps(seen, default=str)}")
    assert [(r["outcome"], r.get("reason")) for r in results] == [
        ("cancelled", "caller-hung-up")
    ], results
    assert seen["agent_ended_remotely"], seen  # the PBX said goodbye to the agent
    assert seen["agent_ready_after"], seen
    entries = [e for e in audit_entries(daemon) if e.get("call_id") == seen["call_id"]]
    assert [(e["operation"], e["outcome"]) for e in entries] == [
        ("transfer", "cancelled:hangup")
    ], entries
    assert daemon.cli("audit", "verify").returncode == 0
