"""Logging: JSON off a terminal, and secrets never in a line."""

from __future__ import annotations

import io
import json
import logging

from bot.logs import configure_logging, get_logger, redact_text, register_secret


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_with_bound_context_and_redaction() -> None:
    import structlog

    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream, secrets=["s3cr3t-value-123"])
    structlog.contextvars.bind_contextvars(task_id=42)
    try:
        get_logger("test").info(
            "calling with s3cr3t-value-123 inside",
            api_token="abc123456",
            headers={"Authorization": "Bearer zzzzzzzzzz"},
        )
    finally:
        structlog.contextvars.clear_contextvars()
    (line,) = _lines(stream)
    assert line["task_id"] == 42
    assert "s3cr3t-value-123" not in json.dumps(line)
    assert line["api_token"] == "[REDACTED]"
    assert "zzzzzzzzzz" not in json.dumps(line)


def test_standard_library_logs_are_redacted_too() -> None:
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    register_secret("another-secret-999")
    logging.getLogger("third.party").warning("token is another-secret-999")
    (line,) = _lines(stream)
    assert "another-secret-999" not in json.dumps(line)


def test_exception_text_is_redacted() -> None:
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream, secrets=["exc-secret-777"])
    try:
        raise RuntimeError("failed with exc-secret-777")
    except RuntimeError:
        get_logger("test").exception("boom")
    assert "exc-secret-777" not in stream.getvalue()


def test_url_passwords_and_bearer_tokens_in_free_text() -> None:
    text = redact_text("mysql://app:pw12345@db/x and Bearer abcdefghijkl")
    assert "pw12345" not in text
    assert "abcdefghijkl" not in text


def test_credentials_are_found_in_every_spelling_the_case_blind_pattern_matches() -> None:
    """The quick test that skips the pattern must not skip a text the pattern would match."""
    for text in ("BEARER abcdefghijkl", "bEaReR abcdefghijkl", "Basic QWxhZGRpbjpvcGVu",
                 "baſic QWxhZGRpbjpvcGVu", "basİc QWxhZGRpbjpvcGVu", "basıc QWxhZGRpbjpvcGVu — in a sentence"):
        redacted = redact_text(text)
        assert "QWxhZGRpbjpvcGVu" not in redacted and "abcdefghijkl" not in redacted, text
    assert redact_text("plain — text, no credentials, no links") == "plain — text, no credentials, no links"


def test_console_format_is_readable() -> None:
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="console", stream=stream)
    get_logger("test").info("hello", answer=42)
    assert "hello" in stream.getvalue()
    assert "answer=42" in stream.getvalue()
