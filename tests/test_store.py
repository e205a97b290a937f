"""The event store and read views on a SQLite file and on the local PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from config.settings import DocumentSettings, StoreSettings
from daemon.fetcher import FetchResult
from daemon.service import ClauseWatch
from daemon.store import Store, StoreError, open_store
from domain.document import CaptureFacts, Document, document_uuid
from domain.extract import extract
from domain.normalize import sha256_hex

T0 = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
DOC = DocumentSettings(id="example/privacy", platform="Example", title="Privacy Policy",
                       url="https://example.test/privacy", select="main")
OTHER = DocumentSettings(id="example/terms", platform="Example", title="Terms",
                         url="https://example.test/terms")
CLAUSES = [
    "We collect your name and email address when you create an account.",
    "We use cookies to remember your preferences and measure traffic.",
    "We share data with payment processors to complete your purchases.",
    "You may request a copy of your data at any time.",
]


def page(clauses: list[str], noise: str = "") -> bytes:
    body = "".join(f"<p>{c}</p>" for c in clauses)
    return f"<html><body data-build='{noise}'><main><h1>Privacy</h1>{body}</main></body></html>" \
        .encode()


def fetched(body: bytes, hours: float, url: str = DOC.url) -> FetchResult:
    return FetchResult(requested_url=url, final_url=url, status=200,
                       fetched_at=T0 + timedelta(hours=hours), body=body,
                       content_type="text/html; charset=utf-8")


def facts(body: bytes, hours: float) -> CaptureFacts:
    """What the service would have observed, for writing events behind its back."""
    return CaptureFacts(captured_at=T0 + timedelta(hours=hours), requested_url=DOC.url,
                        final_url=DOC.url, http_status=200, content_type="text/html",
                        sha256=sha256_hex(body), size=len(body))


Opener = Callable[[], Store]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    """A store on a SQLite file, or on PostgreSQL in a fresh schema."""
    if request.param == "sqlite":
        return StoreSettings(url=f"sqlite:///{tmp_path / 'db' / 'events.db'}")
    target = request.getfixturevalue("pg_url")
    return target.store()


@pytest.fixture
def reopen(store_settings: StoreSettings, tmp_path: Path) -> Iterator[Opener]:
    """Opens the same store as often as a test likes; closes whatever is still open."""
    opened: list[Store] = []

    def open_again() -> Store:
        store = open_store(store_settings, tmp_path / "data")
        opened.append(store)
        return store

    yield open_again
    for store in opened:
        store.close()


def view_rows(service: ClauseWatch) -> dict[str, list[dict[str, Any]]]:
    """Every row of every view, in a stable order."""
    db = service.store.db
    return {
        "documents": db.query("SELECT * FROM cw_documents ORDER BY id"),
        "clauses": db.query("SELECT * FROM cw_clauses ORDER BY id"),
        "changes": db.query("SELECT * FROM cw_changes ORDER BY seq"),
        "captures": db.query("SELECT * FROM cw_captures ORDER BY seq"),
    }


def test_register_capture_and_restart(reopen: Opener) -> None:
    store = reopen()
    service = ClauseWatch(store)
    assert service.sync_documents([DOC, OTHER]) == [DOC.id, OTHER.id]
    assert service.record_fetch(DOC, fetched(page(CLAUSES), 0)).outcome == "baseline"
    edited = [*CLAUSES[:3], "You may request a copy of your data once a year."]
    outcome = service.record_fetch(DOC, fetched(page(edited), 1))
    assert (outcome.outcome, outcome.changes) == ("changed", 1)
    store.close()

    # A new process: the aggregate comes back from the events, the views from the tables.
    service = ClauseWatch(reopen())
    assert service.sync_documents([DOC, OTHER]) == []
    aggregate = service.app.repository.get(document_uuid(DOC.id))
    assert isinstance(aggregate, Document)
    assert (aggregate.captures, aggregate.clauses[-1]["text"]) == (2, edited[-1])
    record = service.document(DOC.id)
    assert (record["captures"], record["changes"], record["status"]) == (2, 1, "ok")
    assert record["first_tracked"] == "2025-06-01T08:00:00Z"
    assert record["last_updated"] == "2025-06-01T09:00:00Z"
    assert service.views.catch_up() == 0

    # And it carries on from where it was.
    assert service.record_fetch(DOC, fetched(page(edited, "x"), 2)).outcome == "unchanged"
    record = service.document(DOC.id)
    assert (record["captures"], record["changes"]) == (3, 1)
    assert record["last_verified"] == "2025-06-01T10:00:00Z"
    assert record["last_updated"] == "2025-06-01T09:00:00Z"
    [change] = service.changes(document=DOC.id)
    assert (change["kind"], change["after"]) == ("modified", edited[-1])


def test_views_catch_up_after_a_crash_without_double_counting(reopen: Opener) -> None:
    store = reopen()
    service = ClauseWatch(store)
    service.sync_documents([DOC])
    service.record_fetch(DOC, fetched(page(CLAUSES), 0))
    # Events saved, then the process dies before the views see them.
    aggregate = service.app.repository.get(document_uuid(DOC.id))
    for hour in range(1, 4):
        body = page(CLAUSES, f"build-{hour}")
        aggregate.record_capture(facts(body, hour), extract(body, select="main"))
    aggregate.record_failure(captured_at=T0 + timedelta(hours=5), requested_url=DOC.url,
                             error_kind="transient", message="timed out", http_status=None)
    service.app.save(aggregate)
    assert service.document(DOC.id)["captures"] == 1
    store.close()

    service = ClauseWatch(reopen())
    assert service.views.catch_up() == 4
    assert service.views.catch_up() == 0
    record = service.document(DOC.id)
    assert (record["captures"], record["failures"], record["status"]) == (4, 1, "failing")
    # A second reader of the same tables finds nothing left to do either.
    assert ClauseWatch(reopen()).views.catch_up() == 0
    assert service.views.position() == service.store.max_notification_id()
    assert len(service.captures(DOC.id)) == 5


def test_rebuild_gives_the_same_rows(reopen: Opener) -> None:
    service = ClauseWatch(reopen())
    service.sync_documents([DOC, OTHER])
    versions = [CLAUSES, [*CLAUSES, "New: we train models on public posts."],
                [CLAUSES[1], CLAUSES[0], *CLAUSES[2:]]]
    hour = 0
    for clauses in versions:
        for noise in ("a", "b"):
            service.record_fetch(DOC, fetched(page(clauses, noise), hour))
            hour += 24
    service.record_fetch(OTHER, fetched(b"<html><body><p>Be nice.</p></body></html>", hour,
                                        OTHER.url))
    # Retention has dropped the bytes of some captures: that must survive a rebuild too.
    assert service.apply_retention(older_than=86400, now=T0 + timedelta(days=30)) > 0
    before = view_rows(service)
    assert len(before["changes"]) >= 3 and len(before["captures"]) == 7

    assert service.views.rebuild() == service.store.max_notification_id()
    assert view_rows(service) == before
    assert service.verify() == []


@pytest.mark.postgres
def test_two_stores_on_different_schemas_do_not_see_each_other(pg_url: Any,
                                                               tmp_path: Path) -> None:
    first = open_store(pg_url.store(), tmp_path / "a")
    second = open_store(pg_url.store(pg_url.new_schema()), tmp_path / "b")
    try:
        one, two = ClauseWatch(first), ClauseWatch(second)
        one.sync_documents([DOC])
        two.sync_documents([OTHER])
        one.record_fetch(DOC, fetched(page(CLAUSES), 0))
        assert [d["id"] for d in one.documents()] == [DOC.id]
        assert [d["id"] for d in two.documents()] == [OTHER.id]
        assert first.max_notification_id() == 2 and second.max_notification_id() == 1
        assert two.app.repository.get(document_uuid(OTHER.id)).captures == 0
        assert two.changes() == [] and two.views.rebuild() == 1
    finally:
        first.close()
        second.close()


def test_an_unreachable_database_is_a_store_error(tmp_path: Path) -> None:
    settings = StoreSettings(url="postgresql://postgres@127.0.0.1:1/test", lock_timeout=1)
    with pytest.raises(StoreError, match="127.0.0.1:1/test"):
        open_store(settings, tmp_path)


def test_an_unsupported_url_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unsupported store URL"):
        open_store(StoreSettings(url="mysql://x/y"), tmp_path)


def test_events_compressed_at_the_library_default_level_read_back(tmp_path: Path) -> None:
    """Stores written before events were compressed at level 1 open and load as before."""
    from daemon.store import ClauseWatchApp, application_env

    settings = StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}")
    env = application_env(settings) | {
        "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor"}
    old = ClauseWatchApp(env=env)
    doc = Document.register(slug="old/doc", platform="P", title="T", url="https://x.test/")
    body = page(["We collect your email address.", "We keep it for a year."])
    doc.record_capture(
        CaptureFacts(captured_at=datetime(2025, 1, 1, tzinfo=UTC), requested_url=doc.url,
                     final_url=doc.url, http_status=200, content_type="text/html",
                     sha256=sha256_hex(body), size=len(body)),
        extract(body, select="main"))
    old.save(doc)
    old.close()
    store = open_store(settings, tmp_path / "data")
    try:
        assert store.app.env["COMPRESSOR_TOPIC"] == "daemon.store:FastZlibCompressor"
        loaded = store.app.repository.get(doc.id)
        assert loaded.clauses == doc.clauses and len(loaded.clauses) == 3  # h1 + 2 p
    finally:
        store.close()


def test_read_stored_gives_what_the_library_reads(reopen: Opener) -> None:
    """The views' reader (straight from SQLite's table there) and eventsourcing's agree on
    every field of every stored event, from any start and limit."""
    store = reopen()
    service = ClauseWatch(store)
    service.sync_documents([DOC, OTHER])
    for hour, clauses in enumerate((CLAUSES, CLAUSES[:3], [*CLAUSES[:3], "New clause."])):
        service.record_fetch(DOC, fetched(page(clauses, noise=str(hour)), hour))
    fields = ("id", "originator_id", "originator_version", "topic", "state")
    last = store.max_notification_id()
    assert last >= 6
    for start, limit in ((1, last), (1, 2), (3, 100), (last, 5), (last + 1, 5)):
        ours = store.read_stored(start, limit)
        theirs = store.read_notifications(start, limit)
        assert [tuple(getattr(n, f) for f in fields) for n in ours] == \
            [tuple(getattr(n, f) for f in fields) for n in theirs]
        assert len(ours) == max(0, min(limit, last - start + 1))
    if store.sqlite_path is not None:
        # On SQLite it is the direct reader (on PostgreSQL the library's, as it is).
        assert type(store.read_stored(1, 1)[0]).__name__ == "StoredRow"


def test_read_stored_on_a_relative_sqlite_path(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A store URL relative to the working directory (as the library takes it) reads too."""
    monkeypatch.chdir(tmp_path)
    store = open_store(StoreSettings(url="sqlite:///db/events.db"), tmp_path / "data")
    try:
        ClauseWatch(store).sync_documents([DOC])
        assert [row.topic for row in store.read_stored(1, 10)] == \
            [n.topic for n in store.read_notifications(1, 10)]
        assert len(store.read_stored(1, 10)) == 1
    finally:
        store.close()


