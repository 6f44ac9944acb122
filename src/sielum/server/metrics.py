"""Prometheus metrics: what every call and decision counts, and /metrics summing all workers.

Metrics is the one object that writes them: the gRPC interceptor and the
dashboard's Connect transport call observe_call(); Enroller, DeviceService and
Administration see it as a sielum.recorder.Recorder. Under `serve` the values
live in the run's multiprocess directory (server/multiproc.py), one file per
process, and /metrics sums them, so whichever worker answers a scrape gives
the figures of all of them. Tokens, devices, the devices gone silent and the
certificates' expiry are not counted but read at scrape time (StateCollector),
the same in every worker; so are the workers' memory and CPU (WorkerProcesses),
which prometheus_client's multiprocess mode does not collect.

Label values come from closed sets only: the methods the server registers,
status codes, the recorder's enums. A method name nobody registered (a
dashboard request for a made-up path) is counted as "unknown", so no caller
can grow the number of series.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent import futures
from datetime import datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Literal

import grpc
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from sielum.clock import Clock
from sielum.core.listeners import BoundedSite, HttpLimits
from sielum.errors import SielumError
from sielum.logs import log_event
from sielum.model import DeviceState, StateCounts, TokenState
from sielum.recorder import (
    CertificateKind,
    DashboardLoginResult,
    Decision,
    EnrollmentResult,
    PolicyRule,
)

log = logging.getLogger("sielum.server")

Transport = Literal["grpc", "connect"]
UNKNOWN = "unknown"
# From 1 ms: an enrollment takes about that, and a p99 needs buckets around it.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A scrape reads the database at most once per this many seconds (per worker).
STATE_TTL = 5.0
# sielum_devices_silent{for}: devices not heard from for at least this long.
SILENT_FOR: Mapping[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}

# grpc_code as the Go gRPC libraries spell it (go-grpc-prometheus, grpc-ecosystem),
# so that dashboards and alert rules written for those work unchanged.
_CODE_NAMES: Mapping[grpc.StatusCode, str] = {
    code: "".join(part.capitalize() for part in code.name.split("_")) for code in grpc.StatusCode
} | {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}


def grpc_code_name(code: grpc.StatusCode) -> str:
    """'OK', 'PermissionDenied', 'Canceled': the label value of a status code."""
    return _CODE_NAMES[code]


class Metrics:
    """The counters and the histogram; a sielum.recorder.Recorder for the domain services.

    methods maps each full method name the server answers ("/pkg.Service/Method")
    to its gRPC type ("unary", "server_stream", "bidi_stream"). directory is the
    run's multiprocess directory; None keeps the values in this process only
    (an in-process server in the tests).
    """

    def __init__(
        self, methods: Mapping[str, str], directory: Path | None = None, *, crl: bool = False
    ) -> None:
        if directory is not None and not values.ValueClass._multiprocess:
            raise RuntimeError(
                "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set: "
                "set it before the server module is imported"
            )
        self.directory = directory
        self._methods = dict(methods)
        self._handled = Counter(
            "grpc_server_handled_total",
            "Calls completed on the server, by method and status code.",
            ["grpc_service", "grpc_method", "grpc_type", "grpc_code", "transport"],
            registry=None,
        )
        self._started = Counter(
            "grpc_server_started_total",
            "Calls started on the server, by method.",
            ["grpc_service", "grpc_method", "grpc_type", "transport"],
            registry=None,
        )
        self._seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from a call's arrival at the server to its answer, by method.",
            ["grpc_service", "grpc_method", "grpc_type", "transport"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self._enrollments = Counter(
            "sielum_enrollments_total",
            "Enroll calls, by how they ended.",
            ["result"],
            registry=None,
        )
        self._certificates = Counter(
            "sielum_certificates_issued_total",
            "Certificates the CA signed, by what for.",
            ["kind"],
            registry=None,
        )
        self._logins = Counter(
            "sielum_dashboard_logins_total",
            "Dashboard logins with a one-time link, by how they ended.",
            ["result"],
            registry=None,
        )
        self._subscribers = Gauge(
            "sielum_directory_subscribers",
            "DirectoryService/WatchDevices streams open.",
            registry=None,
            multiprocess_mode="livesum",
        )
        self._events = Counter(
            "sielum_directory_events_streamed_total",
            "Events sent on WatchDevices streams: snapshot entries, keepalives and changes.",
            registry=None,
        )
        # How old the CRL served is (revocation/publisher.py), when this server serves one.
        # Each worker builds and serves its own; the oldest of those alive is what a
        # relying party may get, hence livemax (the supervisor drops an exited
        # worker's file: server/multiproc.py::forget_process).
        self._crl_age: Gauge | None = None
        if crl:
            self._crl_age = Gauge(
                "sielum_crl_age_seconds",
                "How long ago the CRL served on the revocation port was built (oldest of the "
                "workers).",
                multiprocess_mode="livemax",
                registry=None,
            )
        self._refusals = Counter(
            "sielum_policy_refusals_total",
            "Enrollments a rule of their token's policy refused, by rule.",
            ["rule"],
            registry=None,
        )
        self._decisions = Counter(
            "sielum_enrollment_decisions_total",
            "Enrollment requests approved or denied by an admin.",
            ["decision"],
            registry=None,
        )
        # Every value of the small label sets starts at 0, so that rate() and alert
        # rules see a series before its first event.
        self._by_result = {r: self._enrollments.labels(r.value) for r in EnrollmentResult}
        self._by_kind = {k: self._certificates.labels(k.value) for k in CertificateKind}
        self._by_login = {r: self._logins.labels(r.value) for r in DashboardLoginResult}
        self._by_rule = {r: self._refusals.labels(r.value) for r in PolicyRule}
        self._by_decision = {d: self._decisions.labels(d.value) for d in Decision}
        # (transport, method, code) -> its counter and histogram; made on first use.
        self._calls: dict[tuple[str, str, grpc.StatusCode], tuple[Counter, Histogram]] = {}
        # (transport, method) -> its started counter; made on first use.
        self._starts: dict[tuple[str, str], Counter] = {}

    def start_call(self, transport: Transport, method: str) -> None:
        """A call arrived: its full method name (counted before it is authorized)."""
        child = self._starts.get((transport, method))
        if child is None:
            service, name, kind = self._method_labels(method)
            key = (transport, method if kind != UNKNOWN else UNKNOWN)
            child = self._starts.get(key)
            if child is None:
                child = self._starts[key] = self._started.labels(service, name, kind, transport)
        child.inc()

    def _method_labels(self, method: str) -> tuple[str, str, str]:
        """(grpc_service, grpc_method, grpc_type) of a full method name; made-up ones "unknown"."""
        kind = self._methods.get(method)
        if kind is None:
            return UNKNOWN, UNKNOWN, UNKNOWN
        service, _, name = method.lstrip("/").rpartition("/")
        return service, name, kind

    def observe_call(
        self, transport: Transport, method: str, code: grpc.StatusCode, seconds: float
    ) -> None:
        """One call answered: its full method name, its status and how long it took."""
        children = self._calls.get((transport, method, code))
        if children is None:
            children = self._children(transport, method, code)
        children[0].inc()
        children[1].observe(seconds)

    def _children(
        self, transport: str, method: str, code: grpc.StatusCode
    ) -> tuple[Counter, Histogram]:
        """The series of a call, made once; made-up method names all share one key."""
        service, name, kind = self._method_labels(method)
        if kind == UNKNOWN:
            method = UNKNOWN
        key = (transport, method, code)
        children = self._calls.get(key)
        if children is None:
            children = self._calls[key] = (
                self._handled.labels(service, name, kind, grpc_code_name(code), transport),
                self._seconds.labels(service, name, kind, transport),
            )
        return children

    # sielum.recorder.Recorder

    def enrollment(self, result: EnrollmentResult) -> None:
        self._by_result[result].inc()

    def certificate_issued(self, kind: CertificateKind) -> None:
        self._by_kind[kind].inc()

    def dashboard_login(self, result: DashboardLoginResult) -> None:
        self._by_login[result].inc()

    def directory_streams(self, change: int) -> None:
        self._subscribers.inc(change)

    def directory_events(self, count: int) -> None:
        self._events.inc(count)

    def crl_age(self, seconds: float) -> None:
        """The CRL this process serves was built that many seconds ago."""
        if self._crl_age is not None:
            self._crl_age.set(seconds)

    def policy_refusal(self, rule: PolicyRule) -> None:
        self._by_rule[rule].inc()

    def decision(self, decision: Decision) -> None:
        self._by_decision[decision].inc()

    def registry(self, *collectors: Collector) -> CollectorRegistry:
        """What /metrics shows: every process's values (or this one's), then the collectors'."""
        registry = CollectorRegistry()
        if self.directory is not None:
            MultiProcessCollector(registry, path=str(self.directory))  # type: ignore[no-untyped-call]
        else:
            for metric in (
                self._handled,
                self._started,
                self._seconds,
                self._enrollments,
                self._certificates,
                self._logins,
                self._subscribers,
                self._events,
                *([] if self._crl_age is None else [self._crl_age]),
                self._refusals,
                self._decisions,
            ):
                registry.register(metric)
        for collector in collectors:
            registry.register(collector)
        return registry


