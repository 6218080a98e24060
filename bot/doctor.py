"""`orchestrator doctor`: every way the set-up can be broken, each with what to do about it.

Each check is independent and never raises: a failure becomes a `CheckResult` with a one-line
`detail` (what is wrong) and a `fix` (the command or edit that mends it), so one broken piece
never hides the state of the others.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from bot.errors import OrchestratorError
from bot.settings import Settings, load_settings, redact_url

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check."""

    name: str
    status: Status
    detail: str
    fix: str | None = None


async def check_data_dir(settings: Settings) -> CheckResult:
    """The data directory exists (or can be created) and is writable."""
    path = settings.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".doctor-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        return CheckResult("data_dir", "fail", f"{path} is not writable: {err.strerror}",
                           "create it and give this user write access, or set ORCH_DATA_DIR")
    return CheckResult("data_dir", "ok", f"{path} is writable")


async def check_database(settings: Settings) -> CheckResult:
    """The database answers, is a supported version, and its schema is at head."""
    from bot.db.engine import create_engine, verify_connection
    from bot.db.migrate import check_at_head, missing_sqlite_file

    url = settings.effective_database_url
    shown = redact_url(url)
    missing = await asyncio.to_thread(missing_sqlite_file, url)
    if missing is not None:  # not connected to: that would create it, empty
        return CheckResult("migrations", "fail", f"{shown}: the file does not exist yet",
                           "run `orchestrator migrate`, or start `orchestrator run`, which creates it")
    try:
        engine = create_engine(url, settings=settings.database)
    except OrchestratorError as err:
        return CheckResult("database", "fail", f"{shown}: {err.message}", err.hint)
    try:
        version = await verify_connection(engine)
    except OrchestratorError as err:
        return CheckResult("database", "fail", err.message, err.hint)
    finally:
        await engine.dispose()
    try:
        await check_at_head(url)
    except OrchestratorError as err:
        return CheckResult("migrations", "fail", f"{shown}: {err.message}", err.hint)
    return CheckResult("database", "ok", f"{shown} ({version}), schema at head")


async def check_keyring(settings: Settings) -> CheckResult:
    """The vault's keys load: permissions 0600, valid contents, or keys from the environment."""
    from bot.vault import keyring_from_settings

    if settings.vault.keys is not None:
        source = "ORCH_VAULT__KEYS"
    else:
        path = settings.keyring_path
        if not path.exists():
            return CheckResult("keyring", "warn", f"{path} does not exist yet",
                               "run `orchestrator keys init` (the daemon also creates it on first start)")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            return CheckResult("keyring", "fail", f"{path} has mode {mode:04o}: other users can read the keys",
                               f"chmod 600 {path}")
        source = str(path)
    try:
        keyring = keyring_from_settings(settings, create=False)
    except OrchestratorError as err:
        return CheckResult("keyring", "fail", err.message, err.hint)
    return CheckResult("keyring", "ok", f"{source}: current key {keyring.current_id}")


async def check_llm_servers(settings: Settings) -> list[CheckResult]:
    """Each configured LLM server answers its health probe."""
    from bot.engine.providers.factory import build_provider

    targets: list[tuple[str, str, str, str | None]] = []
    if settings.lmstudio.enabled:
        token = settings.lmstudio.api_token.get_secret_value() if settings.lmstudio.api_token else None
        targets.append(("lmstudio", "lmstudio", settings.lmstudio.base_url, token))
    if settings.ollama.enabled:
        targets.append(("ollama", "ollama", settings.ollama.base_url, None))
    results: list[CheckResult] = []
    for name, kind, base_url, token in targets:
        provider = build_provider(kind=kind, name=name, base_url=base_url, api_token=token)
        try:
            health = await provider.health()
        finally:
            await provider.aclose()
        if health.ok:
            results.append(CheckResult(f"llm:{name}", "ok", f"{base_url} answers ({health.latency_ms:.0f} ms)"))
        else:
            results.append(CheckResult(
                f"llm:{name}", "warn", f"{base_url} does not answer: {health.detail}",
                f"start {kind} or set ORCH_{name.upper()}__BASE_URL; without it the embedded model is used",
            ))
    return results


async def check_chat_tokens(settings: Settings) -> list[CheckResult]:
    """Slack and Discord tokens, when set, are accepted by their APIs."""
    import httpx

    results: list[CheckResult] = []
    async with httpx.AsyncClient(timeout=10) as client:
        if settings.slack.bot_token is not None:
            url = settings.slack.api_base_url.rstrip("/") + "/auth.test"
            try:
                response = await client.post(
                    url, headers={"Authorization": f"Bearer {settings.slack.bot_token.get_secret_value()}"}
                )
                body = response.json()
            except (httpx.HTTPError, ValueError) as err:
                results.append(CheckResult("slack", "fail", f"cannot reach Slack: {type(err).__name__}",
                                           "check the network and ORCH_SLACK__API_BASE_URL"))
            else:
                if body.get("ok"):
                    results.append(CheckResult("slack", "ok", f"bot token valid for team {body.get('team')}"))
                else:
                    results.append(CheckResult("slack", "fail", f"Slack refused the bot token: {body.get('error')}",
                                               "create a new bot token and set ORCH_SLACK__BOT_TOKEN"))
        if settings.discord.bot_token is not None:
            url = settings.discord.api_base_url.rstrip("/") + "/users/@me"
            try:
                response = await client.get(
                    url, headers={"Authorization": f"Bot {settings.discord.bot_token.get_secret_value()}"}
                )
            except httpx.HTTPError as err:
                results.append(CheckResult("discord", "fail", f"cannot reach Discord: {type(err).__name__}",
                                           "check the network and ORCH_DISCORD__API_BASE_URL"))
            else:
                if response.status_code == 200:
                    user = response.json()
                    results.append(CheckResult("discord", "ok", f"bot token valid for {user.get('username')}"))
                else:
                    results.append(CheckResult("discord", "fail",
                                               f"Discord refused the bot token (HTTP {response.status_code})",
                                               "reset the bot token and set ORCH_DISCORD__BOT_TOKEN"))
    if not results:
        results.append(CheckResult("chat", "ok", "no Slack or Discord token set: use `orchestrator chat`"))
    return results


async def run_checks(settings: Settings | None = None) -> list[CheckResult]:
    """Run every check; a configuration that does not load is itself the one failing check."""
    if settings is None:
        try:
            settings = load_settings()
        except OrchestratorError as err:
            return [CheckResult("config", "fail", err.message, err.hint)]
    results = [CheckResult("config", "ok", "configuration loads")]
    checks: list[Callable[[Settings], Awaitable[CheckResult | list[CheckResult]]]] = [
        check_data_dir, check_database, check_keyring, check_llm_servers, check_chat_tokens,
    ]
    for check in checks:
        try:
            outcome = await check(settings)
        except Exception as err:  # check boundary: a bug in one check must not hide the others
            outcome = CheckResult(check.__name__.removeprefix("check_"), "fail",
                                  f"the check itself failed: {type(err).__name__}: {err}")
        results.extend(outcome if isinstance(outcome, list) else [outcome])
    return results


def as_json(results: list[CheckResult]) -> dict[str, Any]:
    """The machine-readable report of `doctor --json`."""
    return {"ok": all(r.status != "fail" for r in results), "checks": [asdict(r) for r in results]}
