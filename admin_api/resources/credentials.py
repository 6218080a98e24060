"""Credentials: write-only secrets sealed by the vault; responses carry status and metadata only.

A credential's secret is a JSON object of the fields its template's form asks for (an API key, a
client id and secret, an OAuth token set), sealed into `secret_blob` bound to its row. No response,
log line or validation error ever contains it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import AwareDatetime, Field, SecretStr
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from admin_api.endpoint import Ctx, Reply, endpoint
from admin_api.problems import Conflict, ReferenceNotFound, Unavailable, ValidationFailed
from admin_api.resource import (
    ApiModel,
    Filter,
    Resource,
    check_references,
    commit_or_conflict,
    crud_routes,
)
from admin_api.resources._common import Id, JsonObject, Name, ShortKey, Timestamps
from admin_api.state import SERVICES, SESSIONS
from bot.db.base import utcnow
from bot.db.models import AuthType, Credential, CredentialStatus, CredentialTemplate
from bot.vault.fields import CredentialFieldsError, open_fields

routes = web.RouteTableDef()
SecretFields = Annotated[dict[Annotated[str, Field(max_length=64)], SecretStr], Field(min_length=1, max_length=32)]


class CredentialCreate(ApiModel):
    """A new credential; `secret` holds the template's fields and is never shown again."""

    name: Name
    service: ShortKey
    template_id: Id | None = None
    secret: SecretFields
    scopes: Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=100)] = Field(
        default_factory=list)
    expires_at: AwareDatetime | None = None
    metadata: JsonObject = Field(default_factory=dict)


class CredentialUpdate(ApiModel):
    """Fields to change; a new `secret` replaces the old one whole. Status may only become revoked."""

    name: Name | None = None
    secret: SecretFields | None = None
    scopes: Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=100)] | None = None
    expires_at: AwareDatetime | None = None
    metadata: JsonObject | None = None
    revoked: bool | None = None


class CredentialRead(Timestamps):
    """A credential's status and metadata; the secret is never returned."""

    user_id: int
    template_id: int | None
    name: str
    service: str
    status: CredentialStatus
    status_detail: str | None
    scopes: list[str]
    expires_at: datetime | None
    last_validated_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    metadata: dict[str, object] = Field(validation_alias="metadata_")
    has_secret: bool = True


class TemplateRead(Timestamps):
    """A service's credential form (JSON Schema) and OAuth2 endpoints."""

    service: str
    display_name: str
    auth_type: AuthType
    description: str
    fields_schema: dict[str, object]
    oauth: dict[str, object] | None
    docs_url: str | None


def vault_of(ctx: Ctx) -> Any:
    """The daemon's vault, or 503: secrets are never stored unsealed."""
    vault = ctx.request.app[SERVICES].vault
    if vault is None:
        raise Unavailable("the vault is not configured in this daemon; secrets cannot be stored")
    return vault


def _plain_secret(secret: dict[str, SecretStr]) -> dict[str, str]:
    return {name: value.get_secret_value() for name, value in secret.items()}


async def _template_for(session: AsyncSession, *, template_id: int | None, service: str) -> CredentialTemplate | None:
    if template_id is not None:
        template = await session.get(CredentialTemplate, template_id)
        if template is None:
            raise ReferenceNotFound(f"no credential template with id {template_id}", extra={
                "missing": [{"field": "template_id", "id": template_id, "resource": "credential_templates"}]})
        if template.service != service:
            raise ValidationFailed("the template is for another service", extra={"errors": [
                {"loc": ["body", "template_id"], "msg": f"template is for {template.service!r}", "type": "mismatch"}]})
        return template
    return (await session.execute(
        select(CredentialTemplate).where(CredentialTemplate.service == service))).scalar_one_or_none()


def check_against_template(
    template: CredentialTemplate | None, fields: dict[str, str], *, partial: bool = False
) -> None:
    """422 unless the secret's fields satisfy the template's JSON Schema (messages name fields, not values)."""
    if template is None or not template.fields_schema:
        return
    from jsonschema import Draft202012Validator

    schema = dict(template.fields_schema)
    if partial:
        schema.pop("required", None)
    from jsonschema.exceptions import SchemaError
    from referencing.exceptions import Unresolvable

    try:
        found = list(Draft202012Validator(schema).iter_errors(fields))
    except (SchemaError, Unresolvable):  # expected when an administrator stored a broken form
        raise Conflict(f"the credential form of {template.service!r} is not a usable JSON Schema; "
                       "fix the template") from None
    errors = []
    for error in found:
        # Name the rule and the field, never the submitted value (it is a secret).
        shown = f" ({error.validator_value})" if error.validator in ("required", "additionalProperties") else ""
        errors.append({"loc": ["body", "secret", *[str(part) for part in error.absolute_path]],
                       "msg": f"{error.validator} constraint failed{shown}", "type": f"schema_{error.validator}"})
    if errors:
        raise ValidationFailed("the secret does not match the service's credential form", extra={"errors": errors})


