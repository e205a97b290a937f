"""Normalisation: what two texts must share to count as the same words."""

from __future__ import annotations

import random
import re
import unicodedata

import pytest

from domain.normalize import _TABLE, normalize_text, sha256_hex, text_key


def reference(text: str) -> str:
    """What normalize_text is defined as (its first, plain form): the stored text hashes of
    every document depend on it, so a faster form must give the very same strings."""
    text = unicodedata.normalize("NFC", text).translate(_TABLE)
    return re.sub(r" {2,}", " ", text).strip()


# Every code point Python takes for whitespace (str.split, str.strip), beside those the
# table maps: where the two disagree the fast form must fall back to the plain one.
WHITESPACE = [chr(c) for c in range(0x110000) if chr(c).isspace()]


@pytest.mark.parametrize("space", WHITESPACE, ids=lambda c: f"U+{ord(c):04X}")
def test_each_whitespace_character_as_the_reference_treats_it(space: str) -> None:
    for text in (f"a{space}b", f"{space}a", f"a{space}", f"a {space} b", space * 3,
                 f"caf\u00e9{space}\u2019s", f"{space}\u00a0x\u200b{space}"):
        assert normalize_text(text) == reference(text), repr(text)


def test_random_mixes_of_the_characters_it_touches_match_the_reference() -> None:
    alphabet = [*"ab .,'\"", "e\u0301", "\u00e9", *map(chr, _TABLE), *WHITESPACE,
                "\u200e", "\u180e", "\u00e9\u0301"]
    rnd = random.Random(20261205)
    for _ in range(20_000):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 16)))
        assert normalize_text(text) == reference(text), repr(text)


def test_separators_the_table_leaves_alone_stay_inside_the_text() -> None:
    # U+2028 and the ASCII information separators are whitespace to str.split but not to
    # the table: kept where they are, as the plain form keeps them.
    assert normalize_text("a\u2028b  c") == "a\u2028b c"
    assert normalize_text("x\x1fy") == "x\x1fy"


def test_composes_to_nfc() -> None:
    decomposed = "Cafe\u0301 re\u0301sume\u0301"
    assert decomposed != "Café résumé"
    assert normalize_text(decomposed) == "Café résumé"
    assert unicodedata.is_normalized("NFC", normalize_text(decomposed))


@pytest.mark.parametrize("space", ["\u00a0", "\u202f", "\u2009", "\u3000", "\t", "\n", "\r\n"])
def test_every_kind_of_space_becomes_one_space(space: str) -> None:
    assert normalize_text(f"personal{space}data") == "personal data"


@pytest.mark.parametrize("invisible", ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff",
                                       "\u00ad"])
def test_invisible_characters_are_removed(invisible: str) -> None:
    assert normalize_text(f"pri{invisible}vacy") == "privacy"


def test_curly_quotes_and_hyphens_become_straight() -> None:
    text = "\u201cUser Content\u201d isn\u2019t \u2018ours\u2019 \u00abhere\u00bb e\u2011mail"
    assert normalize_text(text) == '"User Content" isn\'t \'ours\' "here" e-mail'


def test_runs_of_whitespace_collapse_and_ends_are_trimmed() -> None:
    assert normalize_text("  We \u00a0 collect\n\n\t your   data.  ") == "We collect your data."


def test_an_empty_or_blank_text_normalises_to_empty() -> None:
    assert normalize_text("") == ""
    assert normalize_text(" \u00a0\u200b\n ") == ""


def test_normalisation_is_idempotent() -> None:
    once = normalize_text("\ufeff\u201cA\u201d\u00a0\u00a0b\u0301 ")
    assert normalize_text(once) == once


def test_text_key_folds_case_on_top_of_normalising() -> None:
    assert text_key("STRASSE\u00a0Privacy") == text_key("straße privacy")
    assert text_key("Privacy") != text_key("Privacy.")


def test_sha256_of_a_string_is_of_its_utf8_bytes() -> None:
    assert sha256_hex("é") == sha256_hex("é".encode())
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
