"""The shipped Asterisk configuration, loaded into the real dev PBX.

- every file of asterisk-conf/ and sip-trunk/ loads with no WARNING or ERROR, at boot and on
  `core reload`, and every object it defines is really there;
- the carrier templates (sip-trunk/*.conf.example) load clean too, against a tiny SIP
  responder on loopback that stands in for the carrier;
- Asterisk listens on loopback only;
- a SIPp call to the hotline with the daemon down reaches the dialplan fallback;
- AMI users get no more than manager.conf promises.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr_engine.pbx import DevPbx, problems
from ivr_engine.pbx.ami_probe import AmiFramer, AmiMessage, encode_action
from ivr_engine.pbx.conf import conf_sources, parse_conf
from tests.support.hotline import hotline_lock

pytestmark = pytest.mark.pbx

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "asterisk-conf"
TRUNK = REPO / "sip-trunk"
AGI_PORT = 4573


# --------------------------------------------------------------------------- loading cleanly
def test_boot_logged_no_warning_or_error(dev_pbx: DevPbx) -> None:
    boot = dev_pbx.boot_log_lines()
    # The log really covers the start: the loader's count line is there.
    assert any(re.search(r"loader\.c: \d+ modules will be loaded", line) for line in boot), boot
    assert problems(boot) == []


def test_core_reload_of_every_file_is_clean(dev_pbx: DevPbx) -> None:
    found = dev_pbx.reload()
    assert found == []
    # Our files and nothing else in /etc/asterisk (Debian's samples are gone) ...
    etc = dev_pbx.in_root("/etc/asterisk")
    shipped = conf_sources([CONF, TRUNK])
    assert sorted(p.name for p in etc.iterdir()) == sorted(p.name for p in shipped)
    for src in shipped:
        assert (etc / src.name).read_bytes() == src.read_bytes(), src.name


def test_every_listed_module_is_running(dev_pbx: DevPbx) -> None:
    modules = parse_conf((CONF / "modules.conf").read_text(), path="modules.conf")
    wanted = modules.sections_named("modules")[0].get_all("load")
    assert len(wanted) > 40
    shown = dev_pbx.cli("module show")
    running = {line.split()[0] for line in shown.splitlines() if " Running " in line}
    missing = [m for m in wanted if m not in running]
    assert missing == []
    # ... and autoload=no held: nothing runs that the list does not name (core parts aside).
    loaded_so = {m for m in running if m.endswith(".so")}
    assert loaded_so == set(wanted)


def dialplan_applications() -> set[str]:
    """Every application the shipped dialplan runs: `exten => X,P,App(` and `same => P,App(`."""
    apps: set[str] = set()
    pattern = re.compile(r"^\s*(?:exten\s*=>\s*[^,]+,|same\s*=>\s*)[^,]+,\s*([A-Za-z]\w*)")
    for path in sorted(CONF.glob("extensions*.conf")):
        for line in path.read_text().splitlines():
            found = pattern.match(line.split(";", 1)[0])
            if found:
                apps.add(found.group(1))
    return apps


def test_every_dialplan_application_is_registered(dev_pbx: DevPbx) -> None:
    # With autoload=no, an application whose module modules.conf forgets is only found when a
    # call reaches it ("No application"): the caller or the agent is then stranded.
    apps = dialplan_applications()
    assert {"AGI", "Dial", "ChannelRedirect", "VoiceMail", "MixMonitor"} <= apps, apps
    shown = dev_pbx.cli("core show applications")
    registered = {line.split(":")[0].strip().lower() for line in shown.splitlines() if ":" in line}
    assert sorted(a for a in apps if a.lower() not in registered) == []


def test_every_configured_object_exists(dev_pbx: DevPbx) -> None:
    endpoints = dev_pbx.cli("pjsip show endpoints")
    for name in ["devtrunk", *(str(n) for n in range(1001, 1011))]:
        assert re.search(rf"Endpoint:\s+{name}\b", endpoints), name
    ident = dev_pbx.cli("pjsip show identifies")
    assert "devtrunk" in ident and "127.0.0.1/32" in ident
    assert "transport-udp" in dev_pbx.cli("pjsip show transports")
    for ctx in ("from-trunk", "ivr-next", "operators", "supervise", "ivr-record", "agents"):
        assert f"Context '{ctx}'" in dev_pbx.cli(f"dialplan show {ctx}"), ctx
    assert "AGI(${IVR_AGI_URL}/hotline)" in dev_pbx.cli("dialplan show 4008@from-trunk")
    assert "IVR_AGI_URL=agi://127.0.0.1:4573" in dev_pbx.cli("dialplan show globals")
    queues = dev_pbx.cli("queue show")
    assert "operators has" in queues and "compare-leastrecent has" in queues
    assert "PJSIP/1009" in queues and "PJSIP/1010" in queues
    users = dev_pbx.cli("manager show users")
    assert "ivr-engine" in users and "monitor" in users
    moh = dev_pbx.cli("moh show files")
    assert "ivr-engine-tone.wav" in moh or "/var/lib/asterisk/moh/ivr-engine" in moh
    rtp = dev_pbx.cli("rtp show settings")
    assert re.search(r"Port start:\s+10000", rtp) and re.search(r"Port end:\s+19999", rtp), rtp


def test_up_reloads_a_changed_config_without_restarting(dev_pbx: DevPbx, tmp_path: Path) -> None:
    conf = tmp_path / "asterisk-conf"
    shutil.copytree(CONF, conf)
    ext = conf / "extensions.conf"
    ext.write_text(ext.read_text() + "\n[ivr-engine-reload-probe]\nexten => s,1,NoOp(new)\n")
    # Another checkout's view of the same PBX: same root and state, different config files.
    other = DevPbx(
        root=dev_pbx.root,
        conf_dirs=(conf, TRUNK),
        ami_user=dev_pbx.ami_user,
        ami_secret=dev_pbx.ami_secret,
    )
    pid = dev_pbx.status().pid
    try:
        result = other.up()
        assert (result.action, result.pid, result.problems) == ("reloaded", pid, ())
        assert "ivr-engine-reload-probe" in dev_pbx.cli("dialplan show ivr-engine-reload-probe")
        assert other.up().action == "already-up"
        assert dev_pbx.status().config_in_sync is False  # from the shipped files' view
    finally:
        assert dev_pbx.reload() == []
    assert dev_pbx.status().config_in_sync is True
    assert "Context 'ivr-engine-reload-probe'" not in dev_pbx.cli(
        "dialplan show ivr-engine-reload-probe"
    )


# --------------------------------------------------------------------------- carrier templates
class SipResponder:
    """A loopback SIP 'carrier': answers every request with 200 OK (REGISTER, OPTIONS)."""

    def __init__(self, host: str, port: int = 5060):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.methods: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sip-responder-{host}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            text = data.decode("utf-8", "replace")
            first, _, rest = text.partition("\r\n")
            if first.startswith("SIP/2.0"):
                continue  # a response to something we never sent
            self.methods.append(first.split(" ", 1)[0])
            headers = [
                h
                for h in rest.split("\r\n\r\n", 1)[0].split("\r\n")
                if h.split(":", 1)[0].strip().lower() in {"via", "from", "to", "call-id", "cseq"}
            ]
            headers = [
                h + ";tag=carrier" if h.lower().startswith("to:") and "tag=" not in h else h
                for h in headers
            ]
            extra = ["Expires: 3600"] if first.startswith("REGISTER") else []
            reply = "\r\n".join(["SIP/2.0 200 OK", *headers, *extra, "Content-Length: 0", "", ""])
            self.sock.sendto(reply.encode(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def _loopback_twin(text: str) -> str:
    """The template with the carrier's documentation addresses moved into 127.0.113.0/24."""
    return re.sub(r"\b203\.0\.113\.(\d+)", r"127.0.113.\1", text)


