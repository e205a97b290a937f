"""Tag clauses with the taxonomy categories (AI training, arbitration, data sale…) they touch."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["low", "medium", "high", "critical"]
SpanKind = Literal["phrase", "pattern", "require"]

SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high", "critical")
_SEVERITY_RANK: dict[str, int] = {name: rank for rank, name in enumerate(SEVERITIES, start=1)}

# Folding keeps every character in place (one in, one out) so offsets found in the folded
# text are offsets in the caller's text.
_FOLD = {
    ord("\u2018"): "'",
    ord("\u2019"): "'",
    ord("\u201a"): "'",
    ord("\u201b"): "'",
    ord("\u2032"): "'",
    ord("\u201c"): '"',
    ord("\u201d"): '"',
    ord("\u201e"): '"',
    ord("\u201f"): '"',
    ord("\u00ab"): '"',
    ord("\u00bb"): '"',
    ord("\u2010"): "-",
    ord("\u2011"): "-",
    ord("\u2012"): "-",
    ord("\u2013"): "-",
    ord("\u2014"): "-",
    ord("\u00a0"): " ",
    ord("\u202f"): " ",
    ord("\u2009"): " ",
}

# A sentence ends at . ! ? followed by a space, at a line break, at an HTML <br> or at a table
# cell bar or a list bullet; require/exclude terms are looked up in the sentence that holds a hit.
_SENTENCE_END = re.compile(r"[.!?](?=[\s\"')\]*_]|$)|\n|<br\s*/?>|\||(?<=\s)\*(?=\s)|•")
_ABBREVIATIONS = ("e.g", "i.e", "u.s", "u.k", "etc", "inc", "ltd", "no", "art", "sec", "vs", "cf")
_LAST_WORD = re.compile(r"[\w.]+$")
_WORDS = re.compile(r"\w+")


def fold(text: str) -> str:
    """Lower-case text and straighten quotes and dashes, keeping every offset in place."""
    text = text.translate(_FOLD)
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    # A few characters (İ) lower-case to two; keep those as they are so offsets hold.
    return "".join(low if len(low := char.lower()) == 1 else char for char in text)


def severity_rank(severity: str) -> int:
    """Order of a severity (low=1 … critical=4), for "at least this severe" filters."""
    try:
        return _SEVERITY_RANK[severity]
    except KeyError:
        raise ValueError(f"unknown severity {severity!r}; expected one of {SEVERITIES}") from None


def term_regex(term: str) -> str:
    """Regex source for a literal term: whole words, any whitespace, a trailing * for any ending."""
    return _term_start(term) + _term_body(term)


def _term_start(term: str) -> str:
    """The left word boundary a term needs (none when it starts with punctuation)."""
    return r"(?<!\w)" if re.match(r"\w", fold(term)) else ""


def _term_body(term: str) -> str:
    """Regex source for a term without its left word boundary."""
    words = fold(term.rstrip("*")).split()
    if not words:
        raise ValueError(f"empty term {term!r}")
    body = r"\s+".join(re.escape(word) for word in words)
    if term.endswith("*"):
        return body + r"\w*"
    return body + (r"(?!\w)" if re.search(r"\w$", words[-1]) else "")


def _alternation(terms: tuple[str, ...]) -> _Terms | None:
    """One regex matching any of the literal terms, longest first so the fullest wording wins."""
    if not terms:
        return None
    ordered = tuple(sorted(set(terms), key=lambda term: (-len(term), term)))
    groups: dict[bool, list[str]] = {True: [], False: []}
    for i, term in enumerate(ordered):
        groups[bool(_term_start(term))].append(f"(?P<t{i}>{_term_body(term)})")
    # Checking the word boundary and first letter once, before trying every term, keeps a
    # forty-term alternation from being attempted at every offset of a long paragraph.
    parts = []
    if groups[True]:
        firsts = "".join(sorted({re.escape(fold(t)[0]) for t in ordered if _term_start(t)}))
        parts.append(f"(?<!\\w)(?=[{firsts}])(?:{'|'.join(groups[True])})")
    if groups[False]:
        parts.append("|".join(groups[False]))
    return _Terms(regex=re.compile("|".join(parts)), terms=ordered)


@dataclass(frozen=True, slots=True)
class _Terms:
    """Compiled literal terms; the named group that matched says which term it was."""

    regex: re.Pattern[str]
    terms: tuple[str, ...]

    def finditer(self, text: str, start: int, end: int) -> list[tuple[str, int, int]]:
        """Each match in text[start:end] as (configured term, start, end)."""
        return [
            (self.terms[int((found.lastgroup or "t0")[1:])], found.start(), found.end())
            for found in self.regex.finditer(text, start, end)
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One way a category shows up: phrases or patterns, gated by require and exclude terms."""

    id: str
    phrases: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    require: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    weight: float = 0.6
    _phrase_re: _Terms | None = field(init=False, repr=False, compare=False)
    _pattern_res: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _require_re: _Terms | None = field(init=False, repr=False, compare=False)
    _exclude_re: _Terms | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.phrases and not self.patterns:
            raise ValueError(f"rule {self.id!r} has neither phrases nor patterns")
        if not 0.0 < self.weight <= 1.0:
            raise ValueError(f"rule {self.id!r} weight {self.weight} is outside (0, 1]")
        # Compiled once here, so a Taxonomy built once classifies any number of texts.
        object.__setattr__(self, "_phrase_re", _alternation(self.phrases))
        object.__setattr__(
            self,
            "_pattern_res",
            tuple(re.compile(pattern, re.IGNORECASE) for pattern in self.patterns),
        )
        object.__setattr__(self, "_require_re", _alternation(self.require))
        object.__setattr__(self, "_exclude_re", _alternation(self.exclude))


