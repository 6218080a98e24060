"""Temporal errors: impossible dates, the future told as past, ages and durations that do not add up.

Dates are read in English and Portuguese forms: ISO `2024-02-30`, `30/02/2024` (day first in
Portuguese, month first in English; impossible in both readings is a hard error), `February
30, 2024`, `30 February 2024`, `30 de fevereiro de 2024`, `March 2031`, `março de 2031`, and a
weekday next to a date (`Friday, 14 March 2025` must be a Friday). Per sentence:

- an impossible date (Feb 30, Feb 29 of a common year, month 13, day 32);
- an event dated after `now` told in the past tense ("was released in March 2031") with no
  future marker (will, scheduled, previsto…);
- `born in Y` with `N years old` (against `now` or the year in the same sentence), `died in Y`
  before `born in Y`, ranges ending before they start, `from Y1 to Y2 (N years)` and
  `N years ago … in Y` that disagree by more than a year.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

from bot.engine.hallucination.text import Parsed, language, words
from bot.engine.hallucination.types import Finding

MONTHS: dict[str, int] = {}
for _i, _names in enumerate([
    ("january", "jan", "janeiro"), ("february", "feb", "fevereiro", "fev"), ("march", "mar", "março", "marco"),
    ("april", "apr", "abril", "abr"), ("may", "maio", "mai"), ("june", "jun", "junho"), ("july", "jul", "julho"),
    ("august", "aug", "agosto", "ago"), ("september", "sep", "sept", "setembro", "set"),
    ("october", "oct", "outubro", "out"), ("november", "nov", "novembro"), ("december", "dec", "dezembro", "dez"),
], start=1):
    for _name in _names:
        MONTHS[_name] = _i
_FULL_MONTH = ("january|february|march|april|may|june|july|august|september|october|november|december|"
               "janeiro|fevereiro|março|marco|abril|maio|junho|julho|agosto|setembro|outubro|novembro|dezembro")
_MONTH = rf"(?:{_FULL_MONTH}|jan|feb|fev|mar|apr|abr|jun|jul|aug|ago|sep|sept|set|oct|out|nov|dec|dez)\.?"
_YEAR = r"(1[0-9]{3}|20[0-9]{2}|21[0-9]{2})"
_ISO = re.compile(rf"\b{_YEAR}-(\d{{1,2}})-(\d{{1,2}})\b")
_SLASH = re.compile(rf"\b(\d{{1,2}})/(\d{{1,2}})/{_YEAR}\b")
_MONTH_DAY = re.compile(rf"\b({_MONTH})\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+{_YEAR})?", re.IGNORECASE)
_DAY_MONTH = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th|º|°)?\s+(?:of\s+|de\s+)?({_MONTH})(?:,?\s+(?:de\s+)?{_YEAR})?",
                        re.IGNORECASE)
_MONTH_YEAR = re.compile(rf"\b({_FULL_MONTH})\s+(?:of\s+|de\s+)?{_YEAR}\b", re.IGNORECASE)
_BARE_YEAR = re.compile(rf"(?<![\d/.-]){_YEAR}(?![\d/-])")
_WEEKDAYS = {"monday": 0, "tuesday": 1, "wednesday": 2, "thursday": 3, "friday": 4, "saturday": 5, "sunday": 6,
             "segunda-feira": 0, "terça-feira": 1, "terca-feira": 1, "quarta-feira": 2, "quinta-feira": 3,
             "sexta-feira": 4, "sábado": 5, "sabado": 5, "domingo": 6}
_WEEKDAY = re.compile(r"\b(" + "|".join(_WEEKDAYS) + r"),?\s+(?:the\s+|dia\s+)?$", re.IGNORECASE)
_PAST = frozenset({"was", "were", "happened", "occurred", "released", "launched", "died", "won", "announced",
                   "published", "founded", "became", "ended", "began", "held", "signed", "introduced", "took",
                   "had", "did", "elected", "opened", "closed", "shipped", "foi", "foram", "aconteceu", "ocorreu",
                   "lançado", "lançada", "lançou", "morreu", "venceu", "anunciou", "anunciado", "publicado",
                   "publicada", "fundada", "fundado", "tornou", "terminou", "começou", "realizada", "realizado",
                   "assinado", "eleito", "eleita", "inaugurado", "inaugurada", "teve", "fez", "ganhou"})
_FUTURE = frozenset({"will", "scheduled", "planned", "expected", "upcoming", "set", "plans", "forecast",
                     "projected", "next", "until", "by", "due", "estimated", "será", "serão", "vai", "vão", "irá",
                     "irão", "previsto", "prevista", "planejado", "planejada", "deverá", "deve", "próximo",
                     "próxima", "até", "agendado", "agendada", "estimado"})
_BORN = re.compile(rf"\b(?:born|nasceu|nascido|nascida)\b[^.;]*?\b{_YEAR}\b", re.IGNORECASE)
_DIED = re.compile(rf"\b(?:died|morreu|faleceu)\b[^.;]*?\b{_YEAR}\b", re.IGNORECASE)
_AGE = re.compile(r"\b(?:(\d{1,3})\s*(?:years?\s+old|anos\s+de\s+idade)|aged\s+(\d{1,3})|"
                  r"(?:age|idade)\s+of\s+(\d{1,3})|(?:tem|tinha|com)\s+(\d{1,3})\s+anos)\b", re.IGNORECASE)
_RANGE = re.compile(rf"\b(?:from|between|de|entre)\s+{_YEAR}\s+(?:to|and|until|a|e|até)\s+{_YEAR}\b|"
                    rf"\b{_YEAR}\s*[–-]\s*{_YEAR}\b", re.IGNORECASE)
_DURATION = re.compile(r"\b(\d{1,4})\s+(?:years?|anos)\b(?!\s+(?:old|ago|de idade|atrás))", re.IGNORECASE)
_AGO = re.compile(r"\b(?:(\d{1,4})\s+years?\s+ago|há\s+(\d{1,4})\s+anos|(\d{1,4})\s+anos\s+atrás)\b",
                  re.IGNORECASE)


LIFE_WINDOW = 300  # characters after "born in Y" that still talk about the same person


@dataclass(frozen=True)
class Mention:
    """A date found in a sentence; `day`/`month` are None when not stated."""

    text: str
    year: int | None
    month: int | None
    day: int | None
    start: int


def _valid(year: int | None, month: int, day: int) -> bool:
    if not 1 <= month <= 12 or day < 1:
        return False
    days = calendar.monthrange(year if year is not None else 2000, month)[1]  # 2000: leap, so Feb 29 passes
    return day <= days


def _month(name: str) -> int:
    return MONTHS[name.casefold().rstrip(".")]


# Every month name (en/pt, full or short) starts with one of these prefixes, at a word start: the
# month patterns are the slow ones, so a sentence without such a word start skips them.
MONTH_PREFIXES = ("jan", "feb", "fev", "mar", "apr", "abr", "may", "mai", "jun", "jul", "aug", "ago", "sep", "set",
                  "oct", "out", "nov", "dec", "dez")
_MONTH_START = re.compile(r"(?<!\w)(?:" + "|".join(MONTH_PREFIXES) + ")")


def _may_name_a_month(sentence: str) -> bool:
    # casefold, like the patterns' IGNORECASE, also folds 'ſ' to 's'
    return _MONTH_START.search(sentence.casefold()) is not None


def mentions(sentence: str) -> list[Mention]:
    """Every date in one sentence (impossible ones included, with their raw numbers)."""
    found: list[Mention] = []
    taken: list[tuple[int, int]] = []

    def add(match: re.Match[str], year: str | None, month: int | None, day: str | None) -> None:
        if any(a < match.end() and match.start() < b for a, b in taken):
            return
        taken.append(match.span())
        found.append(Mention(match.group(0), int(year) if year else None, month, int(day) if day else None,
                             match.start()))

    for m in _ISO.finditer(sentence):
        add(m, m.group(1), int(m.group(2)), m.group(3))
    for m in _SLASH.finditer(sentence):
        add(m, m.group(3), None, None)  # resolved by _slash_problem (day/month order depends on language)
    if _may_name_a_month(sentence):
        for m in _MONTH_DAY.finditer(sentence):
            if m.group(1).casefold().rstrip(".") in ("may", "mar", "set", "out") and not m.group(3):
                continue  # "may 5 times", "set 3 flags": not dates without a year
            add(m, m.group(3), _month(m.group(1)), m.group(2))
        for m in _DAY_MONTH.finditer(sentence):
            if m.group(2).casefold().rstrip(".") in ("may", "mar", "set", "out") and not m.group(3):
                continue
            add(m, m.group(3), _month(m.group(2)), m.group(1))
        for m in _MONTH_YEAR.finditer(sentence):
            add(m, m.group(2), _month(m.group(1)), None)
    for m in _BARE_YEAR.finditer(sentence):
        add(m, m.group(1), None, None)
    return found


def _slash_problem(match: re.Match[str], lang: str) -> tuple[float, str] | None:
    first, second, year = int(match.group(1)), int(match.group(2)), int(match.group(3))
    day_first = _valid(year, second, first)
    month_first = _valid(year, first, second)
    if not day_first and not month_first:
        return 0.85, f"{match.group(0)} is not a valid date in any format"
    preferred = day_first if lang == "pt" else month_first
    if not preferred:
        order = "DD/MM/YYYY" if lang == "pt" else "MM/DD/YYYY"
        return 0.35, f"{match.group(0)} is not a valid date as {order}"
    return None


def _as_date(mention: Mention) -> tuple[int, int, int] | None:
    if mention.year is None:
        return None
    return mention.year, mention.month or 1, mention.day or 1


_DIGIT = re.compile(r"\d")
_ELL = re.compile(r"\b\w+'ll\b")


def _sentence_findings(sentence: str, lang: Callable[[], str], now: datetime,
                       tokens: list[str] | None = None) -> list[Finding]:
    """Findings of one sentence (`tokens`: its `words()` when known); `lang` is called only when a
    slash date needs the answer's language."""
    findings: list[Finding] = []
    found = mentions(sentence)
    for m in _SLASH.finditer(sentence):
        problem = _slash_problem(m, lang())
        if problem is not None:
            findings.append(Finding("temporal", problem[0], problem[1],
                                    {"date": m.group(0), "sentence": sentence[:300]}))
    for mention in found:
        if mention.month is not None and mention.day is not None and not _valid(mention.year, mention.month,
                                                                                   mention.day):
            findings.append(Finding("temporal", 0.9, f'"{mention.text}" is not a real date',
                                    {"date": mention.text, "sentence": sentence[:300]}))
            continue
        if mention.month is not None and mention.day is not None and mention.year is not None:
            before = sentence[: mention.start]
            weekday = _WEEKDAY.search(before[-20:])
            if weekday is not None:
                actual = date(mention.year, mention.month, mention.day).weekday()
                stated = _WEEKDAYS[weekday.group(1).lower()]
                if actual != stated:
                    findings.append(Finding(
                        "temporal", 0.7, f"{mention.text} was a {calendar.day_name[actual]}, not a "
                        f"{weekday.group(1)}", {"date": mention.text, "sentence": sentence[:300]}))
    seen = set(words(sentence) if tokens is None else tokens)
    if seen & _PAST and not seen & _FUTURE and not _ELL.search(sentence):
        today = (now.year, now.month, now.day)
        future = [m for m in found if (d := _as_date(m)) is not None and (d[0] > now.year if m.month is None
                                                                          else d > today)]
        if future:
            mention = max(future, key=lambda m: _as_date(m) or (0, 0, 0))
            findings.append(Finding("temporal", 0.75,
                                    f'"{mention.text}" is after today ({now.date().isoformat()}) but is told as '
                                    "past", {"date": mention.text, "now": now.date().isoformat(),
                                             "sentence": sentence[:300]}))
    findings.extend(_ranges(sentence))
    findings.extend(_ago(sentence, now))
    return findings