@pytest.fixture
def carrier_templates(dev_pbx: DevPbx) -> Iterator[list[SipResponder]]:
    examples = sorted(TRUNK.glob("*.conf.example"))
    assert len(examples) >= 2
    addrs = sorted(
        set(re.findall(r"\b203\.0\.113\.(\d+)\b(?!/)", "".join(p.read_text() for p in examples)))
    )
    responders = [SipResponder(f"127.0.113.{n}") for n in addrs]
    trunk = dev_pbx.in_root("/etc/asterisk/pjsip_trunk.conf")
    original = trunk.read_bytes()
    try:
        trunk.write_text(
            original.decode() + "".join("\n" + _loopback_twin(p.read_text()) for p in examples)
        )
        yield responders
    finally:
        trunk.write_bytes(original)
        for r in responders:
            r.close()
        # Back to exactly the shipped files, proven clean.
        assert dev_pbx.reload() == []


def test_carrier_templates_load_clean_and_register(
    dev_pbx: DevPbx, carrier_templates: list[SipResponder]
) -> None:
    mark = dev_pbx.mark()
    dev_pbx.cli("module reload res_pjsip.so")
    deadline = time.monotonic() + 15
    registrations = ""
    while time.monotonic() < deadline:
        registrations = dev_pbx.cli("pjsip show registrations")
        if "Registered" in registrations:
            break
        time.sleep(0.3)
    lines = dev_pbx.wait_log_quiet(mark)
    assert problems(lines) == []
    assert re.search(r"carrier-reg/sip:127\.0\.113\.10:5060.*Registered", registrations), (
        registrations
    )
    endpoints = dev_pbx.cli("pjsip show endpoints")
    assert re.search(r"Endpoint:\s+carrier\b", endpoints)
    assert re.search(r"Endpoint:\s+carrier-ip\b", endpoints)
    seen = [m for r in carrier_templates for m in r.methods]
    assert "REGISTER" in seen


