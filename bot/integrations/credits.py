"""Reading an external API account's balance and spend from the service itself.

Supported services and what they expose:

* `openrouter` — `GET {base}/key` (any key): the key's spend (`usage`) and, for keys with a limit,
  `limit_remaining`; `GET {base}/credits` (a management key): `total_credits` and `total_usage`
  for the whole account, so the balance is their difference. With an ordinary key the balance is
  the key's remaining limit (none when the key is unlimited).
* `openai` — `GET {base}/organization/costs` (an admin key): daily cost buckets. OpenAI publishes no
  balance, so the reading is what was spent since the first day of the current UTC month.

Other services have no such API; asking for them fails with UnsupportedService, and their
credits stay what a person sets by hand. The API key is the linked credential's `api_key` field
(`management_key` / `admin_key` first when present), opened from the vault only for the request
and never logged, stored elsewhere or echoed: upstream error bodies are not repeated either, only
the HTTP status.

The engine's own per-call spending is in `credit_usage`; the upstream totals read here are stored
on the account row (`credits_remaining`, `credits_unit`, `metadata.credit_sync`) rather than as
`credit_usage` rows, which would count the same calls twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.base import utcnow
from bot.db.models import Credential, CredentialStatus, ExternalApiAccount
from bot.errors import OrchestratorError
from bot.logs import get_logger, register_secret
from bot.settings import CreditsSettings
from bot.vault.fields import CredentialFieldsError, open_fields

_log = get_logger(__name__)
DEFAULT_BASE_URLS = {"openrouter": "https://openrouter.ai/api/v1", "openai": "https://api.openai.com/v1"}
KEY_FIELDS = {"openrouter": ("management_key", "api_key"), "openai": ("admin_key", "api_key")}
_MAX_PAGES = 12
_MICRO = Decimal("0.000001")


class CreditSyncError(OrchestratorError):
    """An account's credits could not be synchronised."""


class UnsupportedService(CreditSyncError):
    """The account's service exposes no balance or usage API this orchestrator reads."""


class CredentialProblem(CreditSyncError):
    """The account has no usable credential (missing, revoked, another user's, no key field)."""


class UpstreamError(CreditSyncError):
    """The service refused or failed the request, or answered in an unexpected shape."""


@dataclass(frozen=True)
class CreditReading:
    """What a service reported: a balance when it has one, the spend, and their currency."""

    service: str
    currency: str
    balance: Decimal | None
    used: Decimal | None
    period_start: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_metadata(self, synced_at: datetime) -> dict[str, Any]:
        """The JSON stored under the account's `metadata.credit_sync`."""
        return {
            "service": self.service, "currency": self.currency,
            "balance": None if self.balance is None else str(self.balance),
            "used": None if self.used is None else str(self.used),
            "period_start": self.period_start.isoformat() if self.period_start else None,
            "synced_at": synced_at.isoformat(), **self.details,
        }


def supported_services() -> tuple[str, ...]:
    """The services whose credits can be synchronised."""
    return tuple(sorted(DEFAULT_BASE_URLS))


