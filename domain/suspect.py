"""Is a capture broken? Error pages, bot walls, empty selections and collapsed text."""

from __future__ import annotations

import re
from dataclasses import dataclass

from domain.blocks import Extraction

# Phrases of error and bot-wall pages. They only count on short pages: a real policy may
# well say "access denied" somewhere in its thousands of words.
_ERROR_PAGE = re.compile(
    r"this page isn'?t available|page not found|\b404\b|access denied|forbidden|"
    r"an unexpected error has occurred|something went wrong|service unavailable|"
    r"are you a robot|verify you are (a )?human|captcha|just a moment|checking your browser|"
    r"enable javascript|javascript is (disabled|required)|request blocked|too many requests|"
    r"temporarily unavailable|try again later|come back later",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SuspectPolicy:
    """When a capture is too broken to compare: thresholds, all overridable per document."""

    # Text shorter than this fraction of the last good version is a collapse.
    min_length_ratio: float = 0.3
    # Pages shorter than this (characters) that match an error phrase are error pages.
    error_page_max_length: int = 2000


def assess(extraction: Extraction, *, last_good_length: int | None,
           policy: SuspectPolicy = SuspectPolicy()) -> str | None:
    """The reason a capture looks broken, or None if it can be compared with the last good one."""
    if not extraction.selection_matched:
        return "the select declaration matched nothing"
    text = extraction.text
    if not text.strip():
        return "no text was extracted"
    if len(text) <= policy.error_page_max_length and _ERROR_PAGE.search(text):
        return "looks like an error or bot-wall page"
    if last_good_length and len(text) < policy.min_length_ratio * last_good_length:
        percent = round(100 * len(text) / last_good_length)
        return f"text collapsed to {percent}% of the last good version"
    return None
