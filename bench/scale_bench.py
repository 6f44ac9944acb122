"""Scale run: Enroll, list-page and audit-page latency, empty vs bulk-loaded with a fleet.

With --fleet-reads (PostgreSQL only): the dashboard overview's reads, ListDevices' first
page and a deep page for every filter, and CheckCertificate, each timed at every size of
--sizes (default 10,000 and 1,000,000 devices, each in a fresh database), with the plans
of the store's queries at the largest size (--explain).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
import procstat
from csrpool import csr_pool
from google.protobuf.timestamp_pb2 import Timestamp
from sielum_proc import SielumProcess, init_data_dir, start_sielum

from sielum.admin.v1 import admin_pb2
from sielum.directory.v1 import directory_pb2, directory_pb2_grpc
from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc
from sielum.model import DeviceState
from sielum.store import migrations
from sielum.store.models import to_micros
from sielum.store.store import Store

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
# Per run: the PostgreSQL cluster is shared, and another run may be under way.
PG_DATABASE = f"sielum_scale_{os.getpid()}"
YEAR_US = 365 * 86_400_000_000
ADMINS = 20  # admin/ops-0 .. admin/ops-19 act in the loaded audit trail
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
# A real device certificate's size, so rows weigh what they would in production.
_CERT_PEM = (
    "-----BEGIN CERTIFICATE-----\n"
    + "\n".join(["A" * 64] * 11)
    + "\nAAAA\n-----END CERTIFICATE-----\n"
)


def _token_id(i: int) -> str:
    digest = hashlib.sha256(f"token-{i}".encode()).digest()
    return "".join(_ALPHABET[b & 31] for b in digest[:16])


def _rows(
    tokens: int, devices: int, events: int, now: datetime
) -> tuple[Iterator[tuple[Any, ...]], ...]:
    """Token, device and audit rows of a plausible fleet, in the tables' column order."""
    now_us = to_micros(now)
    day = 86_400_000_000

    def token_rows() -> Iterator[tuple[Any, ...]]:
        for i in range(tokens):
            # Device j belongs to token j % tokens, so uses equals the devices enrolled.
            uses = devices // tokens + (1 if i < devices % tokens else 0)
            revoked = now_us - day if i % 100 == 0 else None
            expires = now_us - day if i % 20 == 1 else (now_us + 30 * day if i % 2 else None)
            max_uses = (uses, uses + 5, None)[i % 3]
            yield (
                _token_id(i), f"bulk-{i}", secrets.token_bytes(32), max_uses, uses, expires,
                now_us - (tokens - i) * 1_000_000, "bulk", revoked, now_us - day,
            )  # fmt: skip

    def device_rows() -> Iterator[tuple[Any, ...]]:
        for i in range(devices):
            yield (
                _device_id(i), f"host-{i}", _token_id(i % tokens),
                hashlib.sha256(f"key-{i}".encode()).hexdigest(), format(i + 1, "x"), _CERT_PEM,
                now_us + 90 * day, now_us - (devices - i) * 1000, None, None,
                f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", '{"os":"linux"}',
            )  # fmt: skip

    return token_rows(), device_rows(), audit_rows(tokens, devices, events, now_us)


def _device_id(i: int) -> str:
    return str(uuid.UUID(int=i + 1, version=4))


