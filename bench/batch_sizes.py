"""How many enrollments share a COMMIT in a real server: a burst, then the server's own count.

Starts one `sielum-server serve` (this checkout's), runs enroll_bench's reused-connection
load against it for --duration seconds, stops it and prints each worker's
`enrollments_written` and `write_batches` from its "stopped" log line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from csrpool import csr_pool
from enroll_bench import measure
from sielum_proc import start_sielum


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--database", default="", help="a database URL (default: SQLite)")
    parser.add_argument("--serve-arg", action="append", default=[], help="one more serve flag")
    args = parser.parse_args()
    load = argparse.Namespace(
        duration=args.duration, max_calls=6000, concurrency=args.concurrency,
        mode="reused", clients=2, channels=8,
    )  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="sielum-batches-"))
    pool = csr_pool(load.max_calls)
    log = work / "server.log"
    server = start_sielum(
        work / "data",
        workers=args.workers,
        log_path=log,
        database_url=args.database,
        extra=("--revocation-addr", "127.0.0.1:0", *args.serve_arg),
    )
    try:
        time.sleep(1)
        token = server.create_token()
        row = measure(
            "server", "enroll", "reused", args.concurrency, server.enroll_target,
            server.ca_pem, server.pid, pool, token, load,
        )  # fmt: skip
    finally:
        server.stop()
    for line in log.read_text().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("event") == "stopped" and entry.get("write_batches"):
            written, batches = entry["enrollments_written"], entry["write_batches"]
            print(f"worker: {written} enrollments in {batches} batches ({written / batches:.2f})")
    print(f"server CPU per enrollment {row.server_us_per_call:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
