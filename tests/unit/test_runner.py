"""The runners: calls inline or on threads, and the hold a stop puts on inline calls."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from sielum.core.runner import QUIET, InlineRunner, ThreadRunner


def test_inline_runs_on_the_loop_thread_and_threads_elsewhere() -> None:
    async def main() -> tuple[int, int, int]:
        loop_thread = threading.get_ident()
        threads = ThreadRunner(2)
        try:
            inline = await InlineRunner()(threading.get_ident)
            elsewhere = await threads(threading.get_ident)
        finally:
            threads.close()
        return loop_thread, inline, elsewhere

    loop_thread, inline, elsewhere = asyncio.run(main())
    assert inline == loop_thread
    assert elsewhere != loop_thread


def test_inline_passes_results_and_exceptions_through() -> None:
    def fail() -> None:
        raise ValueError("refused")

    async def main() -> int:
        runner = InlineRunner()
        with pytest.raises(ValueError, match="refused"):
            await runner(fail)
        return await runner(lambda: 7)

    assert asyncio.run(main()) == 7


def test_take_in_holds_calls_until_release_then_runs_them_in_order() -> None:
    ran: list[int] = []

    async def main() -> list[str]:
        runner = InlineRunner()
        events: list[str] = []
        taking_in = asyncio.create_task(runner.take_in_waiting_calls(limit=5))
        await asyncio.sleep(0)
        calls = [asyncio.create_task(runner(lambda i=i: ran.append(i))) for i in range(5)]
        await taking_in
        events.append(f"taken in, ran {len(ran)}")
        runner.release()
        await asyncio.gather(*calls)
        events.append(f"released, ran {len(ran)}")
        return events

    assert asyncio.run(main()) == ["taken in, ran 0", "released, ran 5"]
    assert ran == [0, 1, 2, 3, 4]


def test_take_in_ends_once_calls_stop_arriving() -> None:
    async def main() -> float:
        runner = InlineRunner()
        started = time.monotonic()
        await runner.take_in_waiting_calls(limit=5)
        return time.monotonic() - started

    assert QUIET <= asyncio.run(main()) < 1.0


def test_take_in_ends_at_its_limit_while_calls_keep_arriving() -> None:
    async def main() -> float:
        runner = InlineRunner()
        arriving = True

        async def keep_arriving() -> None:
            held = []
            while arriving:
                held.append(asyncio.create_task(runner(lambda: None)))
                await asyncio.sleep(QUIET / 5)
            runner.release()
            await asyncio.gather(*held)

        feeder = asyncio.create_task(keep_arriving())
        started = time.monotonic()
        await runner.take_in_waiting_calls(limit=0.3)
        taken = time.monotonic() - started
        arriving = False
        await feeder
        return taken

    assert 0.3 <= asyncio.run(main()) < 1.0
