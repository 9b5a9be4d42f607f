"""Build stamp logic and the command lines the builder runs (no debootstrap here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ivr_engine.errors import DevPbxError
from ivr_engine.pbx.rootfs import (
    PACKAGES,
    BuildSpec,
    apt_install_argv,
    check_stamp,
    chroot_argv,
    debootstrap_argv,
    mounts_under,
    read_stamp,
    write_stamp,
)

SPEC = BuildSpec()


def test_default_spec_is_sid_minbase_with_asterisk_sounds_and_sipp() -> None:
    assert (SPEC.suite, SPEC.variant, SPEC.mirror) == (
        "sid",
        "minbase",
        "http://deb.debian.org/debian",
    )
    assert set(PACKAGES) == {"asterisk", "asterisk-core-sounds-en-gsm", "sip-tester"}


def test_no_stamp_no_root_builds_everything() -> None:
    check = check_stamp(None, SPEC, root_exists=False)
    assert check.action == "full"
    assert check.missing == tuple(sorted(PACKAGES))


def test_root_without_stamp_is_a_mismatch_not_a_silent_rebuild() -> None:
    check = check_stamp(None, SPEC, root_exists=True)
    assert check.action == "mismatch" and "interrupted" in check.reason


def test_same_stamp_does_nothing_and_order_does_not_matter() -> None:
    stamp = SPEC.stamp()
    stamp["packages"] = list(reversed(stamp["packages"]))
    assert check_stamp(stamp, SPEC, root_exists=True).action == "none"


def test_new_package_installs_only_what_is_missing() -> None:
    bigger = BuildSpec(packages=(*PACKAGES, "procps"))
    check = check_stamp(SPEC.stamp(), bigger, root_exists=True)
    assert check.action == "install" and check.missing == ("procps",)


@pytest.mark.parametrize("key", ["suite", "variant", "mirror", "format"])
def test_changed_base_is_a_mismatch(key: str) -> None:
    stamp = SPEC.stamp()
    stamp[key] = "other"
    check = check_stamp(stamp, SPEC, root_exists=True)
    assert check.action == "mismatch" and key in check.reason


def test_stamp_naming_a_vanished_root_rebuilds() -> None:
    assert check_stamp(SPEC.stamp(), SPEC, root_exists=False).action == "full"


def test_stamp_round_trip_and_bad_stamps(tmp_path: Path) -> None:
    path = tmp_path / "build.json"
    assert read_stamp(path) is None
    write_stamp(path, SPEC, seconds=71.234)
    data = read_stamp(path)
    assert data is not None
    assert data["built_in_seconds"] == 71.2
    assert check_stamp(data, SPEC, root_exists=True).action == "none"
    path.write_text("{not json")
    with pytest.raises(DevPbxError, match="unreadable build stamp"):
        read_stamp(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(DevPbxError, match="not a JSON object"):
        read_stamp(path)


def test_command_lines() -> None:
    assert debootstrap_argv(SPEC, Path("/x/root.partial")) == [
        "debootstrap", "--variant=minbase", "sid", "/x/root.partial", "http://deb.debian.org/debian",
    ]  # fmt: skip
    assert chroot_argv(Path("/r"), ["asterisk", "-rx", "core show uptime"]) == [
        "chroot", "/r", "asterisk", "-rx", "core show uptime",
    ]  # fmt: skip
    assert apt_install_argv(["asterisk", "sip-tester"])[-2:] == ["asterisk", "sip-tester"]
    assert "--no-install-recommends" in apt_install_argv(["asterisk"])


@pytest.mark.parametrize("bad", [[], ["-o=evil"], ["two words"], [""]])
def test_apt_install_refuses_non_package_names(bad: list[str]) -> None:
    with pytest.raises(DevPbxError):
        apt_install_argv(bad)


def test_chroot_needs_a_command() -> None:
    with pytest.raises(DevPbxError):
        chroot_argv(Path("/r"), [])


def test_mounts_under_finds_nothing_for_a_fresh_folder(tmp_path: Path) -> None:
    assert mounts_under(tmp_path) == []
    # /proc is a mount point on any Linux host: found, by its own path.
    assert "/proc" in mounts_under(Path("/proc"))
