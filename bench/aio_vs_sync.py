"""Is grpc.aio faster? The health Check ceiling of a sync (thread pool) and an aio server, TLS."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
import procstat
from grpc_health.v1 import health, health_pb2_grpc
from loadgen import LoadSpec, run_load
from sielum_proc import free_port

from sielum.ca.datadir import init_data_dir, load_server_credentials


def serve(kind: str, data_dir: Path, port: int, threads: int) -> None:
    key, chain, _ = load_server_credentials(data_dir)
    creds = grpc.ssl_server_credentials([(key, chain)])
    if kind == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(threads))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        server.add_secure_port(f"127.0.0.1:{port}", creds)
        server.start()
        server.wait_for_termination()
        return

    async def main() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        server.add_secure_port(f"127.0.0.1:{port}", creds)
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", nargs=3, metavar=("KIND", "DATA_DIR", "PORT"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], Path(args.serve[1]), int(args.serve[2]), 16)
        return 0
    data_dir = Path(tempfile.mkdtemp(prefix="sielum-aio-")) / "data"
    init_data_dir(data_dir)
    ca_pem = (data_dir / "ca.pem").read_bytes()
    for kind in ("sync", "aio") * args.rounds:
        port = free_port()
        command = [sys.executable, __file__, "--serve", kind, str(data_dir), str(port)]
        process = subprocess.Popen(command)
        time.sleep(2.5)
        try:
            for mode in ("reused", "new"):
                cpu: dict[str, float] = {}
                specs = [
                    LoadSpec(
                        kind="health",
                        mode=mode,
                        target=f"127.0.0.1:{port}",
                        ca_pem=ca_pem,
                        concurrency=16,
                        duration=args.duration,
                        max_calls=40_000,
                    )
                    for _ in range(2)
                ]
                figures = run_load(
                    specs,
                    lambda: cpu.__setitem__("start", procstat.cpu_seconds(process.pid)),
                    lambda: cpu.__setitem__("end", procstat.cpu_seconds(process.pid)),
                )
                us = (cpu["end"] - cpu["start"]) / figures.ok * 1e6
                print(
                    f"{kind:5} {mode:6} {figures.per_second:6.0f}/s  server {us:4.0f} µs/call  "
                    f"p99 {figures.p99_ms:.1f} ms  client cpu {figures.client_cpu_seconds:.1f} s",
                    flush=True,
                )
        finally:
            process.terminate()
            process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
