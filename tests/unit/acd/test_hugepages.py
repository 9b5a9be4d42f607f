"""Huge pages for the heap (acd/hugepages.py), on this machine's real kernel."""

from __future__ import annotations

import asyncio
import ctypes
import io
import logging
import mmap
import platform
import re
from pathlib import Path

import pytest

from acd import hugepages
from acd.hugepages import anonymous_mappings, collapse_heap, resident_ranges, thp_mode
from ivr_engine.acd_gateway import AcdService
from ivr_engine.config import AcdSettings, AmiSettings
from ivr_engine.transport.ami import AmiClient
from tests.unit.acd.test_router_gateway import ROSTER, Recorder

SMAPS = """\
55d0c0000000-55d0c4000000 rw-p 00000000 00:00 0                          [heap]
Size:              65536 kB
Rss:               65000 kB
7f0000000000-7f0000400000 rw-p 00000000 00:00 0
Size:               4096 kB
Rss:                  12 kB
7f0000400000-7f0000600000 rw-p 00001000 08:01 1234                       /usr/lib/libx.so
Size:               2048 kB
Rss:                2048 kB
7f0000600000-7f0000a00000 r--p 00000000 00:00 0
Size:               4096 kB
Rss:                4096 kB
7ffc00000000-7ffc00200000 rw-p 00000000 00:00 0                          [stack]
Size:               2048 kB
Rss:                2048 kB
"""


def _kernel_has_collapse() -> bool:
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    return (major, minor) >= (6, 1) and thp_mode() in ("always", "madvise")


def test_only_anonymous_read_write_memory_is_considered() -> None:
    assert anonymous_mappings(SMAPS) == [
        (0x55D0C0000000, 0x55D0C4000000),
        (0x7F0000000000, 0x7F0000400000),
    ]


def test_a_range_counts_as_resident_from_three_quarters_of_its_pages() -> None:
    present, absent = (1 << 63).to_bytes(8, "little"), bytes(8)
    pages = [present] * 384 + [absent] * 128  # 75 %: collapse
    pages += [present] * 383 + [absent] * 129  # just under: leave alone
    pagemap = io.BytesIO(bytes(4096 * 8) + b"".join(pages))
    assert resident_ranges(pagemap, 4096 * 4096, 4096 * 4096 + 2 * (2 << 20)) == [True, False]


def test_thp_mode_reads_the_bracketed_word(tmp_path: Path) -> None:
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert thp_mode(setting) == "madvise"
    setting.write_text("[never]\n")
    assert thp_mode(setting) == "never"
    assert thp_mode(tmp_path / "missing") is None


def test_an_unreadable_memory_map_is_reported_not_raised(tmp_path: Path) -> None:
    if not _kernel_has_collapse():
        pytest.fail("this test needs Linux 6.1+ with transparent huge pages (CI runs on one)")
    result = collapse_heap(proc=tmp_path)
    assert not result.supported and str(tmp_path / "maps") in result.reason


def test_never_means_no_attempt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    setting = tmp_path / "enabled"
    setting.write_text("always madvise [never]\n")
    monkeypatch.setattr(hugepages, "thp_mode", lambda: thp_mode(setting))
    result = collapse_heap()
    assert not result.supported and result.reason == "transparent huge pages are never"
    assert result.collapsed_mb == 0


def _mappings_with_huge_pages() -> list[tuple[int, int, int, int]]:
    """(start, end, resident kB, kB on huge pages) of every mapping of this process."""
    found: list[tuple[int, int, int, int]] = []
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head, _, rest = line.partition(" ")
        if "-" in head and not head.endswith(":"):
            lo, _, hi = head.partition("-")
            found.append((int(lo, 16), int(hi, 16), 0, 0))
        elif head in ("Rss:", "AnonHugePages:"):
            lo_, hi_, rss, huge = found[-1]
            kb = int(rest.split()[0])
            found[-1] = (lo_, hi_, kb, huge) if head == "Rss:" else (lo_, hi_, rss, kb)
    return found


def test_live_objects_go_onto_huge_pages_and_sparse_memory_stays_sparse() -> None:
    """What the ACD relies on: its live objects end up on 2 MiB pages, and a mapping that is
    mostly untouched (a reserved arena, a stack) is left alone rather than made resident."""
    if not _kernel_has_collapse():
        pytest.fail("this test needs Linux 6.1+ with transparent huge pages (CI runs on one)")
    objects = [bytearray(400) for _ in range(200_000)]  # about 90 MB in pymalloc's arenas
    sparse = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_PRIVATE)  # 64 MB reserved, 1 page touched
    sparse[0] = 1
    result = collapse_heap()
    assert result.supported and not result.reason and not result.failures
    assert result.collapsed_mb >= 80 and result.ranges >= 1 and result.sparse_mb >= 60
    maps = _mappings_with_huge_pages()
    sample = objects[:: len(objects) // 50]
    holding = {m for m in maps for o in sample if m[0] <= id(o) < m[1]}
    on_huge = sum(huge for *_, huge in holding) / sum(rss for _, _, rss, _ in holding)
    assert on_huge >= 0.7, holding  # the rest: the unaligned ends of each mapping
    view = ctypes.c_char.from_buffer(sparse)
    address = ctypes.addressof(view)
    del view
    with open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
        pagemap.seek(address // 4096 * 8)
        entries = pagemap.read((64 << 20) // 4096 * 8)
    assert sum(b >> 7 for b in entries[7::8]) == 1  # the one page touched, not 64 MB
    assert collapse_heap().collapsed_mb >= result.collapsed_mb * 0.9  # again: nothing lost
    sparse.close()
    del objects


async def test_the_service_collapses_its_heap_once_the_roster_is_in(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not _kernel_has_collapse():
        pytest.fail("this test needs Linux 6.1+ with transparent huge pages (CI runs on one)")
    roster = tmp_path / "agents.yaml"
    roster.write_text(ROSTER)
    caplog.set_level(logging.DEBUG, logger="ivr_engine.acd_gateway")
    service = AcdService(roster, AmiClient(AmiSettings()), Recorder(), None, settings=AcdSettings())
    async with service.running():
        for _ in range(200):
            if any("on huge pages" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if "on huge pages" in r.getMessage()]
    assert len(lines) == 1 and re.match(r"acd: \d+ MB on huge pages", lines[0])
    off = AcdService(
        roster,
        AmiClient(AmiSettings()),
        Recorder(),
        None,
        settings=AcdSettings(huge_pages_every=0),
    )
    caplog.clear()
    async with off.running():
        await asyncio.sleep(0.2)
    assert not any("huge pages" in r.getMessage() for r in caplog.records)