def audit_rows(tokens: int, devices: int, events: int, now_us: int) -> Iterator[tuple[Any, ...]]:
    """A year of audit trail ending now, oldest first, pairs of events sharing a time.

    Of every 100 events: 80 enrollments (actor token/<id>), 15 renewals (actor
    device/<id>), 3 token.create, 1 device.revoke and 1 token.revoke by one of
    ADMINS admins; one event in 1,000 is an admin.revoke instead.
    """
    step = YEAR_US // max(events, 1)
    enrolled = 0
    for i in range(events):
        at = now_us - (events - (i - i % 2)) * step
        kind = i % 100
        admin = f"admin/ops-{(i // 100) % ADMINS}"
        if kind < 80:
            device = enrolled % devices
            enrolled += 1
            actor, action = f"token/{_token_id(device % tokens)}", "device.enroll"
            resource = f"device/{_device_id(device)}"
        elif kind < 95:
            resource = f"device/{_device_id((i * 7919) % devices)}"
            actor, action = resource, "device.renew"
        elif kind < 98:
            actor, action, resource = admin, "token.create", f"token/{_token_id(i % tokens)}"
        elif kind == 98:
            actor, action, resource = admin, "device.revoke", f"device/{_device_id(i % devices)}"
        elif i % 1000 == 999:
            actor, action, resource = admin, "admin.revoke", f"admin/gone-{i}"
        else:
            actor, action, resource = admin, "token.revoke", f"token/{_token_id(i % tokens)}"
        yield (at, actor, action, resource, "10.0.0.1", "bulk")


TOKEN_COLUMNS = (
    "id, label, secret_hash, max_uses, uses, expires_at, created_at, created_by, revoked_at, "
    "last_used_at"
)
DEVICE_COLUMNS = (
    "id, hostname, token_id, public_key_sha256, serial, certificate_pem, not_after, enrolled_at, "
    "last_seen_at, revoked_at, peer, facts"
)
AUDIT_COLUMNS = "at, actor, action, resource, peer, detail"


def load_sqlite(
    path: Path, tokens: int, devices: int, events: int, audit_only: bool = False
) -> None:
    token_rows, device_rows, audit_rows = _rows(tokens, devices, events, datetime.now(UTC))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")  # a bulk load; the server's own settings come back after
    db.execute("BEGIN")
    if not audit_only:
        db.executemany(
            f"INSERT INTO token ({TOKEN_COLUMNS}) VALUES ({','.join('?' * 10)})", token_rows
        )
        db.executemany(
            f"INSERT INTO device ({DEVICE_COLUMNS}) VALUES ({','.join('?' * 12)})", device_rows
        )
    db.executemany(f"INSERT INTO audit_event ({AUDIT_COLUMNS}) VALUES (?,?,?,?,?,?)", audit_rows)
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def _copy_text(rows: Iterator[tuple[Any, ...]], limit: int) -> io.StringIO | None:
    out = io.StringIO()
    n = 0
    for row in rows:
        fields = []
        for value in row:
            if value is None:
                fields.append("\\N")
            elif isinstance(value, bytes):
                fields.append("\\\\x" + value.hex())
            else:
                fields.append(str(value).replace("\\", "\\\\").replace("\n", "\\n"))
        out.write("\t".join(fields) + "\n")
        n += 1
        if n >= limit:
            break
    if n == 0:
        return None
    out.seek(0)
    return out


def load_postgres(
    url: str, tokens: int, devices: int, events: int, audit_only: bool = False
) -> None:
    token_rows, device_rows, audit_rows = _rows(tokens, devices, events, datetime.now(UTC))
    copy_into(
        url,
        (
            ("token", TOKEN_COLUMNS, iter(()) if audit_only else token_rows),
            ("device", DEVICE_COLUMNS, iter(()) if audit_only else device_rows),
            ("audit_event", AUDIT_COLUMNS, audit_rows),
        ),
    )


def copy_into(url: str, tables: Iterable[tuple[str, str, Iterator[tuple[Any, ...]]]]) -> None:
    """COPY each (table, columns, rows) into a migrated database, label the devices as
    enrollments would (migration 14), then VACUUM ANALYZE."""
    import psycopg2
    import psycopg2.extensions

    # Sielum's store sets a process-wide wait callback (store/database.py), and
    # psycopg2 refuses COPY with one; this bulk load is not Sielum's, so it goes without.
    psycopg2.extensions.set_wait_callback(None)
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        for table, columns, rows in tables:
            while (chunk := _copy_text(rows, 100_000)) is not None:
                cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN", chunk)
        for statement in migrations.label_rows(migrations.POSTGRESQL):
            cur.execute(statement)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
    conn.close()