def _amount(value: Any, what: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UpstreamError(f"the service's {what} is not a number")
    try:
        return Decimal(str(value)).quantize(_MICRO)
    except InvalidOperation:
        raise UpstreamError(f"the service's {what} is not a number") from None


async def _get_json(client: httpx.AsyncClient, path: str, service: str, **params: Any) -> tuple[int, Any]:
    try:
        response = await client.get(path, params=params or None)
    except httpx.TimeoutException:
        raise UpstreamError(f"{service} did not answer in time") from None
    except httpx.HTTPError as err:
        raise UpstreamError(f"cannot reach {service}: {type(err).__name__}") from None
    if response.status_code != 200:
        return response.status_code, None
    try:
        return 200, response.json()
    except ValueError:
        raise UpstreamError(f"{service} answered {path} with something other than JSON") from None


def _refused(service: str, path: str, status: int) -> UpstreamError:
    if status in (401, 403):
        return UpstreamError(f"{service} refused the key for {path} (HTTP {status})")
    return UpstreamError(f"{service} answered {path} with HTTP {status}")


async def read_openrouter(client: httpx.AsyncClient) -> CreditReading:
    """The account's balance (management key) or the key's remaining limit, and spend."""
    key_status, key_info = await _get_json(client, "key", "openrouter")
    # OpenRouter documents management keys for its key-management endpoints only, so one may be
    # refused by /key and still read /credits: only a refusal on both is the key's fault.
    if key_status != 200 and key_status not in (401, 403):
        raise _refused("openrouter", "/key", key_status)
    data = key_info.get("data") if isinstance(key_info, dict) else None
    if key_status == 200 and not isinstance(data, dict):
        raise UpstreamError("openrouter answered /key without a data object")
    details: dict[str, Any] = {}
    if isinstance(data, dict):
        details = {
            "key_limit": None if data.get("limit") is None else str(_amount(data.get("limit"), "key limit")),
            "key_usage": None if data.get("usage") is None else str(_amount(data.get("usage"), "key usage")),
            "is_free_tier": bool(data.get("is_free_tier", False)),
        }
    status, credits = await _get_json(client, "credits", "openrouter")
    if status == 200:
        totals = credits.get("data") if isinstance(credits, dict) else None
        if not isinstance(totals, dict):
            raise UpstreamError("openrouter answered /credits without a data object")
        total = _amount(totals.get("total_credits"), "total_credits")
        used = _amount(totals.get("total_usage"), "total_usage")
        if total is None or used is None:
            raise UpstreamError("openrouter answered /credits without total_credits and total_usage")
        return CreditReading(service="openrouter", currency="USD", balance=total - used, used=used,
                             details={**details, "scope": "account"})
    if status not in (401, 403):  # only "not a management key" falls back to the key's own limit
        raise _refused("openrouter", "/credits", status)
    if not isinstance(data, dict):
        raise _refused("openrouter", "/key", key_status)
    return CreditReading(service="openrouter", currency="USD",
                         balance=_amount(data.get("limit_remaining"), "limit_remaining"),
                         used=_amount(data.get("usage"), "usage"), details={**details, "scope": "key"})


async def read_openai(client: httpx.AsyncClient, *, now: datetime) -> CreditReading:
    """What the organization spent since the start of this UTC month (OpenAI has no balance API)."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    totals: dict[str, Decimal] = {}
    page: str | None = None
    for _ in range(_MAX_PAGES):
        params: dict[str, Any] = {"start_time": int(start.timestamp()), "bucket_width": "1d", "limit": 31}
        if page:
            params["page"] = page
        status, body = await _get_json(client, "organization/costs", "openai", **params)
        if status != 200:
            raise _refused("openai", "/organization/costs", status)
        buckets = body.get("data") if isinstance(body, dict) else None
        if not isinstance(buckets, list):
            raise UpstreamError("openai answered /organization/costs without a data list")
        for bucket in buckets:
            for result in (bucket.get("results") or []) if isinstance(bucket, dict) else []:
                amount = result.get("amount") if isinstance(result, dict) else None
                if not isinstance(amount, dict):
                    continue
                currency = str(amount.get("currency") or "usd").upper()[:8]
                value = _amount(amount.get("value"), "cost amount") or Decimal(0)
                totals[currency] = totals.get(currency, Decimal(0)) + value
        page = body.get("next_page") if body.get("has_more") else None
        if not page:
            break
    else:
        raise UpstreamError(f"openai returned more than {_MAX_PAGES} pages of costs")
    if len(totals) > 1:
        raise UpstreamError(f"openai reported costs in several currencies ({', '.join(sorted(totals))})")
    currency, used = next(iter(totals.items()), ("USD", Decimal(0)))
    return CreditReading(service="openai", currency=currency, balance=None, used=used.quantize(_MICRO),
                         period_start=start, details={"scope": "organization", "period": "month"})


async def fetch_credits(service: str, api_key: str, *, settings: CreditsSettings,
                        now: datetime | None = None) -> CreditReading:
    """Ask `service` for its credit reading with `api_key`."""
    if service not in DEFAULT_BASE_URLS:
        raise UnsupportedService(
            f"the service {service!r} exposes no balance or usage API this orchestrator can read "
            f"(supported: {', '.join(supported_services())})",
            hint="set credits_remaining by hand (PATCH the account)")
    base = settings.base_urls.get(service, DEFAULT_BASE_URLS[service]).rstrip("/") + "/"
    headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=settings.timeout_s,
                                 follow_redirects=False) as client:
        if service == "openrouter":
            return await read_openrouter(client)
        return await read_openai(client, now=now or utcnow())


def _api_key(vault: Any, credential: Credential, service: str) -> str:
    try:
        fields = open_fields(vault, credential)
    except CredentialFieldsError as err:
        raise CredentialProblem(err.message, hint=err.hint) from None
    for name in KEY_FIELDS[service]:
        value = fields.get(name)
        if isinstance(value, str) and value.strip():
            register_secret(value.strip())
            return value.strip()
    raise CredentialProblem(f"credential {credential.id} has no {' or '.join(KEY_FIELDS[service])} field",
                            hint="store the key as {\"api_key\": \"…\"} in the credential's secret")


async def _load(session: AsyncSession, account_id: int) -> tuple[ExternalApiAccount, Credential]:
    account = await session.get(ExternalApiAccount, account_id)
    if account is None:
        raise CreditSyncError(f"no external API account with id {account_id}")
    service = account.service.strip().lower()
    if service not in DEFAULT_BASE_URLS:
        raise UnsupportedService(
            f"the service {account.service!r} exposes no balance or usage API this orchestrator can read "
            f"(supported: {', '.join(supported_services())})", hint="set credits_remaining by hand (PATCH the account)")
    if account.credential_id is None:
        raise CredentialProblem(f"account {account_id} has no credential linked",
                                hint="link the credential holding the service's API key (credential_id)")
    credential = await session.get(Credential, account.credential_id)
    if credential is None or credential.user_id != account.user_id:
        raise CredentialProblem(f"account {account_id}'s credential does not belong to the account's owner")
    if credential.revoked_at is not None or credential.status == CredentialStatus.REVOKED:
        raise CredentialProblem(f"credential {credential.id} is revoked", hint="link a current credential")
    return account, credential


async def sync_account_credits(
    sessions: async_sessionmaker[AsyncSession], account_id: int, *, vault: Any, settings: CreditsSettings,
) -> CreditReading:
    """Read the account's credits from its service and store them; failures are recorded in sync_error."""
    async with sessions() as session:
        account, credential = await _load(session, account_id)
        service = account.service.strip().lower()
        api_key = _api_key(vault, credential, service)
    try:
        reading = await fetch_credits(service, api_key, settings=settings)
    except CreditSyncError as err:
        async with sessions() as session:
            row = await session.get(ExternalApiAccount, account_id)
            if row is not None:
                row.sync_error = err.message[:2000]
                await session.commit()
        _log.warning("credits.sync_failed", account_id=account_id, service=service, error=err.message)
        raise
    now = utcnow()
    async with sessions() as session:
        row = await session.get(ExternalApiAccount, account_id)
        if row is None:
            raise CreditSyncError(f"external API account {account_id} was deleted during the sync")
        if reading.balance is not None:
            row.credits_remaining = reading.balance
        row.credits_unit = reading.currency
        row.last_synced_at = now
        row.sync_error = None
        row.metadata_ = {**(row.metadata_ or {}), "credit_sync": reading.as_metadata(now)}
        await session.commit()
    _log.info("credits.synced", account_id=account_id, service=service, currency=reading.currency,
              has_balance=reading.balance is not None)
    return reading
