"""The views are the same whichever way the log is replayed: event by event, in small
batches, or by `rebuild` in big ones, on SQLite and on PostgreSQL."""

from __future__ import annotations

import gc
import json
import sqlite3
import zlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
from harness import taxonomy_with_support

from config.settings import DocumentSettings, StoreSettings
from config.taxonomy import load_taxonomy
from daemon import projections
from daemon.event_reader import ClauseDelta, InflatingReader, _Balance
from daemon.fetcher import FetchResult
from daemon.projections import NAME, VIEW_TABLES, Views, _StoredStates, iso
from daemon.service import ClauseWatch
from daemon.store import open_store
from domain.document import Document

T0 = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
DOCS = [
    DocumentSettings(id="acme/privacy", platform="Acme", title="Privacy",
                     url="https://acme.test/privacy"),
    DocumentSettings(id="acme/terms", platform="Acme", title="Terms",
                     url="https://acme.test/terms"),
    DocumentSettings(id="other/privacy", platform="Other", title="Privacy",
                     url="https://other.test/privacy"),
]
CLAUSES = [
    "We use your content to improve our services and to train our AI models.",
    "Any dispute will be resolved by binding arbitration and you waive any class action.",
    "You can contact our support team at any time.",
    "We keep your personal data for 24 months after you close your account.",
    "We share data with payment processors to complete your purchases.",
    "You may request a copy of your data at any time.",
]


@pytest.fixture
def service(store_settings: StoreSettings, tmp_path: Path) -> Iterator[ClauseWatch]:
    store = open_store(store_settings, tmp_path)
    svc = ClauseWatch(store, taxonomy=load_taxonomy())
    yield svc
    store.close()


def fetch(service: ClauseWatch, doc: DocumentSettings, clauses: list[str], hour: int) -> None:
    service.record_fetch(doc, FetchResult(
        requested_url=doc.url, final_url=doc.url, status=200,
        fetched_at=T0 + timedelta(hours=hour), body="\n\n".join(clauses).encode(),
        content_type="text/plain"))


def history(service: ClauseWatch, tmp_path: Path) -> None:
    """Clause lists, edits, removals and re-additions, unchanged and suspect captures,
    failures in a row, a new description, a reclassification and dropped evidence."""
    service.sync_documents(DOCS)
    acme, terms, other = DOCS
    hour = 0
    versions = [CLAUSES, CLAUSES, CLAUSES[:4] + ["New: we sell nothing."],
                [CLAUSES[1], CLAUSES[0], *CLAUSES[2:4]], CLAUSES[:4],
                [c.replace("24 months", "36 months") for c in CLAUSES[:4]]]
    for version in versions:
        for doc, clauses in ((acme, version), (terms, version[::-1]), (other, CLAUSES[2:])):
            fetch(service, doc, clauses, hour)
            hour += 1
        # An unchanged capture of each, then two failures of one of them.
        for doc, clauses in ((acme, version), (terms, version[::-1])):
            fetch(service, doc, clauses, hour)
            hour += 1
        service.record_failure(other, kind="transient", message="timed out")
        service.record_failure(other, kind="http", message="503", status=503)
    # Nearly all of the text gone: a suspect capture, then the good text again.
    fetch(service, acme, CLAUSES[:1], hour)
    fetch(service, acme, versions[-1], hour + 1)
    fetch(service, other, CLAUSES[2:], hour + 2)
    service.sync_documents([DocumentSettings(id=other.id, platform="Other Inc.",
                                             title="Privacy notice", url=other.url)])
    service.use_taxonomy(load_taxonomy(taxonomy_with_support(tmp_path)))
    assert sum(service.reclassify().values()) > 0
    fetch(service, other, [*CLAUSES[2:], "Write to our support team by post."], hour + 3)
    assert service.apply_retention(older_than=3600, now=T0 + timedelta(days=30)) > 0


