"""The load test's SIPp phones when messages cross (simulate/sipp/caller_queue.xml and
agent_uas.xml, as simulate/acdload.py generates them).

In a load run a caller sometimes hangs up at the moment the agent does, so the PBX's BYE
crosses the caller's BYE; or the PBX cancels a ringing agent (the caller hung up, the ring
timed out) just as the phone answers or declines. SIPp aborts a call on a message its
scenario does not expect, and an aborted call logs no end: the soak then counts it as lost
("never ended"), or its agent as still busy (a double offer). Here the far end is a second
SIPp, scripted to make those messages cross every time, on 127.0.0.1 inside the dev PBX's
root (where SIPp is installed); Asterisk plays no part.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import pytest

from ivr_engine.pbx import DevPbx
from simulate import acdload as al

pytestmark = [pytest.mark.pbx, pytest.mark.sip]

SDP = """\
      v=0
      o=far 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio 30010 RTP/AVP 8
      a=rtpmap:8 PCMA/8000"""

#: Receive the other side's BYE, keeping what the reply to it needs (REPLY_TO_SAVED), so that
#: the far end can send its own BYE and get the answer to it before it replies: from the
#: other side's view the BYEs cross (its BYE is answered only after the far end's arrived).
RECV_BYE_SAVED = """
  <recv request="BYE">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Via:" check_it="true" assign_to="bye_via" />
      <ereg regexp=".*" search_in="hdr" header="From:" check_it="true" assign_to="bye_from" />
      <ereg regexp=".*" search_in="hdr" header="To:" check_it="true" assign_to="bye_to" />
      <ereg regexp=".*" search_in="hdr" header="CSeq:" check_it="true" assign_to="bye_cseq" />
    </action>
  </recv>"""

REPLY_TO_SAVED = """\
      Via:[$bye_via]
      From:[$bye_from]
      To:[$bye_to]
      Call-ID: [call_id]
      CSeq:[$bye_cseq]
      Content-Length: 0"""


def pbx_answering_caller(reply: str) -> str:
    """A PBX that answers the caller, and when the caller's BYE comes, sends its own BYE
    and replies `reply` to the caller's only after its own was answered: the BYEs cross."""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="PBX whose BYE crosses the caller's">
  <recv request="INVITE" crlf="true">
    <action>
      <ereg regexp=".*" search_in="hdr" header="From:" check_it="true" assign_to="caller" />
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=far[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:4008@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

{SDP}
    ]]>
  </send>
  <recv request="ACK" />{RECV_BYE_SAVED}
  <send>
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:4008@[local_ip]:[local_port]>;tag=far[call_number]
      To:[$caller]
      Call-ID: [call_id]
      CSeq: 1 BYE
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200" />
  <send>
    <![CDATA[
      SIP/2.0 {reply}
{REPLY_TO_SAVED}
    ]]>
  </send>
