"""Huge pages for the heap (acd/hugepages.py), on this machine's real kernel, and the ACD
service's use of them."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import mmap
import threading
from pathlib import Path

import pytest

from acd import hugepages
from acd.hugepages import Collapse, anonymous_mappings, collapse_heap, resident_ranges, thp_mode
from ivr_engine import acd_gateway
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


def _require_collapse() -> None:
    _, why_not = hugepages.availability()
    if why_not:
        pytest.fail(f"this test needs MADV_COLLAPSE (CI's kernel has it): {why_not}")


def _present_pages(address: int, size: int) -> int:
    with open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
        pagemap.seek(address // 4096 * 8)
        entries = pagemap.read(size // 4096 * 8)
    return sum(b >> 7 for b in entries[7::8])


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


def test_only_anonymous_read_write_memory_is_considered() -> None:
    assert anonymous_mappings(SMAPS) == [
        (0x55D0C0000000, 0x55D0C4000000),
        (0x7F0000000000, 0x7F0000400000),
    ]


def test_a_range_counts_as_resident_from_three_quarters_of_its_pages() -> None:
    present, absent = (1 << 63).to_bytes(8, "little"), bytes(8)
    pages = [present] * 384 + [absent] * 128  # 75 %: collapse
    pages += [present] * 383 + [absent] * 129  # just under: leave alone
    assert resident_ranges(b"".join(pages)) == [True, False]
    assert resident_ranges(b"".join(pages[:600])) == [True, False]  # a short read: absent
    huge = 2 << 20
    dense = [True, True, False, True, False, False]
    assert hugepages._runs(dense, 8 * huge) == [(8 * huge, 2 * huge), (11 * huge, huge)]


def test_thp_mode_reads_the_bracketed_word(tmp_path: Path) -> None:
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert thp_mode(setting) == "madvise"
    setting.write_text("[never]\n")
    assert thp_mode(setting) == "never"
    assert thp_mode(tmp_path / "missing") is None


def test_never_and_prctl_mean_no_attempt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hugepages, "thp_mode", lambda: "never")
    result = collapse_heap()
    assert not result.supported and result.reason == "transparent huge pages are never"
    assert result.collapsed_mb == 0
    monkeypatch.setattr(hugepages, "thp_mode", lambda: "madvise")
    (tmp_path / "status").write_text("Name:\tpython\nTHP_enabled:\t0\n")
    result = collapse_heap(proc=tmp_path)
    assert not result.supported and "PR_SET_THP_DISABLE" in result.reason


def test_an_unreadable_memory_map_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(hugepages, "availability", lambda proc: ("madvise", ""))
    result = collapse_heap(proc=tmp_path)
    assert not result.supported and str(tmp_path / "maps") in result.reason


def test_any_error_inside_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(maps: str) -> list[tuple[int, int]]:
        raise ValueError("garbled maps line")

    monkeypatch.setattr(hugepages, "anonymous_mappings", broken)
    result = collapse_heap()
    assert not result.supported and result.reason == "ValueError: garbled maps line"


def test_live_objects_go_onto_huge_pages_and_sparse_memory_stays_sparse() -> None:
    """What the ACD relies on: its live objects end up on 2 MiB pages, and a mapping that is
    mostly untouched (a reserved arena) is left alone rather than made resident."""
    _require_collapse()
    objects = [bytearray(400) for _ in range(200_000)]  # about 90 MB in pymalloc's arenas
    sparse = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_PRIVATE)  # 64 MB reserved, 1 page touched
    try:
        sparse[0] = 1
        view = ctypes.c_char.from_buffer(sparse)
        address = ctypes.addressof(view)
        del view
        before = _present_pages(address, 64 << 20)
        result = collapse_heap()
        assert result.supported and not result.reason and not result.stopped
        assert result.collapsed_mb >= 80 and result.sparse_mb >= 60
        assert _present_pages(address, 64 << 20) == before  # nothing made resident
    finally:
        sparse.close()
    sample = objects[:: len(objects) // 50]
    holding = {m for m in _mappings_with_huge_pages() for o in sample if m[0] <= id(o) < m[1]}
    on_huge = sum(huge for *_, huge in holding) / sum(rss for _, _, rss, _ in holding)
    assert on_huge >= 0.7, holding  # the rest: the unaligned ends of each mapping
    assert collapse_heap().collapsed_mb >= result.collapsed_mb * 0.9  # again: nothing lost
    del objects


def test_a_vast_reservation_is_left_alone_and_a_stop_ends_the_pass() -> None:
    _require_collapse()
    noreserve = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux; Python 3.12 names it
    vast = mmap.mmap(-1, 16 << 30, flags=mmap.MAP_PRIVATE | noreserve)  # 16 GB, untouched
    try:
        result = collapse_heap()
        assert result.supported and result.sparse_mb >= 16 << 10
        stop = threading.Event()
        stop.set()
        halted = collapse_heap(stop=stop)
        assert halted.supported and halted.stopped and halted.collapsed_mb == 0
    finally:
        vast.close()


class FakeCollapse:
    """Stands in for collapse_heap in the service: counts calls, answers as told."""

    def __init__(self, answer: Collapse | Exception | None = None, *, block: bool = False):
        self.calls = 0
        self.answer = answer or Collapse("madvise", True, collapsed_mb=12.0)
        self.block = block
        self.called = threading.Event()
        self.ended = threading.Event()
        self.stopped = False

    def __call__(self, *, stop: threading.Event) -> Collapse:
        self.calls += 1
        self.called.set()
        if self.block:
            self.stopped = stop.wait(10)  # a long first pass: shutdown must end it via `stop`
            self.ended.set()
            return Collapse("madvise", True, stopped=self.stopped)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def _run_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeCollapse, every: float = 600.0
) -> AcdService:
    roster = tmp_path / "agents.yaml"
    roster.write_text(ROSTER)
    monkeypatch.setattr(acd_gateway, "collapse_heap", fake)
    monkeypatch.setattr(AcdService, "huge_pages_first", 0.0)
    service = AcdService(
        roster,
        AmiClient(AmiSettings()),
        Recorder(),
        None,
        settings=AcdSettings(huge_pages_every=every),
    )
    async with service.running():
        if every:
            await asyncio.wait_for(asyncio.to_thread(fake.called.wait, 5), 6)
        await asyncio.sleep(0.05)
    return service


async def test_the_service_collapses_its_heap_then_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ivr_engine.acd_gateway")
    fake = FakeCollapse()
    service = await _run_service(tmp_path, monkeypatch, fake)
    assert fake.calls == 1  # the next one is due in 600 s
    assert service._huge is not None and service._huge.cancelled()
    assert any("12 MB on huge pages" in r.getMessage() for r in caplog.records)


async def test_the_service_stops_trying_where_huge_pages_are_unsupported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ivr_engine.acd_gateway")
    fake = FakeCollapse(Collapse("never", False, reason="transparent huge pages are never"))
    service = await _run_service(tmp_path, monkeypatch, fake)
    assert fake.calls == 1 and service._huge is not None and service._huge.done()
    assert not service._huge.cancelled()  # it returned by itself
    assert any("stays on 4 KiB pages: transparent" in r.getMessage() for r in caplog.records)


async def test_a_failing_collapse_is_logged_and_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeCollapse(RuntimeError("boom"))
    await _run_service(tmp_path, monkeypatch, fake)  # shuts down without raising
    assert fake.calls == 1
    assert any(
        "collapsing the heap into huge pages failed" in r.getMessage() for r in caplog.records
    )


async def test_shutdown_ends_a_collapse_under_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeCollapse(block=True)
    await _run_service(tmp_path, monkeypatch, fake)
    # The worker thread outlives the cancelled task: the stop event is what ends it.
    assert await asyncio.to_thread(fake.ended.wait, 5)
    assert fake.calls == 1 and fake.stopped


async def test_huge_pages_every_zero_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeCollapse()
    service = await _run_service(tmp_path, monkeypatch, fake, every=0)
    assert fake.calls == 0 and service._huge is None
