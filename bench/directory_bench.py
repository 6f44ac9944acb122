"""What the directory costs and how fast a revocation reaches the services that rely on it.

    .venv/bin/python bench/directory_bench.py [--devices 1000] [--subscribers 100]
        [--revocations 1000] [--rate 50] [--checks 3000] [--database postgresql://...]

One `sielum-server serve` (SQLite unless --database), then, in one run:

1. **Propagation.** --subscribers WatchDevices streams, each on its own HTTP/2
   connection (as each relying service would hold one), all in this process (asyncio,
   grpc.aio). --devices devices enroll; then --revocations of them are revoked one by one
   at --rate per second, by an admin on a connection of its own. For each revocation and
   each subscriber: the time from RevokeDevice returning (the change is committed and
   acknowledged) to that subscriber receiving the REVOKED event. A verifying service
   (sielum.verify) refuses the device once it has applied the event, about a microsecond
   later (bench/verify_lookup.py). Prints p50, p99 and max.
2. **CheckCertificate CPU per call**, against the same server's trivial-RPC ceiling
   (grpc.health.v1.Health/Check on the API port): --checks calls of each, 16 in flight on
   one open connection, alternating in three rounds; the server's CPU (utime + stime
   from /proc) per call.

Prints one JSON line and a summary; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from csrpool import csr_pool
from procstat import tree, tree_cpu_seconds
from sielum_proc import SielumProcess, start_sielum

from sielum.admin.v1 import admin_pb2, admin_pb2_grpc
from sielum.directory.v1 import directory_pb2, directory_pb2_grpc
from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc

Kind = directory_pb2.DeviceEventKind


def credentials(server: SielumProcess) -> grpc.ChannelCredentials:
    admin = server.data_dir / "admin"
    return grpc.ssl_channel_credentials(
        root_certificates=server.ca_pem,
        private_key=(admin / "admin.key").read_bytes(),
        certificate_chain=(admin / "admin.pem").read_bytes(),
    )


def api_channel(server: SielumProcess, n: int) -> grpc.aio.Channel:
    # A distinct option per channel: grpc would otherwise share one connection among them.
    return grpc.aio.secure_channel(
        f"localhost:{server.api_port}", credentials(server), options=[("bench.channel", n)]
    )


async def enroll_all(server: SielumProcess, count: int) -> tuple[list[str], list[str]]:
    secret = server.create_token()
    csrs = csr_pool(count)
    channel = grpc.aio.secure_channel(
        f"localhost:{server.enroll_port}",
        grpc.ssl_channel_credentials(root_certificates=server.ca_pem),
    )
    stub = enroll_pb2_grpc.EnrollServiceStub(channel)
    semaphore = asyncio.Semaphore(32)

    async def one(i: int) -> enroll_pb2.EnrollResponse:
        async with semaphore:
            return await stub.Enroll(
                enroll_pb2.EnrollRequest(token=secret, csr_pem=csrs[i], hostname=f"bench-{i}"),
                timeout=60,
            )

    replies = await asyncio.gather(*(one(i) for i in range(count)))
    await channel.close()
    return [r.device_id for r in replies], [r.certificate_pem for r in replies]


class Subscriber:
    def __init__(self, server: SielumProcess, n: int) -> None:
        self.channel = api_channel(server, n)
        self.arrivals: dict[str, float] = {}  # device id -> monotonic time of its REVOKED
        self.synced = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def follow(self) -> None:
        stub = directory_pb2_grpc.DirectoryServiceStub(self.channel)
        call = stub.WatchDevices(directory_pb2.WatchDevicesRequest())
        async for event in call:
            if event.kind == Kind.DEVICE_EVENT_KIND_SYNCED:
                self.synced.set()
            elif event.kind == Kind.DEVICE_EVENT_KIND_REVOKED:
                self.arrivals[event.device_id] = time.monotonic()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def propagation(
    server: SielumProcess, args: argparse.Namespace, device_ids: list[str]
) -> dict[str, float]:
    subscribers = [Subscriber(server, n) for n in range(args.subscribers)]
    for s in subscribers:
        s.task = asyncio.create_task(s.follow())
    await asyncio.wait_for(asyncio.gather(*(s.synced.wait() for s in subscribers)), 120)
    admin_channel = api_channel(server, -1)
    admin = admin_pb2_grpc.AdminServiceStub(admin_channel)
    revoked_at: dict[str, float] = {}
    interval = 1.0 / args.rate
    started = time.monotonic()
    for i, device_id in enumerate(device_ids[: args.revocations]):
        await asyncio.sleep(max(0.0, started + i * interval - time.monotonic()))
        await admin.RevokeDevice(admin_pb2.RevokeDeviceRequest(id=device_id), timeout=30)
        revoked_at[device_id] = time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        len(s.arrivals) < len(revoked_at) for s in subscribers
    ):
        await asyncio.sleep(0.1)
    delays = [
        s.arrivals[d] - at for s in subscribers for d, at in revoked_at.items() if d in s.arrivals
    ]
    missing = len(subscribers) * len(revoked_at) - len(delays)
    for s in subscribers:
        assert s.task is not None
        s.task.cancel()
        await s.channel.close()
    await admin_channel.close()
    return {
        "samples": len(delays),
        "missing": missing,
        "p50_ms": 1000 * percentile(delays, 0.50),
        "p99_ms": 1000 * percentile(delays, 0.99),
        "max_ms": 1000 * max(delays),
        "mean_ms": 1000 * statistics.fmean(delays),
    }


async def cpu_per_call(server: SielumProcess, certificate_pem: str, calls: int) -> dict[str, float]:
    channel = api_channel(server, -2)
    directory = directory_pb2_grpc.DirectoryServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    check = directory_pb2.CheckCertificateRequest(certificate_pem=certificate_pem)

    async def run(make_call: object) -> float:
        semaphore = asyncio.Semaphore(16)

        async def one() -> None:
            async with semaphore:
                await make_call()  # type: ignore[operator]

        pids = tree(server.pid)
        before = tree_cpu_seconds(pids)
        await asyncio.gather(*(one() for _ in range(calls)))
        return (tree_cpu_seconds(pids) - before) / calls * 1e6

    kinds = {
        "check_certificate": lambda: directory.CheckCertificate(check, timeout=30),
        "health_check": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=30),
    }
    for make_call in kinds.values():  # warm up
        await asyncio.gather(*(make_call() for _ in range(50)))
    rounds: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(3):
        for name, make_call in kinds.items():
            rounds[name].append(await run(make_call))
    await channel.close()
    result = {f"{name}_us": statistics.median(v) for name, v in rounds.items()}
    result["ratio"] = result["check_certificate_us"] / result["health_check_us"]
    return result


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_sielum(Path(tmp) / "data", database_url=args.database, metrics=False)
        try:
            device_ids, pems = await enroll_all(server, args.devices)
            prop = await propagation(server, args, device_ids)
            live = pems[args.revocations] if args.revocations < len(pems) else pems[-1]
            cpu = await cpu_per_call(server, live, args.checks)
        finally:
            server.stop()
    return {
        "benchmark": "directory",
        "database": "postgresql" if args.database else "sqlite",
        "devices": args.devices,
        "subscribers": args.subscribers,
        "revocations": args.revocations,
        "rate_per_second": args.rate,
        "propagation": prop,
        "cpu_per_call": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--revocations", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="revocations per second")
    parser.add_argument("--checks", type=int, default=3000)
    parser.add_argument("--database", default="", help="a postgresql:// URL; default SQLite")
    args = parser.parse_args()
    args.revocations = min(args.revocations, args.devices)
    result = asyncio.run(main_async(args))
    print(json.dumps(result))
    prop, cpu = result["propagation"], result["cpu_per_call"]
    print(
        f"revoke -> received by each of {args.subscribers} subscribers: "
        f"p50 {prop['p50_ms']:.0f} ms, p99 {prop['p99_ms']:.0f} ms, max {prop['max_ms']:.0f} ms "  # type: ignore[index]
        f"({prop['samples']} samples, {prop['missing']} missing)",  # type: ignore[index]
        file=sys.stderr,
    )
    print(
        f"CheckCertificate {cpu['check_certificate_us']:.0f} us CPU per call, "  # type: ignore[index]
        f"Health/Check {cpu['health_check_us']:.0f} us: {cpu['ratio']:.2f}x",  # type: ignore[index]
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
