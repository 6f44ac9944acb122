"""sielum-server: make the CA (init), serve, print the fingerprint, issue admin certs."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from sielum.admins.policy import BY_INIT, BY_ISSUE_ADMIN_CERT
from sielum.ca.authority import PASSPHRASE_ENV, CertificateAuthority, load_ca_certificate
from sielum.ca.datadir import (
    ADMIN_CERT_FILE,
    DIR_MODE,
    FIRST_ADMIN_NAME,
    DataDirPaths,
    check_init,
    init_data_dir,
    write_admin_bundle,
)
from sielum.ca.profile import DEFAULT_DEVICE_TTL, fingerprint
from sielum.ca.servercert import renew_server_certificate
from sielum.cli import conventions
from sielum.cli.conventions import CommandError, print_json
from sielum.cli.durations import parse_duration
from sielum.enroll.ratelimit import FailureLimit
from sielum.errors import InvalidArgumentError, SielumError
from sielum.logs import configure_logging, log_event
from sielum.server import multiproc
from sielum.server.signals import SignalInbox
from sielum.server.workers import (
    Supervisor,
    default_workers,
    listen_socket,
    reserve_port,
    signal_ready,
    split_address,
    worker_command,
)

if TYPE_CHECKING:
    from sielum.admins.service import AdminRegistry
    from sielum.server.app import ServerConfig
    from sielum.store.store import Store

PROG = "sielum-server"
EXIT_USAGE = 2
EXIT_FAILED = 1
# Linux's default fs.nr_open, for a hard limit of "unlimited" that setrlimit refuses.
_NOFILE_WITHOUT_HARD_LIMIT = 1_048_576

_DESCRIPTION = """\
Sielum enrollment server.

  init                  make the CA, the server certificate and a first admin certificate
  serve                 serve EnrollService (server-only TLS), the admin/agent API (mTLS)
                        and the web dashboard (HTTPS)
  fingerprint           print the CA fingerprint agents pin with --ca-fingerprint
  issue-admin-cert      write a new admin client certificate bundle
  renew-server-cert     new server key and certificate from the same CA (keeps its names)

The CA key may be encrypted: set SIELUM_CA_PASSPHRASE for init, serve,
issue-admin-cert and renew-server-cert. It is read from the environment only,
never from a flag.

init and issue-admin-cert register the admin they make in the database that
serve uses (--database URL or SIELUM_DATABASE_URL; default SQLite in the data dir).
For an existing admin, issue-admin-cert makes a new certificate: their previous one
is refused once the new one is first used.

A running server takes a renewed server certificate on SIGHUP, or by itself
within 10 seconds of the files changing.

--json (before or after the command; not for serve, which logs with
--log-format json) prints the result as one JSON document, and a failure as
{"error": {"code", "message", "exit_code"}} on stdout as well as the line on
stderr.

exit codes:
  0  success
  1  failure: a file cannot be read or written, the database or the server failed
  2  bad arguments: a bad --san, a missing or wrong passphrase, no data directory
