"""Tag clauses with the taxonomy categories (AI training, arbitration, data sale…) they touch."""

from __future__ import annotations

import functools
import hashlib
import json
import re
import re._parser as _sre_parse  # the parser `re` itself uses: to read literals out of patterns
from collections.abc import Callable, Iterable
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
# Characters that a case-insensitive pattern lets stand for an ASCII letter although they are
# not one after folding (İ and ı for i, ſ for s, the Kelvin sign for k): a text holding one
# skips the literal prefilter of patterns (tests/test_classify_fast.py checks the list).
_CASE_ODD = re.compile("[\u0130\u0131\u017f\u212a]")


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


@dataclass(frozen=True, slots=True)
class _Need:
    """One of these words of the text, or one of these literals anywhere in it, is needed."""

    words: frozenset[str]
    literals: tuple[str, ...]

    def met(self, words: set[str], folded: str) -> bool:
        """Whether the text (its words, its folded form) meets the need."""
        if not self.words.isdisjoint(words):
            return True
        for literal in self.literals:
            if literal in folded:
                return True
        return False


@dataclass(frozen=True, slots=True)
class _Gate:
    """A necessary condition for a rule to match a folded text, cheap to test.

    A phrase can only match a text holding each whole word of it as a word (a term's words are
    matched between word boundaries; a trailing * leaves the last word's ending open), so
    `phrases` holds each phrase's words and `prefixes` what a phrase of one open-ended word
    needs. A pattern can only match a text meeting each of its `patterns` needs (literals read
    out of the regex that every match spells). `keys` and `key_literals` hold one word or
    literal of every phrase and of the first need of every pattern: a text with none of them
    cannot match. A closed gate means the rule cannot fire; an open one means nothing: the
    regexes decide. `always`: some pattern has no need we could read; the gate is always open.
    """

    keys: frozenset[str]
    key_literals: tuple[str, ...]
    phrases: tuple[frozenset[str], ...]
    prefixes: tuple[str, ...]
    patterns: tuple[tuple[_Need, ...], ...]
    always: bool

    def open(self, words: set[str], folded: str, case_odd: bool) -> bool:
        """Whether the rule may match a text with these words (False: it cannot)."""
        if self.always:
            return True
        for needed in self.phrases:
            if needed <= words:
                return True
        for prefix in self.prefixes:
            if prefix in folded:
                return True
        if self.patterns and case_odd:
            return True
        for needs in self.patterns:
            for need in needs:
                if not need.met(words, folded):
                    break
            else:
                return True
        return False


def _gate(phrases: Iterable[str], patterns: Iterable[str]) -> _Gate:
    """The prefilter for a rule's phrases and patterns."""
    keys: set[str] = set()
    key_literals: set[str] = set()
    needed: set[frozenset[str]] = set()
    prefixes: set[str] = set()
    always = False
    for term in phrases:
        term_words = fold(term.rstrip("*")).split()
        pieces = [piece for word in term_words for piece in _WORDS.findall(word)]
        open_end = term.endswith("*") and bool(re.search(r"\w$", term_words[-1]))
        whole = pieces[:-1] if open_end else pieces
        if whole:
            keys.add(max(whole, key=len))
            needed.add(frozenset(whole))
        else:
            # One open-ended word (or no word character at all): its literal start is needed.
            prefixes.add(pieces[-1] if pieces else term_words[0])
    key_literals |= prefixes
    needs_per_pattern = []
    for pattern in patterns:
        try:
            needs = _pattern_needs(pattern)
        except Exception:  # noqa: BLE001 - a form the reader does not know: no prefilter
            needs = ()
        if not needs:
            always = True
        else:
            keys |= needs[0].words
            key_literals |= set(needs[0].literals)
        needs_per_pattern.append(needs)
    return _Gate(keys=frozenset(keys), key_literals=tuple(sorted(key_literals)),
                 phrases=tuple(sorted(needed, key=sorted)), prefixes=tuple(sorted(prefixes)),
                 patterns=tuple(needs_per_pattern), always=always)


# Reading literals out of a pattern: the strings a part of the regex can match, \b written as
# _BOUNDARY (a character no pattern literal is read as), at most _MAX_STRINGS of them.
_BOUNDARY = "\0"
_MAX_STRINGS = 64


