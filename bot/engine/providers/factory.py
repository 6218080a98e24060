"""One place that turns a provider's configuration (kind, name, URL, token) into a client."""

from __future__ import annotations

import importlib
from pathlib import Path

from bot.engine.providers._http import HttpTimeouts
from bot.engine.providers.port import LLMProvider, ProviderError, ProviderKind

KINDS: tuple[ProviderKind, ...] = ("lmstudio", "ollama", "openai_compatible", "embedded")


# Server kind -> client class, imported only when a provider of that kind is built.
_CLIENTS = {
    "lmstudio": "bot.engine.providers.lmstudio:LMStudioProvider",
    "ollama": "bot.engine.providers.ollama:OllamaProvider",
    "openai_compatible": "bot.engine.providers.openai_compat:OpenAICompatProvider",
}


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
    client_path = _CLIENTS.get(str(kind))
    if client_path is not None:
        module_name, class_name = client_path.split(":")
        client_class = getattr(importlib.import_module(module_name), class_name)
        provider: LLMProvider = client_class(
            name=name,
            base_url=base_url,
            api_token=api_token,
            is_local=is_local,
            timeouts=timeouts,
            models_cache_s=models_cache_s,
        )
        return provider
    raise ProviderError(f"unknown provider kind {kind!r}", hint=f"one of: {', '.join(KINDS)}")
