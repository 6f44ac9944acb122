"""What a shared COMMIT saves: the write of N enrollments, alone or in batches, in process.

Store.enroll_devices with batches of 1 (the write of one enrollment committed alone,
as before group commit), 2, 4, ... 32 enrollments, on SQLite and PostgreSQL, one thread,
the rows an enrollment writes (no gRPC, no signing). Prints, per batch size, the wall
time and this process's CPU per enrollment; the sizes run in turn, --rounds times, so
that the machine's other work falls on all alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sielum.model import AuditEvent, Device, Token  # noqa: E402
from sielum.store import Store  # noqa: E402
from sielum.store.devices import NewDevice  # noqa: E402

PG_ADMIN = os.environ.get("SIELUM_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def new(token_id: str) -> NewDevice:
    device_id = str(uuid.uuid4())
    device = Device(
        id=device_id,
        hostname=f"h-{device_id[:8]}.example.org",
        token_id=token_id,
        public_key_sha256=uuid.uuid4().hex * 2,
        serial=uuid.uuid4().hex,
        certificate_pem="-----BEGIN CERTIFICATE-----\n" + "A" * 700 + "\n",
        not_after=NOW + timedelta(days=90),
        enrolled_at=NOW,
        peer="ipv4:10.0.0.1:5555",
        facts={"os": "linux", "arch": "x86_64"},
    )
    audit = AuditEvent(
        at=NOW,
        actor=f"token/{token_id}",
        action="device.enroll",
        resource=f"device/{device_id}",
        peer="ipv4:10.0.0.1:5555",
        detail=f"token={token_id} serial={device.serial}",
    )
    return NewDevice(device, NOW, audit)


def measure(store: Store, token_id: str, size: int, count: int) -> tuple[float, float]:
    """Seconds of wall time and of this process's CPU per enrollment."""
    batches = [[new(token_id) for _ in range(size)] for _ in range(count // size)]
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        for outcome in store.enroll_devices(batch):
            assert isinstance(outcome, Device), outcome
    done = len(batches) * size
    return (time.perf_counter() - wall) / done, (time.process_time() - cpu) / done


def fresh_postgres() -> tuple[str, str]:
    import psycopg2

    name = f"sielum_gc_{os.getpid()}"
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", name


def drop_postgres(name: str) -> None:
    import psycopg2

    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--sizes", default="1,2,4,8,16,32")
    parser.add_argument("--count", type=int, default=512, help="enrollments per run")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="sielum-gc-") as tmp:
        pg_name = ""
        if args.backend == "postgresql":
            url, pg_name = fresh_postgres()
        else:
            url = f"sqlite:///{tmp}/bench.db"
        store = Store.open(url)
        try:
            token = Token(
                id="tok_bench",
                label="bench",
                secret_hash=bytes(32),
                max_uses=None,
                uses=0,
                expires_at=None,
                created_at=NOW,
                created_by="bench",
            )
            store.create_token(
                token,
                AuditEvent(at=NOW, actor="bench", action="token.create", resource="token/b"),
            )
            measure(store, token.id, 8, 256)  # warm-up: statements, caches, the file
            figures: dict[int, list[tuple[float, float]]] = {size: [] for size in sizes}
            for _ in range(args.rounds):
                for size in sizes:
                    figures[size].append(measure(store, token.id, size, args.count))
        finally:
            store.close()
            if pg_name:
                drop_postgres(pg_name)
    print(
        f"{args.backend}, {args.count} enrollments per run, {args.rounds} rounds, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print("| batch | wall µs/enrollment (median, range) | CPU µs/enrollment (median, range) |")
    print("|---|---|---|")
    for size in sizes:
        walls = sorted(w * 1e6 for w, _ in figures[size])
        cpus = sorted(c * 1e6 for _, c in figures[size])
        print(
            f"| {size} | {walls[len(walls) // 2]:.0f} ({walls[0]:.0f}-{walls[-1]:.0f})"
            f" | {cpus[len(cpus) // 2]:.0f} ({cpus[0]:.0f}-{cpus[-1]:.0f}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
