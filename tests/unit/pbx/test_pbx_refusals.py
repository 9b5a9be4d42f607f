"""The dev PBX refuses clearly: not root, no debootstrap, a port taken by a stranger, a stale
or reused pid, a root that does not match its stamp."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from ivr_engine.errors import DevPbxError
from ivr_engine.pbx import DevPbx, rootfs
from ivr_engine.pbx.rootfs import BuildSpec, build_root, require_build_tools, write_stamp

REPO = Path(__file__).resolve().parents[3]


def test_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(DevPbxError, match="needs root"):
        require_build_tools()


def test_no_debootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DevPbxError, match="debootstrap is not installed"):
        require_build_tools()


def test_build_never_wipes_a_root_that_does_not_match(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    stamp = tmp_path / "build.json"
    write_stamp(stamp, BuildSpec(suite="trixie"), seconds=1)
    with pytest.raises(DevPbxError, match="suite was 'trixie'.*make clean-pbx"):
        build_root(root, stamp, BuildSpec(), lambda _: None)
    assert (root / "etc").is_dir()  # untouched


def test_built_root_does_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    stamp = tmp_path / "build.json"
    write_stamp(stamp, BuildSpec(), seconds=1)
    said: list[str] = []
    assert build_root(root, stamp, BuildSpec(), said.append) is False
    assert said == []


def _conf_on_port(tmp_path: Path, ami: int, sip: int) -> Path:
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "asterisk-conf", conf)
    m = conf / "manager.conf"
    m.write_text(m.read_text().replace("port = 5038", f"port = {ami}"))
    p = conf / "pjsip.conf"
    p.write_text(p.read_text().replace("bind = 127.0.0.1:5060", f"bind = 127.0.0.1:{sip}"))
    return conf


def _free(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("taken", ["ami", "sip"])
def test_port_taken_by_someone_else(tmp_path: Path, taken: str) -> None:
    kind = socket.SOCK_STREAM if taken == "ami" else socket.SOCK_DGRAM
    holder = socket.socket(socket.AF_INET, kind)
    holder.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        holder.listen(1)
    port = holder.getsockname()[1]
    try:
        ami = port if taken == "ami" else _free(socket.SOCK_STREAM)
        sip = port if taken == "sip" else _free(socket.SOCK_DGRAM)
        pbx = DevPbx(
            root=tmp_path / ".pbx" / "root",
            conf_dirs=(_conf_on_port(tmp_path, ami, sip), REPO / "sip-trunk"),
            ami_user="ivr-engine",
            ami_secret="s",
        )
        with pytest.raises(DevPbxError) as info:
            pbx.check_ports_free()
        proto = "tcp" if taken == "ami" else "udp"
        assert f"127.0.0.1:{port}/{proto}" in str(info.value)
        assert "taken by another program" in str(info.value)
    finally:
        holder.close()
    pbx.check_ports_free()  # and free again once released


def test_stale_or_reused_pid_is_not_ours(tmp_path: Path) -> None:
    pbx = DevPbx(
        root=tmp_path / ".pbx" / "root",
        conf_dirs=(REPO / "asterisk-conf", REPO / "sip-trunk"),
        ami_user="ivr-engine",
        ami_secret="s",
    )
    (tmp_path / ".pbx").mkdir()
    # This very process: alive, but not an asterisk in that root.
    (tmp_path / ".pbx" / "run.json").write_text(f'{{"pid": {os.getpid()}, "mounts": []}}')
    assert pbx.status().running is False
    # down() then stops nothing (and certainly not us).
    assert pbx.down() is False
    assert not (tmp_path / ".pbx" / "run.json").exists()


def test_unreadable_run_state_is_reported(tmp_path: Path) -> None:
    pbx = DevPbx(
        root=tmp_path / ".pbx" / "root",
        conf_dirs=(REPO / "asterisk-conf", REPO / "sip-trunk"),
        ami_user="ivr-engine",
        ami_secret="s",
    )
    (tmp_path / ".pbx").mkdir()
    (tmp_path / ".pbx" / "run.json").write_text("{oops")
    with pytest.raises(DevPbxError, match="run.json is unreadable"):
        pbx.status()


def test_mounts_under_ignores_siblings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    text = (
        f"36 35 0:5 / {root}/proc rw - proc proc rw\n"
        f"37 35 0:6 / {root}2/proc rw - proc proc rw\n"
        f"38 35 0:7 / {root}/dev/pts rw - devpts devpts rw\n"
    )
    real_read = Path.read_text

    def fake_read(self: Path, *a: object, **k: object) -> str:
        if str(self) == "/proc/self/mountinfo":
            return text
        return real_read(self, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", fake_read)
    assert rootfs.mounts_under(root) == [f"{root}/dev/pts", f"{root}/proc"]


def test_clean_removes_state_but_never_through_a_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pbx = DevPbx(
        root=tmp_path / ".pbx" / "root",
        conf_dirs=(REPO / "asterisk-conf", REPO / "sip-trunk"),
        ami_user="ivr-engine",
        ami_secret="s",
    )
    (tmp_path / ".pbx" / "root" / "proc").mkdir(parents=True)
    mounted = [str(tmp_path / ".pbx" / "root" / "proc")]
    monkeypatch.setattr(rootfs, "mounts_under", lambda root: mounted)
    with pytest.raises(DevPbxError, match="not removing .*still mounted there"):
        pbx.clean()
    assert (tmp_path / ".pbx" / "root" / "proc").is_dir()
    mounted.clear()
    pbx.clean()
    assert not (tmp_path / ".pbx").exists()
