"""Unicode and whitespace normalisation applied to every piece of text before it is compared."""

from __future__ import annotations

import hashlib
import re
import unicodedata

# Characters that render as (or like) a space, and ones that render as nothing at all.
_SPACES = dict.fromkeys(map(ord, "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                                 "\u2007\u2008\u2009\u200a\u202f\u205f\u3000\t\r\n\f\v"), " ")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_QUOTES = {
    ord("\u2018"): "'", ord("\u2019"): "'", ord("\u201a"): "'", ord("\u201b"): "'",
    ord("\u2032"): "'", ord("\u201c"): '"', ord("\u201d"): '"', ord("\u201e"): '"',
    ord("\u201f"): '"', ord("\u2033"): '"', ord("\u00ab"): '"', ord("\u00bb"): '"',
    ord("\u2010"): "-", ord("\u2011"): "-", ord("\u2012"): "-",
}
_TABLE = {**_SPACES, **_INVISIBLE, **_QUOTES}
_RUNS_OF_SPACE = re.compile(r" {2,}")
# The table's characters beyond ASCII, as one character class, and what each becomes.
_SPECIAL = re.compile("[" + "".join(re.escape(chr(c)) for c in _TABLE if c > 127) + "]")
_REPLACEMENTS = {chr(c): to or "" for c, to in _TABLE.items()}
# What str.split() and str.strip() take for whitespace but the table leaves alone.
_OTHER_WHITESPACE = re.compile("[\x1c-\x1f\x85\u2028\u2029]")


def normalize_text(text: str) -> str:
    """NFC, one kind of space, no invisible characters, straight quotes, single spaces."""
    if not text.isascii():  # NFC leaves ASCII as it is, and the table's rest is whitespace
        text = unicodedata.normalize("NFC", text)
        # A few characters to replace in a long text: translate would look up every one.
        text = _SPECIAL.sub(_replacement, text)
    if _OTHER_WHITESPACE.search(text) is not None:
        # Kept inside the text: split() would cut there.
        return _RUNS_OF_SPACE.sub(" ", text.translate(_TABLE)).strip()
    # Every whitespace character left is one the table makes a space: the same as
    # translating, squeezing runs of spaces and stripping, in one C pass (~2x faster).
    return " ".join(text.split())


def _replacement(match: re.Match[str]) -> str:
    return _REPLACEMENTS[match.group()]


def text_key(text: str) -> str:
    """The comparison key of a clause: normalised and case-folded."""
    return normalize_text(text).casefold()


def sha256_hex(data: bytes | str) -> str:
    """SHA-256 of bytes, or of a string encoded as UTF-8."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()
