"""Normalisation: what two texts must share to count as the same words."""

from __future__ import annotations

import unicodedata

import pytest

from domain.normalize import normalize_text, sha256_hex, text_key


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
