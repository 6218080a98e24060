"""People and their admin API tokens (admin scope only)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy import select

from admin_api.auth import Scope, mint_token
from admin_api.endpoint import Ctx, Reply, endpoint
from admin_api.problems import Conflict, NotFound, ReferenceNotFound, ValidationFailed
from admin_api.resource import ApiModel, Filter, ReadModel, Resource, commit_or_conflict, crud_routes, get_row
from admin_api.resources._common import Timestamps
from admin_api.state import AUTH, SESSIONS
from bot.db.base import utcnow
from bot.db.models import ApiToken, Language, User, UserRole

routes = web.RouteTableDef()
Username = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]


class UserCreate(ApiModel):
    """A person."""

    username: Username
    display_name: Annotated[str, Field(max_length=255)] = ""
    email: Annotated[str, Field(max_length=255, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    role: UserRole = UserRole.VIEWER
    language: Language = Language.EN
    is_active: bool = True


class UserUpdate(ApiModel):
    """Fields to change."""

    display_name: Annotated[str, Field(max_length=255)] | None = None
    email: Annotated[str, Field(max_length=255, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    role: UserRole | None = None
    language: Language | None = None
    is_active: bool | None = None


class UserRead(Timestamps):
    """A person."""

    username: str
    display_name: str
    email: str | None
    role: UserRole
    language: Language
    is_active: bool
    last_seen_at: datetime | None


USERS = Resource(
    name="users", tag="users", model=User, read=UserRead, create=UserCreate, update=UserUpdate,
    read_scope="admin", write_scope="admin", sort_fields=("id", "username", "created_at"),
    filters={"role": Filter("role", UserRole), "is_active": Filter("is_active", bool),
             "username_contains": Filter("username", str, "contains")},
)
crud_routes(USERS, routes)


class TokenCreate(ApiModel):
    """A new token; its secret is in the response once and never again."""

    name: Annotated[str, Field(min_length=1, max_length=100)]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=3)]
    user_id: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = None
    expires_days: Annotated[int, Field(ge=1, le=3650)] | None = None


class TokenRead(ReadModel):
    """A token's metadata (never its secret)."""

    id: int
    user_id: int
    name: str
    prefix: str
    scopes: list[str]
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime


class TokenCreated(BaseModel):
    """The new token: keep `token` now, it cannot be shown again."""

    token: str
    metadata: TokenRead


TOKENS = Resource(
    name="tokens", tag="users", model=ApiToken, read=TokenRead, read_scope="admin", write_scope="admin",
    deletable=False, singular="token", sort_fields=("id", "created_at"),
    filters={"user_id": Filter("user_id", int)},
)
crud_routes(TOKENS, routes)


@endpoint(routes, "POST", "/tokens", summary="Create an API token (the secret is returned once)", tag="users",
          scope="admin", body=TokenCreate, response=TokenCreated, status=201,
          problems=(ValidationFailed, ReferenceNotFound))
async def create_token(ctx: Ctx) -> Reply:
    """Mint a token for a user (default: the caller's user)."""
    request = ctx.body_as(TokenCreate)
    async with ctx.request.app[SESSIONS]() as session:
        user_id = request.user_id or ctx.user_id
        if (await session.execute(select(User.id).where(User.id == user_id))).first() is None:
            raise ReferenceNotFound(f"no user with id {user_id}",
                                    extra={"missing": [{"field": "user_id", "id": user_id, "resource": "users"}]})
        minted = await mint_token(
            session, user_id=user_id, name=request.name, scopes=request.scopes,
            expires_in=timedelta(days=request.expires_days) if request.expires_days else None,
        )
        await session.commit()
        metadata = TokenRead.model_validate(minted.row, from_attributes=True)
    return Reply(TokenCreated(token=minted.secret, metadata=metadata), status=201,
                 headers={"Location": f"/tokens/{minted.id}", "Cache-Control": "no-store"})


@endpoint(routes, "POST", "/tokens/{id}/revoke", summary="Revoke a token at once", tag="users",
          scope="admin", response=TokenRead, problems=(NotFound, Conflict))
async def revoke_token(ctx: Ctx) -> BaseModel:
    """Revoke a token; it stops working immediately in this daemon."""
    token_id = ctx.path_int()
    async with ctx.request.app[SESSIONS]() as session:
        row = await get_row(session, TOKENS, token_id)
        if row.revoked_at is not None:
            raise Conflict("the token is already revoked")
        row.revoked_at = utcnow()
        await commit_or_conflict(session, "token")
    ctx.request.app[AUTH].forget(token_id)
    return TOKENS.serialise(row)
