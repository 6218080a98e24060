"""Splitting an answer into what the detectors look at: prose sentences, code, table rows, claims.

Work is capped (`MAX_ANALYSED_CHARS`) so a 100k-word runaway answer costs the same as a long
normal one; the checker says in its notes when the cap applied. Code blocks and table rows are
kept apart from prose because they repeat legitimately (`}` lines, table borders) and are not
sentences a contradiction or a fact check can be run on.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache

from bot.engine.divergence import _entities, _numbers

MAX_ANALYSED_CHARS = 60_000
MAX_CLAIMS = 80
MIN_CLAIM_WORDS = 4

_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=[\"'(\[]?[A-ZÀ-Ý0-9*-])|\n+")
_WORD = re.compile(r"[\wÀ-ÿ]+(?:['’-][\wÀ-ÿ]+)*", re.UNICODE)
_LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_CODE_LINE = re.compile(r"^\s*(?:def |class |import |from \S+ import|return\b|[{}()\[\];]+$|#include|//|/\*|"
                        r"(?:const|let|var|public|private|function|fn|SELECT|INSERT|UPDATE)\b)")
_PT_MARKERS = frozenset({"não", "é", "são", "uma", "um", "de", "do", "da", "que", "para", "com", "em", "os", "as",
                         "foi", "está", "também", "mais", "pelo", "pela", "isso", "como"})
_EN_MARKERS = frozenset({"the", "is", "are", "of", "and", "to", "in", "that", "it", "was", "for", "with", "as",
                         "this", "be", "by", "on", "not", "has", "have"})
STOPWORDS = frozenset({
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "being", "of", "and", "or", "to", "in", "on", "at",
    "for", "with", "as", "by", "it", "its", "this", "that", "these", "those", "from", "has", "have", "had", "do",
    "does", "did", "so", "than", "then", "there", "their", "they", "he", "she", "we", "you", "i", "his", "her",
    "our", "your", "which", "who", "what", "when", "where", "how", "why", "can", "could", "will", "would",
    "should", "may", "might", "also", "about", "into", "over", "after", "before", "if", "but", "because", "all",
    "any", "some", "more", "most", "very", "just", "only", "each", "such", "other", "one", "use", "used",
    "o", "os", "um", "uma", "uns", "umas", "de", "da", "dos", "das", "e", "é", "são", "foi", "foram",
    "em", "no", "na", "nos", "nas", "para", "por", "pelo", "pela", "com", "que", "se", "ao", "aos", "à", "às",
    "seu", "sua", "seus", "suas", "ele", "ela", "eles", "elas", "isso", "isto", "este", "esta", "esse", "essa",
    "mais", "muito", "também", "como", "qual", "quais", "quando", "onde", "porque", "ser", "ter", "tem", "têm",
    "está", "estão", "há", "pode", "podem", "sobre", "entre", "já", "ou", "mas", "me", "você",
    "please", "explain", "tell", "give", "write", "show", "describe", "explique", "diga",
})


EMPTY: frozenset[str] = frozenset()


def frozen(values: set[str]) -> frozenset[str]:
    """`values` as a frozenset, sharing one empty set: most sentences have no numbers or names, and
    every object a check keeps alive counts towards the next garbage collection."""
    return frozenset(values) if values else EMPTY


def normalise(text: str) -> str:
    """Lower-case words only: what two sentences must share to count as the same sentence."""
    return " ".join(words(text))


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters with accents, digits)."""
    return [w.lower() for w in _WORD.findall(text)]


@lru_cache(maxsize=65_536)
def stem(word: str) -> str:
    """A crude language-agnostic stem: accents dropped, cut to 6 letters ('returns'~'returned')."""
    plain = unicodedata.normalize("NFKD", word).encode("ascii", "ignore").decode() or word
    return plain[:6]


def content_stems(text: str) -> set[str]:
    """Stems of the words that carry meaning (no stop words, no bare numbers)."""
    return stems_of(words(text))


class _ContentStems(dict[str, str]):
    """Word → its stem, or "" for a word that carries no meaning; filled on first sight of a word.

    A vocabulary-level table (like `stem`'s cache), so `stems_of` is one C-level pass over the
    tokens. Cleared when it reaches `limit` words so a stream of random tokens cannot grow it.
    """

    limit = 200_000

    def __missing__(self, word: str) -> str:
        if len(self) >= self.limit:
            self.clear()
        value = self[word] = stem(word) if word not in STOPWORDS and not word.isdigit() and len(word) > 1 else ""
        return value


_CONTENT_STEMS = _ContentStems()


def stems_of(tokens: Iterable[str]) -> set[str]:
    """`content_stems` of already tokenised text (detectors share one tokenisation per sentence)."""
    found = set(map(_CONTENT_STEMS.__getitem__, tokens))
    found.discard("")
    return found


