"""Asterisk log reading, and the DevPbx helpers that need no running PBX."""

from __future__ import annotations

import io
import shutil
import wave
from pathlib import Path

import pytest

from ivr_engine.errors import DevPbxError
from ivr_engine.pbx import AsteriskLog, DevPbx, problems
from ivr_engine.pbx.asterisk_log import level_of
from ivr_engine.pbx.devpbx import hosts_file, moh_tone_wav

REPO = Path(__file__).resolve().parents[3]

W = "[2026-11-25 13:07:57.945] WARNING[18942] ccss.c: Could not find valid ccss.conf file."
E = "[2026-11-25 13:07:57.951] ERROR[18942][C-00000001] config_options.c: Unable to load"
N = "[2026-11-25 13:07:57.950] NOTICE[18942] cdr.c: CDR simple logging enabled."


def test_levels_and_problems() -> None:
    assert level_of(W) == "WARNING" and level_of(E) == "ERROR" and level_of(N) == "NOTICE"
    assert level_of("WARNING in free text") is None
    assert problems([N, W, "continuation line", E]) == [W, E]


def test_lines_since_mark_partial_lines_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "messages"
    log = AsteriskLog(path)
    m0 = log.mark()
    assert log.lines_since(m0) == []
    path.write_text(N + "\n")
    assert log.lines_since(m0) == [N]
    m1 = log.mark()
    with path.open("a") as fh:
        fh.write(W + "\n" + E[:20])  # the ERROR line is still being written
    assert log.lines_since(m1) == [W]
    with path.open("a") as fh:
        fh.write(E[20:] + "\n")
    assert log.lines_since(m1) == [W, E]
    # Replaced (rotated) file: read from its start.
    path.rename(tmp_path / "messages.1")
    path.write_text(E + "\n")
    assert log.lines_since(m1) == [E]


def test_moh_tone_is_8khz_mono_16bit() -> None:
    data = moh_tone_wav(seconds=2)
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        assert w.getnframes() == 16000
        frames = w.readframes(w.getnframes())
    assert any(frames)  # not silence
    with pytest.raises(DevPbxError):
        moh_tone_wav(seconds=0)


def test_hosts_file_names_the_machine() -> None:
    text = hosts_file("pbx-host")
    assert text.splitlines()[0].split() == ["127.0.0.1", "localhost", "pbx-host"]
    with pytest.raises(DevPbxError):
        hosts_file("two words")


def _pbx(tmp_path: Path, conf: Path | None = None, **kw: object) -> DevPbx:
    return DevPbx(
        root=tmp_path / ".pbx" / "root",
        conf_dirs=(conf or REPO / "asterisk-conf", REPO / "sip-trunk"),
        ami_user="ivr-engine",
        ami_secret="s",
        **kw,  # type: ignore[arg-type]
    )


def test_command_lines_run_inside_the_root(tmp_path: Path) -> None:
    pbx = _pbx(tmp_path)
    root = str(tmp_path / ".pbx" / "root")
    assert pbx.cli_argv("core show uptime") == [
        "chroot", root, "/usr/sbin/asterisk", "-rx", "core show uptime",
    ]  # fmt: skip
    assert pbx.cli_argv(None)[-1] == "-r"
    assert pbx.sipp_cmd("-sn", "uac", "127.0.0.1:5060") == [
        "chroot", root, "/usr/bin/sipp", "-sn", "uac", "127.0.0.1:5060",
    ]  # fmt: skip
    assert pbx.in_root("/tmp/x.xml") == tmp_path / ".pbx" / "root" / "tmp" / "x.xml"
    assert (pbx.ami_port, pbx.sip_port) == (5038, 5060)
    assert pbx.state_dir == tmp_path / ".pbx"
    with pytest.raises(DevPbxError):
        pbx.cli_argv("core show uptime\nmodule unload chan_pjsip.so")
    for bad in ("tmp/x", "/tmp/../../etc/passwd"):
        with pytest.raises(DevPbxError):
            pbx.in_root(bad)


def test_settings_port_must_match_manager_conf(tmp_path: Path) -> None:
    with pytest.raises(DevPbxError, match="ami.port is 5039 but manager.conf"):
        _pbx(tmp_path, expected_ami_port=5039)


def test_config_that_binds_beyond_loopback_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "asterisk-conf", conf)
    manager = conf / "manager.conf"
    manager.write_text(manager.read_text().replace("bindaddr = 127.0.0.1", "bindaddr = 0.0.0.0"))
    with pytest.raises(DevPbxError, match="binds only to 127.0.0.1.*AMI on 0.0.0.0"):
        _pbx(tmp_path, conf)


def test_not_running_status_and_leases(tmp_path: Path) -> None:
    pbx = _pbx(tmp_path)
    st = pbx.status()
    assert not st.built and not st.running and st.pid is None
    assert pbx.live_leases() == []
    with pbx.lease():
        import os

        assert pbx.live_leases() == [os.getpid()]
    assert pbx.live_leases() == []
    # A lease left by a dead process is cleaned up, not counted.
    (tmp_path / ".pbx" / "leases" / "999999999").write_text("x")
    assert pbx.live_leases() == []
    with pytest.raises(DevPbxError, match="not running"):
        pbx.boot_log_lines()