def fresh_postgres() -> str:
    import psycopg2

    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {PG_DATABASE}")
    admin.close()
    return f"postgresql://postgres@127.0.0.1:5432/{PG_DATABASE}"


def drop_postgres() -> None:
    import psycopg2

    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
    admin.close()


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": ordered[-1] * 1000, "n": len(ordered)}


def _timed(calls: int, call: Callable[[int], object]) -> dict[str, float]:
    samples = []
    for i in range(calls):
        t0 = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - t0)
    return _percentiles(samples)


def _follow(list_call: Callable[[str], Any]) -> Callable[[int], None]:
    """A step that reads the next page each time, back to the first after the last one."""
    cursor = [""]

    def step(_: int) -> None:
        reply = list_call(cursor[0])
        cursor[0] = reply.next_page_token

    return step


def measure(
    server: SielumProcess, csrs: list[str], calls: int, pages: int, tokens: int, devices: int
) -> dict[str, Any]:
    admin = server.admin()
    secret = server.create_token()
    enroll_channel = grpc.secure_channel(
        server.enroll_target, grpc.ssl_channel_credentials(root_certificates=server.ca_pem)
    )
    enroll = enroll_pb2_grpc.EnrollServiceStub(enroll_channel)
    some_token = (
        admin.ListEnrollmentTokens(
            admin_pb2.ListEnrollmentTokensRequest(page_size=1000), timeout=30
        )
        .tokens[-1]
        .id
    )

    def do_enroll(i: int) -> None:
        enroll.Enroll(
            enroll_pb2.EnrollRequest(
                token=secret, csr_pem=csrs[i], hostname=f"scale-{i}", facts={"os": "linux"}
            ),
            timeout=30,
        )

    follow = _follow
    pids = procstat.tree(server.pid)
    results: dict[str, Any] = {}
    with procstat.MemorySampler(pids) as memory:
        do_enroll(0)  # warm: connection, caches
        results["Enroll (c=1)"] = _timed(calls, lambda i: do_enroll(i + 1))
        results["ListDevices first page"] = _timed(
            pages,
            lambda _: admin.ListDevices(admin_pb2.ListDevicesRequest(page_size=100), timeout=30),
        )
        results["ListDevices next pages"] = _timed(
            pages,
            follow(
                lambda c: admin.ListDevices(
                    admin_pb2.ListDevicesRequest(page_size=100, page_token=c), timeout=30
                )
            ),
        )
        results["ListDevices token_id="] = _timed(
            pages,
            lambda _: admin.ListDevices(
                admin_pb2.ListDevicesRequest(page_size=100, token_id=some_token), timeout=30
            ),
        )
        results["ListEnrollmentTokens first page"] = _timed(
            pages,
            lambda _: admin.ListEnrollmentTokens(
                admin_pb2.ListEnrollmentTokensRequest(page_size=100), timeout=30
            ),
        )
        results["ListEnrollmentTokens next pages"] = _timed(
            pages,
            follow(
                lambda c: admin.ListEnrollmentTokens(
                    admin_pb2.ListEnrollmentTokensRequest(page_size=100, page_token=c), timeout=30
                )
            ),
        )
        # A scrape: the state gauges' database work is cached 5 s, so this shows
        # the cached cost; state_counts below is the uncached one.
        results["GET /metrics"] = _timed(
            pages,
            lambda _: urllib.request.urlopen(
                f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30
            ).read(),
        )
        for state in ("active", "revoked", "exhausted"):
            value = admin_pb2.TokenState.Value(f"TOKEN_STATE_{state.upper()}")
            results[f"ListEnrollmentTokens state={state}"] = _timed(
                pages,
                lambda _, value=value: admin.ListEnrollmentTokens(
                    admin_pb2.ListEnrollmentTokensRequest(page_size=100, state=value), timeout=30
                ),
            )
        results.update(measure_audit(admin, pages, tokens, devices))
    enroll_channel.close()
    results["peak RSS per process MiB"] = memory.peak_per_process_kib / 1024
    return results


