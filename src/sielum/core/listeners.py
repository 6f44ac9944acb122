"""What a peer can hold on the HTTP listeners (dashboard, metrics): connections and time.

The gRPC ports bound their peers with grpc's own options (server/app.py: the
handshake timeout, streams per connection, the idle GOAWAY). The aiohttp
listeners get the same from here, one mechanism for both:

- a cap on the connections each listener holds at once, a share of the
  process's open-files limit (RLIMIT_NOFILE, which `serve` raises to the hard
  limit first): a connection beyond it is accepted and closed at once, so that
  no listener can use up the descriptors another port needs;
- the TLS handshake timeout (--handshake-timeout), as on the gRPC ports;
- the idle timeout (--idle-timeout): a connection that has not sent a whole
  request's headers within it, counted from its start or from its last
  answer, is closed (aiohttp's keep-alive timer, which runs from the start of
  a connection since aiohttp 3.14.5); the dashboard reads a request's body
  within the same time (dashboard/web.py).

tests/e2e/test_server_cli.py::test_fail_idle_http_connections_starve_the_admin_api
runs the attack these bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web

from sielum.logs import log_event

log = logging.getLogger("sielum.server")

# Each HTTP listener may hold at most this share of the open-files limit, and never
# more than MAX_CONNECTIONS: a few browsers and scrapers need tens, not thousands.
OPEN_FILES_SHARE = 8
MAX_CONNECTIONS = 512
MIN_CONNECTIONS = 8
IDLE_TIMEOUT = timedelta(seconds=30)
# After an answer sent before the whole body arrived (a refusal, a body too slow),
# the rest of the body is read and dropped for at most this long, then the
# connection is closed.
LINGER_SECONDS = 2.0
BACKLOG = 128
# accept() failing for want of descriptors or memory: wait this long before the next.
ACCEPT_RETRY_SECONDS = 1.0
# A listener at its cap logs at most one line per this many seconds.
FULL_LOG_INTERVAL = 60.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def connection_cap(open_files: int | None = None) -> int:
    """Connections one HTTP listener may hold: 1/8 of the open-files limit, 8 to 512.

    open_files defaults to this process's soft RLIMIT_NOFILE: with a limit of 400
    each listener holds at most 50, so the dashboard and metrics together hold a
    quarter of the descriptors and the gRPC ports, the database and the rest have
    the others.
    """
    if open_files is None:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        open_files = soft if soft != resource.RLIM_INFINITY else MAX_CONNECTIONS * OPEN_FILES_SHARE
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, open_files // OPEN_FILES_SHARE))


@dataclass(frozen=True)
class HttpLimits:
    """The bounds of one HTTP listener (see the module's docstring)."""

    max_connections: int = MAX_CONNECTIONS
    idle_timeout: float = IDLE_TIMEOUT.total_seconds()
    handshake_timeout: float = 10.0  # TLS only

    def runner_options(self) -> dict[str, Any]:
        """aiohttp's own timeouts, for web.AppRunner."""
        return {"keepalive_timeout": self.idle_timeout, "lingering_time": LINGER_SECONDS}


class _CountedSocket(socket.socket):
    """An accepted connection that gives its listener's slot back once closed.

    asyncio's transport closes its socket when the connection ends, whichever way it
    ends (a failed or timed-out handshake, the peer going, an idle timeout, a stop).
    """

    def __init__(self, conn: socket.socket, release: Callable[[], None]) -> None:
        super().__init__(conn.family, conn.type, conn.proto, fileno=conn.detach())
        self._release: Callable[[], None] | None = release

    def close(self) -> None:
        try:
            super().close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class BoundedSite(web.BaseSite):
    """An aiohttp site on a socket bound elsewhere, holding at most limits.max_connections.

    It accepts connections itself (rather than through loop.create_server) so that it
    can count them, TLS handshakes included, and close at once any beyond the cap: the
    peer learns that the listener is full, and holds nothing.
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        limits: HttpLimits,
        ssl_context: ssl.SSLContext | None = None,
        label: str = "http",
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=BACKLOG)
        self._sock = sock
        self._limits = limits
        self._label = label  # the listener's name in log lines: "dashboard", "metrics"
        self._open = 0
        self._refused = 0  # connections closed at the cap since the last log line
        self._full_logged_at: float | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._starting: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def open_connections(self) -> int:
        return self._open

    async def start(self) -> None:
        await super().start()  # registers the site with its runner
        self._sock.setblocking(False)
        self._sock.listen(self._backlog)
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def stop(self) -> None:
        """Stop accepting; the runner then ends the connections that are open."""
        tasks = [t for t in (self._accepting, *self._starting) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._accepting = None
        self._sock.close()
        await super().stop()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except ConnectionAbortedError:
                continue
            except OSError as error:
                if error.errno not in _OUT_OF_RESOURCES:
                    if self._sock.fileno() != -1:  # not closed by a stop
                        log.exception("%s listener stopped accepting", self._label)
                    return
                # Another part of the process used the descriptors up: wait rather
                # than spin on a listening socket that stays readable.
                log_event(
                    log,
                    "accept failed",
                    level=logging.ERROR,
                    listener=self._label,
                    reason=error.strerror or str(error),
                )
                await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            if self._open >= self._limits.max_connections:
                conn.close()
                self._note_refusal(loop.time())
                continue
            self._open += 1
            counted = _CountedSocket(conn, self._release)
            task = loop.create_task(self._serve(counted))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    def _release(self) -> None:
        self._open -= 1

    def _note_refusal(self, now: float) -> None:
        self._refused += 1
        last = self._full_logged_at
        if last is None or now - last >= FULL_LOG_INTERVAL:
            log_event(
                log,
                "listener full",
                level=logging.WARNING,
                listener=self._label,
                connections=self._open,
                refused=self._refused,
            )
            self._full_logged_at = now
            self._refused = 0

    async def _serve(self, conn: _CountedSocket) -> None:
        """Hands the connection to aiohttp, after the TLS handshake when there is one."""
        server = self._runner.server
        assert server is not None
        tls = self._ssl_context is not None
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                server,
                conn,
                ssl=self._ssl_context,
                ssl_handshake_timeout=self._limits.handshake_timeout if tls else None,
            )
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception:
            # A handshake that failed or took too long: the slot goes back with the socket.
            conn.close()
