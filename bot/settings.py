"""Typed settings from `orchestrator.toml` and `ORCH_*` environment variables.

Precedence, highest first: environment (`ORCH_ADMIN_API__PORT=9000`, nested keys joined by `__`),
then the TOML file (`[admin_api] port = 9000`), then the embedded defaults, which run on a fresh
machine: SQLite under the data directory, the admin API on 127.0.0.1:8080, LM Studio on :1234.

The TOML file is `$ORCH_CONFIG` when set, else `./orchestrator.toml`, else
`<data dir>/orchestrator.toml`, each only if it exists (`$ORCH_CONFIG` must exist).
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bot.errors import OrchestratorError
from bot.monitor.config import MonitorSettings

ENV_PREFIX = "ORCH_"
_toml_values: ContextVar[dict[str, Any] | None] = ContextVar("_toml_values", default=None)


class ConfigError(OrchestratorError):
    """The configuration cannot be used as it is."""


def default_data_dir() -> Path:
    """Where state lives when nothing says otherwise (XDG data home)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "orchestrator"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DatabaseSettings(_Section):
    """Pool and driver options; the URL itself is the top-level `database_url`."""

    echo: bool = False
    pool_size: int = Field(default=10, ge=1, le=200)
    sqlite_busy_timeout_ms: int = Field(default=5000, ge=0, le=600_000)
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)


class AdminApiSettings(_Section):
    """The aiohttp admin API inside the daemon."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None


class LogSettings(_Section):
    """Structured logging; `auto` means readable on a terminal, JSON lines otherwise."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class LMStudioSettings(_Section):
    """The LM Studio server seeded as the first provider."""

    enabled: bool = True
    base_url: str = "http://127.0.0.1:1234"
    api_token: SecretStr | None = None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _check_http_url(value)


class OllamaSettings(_Section):
    """An Ollama server; off unless enabled."""

    enabled: bool = False
    base_url: str = "http://127.0.0.1:11434"

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _check_http_url(value)


class SlackSettings(_Section):
    """Slack app credentials; Socket Mode when an app-level token is set, else HTTP mode."""

    bot_token: SecretStr | None = None
    app_token: SecretStr | None = None
    signing_secret: SecretStr | None = None
    alert_channel: str | None = None
    api_base_url: str = "https://slack.com/api/"


class DiscordSettings(_Section):
    """Discord application credentials."""

    bot_token: SecretStr | None = None
    application_id: str | None = None
    public_key: str | None = None
    guild_id: str | None = None
    alert_channel_id: str | None = None
    api_base_url: str = "https://discord.com/api/v10"
    # Privileged gateway intent (enable it in the developer portal too): replies in a task's thread
    # continue its conversation without naming the bot. Off: such replies must mention the bot.
    message_content_intent: bool = False


class EngineSettings(_Section):
    """How the orchestrator plans, validates and breaks ties.

    `tie_policy` decides a tie-break whose two judgements disagree (position bias) or a
    divergence with no third model: keep the executor's answer flagged as disputed, take the
    validator's independent answer, or escalate to a person (the subtask waits for a decision).
    """

    divergence_threshold_pct: float = Field(default=20.0, ge=0, le=100)
    category_thresholds: dict[str, float] = Field(default_factory=dict)
    tie_policy: Literal["keep_executor_flagged", "prefer_validator", "escalate"] = "keep_executor_flagged"
    max_concurrency: int = Field(default=5, ge=1, le=256)
    subtask_timeout_s: int = Field(default=1800, ge=10, le=86_400)
    max_attempts: int = Field(default=3, ge=1, le=20)
    execute_max_tokens: int | None = Field(default=None, ge=16)
    checkpoint_interval_s: float = Field(default=1.0, gt=0, le=60)
    # Relay task events through the database to the other processes sharing it (bot/engine/relay.py):
    # "auto" relays on MariaDB/MySQL, where several daemons are how the product scales, in worker
    # processes, and in a daemon that has any; not for a lone daemon on SQLite.
    relay_events: Literal["auto", "on", "off"] = "auto"
    # Extra engine-only processes (`orchestrator worker`) the daemon starts and restarts beside
    # itself: the engine's own work is Python, so one process uses one core. Each takes
    # `max_concurrency` subtasks of its own; "auto" relay turns on when there are any.
    worker_processes: int = Field(default=0, ge=0, le=64)
    # What divergence compares answers with: "auto" is MiniLM when installed (the ml extra), else
    # the lexical embedder; "lexical" always uses the lexical one (no model, a fraction of the CPU).
    divergence_embedder: Literal["auto", "lexical"] = "auto"

    def threshold_for(self, category: str | None) -> float:
        """The divergence above which a tie-breaker is called for this category."""
        return self.category_thresholds.get(category or "", self.divergence_threshold_pct)


