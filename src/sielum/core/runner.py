"""Where Sielum's blocking handler work runs under grpc.aio: on the event loop, or on threads.

The handlers (store, CA) are plain blocking functions. A runner awaits one of them
for the event loop, and helps a graceful stop finish every call that reached the server.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable
from concurrent import futures
from typing import TypeVar

import grpc

T = TypeVar("T")

# A stop first takes in the calls waiting in grpc's core; it is done when no call
# has arrived for QUIET seconds, or after at most INTAKE_LIMIT seconds.
QUIET = 0.05
INTAKE_LIMIT = 2.0


class Runner(abc.ABC):
    description = ""  # where calls run, for the "serving" log line

    @abc.abstractmethod
    async def __call__(self, call: Callable[[], T]) -> T:
        """Run call, a blocking function, and return its result."""

    @abc.abstractmethod
    async def stop_server(self, server: grpc.aio.Server, grace: float) -> None:
        """Stop server: refuse new calls, finish those that reached it within grace seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """After the server stopped."""


class InlineRunner(Runner):
    """Runs each call on the event loop's own thread, for a store that never waits on a network.

    One thread then does all the Python work, so no call waits for the GIL behind
    another thread: 6 context switches per enrollment instead of about 40 for a
    thread per call, and 30-45 % less CPU (bench/RESULTS.md).

    While handlers run on the loop, grpc.aio takes new calls from its core only
    between them, so under load most calls in flight wait in the core, and a
    stop cancels those (510 of 512 in bench/aio_vs_sync.py). So a stop first
    holds handlers back: with the loop free, grpc takes in every waiting call
    within milliseconds; then the server stops taking calls, and the held ones run.
    """

    description = "event loop"

    def __init__(self) -> None:
        self._open: asyncio.Event | None = None  # set: calls run; None: never held
        self._last_arrival = 0.0

    async def __call__(self, call: Callable[[], T]) -> T:
        self._last_arrival = time.monotonic()
        if self._open is not None:
            await self._open.wait()
        return call()

    async def take_in_waiting_calls(self, limit: float) -> None:
        """Before a stop: hold calls back until those waiting in grpc's core are taken in."""
        self._open = asyncio.Event()
        # Quiet counts from now: while a handler ran, the loop could take in nothing.
        self._last_arrival = time.monotonic()
        deadline = self._last_arrival + min(limit, INTAKE_LIMIT)
        while True:
            now = time.monotonic()
            if now - self._last_arrival >= QUIET or now >= deadline:
                return
            await asyncio.sleep(QUIET / 5)

    def release(self) -> None:
        """After the server stopped taking calls: run what take_in_waiting_calls held."""
        if self._open is not None:
            self._open.set()

    async def stop_server(self, server: grpc.aio.Server, grace: float) -> None:
        started = time.monotonic()
        await self.take_in_waiting_calls(limit=grace / 2)
        stopping = asyncio.create_task(server.stop(max(0.0, grace - (time.monotonic() - started))))
        # One turn of the loop: grpc stops taking calls before the held ones run.
        await asyncio.sleep(0)
        self.release()
        await stopping

    def close(self) -> None:
        pass  # nothing of its own


class ThreadRunner(Runner):
    """Runs each call on a pool of threads, for a store that waits on network round trips.

    The loop stays free while a call waits on the database, so it keeps taking
    in calls and a stop finds none waiting in grpc's core.
    """

    def __init__(self, threads: int) -> None:
        self._pool = futures.ThreadPoolExecutor(threads, thread_name_prefix="rpc")
        self.description = f"{threads} threads"

    async def __call__(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    async def stop_server(self, server: grpc.aio.Server, grace: float) -> None:
        # The loop was never blocked, so no call waits in grpc's core.
        await server.stop(grace)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
