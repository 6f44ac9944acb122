"""The CRL at fleet scale, store query included: what it weighs and how long a rebuild takes.

    .venv/bin/python bench/crl_store.py [--devices 1000000] [--revoked 0.1]
        [--superseded 0.0] [--database URL] [--rounds 3]

Fills a database (SQLite in a temporary directory unless --database says otherwise)
with --devices devices, each with its certificate in the history (migration step 10);
a share --revoked of them revoked (half with keyCompromise, half unspecified), and a
share --superseded with a second, superseded certificate as a renewal leaves behind.
Then times what sielum.revocation.publisher.CrlPublisher does: its steps (the store
query, Store.refused_certificate_rows; encoding every entry; signing the list), its
first build (every entry encoded, as at start), a rebuild after a revocation (only the
certificates refused since the last CRL read: Store.refused_certificate_changes), the
refresh every 15 minutes (every refused certificate read again, entries reused), the
stamp it reads every second, and an OCSP lookup (certificate_status). Prints one JSON
line; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from psycopg2.extras import execute_values

from sielum.ca import profile
from sielum.ca.authority import CertificateAuthority
from sielum.model import AuditEvent, Token
from sielum.revocation.publisher import CrlPublisher, _entry
from sielum.store import Store
from sielum.store.database import is_sqlite, write_transaction
from sielum.store.models import to_micros

BATCH = 20_000


def fill(store: Store, devices: int, revoked: float, superseded: float, now: datetime) -> None:
    store.create_token(
        Token(
            id="tok", label="bench", secret_hash=b"h", max_uses=None, uses=0, expires_at=None,
            created_at=now, created_by="bench",
        ),
        AuditEvent(at=now, actor="bench", action="token.create", resource="token/tok"),
    )  # fmt: skip
    rng = random.Random(7)
    p = store.db.param
    device_sql = (
        "INSERT INTO device (id, hostname, token_id, public_key_sha256, serial,"
        " certificate_pem, not_after, enrolled_at, peer, revoked_at, revocation_reason)"
        f" VALUES ({', '.join([p] * 11)})"
    )
    certificate_sql = (
        "INSERT INTO device_certificate (serial, device_id, not_after, superseded_at,"
        f" refused_change) VALUES ({', '.join([p] * 5)})"
    )
    enrolled = to_micros(now - timedelta(days=30))
    not_after = to_micros(now + timedelta(days=60))
    gone = to_micros(now - timedelta(days=1))
    for start in range(0, devices, BATCH):
        device_rows, certificate_rows = [], []
        for i in range(start, min(devices, start + BATCH)):
            device_id = f"d{i:08d}"
            serial = format(profile.random_serial(), "x")
            is_revoked = rng.random() < revoked
            device_rows.append(
                (
                    device_id, "host", "tok", f"k{i}", serial, "PEM", not_after, enrolled, "",
                    gone if is_revoked else None,
                    ("keyCompromise" if i % 2 else "unspecified") if is_revoked else None,
                )
            )  # fmt: skip
            # refused_change: the stamp of the change that refused it (migration step 13).
            certificate_rows.append((serial, device_id, not_after, None, 1 if is_revoked else None))
            if rng.random() < superseded:
                old = format(profile.random_serial(), "x")
                certificate_rows.append((old, device_id, not_after - 30 * 86_400_000_000, gone, 1))
        with store.db.connection_context(), write_transaction(store.db):
            if is_sqlite(store.db):
                store.db.cursor().executemany(device_sql, device_rows)
                store.db.cursor().executemany(certificate_sql, certificate_rows)
            else:  # one statement per batch: a round trip per row would take many minutes
                for sql, rows in ((device_sql, device_rows), (certificate_sql, certificate_rows)):
                    head = sql[: sql.index(" VALUES ")]
                    execute_values(store.db.cursor(), head + " VALUES %s", rows, page_size=5000)
    with store.db.connection_context():
        store.db.execute_sql("ANALYZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--revoked", type=float, default=0.1)
    parser.add_argument("--superseded", type=float, default=0.0)
    parser.add_argument("--database", default="")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database or f"sqlite:///{Path(tmp) / 'sielum.db'}"
        key = ec.generate_private_key(ec.SECP256R1())
        ca = CertificateAuthority(profile.self_signed_ca_certificate(key=key, now=now), key)
        store = Store.open(url)
        started = time.perf_counter()
        fill(store, args.devices, args.revoked, args.superseded, now)
        fill_seconds = time.perf_counter() - started
        # The publisher's own steps: the rows, the entries (all encoded on the first
        # build, as at start; reused on a rebuild, as after a change), the signature.
        query, sign = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            rows = store.refused_certificate_rows(now)
            query.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        entries = [_entry(row) for row in rows]
        encode_seconds = time.perf_counter() - t0
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            ca.sign_crl_entries(entries, 1, now)
            sign.append(time.perf_counter() - t0)
        publisher = CrlPublisher(store, ca, _Clock(now))
        t0 = time.perf_counter()
        publisher.update()
        cold = time.perf_counter() - t0
        with store.db.connection_context():
            active = [
                row[0]
                for row in store.db.execute_sql(
                    f"SELECT id FROM device WHERE revoked_at IS NULL LIMIT {args.rounds}"
                ).fetchall()
            ]
        warm = []
        for device_id in active:  # a revocation: the stamp moves, one certificate changes
            store.revoke_device(
                device_id,
                now,
                AuditEvent(at=now, actor="bench", action="device.revoke", resource=device_id),
            )
            t0 = time.perf_counter()
            publisher.update()
            warm.append(time.perf_counter() - t0)
        refresh = []
        for _ in range(args.rounds):  # every 15 minutes: every refused certificate read
            t0 = time.perf_counter()
            publisher._build(after=None)
            refresh.append(time.perf_counter() - t0)
        current = publisher.current
        assert current is not None
        stamps = []
        for _ in range(200):
            t0 = time.perf_counter()
            store.revocation_stamp()
            stamps.append(time.perf_counter() - t0)
        serials = [row[0] for row in rows[:500]]
        lookups = []
        for serial in serials:
            t0 = time.perf_counter()
            store.certificate_status(serial)
            lookups.append(time.perf_counter() - t0)
        store.close()
    print(
        json.dumps(
            {
                "bench": "crl_store",
                "database": url.split(":", 1)[0],
                "devices": args.devices,
                "revoked_share": args.revoked,
                "superseded_share": args.superseded,
                "crl_entries": current.entries,
                "crl_bytes": len(current.der),
                "fill_seconds": round(fill_seconds, 1),
                "rows_query_seconds_median": round(statistics.median(query), 3),
                "encode_all_entries_seconds": round(encode_seconds, 3),
                "sign_seconds_median": round(statistics.median(sign), 3),
                "first_build_seconds": round(cold, 3),
                "rebuild_seconds_median": round(statistics.median(warm), 3),
                "rebuild_seconds_max": round(max(warm), 3),
                "refresh_seconds_median": round(statistics.median(refresh), 3),
                "stamp_poll_ms_median": round(statistics.median(stamps) * 1000, 3),
                # Peak of the whole run (filling included): an upper bound of what a
                # worker holds for the CRL and its entries.
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                "ocsp_lookup_ms_median": round(statistics.median(lookups) * 1000, 3),
            }
        )
    )


class _Clock:
    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now


if __name__ == "__main__":
    main()
