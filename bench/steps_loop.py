"""Sielum's own enrollment steps without gRPC: CPU per enrollment in a plain loop.

The EnrollServicer is called directly, one request after another, on one thread: the
request parsed from bytes, token check, CSR check, signing, the SQLite transaction,
the JSON log line (to a file), the reply serialized. What a server costs above this
figure is its gRPC and scheduling work. `--sql` also times each statement, BEGIN and
COMMIT (wall time; COMMIT includes the WAL write and SQLite's automatic checkpoints).
"""

from __future__ import annotations

import argparse
import collections
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from csrpool import csr_pool

WARM_UP = 200


def _time_statements(db: Any) -> dict[str, float]:
    """Wraps db's execute_sql, begin and commit to add up their wall time per kind."""
    spent: dict[str, float] = collections.defaultdict(float)

    def timed(kind_of: Any, call: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                spent[kind_of(*args)] += time.perf_counter() - started

        return wrapper

    def statement_kind(sql: str, *_: Any) -> str:
        words = sql.split()
        table = words[2] if words[0] == "INSERT" else words[1] if words[0] == "UPDATE" else ""
        if words[0] == "SELECT":
            table = words[words.index("FROM") + 1] + " WHERE " + " ".join(words[-3:-2])
        return f"{words[0]} {table}".strip()

    db.execute_sql = timed(statement_kind, db.execute_sql)
    db.begin = timed(lambda *_: "BEGIN", db.begin)
    db.commit = timed(lambda *_: "COMMIT", db.commit)
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--sql", action="store_true", help="time each SQL statement too")
    parser.add_argument(
        "--drop-index",
        action="append",
        default=[],
        metavar="NAME",
        help="drop this index first, to see what keeping it up costs an enrollment (repeatable)",
    )
    args = parser.parse_args()

    import sielum
    from sielum.admin.service import Administration
    from sielum.ca.authority import CertificateAuthority
    from sielum.clock import SystemClock
    from sielum.enroll.ratelimit import FailureLimit, FailureLimiter
    from sielum.enroll.service import Enroller
    from sielum.enroll.servicer import EnrollServicer
    from sielum.enroll.v1 import enroll_pb2
    from sielum.identity import Call, Caller
    from sielum.logs import configure_logging
    from sielum.store.store import Store

    work = Path(tempfile.mkdtemp(prefix="sielum-steps-"))
    try:
        server = Path(sys.executable).parent / "sielum-server"
        subprocess.run(
            [str(server), "init", "--data-dir", str(work)], check=True, capture_output=True
        )
        configure_logging("json")
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream((work / "sielum.log").open("w"))  # a file, as in production

        clock = SystemClock()
        store = Store.open(f"sqlite:///{work / 'sielum.db'}")
        for name in args.drop_index:
            store.db.execute_sql(f'DROP INDEX "{name}"')
        ca = CertificateAuthority.load(work, passphrase=None)
        created = Administration(store, clock).create_token(
            Caller(name="bench", peer="127.0.0.1"), label="steps", max_uses=None, expires_at=None
        )
        servicer = EnrollServicer(
            Enroller(store, ca, clock, FailureLimiter(FailureLimit())), ":8443"
        )
        requests = [
            enroll_pb2.EnrollRequest(
                token=created.secret.reveal(), csr_pem=pem, hostname=f"host-{i}"
            ).SerializeToString()
            for i, pem in enumerate(csr_pool(args.calls + WARM_UP))
        ]
        # What the interceptor hands a handler after authorizing an Enroll call.
        context = Call(
            method="/sielum.enroll.v1.EnrollService/Enroll", caller=None, peer="127.0.0.1"
        )

        def enroll(raw: bytes) -> bytes:
            request = enroll_pb2.EnrollRequest.FromString(raw)
            return servicer.Enroll(request, context).SerializeToString()

        for raw in requests[:WARM_UP]:
            enroll(raw)
        spent = _time_statements(store.db) if args.sql else {}
        started = time.process_time()
        for raw in requests[WARM_UP:]:
            enroll(raw)
        cpu = time.process_time() - started
        print(f"sielum {sielum.__file__}")
        print(f"{cpu / args.calls * 1e6:.0f} us of CPU per enrollment ({args.calls} calls)")
        for kind, seconds in sorted(spent.items(), key=lambda item: -item[1]):
            print(f"  {seconds / args.calls * 1e6:7.1f} us wall per enrollment  {kind}")
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
