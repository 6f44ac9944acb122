"""WatchDevices: the device event log followed by one poller per process, fanned out to streams.

Each serve process (each worker) runs one EventFeed while anyone watches: it reads the
events after the last one it saw every POLL_INTERVAL seconds, one indexed range of the
log, and offers them to every open stream. A stream that falls behind (its queue is
full) loses events from its queue, never from its answer: sequences are consecutive
(store/events.py), so a stream that sees a gap reads the missing events from the log
itself. Nothing is missed, nothing is sent twice, whichever replica committed what
(tests/e2e/test_directory.py::test_watch_with_two_replicas_sees_every_event_once).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from sielum.clock import Clock
from sielum.errors import OutOfRangeError, SielumError, UnavailableError
from sielum.model import DeviceEvent, DeviceEventKind
from sielum.recorder import NoRecorder, Recorder
from sielum.store.store import Store

log = logging.getLogger("sielum.directory")

T = TypeVar("T")
Run = Callable[[Callable[[], Any]], Awaitable[Any]]
"""Runs a blocking store call where the server runs its handlers (core/runner.py)."""

POLL_INTERVAL = 0.1  # seconds between reads of the log while anyone watches
KEEPALIVE = 5.0  # a SYNCED at least this often on a quiet stream (the contract: 10 s)
HEALTHY_FOR = 3.0  # a keepalive only while the last read of the log is this recent
PAGE = 1000  # events or snapshot entries read at once
QUEUE = 4096  # events a stream may hold unsent before it reads the log itself


class Subscription:
    """One stream's queue of live events."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[DeviceEvent | None] = asyncio.Queue(QUEUE)
        self.closed = False

    def offer(self, event: DeviceEvent) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            pass  # the stream sees the gap and reads the log (Watch._live)

    def close(self) -> None:
        """End the stream at its next read: the server is stopping."""
        self.closed = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)


class EventFeed:
    """The poller of one process, started with the first stream and idle without one."""

    def __init__(
        self, store: Store, run: Run, *, on_streams: Callable[[int], None] | None = None
    ) -> None:
        self._store = store
        self._run = run
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._on_streams = on_streams or (lambda change: None)
        self._closed = False
        self.position = 0
        self.read_at = 0.0  # time.monotonic() of the last successful read of the log

    @property
    def healthy(self) -> bool:
        return time.monotonic() - self.read_at < HEALTHY_FOR

    def subscribe(self) -> Subscription:
        if self._closed:
            raise UnavailableError("the server is stopping: watch again on another replica")
        subscription = Subscription()
        self._subscriptions.add(subscription)
        self._on_streams(1)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._poll())
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.discard(subscription)
            self._on_streams(-1)

    async def close(self) -> None:
        """Stop polling and end every open stream with UNAVAILABLE, so that a stopping
        server does not wait out its grace period for streams that never end, and
        their subscribers resume on another replica at once."""
        self._closed = True
        for subscription in tuple(self._subscriptions):
            subscription.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def read(self, call: Callable[[], T]) -> T:
        result: T = await self._run(call)
        return result

    async def _poll(self) -> None:
        try:
            self.position = await self.read(self._store.event_head)
            self.read_at = time.monotonic()
        except SielumError as error:
            log.warning("directory feed cannot read the event log: %s", error.message)
        while self._subscriptions:
            try:
                events = await self.read(
                    functools.partial(self._store.device_events_after, self.position, PAGE)
                )
            except SielumError as error:
                log.warning("directory feed cannot read the event log: %s", error.message)
                await asyncio.sleep(1.0)
                continue
            self.read_at = time.monotonic()
            for subscription in tuple(self._subscriptions):
                for event in events:
                    subscription.offer(event)
            if events:
                self.position = events[-1].sequence
            if len(events) < PAGE:
                await asyncio.sleep(POLL_INTERVAL)


def synced(sequence: int, at: Any) -> DeviceEvent:
    return DeviceEvent(sequence=sequence, at=at, kind=DeviceEventKind.SYNCED)


class Watch:
    """One WatchDevices stream: a snapshot or a replay from the log, SYNCED, then live."""

    def __init__(
        self, feed: EventFeed, store: Store, clock: Clock, recorder: Recorder | None = None
    ) -> None:
        self._feed = feed
        self._store = store
        self._clock = clock
        self._recorder: Recorder = recorder or NoRecorder()

    async def events(self, after_sequence: int | None) -> AsyncIterator[DeviceEvent]:
        """The stream's events, counted for sielum_directory_events_streamed_total."""
        count = self._recorder.directory_events
        async for event in self._events(after_sequence):
            count(1)
            yield event

    async def _events(self, after_sequence: int | None) -> AsyncIterator[DeviceEvent]:
        feed = self._feed
        subscription = feed.subscribe()
        try:
            head = await feed.read(self._store.event_head)
            if after_sequence is None:
                async for entry in self._snapshot(head):
                    yield entry
                position = head
            elif after_sequence > head:
                raise OutOfRangeError(
                    f"after_sequence {after_sequence} is beyond the newest event ({head}): "
                    "the database was restored from a backup? Watch again without "
                    "after_sequence for a new snapshot"
                )
            else:
                position = after_sequence
            async for event in self._replay(position):
                position = event.sequence
                yield event
            yield synced(position, self._clock.now())
            async for event in self._live(subscription, position):
                yield event
        finally:
            feed.unsubscribe(subscription)

    async def _snapshot(self, head: int) -> AsyncIterator[DeviceEvent]:
        cursor = 0
        while True:
            now = self._clock.now()
            page, cursor = await self._feed.read(
                functools.partial(self._store.current_devices, cursor, PAGE, now, head)
            )
            for entry in page:
                yield entry
            if not cursor:
                return

    async def _replay(self, position: int, until: int | None = None) -> AsyncIterator[DeviceEvent]:
        """The events after position from the log itself, up to until (or the newest)."""
        while until is None or position < until:
            events = await self._feed.read(
                functools.partial(self._store.device_events_after, position, PAGE)
            )
            for event in events:
                if until is not None and event.sequence > until:
                    return
                position = event.sequence
                yield event
            if len(events) < PAGE:
                return

    async def _live(self, subscription: Subscription, position: int) -> AsyncIterator[DeviceEvent]:
        queue = subscription.queue
        quiet_since = time.monotonic()
        while True:
            wait = max(0.0, KEEPALIVE - (time.monotonic() - quiet_since))
            try:
                event = await asyncio.wait_for(queue.get(), timeout=wait)
            except TimeoutError:
                if self._feed.healthy:
                    yield synced(position, self._clock.now())
                    quiet_since = time.monotonic()
                continue
            if event is None or subscription.closed:
                raise UnavailableError(
                    f"the server is stopping: watch again after sequence {position}"
                )
            if event.sequence <= position:
                continue  # read from the log already
            if event.sequence > position + 1:
                # Events the queue dropped, or committed before this stream subscribed.
                async for missed in self._replay(position, event.sequence - 1):
                    position = missed.sequence
                    yield missed
            if event.sequence != position + 1:
                continue  # cannot happen with consecutive sequences; never send out of order
            position = event.sequence
            quiet_since = time.monotonic()
            yield event
