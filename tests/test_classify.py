"""Clause classification against the packaged taxonomy, on real policy sentences.

Contains data from Open Terms Archive (opentermsarchive.org), ODC-By 1.0.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from config.errors import ConfigError
from config.taxonomy import TaxonomyError, load_taxonomy
from domain.classify import (
    Category,
    CategoryMatch,
    Rule,
    Taxonomy,
    classify,
    severity_rank,
)

CASES = tomllib.loads(
    (Path(__file__).parent / "data" / "classify" / "sentences.toml").read_text(encoding="utf-8")
)["cases"]

# TikTok US privacy policy, versions 005 onwards.
TIKTOK_AI_CLAUSE = (
    "AI interactions, including prompts, questions, files, and other types of information that "
    "you submit to our AI-powered interfaces, as well as the responses they generate."
)

REQUIRED_CATEGORIES = {
    "ai-interaction-data",
    "ai-model-training",
    "arbitration-class-action",
    "data-retention",
    "data-sale-sharing",
    "biometric-data",
    "childrens-data",
    "location-data",
    "cross-border-transfer",
    "account-termination",
    "unilateral-changes",
    "liability-limitation",
    "indemnification",
    "law-enforcement-requests",
    "content-licence",
    "cookies-tracking",
    "automated-decision-making",
}


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return load_taxonomy()


def ids(matches: tuple[CategoryMatch, ...]) -> list[str]:
    return [match.category_id for match in matches]


def match_for(matches: tuple[CategoryMatch, ...], category_id: str) -> CategoryMatch:
    return next(match for match in matches if match.category_id == category_id)


def _case_id(case: dict[str, str]) -> str:
    return f"{case['category']}-{case['expect']}-{case['text'][:30]}"


# --- the packaged taxonomy -------------------------------------------------------------------


def test_packaged_taxonomy_covers_the_required_categories(taxonomy: Taxonomy) -> None:
    found = {category.id for category in taxonomy.categories}
    assert REQUIRED_CATEGORIES <= found
    assert len(found) >= 17
    for category in taxonomy.categories:
        assert category.regulations, category.id
        assert category.rules, category.id
        assert category.description.strip(), category.id


def test_every_category_has_a_positive_and_a_negative_case(taxonomy: Taxonomy) -> None:
    for category in taxonomy.categories:
        expects = {case["expect"] for case in CASES if case["category"] == category.id}
        assert expects == {"match", "no-match"}, category.id


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_real_sentence(taxonomy: Taxonomy, case: dict[str, str]) -> None:
    matches = classify(taxonomy, case["text"])
    if case["expect"] == "match":
        assert case["category"] in ids(matches), case["source"]
    else:
        assert case["category"] not in ids(matches), (case["source"], matches)


def test_tiktok_ai_interactions_clause_is_ai_interaction_data(taxonomy: Taxonomy) -> None:
    matches = classify(taxonomy, TIKTOK_AI_CLAUSE)
    top = matches[0]
    assert top.category_id == "ai-interaction-data"
    assert top.severity == "high"
    assert "EU AI Act Art. 50" in top.regulations
    # Both rules agree (the named phrase and prompts + an AI term), so the match is confident.
    assert {hit.rule_id for hit in top.evidence} == {
        "ai-interactions-named",
        "prompts-and-responses",
    }
    assert top.confidence > max(hit.strength for hit in top.evidence)


# --- evidence ---------------------------------------------------------------------------------


def test_evidence_offsets_point_at_the_matched_words(taxonomy: Taxonomy) -> None:
    for case in CASES:
        for match in classify(taxonomy, case["text"]):
            for hit in match.evidence:
                assert hit.spans
                for span in hit.spans:
                    assert case["text"][span.start : span.end] == span.text


def test_evidence_names_rule_term_and_position(taxonomy: Taxonomy) -> None:
    hit = next(
        hit
        for hit in match_for(classify(taxonomy, TIKTOK_AI_CLAUSE), "ai-interaction-data").evidence
        if hit.rule_id == "ai-interactions-named"
    )
    first, second = hit.spans
    assert (first.kind, first.term, first.text, first.start, first.end) == (
        "phrase",
        "ai interactions",
        "AI interactions",
        0,
        15,
    )
    assert second.text == "AI-powered interfaces"
    assert second.start == TIKTOK_AI_CLAUSE.index("AI-powered interfaces")


def test_required_terms_appear_in_the_evidence(taxonomy: Taxonomy) -> None:
    hit = next(
        hit
        for hit in match_for(classify(taxonomy, TIKTOK_AI_CLAUSE), "ai-interaction-data").evidence
        if hit.rule_id == "prompts-and-responses"
    )
    kinds = {(span.kind, span.text) for span in hit.spans}
    assert ("pattern", "prompts") in kinds
    assert ("require", "AI-powered") in kinds


# --- robustness -------------------------------------------------------------------------------


def test_matching_ignores_case(taxonomy: Taxonomy) -> None:
    shouted = TIKTOK_AI_CLAUSE.upper()
    assert ids(classify(taxonomy, shouted)) == ids(classify(taxonomy, TIKTOK_AI_CLAUSE))


def test_curly_quotes_match_straight_quoted_phrases(taxonomy: Taxonomy) -> None:
    # TikTok EEA privacy policy, as published (curly apostrophe); the phrase is "don't sell".
    text = "We don\u2019t sell your information or share it to target ads based on your activity."
    hit = match_for(classify(taxonomy, text), "data-sale-sharing").evidence[0]
    assert hit.spans[0].text == "don\u2019t sell"
    assert text[hit.spans[0].start : hit.spans[0].end] == "don\u2019t sell"


def test_same_input_gives_the_same_output(taxonomy: Taxonomy) -> None:
    text = " ".join(case["text"] for case in CASES)
    first = classify(taxonomy, text)
    assert first == classify(taxonomy, text)
    # A taxonomy loaded again from the same file classifies identically.
    assert first == classify(load_taxonomy(), text)


def test_matches_are_sorted_by_confidence_then_id(taxonomy: Taxonomy) -> None:
    text = " ".join(case["text"] for case in CASES)
    matches = classify(taxonomy, text)
    assert len(matches) > 10
    assert list(matches) == sorted(matches, key=lambda m: (-m.confidence, m.category_id))
    assert all(0.0 < match.confidence <= 1.0 for match in matches)


def test_text_without_any_clause_has_no_matches(taxonomy: Taxonomy) -> None:
    assert classify(taxonomy, "") == ()
    assert classify(taxonomy, "Welcome to the GitHub Privacy Statement.") == ()


# --- rule semantics on a small taxonomy -------------------------------------------------------


def _one_rule(**rule: object) -> Taxonomy:
    return Taxonomy(
        categories=(
            Category(
                id="data-retention",
                name="Data retention",
                description="How long data is kept.",
                severity="medium",
                regulations=("GDPR Art. 5(1)(e)",),
                rules=(Rule(id="retain", **rule),),  # type: ignore[arg-type]
            ),
        )
    )


def test_exclusion_vetoes_the_match() -> None:
    taxonomy = _one_rule(phrases=("retain",), exclude=("retain ownership",))
    # GitHub Terms of Service, D.7-like wording: ownership, not data retention.
    assert classify(taxonomy, "You retain ownership of and responsibility for Your Content.") == ()
    assert ids(classify(taxonomy, "We retain information for as long as necessary.")) == [
        "data-retention"
    ]


def test_exclusion_only_vetoes_its_own_sentence() -> None:
    taxonomy = _one_rule(phrases=("retain",), exclude=("retain ownership",))
    text = "You retain ownership of Your Content. We retain logs for 90 days."
    (match,) = classify(taxonomy, text)
    (span,) = match.evidence[0].spans
    assert span.start == text.index("retain logs")


def test_packaged_exclusion_vetoes_a_real_near_miss(taxonomy: Taxonomy) -> None:
    # Google: an admin's powers over an account, not how long Google keeps data.
    text = "Access and retain information stored in your account, such as your email"
    assert "data-retention" not in ids(classify(taxonomy, text))
    assert "data-retention" in ids(
        classify(taxonomy, text.replace("Access and retain", "We retain"))
    )


def test_require_gates_the_rule_and_raises_confidence() -> None:
    gated = _one_rule(patterns=(r"\bkeep\b",), require=("data",), weight=0.8)
    assert classify(gated, "Keep your password secret.") == ()
    (corroborated,) = classify(gated, "We keep data for a year.")
    ungated = _one_rule(patterns=(r"\bkeep\b",), weight=0.8)
    (plain,) = classify(ungated, "We keep data for a year.")
    assert corroborated.confidence > plain.confidence


def test_longer_phrases_are_more_specific() -> None:
    taxonomy = _one_rule(phrases=("retain", "retain your personal data"))
    (short,) = classify(taxonomy, "We retain it.")
    (long,) = classify(taxonomy, "We retain your personal data.")
    assert long.confidence > short.confidence


def test_rules_are_compiled_once_and_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="neither phrases nor patterns"):
        Rule(id="empty")
    with pytest.raises(ValueError, match="weight"):
        Rule(id="heavy", phrases=("x",), weight=1.5)
    with pytest.raises(ValueError, match="duplicate category ids"):
        category = _one_rule(phrases=("x",)).categories[0]
        Taxonomy(categories=(category, category))


def test_severity_rank_orders_severities() -> None:
    ranks = [severity_rank(s) for s in ("low", "medium", "high", "critical")]
    assert ranks == sorted(ranks) and len(set(ranks)) == 4
    with pytest.raises(ValueError, match="unknown severity"):
        severity_rank("severe")


# --- broken taxonomy files --------------------------------------------------------------------

GOOD_CATEGORY = """
[[categories]]
id = "data-retention"
name = "Data retention"
description = "How long data is kept."
severity = "medium"
regulations = ["GDPR Art. 5(1)(e)"]
  [[categories.rules]]
  phrases = ["retention period"]