def measure_audit(admin: Any, pages: int, tokens: int, devices: int) -> dict[str, Any]:
    """ListAuditEvents pages of 100: unfiltered, each filter alone, `since`, and a combination.

    The values are those audit_rows() loads; on the empty database they match
    (next to) nothing.
    """

    def ago(delta: timedelta) -> Timestamp:
        stamp = Timestamp()
        stamp.FromDatetime(datetime.now(UTC) - delta)
        return stamp

    def request(cursor: str, **fields: Any) -> Any:
        return admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(page_size=100, page_token=cursor, **fields),
            timeout=30,
        )

    cases: dict[str, dict[str, Any]] = {
        "": {},
        "actor=admin/ops-3": {"actor": "admin/ops-3"},
        "actor=token/<id>": {"actor": f"token/{_token_id(7)}"},
        "actor=admin/nobody": {"actor": "admin/nobody"},
        "resource=device/<id>": {"resource": f"device/{_device_id(12345 % devices)}"},
        "action=device.enroll": {"action": "device.enroll"},
        "action=admin.revoke": {"action": "admin.revoke"},
        "since=1h": {"since": ago(timedelta(hours=1))},
        "since=30d": {"since": ago(timedelta(days=30))},
        "action=token.revoke since=1d": {
            "action": "token.revoke",
            "since": ago(timedelta(days=1)),
        },
        # The worst case of the per-filter indexes: two filters, one read by
        # index and the other checked row by row, and nothing matching.
        "actor=admin/ops-3 action=admin.revoke": {
            "actor": "admin/ops-3",
            "action": "admin.revoke",
        },
    }
    results: dict[str, Any] = {}
    for name, fields in cases.items():
        label = f"ListAuditEvents {name}".rstrip()
        results[f"{label} first page"] = _timed(
            pages, lambda _, fields=fields: request("", **fields)
        )
        if name in ("", "actor=admin/ops-3", "since=30d"):
            results[f"{label} next pages"] = _timed(
                pages, _follow(lambda c, fields=fields: request(c, **fields))
            )
    return results


def run_backend(
    backend: str,
    work: Path,
    tokens: int,
    devices: int,
    events: int,
    calls: int,
    pages: int,
    workers: int | None,
    audit_only: bool = False,
) -> dict[str, Any]:
    data_dir = work / backend / "data"
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    init_data_dir(data_dir)
    url = fresh_postgres() if backend == "postgresql" else f"sqlite:///{data_dir / 'sielum.db'}"
    Store.open(url).close()  # migrate
    csrs = [] if audit_only else csr_pool(2 * (calls + 1))
    out: dict[str, Any] = {}
    for phase, csr_slice in (("empty", csrs[: calls + 1]), ("loaded", csrs[calls + 1 :])):
        if phase == "loaded":
            started = time.monotonic()
            print(
                f"  bulk-loading {devices} devices, {tokens} tokens, {events} audit events "
                f"on {backend}...",
                flush=True,
            )
            if backend == "postgresql":
                load_postgres(url, tokens, devices, events, audit_only)
            else:
                load_sqlite(data_dir / "sielum.db", tokens, devices, events, audit_only)
            out["load_seconds"] = time.monotonic() - started
            print(f"  loaded in {out['load_seconds']:.0f}s", flush=True)
        server = start_sielum(
            data_dir, database_url="" if backend == "sqlite" else url, workers=workers
        )
        try:
            if audit_only:
                with procstat.MemorySampler(procstat.tree(server.pid)) as memory:
                    out[phase] = measure_audit(server.admin(), pages, tokens, devices)
                out[phase]["peak RSS per process MiB"] = memory.peak_per_process_kib / 1024
            else:
                out[phase] = measure(server, csr_slice, calls, pages, tokens, devices)
        finally:
            server.stop()
        # What a scrape asks the database once per cache period (server/metrics.py).
        store = Store.open(url)
        try:
            now = datetime.now(UTC)
            out[phase]["state_counts (scrape, uncached)"] = _timed(
                min(pages, 50), lambda _: store.state_counts(now)
            )
        finally:
            store.close()
        for name, figures in out[phase].items():
            if isinstance(figures, dict):
                print(
                    f"  {backend:10} {phase:6} {name:64} p50 {figures['p50_ms']:7.2f} "
                    f"p99 {figures['p99_ms']:7.2f} ms",
                    flush=True,
                )
        print(
            f"  {backend:10} {phase:6} peak RSS/process "
            f"{out[phase]['peak RSS per process MiB']:.0f} MiB"
        )
    if backend == "sqlite":
        out["database_bytes"] = sum(
            p.stat().st_size for p in data_dir.glob("sielum.db*") if p.is_file()
        )
    else:
        drop_postgres()
    return out


