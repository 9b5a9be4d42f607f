"""The CLI refuses bad configuration with one clear message: the file (or the environment
variable) and the key, a non-zero exit, never a traceback. Each case runs `ivr-engine` as a
subprocess, as an operator would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IVR_ENGINE_")}
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0):
    return subprocess.run(
        [sys.executable, "-m", "ivr_engine.cli", *args],
        cwd=REPO,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def refused(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command failed with exit 2, one error message (after any log lines of a daemon
    that started) containing every needle, and no traceback anywhere."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    start = proc.stderr.find("ivr-engine: configuration error: ")
    assert start >= 0 and proc.stderr.count("ivr-engine: configuration error: ") == 1, out
    message = proc.stderr[start:]
    for needle in needles:
        assert needle in message, (needle, out)
    return message


def test_missing_config_file(tmp_path):
    absent = tmp_path / "absent.toml"
    err = refused(run("--config", str(absent), "config", "show"), str(absent), "cannot read")
    assert err.count("\n") == 1  # one line


def test_missing_config_file_named_by_environment(tmp_path):
    absent = tmp_path / "nope.toml"
    refused(run("config", "show", env=clean_env(IVR_ENGINE_CONFIG=str(absent))), str(absent))


def test_unknown_key(tmp_path):
    f = tmp_path / "ivr.toml"
    f.write_text("[agi]\nprot = 5000\n")
    refused(run("--config", str(f), "config", "show"), str(f), "agi.prot", "unknown key")


def test_unknown_section(tmp_path):
    f = tmp_path / "ivr.toml"
    f.write_text("[agl]\nport = 5000\n")
    refused(run("--config", str(f), "config", "show"), str(f), "agl", "unknown section")


def test_wrong_type_in_file(tmp_path):
    f = tmp_path / "ivr.toml"
    f.write_text('[agi]\nport = "many"\n')
    refused(run("--config", str(f), "config", "show"), str(f), "agi.port", "expected int")


def test_wrong_type_in_environment():
    env = clean_env(IVR_ENGINE_AMI_PING_INTERVAL="soon")
    refused(run("config", "show", env=env), "environment", "ami.ping_interval", "expected float")


def test_unknown_key_in_environment():
    env = clean_env(IVR_ENGINE_MQTT_PROT="1")
    refused(run("config", "show", env=env), "environment", "mqtt.prot")


def test_not_toml(tmp_path):
    f = tmp_path / "ivr.toml"
    f.write_text("[agi\nport = 1\n")
    refused(run("--config", str(f), "config", "show"), str(f), "not valid TOML")


def test_not_utf8(tmp_path):
    f = tmp_path / "ivr.toml"
    f.write_bytes(b'[ami]\nsecret = "\xff\xfe"\n')
    refused(run("--config", str(f), "config", "show"), str(f), "not valid TOML")


def test_bad_log_level_names_the_file(tmp_path):
    f = tmp_path / "ivr.toml"
    f.write_text('[log]\nlevel = "LOUD"\n')
    refused(run("--config", str(f), "config", "show"), "log.level", "LOUD", str(f))


def test_bad_log_level_on_the_command_line():
    refused(run("--log-level", "chatty", "config", "show"), "log.level", "chatty")


def test_log_file_that_cannot_be_opened(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "ivr.log"
    env = clean_env(IVR_ENGINE_LOG_FILE=str(target))
    refused(run("config", "show", env=env), "log.file", str(target))


def _serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    base = {
        "IVR_ENGINE_STORE_PATH": str(tmp_path / "ivr.sqlite3"),
        "IVR_ENGINE_STORE_AUDIT_PATH": str(tmp_path / "audit.sqlite3"),
        "IVR_ENGINE_FLOWS_DEPLOY_DIR": str(tmp_path / "deployed"),
        "IVR_ENGINE_AGI_PORT": "0",
        "IVR_ENGINE_MQTT_ENABLED": "false",
    }
    return clean_env(**{**base, **extra})


def test_bad_agi_allow_entry_names_where_it_came_from(tmp_path):
    f = tmp_path / "ivr.toml"
    f.write_text('[agi]\nallow = ["127.0.0.1", "localhost"]\n[ami]\nenabled = false\n')
    proc = run("--config", str(f), "serve", env=_serve_env(tmp_path))
    refused(proc, "agi.allow", "'localhost'", str(f))


def test_agi_port_taken(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = _serve_env(tmp_path, IVR_ENGINE_AGI_PORT=str(port), IVR_ENGINE_AMI_ENABLED="0")
        refused(run("serve", env=env), "agi.port", f"127.0.0.1:{port}", "IVR_ENGINE_AGI_PORT")


# --- a wrong AMI password ------------------------------------------------------------------


@pytest.fixture
def refusing_ami() -> Iterator[tuple[int, list[bytes]]]:
    """A fake Asterisk manager on a free port that refuses every Login, as Asterisk 22 does
    ("Response: Error / Message: Authentication failed")."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                conn.sendall(b"Asterisk Call Manager/9.0.0\r\n")
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                seen.append(data)
                action_id = b""
                for line in data.split(b"\r\n"):
                    if line.lower().startswith(b"actionid:"):
                        action_id = line.split(b":", 1)[1].strip()
                conn.sendall(
                    b"Response: Error\r\nActionID: " + action_id
                    + b"\r\nMessage: Authentication failed\r\n\r\n"
                )
                try:
                    conn.recv(4096)  # until the client closes
                except OSError:
                    pass

    thread = threading.Thread(target=serve, name="fake-ami", daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1], seen
    finally:
        stop.set()
        thread.join(5)
        srv.close()


def test_wrong_ami_password_names_file_and_key(tmp_path, refusing_ami):
    port, seen = refusing_ami
    f = tmp_path / "ivr.toml"
    f.write_text(f'[ami]\nport = {port}\nsecret = "not-the-secret"\n')
    proc = run("--config", str(f), "serve", env=_serve_env(tmp_path))
    err = refused(proc, "refused login", "Authentication failed", f"{f}: ami.secret")
    assert "not-the-secret" not in proc.stdout + proc.stderr  # the secret is never printed
    assert "serving FastAGI" not in proc.stdout  # refused before taking any call
    assert len(seen) == 1 and b"Action: Login" in seen[0]
    assert "ami.username comes from the built-in default" in err


def test_wrong_ami_password_from_environment(tmp_path, refusing_ami):
    port, _ = refusing_ami
    env = _serve_env(tmp_path, IVR_ENGINE_AMI_PORT=str(port), IVR_ENGINE_AMI_SECRET="x")
    refused(run("serve", env=env), "ami.secret comes from the environment variable "
            "IVR_ENGINE_AMI_SECRET")


def test_unreachable_ami_is_not_fatal(tmp_path):
    """A PBX that is not up yet is retried in the background; the daemon serves calls."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connection refused
        env = _serve_env(tmp_path, IVR_ENGINE_AMI_PORT=str(port))
        proc = subprocess.Popen(
            [sys.executable, "-m", "ivr_engine.cli", "serve"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert "serving FastAGI" in line, line
        finally:
            proc.terminate()
            out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "AMI not connected yet" in err and "retrying in the background" in err
    assert "Traceback" not in err
