"""sielum-server serve: the options checked, the open-files limit raised, the workers run."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import resource
import socket
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sielum.ca.authority import CertificateAuthority
from sielum.ca.revocation import check_public_url
from sielum.cli.conventions import CommandError
from sielum.core.addresses import split_address
from sielum.enroll.ratelimit import FailureLimit
from sielum.errors import InvalidArgumentError
from sielum.logs import configure_logging, log_event
from sielum.server import multiproc
from sielum.server.signals import SignalInbox
from sielum.server.workers import (
    Supervisor,
    listen_socket,
    reserve_port,
    signal_ready,
    worker_command,
)

if TYPE_CHECKING:
    from sielum.server.app import ServerConfig
from sielum.cli.server.common import DATABASE_ENV, read_passphrase, translate_error

# Linux's default fs.nr_open, for a hard limit of "unlimited" that setrlimit refuses.
_NOFILE_WITHOUT_HARD_LIMIT = 1_048_576


def _server_config(args: argparse.Namespace) -> ServerConfig:
    from sielum.server.app import ServerConfig

    return ServerConfig(
        data_dir=Path(args.data_dir),
        enroll_addr=args.enroll_addr,
        api_addr=args.api_addr,
        database_url=args.database or os.environ.get(DATABASE_ENV, ""),
        device_ttl=args.device_cert_ttl,
        heartbeat_interval=args.heartbeat_interval,
        advertise_api=args.advertise_api_addr,
        threads=args.threads,
        failure_limit=FailureLimit(
            burst=args.enroll_failure_burst, rate_per_second=args.enroll_failure_rate
        ),
        ca_passphrase=read_passphrase(),
        worker_index=args.worker_index,
        handshake_timeout=timedelta(seconds=args.handshake_timeout),
        idle_timeout=timedelta(seconds=args.idle_timeout),
        certificate_check_interval=args.certificate_check_interval,
        metrics_addr=args.metrics_addr,
        metrics_fd=args.metrics_fd,
        metrics_dir=Path(os.environ[multiproc.ENV]) if _metrics_on(args) else None,
        metrics_hosts=tuple(args.metrics_host),
        dashboard_addr=None if _dashboard_off(args) else args.dashboard_addr,
        dashboard_url=args.dashboard_url,
        dashboard_cert=Path(args.dashboard_cert) if args.dashboard_cert else None,
        dashboard_key=Path(args.dashboard_key) if args.dashboard_key else None,
        advertise_enroll_url=args.advertise_enroll_url,
        revocation_addr="off" if _revocation_off(args) else args.revocation_addr,
        revocation_fd=args.revocation_fd,
        crl_url=args.crl_url,
        ocsp_url=args.ocsp_url,
    )


def _revocation_off(args: argparse.Namespace) -> bool:
    return str(args.revocation_addr).strip().lower() == "off"


def _check_revocation_options(args: argparse.Namespace) -> None:
    if not _revocation_off(args):
        try:
            split_address(args.revocation_addr)
        except ValueError as error:
            raise InvalidArgumentError(f"--revocation-addr: {error} (or 'off')") from None
    for flag, value in (("--crl-url", args.crl_url), ("--ocsp-url", args.ocsp_url)):
        if value:
            try:
                check_public_url(flag, value)
            except ValueError as error:
                raise InvalidArgumentError(str(error)) from None


def _metrics_on(args: argparse.Namespace) -> bool:
    return bool(args.metrics_addr.strip().lower() != "off")


def _dashboard_off(args: argparse.Namespace) -> bool:
    return str(args.dashboard_addr).strip().lower() == "off"


def _check_dashboard_options(args: argparse.Namespace) -> None:
    if not _dashboard_off(args):
        try:
            split_address(args.dashboard_addr)
        except ValueError as error:
            raise InvalidArgumentError(f"--dashboard-addr: {error} (or 'off')") from None
    if bool(args.dashboard_cert) != bool(args.dashboard_key):
        raise InvalidArgumentError("--dashboard-cert and --dashboard-key go together")
    for flag, value in (
        ("--dashboard-url", args.dashboard_url),
        ("--advertise-enroll-url", args.advertise_enroll_url),
    ):
        if value and not value.lower().startswith("https://"):
            raise InvalidArgumentError(f"{flag} must be an https:// URL, got {value!r}")


def raise_open_files_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as Go's runtime does at start.

    Every connection takes a file descriptor, and the usual soft limit of 1,024 is
    used up by about a thousand idle sockets, after which no connection is taken,
    the admin API's included. Returns (soft before, soft now, hard); workers inherit it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _NOFILE_WITHOUT_HARD_LIMIT
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # logged below as it stands
    now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft, now, hard


def cmd_serve(args: argparse.Namespace) -> int:
    if args.log_format != "json":
        return _run_serve(args)
    # With --log-format json every line on stderr is a JSON object, a failure to
    # start included (a bad --database URL, say): the one error line is a log
    # line, and a bug's traceback a field of one
    # (tests/e2e/test_server_cli.py::test_fail_database_url_error_prints_the_password).
    try:
        return _run_serve(args)
    except Exception as error:
        failure = error if isinstance(error, CommandError) else translate_error(error)
        configure_logging("json")
        log = logging.getLogger("sielum.server")
        if failure is None:
            log.error("failed: internal error", exc_info=True)
            return 1
        log_event(
            log,
            failure.message,
            level=logging.ERROR,
            code=failure.code,
            exit_code=failure.exit_code,
        )
        return failure.exit_code


def _run_serve(args: argparse.Namespace) -> int:
    # First of all: a SIGTERM from now on is noted, not fatal, however early it comes.
    signals = SignalInbox()
    signals.install()
    if args.json:
        raise InvalidArgumentError(
            "serve logs one line per event instead of printing a result: use --log-format json"
        )
    configure_logging(args.log_format)
    if args.workers < 1:
        raise InvalidArgumentError("--workers must be at least 1")
    if args.threads is not None and args.threads < 0:
        raise InvalidArgumentError("--threads must be 0 or more")
    if args.handshake_timeout <= 0:
        raise InvalidArgumentError("--handshake-timeout must be positive")
    if args.idle_timeout <= 0:
        raise InvalidArgumentError("--idle-timeout must be positive")
    if _metrics_on(args):
        try:
            split_address(args.metrics_addr)
        except ValueError:
            raise InvalidArgumentError("--metrics-addr must be HOST:PORT or off") from None
    _check_dashboard_options(args)
    _check_revocation_options(args)
    if args.worker_index is not None:  # a worker: the supervisor set up the run
        return _serve_with_core_log(args, signals)
    before, soft, hard = raise_open_files_limit()
    log_event(
        logging.getLogger("sielum.server"),
        "open files limit",
        soft=soft,
        hard=hard,
        **({"raised_from": before} if before != soft else {}),
    )
    run_directory = None
    if _metrics_on(args):
        # Before anything imports prometheus_client, which reads it once; the
        # workers inherit it (server/multiproc.py).
        run_directory = multiproc.create_run_directory(os.environ)
        os.environ[multiproc.ENV] = str(run_directory)
    try:
        if args.workers > 1:
            # The supervisor runs no grpc; its workers each capture their own C-core lines.
            return _supervise(args, signals)
        return _serve_with_core_log(args, signals)
    finally:
        if run_directory is not None:
            multiproc.remove_run_directory(run_directory)


def _serve_with_core_log(args: argparse.Namespace, signals: SignalInbox) -> int:
    """One server process, alone or a worker, with grpc's C-core lines in its log."""
    from sielum.server.corelog import CoreLogCapture

    capture = CoreLogCapture()
    configure_logging(args.log_format, stream=capture.start())
    try:
        return _serve(args, signals)
    finally:
        capture.stop()


