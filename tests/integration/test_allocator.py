"""A real `ivr-engine serve` starts again on jemalloc with transparent huge pages
(ivr_engine/allocator.py; libjemalloc2 comes with `make setup`), keeps its process id, and says
which allocator it runs on; `acd.allocator = python` keeps CPython's own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ivr_engine import allocator

REPO = Path(__file__).resolve().parents[2]


def _serve(tmp_path: Path, **extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    """A daemon that takes no call: AGI on a free port, AMI and MQTT off, its own files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IVR_ENGINE_", "IVR_ACD_"))}
    env.update(
        {
            "IVR_ENGINE_STORE_PATH": str(tmp_path / "ivr.sqlite3"),
            "IVR_ENGINE_STORE_AUDIT_PATH": str(tmp_path / "audit.sqlite3"),
            "IVR_ENGINE_FLOWS_DEPLOY_DIR": str(tmp_path / "deployed"),
            "IVR_ENGINE_LOG_FILE": str(tmp_path / "daemon.log"),
            "IVR_ENGINE_AGI_PORT": "0",
            "IVR_ENGINE_AMI_ENABLED": "false",
            "IVR_ENGINE_MQTT_ENABLED": "false",
            **extra,
        }
    )
    out = tmp_path / "daemon.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ivr_engine.cli", "serve"],
            cwd=REPO,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while "serving FastAGI" not in out.read_text(errors="replace"):
        assert proc.poll() is None, out.read_text(errors="replace")
        assert time.monotonic() < deadline, out.read_text(errors="replace")
        time.sleep(0.1)
    return proc, tmp_path / "daemon.log"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_daemon_runs_on_jemalloc_with_huge_pages(tmp_path: Path) -> None:
    assert allocator.find_jemalloc() is not None, "make setup installs libjemalloc2"
    thp = allocator.thp_mode()
    proc, log = _serve(tmp_path)
    try:
        maps = _maps(proc.pid)  # the same process: the restart is an exec
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
    finally:
        _stop(proc)
    text = log.read_text()
    if thp in (None, "never"):  # a host without huge pages: nothing to gain, no restart
        assert "libjemalloc" not in maps
        assert "memory: Python's allocator" in text
        return
    assert "libjemalloc" in maps
    assert b"PYTHONMALLOC=malloc" in environ  # what it was exec'd with
    assert f"memory: jemalloc on transparent huge pages (host mode {thp})" in text


def test_acd_allocator_python_keeps_cpythons_own(tmp_path: Path) -> None:
    proc, log = _serve(tmp_path, IVR_ENGINE_ACD_ALLOCATOR="python")
    try:
        maps = _maps(proc.pid)
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
    finally:
        _stop(proc)
    assert "libjemalloc" not in maps
    assert not any(v.startswith(b"LD_PRELOAD=") and b"jemalloc" in v for v in environ)
    assert "memory: Python's allocator" in log.read_text()
