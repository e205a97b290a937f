"""Rendering notices: subjects, diffs, escaping, Slack limits, webhook JSON."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from conftest_notifiers import (
    CAPTURED,
    TIKTOK_AFTER,
    alert,
    tiktok_changes,
    tiktok_document,
    weekly_digest,
)

from notifiers.notice import ClauseNotice, Notice
from notifiers.render import (
    SLACK_MAX_BLOCKS,
    SLACK_MAX_HEADER_TEXT,
    SLACK_MAX_SECTION_TEXT,
    Segment,
    diff_segments,
    render_html,
    render_text,
    slack_escape,
    slack_payload,
    subject,
    text_diff,
    webhook_payload,
)


def _slack_texts(payload: dict[str, object]) -> list[str]:
    texts = []
    for block in payload["blocks"]:  # type: ignore[attr-defined]
        if "text" in block:
            texts.append(block["text"]["text"])
        for element in block.get("elements", []):
            texts.append(element["text"])
    return texts


def test_alert_subject_counts_changed_clauses() -> None:
    assert subject(alert()) == "TikTok Privacy Policy: 3 clauses changed"


def test_subject_does_not_repeat_the_platform_and_stays_on_one_line() -> None:
    doc = tiktok_document(tiktok_changes()[:1])
    doc = replace(doc, platform="Meta", title="Meta Privacy\nPolicy")
    assert subject(alert(document=doc)) == "Meta Privacy Policy: 1 clause changed"


def test_digest_subject_names_the_period_changes_and_documents() -> None:
    assert subject(weekly_digest()) == "clausewatch weekly digest: 5 changes in 2 documents"


def test_word_diff_marks_only_the_changed_words() -> None:
    segments = diff_segments(
        "We share your information with advertisers and measurement partners.",
        "We share your information with advertisers, data brokers and measurement partners.",
    )
    assert text_diff(segments) == (
        "We share your information with advertisers{+, data brokers+} and measurement partners."
    )
    assert {s.op for s in segments} == {"equal", "insert"}


def test_word_diff_replaces_whole_words_not_letters() -> None:
    segments = diff_segments("You may opt out at any time.", "You may opt in at any time.")
    assert text_diff(segments) == "You may opt [-out-]{+in+} at any time."


def test_plain_text_body_has_diff_markers_sections_and_footer() -> None:
    text = render_text(alert())
    assert "[-" in text and "-]" in text and "{+" in text and "+}" in text
    # A removed clause shows entirely deleted, an added one entirely inserted.
    assert "[-We do not sell your personal information to advertisers.-]" in text
    assert "{+We may contact you <script>" in text
    assert "What Information We Collect › Information You Provide" in text
    assert "severity high; categories ai, data-collection" in text
    assert "You receive this because of subscription legal-team" in text
    assert "http://127.0.0.1:8080/documents/tiktok-privacy-us/changes/42" in text


def test_html_escapes_page_text_and_marks_changes() -> None:
    body = render_html(alert())
    assert "<script>" not in body
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in body
    assert "features &amp; more" in body
    assert "<del " in body and "<ins " in body
    assert "as well as the responses they generate</ins>." in body
    assert "subscription legal-team" in body


def test_html_drops_links_that_are_not_http() -> None:
    doc = replace(tiktok_document(), evidence_url="javascript:alert(1)")
    body = render_html(alert(document=doc))
    assert "javascript:" not in body
    assert 'href="http://127.0.0.1:8080/documents/tiktok-privacy-us/changes/42"' in body


def test_footer_links_the_unsubscribe_url_when_given() -> None:
    notice = alert(unsubscribe_url="https://clausewatch.example/subscriptions/legal-team")
    assert "To unsubscribe, visit https://clausewatch.example/subscriptions/legal-team" in (
        render_text(notice)
    )
    assert 'href="https://clausewatch.example/subscriptions/legal-team">Unsubscribe' in (
        render_html(notice)
    )


def test_slack_escapes_control_characters_and_has_fallback_text() -> None:
    payload = slack_payload(alert())
    assert payload["text"].startswith("TikTok Privacy Policy: 3 clauses changed")
    joined = "\n".join(_slack_texts(payload))
    assert "<script>" not in joined
    assert "&lt;script&gt;" in joined and "&amp; more" in joined
    assert "~We do not sell your personal information to advertisers.~" in joined
    assert payload["blocks"][0]["type"] == "header"


def test_slack_escape_follows_slack_rules() -> None:
    assert slack_escape("a < b & c > d") == "a &lt; b &amp; c &gt; d"


def test_slack_truncates_a_huge_clause_with_a_link_to_the_full_change() -> None:
    huge = " ".join([TIKTOK_AFTER] * 120)
    assert len(huge) > 20_000
    change = ClauseNotice(
        clause_id="tiktok-pp/collect/ai-interactions",
        kind="modified",
        section=("What Information We Collect",),
        before=huge.replace("responses", "outputs"),
        after=huge + " <b>&</b>" * 50,
    )
    payload = slack_payload(alert(document=tiktok_document((change,))))
    texts = _slack_texts(payload)
    assert all(0 < len(t) <= SLACK_MAX_SECTION_TEXT for t in texts)
    assert len(payload["blocks"]) <= SLACK_MAX_BLOCKS
    change_text = payload["blocks"][2]["text"]["text"]
    assert "diff truncated" in change_text
    assert (
        "<http://127.0.0.1:8080/documents/tiktok-privacy-us/changes/42|read the full change>"
        in (change_text)
    )
    assert len(json.dumps(payload)) < 40_000


def test_slack_keeps_to_fifty_blocks_and_says_what_it_left_out() -> None:
    changes = tuple(
        ClauseNotice(
            clause_id=f"c{i}",
            kind="added",
            section=("Section", str(i)),
            before=None,
            after=f"Clause number {i} about cookies and similar technologies.",
        )
        for i in range(80)
    )
    payload = slack_payload(alert(document=tiktok_document(changes)))
    blocks = payload["blocks"]
    assert len(blocks) == SLACK_MAX_BLOCKS
    shown = sum(1 for t in _slack_texts(payload) if t.startswith("*Added:"))
    note = blocks[-2]["text"]["text"]
    assert note.startswith(f"… and {80 - shown} more changes not shown here")
    assert "tiktok-privacy-us/changes/42" in note
    assert blocks[-1]["type"] == "context"


def test_slack_header_respects_its_limit() -> None:
    doc = replace(tiktok_document(), title="Privacy Policy " * 30)
    header = slack_payload(alert(document=doc))["blocks"][0]["text"]["text"]
    assert len(header) <= SLACK_MAX_HEADER_TEXT
    assert header.endswith("…")


def test_slack_sections_stay_within_limits_whatever_the_page_says() -> None:
    long_url = "https://www.tiktok.com/legal/" + "x" * 900
    change = ClauseNotice(
        clause_id="c1",
        kind="modified",
        section=("Heading " * 700,),
        before="We keep data for 30 days.",
        after="We keep data for 90 days.",
        categories=tuple(f"category-{i}" for i in range(200)),
    )
    doc = replace(
        tiktok_document((change,)),
        title="Privacy Policy " * 100,
        url=long_url,
        evidence_url=long_url,
        document_link=long_url,
    )
    texts = _slack_texts(slack_payload(alert(document=doc)))
    assert all(0 < len(t) <= SLACK_MAX_SECTION_TEXT for t in texts)
    assert any("*30*" not in t and "~30~ *90*" in t for t in texts)


def test_webhook_payload_is_versioned_json_with_utc_timestamps() -> None:
    notice = weekly_digest()
    payload = webhook_payload(notice)
    assert payload["type"] == "digest"
    assert payload["version"] == 1
    assert payload["id"] == "dig_2025w02"
    assert payload["subscription"] == {"id": "legal-team"}
    assert payload["window"] == {"start": "2025-01-01T12:00:00Z", "end": "2025-01-08T12:00:00Z"}
    assert payload["documents"][0]["captured_at"] == "2025-01-05T12:00:00Z"
    first = payload["documents"][0]["changes"][0]
    assert first["after"] == TIKTOK_AFTER and first["section"] == [
        "What Information We Collect",
        "Information You Provide",
    ]
    assert json.loads(json.dumps(payload)) == payload
    assert webhook_payload(alert())["type"] == "clause.changes"


def test_webhook_timestamps_are_converted_to_utc() -> None:
    paris = datetime(2025, 1, 5, 13, 1, tzinfo=UTC).astimezone(
        __import__("zoneinfo").ZoneInfo("Europe/Paris")
    )
    notice = Notice(
        id="t1", subscription_id="legal-team", kind="test", created_at=paris, documents=()
    )
    payload = webhook_payload(notice)
    assert payload["timestamp"] == "2025-01-05T13:01:00Z"
    assert payload["type"] == "test"
    assert "test notification" in render_text(notice)


def test_notice_rejects_shapes_that_cannot_be_rendered() -> None:
    with pytest.raises(ValueError, match="exactly one document"):
        Notice(
            id="a1",
            subscription_id="s",
            kind="alert",
            created_at=CAPTURED,
            documents=(tiktok_document(), tiktok_document()),
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        Notice(
            id="a2", subscription_id="s", kind="test", created_at=datetime(2025, 1, 1), documents=()
        )
    with pytest.raises(ValueError, match="window_start is after"):
        Notice(
            id="a3",
            subscription_id="s",
            kind="digest",
            created_at=CAPTURED,
            documents=(),
            window_start=CAPTURED,
            window_end=CAPTURED - timedelta(days=1),
        )


def test_segments_are_frozen_values() -> None:
    seg = Segment(op="insert", text="x")
    with pytest.raises(AttributeError):
        seg.text = "y"  # type: ignore[misc]
