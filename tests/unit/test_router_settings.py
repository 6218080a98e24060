"""`[router]` settings: validated with the key and source named, and mapped onto RouterConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.engine.runtime import router_config
from bot.settings import ConfigError, load_settings


def test_router_section_from_the_file_reaches_the_router_config(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "orchestrator.toml"
    config.write_text('[router]\nfirst_token_timeout_s = 2.5\nretries_per_group = 0\n'
                      'fallbacks = { "qwen-7b" = ["llama-3b", "gemma-2b"] }\n')
    monkeypatch.setenv("ORCH_CONFIG", str(config))
    monkeypatch.setenv("ORCH_ROUTER__TOTAL_TIMEOUT_S", "30")
    policy = router_config(load_settings().router)
    assert policy.first_token_timeout_s == 2.5
    assert policy.total_timeout_s == 30.0
    assert policy.retries_per_group == 0
    assert list(policy.fallbacks["qwen-7b"]) == ["llama-3b", "gemma-2b"]
    assert policy.cooldown_s == 5.0  # untouched keys keep the documented defaults


@pytest.mark.parametrize(("toml", "key", "problem"), [
    ("first_token_timeout_s = 0", "router.first_token_timeout_s", "greater than 0"),
    ("failure_ratio = 1.5", "router.failure_ratio", "less than or equal to 1"),
    ("backoff_base_s = 2\nbackoff_max_s = 1", "router.backoff_max_s", "not be smaller"),
    ("retries = 3", "router.retries", "unknown key"),
])
def test_bad_router_values_are_refused_with_key_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          toml: str, key: str, problem: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f"[router]\n{toml}\n")
    monkeypatch.setenv("ORCH_CONFIG", str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert key in message and problem in message and str(config) in message
