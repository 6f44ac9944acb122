"""What migration 12's index costs the heartbeats' writes, and what it saves the scrapes.

sielum_devices_silent{for} is counted at every scrape (at most once per 5 s per worker)
from a partial index on device (last_seen_at, enrolled_at) WHERE revoked_at IS NULL.
Each heartbeat flush (devices/lastseen.py: every 2 s, each device at most once a
minute) then also updates that index, and on PostgreSQL an UPDATE of an indexed
column is no longer a HOT update. This loads a fleet, then times the same flush
(touch_devices of --batch devices) and the same count (count_silent_devices) with
the index and without it, on SQLite and on PostgreSQL, and prints the medians.

    .venv/bin/python bench/last_seen_index.py --devices 200000 --batch 6667
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_bench import _device_id, drop_postgres, fresh_postgres, load_postgres, load_sqlite

from sielum.store.models import to_micros
from sielum.store.store import Store

INDEX = "device_unrevoked_last_seen"
CREATE = f"CREATE INDEX {INDEX} ON device (last_seen_at, enrolled_at) WHERE revoked_at IS NULL"


def _sql(store: Store, sql: str) -> None:
    with store.db.connection_context():
        store.db.execute_sql(sql)


def measure(
    store: Store, devices: int, batch: int, rounds: int, start: datetime, first: int
) -> dict[str, float]:
    """Median milliseconds of one flush of `batch` devices and of one silent count."""
    rng = random.Random(first)
    flushes, counts = [], []
    for n in range(first, first + rounds):
        # A minute and a half later each round, so that every row is written (the
        # once-a-minute rule), and all within the hour: healthy devices stay out of the
        # counts, as in a fleet whose devices call every few minutes.
        at = start + timedelta(seconds=90 * (n + 1))
        seen = {_device_id(i): at for i in rng.sample(range(devices), batch)}
        began = time.perf_counter()
        store.touch_devices(seen, timedelta(minutes=1))
        flushes.append((time.perf_counter() - began) * 1000)
        cutoffs = {
            "1h": at - timedelta(hours=1),
            "24h": at - timedelta(days=1),
            "7d": at - timedelta(days=7),
        }
        began = time.perf_counter()
        store.count_silent_devices(cutoffs)
        counts.append((time.perf_counter() - began) * 1000)
    return {"flush_ms": statistics.median(flushes), "count_ms": statistics.median(counts)}


def run(backend: str, url: str, args: argparse.Namespace) -> None:
    Store.open(url).close()  # the schema, migration 12 included
    loaded = time.perf_counter()
    if backend == "sqlite":
        load_sqlite(Path(url.removeprefix("sqlite:///")), 100, args.devices, 0)
    else:
        load_postgres(url, 100, args.devices, 0)
    print(f"{backend}: {args.devices:,} devices loaded in {time.perf_counter() - loaded:.0f} s")
    store = Store.open(url)
    try:
        # A healthy fleet: every device heard from at start, but 1 in 100 silent for 2 days.
        start = datetime.now(UTC)
        now_us, two_days = to_micros(start), 2 * 86_400_000_000
        _sql(
            store,
            f"UPDATE device SET last_seen_at = CASE WHEN seq - seq / 100 * 100 = 0"
            f" THEN {now_us - two_days} ELSE {now_us} END",
        )
        results = []
        # Alternating, so that neither side has the cold cache or the first writes alone.
        for n, indexed in enumerate((False, True, False, True)):
            _sql(store, CREATE if indexed else f"DROP INDEX {INDEX}")
            if backend == "postgresql":
                _sql(store, "VACUUM ANALYZE device")
            else:
                _sql(store, "ANALYZE")
            name = f"{'with' if indexed else 'without'} index ({n // 2 + 1})"
            figures = measure(store, args.devices, args.batch, args.rounds, start, n * args.rounds)
            results.append((name, figures))
        for variant, figures in results:
            print(
                f"  {variant:19} flush of {args.batch:,} devices: {figures['flush_ms']:7.1f} ms"
                f"   silent count: {figures['count_ms']:8.1f} ms"
            )
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200_000)
    parser.add_argument(
        "--batch", type=int, default=6_667, help="devices per flush (1M / 5 min / 2 s ≈ 6,667)"
    )
    parser.add_argument("--rounds", type=int, default=7, help="flushes per phase (4 phases)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            run("sqlite", f"sqlite:///{tmp}/sielum.db", args)
    if args.backend in ("postgresql", "both"):
        try:
            run("postgresql", fresh_postgres(), args)
        finally:
            drop_postgres()


if __name__ == "__main__":
    main()
