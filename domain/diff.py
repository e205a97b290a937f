"""Word-level diffs, similarity and patches with diff-match-patch, for clause-sized text."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from diff_match_patch import diff_match_patch

try:
    # The same algorithm compiled (the C++ port of diff-match-patch): ~8x faster on
    # word-coded clause pairs, with the same diffs as the Python engine (all ~26,000 pairs an
    # alignment of the full corpus and random clause pairs make; tests/test_diff.py checks
    # the trimmed copy's). Alignment diffs several candidates per edited clause: diff_main
    # was most of a changed page's alignment, ~6 ms of it, now ~2.
    from fast_diff_match_patch import diff as _compiled_diff
except ImportError:  # a platform without its wheel: the pure-Python engine alone
    _compiled_diff = None

_TOKEN = re.compile(r"\w+|\s+|[^\w\s]", re.UNICODE)
# A safety net for pathological inputs, far above what clause-sized text needs, so that the
# same two texts always give the same diff on any machine.
DIFF_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TextDiff:
    """The edit between two texts: diff operations, a patch and a similarity in [0, 1]."""

    ops: tuple[tuple[int, str], ...]
    patch: str
    similarity: float


def _engine() -> diff_match_patch:
    dmp = diff_match_patch()
    dmp.Diff_Timeout = DIFF_TIMEOUT_SECONDS
    return dmp


@functools.lru_cache(maxsize=1024)
def word_diff(before: str, after: str) -> tuple[tuple[int, str], ...]:
    """Diff two texts word by word (-1 deleted, 0 kept, 1 inserted), semantically cleaned up.

    Remembered for a while: alignment scores a pair with `similarity`, then, when it keeps
    the pair, asks `text_diff` for the very same diff.
    """
    return _word_diff(before, after)


def _word_diff(before: str, after: str, *, compiled: bool = True
               ) -> tuple[tuple[int, str], ...]:
    """word_diff, unremembered; `compiled=False` diffs with the pure-Python engine alone."""
    dmp = _engine()
    vocabulary: dict[str, str] = {}
    tokens: list[str] = [""]

    def encode(text: str) -> str:
        out = []
        for token in _TOKEN.findall(text):
            code = vocabulary.get(token)
            if code is None:
                tokens.append(token)
                code = vocabulary[token] = chr(len(tokens) - 1)
            out.append(code)
        return "".join(out)

    diffs = _diff_main(dmp, encode(before), encode(after), compiled=compiled)
    decoded = [(op, "".join(tokens[ord(c)] for c in data)) for op, data in diffs]
    dmp.diff_cleanupSemantic(decoded)
    return tuple((op, data) for op, data in decoded if data)


_OPS = {"-": -1, "=": 0, "+": 1}


def _diff_main(dmp: diff_match_patch, before: str, after: str, *,
               compiled: bool) -> list[tuple[int, str]]:
    """dmp.diff_main(before, after, False), by the compiled engine when it is installed.

    Only the diff itself: the cleanup runs on the decoded words, in Python, either way.
    """
    if compiled and _compiled_diff is not None:
        return [(_OPS[op], data) for op, data in _compiled_diff(
            before, after, timelimit=dmp.Diff_Timeout, checklines=False, cleanup="No",
            counts_only=False)]
    return list(dmp.diff_main(before, after, False))


def similarity(before: str, after: str) -> float:
    """Twice the characters the two texts share (word-level diff) over their total length.

    Like difflib's ratio: a paragraph split in two keeps a high score for its larger half,
    and a short line with a new date still reads as the same line.
    """
    if before == after:
        return 1.0
    return _ratio(word_diff(before, after), before, after)


def _ratio(ops: tuple[tuple[int, str], ...], before: str, after: str) -> float:
    total = len(before) + len(after)
    if not total:
        return 1.0
    shared = sum(len(data) for op, data in ops if op == 0)
    return 2 * shared / total


def text_diff(before: str, after: str) -> TextDiff:
    """The diff, the diff-match-patch patch turning `before` into `after`, and the similarity."""
    dmp = _engine()
    ops = word_diff(before, after)
    patch = dmp.patch_toText(dmp.patch_make(before, list(ops)))
    return TextDiff(ops=ops, patch=patch, similarity=round(_ratio(ops, before, after), 4))


def apply_patch(before: str, patch: str) -> str:
    """Apply a stored patch; raises ValueError if any hunk does not apply."""
    dmp = _engine()
    after, results = dmp.patch_apply(dmp.patch_fromText(patch), before)
    if not all(results):
        raise ValueError("the patch does not apply to this text")
    return str(after)