def _pg_errors() -> type[Exception]:
    import psycopg2

    return psycopg2.Error  # type: ignore[no-any-return]


def print_table(report: dict[str, Any]) -> None:
    print()
    print(
        "| backend | call | empty p50 ms | empty p99 ms | loaded p50 ms | loaded p99 ms "
        "| loaded÷empty p50 |"
    )
    print("|---|---|---|---|---|---|---|")
    for backend, result in report["backends"].items():
        for name, empty in result["empty"].items():
            if not isinstance(empty, dict):
                continue
            loaded = result["loaded"][name]
            print(
                f"| {backend} | {name} | {empty['p50_ms']:.2f} | {empty['p99_ms']:.2f} "
                f"| {loaded['p50_ms']:.2f} | {loaded['p99_ms']:.2f} "
                f"| {loaded['p50_ms'] / empty['p50_ms']:.2f} |"
            )
        print(
            f"| {backend} | peak RSS per server process "
            f"| {result['empty']['peak RSS per process MiB']:.0f} MiB "
            f"| | {result['loaded']['peak RSS per process MiB']:.0f} MiB | | |"
        )


# --- --fleet-reads: what the dashboard and the directory read, at two fleet sizes -----

FLEET_SPAN_DAYS = 730  # the fleet enrolled evenly over two years
FLEET_DEVICE_COLUMNS = DEVICE_COLUMNS + ", tags"
RARE_TAG_EVERY = 10_000


def fleet_device_rows(devices: int, tokens: int, now_us: int) -> Iterator[tuple[Any, ...]]:
    """Devices enrolled evenly over FLEET_SPAN_DAYS, oldest first (seq order): one in 50
    revoked and one in 100 expired, spread evenly; one in 10 tagged prod, one in
    RARE_TAG_EVERY tagged rare; host-<i> each, 10 devices to a token (as token_rows)."""
    day = 86_400_000_000
    span = FLEET_SPAN_DAYS * day
    for i in range(devices):
        revoked = now_us - 30 * day if i % 50 == 7 else None
        not_after = now_us - 10 * day if i % 100 == 3 else now_us + 60 * day
        if i % RARE_TAG_EVERY == 5:
            tags = '["rare"]'
        else:
            tags = '["prod"]' if i % 10 == 0 else "[]"
        yield (
            _device_id(i), f"host-{i}", _token_id(i % tokens),
            hashlib.sha256(f"key-{i}".encode()).hexdigest(), format(i + 1, "x"), _CERT_PEM,
            not_after, now_us - span + span * i // devices, None, revoked,
            f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", '{"os":"linux"}', tags,
        )  # fmt: skip


def load_fleet(url: str, devices: int, tokens: int, now: datetime) -> None:
    """COPY tokens and devices into a migrated, empty database, then VACUUM ANALYZE."""
    token_rows, _, _ = _rows(tokens, devices, 0, now)
    device_rows = fleet_device_rows(devices, tokens, to_micros(now))
    copy_into(
        url,
        (("token", TOKEN_COLUMNS, token_rows), ("device", FLEET_DEVICE_COLUMNS, device_rows)),
    )