def _serve(args: argparse.Namespace, signals: SignalInbox) -> int:
    log = logging.getLogger("sielum.server")
    from sielum.server.app import SielumServer

    if signals.stop is not None:
        log.info("%s received while starting: stopping", signals.stop_name)
        return 0
    # A stop signal during start() is noted by the handler and acted on below.
    server = SielumServer(_server_config(args)).start()
    if args.ready_fd is not None:
        signal_ready(args.ready_fd)
    supervisor = os.getppid() if args.worker_index is not None else None
    while True:
        if signals.stop is not None:
            log.info("%s received: finishing calls in flight", signals.stop_name)
            break
        if signals.take_hangups():
            server.reload_certificate()
        signals.wait(1.0)
        if supervisor is not None and os.getppid() != supervisor:
            # The supervisor died without telling us (SIGKILL): a worker nobody
            # watches would hold the port forever, so it stops as on SIGTERM.
            log.warning("supervisor gone: stopping")
            break
    server.stop(grace=args.grace)
    return 0


def _supervise(args: argparse.Namespace, signals: SignalInbox) -> int:
    """Check what every worker would (CA, database schema) once, then run the workers."""
    from sielum.store.store import Store

    # Not through ServerConfig: that would import grpc into the supervisor, which
    # needs none of it.
    data_dir = Path(args.data_dir)
    CertificateAuthority.load(
        data_dir, passphrase=read_passphrase(), device_ttl=args.device_cert_ttl
    )
    database_url = args.database or os.environ.get(DATABASE_ENV, "")
    # Migrating here, once, spares the workers from queueing on the migration lock.
    Store.open(database_url or f"sqlite:///{data_dir.resolve() / 'sielum.db'}").close()
    enroll_addr, enroll_holder = reserve_port(args.enroll_addr)
    api_addr, api_holder = reserve_port(args.api_addr)
    holders = [enroll_holder, api_holder]
    dashboard: list[str] = []
    if not _dashboard_off(args):
        dashboard_addr, dashboard_holder = reserve_port(args.dashboard_addr)
        holders.append(dashboard_holder)
        dashboard = ["--dashboard-addr", dashboard_addr]
    # One listening socket that every worker inherits and accepts on: whichever
    # answers a scrape sums the values of all (server/metrics.py).
    metrics = listen_socket(args.metrics_addr) if _metrics_on(args) else None
    metrics_args = [] if metrics is None else ["--metrics-fd", str(metrics.fileno())]
    # The revocation port likewise: one socket, every worker serving its own CRL on it.
    revocation = None if _revocation_off(args) else listen_socket(args.revocation_addr)
    if revocation is not None:
        metrics_args += ["--revocation-fd", str(revocation.fileno())]
    argv = list(args.argv)

    def command(index: int, ready_fd: int) -> list[str]:
        return worker_command(
            argv,
            [
                "--enroll-addr", enroll_addr, "--api-addr", api_addr, *dashboard,
                "--workers", "1", "--worker-index", str(index), "--ready-fd", str(ready_fd),
                *metrics_args,
            ],
        )  # fmt: skip

    log_event(
        logging.getLogger("sielum.server"),
        "starting workers",
        workers=args.workers,
        enroll=enroll_addr,
        api=api_addr,
        dashboard=dashboard[1] if dashboard else "off",
        metrics=_address(metrics),
        revocation=_address(revocation),
    )
    try:
        return Supervisor(
            count=args.workers,
            command=command,
            grace=args.grace,
            pass_fds=tuple(s.fileno() for s in (metrics, revocation) if s is not None),
            signals=signals,
            exited=functools.partial(_forget_worker, os.environ.get(multiproc.ENV)),
        ).run()
    finally:
        for holder in (*holders, metrics, revocation):
            if holder is not None:
                holder.close()


def _forget_worker(metrics_dir: str | None, pid: int) -> None:
    if metrics_dir:
        multiproc.forget_process(Path(metrics_dir), pid)


def _address(sock: socket.socket | None) -> str:
    if sock is None:
        return "off"
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