def rows(service: ClauseWatch) -> dict[str, list[dict[str, Any]]]:
    """Every row of every view and the views' position, in a stable order (empty tables
    too: a store without a taxonomy has no category rows)."""
    db = service.store.db
    return {table: sorted(db.query(f"SELECT * FROM {table}"), key=lambda r: repr(list(r.values())))
            for table in (*VIEW_TABLES, "cw_positions")}


def test_rebuild_and_catch_up_in_any_batch_size_give_the_same_rows(
        service: ClauseWatch, tmp_path: Path) -> None:
    history(service, tmp_path)
    incremental = rows(service)  # caught up after every save, a few events at a time
    # The history has what it is meant to have.
    assert {r["outcome"] for r in incremental["cw_captures"]} == {
        "baseline", "changed", "unchanged", "suspect", "failed"}
    assert {r["status"] for r in incremental["cw_clauses"]} == {"present", "removed"}
    assert {r["cause"] for r in incremental["cw_category_changes"]} >= {"reclassify"}
    assert any(r["bytes_dropped"] for r in incremental["cw_captures"])
    assert incremental["cw_clause_categories"]
    assert {r["platform"] for r in incremental["cw_clause_categories"]} >= {"Other Inc."}
    # Each document's present clauses are those of its last good capture, in its order.
    last = [c.replace("24 months", "36 months") for c in CLAUSES[:4]]
    for doc, clauses in (("acme/privacy", last), ("acme/terms", last[::-1]),
                         ("other/privacy", [*CLAUSES[2:], "Write to our support team by post."])):
        present = sorted((c for c in service.clauses(doc) if c["status"] == "present"),
                         key=lambda c: c["position"])
        assert [(c["position"], c["text"]) for c in present] == list(enumerate(clauses)), doc
    failing = service.document("other/privacy")
    assert failing["failures"] == 12 and failing["consecutive_failures"] == 0

    events = service.store.max_notification_id()
    assert service.views.rebuild() == events
    assert rows(service) == incremental

    for size in (1, 2, 7):
        # The same log replayed by a fresh consumer in batches of `size`.
        db = service.store.db
        with db.transaction() as tx:
            for table in VIEW_TABLES:
                tx.execute(f"DELETE FROM {table}")
            tx.execute("UPDATE cw_positions SET position = 0 WHERE name = ?", (NAME,))
        views = Views(db, read=service.store.read_notifications, decode=service.store.decode,
                      batch_size=size)
        assert views.catch_up() == events
        assert rows(service) == incremental, size