def _pattern_needs(pattern: str) -> tuple[_Need, ...]:
    """What a text needs for the case-insensitive pattern to match it, most selective first."""
    parsed = _sre_parse.parse(pattern, re.IGNORECASE)
    # Word boundaries are Unicode ones (those of _WORDS) unless the pattern says otherwise.
    unicode_words = not parsed.state.flags & (re.ASCII | re.LOCALE)
    needs = []
    for strings in _needed(parsed, unicode_words):
        words: set[str] = set()
        literals: set[str] = set()
        for string in strings:
            # A run of word characters with a boundary or a non-word character on each side is
            # a whole word of the text; else the string itself must be somewhere in the text.
            whole = [found.group() for found in _WORDS.finditer(string)
                     if found.start() > 0 and found.end() < len(string)]
            literal = string.replace(_BOUNDARY, "")
            # A short word ("to" of "access to") is in most texts: the literal says more.
            if whole and 2 * len(word := max(whole, key=len)) >= min(len(literal), 8):
                words.add(word)
            elif literal:
                literals.add(literal)
            else:
                break
        else:
            needs.append(_Need(words=frozenset(words), literals=tuple(sorted(literals))))
    return tuple(needs)


def _strings(items: Iterable[tuple[object, object]], unicode_words: bool) -> set[str] | None:
    """Every string a regex sequence can match, when they are few and made of ASCII literals."""
    found = {""}
    for op, arg in items:
        options = _item_strings(op, arg, unicode_words)
        if options is None:
            return None
        found = {head + tail for head in found for tail in options}
        if len(found) > _MAX_STRINGS:
            return None
    return found


def _item_strings(op: object, arg: Any, unicode_words: bool) -> set[str] | None:
    """The strings one regex item can match (None: too many, or not only literals)."""
    c = _sre_parse
    if op is c.LITERAL:
        char = chr(arg)
        # Case-insensitive, over lower-cased text: the lower-case letter is what occurs (the
        # non-ASCII letters that also match an ASCII one are _CASE_ODD's business).
        return {char.lower()} if char.isascii() and char != _BOUNDARY else None
    if op is c.AT:
        # A word boundary spells nothing but marks where a word ends; other anchors, nothing.
        return {_BOUNDARY} if arg is c.AT_BOUNDARY and unicode_words else {""}
    if op is c.SUBPATTERN:
        _group, add_flags, del_flags, inner = arg
        return None if add_flags or del_flags else _strings(inner, unicode_words)
    if op is c.BRANCH:
        found: set[str] = set()
        for alternative in arg[1]:
            options = _strings(alternative, unicode_words)
            if options is None:
                return None
            found |= options
        return found if len(found) <= _MAX_STRINGS else None
    if op is c.IN:
        found = set()
        for inner_op, inner_arg in arg:
            if inner_op is not c.LITERAL or not chr(inner_arg).isascii():
                return None
            found.add(chr(inner_arg).lower())
        return found
    if op in (c.MAX_REPEAT, c.MIN_REPEAT):
        low, high, inner = arg
        once = _strings(inner, unicode_words) if high <= 3 else None
        if once is None:
            return None
        found, current = set(), {""}
        for count in range(high + 1):
            if count >= low:
                found |= current
            current = {head + tail for head in current for tail in once}
            if len(found) > _MAX_STRINGS:
                return None
        return found
    return None