def seal_secret(vault: Any, row: Credential, fields: dict[str, Any]) -> None:
    """Seal the fields as JSON into the row (which must have its id)."""
    row.secret_blob = vault.seal(json.dumps(fields), table="credentials", column="secret_blob", row_id=row.id)


def open_secret(vault: Any, row: Credential) -> dict[str, Any]:
    """The row's fields, decrypted (for the OAuth flow; never for a response)."""
    try:
        return open_fields(vault, row)
    except CredentialFieldsError as err:
        raise Conflict(err.message) from None


async def _update(ctx: Ctx, session: AsyncSession, values: dict[str, Any], row: Any) -> dict[str, Any]:
    secret = values.pop("secret", None)
    revoked = values.pop("revoked", None)
    if revoked is False and row.revoked_at is not None:
        raise Conflict("a revoked credential stays revoked; create a new one")
    if revoked:
        values.update(status=CredentialStatus.REVOKED, revoked_at=utcnow())
    if secret is not None:
        if row.revoked_at is not None:
            raise Conflict("the credential is revoked")
        template = await _template_for(session, template_id=row.template_id, service=row.service)
        plain = {name: value.get_secret_value() if isinstance(value, SecretStr) else value
                 for name, value in secret.items()}
        check_against_template(template, plain)
        seal_secret(vault_of(ctx), row, plain)
        values.update(status=CredentialStatus.PENDING, status_detail="secret replaced; not validated yet")
    return values


CREDENTIALS = Resource(
    name="credentials", tag="credentials", model=Credential, read=CredentialRead, update=CredentialUpdate,
    prepare=_update, columns={"metadata": "metadata_"}, write_scope="admin",
    sort_fields=("id", "name", "created_at"),
    filters={"service": Filter("service", str), "status": Filter("status", CredentialStatus),
             "user_id": Filter("user_id", int), "template_id": Filter("template_id", int)},
)


@endpoint(routes, "POST", "/credentials", summary="Store a credential (the secret is sealed, never returned)",
          tag="credentials", scope="admin", body=CredentialCreate, response=CredentialRead, status=201,
          problems=(ValidationFailed, ReferenceNotFound, Conflict, Unavailable))
async def create_credential(ctx: Ctx) -> Reply:
    """Validate the fields against the service's form, then insert and seal in one transaction."""
    request = ctx.body_as(CredentialCreate)
    vault = vault_of(ctx)
    fields = _plain_secret(request.secret)
    async with ctx.request.app[SESSIONS]() as session:
        template = await _template_for(session, template_id=request.template_id, service=request.service)
        check_against_template(template, fields)
        await check_references(session, CREDENTIALS, {"template_id": request.template_id})
        row = Credential(
            user_id=ctx.user_id, template_id=template.id if template else None, name=request.name,
            service=request.service, secret_blob=b"", scopes=request.scopes, expires_at=request.expires_at,
            metadata_=request.metadata, status=CredentialStatus.PENDING,
        )
        session.add(row)
        try:
            await session.flush()  # the id binds the sealed blob to this row; nothing is committed yet
        except IntegrityError:
            await session.rollback()
            raise Conflict("a credential with this name exists for this user") from None
        seal_secret(vault, row, fields)
        await commit_or_conflict(session, "credential")
        await session.refresh(row)
    return Reply(CREDENTIALS.serialise(row), status=201, headers={"Location": f"/credentials/{row.id}"})


crud_routes(CREDENTIALS, routes)

TEMPLATES = Resource(
    name="credential-templates", tag="credentials", model=CredentialTemplate, read=TemplateRead,
    deletable=False, singular="credential template", sort_fields=("id", "service"),
    filters={"auth_type": Filter("auth_type", AuthType)},
)
crud_routes(TEMPLATES, routes)