def _ranges(sentence: str) -> list[Finding]:
    findings = []
    for m in _RANGE.finditer(sentence):
        start = int(m.group(1) or m.group(3))
        end = int(m.group(2) or m.group(4))
        if end < start:
            findings.append(Finding("temporal", 0.7, f'"{m.group(0)}" ends before it starts',
                                    {"range": [start, end], "sentence": sentence[:300]}))
            continue
        rest = sentence[: m.start()] + " " + sentence[m.end():]
        for d in _DURATION.finditer(rest):
            stated = int(d.group(1))
            if stated > 3 and abs((end - start) - stated) > 1 and not stated >= 1000:
                findings.append(Finding("temporal", 0.6, f"{start} to {end} is {end - start} years, not {stated}",
                                        {"range": [start, end], "stated_years": stated, "sentence": sentence[:300]}))
    return findings


def _ago(sentence: str, now: datetime) -> list[Finding]:
    ago = list(_AGO.finditer(sentence))
    if not ago:
        return []
    years = [int(y) for y in _BARE_YEAR.findall(sentence)]
    findings = []
    for m in ago:
        stated = int(next(g for g in m.groups() if g))
        if len(years) == 1 and abs(now.year - stated - years[0]) > 1:
            findings.append(Finding("temporal", 0.55, f"{years[0]} was {now.year - years[0]} years ago, not "
                                    f"{stated}", {"year": years[0], "stated_years": stated, "now": now.year,
                                                  "sentence": sentence[:300]}))
    return findings


