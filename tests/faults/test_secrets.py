"""Secrets kept: callers key the dev PIN and a full card number into the real hotline; then
every place those digits could land is searched for them: the daemon's log and output, the
SQLite files (raw bytes, WAL included), all MQTT traffic (subscribed to `#` on the daemon's
broker for the whole test), the call records as an admin reads them, and Asterisk's own logs
and CDR (everything under the dev PBX's var/log/asterisk). Zero hits.

The search is for the digits as a run (not inside a longer digit string: a timestamp's
microseconds or a uniqueid could contain 123456 by chance). The test also proves the digits
really reached the daemon (the PIN verified, the card number collected and looked up), so an
empty search means they were withheld, not that they were never sent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ivr_engine.cif.seed import DEV_PIN, PERSONA_CARDS
from tests.faults.support import MqttCapture, call_hotline
from tests.support.mqtt_broker import PrivateBroker

pytestmark = [pytest.mark.pbx, pytest.mark.sip, pytest.mark.mqtt, pytest.mark.slow]

CARD = PERSONA_CARDS["li"]


def _pattern(digits: str) -> re.Pattern[bytes]:
    return re.compile(rb"(?<![0-9])" + digits.encode() + rb"(?![0-9])")


SECRETS = {"PIN": _pattern(DEV_PIN), "card number": _pattern(CARD)}


def hits(name: str, data: bytes) -> list[str]:
    found = []
    for what, pattern in SECRETS.items():
        for m in pattern.finditer(data):
            context = data[max(0, m.start() - 60) : m.end() + 20].decode(errors="replace")
            found.append(f"{what} in {name}: ...{context}...")
    return found


def test_pin_and_card_number_appear_nowhere(dev_pbx, hotline, prompts_built, daemons, tmp_path):
    broker = PrivateBroker(tmp_path)
    broker.start()
    capture = MqttCapture(broker.port)
    capture.start()
    d = daemons(IVR_ENGINE_MQTT_PORT=str(broker.port))
    d.seed(customers=0)
    d.start()
    try:
        # Li: self-service (1) over the greeting, balance (2), then the PIN: verified, and
        # (risk flag) to the risk desk.
        pin_call = call_hotline(dev_pbx.sip_port, "13700000003", "p2,1,p1.5,2,w,s:123456,w,h")
        # Li again: card activation (3) over the greeting, then the full card number and #.
        card_call = call_hotline(dev_pbx.sip_port, "13700000003", f"p2,3,w,s:{CARD}#,w,w,h")
        listed = json.loads(d.cli("calls", "list", "--json").stdout)
        shown = [d.cli("calls", "show", c["id"], "--json").stdout for c in listed]
    finally:
        code = d.stop()
        capture.stop()
        broker.stop()
    assert code == 0, d.output()
    assert pin_call.speech >= 2 and card_call.speech >= 2

    # The digits reached the daemon: the PIN was checked, the card number collected and
    # looked up (Luhn-valid, so the flow went on to the CIF).
    assert len(listed) == 2, listed
    records = [json.loads(s) for s in shown]
    by_nodes = {r["id"]: [s["node"] for s in r["steps"]] for r in records}
    pin_rec = next(r for r in records if "verify_pin/check" in by_nodes[r["id"]])
    assert any(e["kind"] == "pin-verified" for e in pin_rec["events"]), pin_rec["events"]
    card_rec = next(r for r in records if "cards/activate_entry" in by_nodes[r["id"]])
    assert "cards/activate" in by_nodes[card_rec["id"]], by_nodes[card_rec["id"]]

    found: list[str] = []
    searched: list[str] = []
    # 1. The daemon's log file and its stdout/stderr.
    for p in (d.log, d.workdir / "daemon.out"):
        found += hits(p.name, p.read_bytes())
        searched.append(p.name)
    # 2. Every SQLite file, raw bytes (main files, WAL, shared memory).
    for p in sorted(d.workdir.glob("*.sqlite3*")):
        found += hits(p.name, p.read_bytes())
        searched.append(p.name)
    # 3. All MQTT traffic, topics and payloads.
    assert len(capture.messages) > 20, len(capture.messages)
    for _, topic, payload in capture.messages:
        found += hits(f"MQTT {topic}", topic.encode() + b" " + payload)
    searched.append(f"{len(capture.messages)} MQTT messages")
    # 4. The call records as the CLI shows them.
    for text in shown:
        found += hits("calls show", text.encode())
    # 5. Asterisk's logs and CDR, every file.
    log_dir = Path(dev_pbx.in_root("/var/log/asterisk"))
    for p in sorted(log_dir.rglob("*")):
        if p.is_file():
            found += hits(str(p.relative_to(log_dir)), p.read_bytes())
            searched.append(f"asterisk/{p.relative_to(log_dir)}")
    print("secrets: searched " + ", ".join(searched))
    assert found == [], "\n".join(found)
