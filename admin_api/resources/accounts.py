"""External API accounts whose credits the engine tracks, and reading their balance from the service.

`POST /external-accounts/{id}/sync-credits` asks the service (OpenRouter: balance; OpenAI: this
month's organization costs) with the API key of the account's linked credential, opened from the
vault for that request only; see bot/integrations/credits.py. The key never appears in a response.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from admin_api.endpoint import Ctx, endpoint
from admin_api.problems import Conflict, NotFound, Unavailable, UpstreamFailed
from admin_api.resource import ApiModel, Filter, Resource, crud_routes
from admin_api.resources._common import Id, JsonObject, Key, ShortKey, Timestamps
from admin_api.state import SERVICES, SESSIONS, SETTINGS
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
routes = web.RouteTableDef()


class CreditSyncResult(BaseModel):
    """The account after the sync, and what the service reported."""

    account: AccountRead
    service: str
    currency: str
    balance: Decimal | None = Field(description="remaining credits; null when the service publishes no balance")
    used: Decimal | None = Field(description="spend: all time (OpenRouter) or since period_start (OpenAI)")
    period_start: datetime | None


@endpoint(routes, "POST", "/external-accounts/{id}/sync-credits", summary="Read the account's credits from its service",
          tag="external API accounts", scope="write", response=CreditSyncResult,
          problems=(NotFound, Conflict, UpstreamFailed, Unavailable),
          description="Supported services: openrouter (GET /key and /credits), openai (GET /organization/costs, "
                      "month to date). Other services answer 409: they expose no balance API. The API key comes "
                      "from the linked credential (`api_key`, or `management_key`/`admin_key`).")
async def sync_credits(ctx: Ctx) -> CreditSyncResult:
    """Fetch and store the balance; failures are stored in the account's sync_error too."""
    from bot.integrations.credits import CredentialProblem, CreditSyncError, UnsupportedService, sync_account_credits

    account_id = ctx.path_int()
    app = ctx.request.app
    async with app[SESSIONS]() as session:
        if await session.get(ExternalApiAccount, account_id) is None:
            raise NotFound(f"no external account with id {account_id}")
    vault = app[SERVICES].vault
    if vault is None:
        raise Unavailable("the vault is not configured in this daemon; the account's key cannot be opened")
    try:
        reading = await sync_account_credits(app[SESSIONS], account_id, vault=vault, settings=app[SETTINGS].credits)
    except (UnsupportedService, CredentialProblem) as err:
        raise Conflict(err.message + (f"; {err.hint}" if err.hint else "")) from None
    except CreditSyncError as err:
        raise UpstreamFailed(err.message) from None
    row = await ACCOUNTS.fetch_one(ctx, account_id)
    return CreditSyncResult(account=ACCOUNTS.serialise(row), service=reading.service,  # type: ignore[arg-type]
                            currency=reading.currency, balance=reading.balance, used=reading.used,
                            period_start=reading.period_start)


crud_routes(ACCOUNTS, routes)
