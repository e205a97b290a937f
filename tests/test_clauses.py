"""Clause alignment: which clause of the old version each block of the new one is."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from domain.clauses import ADDED, MODIFIED, MOVED, REMOVED, Alignment, Clause, align
from domain.diff import apply_patch, similarity, text_diff
from domain.extract import Block

TOP = ("Privacy Policy",)
KEEP = ("Privacy Policy", "Data Retention")
OLD_BLOCKS = (
    Block(text="Privacy Policy", kind="heading"),
    Block(text="We collect your name and email address when you create an account.",
          section=TOP),
    Block(text="We share your information with advertisers to show you relevant ads.",
          section=TOP),
    Block(text="You can delete your account at any time from the settings page.", section=TOP),
    Block(text="Data Retention", section=TOP, kind="heading"),
    Block(text="We keep your data for as long as your account is open and 30 days after.",
          section=KEEP),
)
OLD = tuple(Clause(id=f"c{i}", text=b.text, section=b.section, kind=b.kind)
            for i, b in enumerate(OLD_BLOCKS))


def run(new: Sequence[Block], old: Sequence[Clause] = OLD) -> Alignment:
    return align(old, new, new_id=lambda j: f"new{j}")


def ids(result: Alignment) -> list[str]:
    return [c.id for c in result.clauses]


def test_an_unchanged_version_has_no_edits_and_keeps_every_id() -> None:
    result = run(OLD_BLOCKS)
    assert result.edits == ()
    assert ids(result) == ["c0", "c1", "c2", "c3", "c4", "c5"]


def test_a_reworded_clause_is_modified_with_before_after_and_a_patch() -> None:
    new = list(OLD_BLOCKS)
    new[2] = Block(text="We share your information with advertisers and measurement partners "
                        "to show you relevant ads.", section=TOP)
    result = run(new)
    [edit] = result.edits
    assert (edit.kind, edit.clause_id, edit.section) == (MODIFIED, "c2", TOP)
    assert edit.before == OLD_BLOCKS[2].text and edit.after == new[2].text
    assert apply_patch(edit.before, edit.patch) == edit.after
    assert 0.5 <= edit.similarity < 1
    assert ids(result) == ["c0", "c1", "c2", "c3", "c4", "c5"]


def test_an_added_clause_gets_a_new_id_where_it_stands() -> None:
    new = list(OLD_BLOCKS)
    new.insert(3, Block(text="We use your precise location to personalise content.",
                        section=TOP))
    result = run(new)
    [edit] = result.edits
    assert (edit.kind, edit.clause_id, edit.before, edit.position) == (ADDED, "new3", None, 3)
    assert edit.after == new[3].text
    assert ids(result) == ["c0", "c1", "c2", "new3", "c3", "c4", "c5"]


def test_a_removed_clause_is_reported_where_it_stood() -> None:
    new = [b for i, b in enumerate(OLD_BLOCKS) if i != 2]
    result = run(new)
    [edit] = result.edits
    assert (edit.kind, edit.clause_id, edit.after) == (REMOVED, "c2", None)
    assert edit.before == OLD_BLOCKS[2].text
    assert edit.position == 2  # just after its kept predecessor, c1
    assert "c2" not in ids(result)


def test_a_moved_clause_keeps_its_id_and_is_reported_once() -> None:
    new = [OLD_BLOCKS[i] for i in (0, 3, 1, 2, 4, 5)]
    result = run(new)
    [edit] = result.edits
    assert edit.kind == MOVED and edit.clause_id == "c3"
    assert edit.before == edit.after == OLD_BLOCKS[3].text
    assert ids(result) == ["c0", "c3", "c1", "c2", "c4", "c5"]


def test_a_renamed_heading_is_one_edit_and_its_clauses_follow_it() -> None:
    renamed = ("Privacy Policy", "Data Retention Periods")
    new = list(OLD_BLOCKS)
    new[4] = Block(text="Data Retention Periods", section=TOP, kind="heading")
    new[5] = Block(text=OLD_BLOCKS[5].text, section=renamed)
    result = run(new)
    [edit] = result.edits
    assert (edit.kind, edit.clause_id, edit.before, edit.after) == (
        MODIFIED, "c4", "Data Retention", "Data Retention Periods")
    # The clause under it is the same words: same id, new section path, no edit of its own.
    assert result.clauses[5].id == "c5" and result.clauses[5].section == renamed


def test_a_heading_renamed_beyond_recognition_is_removed_and_added() -> None:
    new = list(OLD_BLOCKS)
    new[4] = Block(text="How Long We Keep It", section=TOP, kind="heading")
    result = run(new)
    assert sorted((e.kind, e.clause_id) for e in result.edits) == [(ADDED, "new4"),
                                                                   (REMOVED, "c4")]


def test_a_paragraph_split_in_two_is_one_modified_and_one_added() -> None:
    new = list(OLD_BLOCKS)
    new[1:2] = [Block(text="We collect your name and email address.", section=TOP),
                Block(text="We collect them when you create an account.", section=TOP)]
    result = run(new)
    assert [(e.kind, e.clause_id) for e in result.edits] == [(MODIFIED, "c1"), (ADDED, "new2")]
    modified = result.edits[0]
    assert apply_patch(modified.before or "", modified.patch) == modified.after
    assert ids(result) == ["c0", "c1", "new2", "c2", "c3", "c4", "c5"]


def test_a_rewrite_below_the_threshold_is_a_different_clause() -> None:
    new = list(OLD_BLOCKS)
    # Similarity 0.38: below the default threshold of 0.5.
    new[3] = Block(text="You can close your account whenever you like by writing to us.",
                   section=TOP)
    assert sorted(e.kind for e in run(new).edits) == [ADDED, REMOVED]
    # Under a lower threshold the same edit is a modification of the same clause.
    loose = align(OLD, new, new_id=lambda j: f"new{j}", threshold=0.3)
    assert [(e.kind, e.clause_id) for e in loose.edits] == [(MODIFIED, "c3")]


def test_the_same_inputs_give_the_same_result_every_time() -> None:
    new = [OLD_BLOCKS[i] for i in (0, 2, 1, 4, 5)] + [
        Block(text="We share your information with advertisers.", section=TOP),
        Block(text="A brand new clause about artificial intelligence.", section=KEEP)]
    first = run(new)
    second = run(list(new), old=list(OLD))
    assert first == second
    assert [(e.kind, e.clause_id, e.position) for e in first.edits] == \
        [(e.kind, e.clause_id, e.position) for e in second.edits]


def test_duplicate_texts_are_paired_in_order() -> None:
    old = [Clause(id="a", text="Yes."), Clause(id="b", text="Intro"), Clause(id="c", text="Yes.")]
    result = align(old, [Block(text="Intro"), Block(text="Yes."), Block(text="Yes.")],
                   new_id=lambda j: f"n{j}")
    assert sorted(c.id for c in result.clauses) == ["a", "b", "c"]
    assert [e.kind for e in result.edits] == [MOVED]


def test_an_empty_old_version_makes_everything_added() -> None:
    result = run(OLD_BLOCKS, old=())
    assert [e.kind for e in result.edits] == [ADDED] * len(OLD_BLOCKS)
    assert ids(result) == [f"new{j}" for j in range(len(OLD_BLOCKS))]


@pytest.mark.parametrize(("before", "after"), [
    ("We keep data for 30 days.", "We keep data for 90 days."),
    ("", "Everything is new."),
    ("Gone entirely.", ""),
    ("Caf\u00e9 \u2014 \u201cquoted\u201d", "Caf\u00e9 \u2014 \u201cre-quoted\u201d text"),
])
def test_patches_apply_and_similarity_is_bounded(before: str, after: str) -> None:
    diff = text_diff(before, after)
    assert apply_patch(before, diff.patch) == after
    assert 0.0 <= diff.similarity <= 1.0
    assert similarity(before, before) == 1.0


def test_a_patch_for_other_text_does_not_apply() -> None:
    patch = text_diff("We keep data for 30 days.", "We keep data for 90 days.").patch
    with pytest.raises(ValueError, match="does not apply"):
        apply_patch("Something else entirely, nothing alike.", patch)


def _pairs_counted_pair_by_pair(old: Sequence[Clause], new: Sequence[Block],
                                threshold: float) -> dict[int, int]:
    """_pair_by_similarity as it was before the word postings: every pair's overlap counted
    (kept as the reference the faster count must agree with)."""
    from collections import Counter

    from domain.clauses import _CANDIDATES, _WORD, _gaps

    old_gap, new_gap = _gaps(len(old), []), _gaps(len(new), [])
    bags = [Counter(_WORD.findall(b.text.casefold())) for b in new]
    scored = []
    for i, clause in enumerate(old):
        words = Counter(_WORD.findall(clause.text.casefold()))
        overlaps = []
        for j, other in enumerate(bags):
            total = sum(words.values()) + sum(other.values())
            shared = sum(min(n, other[w]) for w, n in words.items())
            overlap = 2 * shared / total if total else 1.0
            if overlap >= threshold * 0.8:
                overlaps.append((overlap, -abs(old_gap[i] - new_gap[j]), -j, j))
        for _, _, _, j in sorted(overlaps, reverse=True)[:_CANDIDATES]:
            score = similarity(clause.text, new[j].text)
            if score >= threshold:
                bonus = 0.05 + (0.02 if clause.section == new[j].section else 0.0)
                scored.append((score + bonus, i, j))
    result: dict[int, int] = {}
    for _, i, j in sorted(scored, key=lambda t: (-t[0], t[1], t[2])):
        if j not in result and i not in result.values():
            result[j] = i
    return result


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9])
def test_candidates_counted_by_shared_words_are_those_of_every_pair(threshold: float) -> None:
    # Empty texts, punctuation only, repeated and case-folded words: where counting through
    # the words two blocks share could part from counting every pair.
    import random

    from domain.clauses import _pair_by_similarity

    rng = random.Random(5)
    words = ["We", "we", "share", "data", "data", "with", "ads", "partners", "!", "", "—"]
    for _ in range(300):
        def text() -> str:
            return " ".join(rng.choice(words) for _ in range(rng.randint(0, 9))).strip()
        old = [Clause(id=f"c{i}", text=text(), section=(rng.choice("ab"),))
               for i in range(rng.randint(1, 9))]
        new = [Block(text=text(), section=(rng.choice("ab"),)) for _ in range(rng.randint(1, 9))]
        got = _pair_by_similarity(old, new, list(range(len(old))), list(range(len(new))),
                                  set(), {}, threshold)
        assert got == _pairs_counted_pair_by_pair(old, new, threshold)
