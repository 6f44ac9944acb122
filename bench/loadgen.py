"""Client processes making load: gRPC Enroll or health Check, or cfssl's HTTPS sign (asyncio)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

KINDS = ("enroll", "health", "cfssl")
MODES = ("reused", "new")


@dataclass(frozen=True)
class LoadSpec:
    """What one client process sends: kind of call, connection mode, its share of the load."""

    kind: str
    mode: str
    target: str  # 127.0.0.1:port
    ca_pem: bytes  # the root the client trusts for the server's TLS certificate
    concurrency: int  # calls in flight in this process
    duration: float  # seconds; the run also ends when the payloads run out
    max_calls: int
    payloads: tuple[str, ...] = ()  # CSR PEMs, one per call (enroll, cfssl)
    token: str = ""
    channels: int = 2  # reused mode, gRPC: HTTP/2 connections shared by the process's calls
    call_timeout: float = 30.0


@dataclass
class LoadResult:
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, successful calls
    started: float = 0.0  # time.time() of the first call
    ended: float = 0.0
    cpu_seconds: float = 0.0  # this process's own CPU over the measured window


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


class _Caller:
    """Makes one call at a time; the reused mode keeps its connections between calls."""

    async def prepare(self) -> None: ...

    async def call(self, index: int) -> None: ...

    async def close(self) -> None: ...


class _GrpcCaller(_Caller):
    def __init__(self, spec: LoadSpec) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from sielum.enroll.v1 import enroll_pb2, enroll_pb2_grpc

        self.grpc = grpc
        self.spec = spec
        self.creds = grpc.ssl_channel_credentials(root_certificates=spec.ca_pem)
        self.health_pb2, self.health_grpc = health_pb2, health_pb2_grpc
        self.enroll_pb2, self.enroll_grpc = enroll_pb2, enroll_pb2_grpc
        self.channels: list[Any] = []
        self.stubs: list[Any] = []
        self.pid = os.getpid()

    def _channel(self) -> Any:
        # A local subchannel pool: without it, grpc would quietly share one TCP/TLS
        # connection between all channels to the same target.
        return self.grpc.aio.secure_channel(
            self.spec.target, self.creds, options=[("grpc.use_local_subchannel_pool", 1)]
        )

    def _stub(self, channel: Any) -> Any:
        if self.spec.kind == "health":
            return self.health_grpc.HealthStub(channel)
        return self.enroll_grpc.EnrollServiceStub(channel)

    async def prepare(self) -> None:
        if self.spec.mode == "reused":
            for _ in range(self.spec.channels):
                channel = self._channel()
                await asyncio.wait_for(channel.channel_ready(), 30)
                self.channels.append(channel)
                self.stubs.append(self._stub(channel))

    async def _invoke(self, stub: Any, index: int) -> None:
        if self.spec.kind == "health":
            await stub.Check(self.health_pb2.HealthCheckRequest(), timeout=self.spec.call_timeout)
            return
        request = self.enroll_pb2.EnrollRequest(
            token=self.spec.token,
            csr_pem=self.spec.payloads[index],
            hostname=f"bench-{self.pid}-{index}",
            facts={"os": "linux", "bench": "1"},
        )
        await stub.Enroll(request, timeout=self.spec.call_timeout)

    async def call(self, index: int) -> None:
        if self.spec.mode == "reused":
            await self._invoke(self.stubs[index % len(self.stubs)], index)
            return
        channel = self._channel()
        try:
            await self._invoke(self._stub(channel), index)
        finally:
            await channel.close()

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


class _HttpCaller(_Caller):
    """cfssl's POST /api/v1/cfssl/sign over HTTPS/1.1: one connection per call in flight."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.host, port = spec.target.rsplit(":", 1)
        self.port = int(port)
        self.context = ssl.create_default_context(cadata=spec.ca_pem.decode())
        # One keep-alive connection per task; tasks find theirs by task object.
        self.connections: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, ssl=self.context)

    async def call(self, index: int) -> None:
        body = json.dumps({"certificate_request": self.spec.payloads[index]}).encode()
        keep = self.spec.mode == "reused"
        task = id(asyncio.current_task())
        conn = self.connections.get(task) if keep else None
        if conn is None:
            conn = await self._connect()
            if keep:
                self.connections[task] = conn
        reader, writer = conn
        head = (
            f"POST /api/v1/cfssl/sign HTTP/1.1\r\nHost: {self.spec.target}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            + ("" if keep else "Connection: close\r\n")
            + "\r\n"
        )
        try:
            writer.write(head.encode() + body)
            await writer.drain()
            status, payload = await asyncio.wait_for(_read_response(reader), self.spec.call_timeout)
        except BaseException:
            self.connections.pop(task, None)
            writer.close()
            raise
        if not keep:
            writer.close()
        if status != 200 or b'"success":true' not in payload:
            raise RuntimeError(f"HTTP_{status}")

    async def close(self) -> None:
        for _, writer in self.connections.values():
            writer.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
    }
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    chunks = []
    while True:  # chunked transfer encoding
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, b"".join(chunks)
        chunks.append(chunk[:-2])


