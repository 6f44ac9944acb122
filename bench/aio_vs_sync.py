"""Should the server be grpc.aio? Three server shapes, the same Enroll work, side by side.

- `sync`: grpc.server with a pool of 16 threads (what Sielum runs);
- `aio-inline`: grpc.aio, the blocking enrollment runs on the event loop itself;
- `aio-threads`: grpc.aio, the enrollment runs on a pool of 16 threads;
- `aio-inline-take-in`: as `aio-inline`, with Sielum's InlineRunner, whose stop first
  takes in the calls waiting in grpc's core (what `sielum-server serve` runs).

Each shape serves Sielum's own EnrollServicer (SQLite, one process, no interceptor,
the same for all three). For each: Enroll with reused connections at 32 in flight
(enrollments/s, server CPU and context switches per enrollment), the health Check
ceiling, and a graceful stop (SIGTERM, 10 s grace) in the middle of 512 enrollments in
flight: how many calls the server dropped as CANCELLED instead of finishing them or
refusing them with UNAVAILABLE.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
import procstat
from csrpool import csr_pool
from grpc_health.v1 import health, health_pb2_grpc
from loadgen import LoadSpec, RunFigures, run_load, split
from sielum_proc import free_port

from sielum.admin.service import Administration
from sielum.ca.authority import CertificateAuthority
from sielum.ca.datadir import init_data_dir, load_server_credentials
from sielum.clock import SystemClock
from sielum.core.runner import InlineRunner
from sielum.enroll.ratelimit import FailureLimit, FailureLimiter
from sielum.enroll.service import Enroller
from sielum.enroll.servicer import EnrollServicer
from sielum.enroll.v1 import enroll_pb2_grpc
from sielum.identity import Caller
from sielum.store.store import Store

KINDS = ("sync", "aio-inline", "aio-threads", "aio-inline-take-in")
THREADS = 16
GRACE = 10.0


def serve(kind: str, data_dir: Path, database_url: str, port: int) -> None:
    enroller = Enroller(
        Store.open(database_url),
        CertificateAuthority.load(data_dir, passphrase=None),
        SystemClock(),
        FailureLimiter(FailureLimit(burst=0)),
    )
    servicer = EnrollServicer(enroller, ":8444")
    key, chain, _ = load_server_credentials(data_dir)
    address = f"127.0.0.1:{port}"
    creds = grpc.ssl_server_credentials([(key, chain)])
    if kind == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(THREADS))
        enroll_pb2_grpc.add_EnrollServiceServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        server.add_secure_port(address, creds)
        server.start()
        signal.signal(signal.SIGTERM, lambda *_: server.stop(GRACE))
        server.wait_for_termination()
        return

    pool = futures.ThreadPoolExecutor(THREADS) if kind == "aio-threads" else None
    runner = InlineRunner()

    class AsyncEnroll(enroll_pb2_grpc.EnrollServiceServicer):
        async def Enroll(self, request: Any, context: Any) -> Any:
            if kind == "aio-inline-take-in":
                return await runner(lambda: servicer.Enroll(request, context))
            if pool is None:
                return servicer.Enroll(request, context)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(pool, servicer.Enroll, request, context)

    async def stop(server: grpc.aio.Server) -> None:
        if kind == "aio-inline-take-in":
            await runner.stop_server(server, GRACE)  # as SielumServer.stop does
        else:
            await server.stop(GRACE)

    async def main() -> None:
        server = grpc.aio.server()
        enroll_pb2_grpc.add_EnrollServiceServicer_to_server(AsyncEnroll(), server)
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        server.add_secure_port(address, creds)
        await server.start()
        stopping: set[asyncio.Task[None]] = set()
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGTERM, lambda: stopping.add(asyncio.create_task(stop(server)))
        )
        await server.wait_for_termination()

    asyncio.run(main())


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every thread of a process."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if "ctxt_switches" in line:
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def load(
    kind: str, target: str, ca_pem: bytes, token: str, pool: list[str], **run: Any
) -> list[LoadSpec]:
    concurrency = run.pop("concurrency")
    max_calls = run.pop("max_calls", len(pool) // 2)
    return [
        LoadSpec(
            kind=kind,
            mode="reused",
            target=target,
            ca_pem=ca_pem,
            concurrency=share,
            payloads=tuple(pool[i::2]),
            token=token,
            max_calls=max_calls,
            **run,
        )
        for i, share in enumerate(split(concurrency, 2))
    ]


def measure(
    kind: str, work: Path, data_dir: Path, pool: list[str], duration: float
) -> dict[str, Any]:
    ca_pem = (data_dir / "ca.pem").read_bytes()
    database_url = f"sqlite:///{work / kind}.db"
    store = Store.open(database_url)
    token = (
        Administration(store, SystemClock())
        .create_token(Caller("bench", "local"), label="bench", max_uses=None, expires_at=None)
        .secret.reveal()
    )
    store.close()
    port = free_port()
    command = [sys.executable, __file__, "--serve", kind, str(data_dir), database_url, str(port)]
    process = subprocess.Popen(command)
    target = f"127.0.0.1:{port}"
    time.sleep(2.5)
    half = len(pool) // 2
    result: dict[str, Any] = {"kind": kind}
    try:
        before: dict[str, float] = {}
        figures = run_load(
            load("enroll", target, ca_pem, token, pool[:half], concurrency=32, duration=duration),
            lambda: before.update(
                cpu=procstat.cpu_seconds(process.pid), switches=context_switches(process.pid)
            ),
        )
        result["enroll_per_s"] = figures.per_second
        result["p99_ms"] = figures.p99_ms
        result["us_per_enroll"] = (
            1e6 * (procstat.cpu_seconds(process.pid) - before["cpu"]) / max(figures.ok, 1)
        )
        result["switches_per_enroll"] = (context_switches(process.pid) - before["switches"]) / max(
            figures.ok, 1
        )
        health_figures = run_load(
            load(
                "health",
                target,
                ca_pem,
                token,
                [],
                concurrency=32,
                duration=duration / 2,
                max_calls=200_000,
            )
        )
        result["check_per_s"] = health_figures.per_second
        # A graceful stop in the middle of a burst: every call is either finished or
        # refused with UNAVAILABLE (which a client may retry); CANCELLED is a call dropped.
        stop = threading.Timer(duration / 2, lambda: process.send_signal(signal.SIGTERM))
        stopped: RunFigures = run_load(
            load("enroll", target, ca_pem, token, pool[half:], concurrency=512, duration=duration),
            stop.start,
        )
        stop.cancel()
        result["stop_ok"] = stopped.ok
        result["stop_unavailable"] = stopped.errors.get("UNAVAILABLE", 0)
        result["stop_cancelled"] = stopped.errors.get("CANCELLED", 0)
        result["stop_other"] = sum(
            n for code, n in stopped.errors.items() if code not in ("UNAVAILABLE", "CANCELLED")
        )
        result["exit"] = process.wait(GRACE + 20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", nargs=4, metavar=("KIND", "DATA_DIR", "DATABASE", "PORT"))
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args()
    if args.serve:
        kind, data_dir, database_url, port = args.serve
        serve(kind, Path(data_dir), database_url, int(port))
        return 0
    work = Path(tempfile.mkdtemp(prefix="sielum-aio-"))
    data_dir = work / "data"
    init_data_dir(data_dir)
    kinds = args.kinds.split(",")
    pool = csr_pool(int(args.duration * 3000) * len(kinds))
    share = len(pool) // len(kinds)
    rows = [
        measure(kind, work, data_dir, pool[i * share : (i + 1) * share], args.duration)
        for i, kind in enumerate(kinds)
    ]
    print(
        "| server | enroll/s @32 | p99 ms | server µs/enroll | context switches/enroll "
        "| Check/s @32 | graceful stop @512: ok / UNAVAILABLE / CANCELLED / other |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['kind']} | {row['enroll_per_s']:.0f} | {row['p99_ms']:.1f} "
            f"| {row['us_per_enroll']:.0f} | {row['switches_per_enroll']:.1f} "
            f"| {row['check_per_s']:.0f} | {row['stop_ok']} / {row['stop_unavailable']} / "
            f"{row['stop_cancelled']} / {row['stop_other']} (exit {row['exit']}) |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
