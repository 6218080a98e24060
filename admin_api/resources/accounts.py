"""External API accounts whose credits the engine tracks."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncSession

from admin_api.endpoint import Ctx
from admin_api.resource import ApiModel, Filter, Resource, crud_routes
from admin_api.resources._common import Id, JsonObject, Key, ShortKey, Timestamps
from bot.db.models import ExternalApiAccount

Credits = Annotated[Decimal, Field(ge=0, le=Decimal("999999999999"), max_digits=18, decimal_places=6)]


class AccountCreate(ApiModel):
    """An account at a paid API."""

    service: ShortKey
    account_name: Key
    credential_id: Id | None = None
    credits_remaining: Credits | None = None
    credits_unit: Annotated[str, Field(max_length=32)] | None = None
    metadata: JsonObject = Field(default_factory=dict)


class AccountUpdate(ApiModel):
    """Fields to change (credits can be set by hand where the service exposes no balance)."""

    account_name: Key | None = None
    credential_id: Id | None = None
    credits_remaining: Credits | None = None
    credits_unit: Annotated[str, Field(max_length=32)] | None = None
    metadata: JsonObject | None = None


class AccountRead(Timestamps):
    """An account and its last known balance."""

    user_id: int
    service: str
    account_name: str
    credential_id: int | None
    credits_remaining: Decimal | None
    credits_unit: str | None
    last_synced_at: datetime | None
    sync_error: str | None
    metadata: dict[str, object] = Field(validation_alias="metadata_")


async def _owner(ctx: Ctx, session: AsyncSession, values: dict[str, Any], row: Any) -> dict[str, Any]:
    if row is None:
        values["user_id"] = ctx.user_id
    return values


ACCOUNTS = Resource(
    name="external-accounts", tag="external API accounts", model=ExternalApiAccount, read=AccountRead,
    create=AccountCreate, update=AccountUpdate, prepare=_owner, columns={"metadata": "metadata_"},
    singular="external account", sort_fields=("id", "service", "created_at"),
    filters={"service": Filter("service", str), "user_id": Filter("user_id", int)},
)
routes = crud_routes(ACCOUNTS)
