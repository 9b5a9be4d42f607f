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
without any system change. Only mappings that are mostly resident are collapsed: collapsing a
sparse one (a thread's reserved malloc arena, a stack) would make its untouched pages resident.
The cost is one pass, about 2 s per GB the first time and next to nothing over memory already
collapsed. Memory allocated later is on small pages again until the next call, so a service
calls it after loading its roster and then now and then (`AcdSettings.huge_pages_every`).

It is an optimisation only: it never raises. Where the kernel, the platform or the setting
(`never`) does not allow it, the report says so and nothing changes. Measured by the ACD
benchmark (docs/acd.md): per-event cost at 100,000 agents -12%, at 1,000 agents -4%.
"""

from __future__ import annotations

import ctypes
import errno
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MADV_COLLAPSE = 25  # include/uapi/asm-generic/mman-common.h, Linux 6.1
HUGE = 2 << 20  # x86-64 and arm64 (4 KiB base pages): a PMD maps 2 MiB
MIN_RESIDENT = 0.75  # collapse a mapping only if at least this share of it is resident
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@dataclass(frozen=True)
class Collapse:
    """What one `collapse_heap()` did. `mode` is the kernel's THP setting (None: unknown or not
    Linux); `supported` is False when huge pages cannot be had at all (then `reason` says why)."""

    mode: str | None
    supported: bool
    collapsed_mb: float = 0.0
    mappings: int = 0  # anonymous read-write mappings collapsed
    sparse: int = 0  # left alone: less than MIN_RESIDENT of them resident
    failures: dict[str, int] = field(default_factory=dict)  # errno name -> mappings
    seconds: float = 0.0
    reason: str = ""


def thp_mode(path: Path = THP_ENABLED) -> str | None:
    """The kernel's transparent huge page setting: always, madvise or never (None: no THP)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


@dataclass
class _Mapping:
    start: int
    end: int
    resident_kb: int = 0


def _anonymous_mappings(smaps: str) -> list[_Mapping]:
    """Private read-write mappings backed by no file (pymalloc's arenas, malloc's heap)."""
    found: list[_Mapping] = []
    current: _Mapping | None = None
    for line in smaps.splitlines():
        head, _, rest = line.partition(" ")
        if "-" in head and not head.endswith(":"):
            fields = rest.split()
            # perms offset dev inode [path]
            anonymous = len(fields) >= 4 and fields[3] == "0"
            path = fields[4] if len(fields) > 4 else ""
            if fields[:1] == ["rw-p"] and anonymous and path in ("", "[heap]"):
                lo, _, hi = head.partition("-")
                current = _Mapping(int(lo, 16), int(hi, 16))
                found.append(current)
            else:
                current = None
        elif current is not None and head == "Rss:":
            current.resident_kb = int(rest.split()[0])
    return found


def _madvise() -> ctypes._FuncPointer | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def collapse_heap(*, smaps: Path = Path("/proc/self/smaps")) -> Collapse:
    """Collapse this process's mostly-resident anonymous memory into huge pages (see above)."""
    if not sys.platform.startswith("linux"):
        return Collapse(None, False, reason=f"not Linux ({sys.platform})")
    mode = thp_mode()
    if mode is None or mode == "never":
        return Collapse(mode, False, reason=f"transparent huge pages are {mode or 'absent'}")
    madvise = _madvise()
    if madvise is None:
        return Collapse(mode, False, reason="no madvise in the C library")
    started = time.perf_counter()
    try:
        mappings = _anonymous_mappings(smaps.read_text())
    except OSError as exc:
        return Collapse(mode, False, reason=f"cannot read {smaps}: {exc.strerror}")
    collapsed = 0
    done = sparse = 0
    failures: dict[str, int] = {}
    for mapping in mappings:
        lo = (mapping.start + HUGE - 1) & ~(HUGE - 1)
        hi = mapping.end & ~(HUGE - 1)
        if hi <= lo:
            continue  # no whole huge page fits inside
        if mapping.resident_kb * 1024 < MIN_RESIDENT * (mapping.end - mapping.start):
            sparse += 1
            continue
        if madvise(lo, hi - lo, MADV_COLLAPSE) == 0:
            collapsed += hi - lo
            done += 1
            continue
        err = ctypes.get_errno()
        if err == errno.EINVAL:  # a kernel before 6.1: no MADV_COLLAPSE
            return Collapse(mode, False, reason="the kernel has no MADV_COLLAPSE (Linux < 6.1)")
        # EAGAIN (pages busy), ENOMEM (no free huge page): a part stays on small pages.
        name = errno.errorcode.get(err, str(err))
        failures[name] = failures.get(name, 0) + 1
    return Collapse(
        mode,
        True,
        collapsed_mb=round(collapsed / (1 << 20), 1),
        mappings=done,
        sparse=sparse,
        failures=failures,
        seconds=round(time.perf_counter() - started, 3),
    )


def resident_huge_mb(smaps: Path = Path("/proc/self/smaps_rollup")) -> float | None:
    """This process's anonymous memory on huge pages now, in MB (None: not known)."""
    try:
        text = smaps.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("AnonHugePages:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None
