"""Start-up: wires store, CA, services and interceptor into one grpc.server on two ports."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from sielum.admin.service import MAX_REPLY_BYTES, Administration
from sielum.admin.servicer import AdminServicer
from sielum.admin.v1 import admin_pb2
from sielum.agent.v1 import agent_pb2
from sielum.ca.authority import CertificateAuthority
from sielum.ca.profile import DEFAULT_DEVICE_TTL
from sielum.ca.servercert import ServerCertificate
from sielum.clock import Clock, SystemClock
from sielum.core.authorization import METHOD_ROLES, Authorizer
from sielum.core.listeners import IDLE_TIMEOUT, HttpLimits, connection_cap
from sielum.core.methods import Method, service_methods, unary_methods
from sielum.core.observer import CallObserver
from sielum.core.runner import InlineRunner, Runner, ThreadRunner
from sielum.dashboard.web import Dashboard, Listener, PageConfig, own_certificate
from sielum.devices.directory import Directory
from sielum.devices.directory_servicer import DirectoryServicer
from sielum.devices.ephemeral import EphemeralSweep
from sielum.devices.feed import EventFeed, Watch
from sielum.devices.lastseen import FLUSH_EVERY, LastSeen
from sielum.devices.policy import DEFAULT_HEARTBEAT_INTERVAL, connection_idle_limit
from sielum.devices.ratelimit import HeartbeatLimit
from sielum.devices.service import DeviceService
from sielum.devices.servicer import AgentServicer
from sielum.directory.v1 import directory_pb2
from sielum.enroll.approval import Approvals
from sielum.enroll.committer import Committer
from sielum.enroll.ratelimit import FailureLimit, FailureLimiter
from sielum.enroll.service import Enroller
from sielum.enroll.servicer import EnrollServicer
from sielum.enroll.v1 import enroll_pb2
from sielum.identities.admins import AdminRegistry
from sielum.identities.services import ServiceRegistry
from sielum.identity import Role
from sielum.logs import log_event
from sielum.recorder import NoRecorder, Recorder
from sielum.revocation.publisher import CrlPublisher
from sielum.revocation.web import RevocationEndpoint
from sielum.rpc import reflection as port_reflection
from sielum.rpc.handlers import grpc_handler
from sielum.rpc.interceptor import ServerInterceptor, StreamLimit
from sielum.server.certificates import CertificateWatch, grpc_credentials
from sielum.server.metrics import Metrics, MetricsEndpoint, StateCollector, WorkerProcesses
from sielum.server.periodic import PeriodicTask
from sielum.server.workers import listen_socket
from sielum.sessions import DashboardSessions, LoginLinks
from sielum.store.database import is_on_this_host, redact_url
from sielum.store.store import Store

log = logging.getLogger("sielum.server")

MAX_MESSAGE_BYTES = 256 * 1024
# Bounds on what one connection may hold (tests/e2e/test_server_cli.py::
# test_fail_idle_connections_starve_the_admin_api): grpc's own handshake limit is
# 120 s, time enough for a thousand idle sockets to use up the file descriptors.
HANDSHAKE_TIMEOUT = timedelta(seconds=10)
MAX_CONCURRENT_STREAMS = 128  # HTTP/2 streams per connection, calls in flight included
DATABASE_THREADS = 16  # handler threads when the database is across a network
# How often a server looks for ephemeral devices to revoke: their ephemeral_after is at
# least a minute, and last_seen_at is written at most once a minute.
EPHEMERAL_SWEEP_SECONDS = 60.0
ENROLL_SERVICE = enroll_pb2.DESCRIPTOR.services_by_name["EnrollService"]
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]
AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
DIRECTORY_SERVICE = directory_pb2.DESCRIPTOR.services_by_name["DirectoryService"]
SERVICES = (ENROLL_SERVICE, ADMIN_SERVICE, AGENT_SERVICE, DIRECTORY_SERVICE)
SERVICE_NAMES = tuple(service.full_name for service in SERVICES)
T = TypeVar("T")


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    enroll_addr: str = "127.0.0.1:8443"
    api_addr: str = "127.0.0.1:8444"
    database_url: str = ""  # empty: sqlite:///<data_dir>/sielum.db
    device_ttl: timedelta = DEFAULT_DEVICE_TTL
    heartbeat_interval: timedelta = DEFAULT_HEARTBEAT_INTERVAL  # what agents are asked to keep
    advertise_api: str = ""  # empty: derived from api_addr
    # Threads for the handlers; 0: on the event loop; None: 0 with the database on
    # this host, DATABASE_THREADS with one across a network.
    threads: int | None = None
    failure_limit: FailureLimit = field(default_factory=FailureLimit)
    heartbeat_limit: HeartbeatLimit = field(default_factory=HeartbeatLimit)
    ca_passphrase: bytes | None = None
    worker_index: int | None = None  # set in the workers of `serve --workers N`
    # Streaming calls (health Watch, reflection) open at once, per connection, per peer
    # address (IPv6: per /64) and in all.
    max_streams_per_connection: int = 16
    max_streams_per_address: int = 100
    max_streams: int = 1000
    # A connection that has not finished its TLS handshake by then is closed.
    handshake_timeout: timedelta = HANDSHAKE_TIMEOUT
    # The HTTP listeners (dashboard, metrics): a connection without a whole request's
    # headers for this long is closed, and a request body must arrive within it.
    idle_timeout: timedelta = IDLE_TIMEOUT
    # Connections each HTTP listener holds at once; None: a share of the open-files
    # limit (core/listeners.py).
    max_http_connections: int | None = None
    # How often the server certificate's files are checked for a renewal.
    certificate_check_interval: float = 10.0
    # /metrics: "off", or HOST:PORT to listen on; metrics_fd, a socket already
    # listening (a worker's, from the supervisor). metrics_dir: the run's
    # multiprocess directory (server/multiproc.py); None keeps values in-process.
    metrics_addr: str = "off"
    metrics_fd: int | None = None
    metrics_dir: Path | None = None
    # Names beside the listener's own address that /metrics answers as Host (--metrics-host).
    metrics_hosts: tuple[str, ...] = ()
    dashboard_addr: str | None = None  # None: no dashboard
    dashboard_url: str = ""  # empty: https://<dashboard_addr's host>:<its port>
    dashboard_cert: Path | None = None  # None: the server certificate and chain
    dashboard_key: Path | None = None
    advertise_enroll_url: str = ""  # the dashboard's agent command; empty: derived
    # The revocation port (/crl, /ocsp): "off", or HOST:PORT; revocation_fd, a socket
    # already listening (a worker's, from the supervisor). crl_url and ocsp_url go into
    # the device certificates issued (serve --crl-url, --ocsp-url); "" for none.
    revocation_addr: str = "off"
    revocation_fd: int | None = None
    crl_url: str = ""
    ocsp_url: str = ""

    def http_limits(self) -> HttpLimits:
        return HttpLimits(
            max_connections=self.max_http_connections or connection_cap(),
            idle_timeout=self.idle_timeout.total_seconds(),
            handshake_timeout=self.handshake_timeout.total_seconds(),
        )

    @property
    def revocation_enabled(self) -> bool:
        return self.revocation_fd is not None or self.revocation_addr.strip().lower() != "off"

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_fd is not None or self.metrics_addr.strip().lower() != "off"

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'sielum.db'}"


def advertised_api_endpoint(api_addr: str, advertise: str, bound_port: int) -> str:
    """What EnrollResponse.api_endpoint says.

    ':port' tells the agent "the host you enrolled with, on this port".
    """
    if advertise:
        return advertise
    host = api_addr.rsplit(":", 1)[0].strip("[]")
    if host in ("", "0.0.0.0", "::", "*"):  # noqa: S104 - recognizing a wildcard, not binding one
        return f":{bound_port}"
    if ":" in host:
        return f"[{host}]:{bound_port}"
    return f"{host}:{bound_port}"


class SielumServer:
    """A running server. Build with start(); stop() finishes calls in flight.

    grpc.aio serves every call on one event loop, in a thread of its own, so the
    methods here are plain blocking ones. Sielum's handlers block on the store,
    and where they run depends on what the store waits for (core/runner.py):
    by default, with the database on this host (SQLite, or PostgreSQL on a Unix
    socket or loopback address), inline on the loop; with a database across a
    network, on DATABASE_THREADS threads, so the loop serves other calls while
    one waits on a round trip. `ServerConfig.threads` overrides it.
    """

    def __init__(self, config: ServerConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        # The CA first: a missing data dir is best explained as "run init".
        self.ca = CertificateAuthority.load(
            config.data_dir,
            passphrase=config.ca_passphrase,
            device_ttl=config.device_ttl,
            crl_url=config.crl_url,
            ocsp_url=config.ocsp_url,
        )
        # The server certificate may be renewed while serving (renew-server-cert): every
        # listener presenting it follows this one holder.
        self.server_certificate = ServerCertificate.of_data_dir(config.data_dir)
        self.certificate_watch = CertificateWatch(
            self.server_certificate,
            self.ca.certificate,
            self.clock,
            renew_command=f"sielum-server renew-server-cert --data-dir {config.data_dir}",
            interval=config.certificate_check_interval,
            # One expiry warning per server, not one per worker.
            warn=config.worker_index in (None, 0),
        )
        self.store = Store.open(config.resolved_database_url())
        # Ephemeral devices: one sweeping thread per server (worker 0); replicas may sweep
        # at once, each revocation being one conditional UPDATE (devices/ephemeral.py).
        self.ephemeral = EphemeralSweep(
            self.store,
            self.clock,
            # Heartbeats this process has noted but not written yet go first (built below).
            flush=lambda now: self.last_seen.flush(now),
        )
        self._sweep = PeriodicTask(
            "ephemeral-sweep",
            EPHEMERAL_SWEEP_SECONDS,
            self.ephemeral.sweep,
            finish=self.store.db.close,  # this thread's connection
        )
        threads = config.threads
        if threads is None:
            local = is_on_this_host(config.resolved_database_url())
            threads = 0 if local else DATABASE_THREADS
        self._runner: Runner = ThreadRunner(threads) if threads else InlineRunner()
        self._stopped = threading.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="grpc-loop", daemon=True
        )
        self._loop_thread.start()
        try:
            self._on_loop(self._build())
        except BaseException:
            self._close_loop()
            self.store.close()
            raise

    def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()
        self._loop.close()
        self._runner.close()

    async def _build(self) -> None:
        config = self.config
        # Metrics first: the services and the interceptor record into them.
        self.metrics: Metrics | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._metrics_socket: socket.socket | None = None
        self.metrics_port = 0  # 0: no /metrics
        recorder: Recorder = NoRecorder()
        observe: CallObserver | None = None
        if config.metrics_enabled:
            self.metrics = recorder = Metrics(
                method_types(), directory=config.metrics_dir, crl=config.revocation_enabled
            )
            observe = functools.partial(self.metrics.observe_call, "grpc")
        self.last_seen = LastSeen(self.store)
        device_service = DeviceService(
            self.store,
            self.ca,
            self.clock,
            recorder,
            heartbeat_interval=config.heartbeat_interval,
            last_seen=self.last_seen,
            heartbeat_limit=config.heartbeat_limit,
        )
        self.admins = AdminRegistry(self.store, self.ca, self.clock, recorder)
        self.service_registry = ServiceRegistry(self.store, self.ca, self.clock, recorder)
        self.authorizer = Authorizer(
            METHOD_ROLES,
            {
                Role.DEVICE: device_service.check_may_call,
                Role.ADMIN: self.admins.check_may_call,
                Role.SERVICE: self.service_registry.check_may_call,
            },
        )
        ours = [f"/{service.full_name}/{m.name}" for service in SERVICES for m in service.methods]
        self.streams = StreamLimit(
            config.max_streams_per_connection, config.max_streams, config.max_streams_per_address
        )
        interceptor = ServerInterceptor(
            self.authorizer,
            self._runner,
            ours,
            self.streams,
            observe,
            started=None
            if self.metrics is None
            else functools.partial(self.metrics.start_call, "grpc"),
        )
        self.grpc_server = grpc.aio.server(
            interceptors=[interceptor],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_REPLY_BYTES),
                ("grpc.so_reuseport", 1),
                ("grpc.server_handshake_timeout_ms", _millis(config.handshake_timeout)),
                ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
                # No call on it for this long: GOAWAY, and the client reconnects.
                (
                    "grpc.max_connection_idle_ms",
                    _millis(connection_idle_limit(config.heartbeat_interval)),
                ),
            ],
        )
        enroll_creds = grpc_credentials(self.server_certificate, client_ca_pem=None)
        api_creds = grpc_credentials(
            self.server_certificate, client_ca_pem=self.ca.certificate_pem.encode("ascii")
        )
        self.enroll_port = self.grpc_server.add_secure_port(config.enroll_addr, enroll_creds)
        self.api_port = self.grpc_server.add_secure_port(config.api_addr, api_creds)
        if not self.enroll_port or not self.api_port:
            raise OSError(f"cannot listen on {config.enroll_addr} and {config.api_addr}")
        self.api_endpoint = advertised_api_endpoint(
            config.api_addr, config.advertise_api, self.api_port
        )

        limiter = FailureLimiter(config.failure_limit)
        # Enrollments that arrive together share a transaction and its COMMIT.
        self.committer = Committer(self.store.enroll_devices, self._runner)
        enroller = Enroller(
            self.store, self.ca, self.clock, limiter, recorder, committer=self.committer
        )
        sessions = DashboardSessions(self.store, self.clock, recorder)
        listener = self._dashboard_listener()
        links = None if listener is None else LoginLinks(sessions, listener.base_url)
        self.feed = EventFeed(self.store, self._runner, on_streams=recorder.directory_streams)
        admin_methods = unary_methods(
            ADMIN_SERVICE,
            AdminServicer(
                Administration(self.store, self.clock, recorder),
                self.admins,
                self.service_registry,
                links,
                Approvals(self.store, self.ca, self.clock, recorder),
            ),
        )
        # Each service's methods, by full name; the dashboard serves AdminService's too.
        self.services: dict[str, tuple[Method, ...]] = {
            ENROLL_SERVICE.full_name: service_methods(
                ENROLL_SERVICE, EnrollServicer(enroller, self.api_endpoint)
            ),
            ADMIN_SERVICE.full_name: admin_methods,
            AGENT_SERVICE.full_name: service_methods(AGENT_SERVICE, AgentServicer(device_service)),
            DIRECTORY_SERVICE.full_name: service_methods(
                DIRECTORY_SERVICE,
                DirectoryServicer(
                    Directory(self.store, self.ca.certificate, self.clock),
                    Watch(self.feed, self.store, self.clock, recorder),
                ),
            ),
        }
        self.dashboard: Dashboard | None = None
        if listener is not None:
            self.dashboard = Dashboard(
                listener=listener,
                sessions=sessions,
                authorizer=self.authorizer,
                run=self._runner,
                methods=admin_methods,
                limits=config.http_limits(),
                observe=None
                if self.metrics is None
                else functools.partial(self.metrics.observe_call, "connect"),
                started=None
                if self.metrics is None
                else functools.partial(self.metrics.start_call, "connect"),
                pages=PageConfig(
                    ca_fingerprint=self.ca.fingerprint,
                    enroll_port=self.enroll_port,
                    enroll_url=config.advertise_enroll_url,
                ),
            )
        self.grpc_server.add_generic_rpc_handlers(
            tuple(grpc_handler(name, methods) for name, methods in self.services.items())
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        # Each port lists what can be called there: without a client certificate (the
        # enroll port) the enroll service; with one (the API port) every service.
        port_reflection.add_to_server(
            self.grpc_server,
            (ENROLL_SERVICE.full_name, health.SERVICE_NAME),
            (*SERVICE_NAMES, health.SERVICE_NAME),
        )
        if self.metrics is not None:
            state = StateCollector(
                self.store.state_counts,
                self.ca.certificate.not_valid_after_utc,
                self.clock,
                sessions=None if self.dashboard is None else sessions.count_open,
                pending=self.store.count_pending_requests,
                silent=self.store.count_silent_devices,
                server_not_after=lambda: self.server_certificate.current.not_after,
            )
            processes = WorkerProcesses(
                config.metrics_dir,
                supervisor=None if config.worker_index is None else os.getppid(),
            )
            self._metrics_endpoint = MetricsEndpoint(
                self.metrics.registry(state, processes),
                self.store.close,
                hosts=config.metrics_hosts,
                limits=config.http_limits(),
            )
            self._metrics_socket = (
                socket.socket(fileno=config.metrics_fd)
                if config.metrics_fd is not None
                else listen_socket(config.metrics_addr)
            )
            self.metrics_port = int(self._metrics_socket.getsockname()[1])
        self._build_revocation()

    def _build_revocation(self) -> None:
        """The revocation port: the CRL kept by a thread of its own, OCSP through the runner."""
        config = self.config
        self.crl_publisher: CrlPublisher | None = None
        self._revocation: RevocationEndpoint | None = None
        self._revocation_socket: socket.socket | None = None
        self.revocation_port = 0  # 0: no revocation port
        if not config.revocation_enabled:
            return
        self.crl_publisher = CrlPublisher(
            self.store,
            self.ca,
            self.clock,
            on_age=None if self.metrics is None else self.metrics.crl_age,
            close=self.store.close,
        )
        self._revocation = RevocationEndpoint(
            self.crl_publisher, self.ca, self.clock, self._runner, limits=config.http_limits()
        )
        self._revocation_socket = (
            socket.socket(fileno=config.revocation_fd)
            if config.revocation_fd is not None
            else listen_socket(config.revocation_addr)
        )
        self.revocation_port = int(self._revocation_socket.getsockname()[1])

    def _dashboard_listener(self) -> Listener | None:
        config = self.config
        if config.dashboard_addr is None:
            return None
        if config.dashboard_cert is not None and config.dashboard_key is not None:
            context, chain = own_certificate(config.dashboard_cert, config.dashboard_key)
        else:
            # The server certificate, following its renewals: a reload loads the new
            # pair into this context on the loop, for the handshakes after it.
            context = self.server_certificate.ssl_context(schedule=self._loop.call_soon_threadsafe)
            chain = self.server_certificate.current.chain_pem
        return Listener.open(
            config.dashboard_addr,
            ssl_context=context,
            chain_pem=chain,
            public_url=config.dashboard_url,
            # Only the workers of one `serve --workers N` share the port.
            reuse_port=config.worker_index is not None,
        )

    @property
    def dashboard_url(self) -> str:
        """Where the dashboard is, "" when it is off."""
        return "" if self.dashboard is None else self.dashboard.listener.base_url

    def start(self) -> SielumServer:
        # The expiry warnings come before the ports answer, so whoever sees the server
        # serving finds them in the log already (tests/e2e/test_server_certificate.py::
        # test_the_server_warns_when_its_certificate_ends_within_30_days).
        self.certificate_watch.start()
        try:
            self._on_loop(self._start())
        except BaseException:
            self.certificate_watch.stop()
            raise
        if self.config.worker_index in (None, 0):
            self._sweep.start()
        log_event(
            log,
            "serving",
            enroll=f"{self.config.enroll_addr.rsplit(':', 1)[0]}:{self.enroll_port}",
            api=f"{self.config.api_addr.rsplit(':', 1)[0]}:{self.api_port}",
            database=redact_url(self.config.resolved_database_url()),
            dashboard=self.dashboard_url or "off",
            calls=self._runner.description,
            metrics=self._metrics_address(),
            revocation=_address(self._revocation_socket),
            fingerprint=self.ca.fingerprint,
            certificate=self.server_certificate.current.serial,
            **({} if self.config.worker_index is None else {"worker": self.config.worker_index}),
        )
        return self

    def _metrics_address(self) -> str:
        if self._metrics_socket is None:
            return "off"
        host = str(self._metrics_socket.getsockname()[0])
        return f"[{host}]:{self.metrics_port}" if ":" in host else f"{host}:{self.metrics_port}"

    async def _start(self) -> None:
        if self._metrics_endpoint is not None and self._metrics_socket is not None:
            await self._metrics_endpoint.start(self._metrics_socket)
        await self.grpc_server.start()
        if self.dashboard is not None:
            await self.dashboard.start()
        if self._revocation is not None and self._revocation_socket is not None:
            assert self.crl_publisher is not None
            self.crl_publisher.start()
            await self._revocation.start(self._revocation_socket)
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._flusher = asyncio.create_task(self._flush_last_seen())

    async def _flush_last_seen(self) -> None:
        """Every FLUSH_EVERY, write what heartbeats saw: one transaction per process."""
        while True:
            await asyncio.sleep(FLUSH_EVERY.total_seconds())
            await self._flush_once()

    async def _flush_once(self) -> None:
        try:
            await self._runner(functools.partial(self.last_seen.flush, self.clock.now()))
        except Exception:
            # A bug, not an outage (flush logs those itself): keep heartbeats noted.
            log.exception("writing last_seen_at failed")

    def flush_last_seen(self) -> None:
        """Write what heartbeats saw now, rather than at the next flush (tests, a stop)."""
        self._on_loop(self._flush_once())

    def stop(self, grace: float = 10.0) -> None:
        """Refuse new calls, let calls in flight finish within grace seconds, then close."""
        if self._stopped.is_set():
            return
        self.certificate_watch.stop()
        self._sweep.stop()
        try:
            self._on_loop(self._stop(grace))
        finally:
            self._close_loop()
            self._stopped.set()
        log_event(
            log,
            "stopped",
            # How well enrollments shared their commits, for whoever tunes the server.
            enrollments_written=self.committer.enrollments,
            write_batches=self.committer.batches,
        )

    async def _stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.feed.close()  # WatchDevices streams end now, not after the grace period
        stopping = [self._runner.stop_server(self.grpc_server, grace)]
        if self.dashboard is not None:
            stopping.append(self.dashboard.stop())
        await asyncio.gather(*stopping)
        # After the calls in flight, which it counts; scrapes were answered meanwhile.
        if self._metrics_endpoint is not None:
            await self._metrics_endpoint.stop()
        if self._revocation is not None:
            await self._revocation.stop()
        if self.crl_publisher is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.crl_publisher.stop)
        # After the last heartbeat: what they saw is written before the store closes.
        if self._flusher is not None:
            self._flusher.cancel()
        await self._flush_once()
        # On the thread that used it: an SQLite connection belongs to one thread.
        await self._runner(self.store.close)

    def reload_certificate(self) -> bool:
        """Serve the server certificate's files as they are now (SIGHUP); True if it changed."""
        return self.certificate_watch.reload()

    def wait(self) -> None:
        """Block until stop() has finished."""
        self._stopped.wait()


def _address(sock: socket.socket | None) -> str:
    """HOST:PORT a socket listens on, "off" for none."""
    if sock is None:
        return "off"
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _millis(duration: timedelta) -> int:
    return max(1, int(duration.total_seconds() * 1000))


def method_types() -> dict[str, str]:
    """Every full method name the server answers, with its gRPC type, for the metrics' labels."""
    types = {}
    for service in iter_services():
        for method in service.methods:
            if method.client_streaming:
                kind = "bidi_stream" if method.server_streaming else "client_stream"
            else:
                kind = "server_stream" if method.server_streaming else "unary"
            types[f"/{service.full_name}/{method.name}"] = kind
    types[f"/{port_reflection.V1}/ServerReflectionInfo"] = "bidi_stream"
    return types


def iter_services() -> Iterator[Any]:
    """Every service descriptor this server registers (for the authorization-table test)."""
    yield from (
        *SERVICES,
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    )
