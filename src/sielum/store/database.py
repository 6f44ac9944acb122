"""Opens the database a URL names: SQLite in WAL mode, or a pooled PostgreSQL that reconnects."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast
from urllib.parse import parse_qs, unquote, unquote_plus, urlsplit, urlunsplit

import peewee
from playhouse.pool import MaxConnectionsExceeded, PooledPostgresqlDatabase

from sielum.errors import InvalidArgumentError, UnavailableError

try:
    import psycopg2
except ImportError:  # pragma: no cover - psycopg2-binary is a declared dependency
    psycopg2 = None

log = logging.getLogger("sielum.store")

# busy_timeout comes first: switching a fresh file to WAL takes a lock, and two
# processes starting at once must wait for each other rather than fail
# (tests/store/test_migrations.py::test_processes_migrating_at_once).
#
# An enrollment writes about 16 pages to the WAL (the device and audit rows and their
# indexes). At SQLite's default the WAL is copied back into the database every 1,000
# pages, about every 60 enrollments; the pages every enrollment touches (the token's
# row, the newest leaf of each index) are then copied again each time. Every 10,000
# pages (40 MiB of WAL at most) they are copied a tenth as often: server CPU per
# enrollment fell by about 9 % (bench/steps_loop.py, bench/RESULTS.md). After a
# checkpoint the WAL file is cut back to journal_size_limit.
SQLITE_WAL_AUTOCHECKPOINT_PAGES = 10_000
SQLITE_PRAGMAS = (
    ("busy_timeout", 10000),
    ("journal_mode", "wal"),
    ("foreign_keys", 1),
    ("synchronous", "normal"),
    ("wal_autocheckpoint", SQLITE_WAL_AUTOCHECKPOINT_PAGES),
    ("journal_size_limit", 64 * 1024 * 1024),
)
SQLITE_TIMEOUT_SECONDS = 10

PG_CONNECT_TIMEOUT_SECONDS = 5
PG_POOL_SIZE = 32
PG_POOL_WAIT_SECONDS = 10
PG_POOL_RECYCLE_SECONDS = 300
# No round trip to PostgreSQL waits longer than this (see _wait_bounded).
PG_WAIT_SECONDS = 15.0
_PG_DEFAULTS: dict[str, object] = {
    "connect_timeout": PG_CONNECT_TIMEOUT_SECONDS,
    "application_name": "sielum",
    # Keepalives notice a server host that vanished without closing the socket,
    # so a call fails in about a minute instead of hanging on a dead connection.
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}

# SQLite result codes (low byte) that mean "not now" rather than "bug".
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_IOERR = 10
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_UNAVAILABLE = {_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN}

_URL_HELP = "use sqlite:///PATH (sqlite:////abs/path.db) or postgresql://USER@HOST[:PORT]/DBNAME"


class ReconnectingPostgresqlDatabase(PooledPostgresqlDatabase):  # type: ignore[misc]
    """A connection pool that replaces connections the server dropped (a restart, a failover).

    When a statement outside a transaction, or the BEGIN of one, fails because the
    connection is gone, the idle connections are dropped too (they went to the
    same server) and the statement runs once more on a fresh connection. Nothing
    inside a transaction is retried: the caller sees the error and may retry the
    whole transaction. Store runs every write in a transaction, so a retried
    statement is always a read or a BEGIN.
    """

    def _is_closed(self, conn: Any) -> bool:
        # peewee's default pings the server on every checkout while it holds the
        # pool lock; a dropped connection is found on first use instead.
        return bool(conn.closed) or conn.get_transaction_status() == _pg_txn_unknown()

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        return self._retry_if_gone(super().execute_sql, sql, params)

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        return self._retry_if_gone(super().begin, *args, **kwargs)

    def unpooled_connection(self) -> Any:
        """A new psycopg2 connection made as the pool makes its own, but not the pool's."""
        # The pool's own _connect hands out pooled ones; its parent's makes a new one.
        conn = cast(Any, peewee.PostgresqlDatabase)._connect(self)
        self._initialize_connection(conn)
        return conn

    def _retry_if_gone(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        had_connection = not self.is_closed()
        try:
            return statement(*args, **kwargs)
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            conn = self._state.conn
            lost = had_connection and (conn is None or bool(conn.closed))
            if self.in_transaction() or not lost:
                raise
            log.warning("lost the PostgreSQL connection (%s); reconnecting", describe_error(exc))
            # close() forgets the thread's open connection_context()s; keep them,
            # so the caller's context still finds itself when it exits.
            contexts = list(self._state.ctx)
            try:
                self.close()  # the pool sees the connection is dead and discards it
                self.close_idle()
                self.connect()
            finally:
                self._state.ctx[:] = contexts
            return statement(*args, **kwargs)


class PreparedRead:
    """One hot read, run as a prepared statement on PostgreSQL connections of its own.

    Made for the device gate's lookup, which every device call makes (a heartbeat
    makes nothing else): PostgreSQL parses and plans it once per connection, and
    the call goes from the caller to psycopg2 with nothing in between (no pool
    checkout and check-in, no peewee wrapper). Where calls come one by one, each
    one finds the code it runs out of the CPU's caches, and the shorter path
    counted for most of what this saved (bench/RESULTS.md, "Heartbeats on
    PostgreSQL, two replicas").

    The connections are kept in a list, one taken per call (as many as calls
    reading at once: one on the event loop, or one per thread of a ThreadRunner),
    in autocommit: every read sees every commit made before it, by any replica.
    Each is replaced after PG_POOL_RECYCLE_SECONDS, as the pool's are. A read
    that fails on a kept connection, which PostgreSQL may have dropped (a restart,
    a failover), drops the kept ones and runs once more on a new one; the wait
    for an answer is bounded as every statement's is (_wait_bounded).
    """

    def __init__(self, db: ReconnectingPostgresqlDatabase, name: str, sql: str) -> None:
        self._db = db
        self._prepare = f"PREPARE {name} AS {_numbered(sql)}"
        placeholders = ", ".join(["%s"] * sql.count("%s"))
        self._execute = f"EXECUTE {name} ({placeholders})" if placeholders else f"EXECUTE {name}"
        self._idle: list[tuple[Any, float]] = []  # (connection, opened at); list ops are atomic

    def fetchone(self, params: Sequence[object]) -> Any:
        """The first row, or None; peewee's OperationalError or InterfaceError if PostgreSQL
        cannot be reached, as from execute_sql."""
        try:
            conn, opened = self._idle.pop()
        except IndexError:
            return self._fetch_fresh(params)
        try:
            cursor = conn.cursor()
            cursor.execute(self._execute, params)
            row = cursor.fetchone()
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            log.warning("lost the PostgreSQL connection (%s); reconnecting", describe_error(exc))
            conn.close()
            self.close()  # the others went to the same server
            return self._fetch_fresh(params)
        except BaseException:
            conn.close()
            raise
        if time.monotonic() - opened < PG_POOL_RECYCLE_SECONDS:
            self._idle.append((conn, opened))
        else:
            conn.close()
        return row

    def _fetch_fresh(self, params: Sequence[object]) -> Any:
        # As execute_sql: psycopg2's errors as peewee's, for the Store to judge.
        with _PEEWEE_ERRORS:
            conn = self._db.unpooled_connection()
            try:
                cursor = conn.cursor()
                cursor.execute(self._prepare)
                cursor.execute(self._execute, params)
                row = cursor.fetchone()
            except BaseException:
                conn.close()
                raise
        self._idle.append((conn, time.monotonic()))
        return row

    def close(self) -> None:
        """Closes the kept connections; one in use meanwhile is kept when its read ends."""
        while self._idle:
            try:
                conn, _ = self._idle.pop()
            except IndexError:
                return
            conn.close()


_PEEWEE_ERRORS = cast(Any, peewee).__exception_wrapper__


def _numbered(sql: str) -> str:
    """A statement's %s placeholders as PREPARE wants them: $1, $2, ... in order."""
    parts = sql.split("%s")
    return "".join(part + (f"${n}" if n < len(parts) else "") for n, part in enumerate(parts, 1))


def _pg_txn_unknown() -> int:
    if psycopg2 is None:  # pragma: no cover
        return 4
    return int(psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN)


def connect(url: str) -> peewee.Database:
    """The database for a --database URL; raises InvalidArgumentError for anything else.

    sqlite:///PATH takes everything after the third slash as the path, so
    sqlite:///sielum.db is relative and sqlite:////var/lib/sielum/sielum.db is
    absolute. postgresql:// (or postgres://) URLs go to libpq as they are, with a
    connect timeout and keepalives added unless the URL sets them. No error
    message repeats the URL, which may carry a password.
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise InvalidArgumentError(f"database URL is not a URL: {_URL_HELP}")
    scheme = scheme.lower()
    if scheme == "sqlite":
        return _connect_sqlite(url)
    if scheme in ("postgresql", "postgres"):
        return _connect_postgresql(url)
    raise InvalidArgumentError(f"database URL has an unsupported scheme: {_URL_HELP}")


def _connect_sqlite(url: str) -> peewee.SqliteDatabase:
    prefix = "sqlite:///"
    if not url.lower().startswith(prefix):
        raise InvalidArgumentError(f"SQLite database URL must start with sqlite:///: {_URL_HELP}")
    path = url[len(prefix) :]
    if not path or path.startswith(":memory:") or path.startswith("file:"):
        # An in-memory database would be a different, empty one in every thread.
        raise InvalidArgumentError(f"SQLite database URL must name a file: {_URL_HELP}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InvalidArgumentError(f"directory for the SQLite database does not exist: {directory}")
    return WalSqliteDatabase(
        path,
        pragmas=list(SQLITE_PRAGMAS),
        timeout=SQLITE_TIMEOUT_SECONDS,
    )


class WalSqliteDatabase(peewee.SqliteDatabase):
    """SQLite whose connections retry the switch to WAL while another connection makes it.

    SQLite answers "database is locked" at once, without its busy handler, when
    several connections switch a fresh file to WAL at the same moment; the mode
    is persistent, so a short retry finds it done (tests/store/test_migrations.py
    ::test_threads_migrating_at_once).

    Writers of this process also queue on write_lock before asking SQLite for its
    own (see write_transaction): SQLite's busy handler polls with sleeps of 1, 2,
    5, ... up to 100 ms, so under a burst of enrollments a writer could sleep there
    for a second while the lock sat idle (32 enrollments in flight: p99 230-340 ms,
    max over 1 s; with write_lock p99 70-110 ms, max under 200 ms: bench/RESULTS.md).
    A thread waiting on write_lock wakes as the writer before it commits.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.write_lock = threading.RLock()  # reentrant: a write may nest in another

    def _set_pragmas(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + SQLITE_TIMEOUT_SECONDS
        delay = 0.005
        while True:
            try:
                super()._set_pragmas(conn)  # type: ignore[misc]
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _wait_bounded(conn: Any) -> None:
    """psycopg2's wait callback: wait for the server, but never past PG_WAIT_SECONDS.

    libpq itself waits for an answer for as long as the socket lives. A
    PostgreSQL that freezes without closing its connections (a stopped process,
    a host that stopped answering on a network that drops packets) would hold
    the call, and with calls run on the event loop the whole worker, forever.
    Here the wait ends as a dead network would end it: the socket is shut, libpq
    finds it so, psycopg2 marks the connection broken and raises
    OperationalError, the pool drops the connection, and the Store answers
    UNAVAILABLE or, outside a transaction, tries once more on a new connection
    (tests/robust/test_crashes.py::
    test_ok_frozen_postgresql_backend_is_dropped_after_the_wait_limit).
    """
    limit = PG_WAIT_SECONDS
    if conn.status == psycopg2.extensions.STATUS_SETUP:
        # Connecting: libpq leaves connect_timeout to the callback in this mode.
        limit = float(conn.get_dsn_parameters().get("connect_timeout") or limit)
    deadline = time.monotonic() + limit
    given_up = False
    while True:
        state = conn.poll()  # raises OperationalError once the socket is shut
        if state == psycopg2.extensions.POLL_OK:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if given_up:  # pragma: no cover - libpq reports a shut socket at once
                raise psycopg2.OperationalError(f"PostgreSQL did not answer within {limit:g} s")
            log.warning("PostgreSQL did not answer within %g s: dropping the connection", limit)
            # Not conn.close(): psycopg2 holds the connection's lock around this call.
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)
            given_up, deadline = True, time.monotonic() + 1.0
            continue
        if state == psycopg2.extensions.POLL_READ:
            select.select([conn.fileno()], [], [], remaining)
        elif state == psycopg2.extensions.POLL_WRITE:
            select.select([], [conn.fileno()], [], remaining)
        else:  # pragma: no cover - psycopg2 documents no other state
            raise psycopg2.OperationalError(f"unexpected poll state {state}")


def _connect_postgresql(url: str) -> ReconnectingPostgresqlDatabase:
    if psycopg2 is not None:
        # Process-wide in psycopg2; every connection Sielum makes wants it.
        psycopg2.extensions.set_wait_callback(_wait_bounded)
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query, keep_blank_values=True)
        if "," not in parts.netloc:  # libpq allows host1:port1,host2:port2; urlsplit does not
            _ = parts.port
    except ValueError:
        raise InvalidArgumentError(f"PostgreSQL database URL is malformed: {_URL_HELP}") from None
    if not parts.path.strip("/") and "dbname" not in query:
        raise InvalidArgumentError(f"PostgreSQL database URL names no database: {_URL_HELP}")
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, parts.fragment))
    _check_dsn(dsn)
    options = {key: value for key, value in _PG_DEFAULTS.items() if key not in query}
    return ReconnectingPostgresqlDatabase(
        dsn,
        max_connections=PG_POOL_SIZE,
        timeout=PG_POOL_WAIT_SECONDS,
        stale_timeout=PG_POOL_RECYCLE_SECONDS,
        **options,
    )


