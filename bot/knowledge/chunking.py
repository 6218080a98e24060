"""Splitting documents into chunks small enough to cite and embed, on natural boundaries.

Paragraphs are packed greedily up to `max_chars`; a paragraph longer than that is split on lines,
then sentences, then hard at `max_chars`, so no chunk exceeds the limit and none is empty.
"""

from __future__ import annotations

import re

_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCES = re.compile(r"(?<=[.!?])\s+")


def _pieces(text: str, max_chars: int) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    for splitter in (str.splitlines, _SENTENCES.split):
        parts = [part for part in splitter(text) if part.strip()]
        if len(parts) > 1:
            return [piece for part in parts for piece in _pieces(part.strip(), max_chars)]
    return [text[start:start + max_chars] for start in range(0, len(text), max_chars)]


def chunk_text(text: str, max_chars: int) -> list[str]:
    """The text as chunks of at most `max_chars` characters (an empty text gives no chunk)."""
    pieces = [piece for paragraph in _PARAGRAPHS.split(text) if paragraph.strip()
              for piece in _pieces(paragraph.strip(), max_chars)]
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        candidate = f"{current}\n\n{piece}" if current else piece
        if len(candidate) <= max_chars:
            current = candidate
        else:
            chunks.append(current)
            current = piece
    if current:
        chunks.append(current)
    return chunks