class RouterSettings(_Section):
    """The model router's retry, cooldown and timeout policy (bot/engine/providers/router.py).

    The defaults suit local servers on a LAN; lower `first_token_timeout_s` to fail over sooner
    from a server that accepts requests but never answers, raise it for slow cold model loads.
    """

    retries_per_group: int = Field(default=2, ge=0, le=20)
    backoff_base_s: float = Field(default=0.25, ge=0, le=60)
    backoff_max_s: float = Field(default=8.0, ge=0, le=600)
    max_wait_s: float = Field(default=60.0, ge=0, le=3600)
    cooldown_s: float = Field(default=5.0, ge=0, le=3600)
    failure_window_s: float = Field(default=60.0, gt=0, le=86_400)
    allowed_fails: int = Field(default=3, ge=1, le=1000)
    failure_ratio: float = Field(default=0.5, gt=0, le=1)
    first_token_timeout_s: float | None = Field(default=60.0, gt=0, le=3600)
    total_timeout_s: float | None = Field(default=600.0, gt=0, le=86_400)
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("backoff_max_s")
    @classmethod
    def _backoff_ordered(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("backoff_base_s")
        if base is not None and value < base:
            raise ValueError("backoff_max_s must not be smaller than backoff_base_s")
        return value


class ChatSettings(_Section):
    """Who may talk to the bot: people are mapped to users by platform id; strangers get this role
    (none: refused, the default)."""

    unknown_user_role: Literal["viewer", "operator"] | None = None


class VaultSettings(_Section):
    """Where the encryption keys for secrets at rest come from.

    `keys` (env `ORCH_VAULT__KEYS`) takes precedence over the keyring file: a comma-separated list
    of `<key id>:<base64 of 32 bytes>`, the first one being the key new secrets are sealed with.
    """

    keyring_path: Path | None = None
    keys: SecretStr | None = None


class KnowledgeSettings(_Section):
    """Where knowledge sources may be fetched from, and how much is taken.

    URL sources resolve their host and refuse private, loopback, link-local and reserved
    addresses unless `allow_private_hosts` is set (a home lab serving docs on the LAN) or the
    address is in `allowed_private_networks` (CIDRs, the narrower choice). Cloud metadata addresses
    (169.254.169.254 and kin) stay refused even then, unless listed in `allowed_private_networks`.
    `directory`/`file` sources must lie under one of `allowed_roots`; with none, they are refused.
    """

    allow_private_hosts: bool = False
    allowed_private_networks: list[IPvAnyNetwork] = Field(default_factory=list)
    allowed_roots: list[Path] = Field(default_factory=list)
    max_document_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024)
    max_files: int = Field(default=2000, ge=1, le=100_000)
    fetch_timeout_s: float = Field(default=20.0, gt=0, le=600)
    max_redirects: int = Field(default=5, ge=0, le=20)
    chunk_chars: int = Field(default=2000, ge=200, le=100_000)
    embedding_model: str | None = None
    schedule_check_s: float = Field(default=60.0, ge=1, le=86_400)


class CreditsSettings(_Section):
    """Credit synchronisation of external API accounts; `base_urls` overrides a service's API root
    (a proxy, or a test double) and is operator configuration, never taken from API input."""

    base_urls: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=20.0, gt=0, le=600)

    @field_validator("base_urls")
    @classmethod
    def _http_urls(cls, value: dict[str, str]) -> dict[str, str]:
        return {name: _check_http_url(url) for name, url in value.items()}