def _check_dsn(dsn: str) -> None:
    """Refuses, now, a URL that libpq would refuse at the first connection.

    libpq's own message quotes the part it cannot parse, which may be the
    password ("invalid percent-encoded token: \"My%Pass\"") or the whole URL, so
    it never reaches the caller or the log: the refusal names only the kind of
    mistake (tests/e2e/test_server_cli.py::test_fail_database_url_error_prints_the_password).
    """
    if psycopg2 is None:  # pragma: no cover - psycopg2-binary is a declared dependency
        return
    try:
        psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.Error as error:
        reason = str(error)
        if "percent-encoded" in reason:
            hint = "a % must begin a percent-encoding such as %25 (a % itself), in the password too"
        elif "query parameter" in reason:
            hint = "its query has a parameter PostgreSQL does not know"
        else:
            hint = "PostgreSQL cannot parse it"
        raise InvalidArgumentError(
            f"PostgreSQL database URL is malformed: {hint}; {_URL_HELP}"
        ) from None


_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


def is_on_this_host(url: str) -> bool:
    """Whether every round trip to the database stays on this machine.

    True for SQLite, and for PostgreSQL on a Unix socket or a loopback address;
    False for anything that may cross a network (a host name, another address).
    """
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        return True
    parts = urlsplit(url)
    hosts = [_host_of(part) for part in parts.netloc.rpartition("@")[2].split(",")]
    for key in ("host", "hostaddr"):
        for value in parse_qs(parts.query).get(key, []):
            hosts += value.split(",")
        # libpq falls back to the environment for what the URL leaves out.
        hosts += os.environ.get("PG" + key.upper(), "").split(",")
    return all(h in _LOCAL_HOSTS or h.startswith(("/", "127.")) for h in hosts)


