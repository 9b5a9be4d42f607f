"""Known vulnerabilities in the installed dependencies: `pip-audit` over the virtualenv.

Fails on any known vulnerability, and also when pip-audit could not audit a dependency (the
vulnerability service unreachable, a package it cannot find): an audit that looked at nothing
must not pass. The project itself (installed editable, not on PyPI) is left out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PIP_AUDIT = Path(sys.executable).with_name("pip-audit")


def test_no_known_vulnerabilities_in_installed_dependencies(tmp_path):
    out = tmp_path / "audit.json"
    proc = subprocess.run(
        [str(PIP_AUDIT), "--skip-editable", "--progress-spinner", "off",
         "--format", "json", "--output", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.exists(), f"pip-audit produced no report (exit {proc.returncode}):\n{proc.stderr}"
    report = json.loads(out.read_text())
    deps = report["dependencies"]
    vulnerable = [
        f"{d['name']} {d['version']}: " + ", ".join(v["id"] for v in d["vulns"])
        for d in deps if d.get("vulns")
    ]
    skipped = [f"{d['name']}: {d['skip_reason']}" for d in deps if d.get("skip_reason")]
    print(f"pip-audit: {len(deps)} dependencies, {len(vulnerable)} vulnerable, "
          f"{len(skipped)} not audited")
    assert not vulnerable, "known vulnerabilities:\n" + "\n".join(vulnerable)
    assert not skipped, (
        f"pip-audit could not audit {len(skipped)} of {len(deps)} dependencies (is the "
        "vulnerability service reachable?):\n" + "\n".join(skipped[:10])
    )
    assert proc.returncode == 0, proc.stderr
