"""The device gate's standing read on PostgreSQL, hot and cold: CPU per read, client and backend.

    .venv/bin/python bench/standing_read.py [--reads 3000] [--gap 0.004] [--rounds 3]
    PYTHONPATH=/other/checkout/src .venv/bin/python bench/standing_read.py   # another Store

Hot: reads back to back. Cold: one read every --gap seconds inside an asyncio loop, as a
server takes a fleet's heartbeats, so that each read finds the code out of the caches
and both processes asleep; "sleep only" is the loop's own cost of that gap, to subtract.
Each cold read is made three ways: Store.get_device_standing (whatever the Store on the
path does), the prepared statement read blocking on a psycopg2 connection, and the same
statement on an asynchronous connection (`async_=True`) driven by loop.add_reader. CPU
is this process's (client) and that of the database's backends, from /proc. Makes a
fresh database on 127.0.0.1:5432 (or --url, with {name} for the database) and drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg2
import psycopg2.extensions as ext
from procstat import tree_cpu_seconds

from sielum.store.store import Store

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
STANDING = (
    "SELECT id, serial, previous_serial, previous_until, revoked_at, renewal_tat"
    " FROM device WHERE id = $1"
)


async def wait_ready(loop: asyncio.AbstractEventLoop, conn: Any) -> None:
    """Drives an asynchronous psycopg2 connection to POLL_OK on the loop."""
    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        ready = loop.create_future()
        fd = conn.fileno()
        add, remove = (
            (loop.add_reader, loop.remove_reader)
            if state == ext.POLL_READ
            else (loop.add_writer, loop.remove_writer)
        )
        add(fd, ready.set_result, None)
        try:
            await ready
        finally:
            remove(fd)


async def run(url: str, name: str, reads: int, gap: float, rounds: int) -> None:
    loop = asyncio.get_running_loop()
    store = Store.open(url)
    with store.db.connection_context():
        store.db.execute_sql(
            "INSERT INTO token (id, label, secret_hash, uses, created_at, created_by)"
            " VALUES ('t', 't', 'x', 1, 0, 'b')"
        )
        store.db.execute_sql(
            "INSERT INTO device (id, hostname, token_id, public_key_sha256, serial,"
            " certificate_pem, not_after, enrolled_at, peer, facts)"
            " VALUES ('dev1', 'h', 't', 'k', 'ab', 'PEM', 9999999999999999, 0, 'p', '{}')"
        )
    blocking = psycopg2.connect(url)  # with the Store's wait callback, as the Store's are
    blocking.autocommit = True
    blocking_cursor = blocking.cursor()
    blocking_cursor.execute(f"PREPARE standing AS {STANDING}")
    callback = ext.get_wait_callback()
    ext.set_wait_callback(None)  # an asynchronous connection takes none
    nonblocking = psycopg2.connect(url, async_=True)
    ext.set_wait_callback(callback)
    await wait_ready(loop, nonblocking)
    async_cursor = nonblocking.cursor()
    async_cursor.execute(f"PREPARE standing AS {STANDING}")
    await wait_ready(loop, nonblocking)

    async def nothing() -> None:
        return None

    async def store_read() -> object:
        return store.get_device_standing("dev1")

    async def blocking_read() -> object:
        blocking_cursor.execute("EXECUTE standing (%s)", ("dev1",))
        return blocking_cursor.fetchone()

    async def async_read() -> object:
        async_cursor.execute("EXECUTE standing (%s)", ("dev1",))
        await wait_ready(loop, nonblocking)
        return async_cursor.fetchone()

    admin = psycopg2.connect(PG_ADMIN)

    def backends() -> list[int]:
        with admin.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))
            return [int(row[0]) for row in cur.fetchall()]

    cases: list[tuple[str, Callable[[], Awaitable[object]], float]] = [
        ("hot, Store", store_read, 0.0),
        ("hot, blocking prepared", blocking_read, 0.0),
        ("cold, sleep only", nothing, gap),
        ("cold, Store", store_read, gap),
        ("cold, blocking prepared", blocking_read, gap),
        ("cold, asynchronous prepared", async_read, gap),
    ]
    for _ in range(rounds):
        for label, read, pause in cases:
            for _ in range(100):
                await read()
            pids = backends()
            client0, backend0 = time.process_time(), tree_cpu_seconds(pids)
            for _ in range(reads):
                if pause:
                    await asyncio.sleep(pause)
                await read()
            client = (time.process_time() - client0) / reads * 1e6
            backend = (tree_cpu_seconds(pids) - backend0) / reads * 1e6
            print(
                f"{label:<30} client {client:6.1f} us  backend {backend:6.1f} us"
                f"  (load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    admin.close()
    blocking.close()
    nonblocking.close()
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--gap", type=float, default=0.004, help="seconds between cold reads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/{name}")
    args = parser.parse_args()
    name = f"sielum_standing_{os.getpid()}"
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        asyncio.run(run(args.url.format(name=name), name, args.reads, args.gap, args.rounds))
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


if __name__ == "__main__":
    main()
