"""The application service against a real page server: checks, 304s, failures, retention."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config.settings import DocumentSettings, StoreSettings
from daemon.check import check_all
from daemon.fetcher import FetchResult
from daemon.service import ClauseWatch, UnknownDocumentError, months_between, stability
from daemon.store import open_store
from harness import LOOPBACK_FETCH, PageServer

CLAUSES = [
    "We collect the name, email address and phone number you give us.",
    "We use cookies to keep you signed in and to measure how the site is used.",
    "We share personal data with processors bound by contract.",
    "You can ask for a copy of your data or for its deletion.",
]
ERROR_PAGE = "<html><body><main><h1>Something went wrong</h1></main></body></html>"


def page(clauses: list[str], noise: str = "") -> str:
    body = "".join(f"<p>{c}</p>" for c in clauses)
    return (f"<html><head><script>window.build = '{noise}'</script></head><body>"
            f"<main><h1>Privacy Policy</h1>{body}</main></body></html>")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ClauseWatch]:
    store = open_store(StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}"),
                       tmp_path / "data")
    yield ClauseWatch(store)
    store.close()


def document(server: PageServer, path: str = "/privacy", **extra: object) -> DocumentSettings:
    return DocumentSettings(id=f"example{path}", platform="Example", title="Privacy Policy",
                            url=server.url(path), select="main", robots=False, **extra)


async def test_check_records_baseline_unchanged_and_changed(service: ClauseWatch,
                                                            page_server: PageServer) -> None:
    doc = document(page_server)
    page_server.set("/privacy", page(CLAUSES, "1"))
    [first] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert (first.outcome, first.clauses) == ("baseline", 5)

    # New bytes, same words.
    page_server.set("/privacy", page(CLAUSES, "2"))
    [second] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert second.outcome == "unchanged" and second.sha256 != first.sha256

    edited = [*CLAUSES[:2], CLAUSES[2].replace("processors", "processors and advertisers"),
              CLAUSES[3], "We use your posts to train our AI models."]
    page_server.set("/privacy", page(edited, "3"))
    [third] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert (third.outcome, third.changes, sorted(third.kinds)) == (
        "changed", 2, ["added", "modified"])
    assert third.describe() == "2 clause changes"

    record = service.document(doc.id)
    assert (record["captures"], record["changes"], record["status"]) == (3, 2, "ok")
    changes = service.changes(document=doc.id)
    assert [c["kind"] for c in changes] == ["modified", "added"]
    modified = service.clause(changes[0]["clause"])
    assert modified["text"] == edited[2] and modified["changes"] == 1
    assert [h["before"] for h in modified["history"]] == [CLAUSES[2]]
    added = service.clause(changes[1]["clause"])
    # Its appearance is not a change to it.
    assert added["changes"] == 0 and added["first_seen"] == added["last_seen"]


async def test_a_304_is_an_unchanged_capture_of_the_same_bytes(service: ClauseWatch,
                                                               page_server: PageServer) -> None:
    doc = document(page_server)
    page_server.set("/privacy", page(CLAUSES), etag='"v1"')
    [first] = await check_all(service, LOOPBACK_FETCH, [doc])
    [second] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert page_server.hits("/privacy")[1].headers.get("If-None-Match") == '"v1"'
    assert [h.status for h in page_server.hits("/privacy")] == [200, 304]
    assert (second.outcome, second.sha256) == ("unchanged", first.sha256)
    latest = service.captures(doc.id)[0]
    assert (latest["http_status"], latest["outcome"], latest["sha256"]) == (
        304, "unchanged", first.sha256)
    assert service.document(doc.id)["captures"] == 2


async def test_no_validators_are_sent_after_a_suspect_capture(service: ClauseWatch,
                                                              page_server: PageServer) -> None:
    doc = document(page_server)
    page_server.set("/privacy", page(CLAUSES), etag='"good"')
    await check_all(service, LOOPBACK_FETCH, [doc])
    page_server.set("/privacy", ERROR_PAGE, etag='"broken"')
    [suspect] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert suspect.outcome == "suspect" and suspect.describe().startswith("suspect: ")
    record = service.document(doc.id)
    assert (record["status"], record["last_error"]) == ("suspect", suspect.reason)
    # A 304 must never confirm the broken page: the next request is unconditional.
    [again] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert "If-None-Match" not in page_server.hits("/privacy")[-1].headers
    assert again.outcome == "suspect"
    page_server.set("/privacy", page(CLAUSES, "back"))
    [back] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert back.outcome == "unchanged"
    assert service.changes(document=doc.id) == []
    assert service.document(doc.id)["status"] == "ok"


async def test_failures_are_recorded_per_document(service: ClauseWatch,
                                                  page_server: PageServer) -> None:
    ok, missing = document(page_server, "/privacy"), document(page_server, "/gone")
    page_server.set("/privacy", page(CLAUSES))
    outcomes = await check_all(service, LOOPBACK_FETCH, [ok, missing])
    assert [o.outcome for o in outcomes] == ["baseline", "failed"]
    assert outcomes[1].describe() == "failed: permanent: HTTP 404"
    await check_all(service, LOOPBACK_FETCH, [missing])
    record = service.document(missing.id)
    assert (record["failures"], record["consecutive_failures"], record["captures"]) == (2, 2, 0)
    assert (record["status"], record["last_error"]) == ("failing", "permanent: HTTP 404")

    page_server.set("/gone", page(CLAUSES))
    [recovered] = await check_all(service, LOOPBACK_FETCH, [missing])
    assert recovered.outcome == "baseline"
    record = service.document(missing.id)
    assert (record["failures"], record["consecutive_failures"], record["status"]) == (2, 0, "ok")
    assert record["last_error"] is None


async def test_sync_documents_registers_once_and_records_new_titles(
        service: ClauseWatch, page_server: PageServer) -> None:
    doc = document(page_server)
    assert service.sync_documents([doc]) == [doc.id]
    assert service.sync_documents([doc]) == []
    renamed = DocumentSettings(id=doc.id, platform="Example", title="Privacy Notice",
                               url=doc.url, select="main", robots=False)
    service.sync_documents([renamed])
    assert service.document(doc.id)["title"] == "Privacy Notice"
    assert service.document(doc.id)["status"] == "pending"


def test_an_unknown_document_is_named(service: ClauseWatch, page_server: PageServer) -> None:
    doc = document(page_server)
    result = FetchResult(requested_url=doc.url, final_url=doc.url, status=200,
                         fetched_at=datetime.now(UTC), body=b"<p>x</p>")
    with pytest.raises(UnknownDocumentError, match="example/privacy"):
        service.record_fetch(doc, result)
    with pytest.raises(UnknownDocumentError, match="nobody"):
        service.clauses("nobody")


def test_retention_drops_only_unchanged_middle_captures_older_than_the_cutoff(
        service: ClauseWatch, page_server: PageServer) -> None:
    doc = document(page_server)
    service.sync_documents([doc])
    day0 = datetime(2025, 1, 1, tzinfo=UTC)
    edited = [*CLAUSES, "We may use your data to train AI models."]
    # (day, words, build): builds change the bytes, not the words.
    plan = [(0, CLAUSES, "a0"), (1, CLAUSES, "a1"), (2, CLAUSES, "a2"), (3, edited, "b0"),
            (4, edited, "b1"), (5, edited, "b2"), (9, edited, "b1"), (12, edited, "b3")]
    sha = {}
    for day, words, build in plan:
        body = page(words, build).encode()
        outcome = service.record_fetch(doc, FetchResult(
            requested_url=doc.url, final_url=doc.url, status=200,
            fetched_at=day0 + timedelta(days=day), body=body,
            content_type="text/html; charset=utf-8"))
        sha[build] = outcome.sha256
    assert [c["outcome"] for c in reversed(service.captures(doc.id))] == [
        "baseline", "unchanged", "unchanged", "changed", "unchanged", "unchanged", "unchanged",
        "unchanged"]

    # The cutoff falls on day 7: a1, a2 and b2 go. a0 is the first capture, b0 changed the
    # text, b1 is captured again on day 9 (after the cutoff), b3 is the latest.
    now = day0 + timedelta(days=12, hours=1)
    dropped = service.apply_retention(older_than=(5 * 86400) + 3600, now=now)
    assert dropped == 3
    gone = {sha["a1"], sha["a2"], sha["b2"]}
    for build, digest in sha.items():
        assert service.store.evidence.has(digest) == (digest not in gone), build
    stored = {c["sha256"]: c["bytes_stored"] for c in service.captures(doc.id)}
    assert {digest for digest, kept in stored.items() if not kept} == gone
    # Every hash is still on record, and what remains still verifies.
    assert set(stored) == set(sha.values())
    assert service.verify() == [] and service.verified_count() == 4
    assert service.apply_retention(older_than=(5 * 86400) + 3600, now=now) == 0


def test_nothing_is_dropped_before_the_retention_age(service: ClauseWatch,
                                                     page_server: PageServer) -> None:
    doc = document(page_server)
    service.sync_documents([doc])
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for day in range(5):
        service.record_fetch(doc, FetchResult(
            requested_url=doc.url, final_url=doc.url, status=200,
            fetched_at=start + timedelta(days=day), body=page(CLAUSES, str(day)).encode()))
    assert service.apply_retention(older_than=30 * 86400, now=start + timedelta(days=5)) == 0
    assert service.verified_count() == 5


def test_verify_reports_tampered_and_missing_evidence(service: ClauseWatch,
                                                      page_server: PageServer) -> None:
    import gzip

    doc = document(page_server)
    service.sync_documents([doc])
    digests = []
    for n in range(3):
        digests.append(service.record_fetch(doc, FetchResult(
            requested_url=doc.url, final_url=doc.url, status=200,
            fetched_at=datetime(2025, 1, 1 + n, tzinfo=UTC),
            body=page(CLAUSES, str(n)).encode())).sha256)
    assert service.verify() == []
    path = service.store.evidence.path(digests[0])
    path.write_bytes(gzip.compress(b"<p>We never collect anything.</p>"))
    service.store.evidence.path(digests[2]).unlink()
    problems = {p["sha256"]: p["status"] for p in service.verify()}
    assert problems == {digests[0]: "mismatch", digests[2]: "missing"}


def test_evidence_files_are_plain_gzip_and_damage_is_reported(tmp_path: Path) -> None:
    """Written with ISA-L (when installed): any gzip reader reads them; a damaged file (not
    gzip, cut short, a broken deflate stream) is unreadable, never a crash."""
    import gzip
    import hashlib

    from daemon.evidence import EvidenceError, EvidenceStore

    store = EvidenceStore(tmp_path / "evidence")
    body = page(CLAUSES, "x").encode() * 50
    sha256 = store.put(body)
    assert sha256 == hashlib.sha256(body).hexdigest()
    packed = store.path(sha256).read_bytes()
    assert gzip.decompress(packed) == body and store.get(sha256) == body
    assert len(packed) < len(body) // 5
    assert packed[4:8] == b"\0\0\0\0"  # mtime 0: the same bytes give the same file
    middle = len(packed) // 2
    for damaged in (b"not gzip at all", packed[:len(packed) - 9],
                    packed[:10] + bytes(b ^ 0xFF for b in packed[10:middle]) + packed[middle:]):
        store.path(sha256).write_bytes(damaged)
        assert store.verify(sha256).status == "unreadable"
        with pytest.raises(EvidenceError, match="cannot be read"):
            store.get(sha256)


@pytest.mark.parametrize(("first", "last", "months"), [
    ("2025-01-31T00:00:00Z", "2025-02-28T00:00:00Z", 0),
    ("2025-01-15T00:00:00Z", "2025-03-15T00:00:00Z", 2),
    ("2024-06-01T00:00:00Z", "2025-06-01T00:00:00Z", 12),
    (None, "2025-01-01T00:00:00Z", 0),
])
def test_months_monitored(first: str | None, last: str, months: int) -> None:
    assert months_between(first, last) == months


def test_stability() -> None:
    assert stability(0, 0) == "stable"
    assert stability(1, 0) == "stable"  # one change is not a pattern
    assert stability(2, 6) == "volatile"
    assert stability(2, 12) == "stable"  # twice a year: once per six months
    assert stability(3, 12) == "volatile"


def test_last_seen_follows_good_captures_and_stops_at_removal(service: ClauseWatch,
                                                              page_server: PageServer) -> None:
    doc = document(page_server)
    service.sync_documents([doc])
    start = datetime(2025, 1, 1, tzinfo=UTC)

    def capture(day: int, body: str) -> str:
        return service.record_fetch(doc, FetchResult(
            requested_url=doc.url, final_url=doc.url, status=200,
            fetched_at=start + timedelta(days=day), body=body.encode())).outcome

    assert capture(0, page(CLAUSES)) == "baseline"
    assert capture(1, page(CLAUSES, "new build")) == "unchanged"
    assert capture(2, ERROR_PAGE) == "suspect"
    assert capture(3, page(CLAUSES[:3])) == "changed"
    assert capture(4, ERROR_PAGE) == "suspect"

    rows = {c["text"]: c for c in service.clauses(doc.id)}
    removed = rows[CLAUSES[3]]
    # Last seen at the last good capture that had it (day 1), not at the error page (day 2).
    assert (removed["status"], removed["last_seen"]) == ("removed", "2025-01-02T00:00:00Z")
    # Present clauses: seen at every good capture, the error page of day 4 not counted.
    assert {rows[c]["last_seen"] for c in CLAUSES[:3]} == {"2025-01-04T00:00:00Z"}
    assert service.clause(rows[CLAUSES[0]]["id"])["last_seen"] == "2025-01-04T00:00:00Z"
    assert capture(40, page(CLAUSES[:3], "later")) == "unchanged"
    clause = service.clause(rows[CLAUSES[0]]["id"])
    assert (clause["last_seen"], clause["months_monitored"]) == ("2025-02-10T00:00:00Z", 1)
    assert service.clause(removed["id"])["last_seen"] == "2025-01-02T00:00:00Z"
