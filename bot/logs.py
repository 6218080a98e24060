"""Structured logging: JSON lines off a terminal, readable on one, secrets always redacted.

Redaction has two layers: any key that names a secret (token, password, authorization, …) is
masked whatever its value, and any value registered with `register_secret` is masked wherever it
appears inside a string, so a secret interpolated into a message or URL still never reaches a log.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(
    r"(pass(word)?|secret|token|api[_-]?key|authorization|cookie|credential|private[_-]?key|"
    r"client[_-]?secret|refresh|bearer|signature|plaintext|session[_-]?key)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secret_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Remember a secret value so it is masked in every later log line."""
    global _secret_pattern
    if not value or len(value) < 4:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def redact_text(text: str) -> str:
    """Mask registered secrets, bearer credentials and URL passwords inside free text."""
    pattern = _secret_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    # The case-blind scan of _BEARER costs about 15 µs per kilobyte; a lower-cased copy and two
    # substring tests tell in a quarter of that whether it can match (most prompts and answers).
    # Case-blind, Python's re also matches İ and ı as i and ſ as s, which lower() keeps apart.
    lowered = text.lower()
    if "bearer" in lowered or "basic" in lowered or (not text.isascii() and any(c in text for c in "İıſ")):
        text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(3)}", text)


def redact_value(key: str, value: Any) -> Any:
    """Mask a value by its key's name or, recursively, by its contents."""
    is_number = isinstance(value, int | float)
    if _SECRET_KEY.search(key) and value not in (None, "") and not is_number:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(key, v) for v in value]
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    return value


def _redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        event_dict[key] = redact_value(key, event_dict[key]) if key != "event" else event_dict[key]
    if isinstance(event_dict.get("event"), str):
        event_dict["event"] = redact_text(event_dict["event"])
    if isinstance(event_dict.get("exception"), str):
        event_dict["exception"] = redact_text(event_dict["exception"])
    return event_dict


def configure_logging(
    *, level: str = "INFO", fmt: str = "auto", stream: Any = None, secrets: Iterable[str] = ()
) -> None:
    """Route structlog and the standard library through one redacting pipeline."""
    for secret in secrets:
        register_secret(secret)
    stream = stream or sys.stderr
    json_output = fmt == "json" or (fmt == "auto" and not getattr(stream, "isatty", lambda: False)())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    # Dropping a call below the level before the other processors run: the engine's hot paths
    # log at INFO, and stamping and merging each event only for the handler to discard it cost
    # more than the call it logged. The level is read per call, so a later reconfiguration counts.
    # Cached loggers keep these processors: each configuration installs the same ones (the output
    # format and stream live in the handler below).
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("aiosqlite", "asyncio", "urllib3", "httpx", "httpcore", "discord.gateway"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structured logger; bind `task_id`/`request_id` with structlog.contextvars."""
    return structlog.stdlib.get_logger(name)  # type: ignore[no-any-return]