def test_batches_are_sized_by_the_stored_state_they_carry(
        service: ClauseWatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """First captures carry whole clause lists: a batch of them is cut to BATCH_BYTES."""
    import daemon.projections

    history(service, tmp_path)
    incremental = rows(service)
    reads: list[int] = []
    read = service.store.read_notifications

    def counted(start: int, limit: int) -> Any:
        reads.append(limit)
        return read(start, limit)

    monkeypatch.setattr(daemon.projections, "BATCH_BYTES", 2_000)
    views = Views(service.store.db, read=counted, decode=service.store.decode, batch_size=500)
    views.rebuild()
    assert rows(service) == incremental
    # A small first read, then reads sized to what fits in 2 kB of stored state.
    assert reads[0] == daemon.projections.FIRST_READ and max(reads[1:]) < 500


def test_a_rebuild_by_another_consumer_between_batches_is_not_missed(
        service: ClauseWatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    history(service, tmp_path)
    monkeypatch.setattr(projections, "REBUILD_BATCH_SIZE", 5)
    expected = rows(service)
    store = service.store
    first = Views(store.db, read=store.read_notifications, decode=store.decode, batch_size=5)

    def read(start: int, limit: int) -> Any:
        # Once, halfway: another consumer starts a rebuild (empties the views) meanwhile.
        if 20 < start < store.max_notification_id() and not emptied:
            emptied.append(start)
            with store.db.transaction() as tx:
                for table in VIEW_TABLES:
                    tx.execute(f"DELETE FROM {table}")
                tx.execute("UPDATE cw_positions SET position = 0 WHERE name = ?", (NAME,))
        return store.read_notifications(start, limit)

    emptied: list[int] = []
    first.read = read
    assert first.rebuild() > store.max_notification_id()  # some twice
    assert emptied
    assert rows(service) == expected


def test_stored_states_read_as_the_mapper_decodes(service: ClauseWatch,
                                                  tmp_path: Path) -> None:
    history(service, tmp_path)
    store = service.store
    stored = _StoredStates.of(store.decode)
    assert stored is not None
    notifications = store.read_notifications(1, 10_000)
    topics = set()
    for notification in notifications:
        event = store.decode(notification)
        state = stored.state(notification, type(event), stored.data(notification))
        assert state is not None
        expected = dict(vars(event))
        assert state.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, datetime):
                assert isinstance(state[key], str) and iso(state[key]) == iso(value)
            else:
                assert state[key] == value, (notification.topic, key)
        topics.add(type(event).__name__)
    assert topics == {"DocumentRegistered", "DocumentCaptured", "ClauseChanged",
                      "CaptureFailed", "DocumentRedescribed", "ClausesReclassified"}


def test_a_state_with_objects_it_cannot_read_directly_is_left_to_the_mapper(
        service: ClauseWatch) -> None:
    stored = _StoredStates.of(service.store.decode)
    assert stored is not None
    transcoder = service.app.mapper.transcoder
    moment = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    captured = Document.DocumentCaptured
    notification = SimpleNamespace(originator_id=uuid4(), state=b"", originator_version=1)
    top = transcoder.encode({"captured_at": moment, "clauses": None})
    nested = transcoder.encode({"captured_at": moment, "clauses": [{"at": moment}]})
    assert stored.state(notification, captured, top) is not None
    assert stored.state(notification, captured, nested) is None
    assert stored.state(notification, captured, b"not json") is None
    # Only the store's own decode is read this way.
    assert _StoredStates.of(lambda n: service.store.decode(n)) is None


@pytest.mark.parametrize("text, expected", [
    ("2024-01-01T00:20:00+00:00", "2024-01-01T00:20:00Z"),
    ("2024-01-01T00:20:00.999999+00:00", "2024-01-01T00:20:00Z"),
    ("2024-01-01T02:20:00+02:00", "2024-01-01T00:20:00Z"),
    ("2024-01-01T00:20:00", "2024-01-01T00:20:00Z"),
])
def test_iso_reads_the_stored_text_of_a_datetime(text: str, expected: str) -> None:
    assert iso(text) == expected == iso(datetime.fromisoformat(text))


def test_documents_of_other_event_classes_are_not_read(service: ClauseWatch) -> None:
    # Snapshots are not in the notification log; an event no handler reads is skipped.
    views = service.views
    entry = views._resolve("domain.document:Document.Event")
    assert entry is not None and entry[0] is None
    assert views._resolve("no.such.module:Thing") is None


def _indexes(service: ClauseWatch) -> set[str]:
    return {r["name"] for r in service.store.db.query(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'cw_%'")}


@pytest.fixture
def sqlite_service(tmp_path: Path) -> Iterator[ClauseWatch]:
    store = open_store(StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}"), tmp_path)
    yield ClauseWatch(store, taxonomy=load_taxonomy())
    store.close()


def test_a_sqlite_rebuild_writes_without_the_indexes_no_handler_reads_then_makes_them(
        sqlite_service: ClauseWatch, tmp_path: Path) -> None:
    service = sqlite_service
    history(service, tmp_path)
    expected, before = rows(service), _indexes(service)
    assert set(projections.REBUILD_DEFERRED_INDEXES) <= before
    seen: list[set[str]] = []
    store = service.store

    def read(start: int, limit: int) -> Any:
        seen.append(_indexes(service))
        if start > 1 and not failed:
            failed.append(start)
            raise RuntimeError("the event store went away")
        return store.read_notifications(start, limit)

    failed: list[int] = []
    views = Views(store.db, read=read, decode=store.decode, batch_size=5)
    with pytest.raises(RuntimeError):
        views.rebuild()
    # Midway, the indexes were not there; a rebuild that fails still makes them again.
    assert not set(projections.REBUILD_DEFERRED_INDEXES) & seen[0]
    assert _indexes(service) == before
    assert int(store.db.scalar("PRAGMA wal_autocheckpoint")) > 0
    assert views.rebuild() == store.max_notification_id()
    assert _indexes(service) == before
    assert rows(service) == expected


def test_a_sqlite_rebuild_makes_the_deferred_indexes_first_biggest_first() -> None:
    statements = projections.schema("sqlite")
    ordered = sorted(statements, key=projections._deferred_order)
    deferred = projections.REBUILD_DEFERRED_INDEXES
    assert sorted(ordered) == sorted(statements)
    assert [s.split(" ON ")[0].split()[-1] for s in ordered[:len(deferred)]] == list(deferred)
    assert deferred[:2] == ("cw_captures_sha", "cw_captures_document")  # a row per capture


def test_a_sqlite_rebuild_gives_older_tables_rowid_sequence_numbers(
        sqlite_service: ClauseWatch, tmp_path: Path) -> None:
    service = sqlite_service
    db = service.store.db

    def table_sql(name: str) -> str:
        return str(db.scalar("SELECT sql FROM sqlite_master WHERE name = ?", (name,)))

    # An install from before: sequence numbers as BIGINT, a B-tree of their own.
    assert "seq INTEGER PRIMARY KEY" in table_sql("cw_captures")
    with db.transaction() as tx:
        for table in ("cw_captures", "cw_changes"):
            tx.execute(f"DROP TABLE {table}")
        for statement in projections.SCHEMA:
            tx.execute(statement)
    assert "seq BIGINT PRIMARY KEY" in table_sql("cw_captures")
    history(service, tmp_path)
    expected = rows(service)
    assert db.scalar("SELECT COUNT(*) FROM sqlite_master WHERE name LIKE "
                     "'sqlite_autoindex_cw_captures%'") == 1
    assert service.views.rebuild() == service.store.max_notification_id()
    assert rows(service) == expected
    for table in ("cw_captures", "cw_changes"):
        assert "seq INTEGER PRIMARY KEY" in table_sql(table)
    assert db.scalar("SELECT COUNT(*) FROM sqlite_master WHERE name LIKE "
                     "'sqlite_autoindex_cw_captures%'") == 0


@pytest.mark.parametrize("value", [
    None, [], {}, [{"id": "ai-model-training", "confidence": 0.82, "rules": ["r1", "r2"]}],
    {"b": 1, "a": [1.5, 2, "x"]}, ["données personnelles", "ü", "\u2028", "🙂"],
    [{"z": None, "a": True, "m": False}], [2**70], {"1": 1, "10": 2, "2": 3}, [1e16, 0.1, -0.0],
    [1], [1.0], [True], [float("nan")], [float("inf")],
])
def test_views_json_is_the_standard_librarys(value: Any) -> None:
    """The memoised JSON of categories and sections is json.dumps's text, also on a repeat."""
    expected = None if value is None else json.dumps(value, ensure_ascii=False,
                                                     sort_keys=True)
    assert projections._json_or_none(value) == expected
    assert projections._json_or_none(value) == expected


def _history_reader(service: ClauseWatch, tmp_path: Path) -> tuple[Any, int, InflatingReader]:
    """The store after history(), its last event's id, and a reader of it."""
    history(service, tmp_path)
    store = service.store
    reader = store.inflating_reader()
    assert reader is not None
    return store, store.max_notification_id(), reader


def test_the_inflating_reader_gives_what_the_store_holds(sqlite_service: ClauseWatch,
                                                        tmp_path: Path) -> None:
    store, last, reader = _history_reader(sqlite_service, tmp_path)
    with reader:
        reader.start(1, 7)
        for start, size in ((1, 7), (8, 3), (11, last), (5, 2), (last + 1, 10)):
            # (5, 2) was not asked for ahead: what was read ahead is dropped.
            rows, datas, marks, stored, made = reader.take(start, size)
            expected = store.read_stored(start, size)
            assert made is None  # not asked to make capture rows
            assert [r[:4] for r in rows] == [r[:4] for r in expected]
            assert all(r.state is None for r in rows)
            assert datas == [zlib.decompress(r.state) for r in expected]
            assert marks == [d.count(b'"_type_"') for d in datas]
            assert stored == sum(len(r.state) for r in expected)
            if rows:
                reader.start(rows[-1].id + 1, 3)


def test_the_inflating_reader_reads_on_as_the_views_will_ask(sqlite_service: ClauseWatch,
                                                             tmp_path: Path) -> None:
    store, last, reader = _history_reader(sqlite_service, tmp_path)
    reader.sizing = (5, 2**30)  # batches of 5, whatever they hold
    taken: list[int] = []
    with reader:
        start, size = 1, 3
        while True:
            rows, datas, *_ = reader.take(start, size)
            if not rows:
                break
            assert [r.id for r in rows] == list(range(start, min(start + size, last + 1)))
            assert datas == [zlib.decompress(r.state) for r in store.read_stored(start, size)]
            taken += [r.id for r in rows]
            start, size = rows[-1].id + 1, 5
        # One request: every batch after the first came as the views asked for it.
        assert reader._generation == 1
        # Asked for another batch than the one coming: what came for the first is dropped.
        rows, *_ = reader.take(2, 4)
        assert [r.id for r in rows] == [2, 3, 4, 5]
        rows, *_ = reader.take(6, 5)
        assert [r.id for r in rows] == [6, 7, 8, 9, 10]
        assert reader._generation == 2
    assert taken == list(range(1, last + 1))


def test_the_child_makes_the_rows_of_plain_captures_as_the_views_do(
        sqlite_service: ClauseWatch, tmp_path: Path) -> None:
    service = sqlite_service
    history(service, tmp_path)
    store = service.store
    expected = {row["seq"]: tuple(row.values()) for row in
                store.db.query("SELECT * FROM cw_captures")}
    lists = {r.id: json.loads(zlib.decompress(r.state))["clauses"]
             for r in store.read_stored(1, store.max_notification_id())
             if r.topic.endswith("DocumentCaptured")}
    reader = store.inflating_reader()
    assert reader is not None
    reader.rows = service.views._capture_rows()
    with reader:
        events, datas, _, _, made = reader.take(1, store.max_notification_id())
    assert made is not None and len(made) == len(events)
    kinds: dict[str, int] = {}
    last: dict[Any, int] = {}  # document -> seq of its last clause list
    for event, data, row in zip(events, datas, made):
        event_type = event.topic.rsplit(".", 1)[-1]
        if event_type == "DocumentCaptured" and lists[event.id] is not None:
            base, last[event.originator_id] = last.get(event.originator_id), event.id
        if isinstance(row, ClauseDelta):
            assert data is None
            assert row.row == expected[event.id]
            # The document's previous list, with the clauses sent, is this one.
            assert row.base == base
            clauses = list(lists[base][:row.length])
            for position, clause in row.changed:
                clauses[position:position + 1] = [clause]
            assert clauses == lists[event.id]
            kinds["delta"] = kinds.get("delta", 0) + 1
            if len(row.changed) < row.length:
                kinds["partial"] = kinds.get("partial", 0) + 1
        elif row is not None:
            assert data is None  # the state is not sent as well
            assert row == expected[event.id]
            kinds["made"] = kinds.get("made", 0) + 1
        else:
            assert data is not None
            if event_type == "DocumentCaptured":
                # A document's first clause list: sent whole, as the views decode it.
                assert json.loads(data)["clauses"] is not None and base is None
            kinds[event_type] = kinds.get(event_type, 0) + 1
    # Unchanged, suspect and evidence-dropped captures are made in the child; later clause
    # lists come as changes; first ones, failures, registrations and clause changes are
    # left as they were.
    assert kinds["made"] > kinds["delta"] > kinds["DocumentCaptured"] > 0
    assert kinds["partial"] > 0  # a few clauses of a list, not all of them
    assert {"CaptureFailed", "ClauseChanged", "DocumentRegistered"} <= set(kinds)
    made_rows = [row for row in made if type(row) is tuple]
    assert {row[4] for row in made_rows} >= {"unchanged", "suspect"}
    assert any(row[13] for row in made_rows)  # bytes dropped by retention


def test_a_rebuild_applies_clause_lists_sent_as_changes_or_reads_them_whole(
        sqlite_service: ClauseWatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service = sqlite_service
    history(service, tmp_path)
    expected = rows(service)
    apply = Views._on_clause_delta
    applied: list[bool] = []

    def on_clause_delta(self: Views, batch: Any, seq: int, delta: ClauseDelta) -> bool:
        applied.append(apply(self, batch, seq, delta))
        return applied[-1]

    monkeypatch.setattr(Views, "_on_clause_delta", on_clause_delta)
    assert service.views.rebuild() == service.store.max_notification_id()
    assert rows(service) == expected
    # The reclassification in the history let go of what the views held: the next list
    # of each document was read whole; the others were applied as sent.
    assert True in applied and False in applied

    # A consumer that holds nothing of what the lists were made from (its clauses let go
    # after every batch) reads every one of them whole, to the same rows.
    applied.clear()
    monkeypatch.setattr(projections, "REBUILD_CLAUSES_KEPT", 0)
    # Batches of 3 events: most lists come after the batch of the one before has ended.
    monkeypatch.setattr(service.views, "batch_size", 3)
    monkeypatch.setattr(projections, "REBUILD_BATCH_SIZE", 3)
    assert service.views.rebuild() == service.store.max_notification_id()
    assert rows(service) == expected
    assert applied and not any(applied)


def test_a_clause_list_the_child_did_not_read_is_not_the_base_of_the_next_one(
        sqlite_service: ClauseWatch, tmp_path: Path) -> None:
    service = sqlite_service
    history(service, tmp_path)
    expected = rows(service)
    store = service.store
    # A middle clause list of a document, stored as an older class version writes it: the
    # views upcast it, the child leaves it to them (and so never holds it).
    lists = [r for r in store.read_stored(1, store.max_notification_id())
             if r.topic.endswith("DocumentCaptured")
             and json.loads(zlib.decompress(r.state))["clauses"] is not None]
    ours = [r for r in lists if r.originator_id == lists[0].originator_id]
    assert len(ours) >= 3
    middle = ours[len(ours) // 2]
    state = json.loads(zlib.decompress(middle.state))
    assert state["class_version"] == 2
    state["class_version"] = 1
    sqlite = sqlite3.connect(tmp_path / "events.db")  # the sqlite_service fixture's
    with sqlite:
        sqlite.execute("UPDATE stored_events SET state = ? WHERE rowid = ?",
                       (zlib.compress(json.dumps(state).encode()), middle.id))
    sqlite.close()
    # The next list comes as a change from the one before the middle one: not from what
    # the views hold, so they read it whole.
    assert service.views.rebuild() == store.max_notification_id()
    assert rows(service) == expected


@pytest.mark.parametrize("leave", [1.0, 0.5])
def test_plain_captures_the_child_leaves_to_the_views_give_the_same_rows(
        sqlite_service: ClauseWatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        leave: float) -> None:
    service = sqlite_service
    history(service, tmp_path)
    expected = rows(service)
    store = service.store
    spec = replace(service.views._capture_rows(), leave=leave)
    reader = store.inflating_reader()
    assert reader is not None
    reader.rows = spec
    with reader:
        events, datas, _, _, made = reader.take(1, store.max_notification_id())
    assert made is not None
    stored = {r.id: json.loads(zlib.decompress(r.state))
              for r in store.read_stored(1, store.max_notification_id())}
    plain = [(row, data) for event, data, row in zip(events, datas, made)
             if event.topic.endswith("DocumentCaptured") and stored[event.id]["clauses"] is None]
    left = [data for row, data in plain if row is None]
    # Left as they are (for the views to decode), or made: as many as asked.
    assert len(left) == pytest.approx(len(plain) * leave, abs=1)
    assert all(data is not None for data in left)
    assert len(plain) > 10

    monkeypatch.setattr(Views, "_capture_rows", lambda self: spec)
    plain_row = Views._plain_row
    made_here: list[Any] = []

    def counted(self: Views, *args: Any) -> Any:
        made_here.append(plain_row(self, *args))
        return made_here[-1]

    monkeypatch.setattr(Views, "_plain_row", counted)
    assert service.views.rebuild() == store.max_notification_id()
    assert rows(service) == expected
    # The views made the rows of those left, as the child would have.
    assert sum(row is not None for row in made_here) == len(left)


def test_the_share_left_to_the_views_follows_who_waits() -> None:
    balance = _Balance()
    shares = [balance.after(waited) for waited in (True,) * 30 + (False,) * 3]
    assert shares[0] == pytest.approx(_Balance.STEP)
    assert max(shares) == 1.0  # never more than all of them
    assert shares[-1] == pytest.approx(1.0 - 3 * _Balance.STEP)
    assert [balance.after(False) for _ in range(30)][-1] == 0.0


def test_the_inflating_reader_says_why_it_cannot_read(tmp_path: Path) -> None:
    with (InflatingReader(tmp_path / "missing.db", "stored_events", True) as reader,
          pytest.raises(RuntimeError, match="event reader process failed.*unable to open")):
        reader.take(1, 10)


def test_a_rebuild_through_the_child_reads_again_what_it_cannot_parse_directly(
        sqlite_service: ClauseWatch, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    service = sqlite_service
    history(service, tmp_path)
    expected = rows(service)
    parse = _StoredStates.state
    left: list[str] = []

    def state(self: _StoredStates, notification: Any, cls: type, data: bytes | None,
              marked: int | None = None) -> Any:
        if cls.__name__ in ("ClauseChanged", "DocumentRegistered"):
            left.append(cls.__name__)
            return None  # as for a state orjson refuses: the mapper decodes it
        return parse(self, notification, cls, data, marked)

    monkeypatch.setattr(_StoredStates, "state", state)
    db = service.store.db
    db.query("PRAGMA secure_delete = 1")
    assert service.views.rebuild() == service.store.max_notification_id()
    assert set(left) == {"ClauseChanged", "DocumentRegistered"}
    assert rows(service) == expected
    # What the rebuild changed for itself is as it was.
    assert int(db.scalar("PRAGMA secure_delete")) == 1
    assert gc.isenabled()


def test_the_inflating_reader_stops_cleanly_and_says_when_its_child_died(
        sqlite_service: ClauseWatch, tmp_path: Path) -> None:
    service = sqlite_service
    history(service, tmp_path)
    last = service.store.max_notification_id()
    reader = service.store.inflating_reader()
    assert reader is not None
    with reader:
        reader.start(1, last)  # a batch asked for and never taken
    assert reader._process.exitcode == 0  # it stopped by itself, not killed

    reader = service.store.inflating_reader()
    assert reader is not None
    with reader:
        rows, *_ = reader.take(1, 5)
        assert [row.id for row in rows] == [1, 2, 3, 4, 5]
        reader._process.kill()
        reader._process.join()
        with pytest.raises(RuntimeError, match="ended unexpectedly"):
            reader.take(6, 5)