class StateCollector:
    """Gauges read at scrape time: tokens and devices by state, the certificates' expiry.

    counts is Store.state_counts, which reads indexes rather than every device
    row; its answer is kept for ttl seconds, so that several scrapers (or a
    dashboard refreshing) cost one query. A database that cannot answer leaves
    the two gauges out of the scrape (and is asked again after ttl), rather than
    showing stale figures as current.

    sessions, when given, counts the dashboard sessions open at a moment
    (sielum_dashboard_sessions); the dashboard wires it. pending counts the
    enrollment requests waiting for an admin (sielum_enrollment_requests_pending).
    silent(cutoffs) counts the devices not revoked whose last call (heartbeat,
    else enrollment) is older than each cutoff (sielum_devices_silent{for}), read
    with the same ttl. server_not_after is the server certificate's expiry as served
    now: a renewal reloads it without a restart.
    """

    def __init__(
        self,
        counts: Callable[[datetime], StateCounts],
        ca_not_after: datetime,
        clock: Clock,
        *,
        sessions: Callable[[datetime], int] | None = None,
        pending: Callable[[datetime], int] | None = None,
        silent: Callable[[Mapping[str, datetime]], Mapping[str, int]] | None = None,
        server_not_after: Callable[[], datetime] | None = None,
        version: str | None = None,
        ttl: float = STATE_TTL,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counts = counts
        self._ca_expiry = ca_not_after.timestamp()
        self._clock = clock
        self._sessions = sessions
        self._pending = pending
        self._silent = silent
        self._server_not_after = server_not_after
        self._version = version or build_version()
        self._ttl = ttl
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._cached: _State | None = None

    def _current(self) -> _State | None:
        with self._lock:
            now = self._monotonic()
            if self._read_at is None or now - self._read_at >= self._ttl:
                self._read_at = now
                try:
                    at = self._clock.now()
                    sessions = None if self._sessions is None else self._sessions(at)
                    pending = None if self._pending is None else self._pending(at)
                    silent = (
                        None
                        if self._silent is None
                        else self._silent({k: at - age for k, age in SILENT_FOR.items()})
                    )
                    self._cached = (self._counts(at), sessions, pending, silent)
                except SielumError as error:  # the database is unavailable
                    log_event(log, "metrics", level=logging.WARNING, reason=error.message)
                    self._cached = None
            return self._cached

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "sielum_build_info",
            "The Sielum version serving, as a label; always 1.",
            labels=["version"],
        )
        info.add_metric([self._version], 1)
        yield info
        yield GaugeMetricFamily(
            "sielum_ca_certificate_expiry_timestamp_seconds",
            "When the CA certificate expires, in seconds since the Unix epoch.",
            value=self._ca_expiry,
        )
        if self._server_not_after is not None:
            yield GaugeMetricFamily(
                "sielum_server_certificate_expiry_timestamp_seconds",
                "When the server certificate served now expires, in seconds since the Unix epoch.",
                value=self._server_not_after().timestamp(),
            )
        current = self._current()
        if current is None:
            return
        counts, sessions, pending, silent = current
        tokens = GaugeMetricFamily(
            "sielum_tokens", "Enrollment tokens, by state.", labels=["state"]
        )
        for token_state in TokenState:
            tokens.add_metric([token_state.value], counts.tokens[token_state])
        yield tokens
        devices = GaugeMetricFamily(
            "sielum_devices", "Enrolled devices, by state.", labels=["state"]
        )
        for device_state in DeviceState:
            devices.add_metric([device_state.value], counts.devices[device_state])
        yield devices
        if sessions is not None:
            yield GaugeMetricFamily(
                "sielum_dashboard_sessions", "Dashboard sessions open now.", value=sessions
            )
        if pending is not None:
            yield GaugeMetricFamily(
                "sielum_enrollment_requests_pending",
                "Enrollment requests waiting for an admin's approval (their token still usable).",
                value=pending,
            )
        if silent is not None:
            family = GaugeMetricFamily(
                "sielum_devices_silent",
                "Devices not revoked whose last call (heartbeat, else enrollment) is at least "
                "this old.",
                labels=["for"],
            )
            for name in SILENT_FOR:
                family.add_metric([name], silent[name])
            yield family


