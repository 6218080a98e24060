"""Provider clients built from the `ai_providers` table, with their API tokens opened from the vault.

A provider's token lives sealed in a `credentials` row (service `llm_provider`) that the provider
row points at; the seeded LM Studio row may instead use `[lmstudio] api_token` from the settings
when it still points at the configured URL. Tokens never appear in logs or output.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db.models import AiProvider, Credential, CredentialStatus, User, UserRole
from bot.engine.providers.factory import build_provider
from bot.engine.providers.port import LLMProvider, ProviderError
from bot.settings import Settings

TOKEN_SERVICE = "llm_provider"  # noqa: S105 - a service name, not a secret


@dataclass(frozen=True, slots=True)
class ConfiguredProvider:
    """A provider row and the client built from it."""

    row: AiProvider
    client: LLMProvider


async def provider_token(session: AsyncSession, row: AiProvider, *, settings: Settings) -> str | None:
    """The plaintext token for one provider, or None when it needs none."""
    if row.credential_id is None:
        lmstudio = settings.lmstudio
        if row.kind == "lmstudio" and row.base_url.rstrip("/") == lmstudio.base_url and lmstudio.api_token:
            return lmstudio.api_token.get_secret_value()
        return None
    credential = await session.get(Credential, row.credential_id)
    if credential is None:
        return None
    from bot.vault import open_vault

    vault = open_vault(settings, create=False)
    secret = vault.open_text(
        credential.secret_blob, table="credentials", column="secret_blob", row_id=credential.id
    )
    return secret.get_secret_value()


async def store_provider_token(
    session: AsyncSession, row: AiProvider, token: SecretStr, *, settings: Settings
) -> Credential:
    """Seal `token` in a credential owned by the first admin and point the provider at it."""
    from bot.vault import open_vault

    vault = open_vault(settings, create=True)
    owner = await session.scalar(select(User).where(User.role == UserRole.ADMIN).order_by(User.id).limit(1))
    if owner is None:
        raise ProviderError(
            "no administrator exists to own the provider's token",
            hint="run `orchestrator migrate`, which creates the default admin",
        )
    credential = Credential(
        user_id=owner.id,
        name=f"provider:{row.name}"[:100],
        service=TOKEN_SERVICE,
        secret_blob=b"",
        status=CredentialStatus.ACTIVE,
    )
    session.add(credential)
    await session.flush()  # the blob is bound to the row id, so the id must exist first
    credential.secret_blob = vault.seal(token, table="credentials", column="secret_blob", row_id=credential.id)
    row.credential_id = credential.id
    return credential


async def load_providers(
    session: AsyncSession, *, settings: Settings, names: list[str] | None = None, enabled_only: bool = True
) -> list[ConfiguredProvider]:
    """Clients for the configured providers (all enabled ones, or those named), highest priority first."""
    query = select(AiProvider).order_by(AiProvider.priority.desc(), AiProvider.id)
    if names:
        query = query.where(AiProvider.name.in_(names))
    elif enabled_only:
        query = query.where(AiProvider.is_enabled.is_(True))
    rows = list((await session.scalars(query)).all())
    if names:
        missing = sorted(set(names) - {row.name for row in rows})
        if missing:
            raise ProviderError(
                f"no provider named {', '.join(map(repr, missing))}",
                hint="see `orchestrator providers list`, or add one with `orchestrator providers add`",
            )
    configured = []
    for row in rows:
        token = await provider_token(session, row, settings=settings)
        client = build_provider(
            kind=str(row.kind),
            name=row.name,
            base_url=row.base_url,
            api_token=token,
            is_local=row.is_local,
            data_dir=settings.data_dir,
        )
        configured.append(ConfiguredProvider(row=row, client=client))
    return configured
