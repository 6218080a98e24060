"""`both`: two awaitables at once, nothing left running after a failure or a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from bot.aio import both


class Boom(Exception):
    pass


async def test_both_returns_the_results_in_argument_order() -> None:
    async def later(value: str, delay: float) -> str:
        await asyncio.sleep(delay)
        return value

    assert await both(later("first", 0.05), later("second", 0.0)) == ("first", "second")


async def test_a_failure_cancels_the_other_and_is_raised_as_itself() -> None:
    stopped = asyncio.Event()

    async def slow() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return "never"

    async def failing() -> str:
        await asyncio.sleep(0.01)
        raise Boom("model answered garbage")

    with pytest.raises(Boom, match="garbage"):  # the original exception, not an exception group
        await both(slow(), failing())
    assert stopped.is_set()  # cancelled and unwound before `both` returned


async def test_cancelling_the_caller_cancels_both() -> None:
    unwound: list[str] = []
    started = asyncio.Event()

    async def waiting(name: str) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            unwound.append(name)

    caller = asyncio.create_task(both(waiting("a"), waiting("b")))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert sorted(unwound) == ["a", "b"]