def _life(text: str, now: datetime) -> list[Finding]:
    """Birth, death and age statements within `LIFE_WINDOW` characters of "born in Y"."""
    born = _BORN.search(text)
    if born is None:
        return []
    birth = int(born.group(1))
    findings: list[Finding] = []
    window = text[born.start(): born.end() + LIFE_WINDOW]  # one person's story, not the whole answer
    died = _DIED.search(window)
    death = int(died.group(1)) if died else None
    if death is not None and death < birth:
        findings.append(Finding("temporal", 0.8, f"died in {death}, before being born in {birth}",
                                {"born": birth, "died": death}))
    text = window
    for m in _AGE.finditer(text):
        age = int(next(g for g in m.groups() if g))
        sentence_start = max(text.rfind(".", 0, m.start()), text.rfind("\n", 0, m.start())) + 1
        sentence_end_match = re.search(r"[.\n]", text[m.end():])
        sentence = text[sentence_start: m.end() + (sentence_end_match.start() if sentence_end_match else 0)]
        other_years = [int(y) for y in _BARE_YEAR.findall(sentence) if int(y) != birth]
        reference = other_years[-1] if other_years else (death if death is not None else now.year)
        expected = reference - birth
        if abs(expected - age) > 1:
            findings.append(Finding("temporal", 0.6, f"born in {birth}, so {expected} years old in {reference}, "
                                    f"not {age}", {"born": birth, "age": age, "reference_year": reference}))
    return findings


def detect(parsed: Parsed, now: datetime) -> list[Finding]:
    """Temporal findings, the most severe first (at most 5)."""
    detected: list[str] = []

    def lang() -> str:
        if not detected:
            detected.append(language(parsed.prose))
        return detected[0]

    findings: list[Finding] = []
    for sentence, tokens in zip(parsed.sentences, parsed.sentence_words, strict=True):
        if _DIGIT.search(sentence) is None:
            continue  # every date, year, age and duration pattern needs a digit
        findings.extend(_sentence_findings(sentence, lang, now, tokens))
    findings.extend(_life(parsed.prose, now))
    unique: dict[str, Finding] = {}
    for finding in findings:
        unique.setdefault(finding.reason, finding)
    return sorted(unique.values(), key=lambda f: -f.severity)[:5]

