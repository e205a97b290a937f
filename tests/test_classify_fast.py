"""The fast classifier gives exactly what the plain one gives, and its memo cannot be corrupted.

`classify` skips the rules a text cannot match (prefilters on words and literals read out of
the taxonomy) and `clause_classifier` remembers recent texts; `reference_classify` runs every
regex of every rule. They must agree on every clause of the corpus and on made-up texts.

Contains data from Open Terms Archive (opentermsarchive.org), ODC-By 1.0.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from harness import TRIMMED_CORPUS, declaration, replay_versions, text_versions

from config.taxonomy import load_taxonomy
from domain.classify import (
    _CASE_ODD,
    Category,
    Rule,
    Taxonomy,
    _pattern_needs,
    classify,
    clause_classifier,
    fold,
    reference_classify,
)
from domain.extract import extract


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


def corpus_clauses(corpus: Path) -> list[str]:
    """Every distinct block text of every version of every document of the corpus."""
    texts: list[str] = []
    for folder in sorted((corpus / "replay").iterdir()):
        if not folder.is_dir():
            continue
        decl = declaration(folder)
        for version in replay_versions(folder):
            extraction = extract(version.body, version.content_type, select=decl.get("select"),
                                 remove=decl.get("remove"))
            texts.extend(block.text for block in extraction.blocks)
    for folder in sorted((corpus / "text").iterdir()):
        if folder.is_dir():
            for version in text_versions(folder):
                texts.extend(b.text for b in extract(version.body, version.content_type).blocks)
    return list(dict.fromkeys(texts))


def as_dicts(matches: tuple) -> list[dict]:
    return [{"id": m.category_id, "name": m.name, "severity": m.severity,
             "confidence": m.confidence, "rules": [hit.rule_id for hit in m.evidence]}
            for m in matches]


def test_every_corpus_clause_classifies_as_the_reference_does(taxonomy: Taxonomy) -> None:
    clauses = corpus_clauses(TRIMMED_CORPUS)
    assert len(clauses) > 1000
    categories = clause_classifier(taxonomy)
    matched = 0
    for text in clauses:
        expected = reference_classify(taxonomy, text)
        # The whole result: categories, confidences, rule hits and every span with its offsets.
        assert classify(taxonomy, text) == expected, text
        assert categories(text) == as_dicts(expected), text
        matched += bool(expected)
    # The corpus exercises the classifier: a good share of clauses match something.
    assert matched > 300


def _vocabulary(taxonomy: Taxonomy) -> list[str]:
    """Words and bits of wording from the taxonomy, in and around what its rules look for."""
    words: set[str] = set()
    for category in taxonomy.categories:
        for rule in category.rules:
            for term in (*rule.phrases, *rule.require, *rule.exclude):
                words.update(term.rstrip("*").split())
                words.add(term.rstrip("*"))
            for pattern in rule.patterns:
                words.update(re.findall(r"[a-z][a-z' -]*[a-z]", pattern))
    return sorted(words)


def test_made_up_texts_classify_as_the_reference_does(taxonomy: Taxonomy) -> None:
    rng = random.Random(20240611)
    vocabulary = _vocabulary(taxonomy)
    glue = ["we", "may", "your", "the", "for", "30 days", "data", "information", "until",
            "after", "ſell", "İnformation", "Sell", "ıd", "and", "or", "not", "u.s.", "e.g.",
            "\u2019s", "\u2014", "\n", " | ", ". ", "! ", " * ", "•", "<br/>", "(", ")", '"']
    for _ in range(3000):
        parts = [rng.choice(vocabulary if rng.random() < 0.6 else glue)
                 for _ in range(rng.randint(1, 30))]
        # Words glued to their neighbours, suffixes, capitals: the edges of word boundaries.
        text = "".join(p + rng.choice([" ", " ", " ", "", "s ", "ing ", ", ", "-"])
                       for p in parts)
        if rng.random() < 0.3:
            text = text.upper() if rng.random() < 0.5 else text.title()
        assert classify(taxonomy, text) == reference_classify(taxonomy, text), text


def test_text_with_a_letter_that_matches_ascii_only_case_insensitively(
    taxonomy: Taxonomy,
) -> None:
    # ſ (long s) matches s in a case-insensitive pattern: the prefilter must not rule it out.
    text = "We do not ſell your personal information to data brokers."
    assert fold(text) != fold(text).encode("ascii", "ignore").decode()
    assert classify(taxonomy, text) == reference_classify(taxonomy, text)
    pattern_only = Taxonomy(categories=(Category(
        id="x", name="X", description="x", severity="low", regulations=(),
        rules=(Rule(id="x/0", patterns=(r"\bsell\b",)),)),))
    assert classify(pattern_only, "we ſell it") == reference_classify(pattern_only, "we ſell it")
    assert classify(pattern_only, "we ſell it") != ()
    assert classify(pattern_only, "we KEEP it") == ()


def test_case_odd_lists_every_letter_matching_ascii_case_insensitively() -> None:
    everything = "".join(chr(x) for x in range(128, 0x110000) if not 0xD800 <= x < 0xE000)
    odd = re.compile(r"[\x00-\x7f]", re.IGNORECASE).findall(everything)
    assert odd  # İ ı ſ and the Kelvin sign, in Python 3.11
    # Those that folding (lower-casing) leaves non-ASCII must skip the literal prefilter.
    assert all(_CASE_ODD.search(fold(char)) for char in odd if not fold(char).isascii())


@pytest.mark.parametrize(
    ("pattern", "texts"),
    [
        (r"(?i:Data) brokers?", ["data broker", "DATA brokers", "no broker"]),
        (r"(?-i:data) brokers?", ["data broker", "Data broker"]),
        (r"(?a)\bna\w+ve\b", ["naïve person", "native person"]),
        (r"(?x) sell \s+ data", ["sell  data", "selldata"]),
        (r"(?<=we )sell", ["we sell", "you sell"]),
        (r"(?=sell)\w+ data", ["selling data", "buying data"]),
        (r"(\w+) \1 data", ["our our data", "our data"]),
        (r"\b(?:a|b){2,9}x\b", ["abx", "ababababx", "x"]),
        (r"colou?r(?:ed)? (?:red|blue)+", ["colored redblue", "color red", "colour green"]),
        (r"[^a-z]ai\b", [" ai", "-ai tools", "mail"]),
        (r"licen[cs]es?\b|\bpermits?\b", ["licences", "permit", "licensed"]),
        (r"^terms\b|\bend$", ["terms of use", "the end", "ending terms"]),
        (r"\d+ days", ["30 days", "thirty days"]),
        (r"k\w*", ["Kelvin", "\u212a data"]),
    ],
)
def test_odd_patterns_classify_as_the_reference_does(pattern: str, texts: list[str]) -> None:
    taxonomy = Taxonomy(categories=(Category(
        id="x", name="X", description="x", severity="low", regulations=(),
        rules=(Rule(id="x/0", patterns=(pattern,)),)),))
    for text in texts:
        assert classify(taxonomy, text) == reference_classify(taxonomy, text), (pattern, text)
    # Whatever the reader makes of a pattern, each of its needs is met by every match.
    for needs_text in texts:
        if re.search(pattern, fold(needs_text), re.IGNORECASE) and not _CASE_ODD.search(
                fold(needs_text)):
            folded = fold(needs_text)
            words = set(re.findall(r"\w+", folded))
            assert all(need.met(words, folded) for need in _pattern_needs(pattern)), needs_text


def test_the_memo_returns_new_lists_that_callers_may_change(taxonomy: Taxonomy) -> None:
    categories = clause_classifier(taxonomy, memo_size=2)
    text = "We do not sell your personal information."
    first = categories(text)
    assert first and first[0]["id"] == "data-sale-sharing"
    first[0]["rules"].append("mine")
    first[0]["confidence"] = 0.0
    first.clear()
    second = categories(text)
    assert second == as_dicts(reference_classify(taxonomy, text))
    assert second is not categories(text)
    # Past its size it forgets the oldest text, and still answers right.
    for other in ("We use cookies.", "Binding arbitration applies.", text):
        assert categories(other) == as_dicts(reference_classify(taxonomy, other))


def test_without_a_memo_the_answers_are_the_same(taxonomy: Taxonomy) -> None:
    plain = clause_classifier(taxonomy, memo_size=0)
    remembering = clause_classifier(taxonomy)
    for text in ("We retain information for as long as necessary.", "", "Welcome."):
        assert plain(text) == remembering(text) == remembering(text)
