"""The word diff: the compiled engine gives what the pure-Python one gives.

Contains data from Open Terms Archive (opentermsarchive.org), ODC-By 1.0 (the trimmed corpus).
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from domain import diff
from domain.clauses import Clause, align
from domain.diff import _word_diff, similarity, text_diff
from domain.extract import Block, extract_markdown

CORPUS = Path(__file__).parent / "data" / "corpus" / "text"


def _versions(document: Path) -> list[tuple[Block, ...]]:
    return [extract_markdown(path.read_text("utf-8")).blocks
            for path in sorted(document.glob("*.md"))]


def _corpus_pairs() -> list[tuple[str, str]]:
    """What aligning each version with the next diffs, and random pairs of their clauses
    (unlike texts: the diffs with the most edits)."""
    asked: set[tuple[str, str]] = set()
    texts: set[str] = set()
    real = diff.word_diff

    def recording(before: str, after: str) -> tuple[tuple[int, str], ...]:
        asked.add((before, after))
        return real(before, after)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(diff, "word_diff", recording)
        for document in sorted(CORPUS.iterdir()):
            versions = _versions(document)
            for old, new in itertools.pairwise(versions):
                clauses = [Clause(id=f"c{i}", text=b.text, section=b.section, kind=b.kind)
                           for i, b in enumerate(old)]
                align(clauses, new, new_id=lambda j: f"n{j}")
                texts.update(b.text for b in new)
    pool = sorted(texts)
    rng = random.Random(5)
    return sorted(asked) + [(rng.choice(pool), rng.choice(pool)) for _ in range(300)]


def test_alignment_asks_for_diffs_of_the_corpus() -> None:
    # The comparison below is only worth what it compares.
    pairs = _corpus_pairs()
    assert len(pairs) > 400
    assert sum(1 for before, after in pairs if before != after) > 400


@pytest.mark.skipif(diff._compiled_diff is None, reason="fast_diff_match_patch not installed")
def test_the_compiled_engine_diffs_as_the_python_one_on_the_corpus() -> None:
    differing = [(before[:60], after[:60]) for before, after in _corpus_pairs()
                 if _word_diff(before, after) != _word_diff(before, after, compiled=False)]
    assert differing == []


@pytest.mark.skipif(diff._compiled_diff is None, reason="fast_diff_match_patch not installed")
@pytest.mark.parametrize(("before", "after"), [
    ("", ""), ("", "We keep data."), ("We keep data.", ""),
    ("We keep data for 30 days.", "We keep data for 90 days."),
    ("Data  is kept.", "Data is kept."),  # whitespace runs are tokens too
    ("We 🙂 your data.", "We 😀 your data."),  # beyond the Basic Multilingual Plane
    ("Cafe\u0301 data", "Café data"),  # a combining accent against a composed letter
    ("a " * 400, "a " * 399 + "b "),  # one word among many alike
    ("x" * 5000, "x" * 4999 + "y"),  # one token of 5,000 characters
])
def test_the_compiled_engine_diffs_as_the_python_one_on_edge_cases(before: str,
                                                                  after: str) -> None:
    assert _word_diff(before, after) == _word_diff(before, after, compiled=False)


def test_the_python_engine_alone_still_diffs(monkeypatch: pytest.MonkeyPatch) -> None:
    # Where the compiled engine has no wheel, the pure-Python one does all of it.
    monkeypatch.setattr(diff, "_compiled_diff", None)
    ops = _word_diff("We keep data for 30 days.", "We keep data for 90 days.")
    assert ops == ((0, "We keep data for "), (-1, "30"), (1, "90"), (0, " days."))
    assert "".join(data for op, data in ops if op <= 0) == "We keep data for 30 days."


def test_similarity_and_patches_come_from_the_same_diff() -> None:
    before, after = "We keep data for 30 days.", "We keep data for 90 days."
    made = text_diff(before, after)
    assert made.similarity == round(similarity(before, after), 4)
    assert made.ops == diff.word_diff(before, after)