def _host_of(netloc_part: str) -> str:
    """'db.example:5432' -> 'db.example'; '[::1]:5432' -> '::1'; '%2Fvar%2Frun' -> '/var/run'."""
    host = unquote(netloc_part)
    if host.startswith("["):
        return host[1 : host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


# libpq's connection parameters whose values carry no secret. Every other parameter
# a URL's query names is redacted in a log line: password, sslpassword,
# oauth_client_secret, and whatever secret a later libpq may add.
_PUBLIC_PARAMETERS = frozenset(
    {
        "application_name", "channel_binding", "client_encoding", "connect_timeout", "dbname",
        "fallback_application_name", "gssdelegation", "gssencmode", "gsslib", "host",
        "hostaddr", "keepalives", "keepalives_count", "keepalives_idle", "keepalives_interval",
        "krbsrvname", "load_balance_hosts", "max_protocol_version", "min_protocol_version",
        "oauth_client_id", "oauth_issuer", "oauth_scope", "options", "port", "replication",
        "require_auth", "requiressl", "requirepeer", "service", "ssl_max_protocol_version",
        "ssl_min_protocol_version", "sslcert", "sslcertmode", "sslcompression", "sslcrl",
        "sslcrldir", "sslkey", "sslmode", "sslnegotiation", "sslrootcert", "sslsni",
        "target_session_attrs", "tcp_user_timeout", "user",
    }
)  # fmt: skip
REDACTED = "***"


def redact_url(url: str) -> str:
    """The URL fit for a log line: the userinfo's password and every secret parameter as ***.

    Query parameters keep their values only when libpq documents them as carrying
    no secret (_PUBLIC_PARAMETERS); the rest of the URL is kept as written
    (tests/store/test_store.py::test_fail_secrets_of_a_database_url_reach_the_log).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<malformed database URL>"
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{REDACTED}@{hostinfo}"
    pairs = []
    for pair in parts.query.split("&") if parts.query else []:
        name, equals, value = pair.partition("=")
        if equals and unquote_plus(name) not in _PUBLIC_PARAMETERS:
            value = REDACTED
        pairs.append(f"{name}{equals}{value}")
    # Put together by hand: urlunsplit drops the "//" of an empty host (sqlite:////path).
    if "://" in url:
        text = f"{parts.scheme}://{netloc}{parts.path}"
    else:
        text = urlunsplit(parts._replace(netloc=netloc, query="", fragment=""))
    if pairs:
        text += "?" + "&".join(pairs)
    if parts.fragment:
        text += "#" + REDACTED
    return text


def execute(db: peewee.Database, sql: str, params: Sequence[object] = ()) -> Any:
    """db.execute_sql, typed (peewee's stubs leave it untyped); returns the cursor."""
    return cast(Any, db).execute_sql(sql, params)


def is_sqlite(db: peewee.Database) -> bool:
    return isinstance(db, peewee.SqliteDatabase)


@contextlib.contextmanager
def write_transaction(db: peewee.Database) -> Iterator[Any]:
    """A transaction that will write: BEGIN IMMEDIATE on SQLite, plain BEGIN on PostgreSQL.

    On SQLite a deferred transaction that reads and then writes has to upgrade its
    lock, and two such transactions deadlock (one gets SQLITE_BUSY at once,
    whatever the busy timeout); taking the write lock up front makes them queue.
    """
    if not is_sqlite(db):
        with db.atomic() as transaction:
            yield transaction
        return
    lock = getattr(db, "write_lock", None)
    if lock is None:
        with db.atomic("IMMEDIATE") as transaction:
            yield transaction
        return
    if not lock.acquire(timeout=SQLITE_TIMEOUT_SECONDS):
        log.warning("SQLite write lock not free after %d s", SQLITE_TIMEOUT_SECONDS)
        raise UnavailableError("database unavailable, try again")
    try:
        with db.atomic("IMMEDIATE") as transaction:
            yield transaction
    finally:
        lock.release()


def _driver_error(exc: BaseException) -> BaseException | None:
    """The driver's exception that peewee wrapped, if any."""
    if exc.args and isinstance(exc.args[0], BaseException):
        return exc.args[0]
    return exc.__context__


def is_unavailable(exc: BaseException) -> bool:
    """True when the error means the database cannot be reached or is locked, not a bug."""
    if isinstance(exc, MaxConnectionsExceeded):
        return True
    if not isinstance(exc, peewee.OperationalError | peewee.InterfaceError):
        return False
    cause = _driver_error(exc)
    if isinstance(cause, sqlite3.Error):
        if isinstance(exc, peewee.InterfaceError):
            return False  # sqlite3.InterfaceError: a value it cannot bind, i.e. our bug
        code = getattr(cause, "sqlite_errorcode", None)
        return code is not None and (code & 0xFF) in _SQLITE_UNAVAILABLE
    if psycopg2 is not None and isinstance(cause, psycopg2.Error):
        # psycopg2 raises OperationalError for connection trouble, shutdowns,
        # lock and serialization conflicts and resource limits; programming
        # errors are ProgrammingError, IntegrityError, DataError.
        return True
    # peewee's own "connection not open" style errors.
    return isinstance(exc, peewee.InterfaceError)


def describe_error(exc: BaseException) -> str:
    """One line naming a database error, for the log: its driver class and first message line."""
    cause = _driver_error(exc) or exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
