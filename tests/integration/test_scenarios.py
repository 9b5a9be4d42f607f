"""The hotline walkthroughs of simulate/scenarios/ (one per persona) pass against the real
daemon, through the real Asterisk, with real SIP calls: `ivr-engine simulate` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import REPO, Daemon, run_cli

pytestmark = [pytest.mark.pbx, pytest.mark.sip, pytest.mark.slow]

SCENARIOS = sorted((REPO / "simulate" / "scenarios").glob("*.yaml"))
PERSONAS = {"chen-vip", "wang-bill-due", "shenzhen-landline", "li-risk", "zhao-group", "withheld"}


@pytest.fixture
def daemon(dev_pbx, hotline, tmp_path):
    run_cli("prompts", "build")  # incremental: fast when make already built them
    d = Daemon(tmp_path)
    d.seed(customers=0)
    d.start()
    yield d
    assert d.stop() == 0, d.output()


def test_every_persona_has_a_walkthrough():
    assert PERSONAS <= {p.stem for p in SCENARIOS}


def test_persona_walkthroughs_pass(dev_pbx, daemon, tmp_path):
    report = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "ivr_engine.cli", "simulate", *map(str, SCENARIOS), "--json",
         "--report", str(report), "--pbx", f"127.0.0.1:{dev_pbx.sip_port}"],
        cwd=REPO, env=daemon.env, capture_output=True, text=True, timeout=1500, check=False,
    )
    results = json.loads(proc.stdout)
    failed = [
        (r["scenario"], c["name"], [k for k in c["checks"] if not k["ok"]])
        for r in results for c in r["calls"] if not c["ok"]
    ]
    assert not failed, (failed, (report / "report.md").read_text())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {r["scenario"] for r in results} >= PERSONAS
    # Every call was matched to its Asterisk channel and to the engine's record of it.
    for r in results:
        for c in r["calls"]:
            assert c["uniqueid"] and c["record"]["id"] == c["uniqueid"], c
            assert Path(c["recording"]).stat().st_size > 8000, c
    # Li keyed his PIN: it is masked in the report and never reached the daemon's log.
    li = next(c for r in results if r["scenario"] == "li-risk" for c in r["calls"])
    assert "send ******" in " ".join(li["steps"])
    assert "123456" not in (report / "report.md").read_text()
    assert "123456" not in (report / "report.json").read_text()
    assert "123456" not in daemon.logs()