_State = tuple[StateCounts, int | None, int | None, Mapping[str, int] | None]


def build_version() -> str:
    """The installed package's version, as pip knows it."""
    try:
        return metadata.version("sielum")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


class WorkerProcesses:
    """process_resident_memory_bytes and process_cpu_seconds_total, summed over the workers.

    prometheus_client's process collector reads the one process that answers the
    scrape, and its multiprocess mode leaves it out altogether; Sielum's figures are
    those of every worker. The workers are the processes whose metric files are in
    the run's directory (each has one from its start) and whose parent is the
    supervisor: each is read from /proc at scrape time. A worker's CPU seconds are
    noted in the directory at each scrape (cpu_<pid>.txt, which the multiprocess
    collector does not read), so a worker that exited keeps counting with what it
    had used by the last scrape before it went, and the sum does not drop when the
    supervisor replaces it (tests/e2e/test_metrics.py::
    test_process_figures_are_summed_over_the_workers). Without /proc (not Linux),
    the two metrics are left out.
    """

    def __init__(self, directory: Path | None, supervisor: int | None) -> None:
        self._directory = directory
        self._supervisor = supervisor
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _read(self, pid: int) -> tuple[float, int] | None:
        """(CPU seconds, resident bytes) of one of our workers, None if it is not one (now)."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        fields = stat.rpartition(")")[2].split()
        ppid = int(fields[1])
        if pid != os.getpid() and ppid != self._supervisor:
            return None  # a pid reused by another program
        cpu = (int(fields[11]) + int(fields[12])) / self._ticks
        return cpu, int(fields[21]) * self._page

    def _pids(self) -> set[int]:
        pids = {os.getpid()}
        if self._directory is None or self._supervisor is None:
            return pids
        for path in self._directory.iterdir():
            tail = path.stem.rpartition("_")[2]
            if tail.isdigit() and path.suffix in (".db", ".txt"):
                pids.add(int(tail))
        return pids

    def collect(self) -> Iterable[Metric]:
        if not Path("/proc/self/stat").exists():
            return
        cpu_total = 0.0
        resident = 0
        for pid in sorted(self._pids()):
            noted = None if self._directory is None else self._directory / f"cpu_{pid}.txt"
            figures = self._read(pid)
            if figures is None:
                if noted is not None:
                    with contextlib.suppress(OSError, ValueError):
                        cpu_total += float(noted.read_text())
                continue
            cpu, rss = figures
            cpu_total += cpu
            resident += rss
            if noted is not None:
                with contextlib.suppress(OSError):
                    partial = noted.with_name(f".{noted.name}.{os.getpid()}")
                    partial.write_text(repr(cpu))
                    partial.replace(noted)
        yield CounterMetricFamily(
            "process_cpu_seconds_total",
            "User and system CPU time spent by the server's workers, in seconds "
            "(including workers that have exited).",
            value=cpu_total,
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes",
            "Resident memory of the server's workers, summed, in bytes.",
            value=resident,
        )


MISDIRECTED = 421


def host_name(header: str) -> str | None:
    """The name or address in a Host header, lower-case, without port, brackets or final dot.

    'LocalHost.:9464' -> 'localhost', '[::1]:9464' -> '::1'; None for what is no Host
    (empty, an IPv6 address without brackets, a port that is not digits).
    """
    value = header.strip().lower()
    if value.startswith("["):
        name, bracket, port = value[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and port[1:].isdigit())):
            return None
    else:
        name, colon, port = value.partition(":")
        if colon and not port.isdigit():
            return None
    name = name.rstrip(".")
    return name or None


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address, IPv4-mapped IPv6 as its IPv4 address; None for a name."""
    try:
        address = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_is_ours(header: str, local_address: str, names: Collection[str] = ()) -> bool:
    """Whether a request's Host names this listener, so that no DNS rebinding reads /metrics.

    A web page can reach a loopback or private port through a name of its own that it
    rebinds to that address; the browser then sends that name as Host. So the answer
    goes only to a Host that is the address the connection came in on (local_address:
    what Prometheus sends for a target given as HOST:PORT), localhost on a loopback
    address, or one of names (--metrics-host) an operator scrapes through
    (tests/rpc/test_metrics.py::test_fail_metrics_answers_any_host_dns_rebinding).
    """
    name = host_name(header)
    if name is None:
        return False
    if name in names:
        return True
    ours = _address(local_address)
    if ours is None:
        return False
    if name == "localhost":
        return ours.is_loopback
    return _address(name) == ours


