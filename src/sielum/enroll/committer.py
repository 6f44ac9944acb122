"""Group commit: the writes of enrollments that arrive together share one transaction and COMMIT.

An enrollment's CPU work (the token, the CSR, the signature) is done before its write
is handed here; the write then waits for company only as long as the event loop takes
to finish its current turn. Every enrollment handed over in one turn of the loop, and,
with a thread runner, every one handed over while the previous batch was being written,
goes into the next batch (at most MAX_BATCH), written by one call of
Store.enroll_devices: a SAVEPOINT for each, one COMMIT for all, each enrollment its own
outcome. A lone enrollment is written in the next turn of the loop, with no timer.

When the transaction itself fails (the COMMIT refused, the connection lost), every
enrollment of the batch fails with that error: none of them was recorded, and an agent
retries with the same key, which Enroller answers as the retry it is even when the
COMMIT did go through. Retrying them one by one here would repeat the failure in the
common cases (the database unreachable, the disk full) and double the wait.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

from sielum.core.runner import Runner
from sielum.model import Device
from sielum.store.devices import NewDevice

T = TypeVar("T")

# Each enrollment of a batch is a subtransaction on PostgreSQL, and a transaction with
# more than 64 of them overflows the cache every other session's snapshot reads
# (PGPROC_MAX_CACHED_SUBXIDS): the whole database slows down. 32 keeps well clear, and
# a batch of 32 already shares one COMMIT among 32 enrollments.
MAX_BATCH = 32

# Turns of the event loop a batch waits for company at most, while the loop is busy.
MAX_WAIT_TURNS = 16

WriteBatch = Callable[[Sequence[NewDevice]], list[Device | Exception]]


class Committer:
    """Writes enrollments in batches, one transaction per batch; one per process, on its loop.

    write is Store.enroll_devices; run is the server's runner, so a batch is written
    where any call's store work runs (on the loop, or on a thread while the loop
    gathers the next batch). Only one batch is written at a time.
    """

    def __init__(self, write: WriteBatch, run: Runner, max_batch: int = MAX_BATCH) -> None:
        self._write = write
        self._run = run
        self._max_batch = max_batch
        self._waiting: list[tuple[NewDevice, asyncio.Future[Device]]] = []
        self._writing = False
        self._task: asyncio.Task[None] | None = None  # held: the loop keeps only a weak one
        self.batches = 0  # batches written, for benchmarks and tests
        self.enrollments = 0  # enrollments handed over

    async def run(self, call: Callable[[], T]) -> T:
        """call, a blocking function, where the store's calls run (the runner)."""
        return await self._run(call)

    async def commit(self, new: NewDevice) -> Device:
        """new's write, in the next batch: its device, or the error its write raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Device] = loop.create_future()
        self._waiting.append((new, future))
        self.enrollments += 1
        if not self._writing:
            self._writing = True
            # The task's first step runs after every callback already due in this turn
            # of the loop, so the enrollments that turn prepares join this batch.
            self._task = loop.create_task(self._write_batches())
        return await future

    async def _write_batches(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # While the loop has other work due, that work may be the next enrollments:
            # with calls run on the loop, grpc takes in one new call per turn or so, and
            # each takes a few turns to reach here. So the batch waits while the loop is
            # busy, for at most MAX_WAIT_TURNS turns, and never once the loop is idle:
            # a lone enrollment waits one turn, and no timer is involved.
            turns = 0
            while (
                turns < MAX_WAIT_TURNS
                and len(self._waiting) < self._max_batch
                and _has_work_due(loop)
            ):
                await asyncio.sleep(0)
                turns += 1
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                self.batches += 1
                try:
                    outcomes = await self._run(
                        functools.partial(self._write, [new for new, _ in batch])
                    )
                except BaseException as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    if not isinstance(error, Exception):
                        raise  # cancelled: the loop is closing
                    continue
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue  # its call was cancelled; the device stands all the same
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._writing = False
            for _, future in self._waiting:  # only when cancelled
                if not future.done():
                    future.cancel()
            self._waiting.clear()


def _has_work_due(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether callbacks other than the caller's are due on loop now.

    asyncio has no public way to ask; its event loops keep them in _ready (a loop
    without one is taken as idle, and a batch then waits one turn only).
    """
    return bool(getattr(loop, "_ready", ()))