@dataclass(frozen=True, slots=True, kw_only=True)
class Category:
    """A kind of clause worth watching, with how bad a change to it is and the laws behind it."""

    id: str
    name: str
    description: str
    severity: Severity
    regulations: tuple[str, ...]
    rules: tuple[Rule, ...]

    def __post_init__(self) -> None:
        severity_rank(self.severity)
        if not self.rules:
            raise ValueError(f"category {self.id!r} has no rules")


@dataclass(frozen=True, slots=True, kw_only=True)
class Taxonomy:
    """The categories a clause can be tagged with."""

    categories: tuple[Category, ...]

    def __post_init__(self) -> None:
        ids = [category.id for category in self.categories]
        duplicates = sorted({cid for cid in ids if ids.count(cid) > 1})
        if duplicates:
            raise ValueError(f"duplicate category ids: {', '.join(duplicates)}")

    def category(self, category_id: str) -> Category:
        """The category with this id."""
        for category in self.categories:
            if category.id == category_id:
                return category
        raise KeyError(category_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class Span:
    """Words in the classified text that a rule matched, with their offsets in that text."""

    kind: SpanKind
    term: str
    text: str
    start: int
    end: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleHit:
    """A rule that fired, how strongly, and the spans that made it fire."""

    rule_id: str
    strength: float
    spans: tuple[Span, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CategoryMatch:
    """A category a text touches, how sure the match is (0..1), and the evidence for it."""

    category_id: str
    name: str
    severity: Severity
    regulations: tuple[str, ...]
    confidence: float
    evidence: tuple[RuleHit, ...]


def classify(taxonomy: Taxonomy, text: str) -> tuple[CategoryMatch, ...]:
    """Categories the text touches, most confident first, then by id."""
    folded = fold(text)
    bounds = _sentence_bounds(folded)
    matches = []
    for category in taxonomy.categories:
        hits = tuple(hit for rule in category.rules if (hit := _apply(rule, text, folded, bounds)))
        if not hits:
            continue
        # Noisy-OR: each agreeing rule closes part of the remaining doubt.
        doubt = 1.0
        for hit in hits:
            doubt *= 1.0 - hit.strength
        matches.append(
            CategoryMatch(
                category_id=category.id,
                name=category.name,
                severity=category.severity,
                regulations=category.regulations,
                confidence=round(1.0 - doubt, 3),
                evidence=hits,
            )
        )
    return tuple(sorted(matches, key=lambda match: (-match.confidence, match.category_id)))


def _sentence_bounds(folded: str) -> tuple[tuple[int, int], ...]:
    """Start and end offsets of each sentence in the folded text."""
    bounds = []
    start = 0
    for end_match in _SENTENCE_END.finditer(folded):
        if end_match.group() == "." and _is_abbreviation(folded, end_match.start()):
            continue
        end = end_match.end()
        bounds.append((start, end))
        start = end
    bounds.append((start, len(folded)))
    return tuple(bounds)


def _is_abbreviation(folded: str, dot: int) -> bool:
    """Whether the full stop at this offset closes an abbreviation or a number like 1.5."""
    if dot + 1 < len(folded) and folded[dot + 1].isdigit():
        return True
    word = _LAST_WORD.search(folded, max(0, dot - 12), dot)
    return word is not None and word.group().strip(".") in _ABBREVIATIONS


def _apply(
    rule: Rule, text: str, folded: str, bounds: tuple[tuple[int, int], ...]
) -> RuleHit | None:
    """The rule's hit on the text, or None when nothing matched or every match was vetoed."""
    # Most rules match nothing in most clauses: one search over the whole text rules them out
    # before the sentence-by-sentence pass (which can only find less).
    if not ((rule._phrase_re is not None and rule._phrase_re.regex.search(folded))
            or any(regex.search(folded) for regex in rule._pattern_res)):
        return None
    kept: list[Span] = []
    support: list[Span] = []
    # Matching sentence by sentence keeps a pattern from joining words of two clauses.
    for start, end in bounds:
        triggers: list[Span] = []
        if rule._phrase_re is not None:
            for term, found_start, found_end in rule._phrase_re.finditer(folded, start, end):
                triggers.append(_span("phrase", term, text, found_start, found_end))
        for regex in rule._pattern_res:
            for found in regex.finditer(folded, start, end):
                if found.end() > found.start():
                    triggers.append(
                        _span("pattern", regex.pattern, text, found.start(), found.end())
                    )
        if not triggers:
            continue
        if rule._exclude_re is not None and rule._exclude_re.regex.search(folded, start, end):
            continue
        if rule._require_re is not None:
            required = rule._require_re.finditer(folded, start, end)
            if not required:
                continue
            support.extend(_span("require", term, text, s, e) for term, s, e in required)
        kept.extend(triggers)
    if not kept:
        return None
    unique = {(span.start, span.end, span.kind): span for span in [*kept, *support]}
    spans = tuple(unique[key] for key in sorted(unique))
    return RuleHit(rule_id=rule.id, strength=_strength(rule, kept, bool(support)), spans=spans)


def _span(kind: SpanKind, term: str, text: str, start: int, end: int) -> Span:
    """A span over the caller's text (the folded text has the same offsets)."""
    return Span(kind=kind, term=term, text=text[start:end], start=start, end=end)


def _strength(rule: Rule, kept: list[Span], corroborated: bool) -> float:
    """How much one rule's hit counts: its weight, scaled by specificity and corroboration."""
    # A four-word match is about as specific as wording gets; one word is weak on its own.
    longest = max(len(_WORDS.findall(span.text)) for span in kept)
    specificity = 0.7 + 0.3 * min(1.0, (longest - 1) / 3)
    # A regex or phrase confirmed by a required term in the same sentence is fully trusted.
    corroboration = 1.0 if corroborated else 0.9
    return round(rule.weight * specificity * corroboration, 3)


# What the Document aggregate records for a clause: one dict per category, most confident first.
ClauseCategories = list[dict[str, Any]]


def clause_classifier(taxonomy: Taxonomy) -> Callable[[str], ClauseCategories]:
    """A function giving a clause's categories as plain dicts, the shape stored in events.

    Each dict holds id, name, severity, confidence and the ids of the rules that fired (how
    the clause was classified); lists, not tuples, so a stored event compares equal to a
    fresh classification.
    """

    def categories(text: str) -> ClauseCategories:
        return [
            {
                "id": match.category_id,
                "name": match.name,
                "severity": match.severity,
                "confidence": match.confidence,
                "rules": [hit.rule_id for hit in match.evidence],
            }
            for match in classify(taxonomy, text)
        ]

    return categories


def taxonomy_version(taxonomy: Taxonomy) -> str:
    """A short fingerprint of what the taxonomy decides: equal taxonomies, equal versions."""
    canonical = [
        {
            "id": c.id, "name": c.name, "severity": c.severity,
            "regulations": list(c.regulations),
            "rules": [
                {"id": r.id, "phrases": list(r.phrases), "patterns": list(r.patterns),
                 "require": list(r.require), "exclude": list(r.exclude), "weight": r.weight}
                for r in c.rules
            ],
        }
        for c in taxonomy.categories
    ]
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
    return f"tx-{digest[:12]}"
