"""Repetition and loops: a sentence said again and again, recurring word n-grams, a looping tail.

Small models that lose the thread repeat themselves; the seeded rule was "the same phrase 3+
times". Three measurements, each cheap and linear in the answer:

- the most repeated prose sentence (≥ 4 words; code and table rows excluded, they repeat
  legitimately): 2 times is a hint, 3 a finding, 5+ nearly certain;
- the share of duplicated word 6-grams over the whole answer (a paraphrasing loop repeats
  long stretches without repeating whole sentences);
- a periodic tail: the last words are one unit (1–40 words) repeated 4+ times in a row — the
  shape of a generation that never stops.

`StreamGuard` runs the same checks incrementally on a stream so the engine can cancel a
looping or runaway generation early instead of paying for all of it.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from bot.engine.hallucination.text import Parsed, normalise, words
from bot.engine.hallucination.types import Finding, clip, ramp

NGRAM = 6
MAX_PERIOD = 40
MIN_TAIL_REPEATS = 4
MAX_NGRAM_WORDS = 20_000


def _quote(sentence: str, limit: int = 80) -> str:
    return sentence if len(sentence) <= limit else sentence[: limit - 1] + "…"


def sentence_repeats(sentences: list[str], tokens: list[list[str]] | None = None) -> tuple[str, int]:
    """The most repeated sentence of ≥ 4 words and how many times it appears (`tokens`: their `words()`)."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for sentence, sentence_words in zip(sentences, tokens if tokens is not None else map(words, sentences),
                                        strict=True):
        if len(sentence_words) < 4:
            continue
        key = " ".join(sentence_words)
        counts[key] += 1
        first.setdefault(key, sentence)
    if not counts:
        return "", 0
    key, count = counts.most_common(1)[0]
    return first[key], count


def duplicate_ngram_share(tokens: list[str], n: int = NGRAM) -> float:
    """Share of word n-grams that already occurred earlier in the text (0 = no repetition)."""
    tokens = tokens[:MAX_NGRAM_WORDS]
    total = len(tokens) - n + 1
    if total < 8:
        return 0.0
    # The set of the n-grams' hashes, built in C by zip/map: no per-position tuple slicing in Python.
    distinct = len(set(map(hash, zip(*(tokens[i : i + total] for i in range(n)), strict=True))))
    return (total - distinct) / total


