"""Bad configuration meets the real PBX and the ACD's own settings (issue 8, "CLI and config").

tests/unit/test_cli_errors.py covers unknown keys and sections, wrong types (file and
environment), missing or unreadable files, and a wrong AMI password against a fake manager.
This file adds what only the real parts show:

- a wrong AMI password and an unknown AMI user against the dev PBX's Asterisk 22 (its real
  refusal, its own security log line), each one clear message naming where the setting came
  from, exit 2, no traceback, the secret never printed, no call taken;
- the `[acd]` section: a wrong type, a value out of range, a roster file that is missing or is
  not a roster: the daemon refuses to start with the key (and the roster file) named.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MESSAGE = "ivr-engine: configuration error: "


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A daemon that takes no call: AGI on a free port, MQTT off, its own files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IVR_ENGINE_", "IVR_ACD_"))}
    env.update(
        {
            "IVR_ENGINE_STORE_PATH": str(tmp_path / "ivr.sqlite3"),
            "IVR_ENGINE_STORE_AUDIT_PATH": str(tmp_path / "audit.sqlite3"),
            "IVR_ENGINE_FLOWS_DEPLOY_DIR": str(tmp_path / "deployed"),
            "IVR_ENGINE_AGI_PORT": "0",
            "IVR_ENGINE_MQTT_ENABLED": "false",
            **extra,
        }
    )
    return env


def _serve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ivr_engine.cli", *args, "serve"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _refused(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    assert proc.stderr.count(MESSAGE) == 1, out
    assert "serving FastAGI" not in out, out  # refused before taking any call
    message = proc.stderr[proc.stderr.find(MESSAGE) :]
    for needle in needles:
        assert needle in message, (needle, out)
    return message


@pytest.mark.pbx
def test_wrong_ami_password_against_the_real_asterisk(dev_pbx, tmp_path):
    f = tmp_path / "ivr.toml"
    f.write_text(f'[ami]\nport = {dev_pbx.ami_port}\nsecret = "wrong-secret-4711"\n')
    mark = dev_pbx.mark()
    proc = _serve("--config", str(f), env=_env(tmp_path))
    message = _refused(
        proc,
        f"127.0.0.1:{dev_pbx.ami_port}",
        "refused login for user 'ivr-engine'",
        "Authentication failed",
        f"{f}: ami.secret",
        "ami.username comes from the built-in default",
    )
    print(f"wrong AMI password, the operator reads:\n{message}")
    assert "wrong-secret-4711" not in proc.stdout + proc.stderr
    # Asterisk saw the failed login too (its security log line), with the engine's user name.
    log = "\n".join(dev_pbx.lines_since(mark))
    assert "ivr-engine" in log and "failed to authenticate" in log, log[-2000:]


@pytest.mark.pbx
def test_unknown_ami_user_against_the_real_asterisk(dev_pbx, tmp_path):
    env = _env(
        tmp_path,
        IVR_ENGINE_AMI_PORT=str(dev_pbx.ami_port),
        IVR_ENGINE_AMI_USERNAME="intruder",
        IVR_ENGINE_AMI_SECRET="guess",
    )
    message = _refused(
        _serve(env=env),
        "refused login for user 'intruder'",
        "ami.username comes from the environment variable IVR_ENGINE_AMI_USERNAME",
        "ami.secret comes from the environment variable IVR_ENGINE_AMI_SECRET",
    )
    assert "guess" not in message


def test_acd_setting_of_the_wrong_type(tmp_path):
    f = tmp_path / "ivr.toml"
    f.write_text('[acd]\nring_timeout = "fifteen"\n')
    _refused(_serve("--config", str(f), env=_env(tmp_path)), str(f), "acd.ring_timeout")


def test_acd_unknown_key(tmp_path):
    f = tmp_path / "ivr.toml"
    f.write_text("[acd]\nring_timout = 15\n")
    _refused(_serve("--config", str(f), env=_env(tmp_path)), str(f), "acd.ring_timout")


def test_acd_value_out_of_range_from_the_environment(tmp_path):
    env = _env(tmp_path, IVR_ENGINE_ACD_MAX_MISSES="-1", IVR_ENGINE_AMI_ENABLED="false")
    _refused(_serve(env=env), "acd.max_misses")


# The roster is read when the ACD is built, which needs AMI (without AMI the daemon logs that
# app_queue holds the queued callers and never opens the roster): these two use the dev PBX.
@pytest.mark.pbx
def test_acd_roster_file_missing(dev_pbx, tmp_path):
    absent = tmp_path / "no-such-roster.yaml"
    env = _env(
        tmp_path, IVR_ENGINE_ACD_ROSTER=str(absent), IVR_ENGINE_AMI_PORT=str(dev_pbx.ami_port)
    )
    _refused(_serve(env=env), "acd.roster", str(absent))


@pytest.mark.pbx
def test_acd_roster_that_is_not_a_roster(dev_pbx, tmp_path):
    roster = tmp_path / "agents.yaml"
    roster.write_text('agents:\n  "1001": {skills: {mandarin: "very"}}\n')
    env = _env(
        tmp_path, IVR_ENGINE_ACD_ROSTER=str(roster), IVR_ENGINE_AMI_PORT=str(dev_pbx.ami_port)
    )
    _refused(_serve(env=env), "acd.roster", str(roster))
