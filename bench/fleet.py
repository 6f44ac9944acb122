"""A fleet in miniature: N devices, each with its own key, certificate and connection.

An enrollment burst, then heartbeats on jittered schedules (on a connection kept open, on
a new connection per heartbeat with and without TLS session resumption, and the agent's
own pattern), then renewals; each phase reports the server's CPU per call, read from
/proc of every server process, beside grpc.health.v1.Health/Check on the same open
connections (the ceiling). From those it projects the cores a fleet of 1,000,000 devices
needs at the default settings.

    .venv/bin/python bench/fleet.py [--devices 300] [--backend sqlite|postgresql]
        [--replicas 1|2] [--workers N] [--rate 150] [--duration 12] [--json-out F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc.experimental import session_cache
from grpc_health.v1 import health_pb2, health_pb2_grpc
from procstat import rss_kib, tree, tree_cpu_seconds
from sielum_proc import SielumProcess, start_sielum

from sielum.agent.v1 import agent_pb2, agent_pb2_grpc
from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
FLEET = 1_000_000
DEFAULT_INTERVAL = timedelta(minutes=5)
# A 90-day certificate renews between day 60 and day 70: once per 65 days on average.
RENEWAL_PERIOD = timedelta(days=65)
JITTER = 0.10  # as the agent's schedule (endpoint/schedule.py)
CALL_TIMEOUT = 30.0
LOCAL_POOL = ("grpc.use_local_subchannel_pool", 1)


@dataclass
class Device:
    key_pem: bytes
    csr_pem: str
    api_target: str = ""
    device_id: str = ""
    certificate_pem: bytes = b""
    channel: Any = None  # the open connection, for the open mode
    cache: Any = None  # this device's TLS session cache, for the resume mode


@dataclass
class Phase:
    name: str
    calls: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    server_cpu: float = 0.0
    database_cpu: float = 0.0  # of server_cpu, PostgreSQL's backends
    client_cpu: float = 0.0
    machine_load: float = 0.0

    @property
    def us_per_call(self) -> float:
        return 1e6 * self.server_cpu / self.calls if self.calls else float("nan")

    def line(self) -> str:
        errors = f"  errors {dict(self.errors)}" if self.errors else ""
        return (
            f"{self.name:<34} {self.calls:>6} calls in {self.seconds:5.1f} s  "
            f"server {self.us_per_call:7.0f} us/call  "
            + (
                f"(of which PostgreSQL {1e6 * self.database_cpu / self.calls:5.0f})  "
                if self.database_cpu and self.calls
                else ""
            )
            + f"(server cores {self.server_cpu / self.seconds:.2f}, "
            f"client cores {self.client_cpu / self.seconds:.2f}, "
            f"load {self.machine_load:.2f}){errors}"
        )


def make_device() -> Device:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet")]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Device(key_pem, csr.public_bytes(serialization.Encoding.PEM).decode())


def new_csr(device: Device) -> str:
    device.key_pem = make_device().key_pem
    key = serialization.load_pem_private_key(device.key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


class Fleet:
    def __init__(
        self, servers: list[SielumProcess], devices: list[Device], database: str = ""
    ) -> None:
        self.servers = servers
        # PostgreSQL: its backends serving this database count as server CPU too.
        self.database = database
        self.devices = devices
        self.ca_pem = servers[0].ca_pem

    def server_pids(self) -> list[int]:
        pids = [pid for server in self.servers for pid in tree(server.pid)]
        return pids + (database_backends(self.database) if self.database else [])

    def credentials(self, device: Device) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=device.key_pem,
            certificate_chain=device.certificate_pem,
        )

    def channel(self, device: Device, *options: tuple[str, Any]) -> Any:
        return grpc.aio.secure_channel(
            device.api_target, self.credentials(device), options=[LOCAL_POOL, *options]
        )

    async def measure(self, name: str, body: Any) -> Phase:
        """Runs body (a coroutine function taking the Phase) and charges the server's CPU to it."""
        phase = Phase(name)
        backends = set(database_backends(self.database) if self.database else [])
        pids = set(self.server_pids()) | backends
        load0 = os.getloadavg()[0]
        cpu0, client0, t0 = _cpu_by_pid(pids), _own_cpu(), time.monotonic()
        await body(phase)
        phase.seconds = time.monotonic() - t0
        # Processes started during the phase (a backend for a new connection) count
        # from zero; those that ended during it lose what they used.
        backends |= set(database_backends(self.database) if self.database else [])
        cpu1 = _cpu_by_pid(pids | set(self.server_pids()) | backends)
        phase.server_cpu = sum(cpu1.values()) - sum(cpu0.values())
        phase.database_cpu = sum(cpu1.get(p, 0.0) - cpu0.get(p, 0.0) for p in backends)
        phase.client_cpu = _own_cpu() - client0
        phase.machine_load = max(load0, os.getloadavg()[0])
        print(phase.line(), flush=True)
        return phase

    # --- the phases -------------------------------------------------------------

    async def enroll_burst(self, token: str, concurrency: int) -> Phase:
        body, close = await self.enroll_body(token, concurrency, self.devices)
        try:
            return await self.measure(f"enrollment burst (x{concurrency})", body)
        finally:
            await close()

    async def enroll_body(self, token: str, concurrency: int, devices: list[Device]) -> Any:
        """A coroutine function enrolling devices (concurrency in flight), and a closer."""
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
        channels = [
            grpc.aio.secure_channel(
                f"127.0.0.1:{self.servers[i % len(self.servers)].enroll_port}",
                creds,
                options=[LOCAL_POOL],
            )
            for i in range(2 * len(self.servers))
        ]
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 30)
        queue = list(enumerate(devices))

        async def worker(phase: Phase) -> None:
            while queue:
                index, device = queue.pop()
                channel = channels[index % len(channels)]
                server = self.servers[index % len(self.servers)]
                try:
                    reply = await enroll_pb2_grpc.EnrollServiceStub(channel).Enroll(
                        enroll_pb2.EnrollRequest(
                            token=token,
                            csr_pem=device.csr_pem,
                            hostname=f"fleet-{index}",
                            facts={"os": "linux"},
                        ),
                        timeout=CALL_TIMEOUT,
                    )
                except grpc.aio.AioRpcError as error:
                    phase.errors[f"Enroll {error.code().name}"] += 1
                    continue
                device.device_id = reply.device_id
                device.certificate_pem = reply.certificate_pem.encode()
                device.api_target = f"127.0.0.1:{server.api_port}"
                phase.calls += 1
                phase.kinds["enroll"] += 1

        async def body(phase: Phase) -> None:
            await asyncio.gather(*(worker(phase) for _ in range(concurrency)))

        async def close() -> None:
            for channel in channels:
                await channel.close()

        return body, close

    async def open_channels(self) -> None:
        for device in self.devices:
            device.channel = self.channel(device)
        await asyncio.gather(
            *(asyncio.wait_for(d.channel.channel_ready(), 60) for d in self.devices)
        )

    async def close_channels(self) -> None:
        for device in self.devices:
            if device.channel is not None:
                await device.channel.close()
                device.channel = None

    async def beats(self, name: str, kind: str, mode: str, rate: float, duration: float) -> Phase:
        """Every device calls on its own jittered schedule so that the fleet makes rate calls/s.

        mode: open (the device's open connection), new (a new connection and a full TLS
        handshake per call), resume (a new connection per call, resuming the device's TLS
        session).
        """
        if mode == "resume":
            for device in self.devices:
                if device.cache is None:
                    device.cache = session_cache.ssl_session_cache_lru(1)
        return await self.measure(name, self.beat_body(kind, mode, rate, duration))

    def beat_body(
        self,
        kind: str,
        mode: str,
        rate: float,
        duration: float,
        latencies: list[tuple[float, float]] | None = None,
    ) -> Any:
        period = len(self.devices) / rate

        async def one(device: Device) -> None:
            if mode == "open":
                await self._call(device.channel, kind)
                return
            options = [] if mode == "new" else [("grpc.ssl_session_cache", device.cache)]
            channel = self.channel(device, *options)
            try:
                await self._call(channel, kind)
            finally:
                await channel.close()

        async def device_loop(device: Device, phase: Phase, stop_at: float) -> None:
            await asyncio.sleep(random.uniform(0, period))
            while time.monotonic() < stop_at:
                started = time.monotonic()
                try:
                    await one(device)
                    phase.calls += 1
                    phase.kinds[kind] += 1
                    if latencies is not None:
                        latencies.append((started, time.monotonic() - started))
                except grpc.aio.AioRpcError as error:
                    phase.errors[error.code().name] += 1
                await asyncio.sleep(period * (1 + JITTER * (2 * random.random() - 1)))

        async def body(phase: Phase) -> None:
            stop_at = time.monotonic() + duration
            await asyncio.gather(*(device_loop(d, phase, stop_at) for d in self.devices))

        return body

    async def _call(self, channel: Any, kind: str) -> None:
        if kind == "health":
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT
            )
        else:
            await agent_pb2_grpc.AgentServiceStub(channel).Heartbeat(
                agent_pb2.HeartbeatRequest(), timeout=CALL_TIMEOUT
            )

    async def renewals(self, count: int, concurrency: int) -> Phase:
        body = self.renew_body(self.devices[:count], concurrency)
        return await self.measure(f"renewals (x{concurrency}, open connections)", body)

    def renew_body(self, devices: list[Device], concurrency: int) -> Any:
        queue = list(devices)

        async def worker(phase: Phase) -> None:
            while queue:
                device = queue.pop()
                csr = new_csr(device)  # the new key, before the clock of this call
                try:
                    reply = await agent_pb2_grpc.AgentServiceStub(device.channel).RenewCertificate(
                        agent_pb2.RenewCertificateRequest(csr_pem=csr), timeout=CALL_TIMEOUT
                    )
                except grpc.aio.AioRpcError as error:
                    phase.errors[f"Renew {error.code().name}"] += 1
                    continue
                device.certificate_pem = reply.certificate_pem.encode()
                phase.calls += 1
                phase.kinds["renew"] += 1

        async def body(phase: Phase) -> None:
            await asyncio.gather(*(worker(phase) for _ in range(concurrency)))

        return body

    async def mixed(
        self,
        token: str,
        newcomers: list[Device],
        renewing: list[Device],
        rate: float,
        duration: float,
    ) -> tuple[Phase, dict[str, float]]:
        """Heartbeats as before, with an enrollment burst and renewals in their middle third.

        Returns the phase (its calls by kind) and the heartbeats' latency percentiles
        before the burst and while it runs.
        """
        latencies: list[tuple[float, float]] = []
        beats = self.beat_body("heartbeat", "open", rate, duration, latencies)
        enroll, close = await self.enroll_body(token, 32, newcomers)
        renew = self.renew_body(renewing, 8)
        window: dict[str, float] = {}

        async def burst(phase: Phase) -> None:
            await asyncio.sleep(duration / 3)
            window["start"] = time.monotonic()
            await asyncio.gather(enroll(phase), renew(phase))
            window["end"] = time.monotonic()

        async def body(phase: Phase) -> None:
            await asyncio.gather(beats(phase), burst(phase))

        try:
            phase = await self.measure("mixed: heartbeats + burst + renewals", body)
        finally:
            await close()
        quiet = [d for t, d in latencies if t < window["start"]]
        during = [d for t, d in latencies if window["start"] <= t <= window["end"]]
        figures = {
            "burst_seconds": round(window["end"] - window["start"], 2),
            "p50_ms_before": _percentile(quiet, 50),
            "p99_ms_before": _percentile(quiet, 99),
            "p50_ms_during": _percentile(during, 50),
            "p99_ms_during": _percentile(during, 99),
        }
        print(
            f"  {dict(phase.kinds)}; the burst took {figures['burst_seconds']} s; heartbeat "
            f"latency p50/p99 before it {figures['p50_ms_before']}/{figures['p99_ms_before']} ms, "
            f"during it {figures['p50_ms_during']}/{figures['p99_ms_during']} ms",
            flush=True,
        )
        return phase, figures