class Settings(BaseSettings):
    """Everything the daemon and the CLI read from the outside world."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        case_sensitive=False,
    )

    config: Path | None = None
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: SecretStr | None = None
    language: Literal["en", "pt-BR"] = "en"
    shutdown_timeout_s: float = Field(default=15.0, gt=0, le=600)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    admin_api: AdminApiSettings = Field(default_factory=AdminApiSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    lmstudio: LMStudioSettings = Field(default_factory=LMStudioSettings)
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    vault: VaultSettings = Field(default_factory=VaultSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    knowledge: KnowledgeSettings = Field(default_factory=KnowledgeSettings)
    credits: CreditsSettings = Field(default_factory=CreditsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    @property
    def effective_database_url(self) -> str:
        """The SQLAlchemy URL in use: the configured one, or SQLite under the data directory."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite+aiosqlite:///{self.data_dir / 'orchestrator.db'}"

    @property
    def keyring_path(self) -> Path:
        """The keyring file, by default beside the database in the data directory."""
        return self.vault.keyring_path or self.data_dir / "keyring.json"


class _TomlSource(PydanticBaseSettingsSource):
    """Hands pydantic the TOML values that `load_settings` parsed (so parse errors are ours)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return (_toml_values.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_toml_values.get() or {})


def _check_http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value) < 10:
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def find_config_file(environ: dict[str, str] | None = None) -> Path | None:
    """The TOML file that applies, or None when there is none."""
    env = os.environ if environ is None else environ
    explicit = env.get(f"{ENV_PREFIX}CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{ENV_PREFIX}CONFIG points at {path}, which is not a file",
                hint="create the file or unset ORCH_CONFIG",
            )
        return path
    candidates = [Path.cwd() / "orchestrator.toml"]
    data_dir = env.get(f"{ENV_PREFIX}DATA_DIR")
    candidates.append((Path(data_dir) if data_dir else default_data_dir()) / "orchestrator.toml")
    return next((path for path in candidates if path.is_file()), None)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(
            f"{path} is not valid TOML: {err}", hint="fix the syntax at the line and column named"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}", hint="check the file's permissions") from err


def _known_env_names(model: type[BaseModel], prefix: str) -> set[str]:
    names: set[str] = set()
    for name, field in model.model_fields.items():
        env_name = f"{prefix}{name}".upper()
        names.add(env_name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _known_env_names(annotation, f"{env_name}__")
    return names


def _source_of(loc: tuple[int | str, ...], toml_path: Path | None, env: dict[str, str]) -> str:
    env_name = ENV_PREFIX + "__".join(str(part) for part in loc).upper()
    if env_name in env or (len(loc) == 1 and any(k.startswith(env_name + "__") for k in env)):
        return f"environment variable {env_name}"
    if toml_path is not None:
        return f"{toml_path}"
    return "the built-in default"


def load_settings(environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the settings, turning every problem into one ConfigError naming key, problem and source."""
    env = dict(os.environ if environ is None else environ)
    toml_path = find_config_file(env)
    toml_values = _read_toml(toml_path) if toml_path else {}
    known = _known_env_names(Settings, ENV_PREFIX)
    unknown = sorted(k for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)
    if unknown:
        raise ConfigError(
            f"unknown setting in the environment: {', '.join(unknown)}",
            hint="check the spelling; `orchestrator config show` lists every key",
        )
    token = _toml_values.set(toml_values)
    saved_environ = os.environ.copy() if environ is not None else None
    try:
        if environ is not None:
            os.environ.clear()
            os.environ.update(env)
        return Settings(**overrides)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            key = ".".join(str(part) for part in error["loc"])
            detail = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            shown = "" if error["type"] == "extra_forbidden" else f" (got {error['input']!r})"
            if any(word in key for word in ("token", "secret", "keys", "password", "database_url")):
                shown = ""
            problems.append(f"{key}: {detail}{shown}, from {_source_of(error['loc'], toml_path, env)}")
        raise ConfigError(
            "invalid configuration:\n  " + "\n  ".join(problems),
            hint="correct the value where it came from; `orchestrator config show` prints the result",
        ) from None
    finally:
        _toml_values.reset(token)
        if saved_environ is not None:
            os.environ.clear()
            os.environ.update(saved_environ)


def redacted_dump(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, every secret replaced by a marker."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return "**********" if value.get_secret_value() else ""
        if isinstance(value, BaseModel):
            return {name: walk(getattr(value, name)) for name in type(value).model_fields}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list | tuple):
            return [walk(item) for item in value]
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        return value

    dumped: dict[str, Any] = walk(settings)
    dumped["effective_database_url"] = redact_url(settings.effective_database_url)
    dumped["keyring_path"] = str(settings.keyring_path)
    return dumped


def redact_url(url: str) -> str:
    """A database URL with any password replaced, safe for logs and output."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is shown only by its scheme; never echo it whole
        return url.split(":", 1)[0] + "://…"
