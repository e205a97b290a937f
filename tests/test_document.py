"""The Document aggregate: captures in, capture outcomes and clause changes out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from config.settings import StoreSettings
from daemon.store import ClauseWatchApp, application_env
from domain.document import (
    BASELINE,
    CHANGED,
    SUSPECT,
    UNCHANGED,
    CaptureFacts,
    Document,
    document_uuid,
)
from domain.extract import extract
from domain.normalize import sha256_hex

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CLAUSES = [
    "We collect your name, email address and phone number when you sign up.",
    "We use your information to provide and improve the service.",
    "We share information with service providers who process it on our behalf.",
    "You can ask us to delete your data by writing to privacy@example.com.",
    "We keep your data for as long as your account is open.",
]


def page(clauses: list[str] = CLAUSES, *, title: str = "Privacy Policy",
         noise: str = "") -> bytes:
    """A policy page; `noise` goes where a reader never sees it."""
    body = "".join(f"<p>{c}</p>" for c in clauses)
    return (f"<html><head><script>var build = '{noise}';</script></head><body>"
            f"<nav class='{noise}'>Home</nav><main><h1>{title}</h1>{body}</main>"
            f"</body></html>").encode()


ERROR_PAGE = b"<html><body><main><h1>This page isn't available</h1></main></body></html>"


def facts(body: bytes, at: int = 0, **extra: Any) -> CaptureFacts:
    return CaptureFacts(captured_at=T0 + timedelta(hours=at), requested_url="https://x.test/p",
                        final_url="https://x.test/p", http_status=200,
                        content_type="text/html", sha256=sha256_hex(body), size=len(body),
                        **extra)


def capture(doc: Document, body: bytes, at: int = 0, **extra: Any) -> Any:
    return doc.record_capture(facts(body, at, **extra), extract(body, select="main"))


def new_document() -> Document:
    doc = Document.register(slug="example/privacy", platform="Example", title="Privacy",
                            url="https://x.test/p")
    doc.collect_events()
    return doc


def event_names(doc: Document) -> list[str]:
    return [type(e).__name__ for e in doc.collect_events()]


def test_the_id_derives_from_the_slug() -> None:
    doc = Document.register(slug="a/b", platform="P", title="T", url="https://x.test/")
    assert doc.id == document_uuid("a/b") != document_uuid("a/c")
    assert [type(e).__name__ for e in doc.collect_events()] == ["DocumentRegistered"]


def test_baseline_then_unchanged_then_changed() -> None:
    doc = new_document()
    first = capture(doc, page(), 0)
    assert first.outcome == BASELINE and first.changes == 0
    assert event_names(doc) == ["DocumentCaptured"]
    assert [c["text"] for c in doc.clauses] == ["Privacy Policy", *CLAUSES]

    assert capture(doc, page(), 1).outcome == UNCHANGED
    assert event_names(doc) == ["DocumentCaptured"]

    edited = [*CLAUSES]
    edited[4] = "We keep your data for as long as your account is open and 90 days after."
    ids_before = [c["id"] for c in doc.clauses]
    result = capture(doc, page(edited), 2)
    assert (result.outcome, result.changes, result.kinds) == (CHANGED, 1, ("modified",))
    events = doc.collect_events()
    assert [type(e).__name__ for e in events] == ["DocumentCaptured", "ClauseChanged"]
    change = events[1]
    assert change.clause_id == ids_before[5]
    assert (change.before, change.after) == (CLAUSES[4], edited[4])
    assert change.section == ["Privacy Policy"]
    assert change.captured_at == T0 + timedelta(hours=2)
    assert change.sha256 == sha256_hex(page(edited))
    assert [c["id"] for c in doc.clauses] == ids_before
    assert doc.captures == 3


def test_markup_only_changes_are_unchanged() -> None:
    doc = new_document()
    capture(doc, page(noise="build-1"), 0)
    result = capture(doc, page(noise="build-2"), 1)
    assert result.outcome == UNCHANGED
    # Different bytes, recorded as such, with no clause change.
    events = doc.collect_events()
    assert [type(e).__name__ for e in events] == ["DocumentCaptured", "DocumentCaptured"]
    assert events[0].sha256 != events[1].sha256
    assert events[0].text_sha256 == events[1].text_sha256


def test_an_error_page_flap_is_suspect_then_unchanged_with_no_clause_change() -> None:
    doc = new_document()
    capture(doc, page(), 0)
    flap = capture(doc, ERROR_PAGE, 1)
    assert flap.outcome == SUSPECT and "error" in (flap.reason or "")
    # The error page does not become the version to compare with.
    assert [c["text"] for c in doc.clauses] == ["Privacy Policy", *CLAUSES]
    back = capture(doc, page(noise="after-the-flap"), 2)
    assert back.outcome == UNCHANGED
    assert "ClauseChanged" not in event_names(doc)


def test_text_that_collapses_is_suspect() -> None:
    doc = new_document()
    capture(doc, page(CLAUSES * 4), 0)
    result = capture(doc, page(CLAUSES[:1]), 1)
    assert result.outcome == SUSPECT
    assert result.reason is not None and result.reason.startswith("text collapsed to")
    # A long enough version compares again.
    assert capture(doc, page(CLAUSES * 3), 2).outcome == CHANGED


def test_a_select_that_matches_nothing_is_suspect_even_at_the_start() -> None:
    doc = new_document()
    body = b"<html><body><p>Cookie wall: accept to continue reading.</p></body></html>"
    result = capture(doc, body, 0)
    assert (result.outcome, result.reason) == (SUSPECT, "the select declaration matched nothing")
    # The first good capture after it is the baseline.
    assert capture(doc, page(), 1).outcome == BASELINE


def test_the_same_bytes_again_need_no_extraction() -> None:
    doc = new_document()
    capture(doc, page(), 0)
    assert doc.record_capture(facts(page(), 1), None).outcome == UNCHANGED
    capture(doc, ERROR_PAGE, 2)
    assert doc.record_capture(facts(ERROR_PAGE, 3), None).outcome == SUSPECT
    with pytest.raises(ValueError, match="last capture's bytes"):
        doc.record_capture(facts(page(), 4), None)


def test_a_304_verifies_the_last_capture() -> None:
    doc = new_document()
    with pytest.raises(ValueError, match="earlier capture"):
        doc.record_not_modified(captured_at=T0, requested_url="u", final_url="u")
    capture(doc, page(), 0, etag='"v1"')
    doc.collect_events()
    result = doc.record_not_modified(captured_at=T0 + timedelta(hours=1),
                                     requested_url="https://x.test/p",
                                     final_url="https://x.test/p")
    assert result.outcome == UNCHANGED
    [event] = doc.collect_events()
    assert (event.http_status, event.sha256, event.etag) == (304, sha256_hex(page()), '"v1"')
    # A 304 keeps the validators and bytes of the capture it confirms.
    assert doc.etag == '"v1"' and doc.last_sha256 == sha256_hex(page())
    assert doc.captures == 2


def test_failures_count_and_a_capture_resets_the_run() -> None:
    doc = new_document()
    for hour in range(3):
        doc.record_failure(captured_at=T0 + timedelta(hours=hour), requested_url="u",
                           error_kind="transient", message="timed out", http_status=None)
    assert (doc.failures, doc.consecutive_failures) == (3, 3)
    capture(doc, page(), 4)
    assert (doc.failures, doc.consecutive_failures, doc.captures) == (3, 0, 1)
    doc.record_failure(captured_at=T0, requested_url="u", error_kind="permanent",
                       message="HTTP 404", http_status=404)
    assert (doc.failures, doc.consecutive_failures) == (4, 1)
    assert event_names(doc).count("CaptureFailed") == 4


def test_redescribe_records_only_real_changes() -> None:
    doc = new_document()
    assert doc.redescribe(platform="Example", title="Privacy", url="https://x.test/p") is False
    assert doc.redescribe(platform="Example", title="Privacy Notice",
                          url="https://x.test/p") is True
    assert event_names(doc) == ["DocumentRedescribed"]
    assert doc.title == "Privacy Notice"


def test_clause_ids_are_deterministic() -> None:
    def run() -> list[str]:
        doc = new_document()
        capture(doc, page(), 0)
        capture(doc, page([*CLAUSES, "A new clause about artificial intelligence."]), 1)
        return [c["id"] for c in doc.clauses]

    assert run() == run()


def test_snapshot_round_trip_through_the_in_memory_app() -> None:
    app = ClauseWatchApp(env=application_env(StoreSettings(url="memory:")))
    doc = Document.register(slug="example/privacy", platform="Example", title="Privacy",
                            url="https://x.test/p")
    capture(doc, page(), 0)
    capture(doc, ERROR_PAGE, 1)
    capture(doc, page([*CLAUSES, "Added later."]), 2)
    doc.record_failure(captured_at=T0, requested_url="u", error_kind="transient",
                       message="reset", http_status=None)
    app.save(doc)
    app.take_snapshot(doc.id)
    snapshot = next(iter(app.snapshots.get(doc.id))) if app.snapshots else None
    assert snapshot is not None and snapshot.originator_version == doc.version

    restored = app.repository.get(doc.id)
    assert isinstance(restored, Document)
    assert vars(restored) == vars(doc)

    # Events after the snapshot are applied on top of it.
    restored.record_capture(facts(page(), 5), extract(page(), select="main"))
    app.save(restored)
    again = app.repository.get(doc.id)
    assert again.captures == doc.captures + 1
    assert again.clauses == restored.clauses
    assert [c["text"] for c in again.clauses] == ["Privacy Policy", *CLAUSES]


def test_the_app_snapshots_every_fifty_events() -> None:
    app = ClauseWatchApp(env=application_env(StoreSettings(url="memory:")))
    doc = Document.register(slug="busy", platform="P", title="T", url="https://x.test/")
    app.save(doc)
    capture(doc, page(), 0)
    app.save(doc)
    for hour in range(1, 60):
        doc.record_capture(facts(page(), hour), None)
        app.save(doc)
    assert doc.version == 61
    assert app.snapshots is not None
    snapshots = list(app.snapshots.get(doc.id))
    assert [s.originator_version for s in snapshots] == [50]
    assert app.repository.get(doc.id).captures == 60
