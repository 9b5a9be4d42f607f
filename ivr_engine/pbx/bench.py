"""`ivr-engine pbx bench`: how long `pbx up` takes, against Asterisk's own boot time.

The budgets (issue 2): cold `up` (nothing built) under 180 s, warm `up` (built, not running)
under 20 s. The baseline, measured in the same run on the same root: Asterisk alone, started
by hand in the chroot and probed for FullyBooted, with the tooling's work (config install,
mounts, port checks, stamp check, lock) left out. The ratio warm/baseline is the tooling's
overhead.

Waits until the dev PBX is down before timing (it restarts Asterisk many times) and leaves
it down.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass

from ivr_engine.errors import DevPbxError
from ivr_engine.pbx import rootfs
from ivr_engine.pbx.devpbx import DevPbx
from ivr_engine.pbx.rootfs import CHROOT_ENV

WARM_BUDGET = 20.0
COLD_BUDGET = 180.0


@dataclass(frozen=True)
class Timing:
    name: str
    samples: tuple[float, ...]
    budget: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def worst(self) -> float:
        return max(self.samples)


def _raw_boot(pbx: DevPbx) -> float:
    """Asterisk alone: exec it in the prepared root, wait for FullyBooted, stop it."""
    argv = rootfs.chroot_argv(pbx.root, ["/usr/sbin/asterisk", "-f", "-n"])
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=CHROOT_ENV,
        start_new_session=True,
    )
    try:
        pbx.wait_booted(timeout=60.0)
        took = time.monotonic() - t0
        pbx.cli("core stop now", timeout=10.0)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    return took


def run(pbx: DevPbx, *, runs: int, cold: bool) -> list[Timing]:
    if runs < 1:
        raise DevPbxError("bench needs at least one run")
    scratch: DevPbx | None = None
    build_seconds = 0.0
    try:
        if cold:
            # The slow part (debootstrap + apt) needs no port; time it first.
            scratch = _scratch(pbx)
            t0 = time.monotonic()
            scratch.build()
            build_seconds = time.monotonic() - t0
        return _measure(pbx, runs=runs, scratch=scratch, build_seconds=build_seconds)
    finally:
        if scratch is not None:
            _remove_scratch(scratch)


def _measure(
    pbx: DevPbx, *, runs: int, scratch: DevPbx | None, build_seconds: float
) -> list[Timing]:
    _wait_down(pbx, timeout=600.0)
    results: list[Timing] = []
    if scratch is not None:
        first_start = scratch.up().seconds
        scratch.down(force=True)
        results.append(
            Timing("cold up (build + first start)", (build_seconds + first_start,), COLD_BUDGET)
        )
    pbx.build()
    warm: list[float] = []
    again: list[float] = []
    down: list[float] = []
    for _ in range(runs):
        warm.append(pbx.up().seconds)
        again.append(pbx.up().seconds)
        t0 = time.monotonic()
        pbx.down()
        down.append(time.monotonic() - t0)
    # Baseline: the root is prepared once by `up`; Asterisk is stopped without `down`, so the
    # mounts and config stay for the raw starts; `down` afterwards undoes the mounts.
    pbx.up()
    pbx.cli("core stop now", timeout=10.0)
    deadline = time.monotonic() + 15
    while pbx.status().running and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        baseline = [_raw_boot(pbx) for _ in range(runs)]
    finally:
        pbx.down()
    return [
        Timing("asterisk alone (baseline)", tuple(baseline)),
        *results,
        Timing("warm up (built, not running)", tuple(warm), WARM_BUDGET),
        Timing("up when already up", tuple(again)),
        Timing("down", tuple(down)),
    ]


def _wait_down(pbx: DevPbx, *, timeout: float) -> None:
    """The bench restarts Asterisk many times: wait until nobody runs the dev PBX."""
    deadline = time.monotonic() + timeout
    told = False
    while pbx.status().running:
        if time.monotonic() > deadline:
            raise DevPbxError(
                "the dev PBX stayed up (in use by others?); `ivr-engine pbx down` and retry"
            )
        if not told:
            pbx.progress("pbx bench: waiting for the running dev PBX to be stopped by its user")
            told = True
        time.sleep(2.0)


def _scratch(pbx: DevPbx) -> DevPbx:
    """A DevPbx whose root is a scratch folder next to the real one (removed afterwards)."""
    folder = pbx.state_dir / "bench-cold"
    if folder.exists():
        if rootfs.mounts_under(folder):
            raise DevPbxError(f"something is mounted under {folder}; unmount it first")
        shutil.rmtree(folder)
    return DevPbx(
        root=folder / "root",
        conf_dirs=pbx.conf_dirs,
        ami_user=pbx.ami_user,
        ami_secret=pbx.ami_secret,
        spec=pbx.spec,
        progress=pbx.progress,
    )


def _remove_scratch(scratch: DevPbx) -> None:
    scratch.down(force=True)
    if rootfs.mounts_under(scratch.state_dir):
        raise DevPbxError(f"left {scratch.state_dir} in place: something is still mounted there")
    shutil.rmtree(scratch.state_dir, ignore_errors=True)


def report(results: list[Timing]) -> list[str]:
    base = results[0].median if results and results[0].name.startswith("asterisk") else None
    lines = [
        f"{'measure':<32} {'runs':>4} {'median s':>9} {'worst s':>8} {'budget s':>9} "
        f"{'x baseline':>10}"
    ]
    for t in results:
        ratio = f"{t.median / base:.2f}" if base else "-"
        budget = f"{t.budget:.0f}" if t.budget else "-"
        verdict = ""
        if t.budget is not None:
            verdict = "  ok" if t.worst < t.budget else "  OVER BUDGET"
        lines.append(
            f"{t.name:<32} {len(t.samples):>4} {t.median:>9.2f} {t.worst:>8.2f} "
            f"{budget:>9} {ratio:>10}{verdict}"
        )
    return lines


def within_budget(results: list[Timing]) -> bool:
    return all(t.budget is None or t.worst < t.budget for t in results)
