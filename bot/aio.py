"""Small asyncio helpers shared by the daemon's long-running loops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel background loops and wait until each has finished unwinding.

    Waiting matters on shutdown: a loop still unwinding when the database is disposed would write
    through a pool that nothing closes.
    """
    pending = list(tasks)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
