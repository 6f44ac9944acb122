"""`devices list` filters on a large fleet: first-page time with and without the indexes.

Loads N devices (default 200,000) into a fresh SQLite file and a fresh PostgreSQL
database, then times Store.list_devices' first page (100 devices) for each filter,
once with the indexes of migration 2 and once with them dropped. The fleet: 97 %
active, 2 % revoked, 1 % expired; the expired and revoked ones are the oldest
devices, as in a fleet where machines that stopped renewing were enrolled long ago.
Each device reports facts os=linux and one of 100 racks (rack=r00..r99, 1 % each): a
fact walks its labels (migration 14, not dropped here), and --hostname-prefix (100
names) walks the hostname index as --hostname does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import psycopg2.extras

from sielum.model import DeviceState
from sielum.store import migrations
from sielum.store.database import execute, is_sqlite, write_transaction
from sielum.store.models import to_micros
from sielum.store.store import Store

PG_ADMIN = dict(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
INDEXES = ("device_hostname_seq", "device_revoked_seq", "device_unrevoked_not_after")
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def load(store: Store, devices: int) -> None:
    day = timedelta(days=1)
    token_row = (
        "tok", "bench", b"h" * 32, None, devices, None, to_micros(NOW - 400 * day), "bench",
        None, None,
    )  # fmt: skip
    rows = []
    for i in range(devices):
        revoked = to_micros(NOW - 100 * day) if i < devices * 2 // 100 else None
        expired = devices * 2 // 100 <= i < devices * 3 // 100
        not_after = NOW - 10 * day if expired else NOW + 60 * day
        rows.append(
            (
                str(uuid.UUID(int=i)), f"host-{i:07}", "tok", f"key-{i}", f"{i:x}", "PEM",
                to_micros(not_after), to_micros(NOW - 300 * day + i * timedelta(seconds=60)),
                None, revoked, "10.0.0.1", facts_json(i),
            )
        )  # fmt: skip
    p = store.db.param
    with store.db.connection_context(), write_transaction(store.db):
        execute(
            store.db,
            "INSERT INTO token (id, label, secret_hash, max_uses, uses, expires_at, created_at,"
            f" created_by, revoked_at, last_used_at) VALUES ({', '.join([p] * 10)})",
            token_row,
        )
        insert = (
            "INSERT INTO device (id, hostname, token_id, public_key_sha256, serial,"
            " certificate_pem, not_after, enrolled_at, last_seen_at, revoked_at, peer, facts)"
            " VALUES "
        )
        cursor = store.db.cursor()
        if is_sqlite(store.db):
            cursor.executemany(insert + f"({', '.join([p] * 12)})", rows)
        else:
            # psycopg2's executemany is one round trip per row.
            psycopg2.extras.execute_values(cursor, insert + "%s", rows, page_size=2000)
        # Their facts as labels, as an enrollment writes them (migration 14).
        for statement in migrations.label_rows(migrations.dialect_of(store.db)):
            execute(store.db, statement)
    with store.db.connection_context():
        execute(store.db, "ANALYZE")


def facts_json(i: int) -> str:
    """Device i's facts as the store writes them (store/devices.py _facts_json)."""
    facts = {"os": "linux", "rack": f"r{i % 100:02}"}
    return json.dumps(facts, sort_keys=True, separators=(",", ":"))


def timed(call: Callable[[], object], repeat: int = 7) -> float:
    """Median milliseconds of repeat calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(store: Store, devices: int) -> dict[str, float]:
    host = f"host-{devices // 2:07}"
    cases: dict[str, Callable[[], object]] = {
        "all": lambda: store.list_devices(page_size=100),
        "--hostname": lambda: store.list_devices(hostname=host, page_size=100),
        # host-00NNN__: the 100 names around the middle of the fleet.
        "--hostname-prefix": lambda: store.list_devices(hostname_prefix=host[:-2], page_size=100),
        "--fact os=linux": lambda: store.list_devices(facts={"os": "linux"}, page_size=100),
        "--fact rack=r07": lambda: store.list_devices(facts={"rack": "r07"}, page_size=100),
        "--hostname-prefix --fact": lambda: store.list_devices(
            hostname_prefix=host[:-2], facts={"rack": "r07"}, page_size=100
        ),
        **{
            f"--state {state.value}": (
                lambda state=state: store.list_devices(state=state, now=NOW, page_size=100)
            )
            for state in DeviceState
        },
    }
    return {name: timed(call) for name, call in cases.items()}


def run(name: str, url: str, devices: int) -> None:
    store = Store.open(url)
    try:
        started = time.perf_counter()
        load(store, devices)
        print(f"{name}: loaded {devices} devices in {time.perf_counter() - started:.1f} s")
        with_indexes = measure(store, devices)
        with store.db.connection_context():
            for index in INDEXES:
                execute(store.db, f"DROP INDEX {index}")
            execute(store.db, "ANALYZE")
        without = measure(store, devices)
    finally:
        store.close()
    print(f"  {'first page of 100':<24}{'with indexes':>14}{'without':>12}")
    for case in with_indexes:
        print(f"  {case:<24}{with_indexes[case]:>11.2f} ms{without[case]:>9.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=200_000)
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    if args.database in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            run("SQLite", f"sqlite:///{Path(tmp) / 'bench.db'}", args.devices)
    if args.database in ("postgresql", "both"):
        name = f"sielum_filters_{uuid.uuid4().hex[:8]}"
        admin = psycopg2.connect(**PG_ADMIN)  # type: ignore[arg-type]
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        try:
            run("PostgreSQL", f"postgresql://postgres@127.0.0.1:5432/{name}", args.devices)
        finally:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