async def _run(spec: LoadSpec, ready: Any, go: Any) -> LoadResult:
    caller: _Caller = _HttpCaller(spec) if spec.kind == "cfssl" else _GrpcCaller(spec)
    await caller.prepare()
    ready.put(os.getpid())
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    result = LoadResult()
    next_index = 0
    cpu0 = _cpu()
    result.started = time.time()
    deadline = time.monotonic() + spec.duration

    async def worker() -> None:
        nonlocal next_index
        while next_index < spec.max_calls and time.monotonic() < deadline:
            index = next_index
            next_index += 1
            t0 = time.perf_counter()
            try:
                await caller.call(index)
            except Exception as error:  # counted by kind, the run goes on
                code = getattr(error, "code", None)
                name = code().name if callable(code) else str(error) or type(error).__name__
                result.errors[name] += 1
                continue
            result.latencies.append(time.perf_counter() - t0)
            result.ok += 1

    await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    result.ended = time.time()
    result.cpu_seconds = _cpu() - cpu0
    await caller.close()
    return result


def _client_main(spec: LoadSpec, ready: Any, go: Any, results: Any) -> None:
    try:
        results.put(asyncio.run(_run(spec, ready, go)))
    except BaseException as error:
        ready.put(-1)
        results.put(error)


@dataclass
class RunFigures:
    """One run's figures, merged over the client processes."""

    ok: int
    errors: dict[str, int]
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_seconds: float


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def merge(results: list[LoadResult]) -> RunFigures:
    latencies = sorted(x for r in results for x in r.latencies)
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
    seconds = max(r.ended for r in results) - min(r.started for r in results)
    ok = sum(r.ok for r in results)
    return RunFigures(
        ok=ok,
        errors=dict(errors),
        seconds=seconds,
        per_second=ok / seconds if seconds > 0 else 0.0,
        p50_ms=_percentile(latencies, 0.50) * 1000,
        p99_ms=_percentile(latencies, 0.99) * 1000,
        max_ms=(latencies[-1] if latencies else float("nan")) * 1000,
        client_cpu_seconds=sum(r.cpu_seconds for r in results),
    )


def run_load(
    specs: list[LoadSpec], on_start: Any = None, on_end: Any = None, timeout: float = 300
) -> RunFigures:
    """Starts one process per spec, waits until all are connected, then lets them go at once.

    on_start/on_end run in this process right before the go signal and right after the
    last client finished, to read the server's CPU time around exactly the measured window.
    """
    ctx = mp.get_context("spawn")  # a fresh interpreter: grpc must not be forked
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    processes = [
        ctx.Process(target=_client_main, args=(spec, ready, go, results), daemon=True)
        for spec in specs
    ]
    for p in processes:
        p.start()
    try:
        for _ in processes:
            if ready.get(timeout=60) == -1:
                raise RuntimeError(f"a client process failed to start: {results.get(timeout=5)!r}")
        if on_start is not None:
            on_start()
        go.set()
        collected: list[LoadResult] = []
        for _ in processes:
            item = results.get(timeout=timeout)
            if isinstance(item, BaseException):
                raise RuntimeError(f"a client process failed: {item!r}")
            collected.append(item)
        if on_end is not None:
            on_end()
    finally:
        for p in processes:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return merge(collected)


def split(total: int, parts: int) -> list[int]:
    """total spread over parts as evenly as integers allow."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
