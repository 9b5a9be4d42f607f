"""Back a long-lived process's heap with 2 MiB pages (Linux transparent huge pages).

A matcher for 100,000 agents keeps about 600 MB of small Python objects (agents, heap entries,
idle items) on 4 KiB pages. Its decisions touch a few dozen of them at random, so most touches
miss the TLB, and in a virtual machine every miss is a two-level page walk (guest, then host).
On 2 MiB pages the same memory needs 512 times fewer TLB entries. CPython learned to ask for
them itself in 3.15 (python/cpython#144319: pymalloc's arenas get `madvise(MADV_HUGEPAGE)`);
the 3.11 we run on does not, and with the kernel's usual setting (`madvise`) a process gets huge
pages only where it asks for them.

`collapse_heap()` asks: `madvise(MADV_COLLAPSE)` (Linux 6.1) over the process's anonymous
read-write memory, a synchronous copy into huge pages that works under the `madvise` setting
without any system change. Only 2 MiB ranges that are mostly resident (by /proc/self/pagemap)
are collapsed: the kernel fills a collapsed range's missing pages, so collapsing a sparse one
(a thread's reserved malloc arena, a mostly free arena) would waste memory. The first pass
copies about 2 s per GB; memory already collapsed costs next to nothing. While a range is being
copied, a thread touching it waits (microseconds per range). Memory allocated later is on small
pages again until the next call, so a service calls it once its agents are in and then now and
then (`AcdSettings.huge_pages_every`).

It is an optimisation only: it never raises. Where the kernel, the platform or the setting
(`never`, or the process's `PR_SET_THP_DISABLE`) does not allow it, the report says so and
nothing changes. Measured by the ACD benchmark (docs/acd.md, "Huge pages").
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MADV_COLLAPSE = 25  # include/uapi/asm-generic/mman-common.h, Linux 6.1
PAGE = 4096
HUGE = 2 << 20  # with 4 KiB base pages (x86-64, most arm64) a PMD maps 2 MiB
MIN_RESIDENT = 0.75  # collapse a 2 MiB range only if at least this share of it is resident
CHUNK = 32  # huge pages per pagemap read and per madvise call: bounded memory, prompt stop
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
PROC = Path("/proc/self")

Madvise = Callable[[int, int, int], int]


@dataclass(frozen=True)
class Collapse:
    """What one `collapse_heap()` did. `mode` is the kernel's THP setting (None: unknown or not
    Linux); `supported` is False when huge pages cannot be had at all (then `reason` says why).
    `failures` counts the madvise calls refused, by errno name (EAGAIN: pages busy; ENOMEM: no
    free huge page; EINVAL: an area that cannot have them); those ranges stay on 4 KiB pages."""

    mode: str | None
    supported: bool
    collapsed_mb: float = 0.0
    sparse_mb: float = 0.0  # left alone: less than MIN_RESIDENT of it resident
    failures: tuple[tuple[str, int], ...] = ()
    seconds: float = 0.0
    stopped: bool = False  # asked to stop before the end
    reason: str = ""


def thp_mode(path: Path = THP_ENABLED) -> str | None:
    """The kernel's transparent huge page setting: always, madvise or never (None: no THP)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def anonymous_mappings(maps: str) -> list[tuple[int, int]]:
    """(start, end) of the private read-write mappings backed by no file (pymalloc's arenas,
    malloc's heap), from /proc/<pid>/maps or smaps text."""
    found: list[tuple[int, int]] = []
    for line in maps.splitlines():
        head, _, rest = line.partition(" ")
        if "-" not in head or head.endswith(":"):
            continue  # an smaps detail line
        fields = rest.split()  # perms offset dev inode [path]
        anonymous = len(fields) >= 4 and fields[3] == "0"
        path = fields[4] if len(fields) > 4 else ""
        if fields[:1] == ["rw-p"] and anonymous and path in ("", "[heap]"):
            lo, _, hi = head.partition("-")
            try:
                found.append((int(lo, 16), int(hi, 16)))
            except ValueError:
                continue
    return found


# pagemap: one u64 per page, bit 63 "present" (Documentation/admin-guide/mm/pagemap.rst): in
# little-endian order, the top bit of each entry's last byte.
_PRESENT = bytes(b >> 7 for b in range(256))
_PER_HUGE = HUGE // PAGE


