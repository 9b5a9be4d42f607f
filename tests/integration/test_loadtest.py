"""A short load run in CI: SIPp through the real Asterisk into the real daemon, 30 calls/s for
20 s of the IVR-only journey, with zero failed calls, and a report with its plots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.daemon import REPO, run_cli

pytestmark = [pytest.mark.pbx, pytest.mark.slow]


def test_short_load_run_has_zero_failures(dev_pbx, hotline, tmp_path):
    run_cli("prompts", "build")  # incremental: fast when make already built them
    report = tmp_path / "load"
    # --customers 0: the personas, Beijing landlines and withheld callers. The synthetic book
    # is left to the full run (docs/load/), where its callers' data errors are reported apart.
    proc = subprocess.run(
        [sys.executable, "-m", "ivr_engine.cli", "loadtest", "--rate", "30", "--duration", "20",
         "--customers", "0", "--mix", "known=0.6,unknown=0.3,withheld=0.1", "--digits", "10",
         "--report", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )
    data = json.loads((report / "report.json").read_text())
    step = data["steps"][0]
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert step["plan"]["calls"] == 600
    assert (step["offered"], step["answered"], step["completed"]) == (600, 600, 600)
    assert step["failed"] == 0 and step["fallbacks"] == 0 and step["flow_errors"] == 0
    assert step["daemon_calls"] == 600  # every call reached the daemon over FastAGI
    assert 25 <= step["arrival_rate"] <= 35, step["arrival_rate"]
    assert step["answer_ms_p50"] is not None and step["agi_think_ms_p99"] is not None
    assert step["rss_peak"] and step["cpu_percent"]
    assert data["sustained_zero_failures"] == 30
    png = (report / "load-30cps.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Sustained with zero failed calls: 30 calls/s" in (report / "report.md").read_text()


def test_short_load_run_with_agents_app_queue_and_acd(dev_pbx, hotline, tmp_path):
    """10 calls/s for 20 s of callers who ask for a person, 60 SIPp agents answering; once
    through app_queue, once through the ACD: every call answered by an agent, none failed,
    no double offer, the side-by-side report with its plots."""
    report = tmp_path / "agents"
    proc = subprocess.run(
        [sys.executable, "-m", "ivr_engine.cli", "loadtest", "--agents", "60",
         "--agent-ring", "0.2,0.6", "--agent-talk", "2,4", "--agent-no-answer", "0.05",
         "--rate", "10", "--duration", "20", "--compare", "--report", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )
    assert (report / "report.json").exists(), (proc.stdout[-3000:], proc.stderr[-3000:])
    data = json.loads((report / "report.json").read_text())
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    steps = {s["router"]: s for s in data["steps"]}
    assert set(steps) == {"app_queue", "acd"}
    for router, s in steps.items():
        assert (s["offered"], s["answered"], s["abandoned"], s["failed"]) == (200, 200, 0, 0), \
            (router, s["failures"])
        assert s["double_offers"] == [] and s["phone_double_offers"] == [], router
        assert s["pbx_fallbacks"] == 0 and s["daemon_failed"] == 0, router
        assert 2.0 <= s["aht"] <= 4.5, (router, s["aht"])  # the agents' talk time
        assert s["asa"] is not None and s["asa"] < 20, (router, s["asa"])
        assert s["service_level"] == 100.0, router
        assert s["offers"] >= 200, router  # declined offers are offered again
        png = (report / f"agents-{router}-10cps.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["sustained_zero_failures"] == {"acd": 10, "app_queue": 10}
    md = (report / "report.md").read_text()
    assert "acd: sustained with zero failed calls: 10 calls/s" in md
