"""Settings: defaults that work on a fresh machine, precedence, and errors that say what and where."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.settings import ConfigError, load_settings, redacted_dump


def test_defaults_work_on_a_fresh_machine(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.admin_api.host == "127.0.0.1"
    assert settings.admin_api.port == 8080
    assert settings.lmstudio.base_url == "http://127.0.0.1:1234"
    assert settings.effective_database_url.startswith("sqlite+aiosqlite:///")
    assert str(tmp_path / "xdg-data" / "orchestrator") in settings.effective_database_url


def test_environment_beats_file_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "custom.toml"
    config.write_text('language = "pt-BR"\n[admin_api]\nport = 9001\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("ORCH_CONFIG", str(config))
    monkeypatch.setenv("ORCH_ADMIN_API__PORT", "9002")
    monkeypatch.setenv("ORCH_DATA_DIR", str(tmp_path / "state"))
    settings = load_settings()
    assert settings.admin_api.port == 9002
    assert settings.admin_api.host == "0.0.0.0"
    assert settings.language == "pt-BR"
    assert settings.effective_database_url.endswith(f"{tmp_path / 'state' / 'orchestrator.db'}")


def test_orchestrator_toml_in_working_directory_is_found(tmp_path: Path) -> None:
    (tmp_path / "orchestrator.toml").write_text("[ollama]\nenabled = true\n")
    assert load_settings().ollama.enabled is True


def test_bad_value_names_key_problem_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[admin_api]\nport = "eighty"\n')
    monkeypatch.setenv("ORCH_CONFIG", str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "admin_api.port" in message
    assert "integer" in message
    assert str(config) in message


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_ADMIN_API__PORT", "70000")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "ORCH_ADMIN_API__PORT" in str(caught.value)
    assert "65535" in str(caught.value)


def test_unknown_keys_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "typo.toml"
    config.write_text("[admin_api]\nprot = 1\n")
    monkeypatch.setenv("ORCH_CONFIG", str(config))
    with pytest.raises(ConfigError, match=r"admin_api\.prot: unknown key"):
        load_settings()


def test_unknown_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_DATABSE_URL", "sqlite://")
    with pytest.raises(ConfigError, match="ORCH_DATABSE_URL"):
        load_settings()


def test_corrupt_toml_names_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "corrupt.toml"
    config.write_text("[admin_api\nport = 1\n")
    monkeypatch.setenv("ORCH_CONFIG", str(config))
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 1"):
        load_settings()


def test_missing_explicit_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="not a file"):
        load_settings()


def test_secret_values_never_echoed_in_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "secret.toml"
    config.write_text("[slack]\nbot_token = 12345\n")
    monkeypatch.setenv("ORCH_CONFIG", str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "12345" not in str(caught.value)


def test_redacted_dump_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_SLACK__BOT_TOKEN", "xoxb-very-secret-value")
    monkeypatch.setenv("ORCH_DATABASE_URL", "mysql+aiomysql://app:hunter22@db.example/orch")
    dumped = json.dumps(redacted_dump(load_settings()))
    assert "xoxb-very-secret-value" not in dumped
    assert "hunter22" not in dumped
    assert "db.example" in dumped


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], capture_output=True, text=True, env=full_env, timeout=60
    )


def test_config_show_cli_redacts(tmp_path: Path) -> None:
    result = _cli("config", "show", "--json", env={"ORCH_DISCORD__BOT_TOKEN": "discord-secret-xyz"})
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["discord"]["bot_token"] == "**********"
    assert "discord-secret-xyz" not in result.stdout + result.stderr


def test_config_error_cli_is_one_clear_message(tmp_path: Path) -> None:
    result = _cli("config", "show", env={"ORCH_LOG__LEVEL": "LOUD"})
    assert result.returncode == 2
    assert "log.level" in result.stderr
    assert "ORCH_LOG__LEVEL" in result.stderr
    assert "Traceback" not in result.stderr