"""


def _load_broken(tmp_path: Path, text: str) -> TaxonomyError:
    path = tmp_path / "taxonomy.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TaxonomyError) as caught:
        load_taxonomy(path)
    error = caught.value
    assert isinstance(error, ConfigError)
    assert error.file == str(path)
    assert str(path) in str(error)
    assert error.fix
    return error


def test_invalid_regex_names_its_key(tmp_path: Path) -> None:
    error = _load_broken(tmp_path, GOOD_CATEGORY + "  patterns = ['\\bok\\b', '(unclosed']\n")
    assert error.key == "categories[0].rules[0].patterns[1]"
    assert "invalid regular expression" in str(error)
    assert "categories[0].rules[0].patterns[1]: invalid regular expression '(unclosed'" in str(
        error
    )


def test_unknown_severity_names_its_key(tmp_path: Path) -> None:
    error = _load_broken(tmp_path, GOOD_CATEGORY.replace('"medium"', '"severe"'))
    assert error.key == "categories[0].severity"
    assert "low, medium, high, critical" in error.fix


def test_duplicate_ids_name_the_second_one(tmp_path: Path) -> None:
    error = _load_broken(tmp_path, GOOD_CATEGORY + GOOD_CATEGORY)
    assert error.key == "categories[1].id"
    assert "duplicate category id 'data-retention'" in error.problem


def test_category_without_rules_is_refused(tmp_path: Path) -> None:
    no_rules = GOOD_CATEGORY.split("  [[categories.rules]]")[0]
    error = _load_broken(tmp_path, no_rules)
    assert error.key == "categories[0].rules"
    assert "no rules" in error.problem


def test_misspelt_rule_key_is_refused(tmp_path: Path) -> None:
    error = _load_broken(tmp_path, GOOD_CATEGORY.replace("phrases =", "phrase ="))
    assert error.key == "categories[0].rules[0].phrase"
    assert "phrases" in error.fix


def test_weight_out_of_range_is_refused(tmp_path: Path) -> None:
    error = _load_broken(tmp_path, GOOD_CATEGORY + "  weight = 2\n")
    assert error.key == "categories[0].rules[0].weight"


def test_id_must_be_a_slug(tmp_path: Path) -> None:
    error = _load_broken(tmp_path, GOOD_CATEGORY.replace('"data-retention"', '"Data Retention"'))
    assert error.key == "categories[0].id"


def test_toml_syntax_error_is_reported(tmp_path: Path) -> None:
    error = _load_broken(tmp_path, GOOD_CATEGORY + "weight = = 1\n")
    assert "not valid TOML" in error.problem


def test_missing_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(TaxonomyError) as caught:
        load_taxonomy(path)
    assert str(path) in str(caught.value)


def test_a_valid_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "taxonomy.toml"
    path.write_text(GOOD_CATEGORY, encoding="utf-8")
    taxonomy = load_taxonomy(path)
    (category,) = taxonomy.categories
    assert category.rules[0].id == "data-retention/0"
    assert ids(classify(taxonomy, "The retention period is two years.")) == ["data-retention"]