def tail_period(tokens: list[str], *, max_period: int = MAX_PERIOD) -> tuple[int, int]:
    """(period, repeats) of the longest-running repeated unit at the end of `tokens`."""
    best = (0, 0)
    tail = tokens[-max_period * 12 :]
    for period in range(1, min(max_period, len(tail) // 2) + 1):
        unit = tail[-period:]
        repeats = 1
        while (repeats + 1) * period <= len(tail) and tail[-(repeats + 1) * period : -repeats * period] == unit:
            repeats += 1
        if repeats >= 2 and repeats * period > best[0] * best[1]:
            best = (period, repeats)
    return best


def _tail_severity(period: int, repeats: int) -> float:
    if repeats < MIN_TAIL_REPEATS or period * repeats < 12:
        return 0.0
    return clip(0.6 + 0.05 * (repeats - MIN_TAIL_REPEATS) + 0.005 * period * repeats, 0.6, 0.98)


def _sentence_severity(count: int) -> float:
    return {0: 0.0, 1: 0.0, 2: 0.25, 3: 0.6, 4: 0.75}.get(count, 0.95)


def detect(parsed: Parsed) -> list[Finding]:
    """Repetition findings for one answer (at most one per measurement)."""
    findings: list[Finding] = []
    sentence, count = sentence_repeats(parsed.sentences, parsed.sentence_words)
    if count >= 2:
        findings.append(Finding("repetition", _sentence_severity(count),
                                f'the sentence "{_quote(sentence)}" appears {count} times',
                                {"sentence": sentence[:300], "count": count}))
    share = duplicate_ngram_share(parsed.prose_words)
    ngram_severity = ramp(share, 0.12, 0.5)
    if ngram_severity > 0:
        findings.append(Finding("repetition", 0.9 * ngram_severity,
                                f"{share:.0%} of the answer's {NGRAM}-word sequences repeat earlier ones",
                                {"duplicate_ngram_share": round(share, 4), "n": NGRAM}))
    period, repeats = tail_period(parsed.text_words)
    tail = _tail_severity(period, repeats)
    if tail > 0:
        findings.append(Finding("repetition", tail,
                                f"the answer ends in a loop: the same {period} word(s) repeated {repeats} times",
                                {"period_words": period, "repeats": repeats}))
    return findings


class StreamGuard:
    """Fed the deltas of a streaming answer; returns a Finding as soon as the generation loops or runs away.

    Checks run on complete sentences as they arrive and on the tail every `check_every` words, so
    the total cost stays linear in the stream: `feed` only scans the new delta (plus the character
    before it) for a sentence end and keeps the unfinished sentence as a list of pieces, joined once
    when it ends — never re-scanning or re-copying the pending text per token. Once it has fired it
    keeps returning that finding.
    """

    def __init__(self, *, max_sentence_repeats: int = 4, max_words: int = 30_000, check_every: int = 24,
                 min_tail_repeats: int = 6) -> None:
        self.max_sentence_repeats = max_sentence_repeats
        self.max_words = max_words
        self.check_every = check_every
        self.min_tail_repeats = min_tail_repeats
        self.words = 0
        self.tripped: Finding | None = None
        self._pieces: list[str] = []  # the unfinished sentence (no sentence end inside), in arrival order
        self._pending_chars = 0
        self._head = ""  # first non-blank character of the unfinished sentence ("" while it is blank)
        self._sentences: Counter[str] = Counter()
        self._tail: deque[str] = deque(maxlen=MAX_PERIOD * 12)
        self._since_check = 0
        self._in_code = False

    def feed(self, text: str) -> Finding | None:
        """Add a delta; a Finding means: stop this generation."""
        if self.tripped is not None or not text:
            return self.tripped
        new_words = words(text)
        self.words += len(new_words)
        self._tail.extend(new_words)
        self._since_check += len(new_words)
        if self.words > self.max_words:
            return self._trip(0.7, f"the answer ran past {self.max_words} words", {"words": self.words})
        found = self._check_sentences(text)
        if found is None and self._since_check >= self.check_every:
            self._since_check = 0
            found = self._check_tail()
        return found

    def _trip(self, severity: float, reason: str, evidence: dict[str, Any]) -> Finding:
        self.tripped = Finding("repetition", severity, reason, {**evidence, "streaming": True, "words": self.words})
        return self.tripped

    def _check_sentences(self, text: str) -> Finding | None:
        # The pending text holds no sentence end, so a new one starts in `text` or at the pending
        # text's last character (". " split across two deltas).
        before = self._pieces[-1][-1:] if self._pieces else ""
        window = before + text
        cut = max(window.rfind(". "), window.rfind("\n"), window.rfind("! "), window.rfind("? "))
        if cut < 0:
            self._pieces.append(text)
            self._pending_chars += len(text)
            if not self._head:
                self._head = text.lstrip()[:1]
            if self._pending_chars > 4000:  # no sentence end for 4 kB: keep only the tail
                self._set_pending("".join(self._pieces)[-2000:])
            return None
        cut += self._pending_chars - len(before)
        joined = "".join(self._pieces) + text
        complete = joined[: cut + 1]
        self._set_pending(joined[cut + 1 :])
        for line in complete.splitlines():
            if line.lstrip().startswith("```"):
                self._in_code = not self._in_code
                self._tail.clear()
                continue
            if self._in_code or line.lstrip().startswith("|"):
                self._tail.clear()  # code and tables repeat legitimately: they are no loop
                continue
            for sentence in line.replace("! ", ". ").replace("? ", ". ").split(". "):
                key = normalise(sentence)
                if key.count(" ") < 3:
                    continue
                self._sentences[key] += 1
                count = self._sentences[key]
                if count >= self.max_sentence_repeats:
                    return self._trip(_sentence_severity(count),
                                      f'the sentence "{_quote(sentence.strip())}" appeared {count} times '
                                      "while streaming", {"sentence": sentence.strip()[:300], "count": count})
        return None

    def _set_pending(self, text: str) -> None:
        self._pieces = [text] if text else []
        self._pending_chars = len(text)
        self._head = text.lstrip()[:1]

    def _check_tail(self) -> Finding | None:
        if self._in_code or self._head == "|":
            return None
        period, repeats = tail_period(list(self._tail))
        if repeats >= self.min_tail_repeats and period * repeats >= 24:
            return self._trip(_tail_severity(period, repeats),
                              f"the stream is looping: the same {period} word(s) repeated {repeats} times",
                              {"period_words": period, "repeats": repeats})
        return None