class MetricsEndpoint:
    """GET /metrics over plain HTTP, served by aiohttp on the server's event loop.

    Every worker serves it on the one listening socket it inherited from the
    supervisor (or made itself, alone): any of them answers with the sum of all.
    The answer is built on a thread of its own, not on the loop: reading the
    state gauges may take a database query of tens of milliseconds on a large
    database (bench/scale_bench.py), and the loop goes on serving calls
    meanwhile (the database driver lets go of the GIL while it waits). close
    runs on that thread at the end: it closes the thread's own connection.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        close: Callable[[], None] = lambda: None,
        *,
        hosts: Iterable[str] = (),
        limits: HttpLimits | None = None,
    ) -> None:
        self._registry = registry
        self._close = close
        self._limits = limits or HttpLimits()
        # --metrics-host: names, beside the listener's own address, that Host may carry.
        self._hosts = frozenset(n.strip().lower().rstrip(".") for n in hosts if n.strip())
        self._pool = futures.ThreadPoolExecutor(1, thread_name_prefix="metrics")
        self._runner: web.AppRunner | None = None
        self.site: BoundedSite | None = None

    async def start(self, sock: socket.socket) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, **self._limits.runner_options()
        )
        await self._runner.setup()
        self.site = BoundedSite(self._runner, sock, limits=self._limits, label="metrics")
        await self.site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await asyncio.get_running_loop().run_in_executor(self._pool, self._close)
        self._pool.shutdown(wait=True)

    async def _metrics(self, request: web.Request) -> web.Response:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        local = str(sockname[0]) if sockname else ""
        if not host_is_ours(request.headers.get("Host", ""), local, self._hosts):
            # 421: this server does not answer for that name (RFC 9110, 15.5.20).
            return web.Response(
                status=MISDIRECTED,
                text="Host is not an address or name of this listener (see --metrics-host)\n",
            )
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.get_running_loop().run_in_executor(self._pool, encode, self._registry)
        return web.Response(body=body, headers={"Content-Type": content_type})