def language(text: str) -> str:
    """'pt' or 'en' by stop-word votes (enough for picking date formats and negation words)."""
    tokens = words(text[:4000])
    pt = sum(1 for w in tokens if w in _PT_MARKERS)
    en = sum(1 for w in tokens if w in _EN_MARKERS)
    return "pt" if pt > en else "en"


_DIGITS = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*(?:\s?%)?")


def numbers(text: str) -> set[str]:
    """Normalised numbers written in digits (number words are left out: 'um' is also 'a' in Portuguese)."""
    found = _DIGITS.findall(text)
    return _numbers(" ".join(found)) if found else set()  # most sentences have none: skip the parser


def numbers_in(texts: Iterable[str]) -> set[str]:
    """The union of `numbers(t)` for every text, parsed in one pass over their digit groups."""
    found = [group for text in texts for group in _DIGITS.findall(text)]
    return _numbers(" ".join(found)) if found else set()


_FIRST_CAPITAL = re.compile(r"^(\W*)([A-ZÀ-Ý][\wÀ-ÿ'-]*)(?!\s+[A-ZÀ-Ý])")


def entities(text: str, *, strict: bool = True) -> set[str]:
    """Capitalised names in `text`, lower-cased; when `strict`, a lone capitalised first word is taken
    for a sentence start, not a name."""
    if strict:
        text = _FIRST_CAPITAL.sub(lambda m: m.group(1) + m.group(2).lower(), text.strip(), count=1)
    return {e for e in _entities(text) if e not in STOPWORDS}


@dataclass(frozen=True)
class Parsed:
    """An answer split once and shared by every detector."""

    text: str
    truncated: bool
    prose: str
    code_blocks: tuple[str, ...]
    table_rows: tuple[str, ...]

    @cached_property
    def sentences(self) -> list[str]:
        """Prose sentences in order (list markers removed)."""
        found = []
        for piece in _SENTENCE_END.split(self.prose):
            sentence = _LIST_MARK.sub("", piece).strip().strip("*#> ").strip()
            if sentence:
                found.append(sentence)
        return found

    @cached_property
    def sentence_words(self) -> list[list[str]]:
        """`words()` of each sentence, computed once for every detector."""
        return [words(sentence) for sentence in self.sentences]

    @cached_property
    def claim_words(self) -> list[tuple[str, list[str]]]:
        """Sentences that state something checkable with their words, at most `MAX_CLAIMS` (the first ones)."""
        chosen = []
        for sentence, tokens in zip(self.sentences, self.sentence_words, strict=True):
            if len(tokens) < MIN_CLAIM_WORDS or sentence.rstrip().endswith("?"):
                continue
            chosen.append((sentence, tokens))
            if len(chosen) >= MAX_CLAIMS:
                break
        return chosen

    @cached_property
    def claims(self) -> list[str]:
        """Sentences that state something checkable, at most `MAX_CLAIMS` (the first ones)."""
        return [sentence for sentence, _ in self.claim_words]

    @cached_property
    def claim_stems(self) -> list[set[str]]:
        """`content_stems` of each claim (contradiction and support checks both need them)."""
        return [stems_of(tokens) for _, tokens in self.claim_words]

    @cached_property
    def claim_numbers(self) -> list[frozenset[str]]:
        """`numbers` of each claim."""
        return [frozen(numbers(claim)) for claim, _ in self.claim_words]

    @cached_property
    def text_words(self) -> list[str]:
        """`words()` of the analysed text."""
        return words(self.text)

    @cached_property
    def prose_words(self) -> list[str]:
        """`words()` of the prose."""
        return words(self.prose)

    @cached_property
    def word_count(self) -> int:
        """Words in the analysed part."""
        return len(self.text_words)


def parse(answer: str, *, limit: int = MAX_ANALYSED_CHARS) -> Parsed:
    """Split `answer` (its first `limit` characters) into prose, code blocks and table rows."""
    truncated = len(answer) > limit
    text = answer[:limit]
    code_blocks = tuple(m.group(0) for m in _FENCE.finditer(text))
    without_code = _FENCE.sub("\n", text)
    prose_lines: list[str] = []
    table_rows: list[str] = []
    for line in without_code.splitlines():
        stripped = line.strip()
        if stripped.startswith("|") or stripped.count("|") >= 2:
            table_rows.append(stripped)
        elif _CODE_LINE.match(line) or line.startswith("    "):
            continue
        else:
            prose_lines.append(line)
    return Parsed(text=text, truncated=truncated, prose="\n".join(prose_lines), code_blocks=code_blocks,
                  table_rows=tuple(table_rows))


def split_sentences(text: str) -> list[str]:
    """Sentences of any passage (knowledge, reference answers)."""
    return parse(text).sentences


def table_cells(rows: tuple[str, ...]) -> list[str]:
    """Table rows as sentences ('a b c'), skipping separator rows, so facts in tables are claims too."""
    cells = []
    for row in rows:
        parts = [p.strip() for p in row.strip("|").split("|")]
        if all(set(p) <= set("-: ") for p in parts):
            continue
        cells.append(" ".join(p for p in parts if p))
    return cells