</scenario>
"""


def _invite(agent: str) -> str:
    return f"""
  <send retrans="500">
    <![CDATA[
      INVITE sip:{agent}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-inv[call_number]
      From: <sip:caller@[local_ip]:[local_port]>;tag=far[call_number]
      To: <sip:{agent}@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:pbx@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

{SDP}
    ]]>
  </send>
  <recv response="100" optional="true" />
  <recv response="180" optional="true" />"""


def _in_dialog(method: str, cseq: str, agent: str, branch: str = "[branch]") -> str:
    return f"""
  <send>
    <![CDATA[
      {method} sip:{agent}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}
      From: <sip:caller@[local_ip]:[local_port]>;tag=far[call_number]
      To: <sip:{agent}@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq}
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>"""


def pbx_calling_agent(case: str, agent: str = "2000") -> str:
    """A PBX that calls an agent's phone and makes a message cross the phone's own:
    `bye` its BYE crosses the agent's hang-up; `cancel-200` / `cancel-480` it cancels just as
    the phone answers / declines (the CANCEL arrives before the PBX's ACK)."""
    if case == "bye":
        body = f"""
  <recv response="200" />
{_in_dialog("ACK", "1 ACK", agent)}
{RECV_BYE_SAVED}
{_in_dialog("BYE", "2 BYE", agent)}
  <recv response="200" />
  <send>
    <![CDATA[
      SIP/2.0 200 OK
{REPLY_TO_SAVED}
    ]]>
  </send>"""
    elif case == "cancel-200":
        body = f"""
  <recv response="200" />
{_in_dialog("CANCEL", "1 CANCEL", agent, "z9hG4bK-inv[call_number]")}
  <recv response="200" />
{_in_dialog("ACK", "1 ACK", agent)}
{_in_dialog("BYE", "2 BYE", agent)}
  <recv response="200" />"""
    else:
        body = f"""
  <recv response="480" />
{_in_dialog("CANCEL", "1 CANCEL", agent, "z9hG4bK-inv[call_number]")}
  <recv response="200" />
{_in_dialog("ACK", "1 ACK", agent, "z9hG4bK-inv[call_number]")}"""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="PBX crossing the agent's phone: {case}">{_invite(agent)}{body}
</scenario>
"""


def _run_pair(pbx: DevPbx, server_xml: str, client_xml: str, client_args: list[str],
              files: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """Run `server_xml` as a SIPp UAS and `client_xml` against it (one call; `{inside}` in
    `client_args` is the run's folder inside the root); return the call logs of both
    ("client.log", "server.log") and the failures seen (exit codes, aborted calls)."""
    inside = f"/tmp/ivr-crossing-{uuid.uuid4().hex[:8]}"
    host = pbx.in_root(inside)
    host.mkdir(parents=True)
    (host / "server.xml").write_text(server_xml, encoding="ascii")
    (host / "client.xml").write_text(client_xml, encoding="ascii")
    for name, text in (files or {}).items():
        (host / name).write_text(text, encoding="ascii")
    port = al.free_udp_port()
    common = ["-i", "127.0.0.1", "-mi", "127.0.0.1", "-m", "1", "-nostdin", "-timeout", "20s",
              "-timeout_error", "-trace_logs", "-trace_err"]
    server = subprocess.Popen(pbx.sipp_cmd(
        "-sf", f"{inside}/server.xml", "-p", str(port), *common,
        "-log_file", f"{inside}/server.log", "-error_file", f"{inside}/server-errors.log"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.3)
        client = subprocess.run(pbx.sipp_cmd(
            "-sf", f"{inside}/client.xml", "-p", str(al.free_udp_port()), *common,
            "-log_file", f"{inside}/client.log", "-error_file", f"{inside}/client-errors.log",
            *(a.format(inside=inside) for a in client_args), f"127.0.0.1:{port}"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            timeout=40, check=False)
        server_err = server.communicate(timeout=30)[1]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    logs = {p.name: p.read_text(errors="replace") for p in host.glob("*.log")}
    shutil.rmtree(host, ignore_errors=True)
    failures = []
    for who, code, err in (("client", client.returncode, client.stderr),
                           ("server", server.returncode, server_err)):
        errors = logs.get(f"{who}-errors.log", "")
        if code != 0:
            failures.append(f"{who} exit {code}: {err.decode(errors='replace')[-500:]}")
        if "abort" in errors.lower():
            failures.append(f"{who}: {errors[-800:]}")
    return logs, failures


@pytest.mark.parametrize(("reply", "hangup", "end"), [
    ("200 OK", 1.0, "caller-bye"),
    ("481 Call/Transaction Does Not Exist", 1.0, "caller-bye"),
    ("200 OK", 0.0, "gave-up"),  # a patient caller reaching the maximum wait
])
def test_caller_logs_its_hang_up_when_the_pbx_bye_crosses_it(dev_pbx: DevPbx, reply: str,
                                                             hangup: float, end: str) -> None:
    plan = al.CallerPlan(rate=1, duration=1, hangup=hangup, patience=(0.3, 0.3), branches=1,
                         max_wait=0.6)
    number = "01990000001"
    logs, failures = _run_pair(
        dev_pbx, pbx_answering_caller(reply), al.caller_xml(plan),
        ["-inf", "{inside}/callers.csv"], {"callers.csv": f"SEQUENTIAL\n{number}\n"})
    client_log = logs.get("client.log", "")
    assert failures == [], (failures, client_log)
    calls = al.parse_caller_log(client_log, time.time())
    assert list(calls) == [number], client_log
    call = calls[number]
    assert call.answered is not None and call.ended is not None and call.end == end


@pytest.mark.parametrize(("case", "ends"), [
    ("bye", ["invited", "answered", "agent-bye"]),
    ("cancel-200", ["invited", "answered", "caller-bye"]),
    ("cancel-480", ["invited", "declined"]),
])
def test_agent_phone_logs_every_call_end_when_messages_cross(dev_pbx: DevPbx, case: str,
                                                             ends: list[str]) -> None:
    plan = al.AgentPlan(count=1, ring=(0.2, 0.2), talk=(0.5, 0.5) if case == "bye" else (5, 5),
                        no_answer=1.0 if case == "cancel-480" else 0.0, branches=1)
    logs, failures = _run_pair(dev_pbx, al.agent_xml(plan), pbx_calling_agent(case), [])
    server_log = logs.get("server.log", "")
    assert failures == [], (failures, server_log)
    events = al.parse_agent_log(server_log, time.time())
    assert [e.event for e in events] == ends, server_log
    assert {e.agent for e in events} == {"2000"}
    # the phone is free again: a next offer to it would not look like a double offer
    assert al.phone_double_offers([*events, al.PhoneEvent(0, "2000", "invited", "next")]) == []
