"""Huge pages for the heap (acd/hugepages.py), on this machine's real kernel."""

from __future__ import annotations

import asyncio
import logging
import mmap
import platform
import re
from pathlib import Path

import pytest

from acd import hugepages
from acd.hugepages import _anonymous_mappings, collapse_heap, resident_huge_mb, thp_mode
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
    found = _anonymous_mappings(SMAPS)
    assert [(m.start, m.end, m.resident_kb) for m in found] == [
        (0x55D0C0000000, 0x55D0C4000000, 65000),
        (0x7F0000000000, 0x7F0000400000, 12),
    ]


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
    result = collapse_heap(smaps=tmp_path / "smaps")
    assert not result.supported and str(tmp_path / "smaps") in result.reason


def test_never_means_no_attempt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    setting = tmp_path / "enabled"
    setting.write_text("always madvise [never]\n")
    monkeypatch.setattr(hugepages, "thp_mode", lambda: thp_mode(setting))
    result = collapse_heap()
    assert not result.supported and result.reason == "transparent huge pages are never"
    assert result.collapsed_mb == 0


def test_resident_memory_goes_onto_huge_pages_and_sparse_memory_stays_sparse() -> None:
    """What the ACD relies on: live objects end up on 2 MiB pages, and a mapping that is mostly
    untouched (a reserved arena, a stack) is left alone rather than made resident."""
    if not _kernel_has_collapse():
        pytest.fail("this test needs Linux 6.1+ with transparent huge pages (CI runs on one)")
    objects = [bytearray(1000) for _ in range(96_000)]  # about 100 MB of small objects
    sparse = mmap.mmap(-1, 64 << 20)  # 64 MB reserved, one page touched
    sparse[0] = 1
    before = resident_huge_mb()
    result = collapse_heap()
    after = resident_huge_mb()
    assert result.supported and not result.reason
    assert result.collapsed_mb >= 80 and result.mappings >= 1
    assert before is not None and after is not None and after - before >= 64
    assert result.sparse >= 1
    start = next(
        m
        for m in _anonymous_mappings(Path("/proc/self/smaps").read_text())
        if m.end - m.start == 64 << 20
    )
    assert start.resident_kb < 1024  # still one touched page, not 64 MB
    again = collapse_heap()  # already on huge pages: nothing lost, nothing doubled
    assert again.collapsed_mb >= 80
    assert resident_huge_mb() == pytest.approx(after, abs=16)
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
    service = AcdService(
        roster, AmiClient(AmiSettings()), Recorder(), None, settings=AcdSettings()
    )
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