def device_cursor(seq: int) -> str:
    """The page_token of the page after the device with this seq (store/base.py's cursor):
    the deep pages start in the middle of the fleet, as after following page tokens there."""
    return base64.urlsafe_b64encode(f"devices:{seq}".encode()).decode().rstrip("=")


def list_device_cases(devices: int) -> list[tuple[str, dict[str, Any]]]:
    """ListDevices' filters as timed at every size: (name, ListDevicesRequest fields).

    Each is timed on its first page and on a deep page (device_cursor). Filters that
    ListDevices gains go in this list, with values fleet_device_rows gives them.
    """
    return [
        ("no filter", {}),
        ("token_id (10 devices)", {"token_id": _token_id(7)}),
        ("state=active", {"state": admin_pb2.DEVICE_STATE_ACTIVE}),
        ("state=expired (1 %)", {"state": admin_pb2.DEVICE_STATE_EXPIRED}),
        ("state=revoked (2 %)", {"state": admin_pb2.DEVICE_STATE_REVOKED}),
        ("hostname (1 device)", {"hostname": f"host-{devices // 2}"}),
        ("tag=prod (1 in 10)", {"tag": "prod"}),
        (f"tag=rare (1 in {RARE_TAG_EVERY:,})", {"tag": "rare"}),
        (
            "hostname_prefix (11 devices)",
            {"hostname_prefix": f"host-{devices // 20}"},
        ),
        ("fact os=linux (every device)", {"facts": {"os": "linux"}}),
        ("fact os=bsd (none)", {"facts": {"os": "bsd"}}),
        ("tag=rare and fact os=linux", {"tag": "rare", "facts": {"os": "linux"}}),
    ]


_STATES = {
    admin_pb2.DEVICE_STATE_ACTIVE: DeviceState.ACTIVE,
    admin_pb2.DEVICE_STATE_EXPIRED: DeviceState.EXPIRED,
    admin_pb2.DEVICE_STATE_REVOKED: DeviceState.REVOKED,
}


