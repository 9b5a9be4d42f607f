"""The benchmark runs end to end and reports what it claims (figures are not asserted)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ivr_engine.cif.bench import render, run_bench
from ivr_engine.cif.schema import MIGRATIONS as CIF_MIGRATIONS
from ivr_engine.cif.store import CifStore
from ivr_engine.records import CallRecordStore


async def test_bench_small() -> None:
    result = await run_bench(customers=30, lookups=20)
    assert result["customers"] == 34  # 30 synthetic + 4 personas
    for key in ("lookup_cold", "lookup_warm", "floor_select1", "unindexed_scan"):
        t = result[key]
        assert t["n"] >= 10 and 0 < t["p50_us"] <= t["p99_us"] <= t["max_us"]
    text = render(result)
    assert "lookup_cold" in text and text.splitlines()[-1].startswith("{")


async def test_cif_and_call_records_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "ivr-engine.sqlite3"
    async with await CifStore.open(path, pan_key=b"k" * 32):
        async with await CallRecordStore.open(path):
            pass
    with sqlite3.connect(path) as conn:
        versions = conn.execute(
            "SELECT component, version FROM schema_version ORDER BY component"
        ).fetchall()
    assert versions == [("call_records", 1), *(("cif", m.version) for m in CIF_MIGRATIONS)]
