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
(a thread's reserved malloc arena, a stack, a mostly free arena) would waste memory. The cost
is one pass, about 2 s per GB the first time and next to nothing over memory already
collapsed. Memory allocated later is on small pages again until the next call, so a service
calls it after loading its roster and then now and then (`AcdSettings.huge_pages_every`).

It is an optimisation only: it never raises. Where the kernel, the platform or the setting
(`never`) does not allow it, the report says so and nothing changes. Measured by the ACD
benchmark (docs/acd.md, "Huge pages").
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

MADV_COLLAPSE = 25  # include/uapi/asm-generic/mman-common.h, Linux 6.1
PAGE = 4096
HUGE = 2 << 20  # with 4 KiB base pages (x86-64, most arm64) a PMD maps 2 MiB
MIN_RESIDENT = 0.75  # collapse a 2 MiB range only if at least this share of it is resident
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@dataclass(frozen=True)
class Collapse:
    """What one `collapse_heap()` did. `mode` is the kernel's THP setting (None: unknown or not
    Linux); `supported` is False when huge pages cannot be had at all (then `reason` says why)."""

    mode: str | None
    supported: bool
    collapsed_mb: float = 0.0
    ranges: int = 0  # runs of resident 2 MiB ranges collapsed (one madvise call each)
    sparse_mb: float = 0.0  # left alone: less than MIN_RESIDENT of it resident
    failures: dict[str, int] = field(default_factory=dict)  # errno name -> runs not collapsed
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
            found.append((int(lo, 16), int(hi, 16)))
    return found


# pagemap: one u64 per page, bit 63 "present" (Documentation/admin-guide/mm/pagemap.rst): in
# little-endian order, the top bit of each entry's last byte.
_PRESENT = bytes(b >> 7 for b in range(256))
_PER_HUGE = HUGE // PAGE


def resident_ranges(pagemap: BinaryIO, lo: int, hi: int) -> list[bool]:
    """For each 2 MiB range in [lo, hi) (both aligned): is at least MIN_RESIDENT of it resident?"""
    pagemap.seek(lo // PAGE * 8)
    data = pagemap.read((hi - lo) // PAGE * 8)
    top = data[7::8] if sys.byteorder == "little" else data[0::8]
    need = MIN_RESIDENT * _PER_HUGE
    return [
        top[i : i + _PER_HUGE].translate(_PRESENT).count(1) >= need
        for i in range(0, len(top), _PER_HUGE)
    ]


def _madvise() -> ctypes._FuncPointer | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def collapse_heap(*, proc: Path = Path("/proc/self")) -> Collapse:
    """Collapse this process's resident anonymous memory into huge pages (see above)."""
    if not sys.platform.startswith("linux"):
        return Collapse(None, False, reason=f"not Linux ({sys.platform})")
    mode = thp_mode()
    if mode is None or mode == "never":
        return Collapse(mode, False, reason=f"transparent huge pages are {mode or 'absent'}")
    if os.sysconf("SC_PAGE_SIZE") != PAGE:
        return Collapse(mode, False, reason="base pages are not 4 KiB")
    madvise = _madvise()
    if madvise is None:
        return Collapse(mode, False, reason="no madvise in the C library")
    started = time.perf_counter()
    try:
        mappings = anonymous_mappings((proc / "maps").read_text())
        pagemap = (proc / "pagemap").open("rb", buffering=0)
    except OSError as exc:
        return Collapse(mode, False, reason=f"cannot read {exc.filename}: {exc.strerror}")
    collapsed = sparse = runs = 0
    failures: dict[str, int] = {}
    with pagemap:
        for start, end in mappings:
            lo = (start + HUGE - 1) & ~(HUGE - 1)
            hi = end & ~(HUGE - 1)
            if hi <= lo:
                continue  # no whole huge page fits inside
            try:
                dense = resident_ranges(pagemap, lo, hi)
            except OSError:
                continue  # unmapped meanwhile (another thread freed it)
            sparse += dense.count(False)
            i = 0
            while i < len(dense):
                if not dense[i]:
                    i += 1
                    continue
                j = i
                while j < len(dense) and dense[j]:
                    j += 1
                at, size = lo + i * HUGE, (j - i) * HUGE
                i = j
                if madvise(at, size, MADV_COLLAPSE) == 0:
                    collapsed += size
                    runs += 1
                    continue
                err = ctypes.get_errno()
                if err == errno.EINVAL and not runs and not failures:
                    # The first call refused outright: a kernel before 6.1.
                    return Collapse(mode, False, reason="no MADV_COLLAPSE (Linux < 6.1)")
                # EAGAIN (pages busy), ENOMEM (no free huge page), EINVAL (the mapping changed
                # under us): that run stays on small pages.
                name = errno.errorcode.get(err, str(err))
                failures[name] = failures.get(name, 0) + 1
    return Collapse(
        mode,
        True,
        collapsed_mb=round(collapsed / (1 << 20), 1),
        ranges=runs,
        sparse_mb=round(sparse * HUGE / (1 << 20), 1),
        failures=failures,
        seconds=round(time.perf_counter() - started, 3),
    )