def _store_filters(fields: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A case's request fields as Store.list_devices' keyword arguments (for --explain)."""
    kwargs = dict(fields)
    if "state" in kwargs:
        kwargs["state"], kwargs["now"] = _STATES[kwargs["state"]], now
    return kwargs


def _timed_for(calls: int, seconds: float, call: Callable[[int], object]) -> dict[str, float]:
    """As _timed, but stops after `seconds` (at least 5 calls): a slow case takes its time once."""
    samples = []
    deadline = time.perf_counter() + seconds
    for i in range(calls):
        t0 = time.perf_counter()
        call(i)
        samples.append(time.perf_counter() - t0)
        if i >= 4 and t0 > deadline:
            break
    return _percentiles(samples)


def measure_fleet_reads(
    server: SielumProcess, devices: int, calls: int, seconds: float
) -> dict[str, Any]:
    admin = server.admin()
    creds = grpc.ssl_channel_credentials(
        root_certificates=server.ca_pem,
        private_key=(server.data_dir / "admin" / "admin.key").read_bytes(),
        certificate_chain=(server.data_dir / "admin" / "admin.pem").read_bytes(),
    )
    directory_channel = grpc.secure_channel(f"127.0.0.1:{server.api_port}", creds)
    directory = directory_pb2_grpc.DirectoryServiceStub(directory_channel)
    enroll_channel = grpc.secure_channel(
        server.enroll_target, grpc.ssl_channel_credentials(root_certificates=server.ca_pem)
    )
    enrolled = enroll_pb2_grpc.EnrollServiceStub(enroll_channel).Enroll(
        enroll_pb2.EnrollRequest(
            token=server.create_token(), csr_pem=csr_pool(1)[0], hostname="fleet-reads"
        ),
        timeout=30,
    )
    middle = device_cursor(devices // 2)
    results: dict[str, Any] = {}
    # The dashboard's overview page makes this one call (static/js/pages/overview.js).
    results["GetOverview (days=30)"] = _timed_for(
        calls,
        seconds,
        lambda _: admin.GetOverview(admin_pb2.GetOverviewRequest(days=30), timeout=60),
    )
    for name, fields in list_device_cases(devices):
        for page, token in (("first page", ""), ("deep page", middle)):
            results[f"ListDevices {name}, {page}"] = _timed_for(
                calls,
                seconds,
                lambda _, fields=fields, token=token: admin.ListDevices(
                    admin_pb2.ListDevicesRequest(page_size=100, page_token=token, **fields),
                    timeout=60,
                ),
            )
    check = directory_pb2.CheckCertificateRequest(certificate_pem=enrolled.certificate_pem)
    assert directory.CheckCertificate(check, timeout=30).valid
    results["CheckCertificate (current)"] = _timed_for(
        calls, seconds, lambda _: directory.CheckCertificate(check, timeout=30)
    )
    directory_channel.close()
    enroll_channel.close()
    return results


def explain_fleet_reads(url: str, devices: int) -> dict[str, str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the statements each read makes, as the Store makes them."""
    import logging

    import psycopg2

    statements: list[tuple[str, Any]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if isinstance(record.msg, tuple):
                statements.append(record.msg)

    peewee_log = logging.getLogger("peewee")
    handler, level = Capture(), peewee_log.level
    peewee_log.addHandler(handler)
    peewee_log.setLevel(logging.DEBUG)
    store = Store.open(url)
    now = datetime.now(UTC)
    reads: dict[str, Callable[[], object]] = {
        "GetOverview (days=30)": lambda: (
            store.state_counts(now),
            store.enrollments_per_day(now - timedelta(days=29)),
        ),
    }
    for name, fields in list_device_cases(devices):
        for page, token in (("first page", ""), ("deep page", device_cursor(devices // 2))):
            reads[f"ListDevices {name}, {page}"] = lambda fields=fields, token=token: (
                store.list_devices(page_size=100, cursor=token, **_store_filters(fields, now))
            )
    plans: dict[str, str] = {}
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        for name, read in reads.items():
            statements.clear()
            read()
            text = []
            for sql, params in list(statements):
                with conn.cursor() as cur:
                    cur.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
                    text += [sql, *(row[0] for row in cur.fetchall()), ""]
            plans[name] = "\n".join(text)
    finally:
        conn.close()
        store.close()
        peewee_log.removeHandler(handler)
        peewee_log.setLevel(level)
    return plans


def run_fleet_reads(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    sizes = [int(n) for n in args.sizes.split(",")]
    report: dict[str, Any] = {"sizes": {}, "plans": {}}
    for devices in sizes:
        data_dir = work / f"fleet-{devices}" / "data"
        data_dir.parent.mkdir(parents=True)
        init_data_dir(data_dir)
        url = fresh_postgres()
        try:
            Store.open(url).close()  # migrate
            started = time.monotonic()
            load_fleet(url, devices, max(devices // 10, 1), datetime.now(UTC))
            print(f"  {devices} devices loaded in {time.monotonic() - started:.0f} s", flush=True)
            server = start_sielum(data_dir, database_url=url, workers=args.workers)
            try:
                load0 = os.getloadavg()
                figures = measure_fleet_reads(server, devices, args.pages, args.case_seconds)
                figures["load average"] = [os.getloadavg(), load0]
            finally:
                server.stop()
            for name, f in figures.items():
                if isinstance(f, dict):
                    print(
                        f"  {devices:>9,} {name:58} p50 {f['p50_ms']:8.2f} "
                        f"p99 {f['p99_ms']:8.2f} ms  (n={f['n']})",
                        flush=True,
                    )
            report["sizes"][str(devices)] = figures
            if args.explain and devices == max(sizes):
                report["plans"] = explain_fleet_reads(url, devices)
        finally:
            drop_postgres()
    return report


def print_fleet_table(report: dict[str, Any]) -> None:
    sizes = list(report["sizes"])
    print()
    header = " | ".join(f"{int(n):,} p50 ms | {int(n):,} p99 ms" for n in sizes)
    print(f"| call | {header} | p99 {int(sizes[-1]):,} ÷ {int(sizes[0]):,} |")
    print("|---|" + "---|---|" * len(sizes) + "---|")
    first, last = report["sizes"][sizes[0]], report["sizes"][sizes[-1]]
    for name, f in first.items():
        if not isinstance(f, dict):
            continue
        cells = " | ".join(
            f"{report['sizes'][n][name]['p50_ms']:.2f} | {report['sizes'][n][name]['p99_ms']:.2f}"
            for n in sizes
        )
        print(f"| {name} | {cells} | {last[name]['p99_ms'] / f['p99_ms']:.1f} |")
    for n in sizes:
        print(f"load average during {int(n):,}: {report['sizes'][n]['load average']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--audit-events", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=300, help="sequential Enroll calls")
    parser.add_argument("--pages", type=int, default=200, help="calls per list measurement")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--workers", type=int, default=None, help="serve --workers N")
    parser.add_argument(
        "--audit-only",
        action="store_true",
        help="load only the audit trail and time only ListAuditEvents (a few minutes)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="20,000 devices and audit events, 2,000 tokens"
    )
    parser.add_argument(
        "--fleet-reads",
        action="store_true",
        help="PostgreSQL only: the overview, ListDevices' filters (first and deep page) and "
        "CheckCertificate at each of --sizes devices",
    )
    parser.add_argument("--sizes", default="10000,1000000", help="with --fleet-reads")
    parser.add_argument(
        "--case-seconds", type=float, default=20.0, help="with --fleet-reads: at most per case"
    )
    parser.add_argument(
        "--explain", action="store_true", help="with --fleet-reads: plans at the largest size"
    )
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if args.fleet_reads:
        work = Path(tempfile.mkdtemp(prefix="sielum-scale-"))
        try:
            fleet = run_fleet_reads(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print_fleet_table(fleet)
        for name, plan in fleet["plans"].items():
            print(f"\n--- {name}\n{plan}")
        if args.json_out:
            args.json_out.write_text(json.dumps(fleet, indent=1))
        return 0
    if args.quick:
        args.devices, args.tokens = min(args.devices, 20_000), min(args.tokens, 2_000)
        args.audit_events = min(args.audit_events, 20_000)
        args.calls, args.pages = min(args.calls, 100), min(args.pages, 50)
    work = Path(tempfile.mkdtemp(prefix="sielum-scale-"))
    started = time.time()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "devices": args.devices,
        "tokens": args.tokens,
        "audit_events": args.audit_events,
        "backends": {},
    }
    try:
        for backend in args.backends.split(","):
            print(
                f"{backend}: {args.devices} devices, {args.tokens} tokens, "
                f"{args.audit_events} audit events",
                flush=True,
            )
            for attempt in range(1, 4):
                try:
                    report["backends"][backend] = run_backend(
                        backend, work / f"try{attempt}", args.tokens, args.devices,
                        args.audit_events, args.calls, args.pages, args.workers,
                        args.audit_only,
                    )  # fmt: skip
                    break
                except (OSError, RuntimeError, grpc.RpcError, _pg_errors()) as error:
                    # The PostgreSQL cluster is shared: a test suite elsewhere on the
                    # machine may restart it under us. Start the backend over.
                    print(f"  {backend} run {attempt} failed ({error!r:.200}); starting over")
                    if attempt == 3:
                        raise
                    time.sleep(20)  # let a restarting PostgreSQL come back
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["elapsed_seconds"] = time.time() - started
    print_table(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.pop("SIELUM_DATABASE_URL", None)
    sys.exit(main())
