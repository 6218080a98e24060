"""One place that turns a provider's configuration (kind, name, URL, token) into a client."""

from __future__ import annotations

from pathlib import Path

from bot.engine.providers._http import HttpTimeouts
from bot.engine.providers.port import LLMProvider, ProviderError, ProviderKind

KINDS: tuple[ProviderKind, ...] = ("lmstudio", "ollama", "openai_compatible", "embedded")


def build_provider(
    *,
    kind: ProviderKind | str,
    name: str,
    base_url: str | None = None,
    api_token: str | None = None,
    is_local: bool | None = None,
    timeouts: HttpTimeouts | None = None,
    data_dir: Path | None = None,
    models_cache_s: float = 30.0,
) -> LLMProvider:
    """A provider client for one configured server; ProviderError for an unknown kind.

    `data_dir` is needed only by the embedded kind (where it assembles the Gemma file and keeps
    the server's log); `base_url` by every other kind.
    """
    if kind == "embedded":
        if data_dir is None:
            raise ProviderError("the embedded provider needs a data directory", hint="pass settings.data_dir")
        from bot.engine.providers.embedded import EmbeddedProvider

        return EmbeddedProvider(name=name, data_dir=data_dir, timeouts=timeouts)
    if not base_url:
        raise ProviderError(f"provider {name!r} of kind {kind!r} has no base URL", hint="set its base_url")
    if not base_url.startswith(("http://", "https://")):
        raise ProviderError(f"provider {name!r}: base URL must start with http:// or https://: {base_url!r}")
    if kind == "lmstudio":
        from bot.engine.providers.lmstudio import LMStudioProvider

        return LMStudioProvider(
            name=name,
            base_url=base_url,
            api_token=api_token,
            is_local=is_local,
            timeouts=timeouts,
            models_cache_s=models_cache_s,
        )
    if kind == "ollama":
        from bot.engine.providers.ollama import OllamaProvider

        return OllamaProvider(
            name=name,
            base_url=base_url,
            api_token=api_token,
            is_local=is_local,
            timeouts=timeouts,
            models_cache_s=models_cache_s,
        )
    if kind == "openai_compatible":
        from bot.engine.providers.openai_compat import OpenAICompatProvider

        return OpenAICompatProvider(
            name=name,
            base_url=base_url,
            api_token=api_token,
            is_local=is_local,
            timeouts=timeouts,
            models_cache_s=models_cache_s,
        )
    raise ProviderError(f"unknown provider kind {kind!r}", hint=f"one of: {', '.join(KINDS)}")