def resident_ranges(data: bytes) -> list[bool]:
    """Given the pagemap entries of whole 2 MiB ranges, whether each is at least MIN_RESIDENT
    resident. Entries missing at the end (a short read: unmapped meanwhile) count as absent."""
    top = data[7::8] if sys.byteorder == "little" else data[0::8]
    need = MIN_RESIDENT * _PER_HUGE
    return [
        top[i : i + _PER_HUGE].translate(_PRESENT).count(1) >= need
        for i in range(0, len(top), _PER_HUGE)
    ]


@functools.cache
def _libc_madvise() -> Madvise | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _thp_disabled_by_prctl(proc: Path) -> bool:
    try:
        status = (proc / "status").read_bytes().decode("ascii", "replace")
    except OSError:
        return False
    return any(line.split() == ["THP_enabled:", "0"] for line in status.splitlines())


def availability(proc: Path = PROC) -> tuple[str | None, str]:
    """(THP mode, why not) for this process: an empty reason means collapse_heap can work."""
    if not sys.platform.startswith("linux"):
        return None, f"not Linux ({sys.platform})"
    mode = thp_mode()
    if mode is None or mode == "never":
        return mode, f"transparent huge pages are {mode or 'absent'}"
    if os.sysconf("SC_PAGE_SIZE") != PAGE:
        return mode, "base pages are not 4 KiB"
    if _thp_disabled_by_prctl(proc):
        return mode, "disabled for this process (PR_SET_THP_DISABLE)"
    madvise = _libc_madvise()
    if madvise is None:
        return mode, "no madvise in the C library"
    # A zero-length call succeeds where the advice is known; kernels before 6.1 refuse it.
    if madvise(0, 0, MADV_COLLAPSE) != 0:
        return mode, "no MADV_COLLAPSE (Linux < 6.1)"
    return mode, ""


def collapse_heap(*, proc: Path = PROC, stop: threading.Event | None = None) -> Collapse:
    """Collapse this process's resident anonymous memory into huge pages (see above). `stop`,
    when set by another thread, ends the pass after the current range."""
    started = time.perf_counter()
    mode = None
    try:
        mode, why_not = availability(proc)
        madvise = _libc_madvise()
        if why_not or madvise is None:
            return Collapse(mode, False, reason=why_not or "no madvise in the C library")
        return _collapse(madvise, mode, proc, stop, started)
    except Exception as exc:  # an optimisation must not take its caller down
        return Collapse(mode, False, reason=f"{type(exc).__name__}: {exc}")


def _collapse(
    madvise: Madvise, mode: str | None, proc: Path, stop: threading.Event | None, started: float
) -> Collapse:
    try:
        maps = (proc / "maps").read_bytes().decode("ascii", "replace")
        fd = os.open(proc / "pagemap", os.O_RDONLY)
    except OSError as exc:
        return Collapse(mode, False, reason=f"cannot read {exc.filename}: {exc.strerror}")
    collapsed = sparse = 0
    failures: dict[str, int] = {}
    stopped = False
    try:
        for start, end in anonymous_mappings(maps):
            lo = (start + HUGE - 1) & ~(HUGE - 1)
            hi = end & ~(HUGE - 1)
            for at in range(lo, hi, CHUNK * HUGE):
                if stop is not None and stop.is_set():
                    stopped = True
                    break
                size = min(CHUNK * HUGE, hi - at)
                try:
                    dense = resident_ranges(os.pread(fd, size // PAGE * 8, at // PAGE * 8))
                except OSError:
                    dense = []
                dense += [False] * (size // HUGE - len(dense))
                sparse += dense.count(False)
                for run_at, run_size in _runs(dense, at):
                    if madvise(run_at, run_size, MADV_COLLAPSE) == 0:
                        collapsed += run_size
                    else:
                        name = errno.errorcode.get(ctypes.get_errno(), "unknown")
                        failures[name] = failures.get(name, 0) + 1
            if stopped:
                break
    finally:
        os.close(fd)
    return Collapse(
        mode,
        True,
        collapsed_mb=round(collapsed / (1 << 20), 1),
        sparse_mb=round(sparse * HUGE / (1 << 20), 1),
        failures=tuple(sorted(failures.items())),
        seconds=round(time.perf_counter() - started, 3),
        stopped=stopped,
    )


def _runs(dense: list[bool], base: int) -> list[tuple[int, int]]:
    """(address, size) of each run of resident 2 MiB ranges, the first at `base`."""
    runs: list[tuple[int, int]] = []
    at = base
    for resident, group in itertools.groupby(dense):
        size = sum(1 for _ in group) * HUGE
        if resident:
            runs.append((at, size))
        at += size
    return runs