"""
DATABASE_ENV = "SIELUM_DATABASE_URL"


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def _database_url(args: argparse.Namespace) -> str:
    """--database, else SIELUM_DATABASE_URL, else SQLite in the data dir: what serve uses."""
    url = args.database or os.environ.get(DATABASE_ENV, "")
    return url or f"sqlite:///{Path(args.data_dir).resolve() / 'sielum.db'}"


def _open_store(args: argparse.Namespace) -> Store:
    from sielum.store.store import Store

    # The store logs why a database is unreachable; in the server's format, above
    # the one-line error.
    configure_logging("text", level=logging.WARNING)
    return Store.open(_database_url(args))


def _registry(store: Store, ca: CertificateAuthority) -> AdminRegistry:
    from sielum.admins.service import AdminRegistry
    from sielum.clock import SystemClock

    return AdminRegistry(store, ca, SystemClock())


def _serial(bundle: Path) -> str:
    certificate = x509.load_pem_x509_certificate((bundle / ADMIN_CERT_FILE).read_bytes())
    return format(certificate.serial_number, "x")


def _cmd_init(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    paths = DataDirPaths.of(data_dir)
    passphrase = _passphrase()
    # What init_data_dir would refuse, refused before the database is touched.
    check_init(data_dir, sans=args.san, passphrase=passphrase)
    # The database next: when it cannot be reached, no CA is made, and a data
    # directory made only for it (the default SQLite file) goes again.
    made_dir = not data_dir.exists()
    data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        store = _open_store(args)
    except BaseException:
        if made_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    try:
        result = init_data_dir(data_dir, sans=args.san, passphrase=passphrase)
        ca = CertificateAuthority.load(data_dir, passphrase=passphrase)
        _registry(store, ca).register_made_on_host(
            FIRST_ADMIN_NAME, BY_INIT, _serial(paths.admin_dir)
        )
    finally:
        store.close()
    if args.json:
        print_json(
            {
                "caFingerprint": result.fingerprint,
                "dataDir": str(paths.root),
                "adminBundle": str(paths.admin_dir),
                "firstAdmin": FIRST_ADMIN_NAME,
            }
        )
        return 0
    print(f"CA fingerprint: {result.fingerprint}")
    print(f"data dir:       {paths.root}")
    print(f"admin bundle:   {paths.admin_dir}  (admin.pem, admin.key, ca.pem)")
    print(f"first admin:    {FIRST_ADMIN_NAME} (registered)")
    print()
    print("Next:")
    print(f"  sielum-server serve --data-dir {paths.root}")
    print(f"  sielum-admin --cert-dir {paths.admin_dir} tokens create --label first-rollout")
    return 0


def _cmd_fingerprint(args: argparse.Namespace) -> int:
    value = fingerprint(load_ca_certificate(Path(args.data_dir)))
    if args.json:
        print_json({"caFingerprint": value})
    else:
        print(value)
    return 0


def _cmd_renew_server_cert(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    renewed = renew_server_certificate(
        data_dir, extra_sans=args.san, passphrase=_passphrase(), now=datetime.now(UTC)
    )
    pair = renewed.pair
    added = [name for name in pair.names if name not in renewed.previous.names]
    if args.json:
        print_json(
            {
                "certificate": str(DataDirPaths.of(data_dir).server_cert),
                "serial": pair.serial,
                "previousSerial": renewed.previous.serial,
                "notAfter": _when(pair.not_after),
                "names": list(pair.names),
                "addedNames": added,
                "caFingerprint": renewed.ca_fingerprint,
                "caNotAfter": _when(renewed.ca_not_after),
            }
        )
        return 0
    print(f"renewed the server certificate: {DataDirPaths.of(data_dir).server_cert}")
    print(f"  serial:          {pair.serial} (was {renewed.previous.serial})")
    print(f"  expires:         {_when(pair.not_after)}")
    print(f"  names:           {', '.join(pair.names)}")
    if added:
        print(f"  new names:       {', '.join(added)}")
    print(f"  CA fingerprint:  {renewed.ca_fingerprint} (unchanged: agents keep their pin)")
    if pair.not_after >= renewed.ca_not_after:
        print(
            f"note: it ends with the CA on {_when(renewed.ca_not_after)}: a certificate never "
            "outlives its CA (see docs/tokens-and-certificates.md, 'Planning for the CA's "
            "expiry')"
        )
    print()
    print("A running server serves it to new connections within 10 seconds, or at once")
    print("on SIGHUP (`kill -HUP <pid>`, `systemctl reload`); open connections go on.")
    return 0


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cmd_issue_admin_cert(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.load(Path(args.data_dir), passphrase=_passphrase())
    store = _open_store(args)
    try:
        registry = _registry(store, ca)
        # A revoked admin's name is refused before any file is written.
        registry.check_not_revoked(args.name)
        out = write_admin_bundle(ca, args.name, Path(args.out))
        registered = registry.register_made_on_host(args.name, BY_ISSUE_ADMIN_CERT, _serial(out))
    finally:
        store.close()
    if args.json:
        print_json(
            {
                "name": args.name,
                "bundleDir": str(out),
                "serial": _serial(out),
                "registered": registered,
            }
        )
        return 0
    print(f"admin certificate for {args.name!r} written to {out}")
    if registered:
        print(f"admin {args.name} is registered")
    else:
        print(
            f"admin {args.name} was registered already: this certificate replaces theirs, "
            "which is refused once this one is used"
        )
    print(f"  sielum-admin --cert-dir {out} tokens list")
    return 0


def _server_config(args: argparse.Namespace) -> ServerConfig:
    from sielum.server.app import ServerConfig

    return ServerConfig(
        data_dir=Path(args.data_dir),
        enroll_addr=args.enroll_addr,
        api_addr=args.api_addr,
        database_url=args.database or os.environ.get(DATABASE_ENV, ""),
        device_ttl=args.device_cert_ttl,
        advertise_api=args.advertise_api_addr,
        threads=args.threads,
        failure_limit=FailureLimit(
            burst=args.enroll_failure_burst, rate_per_second=args.enroll_failure_rate
        ),
        ca_passphrase=_passphrase(),
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
    )


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


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.log_format != "json":
        return _run_serve(args)
    # With --log-format json every line on stderr is a JSON object, a failure to
    # start included (a bad --database URL, say): the one error line is a log
    # line, and a bug's traceback a field of one
    # (tests/e2e/test_server_cli.py::test_fail_database_url_error_prints_the_password).
    try:
        return _run_serve(args)
    except Exception as error:
        failure = error if isinstance(error, CommandError) else _translate(error)
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
    CertificateAuthority.load(data_dir, passphrase=_passphrase(), device_ttl=args.device_cert_ttl)
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
    )
    try:
        return Supervisor(
            count=args.workers,
            command=command,
            grace=args.grace,
            pass_fds=() if metrics is None else (metrics.fileno(),),
            signals=signals,
        ).run()
    finally:
        for holder in (*holders, metrics):
            if holder is not None:
                holder.close()


def _address(sock: socket.socket | None) -> str:
    if sock is None:
        return "off"
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _database_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--database",
        default="",
        metavar="URL",
        help=f"{what}: sqlite:///PATH or postgresql://USER@HOST:PORT/DB "
        f"(default sqlite:///DATA_DIR/sielum.db; also {DATABASE_ENV})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = conventions.Parser(
        prog=PROG,
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conventions.add_version_option(parser)
    conventions.add_json_option(parser, top=True, help=conventions.JSON_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def json_option(command: argparse.ArgumentParser) -> None:
        conventions.add_json_option(command, top=False, help=conventions.JSON_HELP)

    init = commands.add_parser("init", help="make the CA, server and first admin certificates")
    init.add_argument(
        "--data-dir", required=True, help="directory for keys, certificates and the SQLite database"
    )
    init.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP address for the server certificate (repeatable); "
        "localhost, 127.0.0.1 and ::1 are always included",
    )
    _database_option(init, "the database serve will use, where the first admin is registered")
    json_option(init)
    init.set_defaults(run=_cmd_init)

    serve = commands.add_parser(
        "serve", help="run the server until SIGTERM or SIGINT; SIGHUP reloads its certificate"
    )
    serve.add_argument("--data-dir", required=True, help="the directory `init` made")
    serve.add_argument(
        "--enroll-addr",
        default="127.0.0.1:8443",
        metavar="HOST:PORT",
        help="EnrollService, server-only TLS (default %(default)s)",
    )
    serve.add_argument(
        "--api-addr",
        default="127.0.0.1:8444",
        metavar="HOST:PORT",
        help="AdminService and AgentService, mTLS (default %(default)s)",
    )
    serve.add_argument(
        "--dashboard-addr",
        default="127.0.0.1:8445",
        metavar="HOST:PORT",
        help="the web dashboard (HTTPS) and AdminService over the Connect protocol; "
        "'off' disables it (default %(default)s)",
    )
    serve.add_argument(
        "--dashboard-url",
        default="",
        metavar="URL",
        help="the dashboard's public URL, for login links, e.g. behind a reverse proxy "
        "(default: https://HOST:PORT of --dashboard-addr)",
    )
    serve.add_argument(
        "--dashboard-cert",
        default="",
        metavar="PEM",
        help="certificate chain for the dashboard (default: the server certificate and CA)",
    )
    serve.add_argument("--dashboard-key", default="", metavar="PEM", help="its private key")
    serve.add_argument(
        "--advertise-enroll-url",
        default="",
        metavar="URL",
        help="the enroll URL the dashboard puts in agent command lines (default: "
        "https://<the host the browser used>:<the enroll port>)",
    )
    _database_option(serve, "the database")
    serve.add_argument(
        "--device-cert-ttl",
        type=parse_duration,
        default=DEFAULT_DEVICE_TTL,
        metavar="DURATION",
        help="device certificate lifetime, like 90d (default 90d)",
    )
    serve.add_argument(
        "--advertise-api-addr",
        default="",
        metavar="HOST:PORT",
        help="API address told to enrolled agents (default: --api-addr; "
        "with a wildcard host, the host the agent enrolled with)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        metavar="N",
        help="server processes sharing the ports through SO_REUSEPORT (default: one per "
        "core, here %(default)s); each keeps its own --enroll-failure-burst counts",
    )
    serve.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads per server process that run the calls; 0 runs them on the event loop, "
        "which costs the least CPU when the database is on this host (default: 0 with "
        "SQLite or a PostgreSQL on a Unix socket or loopback address; 16 with a database "
        "on another host, whose round trips would otherwise hold up every other call)",
    )
    serve.add_argument(
        "--metrics-addr",
        default="127.0.0.1:9464",
        metavar="HOST:PORT",
        help="plain HTTP /metrics in the Prometheus format, summed over all workers; "
        "'off' disables (default %(default)s)",
    )
    serve.add_argument(
        "--metrics-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name Prometheus scrapes /metrics through (repeatable); /metrics answers "
        "only a Host that is the listener's own address, localhost on loopback, or one "
        "of these, so that no web page reads it through DNS rebinding",
    )
    # Set by the supervisor on the workers it starts; not for people.
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--metrics-fd", type=int, default=None, help=argparse.SUPPRESS)
    # How often the server certificate's files are checked; tests shorten it.
    serve.add_argument(
        "--certificate-check-interval", type=float, default=10.0, help=argparse.SUPPRESS
    )
    serve.add_argument(
        "--enroll-failure-burst",
        type=int,
        default=20,
        metavar="N",
        help="failed enrollments allowed from one address before RESOURCE_EXHAUSTED; "
        "0 disables the limit (default %(default)s)",
    )
    serve.add_argument(
        "--enroll-failure-rate",
        type=float,
        default=0.2,
        metavar="PER_SECOND",
        help="failed enrollments regained per second (default %(default)s)",
    )
    serve.add_argument(
        "--handshake-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="close a connection that has not finished its TLS handshake by then "
        "(default %(default)g)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on the dashboard and metrics ports: close a connection that has not sent a "
        "whole request's headers this long after it opened or after its last answer, and "
        "answer 408 to a request body that has not arrived within it (default %(default)g)",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM, time given to calls in flight (default %(default)s)",
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines for people (text) or machines (json)",
    )
    serve.set_defaults(run=_cmd_serve)

    fp = commands.add_parser("fingerprint", help="print the CA fingerprint (sha256:<hex>)")
    fp.add_argument("--data-dir", required=True)
    json_option(fp)
    fp.set_defaults(run=_cmd_fingerprint)

    issue = commands.add_parser(
        "issue-admin-cert", help="register an admin and write a certificate bundle for them"
    )
    issue.add_argument("--data-dir", required=True)
    issue.add_argument("--name", required=True, help="the admin's name: letters, digits, . _ -")
    issue.add_argument(
        "--out", required=True, metavar="DIR", help="directory for admin.pem, admin.key, ca.pem"
    )
    _database_option(issue, "the database serve uses, where the admin is registered")
    json_option(issue)
    issue.set_defaults(run=_cmd_issue_admin_cert)

    renew = commands.add_parser(
        "renew-server-cert",
        help="new server key and certificate from the same CA; a running server takes it",
        description="Make a new key and server certificate signed by the same CA, keeping "
        "every name the certificate had, plus each --san. Agents' CA pins stay valid. A "
        "running server serves it to new connections on SIGHUP, or by itself within 10 "
        "seconds; connections already open go on.",
    )
    renew.add_argument("--data-dir", required=True)
    renew.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name or IP address to add to the certificate's names (repeatable)",
    )
    json_option(renew)
    renew.set_defaults(run=_cmd_renew_server_cert)
    return parser


def _command(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    return int(args.run(args))


def _translate(error: Exception) -> CommandError | None:
    if isinstance(error, SielumError):
        if error.code.name == "INVALID_ARGUMENT":
            return CommandError(error.message, EXIT_USAGE, "usage")
        return CommandError(error.message, EXIT_FAILED, "failed")
    if isinstance(error, OSError):
        return CommandError(str(error), EXIT_FAILED, "failed")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    return conventions.run_main(PROG, sys.argv[1:] if argv is None else argv, _command, _translate)


if __name__ == "__main__":
    sys.exit(main())