def _needed(items: Iterable[tuple[object, Any]], unicode_words: bool) -> list[tuple[str, ...]]:
    """String sets a match of the regex sequence spells one of (each set: one of its strings).

    Consecutive items with few possible strings spell a run of text every match contains;
    groups and repeats that must occur add their own sets. Most selective set first.
    """
    c = _sre_parse
    sets: list[set[str]] = []
    run = {""}

    def close() -> None:
        if all(string.strip(_BOUNDARY) for string in run):
            sets.append(run)

    for op, arg in items:
        options = _item_strings(op, arg, unicode_words)
        if options is not None:
            joined = {head + tail for head in run for tail in options}
            if len(joined) <= _MAX_STRINGS:
                run = joined
            else:
                close()
                run = options
            continue
        close()
        run = {""}
        if op is c.SUBPATTERN and not arg[1] and not arg[2]:
            sets.extend(set(found) for found in _needed(arg[3], unicode_words))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT) and arg[0] >= 1:
            sets.extend(set(found) for found in _needed(arg[2], unicode_words))
        elif op is c.BRANCH:
            # Each alternative spells one string of its best set: together, one set.
            union: set[str] = set()
            for alternative in arg[1]:
                best = _needed(alternative, unicode_words)
                if not best:
                    break
                union |= set(best[0])
            else:
                if len(union) <= _MAX_STRINGS:
                    sets.append(union)
    close()
    reduced = []
    for found in sets:
        # A string holding another of the set adds nothing: the shorter one is there anyway.
        reduced.append(tuple(sorted(s for s in found if not any(o != s and o in s for o in found))))
    # Longer strings are rarer: the set whose shortest string is longest goes first.
    unique = dict.fromkeys(reduced)
    return sorted(unique, key=lambda found: (-min(map(len, found)), len(found), found))


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One way a category shows up: phrases or patterns, gated by require and exclude terms."""

    id: str
    phrases: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    require: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    weight: float = 0.6
    _pattern_res: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    # Made by _prepare, at the taxonomy's first classification (see Taxonomy._ready).
    _phrase_re: _Terms | None = field(init=False, default=None, repr=False, compare=False)
    _require_re: _Terms | None = field(init=False, default=None, repr=False, compare=False)
    _exclude_re: _Terms | None = field(init=False, default=None, repr=False, compare=False)
    # The prefilter (see _Gate): words and literals without which nothing can match.
    _gate: _Gate | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.phrases and not self.patterns:
            raise ValueError(f"rule {self.id!r} has neither phrases nor patterns")
        if not 0.0 < self.weight <= 1.0:
            raise ValueError(f"rule {self.id!r} weight {self.weight} is outside (0, 1]")
        # Compiled here, so that a pattern that is no regex fails where the rule is made.
        object.__setattr__(
            self,
            "_pattern_res",
            tuple(re.compile(pattern, re.IGNORECASE) for pattern in self.patterns),
        )

    def _prepare(self) -> None:
        """Compile the term alternations and the prefilter, once (idempotent: two threads
        doing it at once make the same values; the gate, set last, says it is done)."""
        if self._gate is None:
            object.__setattr__(self, "_phrase_re", _alternation(self.phrases))
            object.__setattr__(self, "_require_re", _alternation(self.require))
            object.__setattr__(self, "_exclude_re", _alternation(self.exclude))
            object.__setattr__(self, "_gate", _gate(self.phrases, self.patterns))


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
    _index: _Index | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = [category.id for category in self.categories]
        duplicates = sorted({cid for cid in ids if ids.count(cid) > 1})
        if duplicates:
            raise ValueError(f"duplicate category ids: {', '.join(duplicates)}")

    def _ready(self) -> _Index:
        """The rules compiled and indexed: at the first classification, not when the taxonomy
        is loaded (~45 ms of every `check` start, though most passes classify nothing)."""
        index = self._index
        if index is None:
            index = _Index.of(self.categories)  # prepares every rule
            object.__setattr__(self, "_index", index)
        return index

    def category(self, category_id: str) -> Category:
        """The category with this id."""
        for category in self.categories:
            if category.id == category_id:
                return category
        raise KeyError(category_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Index:
    """Every rule of a taxonomy, in order, and which rules' gates a word or literal opens.

    A rule is worth testing for a text when the text holds one of its gate's keys (words) or
    key literals, or when its gate is always open, or (patterns only) when the text holds a
    _CASE_ODD character; the others cannot match it.
    """

    rules: tuple[tuple[int, Rule], ...]  # (index of the category, rule)
    gates: tuple[_Gate, ...]  # each rule's
    by_word: dict[str, tuple[int, ...]]
    words: frozenset[str]
    by_literal: tuple[tuple[str, tuple[int, ...]], ...]
    always: frozenset[int]
    patterned: frozenset[int]

    @classmethod
    def of(cls, categories: tuple[Category, ...]) -> _Index:
        """The index of these categories' rules."""
        rules = tuple((c, rule) for c, category in enumerate(categories) for rule in category.rules)
        gates = []
        for _c, rule in rules:
            rule._prepare()
            assert rule._gate is not None
            gates.append(rule._gate)
        by_word: dict[str, list[int]] = {}
        by_literal: dict[str, list[int]] = {}
        for i, gate in enumerate(gates):
            for word in gate.keys:
                by_word.setdefault(word, []).append(i)
            for literal in gate.key_literals:
                by_literal.setdefault(literal, []).append(i)
        return cls(
            rules=rules,
            gates=tuple(gates),
            by_word={word: tuple(ids) for word, ids in by_word.items()},
            words=frozenset(by_word),
            by_literal=tuple((literal, tuple(ids)) for literal, ids in sorted(by_literal.items())),
            always=frozenset(i for i, gate in enumerate(gates) if gate.always),
            patterned=frozenset(i for i, gate in enumerate(gates) if gate.patterns),
        )

    def candidates(self, words: set[str], folded: str, case_odd: bool) -> list[int]:
        """Indexes of the rules that may match the text, in taxonomy order."""
        found = set(self.always)
        for word in self.words & words:
            found.update(self.by_word[word])
        for literal, ids in self.by_literal:
            if literal in folded:
                found.update(ids)
        if case_odd:
            found |= self.patterned
        return sorted(found)


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
    # Every rule has a cheap necessary condition (its _Gate) on the text's words and literals:
    # most rules are ruled out without running one of their regexes. The result is the one
    # reference_classify gives, which runs them all.
    words = set(_WORDS.findall(folded))
    case_odd = _CASE_ODD.search(folded) is not None
    index = taxonomy._ready()
    bounds: tuple[tuple[int, int], ...] | None = None
    hits: dict[int, list[RuleHit]] = {}
    for i in index.candidates(words, folded, case_odd):
        c, rule = index.rules[i]
        if not index.gates[i].open(words, folded, case_odd) or not _found(rule, folded):
            continue
        if bounds is None:
            bounds = _sentence_bounds(folded)
        hit = _in_sentences(rule, text, folded, bounds)
        if hit is not None:
            hits.setdefault(c, []).append(hit)
    matches = [_category_match(taxonomy.categories[c], tuple(found)) for c, found in hits.items()]
    return tuple(sorted(matches, key=lambda match: (-match.confidence, match.category_id)))


