"""serve --workers N: a supervisor running N server processes that share ports (SO_REUSEPORT)."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sielum.core.addresses import split_address
from sielum.logs import log_event
from sielum.server.signals import SignalInbox

log = logging.getLogger("sielum.server")

# A worker that dies this often within RESTART_WINDOW seconds is not restarted
# again: something is wrong that a restart will not fix, and the supervisor exits
# non-zero so that systemd (or whoever started it) notices.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
START_TIMEOUT = 120.0
# On SIGTERM the workers get --grace seconds for calls in flight, plus this for
# closing their database connections, before they are killed.
STOP_MARGIN = 15.0


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def reserve_port(address: str) -> tuple[str, socket.socket | None]:
    """A fixed-port form of address, and the socket that holds the port while it is in use.

    Workers can share a port only if they all bind the same number, so port 0 is
    resolved here, once: the socket is bound with SO_REUSEPORT but never listens,
    so it keeps the port from being taken by anyone else without ever receiving
    a connection (only listening sockets are in the kernel's reuseport group).
    """
    host, port = split_address(address)
    if port != 0:
        return address, None
    bind_host = host or "::"
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    if host and ":" not in host and not _is_ipv4(host):
        family, _, _, _, sockaddr = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
        bind_host = str(sockaddr[0])
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((bind_host, 0))
    bound = int(holder.getsockname()[1])
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{bound}", holder


def listen_socket(address: str) -> socket.socket:
    """A TCP socket listening on address (HOST:PORT, port 0 for any free one).

    Without SO_REUSEPORT: an address another program holds is an error here,
    not a port silently shared with it. The workers of `serve --workers N`
    inherit this one socket from the supervisor and accept on it in turn.
    """
    host, port = split_address(address)
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        return socket.create_server(sockaddr[:2], family=family, backlog=128)
    except OSError as error:
        raise OSError(error.errno, f"cannot listen on {address}: {error.strerror}") from None


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return host.count(".") == 3


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    ready_fd: int  # read end of the pipe the worker writes one byte to once serving
    started: float
    ready: bool = False


@dataclass
class Supervisor:
    """Starts, watches and stops the worker processes.

    command(index, ready_fd) is the argv of one worker: the same `serve` with
    fixed ports, told its index and the pipe to report readiness on. Workers are
    fresh interpreters (not forks), so no grpc state ever crosses a fork.
    """

    count: int
    command: Callable[[int, int], Sequence[str]]
    grace: float
    pass_fds: tuple[int, ...] = ()  # inherited by every worker (metrics, revocation sockets)
    exited: Callable[[int], None] = lambda pid: None  # told the pid of a worker that died
    # Installed by serve before anything else, so a SIGTERM during start-up is kept.
    signals: SignalInbox = field(default_factory=SignalInbox)
    workers: dict[int, _Worker] = field(default_factory=dict)
    restarts: list[float] = field(default_factory=list)

    @property
    def _stop_signal(self) -> int | None:
        return self.signals.stop

    def run(self) -> int:
        """Until SIGTERM or SIGINT; 0 when every worker then exits 0."""
        if self._stop_signal is not None:
            log.info("%s received before the workers started: stopping", self.signals.stop_name)
            return 0
        for index in range(self.count):
            self._spawn(index)
        if not self._await_ready():
            if self._stop_signal is None:
                return self._stop_all(failed=True)
            # A stop asked for while the workers started is a stop, not a failure.
            log.info("%s received while the workers started: stopping them", self.signals.stop_name)
            return self._stop_all(failed=False)
        log_event(
            log,
            "workers ready",
            workers=self.count,
            pids=",".join(str(w.process.pid) for w in self.workers.values()),
        )
        while self._stop_signal is None:
            if not self._watch(timeout=0.5):
                return self._stop_all(failed=True)
            self._forward_hangups()
        log.info("%s received: stopping %d workers", self.signals.stop_name, len(self.workers))
        return self._stop_all(failed=False)

    def _forward_hangups(self) -> None:
        """SIGHUP (reload the server certificate) goes on to every worker that serves.

        Only to workers that reported ready: they set their SIGHUP handler before
        starting, while one still starting could be ended by SIGHUP's default action.
        One starting now reads the files as they are anyway.
        """
        if not self.signals.take_hangups():
            return
        serving = [w for w in self.workers.values() if w.ready and w.process.poll() is None]
        for worker in serving:
            worker.process.send_signal(signal.SIGHUP)
        log_event(log, "SIGHUP received: forwarded to the workers", workers=len(serving))

    def _spawn(self, index: int) -> None:
        read_fd, write_fd = os.pipe()
        try:
            process = subprocess.Popen(
                list(self.command(index, write_fd)), pass_fds=(write_fd, *self.pass_fds)
            )
        finally:
            os.close(write_fd)
        self.workers[index] = _Worker(index, process, read_fd, time.monotonic())

    def _await_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while any(not w.ready for w in self.workers.values()):
            if self._stop_signal is not None:
                return False
            for worker in self.workers.values():
                if not worker.ready and worker.process.poll() is not None:
                    log_event(
                        log,
                        "worker failed to start",
                        level=logging.ERROR,
                        worker=worker.index,
                        exit_code=worker.process.returncode,
                    )
                    return False
            if time.monotonic() > deadline:
                log.error("workers did not start within %.0f seconds", START_TIMEOUT)
                return False
            self._poll_ready(0.2)
        return True

    def _poll_ready(self, timeout: float) -> None:
        waiting = {w.ready_fd: w for w in self.workers.values() if not w.ready}
        if not waiting:
            time.sleep(timeout)
            return
        try:
            readable, _, _ = select.select(list(waiting), [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries, a handler may not
            return
        for fd in readable:
            worker = waiting[fd]
            if os.read(fd, 1):
                worker.ready = True
            os.close(fd)
            worker.ready_fd = -1
            if not worker.ready and worker.process.poll() is None:
                # The pipe closed without a byte yet the process lives: it cannot tell
                # us any more, so take it as ready; a crash is caught by _watch.
                worker.ready = True

    def _watch(self, timeout: float) -> bool:
        """Restart a worker that died; False when they die too often to go on."""
        self._poll_ready(timeout)
        for index, worker in list(self.workers.items()):
            code = worker.process.poll()
            if code is None or self._stop_signal is not None:
                continue
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
            log_event(
                log,
                "worker exited",
                level=logging.ERROR,
                worker=index,
                exit_code=code,
                restarting=len(self.restarts) <= MAX_RESTARTS,
            )
            if worker.ready_fd >= 0:
                os.close(worker.ready_fd)
            self.exited(worker.process.pid)
            if len(self.restarts) > MAX_RESTARTS:
                return False
            self._spawn(index)
        return True

    def _stop_all(self, *, failed: bool) -> int:
        for worker in self.workers.values():
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + STOP_MARGIN
        codes: list[int] = []
        clean = not failed
        for worker in self.workers.values():
            try:
                code = worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log_event(log, "worker killed", level=logging.ERROR, worker=worker.index)
                worker.process.kill()
                code = worker.process.wait()
            codes.append(code)
            # A worker still starting may not have set its handlers yet: our SIGTERM
            # then ends it by its default action, which is the stop we asked for.
            stopped_starting = code == -signal.SIGTERM and not worker.ready
            clean = clean and (code == 0 or stopped_starting)
            if worker.ready_fd >= 0:
                os.close(worker.ready_fd)
                worker.ready_fd = -1
        log_event(log, "stopped", workers=len(codes), exit_codes=",".join(map(str, codes)))
        return 0 if clean else 1


def worker_command(argv: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """The worker's argv: this very command line again, with overrides appended.

    argparse keeps the last value of a repeated option, so appending
    `--enroll-addr HOST:PORT` replaces whatever was given before. Re-running the
    interpreter's own command line (sys.orig_argv) keeps whatever wrapper started
    us, with its interpreter flags; when main() was called with other arguments
    than the command line's, the workers run `python -m sielum.cli.server`.
    """
    argv = list(argv)
    if argv and sys.argv[-len(argv) :] == argv and len(sys.orig_argv) > len(argv):
        return [sys.executable, *sys.orig_argv[1:], *overrides]
    return [sys.executable, "-m", "sielum.cli.server", *argv, *overrides]


def signal_ready(fd: int) -> None:
    """Called by a worker once it serves: one byte down the supervisor's pipe."""
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)
