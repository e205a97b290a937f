"""Clause alignment: give each block of a new version the identity of its clause in the old one."""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from domain.blocks import Block
from domain.diff import similarity, text_diff

ADDED, REMOVED, MODIFIED, MOVED = "added", "removed", "modified", "moved"
CHANGE_KINDS = (ADDED, REMOVED, MODIFIED, MOVED)

# Below this similarity an edited block is a different clause: one removed, one added.
DEFAULT_THRESHOLD = 0.5
# Fuzzy matching compares at most this many candidates per removed block (best token overlap).
_CANDIDATES = 8
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Clause:
    """A clause of the current version of a document, with its stable id."""

    id: str
    text: str
    section: tuple[str, ...] = ()
    kind: str = "paragraph"

    def __reduce__(self) -> tuple[Any, ...]:
        # Clause lists cross to and from the worker processes (see Extraction.__reduce__).
        return _clause, (self.id, self.text, self.section, self.kind)


def _clause(id: str, text: str, section: tuple[str, ...], kind: str) -> Clause:
    clause = object.__new__(Clause)
    object.__setattr__(clause, "id", id)  # frozen: as the dataclass's __init__ sets it
    object.__setattr__(clause, "text", text)
    object.__setattr__(clause, "section", section)
    object.__setattr__(clause, "kind", kind)
    return clause


@dataclass(frozen=True, slots=True, kw_only=True)
class ClauseEdit:
    """One clause-level change between two versions."""

    clause_id: str
    kind: str
    section: tuple[str, ...]
    before: str | None
    after: str | None
    patch: str = ""
    similarity: float = 0.0
    position: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Alignment:
    """The new version's clauses (ids carried over or new) and the edits that lead to it."""

    clauses: tuple[Clause, ...]
    edits: tuple[ClauseEdit, ...]


def align(
    old: Sequence[Clause],
    new: Sequence[Block],
    *,
    new_id: Callable[[int], str],
    threshold: float = DEFAULT_THRESHOLD,
) -> Alignment:
    """Align two versions: unchanged in order, then moved verbatim, then edited by similarity.

    Deterministic: the same inputs always give the same clauses, ids and edits.
    """
    old_texts = [c.text for c in old]
    new_texts = [b.text for b in new]
    pairs: dict[int, int] = {}  # new index -> old index

    # 1. Unchanged clauses: the longest common subsequence of identical texts.
    matcher = SequenceMatcher(None, old_texts, new_texts, autojunk=False)
    for run in matcher.get_matching_blocks():
        for k in range(run.size):
            pairs[run.b + k] = run.a + k
    anchored = set(pairs)

    # 2. Moved clauses: identical text left over on both sides, paired in order.
    # (The set made once: in the comprehension's condition it was made again for every
    # clause, ~2 ms of a 350-clause alignment.)
    anchored_old = set(pairs.values())
    free_old = [i for i in range(len(old)) if i not in anchored_old]
    free_new = [j for j in range(len(new)) if j not in pairs]
    by_text: dict[str, list[int]] = defaultdict(list)
    for i in free_old:
        by_text[old_texts[i]].append(i)
    moved: set[int] = set()
    for j in free_new:
        candidates = by_text.get(new_texts[j])
        if candidates:
            pairs[j] = candidates.pop(0)
            moved.add(j)

    # 3. Modified clauses: the most similar remaining pairs, same gap and section first.
    used_old = set(pairs.values())
    free_old = [i for i in range(len(old)) if i not in used_old]
    free_new = [j for j in range(len(new)) if j not in pairs]
    modified = _pair_by_similarity(old, new, free_old, free_new, anchored, pairs, threshold)
    pairs.update(modified)

    # 4. Build the new clause list and the edits, in document order.
    clauses: list[Clause] = []
    edits: list[ClauseEdit] = []
    for j, block in enumerate(new):
        paired = pairs.get(j)
        if paired is None:
            clause = Clause(id=new_id(j), text=block.text, section=block.section, kind=block.kind)
            edits.append(ClauseEdit(clause_id=clause.id, kind=ADDED, section=block.section,
                                    before=None, after=block.text, position=j))
        else:
            i = paired
            clause = Clause(id=old[i].id, text=block.text, section=block.section, kind=block.kind)
            if j in modified:
                diff = text_diff(old[i].text, block.text)
                edits.append(ClauseEdit(clause_id=clause.id, kind=MODIFIED, section=block.section,
                                        before=old[i].text, after=block.text, patch=diff.patch,
                                        similarity=diff.similarity, position=j))
            elif j in moved:
                edits.append(ClauseEdit(clause_id=clause.id, kind=MOVED, section=block.section,
                                        before=old[i].text, after=block.text, similarity=1.0,
                                        position=j))
        clauses.append(clause)
    kept_old = set(pairs.values())
    for i, clause in enumerate(old):
        if i not in kept_old:
            edits.append(ClauseEdit(clause_id=clause.id, kind=REMOVED, section=clause.section,
                                    before=clause.text, after=None,
                                    position=_position_after(i, pairs, len(new))))
    edits.sort(key=lambda e: (e.position, e.kind != REMOVED, e.clause_id))
    return Alignment(clauses=tuple(clauses), edits=tuple(edits))