def reference_classify(taxonomy: Taxonomy, text: str) -> tuple[CategoryMatch, ...]:
    """What classify returns, computed the plain way: every regex of every rule on the text.

    Slow; kept so that tests and bench/classify_speed.py can check the prefilters change
    nothing.
    """
    taxonomy._ready()
    folded = fold(text)
    bounds = _sentence_bounds(folded)
    matches = []
    for category in taxonomy.categories:
        hits = tuple(hit for rule in category.rules if (hit := _apply(rule, text, folded, bounds)))
        if hits:
            matches.append(_category_match(category, hits))
    return tuple(sorted(matches, key=lambda match: (-match.confidence, match.category_id)))


def _category_match(category: Category, hits: tuple[RuleHit, ...]) -> CategoryMatch:
    """The category's match from the hits of its rules."""
    # Noisy-OR: each agreeing rule closes part of the remaining doubt.
    doubt = 1.0
    for hit in hits:
        doubt *= 1.0 - hit.strength
    return CategoryMatch(
        category_id=category.id,
        name=category.name,
        severity=category.severity,
        regulations=category.regulations,
        confidence=round(1.0 - doubt, 3),
        evidence=hits,
    )


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
    if not _found(rule, folded):
        return None
    return _in_sentences(rule, text, folded, bounds)


def _found(rule: Rule, folded: str) -> bool:
    """Whether a phrase or pattern of the rule matches anywhere in the folded text."""
    return bool((rule._phrase_re is not None and rule._phrase_re.regex.search(folded))
                or any(regex.search(folded) for regex in rule._pattern_res))


def _in_sentences(
    rule: Rule, text: str, folded: str, bounds: tuple[tuple[int, int], ...]
) -> RuleHit | None:
    """The rule's hit, sentence by sentence (None: no match survived its sentence's terms)."""
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


# Distinct clause texts the function clause_classifier returns remembers: identical clauses
# recur across captures, documents and locales. A few thousand clauses of a few hundred
# characters: a few megabytes.
CLAUSE_MEMO_SIZE = 4096


def clause_classifier(
    taxonomy: Taxonomy, *, memo_size: int = CLAUSE_MEMO_SIZE
) -> Callable[[str], ClauseCategories]:
    """A function giving a clause's categories as plain dicts, the shape stored in events.

    Each dict holds id, name, severity, confidence and the ids of the rules that fired (how
    the clause was classified); lists, not tuples, so a stored event compares equal to a
    fresh classification. The function remembers the last `memo_size` distinct texts it
    classified (0: none); each call returns new lists and dicts, so a caller may change them.
    """

    def frozen(text: str) -> tuple[tuple[str, str, str, float, tuple[str, ...]], ...]:
        return tuple(
            (match.category_id, match.name, match.severity, match.confidence,
             tuple(hit.rule_id for hit in match.evidence))
            for match in classify(taxonomy, text)
        )

    remembered = functools.lru_cache(maxsize=memo_size)(frozen) if memo_size > 0 else frozen

    def categories(text: str) -> ClauseCategories:
        return [
            {"id": cid, "name": name, "severity": severity, "confidence": confidence,
             "rules": list(rules)}
            for cid, name, severity, confidence, rules in remembered(text)
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
