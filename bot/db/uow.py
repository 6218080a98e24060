"""The unit of work: the one place that commits.

Repositories and services add, change and query through the session they are given and never
commit; the code that starts a unit of work decides where a transaction ends, so a failure half-way
leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


@asynccontextmanager
async def unit_of_work(session_factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session whose changes commit together when the block ends, or roll back if it raises."""
    async with session_factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            # Any exit but success, including cancellation, must not leave a half-written change.
            await session.rollback()
            raise
