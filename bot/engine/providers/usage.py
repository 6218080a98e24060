"""Writes each model call's tokens and cost into `credit_usage` (the router's `on_call` hook).

Cost comes from the provider row's settings, per model or as a default, in currency units per
million tokens:

    {"prices": {"gpt-4o-mini": {"prompt_per_mtok": "0.15", "completion_per_mtok": "0.60"},
                "*": {"prompt_per_mtok": "1", "completion_per_mtok": "2"}},
     "currency": "USD"}

A model without a price costs 0 (local servers are free to call); tokens are recorded anyway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.base import utcnow
from bot.db.models import AiModel, AiProvider, CreditUsage
from bot.engine.providers.router import CallRecord
from bot.engine.queue import PendingWrite, defer_write
from bot.logs import get_logger

log = get_logger(__name__)

MILLION = Decimal(1_000_000)
TOUCH_INTERVAL_S = 60.0
# Provider prices and model ids are re-read at most this often (a price change applies within it).
LOOKUP_TTL_S = 30.0
# (task id, subtask id) of the work a call is made for; the engine sets it around its calls so one
# recorder shared by the whole router still attributes each call's cost to its task.
_INSERT_USAGE = insert(cast(Table, CreditUsage.__table__))
_PROVIDERS = cast(Table, AiProvider.__table__)
_MODELS = cast(Table, AiModel.__table__)
_PROVIDER_BY_NAME = select(_PROVIDERS.c.id, _PROVIDERS.c.settings).where(_PROVIDERS.c.name == bindparam("b_name"))
_MODEL_ID = select(_MODELS.c.id).where(_MODELS.c.provider_id == bindparam("b_provider"),
                                       _MODELS.c.model_key == bindparam("b_key"))
_Lookup = tuple[int | None, int | None, Mapping[str, Any]]
current_work: ContextVar[tuple[int | None, int | None]] = ContextVar("current_work", default=(None, None))


def call_cost(settings: Mapping[str, Any], model: str, *, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """Price of one call from a provider's `settings` (0 when no price is configured)."""
    prices = settings.get("prices") if isinstance(settings, Mapping) else None
    if not isinstance(prices, Mapping):
        return Decimal(0)
    price = prices.get(model, prices.get("*"))
    if not isinstance(price, Mapping):
        return Decimal(0)
    try:
        prompt_rate = Decimal(str(price.get("prompt_per_mtok", 0)))
        completion_rate = Decimal(str(price.get("completion_per_mtok", 0)))
    except InvalidOperation:
        return Decimal(0)
    cost = (prompt_rate * prompt_tokens + completion_rate * completion_tokens) / MILLION
    return cost.quantize(Decimal("0.000001"))


@dataclass
class CreditRecorder:
    """A router hook that stores one `credit_usage` row per answered call (and the model's last use)."""

    sessions: async_sessionmaker[AsyncSession]
    task_id: int | None = None
    subtask_id: int | None = None
    _touched: dict[int, float] = field(default_factory=dict)
    # (provider, model) → (read at, provider id, model id, provider settings)
    _lookups: dict[tuple[str, str], tuple[float, int | None, int | None, Mapping[str, Any]]] = field(
        default_factory=dict
    )
    # Lookups being read now: concurrent calls for the same model (every job of a burst, at start)
    # share one read instead of each reading the same rows.
    _reading: dict[tuple[str, str], asyncio.Task[_Lookup]] = field(default_factory=dict)

    async def __call__(self, record: CallRecord) -> None:
        """Record `record` if it consumed tokens (failed attempts without usage are skipped)."""
        prompt = record.usage.prompt_tokens or 0
        completion = record.usage.completion_tokens or 0
        if not record.ok and not (prompt or completion):
            return
        provider_id, model_id, settings = await self._lookup(record.provider, record.model)
        currency = settings.get("currency", "USD") if isinstance(settings.get("currency"), str) else "USD"
        row = {
            "provider_id": provider_id,
            "model_id": model_id,
            "account_id": None,
            "task_id": self.task_id if self.task_id is not None else current_work.get()[0],
            "subtask_id": self.subtask_id if self.subtask_id is not None else current_work.get()[1],
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost": call_cost(settings, record.model, prompt_tokens=prompt, completion_tokens=completion),
            "currency": currency[:8],
            "at": utcnow(),
        }
        # Inside a job the row commits with the step that made the call (one transaction per step).
        if not defer_write(PendingWrite(_INSERT_USAGE, row)):
            async with self.sessions() as session, session.begin():
                await session.execute(_INSERT_USAGE, row)
        if record.ok and model_id is not None:
            await self._touch_model(model_id)

    async def _lookup(self, provider_name: str, model_key: str) -> tuple[int | None, int | None, Mapping[str, Any]]:
        """Provider id, model id and price settings, cached briefly: every call needs them."""
        key = (provider_name, model_key)
        cached = self._lookups.get(key)
        if cached is not None and time.monotonic() - cached[0] < LOOKUP_TTL_S:
            return cached[1], cached[2], cached[3]
        reading = self._reading.get(key)
        if reading is None or reading.get_loop() is not asyncio.get_running_loop():  # (one left by a closed loop)
            reading = asyncio.ensure_future(self._read(provider_name, model_key))
            self._reading[key] = reading
            reading.add_done_callback(
                lambda done: self._reading.pop(key) if self._reading.get(key) is done else None)
        # Shielded: one caller being cancelled must not fail the others waiting for the same read.
        return await asyncio.shield(reading)

    async def _read(self, provider_name: str, model_key: str) -> _Lookup:
        now = time.monotonic()
        model_id = None
        provider_id = None
        settings: Mapping[str, Any] = {}
        async with self.sessions() as session:
            provider = (await session.execute(_PROVIDER_BY_NAME, {"b_name": provider_name})).first()
            if provider is not None:
                provider_id = int(provider.id)
                settings = dict(provider.settings or {})
                model_id = await session.scalar(_MODEL_ID, {"b_provider": provider_id, "b_key": model_key})
        if model_id is not None:  # a model not yet synced is looked up again next time
            self._lookups[(provider_name, model_key)] = (now, provider_id, model_id, settings)
        return provider_id, model_id, settings

    async def _touch_model(self, model_id: int) -> None:
        """`ai_models.last_used_at` is advisory: written at most once a minute per model, in its own
        short transaction, and skipped on lock conflicts — a hot row shared by every concurrent
        call must never make a call's accounting (or the calls) wait or deadlock."""
        now = time.monotonic()
        if now - self._touched.get(model_id, float("-inf")) < TOUCH_INTERVAL_S:
            return
        self._touched[model_id] = now
        try:
            async with self.sessions() as session, session.begin():
                await session.execute(update(AiModel).where(AiModel.id == model_id).values(last_used_at=utcnow()))
        except DBAPIError as err:  # expected under contention: the next call within a minute retries
            log.debug("model last_used_at not updated", model_id=model_id, error=str(err.orig))
            self._touched.pop(model_id, None)
