"""`ivr-engine cif bench`: caller-ID lookup latency at 10,000 customers (target: under 1 ms).

Measured in one run, on one database:
- `lookup_cold`: `CifStore.lookup_by_caller` for distinct numbers with the number-parsing cache
  cleared first (every lookup parses and geocodes its number), the figure that matters;
- `lookup_warm`: the same numbers again (parse cache warm, SQLite pages hot);
- `floor`: a bare `SELECT 1` through aiosqlite: the cost of one hop to the database thread,
  which no lookup can beat;
- `unindexed`: the same lookup SQL made to scan the phones table (`number || '' = ?` defeats
  the primary-key index), to show what the index buys.
Ratios are against the floor and against the unindexed scan measured in the same run.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ivr_engine import region as region_mod
from ivr_engine.cif.seed import seed
from ivr_engine.cif.store import _LOOKUP_SQL, CifStore
from ivr_engine.errors import StoreError

TARGET_US = 1000.0


@dataclass(frozen=True, slots=True)
class Timing:
    name: str
    n: int
    mean_us: float
    p50_us: float
    p99_us: float
    max_us: float

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean_us": round(self.mean_us, 1),
            "p50_us": round(self.p50_us, 1),
            "p99_us": round(self.p99_us, 1),
            "max_us": round(self.max_us, 1),
        }


def _timing(name: str, samples: list[float]) -> Timing:
    if not samples:
        raise StoreError(f"benchmark {name}: no samples")
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return Timing(
        name,
        len(samples),
        statistics.fmean(samples) * 1e6,
        statistics.median(samples) * 1e6,
        p99 * 1e6,
        ordered[-1] * 1e6,
    )


async def _measure(
    name: str, items: list[str], fn: Callable[[str], Awaitable[object]]
) -> Timing:
    samples: list[float] = []
    for item in items:
        t0 = time.perf_counter()
        await fn(item)
        samples.append(time.perf_counter() - t0)
    return _timing(name, samples)


async def run_bench(
    *, customers: int = 10_000, lookups: int = 5_000, path: str | None = None, rng_seed: int = 7
) -> dict[str, Any]:
    if customers < 10 or lookups < 10:
        raise StoreError("the benchmark needs at least 10 customers and 10 lookups")
    with tempfile.TemporaryDirectory(prefix="ivr-cif-bench-") as tmp:
        db_path = Path(path) if path else Path(tmp) / "cif-bench.sqlite3"
        store = await CifStore.open(db_path, pan_key=b"bench-key-bench-key-bench-key!!!")
        try:
            t0 = time.perf_counter()
            seeded = await seed(store, customers=customers)
            seed_s = time.perf_counter() - t0
            rows = await store._db.execute_fetchall(
                "SELECT number FROM phones ORDER BY number"
            )
            numbers = [str(r[0]).removeprefix("+86") for r in rows]
            rng = random.Random(rng_seed)
            sample = rng.sample(numbers, min(lookups, len(numbers)))
            # Warm-up: the SQLite page cache and the aiosqlite thread, on other numbers.
            for n in rng.sample(numbers, min(200, len(numbers))):
                await store.lookup_by_caller(n)
            region_mod._analyse.cache_clear()

            async def lookup(n: str) -> object:
                found = await store.lookup_by_caller(n)
                if found is None:
                    raise StoreError(f"benchmark: a seeded number was not found ({n[-4:]})")
                return found

            cold = await _measure("lookup_cold", sample, lookup)
            warm = await _measure("lookup_warm", sample, lookup)

            async def floor(_: str) -> object:
                return await store._db.execute_fetchall("SELECT 1")

            floor_t = await _measure("floor", sample, floor)
            scan_sql = _LOOKUP_SQL.replace("WHERE p.number = ?", "WHERE p.number || '' = ?")
            if scan_sql == _LOOKUP_SQL:
                raise StoreError("benchmark: could not derive the unindexed query")
            day = store.today().isoformat()

            async def scan(n: str) -> object:
                return await store._db.execute_fetchall(scan_sql, (day, "+86" + n))

            scan_t = await _measure("unindexed", sample[: max(10, len(sample) // 20)], scan)
        finally:
            await store.close()
    return {
        "benchmark": "cif caller-ID lookup",
        "customers": seeded.total_customers,
        "seed_seconds": round(seed_s, 2),
        "target_us": TARGET_US,
        "lookup_cold": cold.to_json(),
        "lookup_warm": warm.to_json(),
        "floor_select1": floor_t.to_json(),
        "unindexed_scan": scan_t.to_json(),
        "ratio_cold_p50_to_floor_p50": round(cold.p50_us / floor_t.p50_us, 2),
        "speedup_index_vs_scan_p50": round(scan_t.p50_us / warm.p50_us, 1),
        "meets_target_p99": cold.p99_us < TARGET_US,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"cif lookup by caller ID, {result['customers']} customers "
        f"(seeded in {result['seed_seconds']} s)",
        f"{'':16}{'n':>7}{'mean us':>10}{'p50 us':>10}{'p99 us':>10}{'max us':>10}",
    ]
    for key in ("lookup_cold", "lookup_warm", "floor_select1", "unindexed_scan"):
        t = result[key]
        lines.append(
            f"{key:16}{t['n']:>7}{t['mean_us']:>10.1f}{t['p50_us']:>10.1f}"
            f"{t['p99_us']:>10.1f}{t['max_us']:>10.1f}"
        )
    lines.append(
        f"cold lookup p50 = {result['ratio_cold_p50_to_floor_p50']}x one aiosqlite hop; "
        f"the index is {result['speedup_index_vs_scan_p50']}x faster than a scan"
    )
    verdict = "meets" if result["meets_target_p99"] else "MISSES"
    p99 = result["lookup_cold"]["p99_us"]
    lines.append(f"p99 {p99} us {verdict} the {TARGET_US:.0f} us target")
    lines.append(json.dumps(result, sort_keys=True))
    return "\n".join(lines)
