"""`orchestrator tokens …`: mint, list and revoke the bearer tokens of the admin API.

A token's secret is printed once, at creation; only its SHA-256 is stored, so a lost token is
revoked and replaced, never recovered. A revocation takes effect in a running daemon within the
API's token cache time (5 s by default).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import click

from bot.cli import echo_json
from bot.errors import OrchestratorError
from bot.settings import load_settings


class TokenCommandError(OrchestratorError):
    """A token command cannot do what was asked."""


async def _with_session(action: Any) -> Any:
    from sqlalchemy.exc import DBAPIError

    from bot.db.engine import create_engine, session_factory
    from bot.settings import redact_url

    settings = load_settings()
    engine = create_engine(settings.effective_database_url, settings=settings.database)
    try:
        async with session_factory(engine)() as session:
            return await action(session)
    except DBAPIError as err:
        raise TokenCommandError(
            f"cannot use the database {redact_url(settings.effective_database_url)}: {type(err.orig).__name__}",
            hint="run `orchestrator migrate` first, and check the database URL",
        ) from err
    finally:
        await engine.dispose()


async def _resolve_user(session: Any, username: str | None) -> Any:
    from sqlalchemy import select

    from bot.db.models import User, UserRole

    if username is None:
        statement = select(User).where(User.role == UserRole.ADMIN, User.is_active.is_(True)).order_by(User.id)
        user = (await session.execute(statement.limit(1))).scalar_one_or_none()
        if user is None:
            raise TokenCommandError("there is no active admin user", hint="run `orchestrator migrate` first")
        return user
    user = (await session.execute(select(User).where(User.username == username))).scalar_one_or_none()
    if user is None:
        raise TokenCommandError(f"no user named {username!r}", hint="check the spelling (users are listed by the API)")
    return user


@click.group()
def tokens() -> None:
    """Create, list and revoke admin API tokens."""


@tokens.command("create")
@click.option("--name", required=True, help="What the token is for (shown in lists).")
@click.option("--scopes", required=True, help="Comma-separated: read, write, admin (admin implies the others).")
@click.option("--user", "username", default=None, help="Owner's username (default: the first admin).")
@click.option("--expires-days", type=click.IntRange(1, 3650), default=None, help="Expire after this many days.")
@click.option("--json", "as_json", is_flag=True, help="Print the token and its metadata as JSON.")
def create(name: str, scopes: str, username: str | None, expires_days: int | None, as_json: bool) -> None:
    """Create a token and print it once (it is stored only as a hash)."""
    from admin_api.auth import mint_token, parse_scopes

    try:
        wanted = parse_scopes(scopes)
    except ValueError as err:
        raise TokenCommandError(str(err), hint="e.g. --scopes read,write") from None
    if not name.strip() or len(name) > 100:
        raise TokenCommandError("the name must be 1 to 100 characters")

    async def action(session: Any) -> dict[str, Any]:
        user = await _resolve_user(session, username)
        minted = await mint_token(session, user_id=user.id, name=name.strip(), scopes=wanted,
                                  expires_in=timedelta(days=expires_days) if expires_days else None)
        await session.commit()
        return {"id": minted.id, "token": minted.secret, "user": user.username, "scopes": wanted,
                "expires_at": minted.row.expires_at.isoformat() if minted.row.expires_at else None}

    created = asyncio.run(_with_session(action))
    if as_json:
        echo_json(created)
        return
    click.echo(created["token"])
    click.echo(f"token {created['id']} for {created['user']} with scopes {','.join(created['scopes'])}"
               f"{' expiring ' + created['expires_at'] if created['expires_at'] else ''}; "
               "it will not be shown again", err=True)


@tokens.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include revoked and expired tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_tokens(show_all: bool, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    from sqlalchemy import select

    from bot.db.base import utcnow
    from bot.db.models import ApiToken, User

    async def action(session: Any) -> list[dict[str, Any]]:
        rows = (await session.execute(
            select(ApiToken, User.username).join(User, User.id == ApiToken.user_id).order_by(ApiToken.id))).all()
        now = utcnow()
        listed = []
        for token, owner in rows:
            state = ("revoked" if token.revoked_at else
                     "expired" if token.expires_at and token.expires_at <= now else "active")
            if state != "active" and not show_all:
                continue
            listed.append({"id": token.id, "name": token.name, "user": owner, "prefix": token.prefix,
                           "scopes": token.scopes, "state": state,
                           "expires_at": token.expires_at.isoformat() if token.expires_at else None,
                           "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None})
        return listed

    listed = asyncio.run(_with_session(action))
    if as_json:
        echo_json(listed)
        return
    if not listed:
        click.echo("no tokens")
    for row in listed:
        click.echo(f"{row['id']:>5}  {row['prefix']}…  {row['state']:<8} {','.join(row['scopes']):<16} "
                   f"{row['user']}  {row['name']}")


@tokens.command("revoke")
@click.argument("token_id", type=int)
def revoke(token_id: int) -> None:
    """Revoke a token by id."""
    from bot.db.base import utcnow
    from bot.db.models import ApiToken

    async def action(session: Any) -> str:
        token = await session.get(ApiToken, token_id)
        if token is None:
            raise TokenCommandError(f"no token with id {token_id}", hint="`orchestrator tokens list --all`")
        if token.revoked_at is not None:
            return f"token {token_id} was already revoked"
        token.revoked_at = utcnow()
        await session.commit()
        return f"token {token_id} revoked"

    click.echo(asyncio.run(_with_session(action)))
