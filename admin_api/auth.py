"""Bearer tokens for the admin API: minted once, stored as SHA-256, checked by hash lookup.

A token is `orch_` + 32 random bytes (URL-safe base64). Only its SHA-256 is stored, so a database
leak yields no usable token; looking a token up by its hash is a constant-time comparison in effect
(an attacker controls the input of the hash, never which stored bytes it is compared with).

Scopes nest: `admin` implies `write`, which implies `read`.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.base import utcnow
from bot.db.models.users import ApiToken

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")
TOKEN_PREFIX = "orch_"  # noqa: S105 - a public marker, not a secret
_IMPLIED: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "write": frozenset({"read", "write"}),
    "admin": frozenset({"read", "write", "admin"}),
}


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def effective_scopes(granted: Iterable[str]) -> frozenset[str]:
    """Every scope a token holds once nesting is applied; unknown names grant nothing."""
    held: set[str] = set()
    for scope in granted:
        held |= _IMPLIED.get(scope, frozenset())
    return frozenset(held)


def parse_scopes(text: str) -> list[Scope]:
    """Scopes from a comma-separated list, refusing unknown names."""
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(wanted) - set(SCOPES))
    if unknown or not wanted:
        raise ValueError(f"scopes must be a comma-separated subset of {', '.join(SCOPES)}")
    return [scope for scope in SCOPES if scope in wanted]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's id, owner and scopes."""

    token_id: int
    user_id: int
    name: str
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        """Whether the token grants `scope` (after nesting)."""
        return scope in self.scopes


@dataclass(frozen=True, slots=True)
class MintedToken:
    """A token just created: `secret` is shown once and never stored."""

    id: int
    secret: str
    row: ApiToken


async def mint_token(
    session: AsyncSession,
    *,
    user_id: int,
    name: str,
    scopes: Iterable[str],
    expires_in: timedelta | None = None,
) -> MintedToken:
    """Create a token row (not committed) and return the one-time secret with it."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        user_id=user_id,
        name=name,
        token_hash=hash_token(secret),
        prefix=secret[: len(TOKEN_PREFIX) + 6],
        scopes=[scope for scope in SCOPES if scope in set(scopes)],
        expires_at=utcnow() + expires_in if expires_in else None,
    )
    session.add(row)
    await session.flush()
    return MintedToken(id=row.id, secret=secret, row=row)


class TokenAuthenticator:
    """Resolves bearer tokens to principals, caching hits briefly so each request costs no query.

    `cache_seconds` bounds how long a token revoked by another process (the CLI) keeps working;
    revocations through this API evict the cache at once.

    The cache is keyed by the token's hash, as the table is: the process never keeps a token it
    was shown. Entries past their lifetime are swept (at most once per `cache_seconds`) when the
    database is consulted.
    """

    def __init__(
        self, *, session_factory: async_sessionmaker[AsyncSession], cache_seconds: float = 5.0
    ) -> None:
        self._session_factory = session_factory
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal, datetime | None]] = {}
        self._touched: dict[int, float] = {}
        self._swept = time.monotonic()
        self._lookups: dict[str, asyncio.Future[Principal | None]] = {}
        self._generation = 0  # bumped by forget(): a lookup begun before a revocation is not cached

    def cached(self, token: str) -> Principal | None:
        """The principal for `token` if a lookup younger than `cache_seconds` found it valid and
        it has not expired since; None means "ask `authenticate`", not "refused".

        Synchronous, so a cache hit costs the caller no coroutine.
        """
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        return self._cached(hash_token(token))

    def _cached(self, digest: str) -> Principal | None:
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            expires_at = cached[2]
            if expires_at is None or expires_at > utcnow():
                return cached[1]
        return None

    async def authenticate(self, token: str) -> Principal | None:
        """The principal for `token`, or None when it is unknown, expired or revoked.

        Concurrent misses for one token share one lookup: when a busy client's entry expires,
        its requests in flight (64 connections, say) would otherwise each query the table at
        once, and that burst stalled every request behind it.
        """
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = hash_token(token)
        principal = self._cached(digest)
        if principal is not None:
            return principal
        pending = self._lookups.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(digest, self._generation))
            self._lookups[digest] = pending
            pending.add_done_callback(lambda done: self._lookup_done(digest, done))
        # Shielded: one caller giving up (its client went away) must not cancel the others' lookup.
        return await asyncio.shield(pending)

    def _lookup_done(self, digest: str, done: asyncio.Future[Principal | None]) -> None:
        if self._lookups.get(digest) is done:
            del self._lookups[digest]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have given up; each one still sees it

    async def _lookup(self, digest: str, generation: int) -> Principal | None:
        now = time.monotonic()
        async with self._session_factory() as session:
            row = (
                await session.execute(select(ApiToken).where(ApiToken.token_hash == digest))
            ).scalar_one_or_none()
            if row is None or row.revoked_at is not None:
                self._cache.pop(digest, None)
                return None
            if row.expires_at is not None and row.expires_at <= utcnow():
                self._cache.pop(digest, None)
                return None
            principal = Principal(
                token_id=row.id, user_id=row.user_id, name=row.name,
                scopes=effective_scopes(row.scopes or []),
            )
            if now - self._touched.get(row.id, -1e9) > 60:
                # last_used_at is advisory: written at most once a minute per token, not per request.
                row.last_used_at = utcnow()
                self._touched[row.id] = now
                await session.commit()
        if len(self._cache) > 10_000:
            self._cache.clear()
        elif now - self._swept > self._cache_seconds:
            self._swept = now
            for stale in [key for key, (until, _, _) in self._cache.items() if until <= now]:
                del self._cache[stale]
        if generation == self._generation:  # a revocation during the lookup: not cached
            self._cache[digest] = (now + self._cache_seconds, principal, row.expires_at)
        return principal

    def forget(self, token_id: int) -> None:
        """Drop cached entries of a token (after revocation)."""
        self._generation += 1
        self._lookups.clear()  # requests from now on look the token up afresh
        for key, (_, principal, _) in list(self._cache.items()):
            if principal.token_id == token_id:
                del self._cache[key]
