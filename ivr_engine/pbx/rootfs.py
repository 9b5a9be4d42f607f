"""Building the dev PBX root: Debian sid, minbase, with Asterisk 22 and SIPp from Debian.

Built once into `.pbx/root` and recorded in a stamp (`.pbx/build.json`) that names the suite,
mirror, variant and package list. A second build with the same stamp does nothing; a longer
package list installs only what is new; a different suite or mirror asks for a clean build
(never an automatic `rm -rf` of a root that may still have mounts under it).

Facts seen on these machines: debootstrap sid takes about 20-30 s, the package install about
10-30 s; sid's Release files may be past Valid-Until, so apt inside the root runs with
Acquire::Check-Valid-Until=false; a policy-rc.d that exits 101 keeps services from starting
during the install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ivr_engine.errors import DevPbxError

Progress = Callable[[str], None]

STAMP_FORMAT = 1
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES: tuple[str, ...] = ("asterisk", "asterisk-core-sounds-en-gsm", "sip-tester")

# Environment for commands inside the root: nothing of the caller's leaks in (virtualenv,
# proxies, locale settings that the root has no data for).
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}

APT_CONF = """\
// Written by ivr-engine pbx build.
Acquire::Check-Valid-Until "false";
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Dpkg::Use-Pty "false";
"""

POLICY_RC_D = (
    "#!/bin/sh\n# ivr-engine dev PBX: never start services from package scripts.\nexit 101\n"
)

DEBOOTSTRAP_TIMEOUT = 900.0
APT_TIMEOUT = 900.0


@dataclass(frozen=True)
class BuildSpec:
    suite: str = "sid"
    variant: str = "minbase"
    mirror: str = DEFAULT_MIRROR
    packages: tuple[str, ...] = PACKAGES

    def stamp(self) -> dict[str, Any]:
        data = asdict(self)
        data["packages"] = sorted(set(self.packages))
        data["format"] = STAMP_FORMAT
        return data


@dataclass(frozen=True)
class StampCheck:
    """What a build must do, given the stamp on disk."""

    action: str  # "none" | "install" | "full" | "mismatch"
    missing: tuple[str, ...] = field(default=())
    reason: str = ""


def check_stamp(stamp: dict[str, Any] | None, spec: BuildSpec, *, root_exists: bool) -> StampCheck:
    """Decide what to build. Pure: the stamp as read from disk (None when absent)."""
    if stamp is None:
        if root_exists:
            return StampCheck(
                "mismatch", reason="the root exists but has no build stamp (an interrupted build?)"
            )
        return StampCheck("full", missing=tuple(sorted(set(spec.packages))))
    if not root_exists:
        return StampCheck(
            "full",
            missing=tuple(sorted(set(spec.packages))),
            reason="the stamp names a root that is gone",
        )
    want = spec.stamp()
    for key in ("format", "suite", "variant", "mirror"):
        if stamp.get(key) != want[key]:
            return StampCheck("mismatch", reason=f"{key} was {stamp.get(key)!r}, now {want[key]!r}")
    have = stamp.get("packages")
    if not isinstance(have, list):
        return StampCheck("mismatch", reason="the stamp's package list is unreadable")
    missing = tuple(p for p in want["packages"] if p not in have)
    if missing:
        return StampCheck("install", missing=missing)
    return StampCheck("none")


def debootstrap_argv(spec: BuildSpec, target: Path) -> list[str]:
    return ["debootstrap", f"--variant={spec.variant}", spec.suite, str(target), spec.mirror]


def chroot_argv(root: Path, argv: Sequence[str]) -> list[str]:
    if not argv:
        raise DevPbxError("no command to run in the root")
    return ["chroot", str(root), *argv]


def apt_install_argv(packages: Sequence[str]) -> list[str]:
    if not packages:
        raise DevPbxError("no packages to install")
    for p in packages:
        if not p or p.startswith("-") or any(c.isspace() for c in p):
            raise DevPbxError(f"not a package name: {p!r}")
    return ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]


def read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DevPbxError(
            f"{path}: unreadable build stamp ({exc}); remove it and rebuild"
        ) from None
    if not isinstance(data, dict):
        raise DevPbxError(f"{path}: the build stamp is not a JSON object")
    return data


def write_stamp(path: Path, spec: BuildSpec, *, seconds: float) -> None:
    data = spec.stamp()
    data["built_in_seconds"] = round(seconds, 1)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _run_logged(
    argv: list[str], *, log: Path, timeout: float, what: str, env: dict[str, str] | None = None
) -> None:
    with log.open("ab") as fh:
        fh.write(f"\n$ {' '.join(argv)}\n".encode())
        fh.flush()
        try:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DevPbxError(f"{what} took longer than {timeout:.0f} s; see {log}") from None
        except OSError as exc:
            raise DevPbxError(f"{what} could not run: {exc}") from None
    if proc.returncode != 0:
        raise DevPbxError(
            f"{what} failed (exit {proc.returncode}); last lines of {log}:\n" + tail(log, 15)
        )


def tail(path: Path, n: int) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def require_build_tools() -> None:
    if os.geteuid() != 0:
        raise DevPbxError("the dev PBX needs root (chroot, mount): run as root or with sudo")
    if shutil.which("debootstrap") is None:
        raise DevPbxError(
            "debootstrap is not installed: apt-get install debootstrap (`make setup` does it)"
        )


def _prepare_apt(root: Path) -> None:
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    (root / "etc/apt/apt.conf.d/99ivr-engine").write_text(APT_CONF)
    # The host's resolver for the package download; `up` replaces it with an empty one.
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")


def _apt_install(root: Path, packages: Sequence[str], log: Path, progress: Progress) -> None:
    _prepare_apt(root)
    t0 = time.monotonic()
    progress("pbx build: apt-get update in the root")
    _run_logged(
        chroot_argv(root, ["apt-get", "update", "-q"]),
        log=log,
        timeout=APT_TIMEOUT,
        what="apt-get update in the dev PBX root",
        env=CHROOT_ENV,
    )
    progress(f"pbx build: installing {' '.join(packages)} (about 10-40 s)")
    _run_logged(
        chroot_argv(root, apt_install_argv(packages)),
        log=log,
        timeout=APT_TIMEOUT,
        what="apt-get install in the dev PBX root",
        env=CHROOT_ENV,
    )
    _run_logged(
        chroot_argv(root, ["apt-get", "clean"]),
        log=log,
        timeout=120,
        what="apt-get clean",
        env=CHROOT_ENV,
    )
    progress(f"pbx build: packages installed in {time.monotonic() - t0:.1f} s")


def build_root(root: Path, stamp_path: Path, spec: BuildSpec, progress: Progress) -> bool:
    """Build or complete the root. Returns True when something was done."""
    check = check_stamp(read_stamp(stamp_path), spec, root_exists=root.exists())
    if check.action == "none":
        return False
    if check.action == "mismatch":
        raise DevPbxError(
            f"the dev PBX root at {root} does not match this build: "
            f"{check.reason}. Run `make clean-pbx` (pbx down, then remove .pbx) "
            "and build again"
        )
    require_build_tools()
    log = stamp_path.parent / "build.log"
    t0 = time.monotonic()
    if check.action == "install":
        progress(f"pbx build: adding {' '.join(check.missing)} to {root}")
        _apt_install(root, check.missing, log, progress)
        write_stamp(stamp_path, spec, seconds=time.monotonic() - t0)
        return True
    partial = root.with_name(root.name + ".partial")
    if partial.exists():
        _remove_partial(partial)
    partial.parent.mkdir(parents=True, exist_ok=True)
    progress(
        f"pbx build: debootstrap {spec.suite} ({spec.variant}) from {spec.mirror} into "
        f"{partial} (about 30 s; log in {log})"
    )
    _run_logged(
        debootstrap_argv(spec, partial), log=log, timeout=DEBOOTSTRAP_TIMEOUT, what="debootstrap"
    )
    progress(f"pbx build: base system ready in {time.monotonic() - t0:.1f} s")
    _apt_install(partial, sorted(set(spec.packages)), log, progress)
    partial.rename(root)
    seconds = time.monotonic() - t0
    write_stamp(stamp_path, spec, seconds=seconds)
    progress(f"pbx build: root built in {seconds:.1f} s")
    return True


def _remove_partial(partial: Path) -> None:
    """Remove an interrupted build, refusing if anything is mounted inside it."""
    real = str(partial.resolve())
    for mnt in mounts_under(Path(real)):
        raise DevPbxError(
            f"{mnt} is mounted inside the unfinished root {partial}; unmount it first"
        )
    shutil.rmtree(partial)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root` (from /proc/self/mountinfo), deepest first."""
    prefix = str(root.resolve())
    found: list[str] = []
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return found
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        point = parts[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)