def _pair_by_similarity(
    old: Sequence[Clause],
    new: Sequence[Block],
    free_old: list[int],
    free_new: list[int],
    anchored: set[int],
    pairs: dict[int, int],
    threshold: float,
) -> dict[int, int]:
    """Greedy best-first pairing of edited clauses; cheap token overlap picks the candidates."""
    if not free_old or not free_new:
        return {}
    # The gap between unchanged anchors where a block sits: edits usually stay in their gap.
    old_gap = _gaps(len(old), sorted(pairs[j] for j in anchored))
    new_gap = _gaps(len(new), sorted(anchored))
    floor = threshold * 0.8
    # Each word of the free new blocks, with the blocks holding it and how often: an old
    # clause's overlaps are counted over the words it shares, not over every pair (a page
    # of a hundred edited paragraphs made ~10,000 pairs, most sharing a few common words).
    postings: dict[str, list[tuple[int, int]]] = {}
    new_sizes: dict[int, int] = {}
    for j in free_new:
        words = Counter(_WORD.findall(new[j].text.casefold()))
        new_sizes[j] = sum(words.values())
        for word, count in words.items():
            postings.setdefault(word, []).append((j, count))
    empty_new = [j for j in free_new if not new_sizes[j]]
    scored: list[tuple[float, int, int]] = []
    for i in free_old:
        words = Counter(_WORD.findall(old[i].text.casefold()))
        size = sum(words.values())
        shared: dict[int, int] = {}
        for word, n in words.items():
            for j, m in postings.get(word, ()):
                # Not min(): a call per posting was ~0.3 ms of a changed page's alignment.
                shared[j] = shared.get(j, 0) + (n if n < m else m)  # noqa: FURB136
        # Blocks sharing no word overlap by 0: candidates only with no floor at all, or
        # when neither side has a word (as alike as can be).
        counted: Iterable[tuple[int, int]] = (
            shared.items() if floor > 0 and size else
            [(j, shared.get(j, 0)) for j in (free_new if floor <= 0 else empty_new)])
        overlaps = []
        for j, common in counted:
            total = size + new_sizes[j]
            overlap = 2 * common / total if total else 1.0
            if overlap >= floor:
                overlaps.append((overlap, -abs(old_gap[i] - new_gap[j]), -j, j))
        overlaps.sort(reverse=True)
        for _, _, _, j in overlaps[:_CANDIDATES]:
            score = similarity(old[i].text, new[j].text)
            if score < threshold:
                continue
            bonus = 0.0
            if old_gap[i] == new_gap[j]:
                bonus += 0.05
            if old[i].section == new[j].section:
                bonus += 0.02
            scored.append((score + bonus, i, j))
    scored.sort(key=lambda t: (-t[0], t[1], t[2]))
    result: dict[int, int] = {}
    taken: set[int] = set()
    for _, i, j in scored:
        if j in result or i in taken:
            continue
        result[j] = i
        taken.add(i)
    return result


def clause_id(slug: str, capture_no: int, index: int) -> str:
    """The id of a clause first seen at position `index` of a document's capture_no-th
    capture (a module function, so that `partial(clause_id, ...)` pickles to a worker)."""
    digest = hashlib.sha256(f"{slug}\x00{capture_no}\x00{index}".encode()).hexdigest()
    return f"cl-{digest[:12]}"


def _gaps(length: int, anchors: list[int]) -> list[int]:
    """For each index, how many anchors come before it."""
    gaps = []
    k = 0
    for index in range(length):
        while k < len(anchors) and anchors[k] < index:
            k += 1
        gaps.append(k)
    return gaps


def _position_after(old_index: int, pairs: dict[int, int], new_length: int) -> int:
    """Where a removed clause stood in the new version: just after its last kept predecessor."""
    best = -1
    for j, i in pairs.items():
        if i < old_index and j > best:
            best = j
    return min(best + 1, new_length)