def _percentile(samples: list[float], q: int) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return round(1000 * ordered[min(len(ordered) - 1, len(ordered) * q // 100)], 1)


def _cpu_by_pid(pids: set[int]) -> dict[int, float]:
    return {pid: tree_cpu_seconds([pid]) for pid in pids}


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def fresh_postgres(name: str) -> str:
    import psycopg2

    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def database_backends(name: str) -> list[int]:
    """The PostgreSQL backend processes connected to database name (all on this machine)."""
    import psycopg2

    admin = psycopg2.connect(PG_ADMIN)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))
            return [int(row[0]) for row in cur.fetchall()]
    finally:
        admin.close()


def drop_postgres(name: str) -> None:
    import psycopg2

    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


async def run_fleet(args: argparse.Namespace, servers: list[SielumProcess]) -> dict[str, Any]:
    t0 = time.monotonic()
    devices = [make_device() for _ in range(args.devices)]
    print(f"{args.devices} keys and CSRs made in {time.monotonic() - t0:.1f} s", flush=True)
    fleet = Fleet(servers, devices, args.db_name if args.backend == "postgresql" else "")
    token = servers[0].create_token()
    phases: dict[str, Phase] = {}

    async def idle(phase: Phase) -> None:
        await asyncio.sleep(3)

    phases["idle"] = await fleet.measure("server idle, 3 s (no connection)", idle)
    phases["enroll"] = await fleet.enroll_burst(token, args.concurrency)
    rss0 = sum(rss_kib(pid) for pid in fleet.server_pids())
    await fleet.open_channels()
    rss1 = sum(rss_kib(pid) for pid in fleet.server_pids())
    per_connection = (rss1 - rss0) / len(devices)
    print(f"server memory per open connection: {per_connection:.0f} KiB", flush=True)
    phases["idle_open"] = await fleet.measure(f"server idle, {args.devices} open, 3 s", idle)
    rate, duration = args.rate, args.duration
    # Twice each, in turn, so that whatever else the machine does falls on all alike.
    plan = [
        ("health_open", "Health/Check, open connection", "health", "open"),
        ("heartbeat_open", "Heartbeat, open connection", "heartbeat", "open"),
        ("heartbeat_resume", "Heartbeat, new conn., resumed TLS", "heartbeat", "resume"),
        ("heartbeat_new", "Heartbeat, new conn., full TLS", "heartbeat", "new"),
    ]
    plan = [step for step in plan if step[0] == "health_open" or step[3] in args.modes]
    runs: dict[str, list[Phase]] = {key: [] for key, *_ in plan}
    for _round in range(args.rounds):
        for key, name, kind, mode in plan:
            runs[key].append(await fleet.beats(name, kind, mode, rate, duration))
    phases["renew"] = await fleet.renewals(min(args.renewals, len(devices)), 8)
    newcomers = [make_device() for _ in range(args.burst)]
    renewing = devices[args.renewals : args.renewals + args.burst_renewals]
    mixed, mixed_figures = await fleet.mixed(token, newcomers, renewing, rate, 2 * duration)
    await fleet.close_channels()
    flush_us = flush_cost(args, servers[0], [d.device_id for d in devices if d.device_id])

    figures: dict[str, Any] = {k: _phase_json(p) for k, p in phases.items()}
    figures["last_seen_flush_us_per_device"] = flush_us
    figures["mixed"] = {**_phase_json(mixed), "kinds": dict(mixed.kinds), **mixed_figures}
    figures["kib_per_open_connection"] = round(per_connection, 1)
    for key, measured in runs.items():
        figures[key] = {
            "runs": [_phase_json(p) for p in measured],
            "us_per_call": statistics.median(p.us_per_call for p in measured),
        }
    health = figures["health_open"]["us_per_call"]
    print()
    print("median server CPU per call, and the ratio to Health/Check on an open connection:")
    for key, *_ in plan:
        us = figures[key]["us_per_call"]
        print(f"  {key:<18} {us:7.0f} us  {us / health:4.2f}x")
    # The mixed phase against the sum of its calls at the costs measured alone.
    # A kind the run made none of (--renewals 0, --burst 0) has no cost: it adds nothing.
    alone = (
        sum(
            calls * (figures[key]["us_per_call"] or 0.0)
            for calls, key in (
                (mixed.kinds["heartbeat"], "heartbeat_open"),
                (mixed.kinds["enroll"], "enroll"),
                (mixed.kinds["renew"], "renew"),
            )
            if calls
        )
        / 1e6
    )
    figures["mixed"]["server_cpu_at_costs_alone"] = round(alone, 3)
    print(
        f"  mixed phase: server CPU {mixed.server_cpu:.2f} s, its calls at the costs "
        f"measured alone {alone:.2f} s"
    )
    per_second = FLEET / DEFAULT_INTERVAL.total_seconds()
    renewals_per_second = FLEET / RENEWAL_PERIOD.total_seconds()
    # With --renewals 0 none was timed: a renewal is taken at 2 ms (about what the
    # runs that time one measure), a few thousandths of a core in all.
    renew_us = figures["renew"]["us_per_call"] or 2000.0
    projection = {}
    print(f"1,000,000 devices at the default 5-minute interval ({per_second:.0f} heartbeats/s,")
    print(
        f"{renewals_per_second:.2f} renewals/s at {renew_us:.0f} us each, "
        f"every heartbeat's last_seen_at written in a batch at {flush_us:.0f} us each):"
    )
    for key in ("heartbeat_open", "heartbeat_resume", "heartbeat_new"):
        if key not in figures:
            continue
        cores = per_second * figures[key]["us_per_call"] / 1e6
        cores += renewals_per_second * renew_us / 1e6
        # At a 5-minute interval every heartbeat is over a minute after the device's
        # last: each one is written, in a batch, once (0 for a server writing inline).
        cores += per_second * flush_us / 1e6
        projection[key] = cores
        print(f"  every heartbeat as {key:<18} {cores:5.2f} cores")
    figures["projection_cores"] = projection
    return figures


def flush_cost(args: argparse.Namespace, server: SielumProcess, device_ids: list[str]) -> float:
    """CPU per device of the batched last_seen_at write (Store.touch_devices), in µs.

    In this benchmark every device heartbeats every few seconds, so the servers write
    each one once a minute and the write all but vanishes from the heartbeat phases;
    at the default interval every heartbeat is written. So the write is timed here on
    its own: every device in one batch (as one flush of a busy process), each round a
    minute later than the last, counting this process's CPU and, on PostgreSQL, its
    backends'. 0 for a server whose heartbeat writes inline (--server-src before).
    """
    if args.server_src is not None:
        return 0.0
    from sielum.devices.lastseen import WRITE_EVERY
    from sielum.store.store import Store

    postgres = args.backend == "postgresql"
    url = (
        f"postgresql://postgres@127.0.0.1:5432/{args.db_name}"
        if postgres
        else f"sqlite:///{server.data_dir / 'sielum.db'}"
    )
    store = Store.open(url)
    try:
        start = datetime.now(UTC) + timedelta(hours=1)  # after anything the servers wrote
        store.touch_devices(dict.fromkeys(device_ids, start), WRITE_EVERY)  # warm-up
        backends = database_backends(args.db_name) if postgres else []
        cpu0 = time.process_time() + tree_cpu_seconds(backends)
        rounds = 10
        for i in range(1, rounds + 1):
            at = start + i * 2 * WRITE_EVERY
            written = store.touch_devices(dict.fromkeys(device_ids, at), WRITE_EVERY)
            assert written == len(device_ids), (written, len(device_ids))
        cpu = time.process_time() + tree_cpu_seconds(backends) - cpu0
    finally:
        store.close()
    us = 1e6 * cpu / (rounds * len(device_ids))
    print(f"last_seen_at, batches of {len(device_ids)}: {us:.0f} us per device written")
    return round(us, 1)


def _phase_json(phase: Phase) -> dict[str, Any]:
    return {
        "calls": phase.calls,
        "errors": dict(phase.errors),
        "seconds": round(phase.seconds, 2),
        "server_cpu_seconds": round(phase.server_cpu, 3),
        "client_cpu_seconds": round(phase.client_cpu, 3),
        "us_per_call": round(phase.us_per_call, 1) if phase.calls else None,
        "database_cpu_seconds": round(phase.database_cpu, 3),
        "load": round(phase.machine_load, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--replicas", type=int, default=1, help="serve processes, one database")
    parser.add_argument("--workers", type=int, default=2, help="workers per serve process")
    parser.add_argument("--rate", type=float, default=150.0, help="fleet calls per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--renewals", type=int, default=100)
    parser.add_argument("--burst", type=int, default=300, help="enrollments in the mixed phase")
    parser.add_argument(
        "--burst-renewals", type=int, default=50, help="renewals in the mixed phase"
    )
    parser.add_argument(
        "--modes",
        type=lambda text: text.split(","),
        default=["open", "resume", "new"],
        help="heartbeat connection modes to run, of open,resume,new (Health/Check always runs)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="enrollments in flight")
    parser.add_argument("--server-src", type=Path, help="another checkout's src/ to serve")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.backend == "sqlite" and args.replicas != 1:
        parser.error("several replicas need --backend postgresql")

    db_name = args.db_name = f"sielum_fleet_{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="sielum-fleet-") as tmp:
        data_dir = Path(tmp) / "data"
        url = fresh_postgres(db_name) if args.backend == "postgresql" else ""
        servers: list[SielumProcess] = []
        try:
            for _ in range(args.replicas):
                servers.append(
                    start_sielum(
                        data_dir,
                        database_url=url,
                        workers=args.workers,
                        server_src=args.server_src,
                        metrics=False,
                        # Another checkout's server gets no flags by default: say them.
                        # Each replica's revocation port is its own (the default is one
                        # fixed port, which the second replica would find taken).
                        extra=("--revocation-addr", "127.0.0.1:0")
                        + (
                            ("--metrics-addr", "off", "--dashboard-addr", "off")
                            if args.server_src
                            else ()
                        ),
                    )
                )
            print(
                f"{args.backend}, {args.replicas} replica(s) x {args.workers} worker(s), "
                f"{args.devices} devices, {args.rate:g} calls/s per phase, "
                f"load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            figures = asyncio.run(run_fleet(args, servers))
        finally:
            codes = [server.stop() for server in servers]
            if args.backend == "postgresql":
                drop_postgres(db_name)
        print(f"server exit codes {codes}")
    figures["settings"] = {k: str(v) for k, v in vars(args).items()}
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