# --------------------------------------------------------------------------- loopback only
def _asterisk_sockets(pid: int) -> list[tuple[str, str, int]]:
    out = subprocess.run(
        ["ss", "-H", "-lntup"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    found = []
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        cols = line.split()
        local = cols[4]
        host, _, port = local.rpartition(":")
        found.append((cols[0], host.strip("[]"), int(port)))
    return found


def test_listens_on_loopback_only(dev_pbx: DevPbx) -> None:
    pid = dev_pbx.status().pid
    assert pid is not None
    socks = _asterisk_sockets(pid)
    assert ("tcp", "127.0.0.1", dev_pbx.ami_port) in socks
    assert ("udp", "127.0.0.1", dev_pbx.sip_port) in socks
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for proto, host, port in socks:
        if host == "127.0.0.1":
            continue
        # pjlib's DNS resolver keeps one IPv4 and one IPv6 UDP socket on an ephemeral port to
        # receive replies; with the root's empty resolv.conf it only ever asks 127.0.0.1.
        assert proto == "udp" and port >= low, (proto, host, port)
    assert sum(1 for s in socks if s[1] != "127.0.0.1") <= 2, socks


# --------------------------------------------------------------------------- fallback call
FALLBACK_CALL = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!-- A carrier-style caller (From user = the number) calls [service] and listens until the PBX
     hangs up, then confirms the BYE. -->
<scenario name="hotline fallback call">
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "SIPp caller" <sip:13800138000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:13800138000@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=sipp 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 8 0 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true"/>
  <send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "SIPp caller" <sip:13800138000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv request="BYE" timeout="30000"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
</scenario>
"""


@contextlib.contextmanager
def agi_port_refusing() -> Iterator[None]:
    """Hold 127.0.0.1:4573 bound but not listening: connections are refused (the daemon is
    down), and no daemon of a parallel test run can answer the call instead."""
    with hotline_lock():
        yield from _refusing()


def _refusing() -> Iterator[None]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", AGI_PORT))
    except OSError as exc:
        s.close()
        raise AssertionError(
            f"127.0.0.1:{AGI_PORT} is taken ({exc}): an ivr-engine daemon is running; "
            "this test needs the daemon down"
        ) from None
    try:
        yield
    finally:
        s.close()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cdr_rows(pbx: DevPbx) -> list[str]:
    try:
        return pbx.cdr_path().read_text().splitlines()
    except FileNotFoundError:
        return []


@pytest.mark.sip
@pytest.mark.slow
def test_sipp_call_with_daemon_down_reaches_the_fallback(dev_pbx: DevPbx) -> None:
    scenario = dev_pbx.in_root("/tmp/ivr-engine-fallback-call.xml")
    scenario.write_text(FALLBACK_CALL)
    cdr_before = len(_cdr_rows(dev_pbx))
    mark = dev_pbx.mark()
    argv = dev_pbx.sipp_cmd(
        "-sf", "/tmp/ivr-engine-fallback-call.xml", "-s", "4008",
        "-i", "127.0.0.1", "-p", str(_free_udp_port()), "-mp", str(_free_udp_port()),
        "-m", "1", "-l", "1", "-timeout", "40s", "-timeout_error", "-nostdin",
        f"127.0.0.1:{dev_pbx.sip_port}",
    )  # fmt: skip
    t0 = time.monotonic()
    pid = dev_pbx.status().pid
    assert pid is not None
    seen: set[tuple[str, str, int]] = set()
    with agi_port_refusing():
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            # While the call is up (apology, then "all circuits busy"), watch the sockets.
            while proc.poll() is None and time.monotonic() - t0 < 60:
                seen.update(_asterisk_sockets(pid))
                time.sleep(0.2)
            out, _ = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
    took = time.monotonic() - t0
    assert proc.returncode == 0, out[-3000:]
    # The call's media went through RTP sockets in rtp.conf's range, on loopback only.
    lst = dev_pbx.listeners
    rtp = {s for s in seen if lst.rtp_start <= s[2] <= lst.rtp_end}
    assert rtp and all(host == "127.0.0.1" for _, host, _ in rtp), seen
    lines = dev_pbx.wait_log_quiet(mark)
    notices = [line for line in lines if "ivr-fallback" in line]
    assert len(notices) == 1 and "reason=agi-failure" in notices[0], lines
    # The only warnings are res_agi's own report that the daemon is unreachable: no missing
    # sound file, no dialplan error on the way to the operators and back.
    unexpected = [p for p in problems(lines) if "res_agi.c" not in p]
    assert unexpected == []
    assert any("FastAGI failed" in p for p in problems(lines))
    rows = _cdr_rows(dev_pbx)[cdr_before:]
    # The CDR names where the call ended (s@operators), from the trunk, with the fallback mark.
    calls = [r for r in rows if r.startswith('"","13800138000",')]
    assert len(calls) == 1, rows
    assert '"PJSIP/devtrunk-' in calls[0] and '"ANSWERED"' in calls[0]
    assert '"s","operators"' in calls[0]
    assert calls[0].rstrip().endswith('"ivr-fallback:agi-failure"')
    # The caller heard the apology and the "all circuits busy" message (no operator is
    # registered), then the PBX hung up: well under the 40 s SIPp allowed.
    assert 3 < took < 30, took


INFO_DTMF_CALL = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!-- A caller whose equipment sends DTMF as SIP INFO (as the pjsua2 simulator does): it calls
     [service], presses 5 once answered, and confirms the PBX's BYE. -->
<scenario name="hotline INFO DTMF">
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "SIPp caller" <sip:13800138000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:13800138000@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=sipp 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 8 0
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true"/>
  <send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "SIPp caller" <sip:13800138000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <pause milliseconds="800"/>
  <send retrans="500"><![CDATA[
INFO sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: "SIPp caller" <sip:13800138000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 INFO
Contact: <sip:13800138000@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/dtmf-relay
Content-Length: [len]

Signal=5
Duration=160
]]></send>
  <recv response="200"/>
  <recv request="BYE" timeout="20000"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
</scenario>
"""


class FakeDaemon:
    """A minimal FastAGI peer on 127.0.0.1:4573 standing in for ivr-engine: answers, waits
    for one digit, tells the dialplan IVR_NEXT=hangup, and returns. Records what it saw."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(("127.0.0.1", AGI_PORT))
        except OSError as exc:
            self.sock.close()
            raise AssertionError(
                f"127.0.0.1:{AGI_PORT} is taken ({exc}): an ivr-engine daemon is running"
            ) from None
        self.sock.listen(1)
        self.sock.settimeout(30)
        self.env: dict[str, str] = {}
        self.replies: list[str] = []
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._serve, name="fake-fastagi", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn, conn.makefile("rwb") as f:
                conn.settimeout(15)
                while (line := f.readline().decode().rstrip("\n")) != "":
                    key, _, value = line.partition(": ")
                    self.env[key] = value
                for cmd in ("ANSWER", "WAIT FOR DIGIT 10000", "SET VARIABLE IVR_NEXT hangup"):
                    f.write(cmd.encode() + b"\n")
                    f.flush()
                    self.replies.append(f.readline().decode().strip())
        except Exception as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def close(self) -> None:
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.mark.sip
def test_trunk_takes_sip_info_dtmf_and_the_next_hook(dev_pbx: DevPbx, hotline: None) -> None:
    dev_pbx.in_root("/tmp/ivr-engine-info-dtmf.xml").write_text(INFO_DTMF_CALL)
    mark = dev_pbx.mark()
    cdr_before = len(_cdr_rows(dev_pbx))
    daemon = FakeDaemon()
    try:
        argv = dev_pbx.sipp_cmd(
            "-sf", "/tmp/ivr-engine-info-dtmf.xml", "-s", "4008",
            "-i", "127.0.0.1", "-p", str(_free_udp_port()), "-mp", str(_free_udp_port()),
            "-m", "1", "-l", "1", "-timeout", "40s", "-timeout_error", "-nostdin",
            f"127.0.0.1:{dev_pbx.sip_port}",
        )  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    finally:
        daemon.close()
    assert daemon.error is None, daemon.error
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert daemon.env["agi_network_script"] == "hotline"
    assert daemon.env["agi_callerid"] == "13800138000"
    assert daemon.env["agi_extension"] == "4008" and daemon.env["agi_context"] == "from-trunk"
    assert daemon.replies[0] == "200 result=0"
    assert daemon.replies[1] == f"200 result={ord('5')}"  # the INFO digit reached the AGI
    assert daemon.replies[2] == "200 result=1"
    lines = dev_pbx.wait_log_quiet(mark)
    assert problems(lines) == [] and not [x for x in lines if "ivr-fallback" in x]
    rows = _cdr_rows(dev_pbx)[cdr_before:]
    calls = [r for r in rows if r.startswith('"","13800138000",')]
    assert len(calls) == 1 and '"hangup","ivr-next"' in calls[0], rows
    assert not calls[0].rstrip().endswith('fallback:agi-failure"')


# --------------------------------------------------------------------------- AMI privileges
class AmiSession:
    def __init__(self, port: int, user: str, secret: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.framer = AmiFramer()
        self.pending: list[AmiMessage] = []
        self.n = 0
        self.login = self.action("Login", Username=user, Secret=secret, Events="off")

    def action(self, name: str, **fields: str) -> AmiMessage:
        self.n += 1
        aid = f"t{self.n}"
        self.sock.sendall(encode_action(name, ActionID=aid, **fields))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for msg in self.pending:
                if msg.get("ActionID") == aid and msg.get("Response"):
                    self.pending.remove(msg)
                    return msg
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("AMI closed the connection")
            self.pending.extend(self.framer.feed(data))
        raise AssertionError(f"no reply to {name}")

    def close(self) -> None:
        self.sock.close()


def _refused(msg: AmiMessage) -> bool:
    return msg.get("Response") == "Error" and "ermission denied" in (msg.get("Message") or "")


def test_ami_users_get_only_their_classes(dev_pbx: DevPbx) -> None:
    engine = AmiSession(dev_pbx.ami_port, "ivr-engine", "ivr-engine-dev-secret")
    monitor = AmiSession(dev_pbx.ami_port, "monitor", "monitor-dev-secret")
    wrong = AmiSession(dev_pbx.ami_port, "ivr-engine", "not-the-secret")
    try:
        assert engine.login.get("Response") == "Success"
        assert monitor.login.get("Response") == "Success"
        assert wrong.login.get("Response") == "Error"
        # The engine: no `command`, no `config`, no `system` write.
        assert _refused(engine.action("Command", Command="core show version"))
        assert _refused(engine.action("GetConfig", Filename="manager.conf"))
        assert _refused(engine.action("UpdateConfig", SrcFilename="x.conf", DstFilename="y.conf"))
        assert _refused(engine.action("Reload"))
        # Originate of applications that run programs or write files needs `system` write.
        for app in ("System", "TrySystem", "Exec", "AGI", "MixMonitor"):
            reply = engine.action(
                "Originate", Channel="Local/600@agents", Application=app, Data="true", Async="true"
            )
            assert reply.get("Response") == "Error", app
            assert "Forbidden" in (reply.get("Message") or ""), (app, reply)
        # ... but what it needs works.
        assert engine.action("CoreShowChannels").get("Response") == "Success"
        assert engine.action("QueueStatus", Queue="operators").get("Response") == "Success"
        # The monitor user changes nothing and reads no variables.
        assert _refused(monitor.action("Originate", Channel="Local/600@agents", Exten="600",
                                       Context="agents", Priority="1"))  # fmt: skip
        assert _refused(monitor.action("Getvar", Variable="GLOBAL(IVR_AGI_URL)"))
        assert _refused(monitor.action("QueueAdd", Queue="operators", Interface="PJSIP/1001"))
    finally:
        for s in (engine, monitor, wrong):
            s.close()
    perms = dev_pbx.cli("manager show user monitor")
    read = re.search(r"read perm:\s*(\S+)", perms)
    assert read is not None
    assert set(read.group(1).split(",")) == {"call", "agent"}
    engine_perms = dev_pbx.cli("manager show user ivr-engine")
    write = re.search(r"write perm:\s*(\S+)", engine_perms)
    assert write is not None
    assert not set(write.group(1).split(",")) & {"system", "config", "command", "all"}
