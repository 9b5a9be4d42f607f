"""The house style is checked with the tests: ruff on everything, mypy strict on the packages."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def test_ruff_is_clean():
    r = _run(str(BIN / "ruff"), "check", "ivr_engine", "acd", "simulate", "tests")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_is_clean():
    r = _run(sys.executable, "-m", "mypy")
    assert r.returncode == 0, r.stdout + r.stderr