@pytest.mark.postgres
def test_postgres_appends_big_batches_without_pipeline_mode(pg_url: Any, tmp_path: Path) -> None:
    """The recorder that replaces the library's pipelined append (which could hang on big
    appends): a 2 MB append of 200 aggregates gets its notification ids in order, and an
    append from a stale aggregate is still refused as a whole."""
    from eventsourcing.persistence import IntegrityError

    from daemon.postgres_recorder import PostgresRecorder

    store = open_store(pg_url.store(), tmp_path / "data")
    try:
        assert type(store.recorder) is PostgresRecorder
        app = store.app
        body = page([f"Clause {n}: " + "we keep your data " * 40 for n in range(25)])
        docs = []
        for n in range(200):
            doc = Document.register(slug=f"big/{n}", platform="P", title="T",
                                    url=f"https://x.test/{n}")
            doc.record_capture(facts(body, 1), extract(body, select="main"))
            docs.append(doc)
        before = store.max_notification_id()
        app.save(*docs)
        assert store.max_notification_id() == before + 400
        rows = store.read_notifications(before + 1, 1_000)
        assert [n.id for n in rows] == list(range(before + 1, before + 401))
        assert sum(len(n.state) for n in rows) > 50_000  # compressed; ~2 MB as JSON
        stale = app.repository.get(docs[0].id)
        docs[0].record_capture(facts(page(["Changed."]), 2), extract(page(["Changed."]),
                                                                       select="main"))
        app.save(docs[0])
        stale.record_capture(facts(page(["Other."]), 3), extract(page(["Other."]),
                                                                 select="main"))
        with pytest.raises(IntegrityError):
            app.save(stale, docs[1])
        assert store.max_notification_id() == before + 401
    finally:
        store.close()
