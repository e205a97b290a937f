"""The read side: documents, clauses, changes and captures, derived from the event log.

Each batch of events and the consumer's position are written in one transaction, so a crash
or restart never counts an event twice or skips one; `rebuild` replays the whole log.
"""

from __future__ import annotations

import gc
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from eventsourcing.persistence import JSONTranscoder, find_id_convertor
from eventsourcing.utils import resolve_topic

from daemon.sql import Database, Transaction
from daemon.transcoder import FastJSONTranscoder
from daemon.view_rows import MARK, Drops, capture_row, iso, next_batch_size, plain_capture_row

if TYPE_CHECKING:
    from daemon.event_reader import CaptureRows, ClauseDelta, InflatingReader

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS cw_positions (
        name TEXT PRIMARY KEY, position BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS cw_documents (
        id TEXT PRIMARY KEY, record_no INTEGER NOT NULL, platform TEXT NOT NULL,
        title TEXT NOT NULL, url TEXT NOT NULL, first_tracked TEXT, last_verified TEXT,
        last_updated TEXT, last_captured TEXT, last_success TEXT, captures INTEGER NOT NULL,
        changes INTEGER NOT NULL, failures INTEGER NOT NULL,
        consecutive_failures INTEGER NOT NULL, status TEXT NOT NULL, last_error TEXT,
        sha256 TEXT, aggregate_id TEXT NOT NULL)""",
    # Events name their aggregate, not the document: a consumer starting afresh looks up
    # every document by it (a scan each made the first catch-up of 10,000 documents O(n^2)).
    "CREATE INDEX IF NOT EXISTS cw_documents_aggregate ON cw_documents (aggregate_id)",
    # last_seen and last_sha256 are written when a clause is added or removed; while it is
    # present, its document's last good capture is the truth (see CLAUSE_COLUMNS).
    # categories: the clause's categories as JSON, NULL while it has never been classified.
    """CREATE TABLE IF NOT EXISTS cw_clauses (
        id TEXT PRIMARY KEY, record_no INTEGER NOT NULL, document TEXT NOT NULL,
        position INTEGER NOT NULL, section TEXT NOT NULL, text TEXT NOT NULL,
        kind TEXT NOT NULL, first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,
        changes INTEGER NOT NULL, status TEXT NOT NULL, removed_at TEXT,
        first_sha256 TEXT, last_sha256 TEXT, categories TEXT)""",
    "CREATE INDEX IF NOT EXISTS cw_clauses_document ON cw_clauses (document, status, position)",
    # Each new clause takes the next record number: MAX() must not scan every clause.
    "CREATE INDEX IF NOT EXISTS cw_clauses_record_no ON cw_clauses (record_no)",
    """CREATE TABLE IF NOT EXISTS cw_changes (
        seq BIGINT PRIMARY KEY, event_id TEXT NOT NULL, document TEXT NOT NULL,
        clause TEXT NOT NULL, kind TEXT NOT NULL, section TEXT NOT NULL, before TEXT,
        after TEXT, patch TEXT NOT NULL, similarity REAL NOT NULL, captured_at TEXT NOT NULL,
        sha256 TEXT NOT NULL, categories_before TEXT, categories_after TEXT)""",
    "CREATE INDEX IF NOT EXISTS cw_changes_document ON cw_changes (document, seq)",
    "CREATE INDEX IF NOT EXISTS cw_changes_clause ON cw_changes (clause, seq)",
    "CREATE INDEX IF NOT EXISTS cw_changes_time ON cw_changes (captured_at)",
    """CREATE TABLE IF NOT EXISTS cw_captures (
        seq BIGINT PRIMARY KEY, event_id TEXT NOT NULL, document TEXT NOT NULL,
        captured_at TEXT NOT NULL, outcome TEXT NOT NULL, http_status INTEGER,
        sha256 TEXT, size INTEGER, text_sha256 TEXT, final_url TEXT, content_type TEXT,
        reason TEXT, changes INTEGER NOT NULL, bytes_dropped INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS cw_captures_document ON cw_captures (document, seq)",
    "CREATE INDEX IF NOT EXISTS cw_captures_sha ON cw_captures (sha256)",
    # One row per present clause and category it falls under: rarity ("N of M platforms")
    # and "how other platforms handle this" are queries on it.
    """CREATE TABLE IF NOT EXISTS cw_clause_categories (
        clause TEXT NOT NULL, document TEXT NOT NULL, platform TEXT NOT NULL,
        category TEXT NOT NULL, name TEXT NOT NULL, severity TEXT NOT NULL,
        confidence REAL NOT NULL, PRIMARY KEY (clause, category))""",
    ("CREATE INDEX IF NOT EXISTS cw_clause_categories_category "
     "ON cw_clause_categories (category, platform)"),
    ("CREATE INDEX IF NOT EXISTS cw_clause_categories_document "
     "ON cw_clause_categories (document)"),
    # A clause starting or ceasing to fall under a category: by an edit of its text
    # (cause 'capture') or by a new taxonomy (cause 'reclassify'). JSON lists of ids.
    """CREATE TABLE IF NOT EXISTS cw_category_changes (
        seq BIGINT NOT NULL, clause TEXT NOT NULL, document TEXT NOT NULL, at TEXT NOT NULL,
        cause TEXT NOT NULL, taxonomy_version TEXT, before TEXT, after TEXT,
        added TEXT NOT NULL, removed TEXT NOT NULL, PRIMARY KEY (seq, clause))""",
    ("CREATE INDEX IF NOT EXISTS cw_category_changes_clause "
     "ON cw_category_changes (clause, seq)"),
    # Bytes the retention policy deleted: not derived from events, so `rebuild` keeps it and
    # re-marks the captures it covers (those captured before the drop).
    """CREATE TABLE IF NOT EXISTS cw_evidence_dropped (
        sha256 TEXT PRIMARY KEY, dropped_at TEXT NOT NULL)""",
    # The last re-hash of each capture's stored bytes (citations show it): not derived from
    # events either, so `rebuild` keeps it.
    """CREATE TABLE IF NOT EXISTS cw_evidence_checks (
        sha256 TEXT PRIMARY KEY, status TEXT NOT NULL, actual TEXT, checked_at TEXT NOT NULL)""",
)
VIEW_TABLES = ("cw_documents", "cw_clauses", "cw_changes", "cw_captures",
               "cw_clause_categories", "cw_category_changes")


def schema(dialect: str) -> tuple[str, ...]:
    """SCHEMA as this database creates it. On SQLite a capture's or change's sequence number
    is the table's rowid (only INTEGER PRIMARY KEY is: BIGINT made a second B-tree that
    every insert also wrote); `rebuild` makes the tables of older installs anew so."""
    if dialect != "sqlite":
        return SCHEMA
    return tuple(s.replace("seq BIGINT PRIMARY KEY", "seq INTEGER PRIMARY KEY") for s in SCHEMA)


# Schema version 2 added the category columns to tables version 1 created (the new tables
# are created above); old events carry no categories, so nothing needs replaying.
MIGRATION_V2 = (
    "ALTER TABLE cw_clauses ADD COLUMN categories TEXT",
    "ALTER TABLE cw_changes ADD COLUMN categories_before TEXT",
    "ALTER TABLE cw_changes ADD COLUMN categories_after TEXT",
)
# How to read clauses: `SELECT {CLAUSE_COLUMNS} FROM cw_clauses c JOIN cw_documents d ...`.
# A present clause was last seen at its document's last good capture: derived here, because
# writing it into every clause row at every capture cost captures x clauses row updates
# (a rebuild of 20,000 events took minutes on PostgreSQL).
CLAUSE_COLUMNS = (
    "c.id, c.record_no, c.document, c.position, c.section, c.text, c.kind, c.first_seen, "
    "c.changes, c.status, c.removed_at, c.first_sha256, c.categories, "
    "CASE WHEN c.status = 'present' THEN d.last_verified ELSE c.last_seen END AS last_seen"
)
NAME = "views"

Decoder = Callable[[Any], Any]
Reader = Callable[[int, int], Sequence[Any]]
# An event as the handlers read it: its fields by name, as the domain event's __dict__ holds
# them, except that a datetime may still be the ISO text the event store keeps (see iso()).
State = dict[str, Any]
Handler = Callable[["_Batch", int, State], None]

# Events per transaction: a rebuild replays the whole log, so it takes bigger bites.
BATCH_SIZE = 2_000
REBUILD_BATCH_SIZE = 20_000
# ... but no more than about this much stored (compressed) event state per batch: a clause
# list is ~20 kB stored and ~30 times that once decoded, and the next batch is read ahead.
BATCH_BYTES = 4 * 2**20
FIRST_READ = 100
# A pending document update, composed from consecutive captures and failures (see _DocDelta).
_UPDATE_DOCUMENT = """UPDATE cw_documents SET
      first_tracked = COALESCE(first_tracked, ?),
      last_verified = CASE WHEN ? THEN ? ELSE last_verified END,
      last_updated = COALESCE(?, last_updated),
      last_captured = ?,
      last_success = CASE WHEN ? THEN ? ELSE last_success END,
      captures = captures + ?, changes = changes + ?, failures = failures + ?,
      consecutive_failures = CASE WHEN ? THEN ? ELSE consecutive_failures + ? END,
      status = ?, last_error = ?,
      sha256 = CASE WHEN ? THEN ? ELSE sha256 END
    WHERE id = ?"""
_INSERT_CAPTURE = """INSERT INTO cw_captures (seq, event_id, document, captured_at, outcome,
      http_status, sha256, size, text_sha256, final_url, content_type, reason, changes,
      bytes_dropped) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_INSERT_CHANGE = """INSERT INTO cw_changes (seq, event_id, document, clause, kind, section,
      before, after, patch, similarity, captured_at, sha256, categories_before,
      categories_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""
_INSERT_CATEGORY_CHANGE = """INSERT INTO cw_category_changes (seq, clause, document, at, cause,
      taxonomy_version, before, after, added, removed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
      ON CONFLICT (seq, clause) DO NOTHING"""
_INSERT_CLAUSE = """INSERT INTO cw_clauses (id, record_no, document, position, section, text,
      kind, first_seen, last_seen, changes, status, first_sha256, last_sha256, categories)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 'present', ?, ?, ?)"""
# A rebuild keeps the present clauses of up to this many documents' worth of clauses from one
# batch to the next (~0.5 kB each), rather than read them again at each clause list.
REBUILD_CLAUSES_KEPT = 250_000
# SQLite's page cache while rebuilding, in KiB: the views' indexes are written all over.
REBUILD_SQLITE_CACHE_KIB = 65_536
# Indexes no event handler reads, dropped while SQLite rebuilds and made again at the end: one
# sort of a full table beats keeping a random-order index up to date row by row. (Were the
# rebuild killed midway, opening the views creates them again: SCHEMA says IF NOT EXISTS.)
# cw_captures_document is read by one handler, for a removed clause's last good capture: a
# rebuild knows that from the captures it has replayed (Views._last_good). Made in this
# order, the biggest first (see Views.rebuild).
REBUILD_DEFERRED_INDEXES = ("cw_captures_sha", "cw_captures_document", "cw_changes_clause",
                            "cw_changes_time", "cw_clause_categories_category",
                            "cw_category_changes_clause")
_GOOD_OUTCOMES = ("baseline", "changed", "unchanged")
_SECTIONS_CACHED = 20_000


class _DocDelta:
    """The effect on one cw_documents row of consecutive captures and failures, so that a
    batch writes each document once: the same columns as one UPDATE per event would leave."""

    __slots__ = ("first", "good", "good_at", "updated", "captured", "captures", "changes",
                 "failures", "reset", "consecutive", "status", "error", "sha_set", "sha")

    def __init__(self) -> None:
        self.first: str | None = None
        self.good = False
        self.good_at: str | None = None
        self.updated: str | None = None
        self.captured: str | None = None
        self.captures = self.changes = self.failures = self.consecutive = 0
        self.reset = False
        self.status: str | None = None
        self.error: str | None = None
        self.sha_set = False
        self.sha: str | None = None

    def params(self, slug: str) -> tuple[Any, ...]:
        return (self.first, self.good, self.good_at, self.updated, self.captured, self.good,
                self.good_at, self.captures, self.changes, self.failures, self.reset,
                self.consecutive, self.consecutive, self.status, self.error, self.sha_set,
                self.sha, slug)


class _Present(dict[str, tuple[Any, ...]]):
    """A document's present clauses, as in cw_clauses: id -> (position, section, text, kind,
    categories). `applied` is the seq and the clause ids of the clause list that made them,
    while nothing else has touched them: a rebuild's reader sends a clause list as what
    changed from that one (see ClauseDelta)."""

    __slots__ = ("applied",)

    def __init__(self, rows: Iterable[tuple[str, tuple[Any, ...]]] = ()) -> None:
        super().__init__(rows)
        self.applied: tuple[int, list[str]] | None = None


class _Batch:
    """One transaction of catch-up: writes held back to be sent together, and what the
    batch has read. Nothing here outlives the transaction."""

    def __init__(self, tx: Transaction,
                 present: dict[str, _Present] | None = None) -> None:
        self.tx = tx
        self.captures: list[tuple[Any, ...]] = []
        self.changes: list[tuple[Any, ...]] = []
        self.category_changes: list[tuple[Any, ...]] = []
        self.counted: list[tuple[str]] = []  # clause ids whose change count goes up by one
        self.docs: dict[str, _DocDelta] = {}
        # Each document's present clauses, read at its first clause list in the batch (or
        # kept from the last batch, see Views._clauses): id -> (position, section, text,
        # kind, categories), as in cw_clauses.
        self.present: dict[str, _Present] = {} if present is None else present
        self.drops = Drops(tx.rows)

    def flush_writes(self) -> None:
        """Send the held-back inserts (captures, changes) and change counts."""
        tx = self.tx
        if self.captures:
            tx.executemany(_INSERT_CAPTURE, self.captures)
            self.captures = []
        if self.changes:
            tx.executemany(_INSERT_CHANGE, self.changes)
            self.changes = []
        if self.category_changes:
            tx.executemany(_INSERT_CATEGORY_CHANGE, self.category_changes)
            self.category_changes = []
        if self.counted:
            tx.executemany("UPDATE cw_clauses SET changes = changes + 1 WHERE id = ?",
                           self.counted)
            self.counted = []

    def flush_document(self, slug: str) -> None:
        delta = self.docs.pop(slug, None)
        if delta is not None:
            self.tx.execute(_UPDATE_DOCUMENT, delta.params(slug))

    def flush(self) -> None:
        self.flush_writes()
        if self.docs:
            self.tx.executemany(_UPDATE_DOCUMENT,
                                [delta.params(slug) for slug, delta in self.docs.items()])
            self.docs = {}


class _Direct:
    """Reads each batch when it is wanted, in this thread (SQLite; see _ReadAhead)."""

    def __init__(self, read: Reader) -> None:
        self.read = read

    def __enter__(self) -> _Direct:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start(self, start: int, size: int) -> None:
        pass

    def take(self, start: int, size: int
             ) -> tuple[Sequence[Any], Sequence[bytes | None] | None, None, int, None]:
        notifications = self.read(start, size)
        return notifications, None, None, sum(len(n.state) for n in notifications), None


class _ReadAhead(_Direct):
    """On PostgreSQL: reads (and inflates) the next batch in a thread while this one is
    written, the thread mostly waiting for the server (a 200,000-event rebuild ~7 % faster
    than without). On SQLite the reads hold the GIL and the two threads slowed each other
    down (a million events in 33.9 s, 31.2 s without)."""

    def __init__(self, read: Reader, stored: _StoredStates | None) -> None:
        super().__init__(read)
        self.stored = stored
        self.pool: ThreadPoolExecutor | None = None
        self.pending: tuple[int, int, Future[Any]] | None = None

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def start(self, start: int, size: int) -> None:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="views-read-ahead")
        self.pending = (start, size, self.pool.submit(self._read, start, size))

    def take(self, start: int, size: int
             ) -> tuple[Sequence[Any], Sequence[bytes | None] | None, None, int, None]:
        """The events from `start` on: read ahead if that was where it read from."""
        pending, self.pending = self.pending, None
        if pending is not None:
            if pending[:2] == (start, size):
                return pending[2].result()  # type: ignore[no-any-return]
            pending[2].cancel()
        return super().take(start, size)

    def _read(self, start: int, size: int
              ) -> tuple[Sequence[Any], list[bytes | None] | None, None, int, None]:
        notifications = self.read(start, size)
        stored = self.stored
        datas = [stored.data(n) for n in notifications] if stored is not None else None
        return notifications, datas, None, sum(len(n.state) for n in notifications), None


class Views:
    """The projection of the event log into query tables."""

    def __init__(self, db: Database, *, read: Reader, decode: Decoder,
                 batch_size: int = BATCH_SIZE,
                 inflating: Callable[[], InflatingReader | None] | None = None) -> None:
        self.db = db
        self.read = read
        # For a rebuild: a reader that reads and inflates ahead in another process.
        self.inflating = inflating
        self.decode = decode
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._slugs: dict[Any, str] = {}
        self._event_ids: dict[Any, str] = {}
        self._sections: dict[tuple[str, ...], str] = {}
        # topic -> (handler or None, event class); see _apply_batch.
        self._topics: dict[str, tuple[Handler | None, type]] = {}
        self._stored = _StoredStates.of(decode)
        # During a rebuild: the present clauses as of the position they were written at.
        self._clauses: dict[str, _Present] | None = None
        self._clauses_at = -1
        # During a rebuild: each document's last good capture so far (slug -> sha256).
        self._last_good: dict[str, str | None] | None = None
        # During a rebuild through the reader process: the capture topic and class version
        # of the plain captures it may leave to the views (see _plain_row).
        self._plain: tuple[str, int] | None = None
        db.executescript(schema(db.dialect))
        db.execute("INSERT INTO cw_positions (name, position) VALUES (?, 0) "
                   "ON CONFLICT (name) DO NOTHING", (NAME,))

    def position(self, name: str = NAME) -> int:
        """The last notification id this consumer has processed."""
        return int(self.db.scalar("SELECT position FROM cw_positions WHERE name = ?", (name,))
                   or 0)

    def catch_up(self, batch_size: int | None = None) -> int:
        """Process every event not yet seen; returns how many were processed."""
        with self._lock:
            return self._catch_up(batch_size or self.batch_size, self._reader())

    def _reader(self) -> _Direct:
        if self.db.dialect == "postgres":
            return _ReadAhead(self.read, self._stored)
        return _Direct(self.read)

    def _catch_up(self, limit: int, ahead: _Direct | InflatingReader) -> int:
        done = 0
        # A first small read learns how big this log's events are (see BATCH_BYTES).
        size = min(limit, FIRST_READ)
        while True:
            position = self.position()
            notifications, datas, marks, stored, made = ahead.take(position + 1, size)
            if not notifications:
                return done
            full = len(notifications) == size
            # Bounded memory: a batch of first captures carries hundreds of clauses each, so
            # the next batch is sized to about BATCH_BYTES of stored state.
            size = next_batch_size(limit, len(notifications), stored, BATCH_BYTES)
            if full:
                # Probably more to come: read the next batch while this one is written.
                ahead.start(notifications[-1].id + 1, size)
            # Clauses kept from the last batch are good if nobody wrote since it committed
            # (see _apply_batch); not after a failed commit.
            kept_at, self._clauses_at = self._clauses_at, -1
            with self.db.transaction() as tx:
                # Another replica may have moved the position since we read it; on
                # PostgreSQL the row lock makes a second consumer wait, then skip.
                lock = " FOR UPDATE" if self.db.dialect == "postgres" else ""
                current = int(tx.scalar("SELECT position FROM cw_positions WHERE name = ?"
                                        + lock, (NAME,)) or 0)
                if current < position:
                    # Moved back (a rebuild elsewhere): read again from there.
                    continue
                fresh = [n for n in notifications if n.id > current]
                if fresh:
                    if datas is not None:
                        datas = datas[len(notifications) - len(fresh):]
                    if marks is not None:
                        marks = marks[len(notifications) - len(fresh):]
                    if made is not None:
                        made = made[len(notifications) - len(fresh):]
                    self._apply_batch(tx, fresh, datas, marks, made, fresh=kept_at == current)
                    _save_position(tx, NAME, fresh[-1].id)
            done += len(fresh)
            if fresh:
                self._clauses_at = fresh[-1].id

    def rebuild(self) -> int:
        """Empty the views and replay the whole event log."""
        sqlite = self.db.dialect == "sqlite"
        collecting = gc.isenabled()
        restore: list[str] = []
        try:
            with ExitStack() as stack:
                # The reader's process starts, and reads the first batch, while the views are
                # emptied (the evidence tables it reads are kept).
                reader = (self.inflating() if self.inflating is not None
                          and self._stored is not None else None)
                limit = max(self.batch_size, REBUILD_BATCH_SIZE)
                if reader is not None:
                    reader.sizing = (limit, BATCH_BYTES)
                    if sqlite:
                        reader.rows = self._capture_rows()
                        self._plain = (reader.rows.captured_topic, reader.rows.class_version)
                    stack.enter_context(reader).start(1, min(limit, FIRST_READ))
                if sqlite:
                    restore = [f"PRAGMA {name} = {int(self.db.scalar(f'PRAGMA {name}'))}"
                               for name in ("cache_size", "wal_autocheckpoint", "secure_delete")]
                    self.db.query(f"PRAGMA cache_size = -{REBUILD_SQLITE_CACHE_KIB}")
                    # One checkpoint at the end rather than one per batch, each copying (and
                    # syncing) pages the next batch writes again.
                    self.db.query("PRAGMA wal_autocheckpoint = 0")
                    # Debian's SQLite overwrites deleted content with zeros: emptying the views of
                    # a million captures took ~2 s of writing. (They hold what public pages said.)
                    self.db.query("PRAGMA secure_delete = OFF")
                with self._lock, self.db.transaction() as tx:
                    for table in VIEW_TABLES:
                        # SQLite: made anew (faster than deleting every row, and an older
                        # install's tables take today's shape); in one transaction, so a reader
                        # sees the old rows or the empty tables, never no table.
                        tx.execute(f"DROP TABLE {table}" if sqlite else f"DELETE FROM {table}")
                    if sqlite:
                        for statement in schema(self.db.dialect):
                            tx.execute(statement)
                    tx.execute("UPDATE cw_positions SET position = 0 WHERE name = ?", (NAME,))
                if sqlite:
                    self.db.executescript([f"DROP INDEX IF EXISTS {name}"
                                           for name in REBUILD_DEFERRED_INDEXES])
                self._clauses, self._clauses_at, self._last_good = {}, 0, {}
                # The replay makes millions of short-lived dicts and tuples and no reference
                # cycles: the cyclic collector's passes over them were ~9 % of a rebuild's time.
                gc.disable()
                ahead = reader or stack.enter_context(self._reader())
                with self._lock:
                    return self._catch_up(limit, ahead)
        finally:
            if collecting:
                gc.enable()
            self._clauses, self._clauses_at, self._last_good = None, -1, None
            self._plain = None
            if sqlite:
                # While the deferred indexes are made, each in a transaction of its own,
                # another connection copies what was committed into the database file
                # (SQLite lets both threads run): the last checkpoint has little left.
                made = threading.Event()
                copying = threading.Thread(target=_checkpoint, args=(self.db.url, made),
                                           name="views-checkpoint", daemon=True)
                copying.start()
                try:
                    # The deferred indexes, biggest first (REBUILD_DEFERRED_INDEXES' order):
                    # each one's pages are copied while the next ones are made.
                    for statement in sorted(schema(self.db.dialect), key=_deferred_order):
                        self.db.execute(statement)
                finally:
                    made.set()
                    copying.join()
                for statement in restore:
                    self.db.query(statement)
                self.db.query("PRAGMA wal_checkpoint(TRUNCATE)")

    def _capture_rows(self) -> CaptureRows:
        """For the rebuild's reader: how to make plain captures' rows in its process."""
        from eventsourcing.utils import get_topic

        from daemon.event_reader import CaptureRows
        from domain.document import Document

        return CaptureRows(registered_topic=get_topic(Document.DocumentRegistered),
                           captured_topic=get_topic(Document.DocumentCaptured),
                           class_version=Document.DocumentCaptured.class_version,
                           views_path=Path(self.db.url[len("sqlite:///"):]))

    # Event handlers --------------------------------------------------------------------

    def _apply_batch(self, tx: Transaction, notifications: Sequence[Any],
                     datas: Sequence[bytes | None] | None, marks: Sequence[int] | None,
                     made: Sequence[Any] | None = None, *, fresh: bool) -> None:
        kept = self._clauses
        if kept is not None and not fresh:
            # Another consumer wrote since, or the last commit failed: it may be stale.
            kept.clear()
            self._last_good = None  # so may this be: read the captures instead
        batch = _Batch(tx, kept)
        self._apply_events(batch, notifications, datas, marks, made)
        if kept is not None:
            # Bounded: the documents read last are let go first.
            count = sum(map(len, kept.values()))
            while count > REBUILD_CLAUSES_KEPT:
                count -= len(kept.popitem()[1])

    def _apply_events(self, batch: _Batch, notifications: Sequence[Any],
                      datas: Sequence[bytes | None] | None,
                      marks: Sequence[int] | None = None,
                      made: Sequence[Any] | None = None) -> None:
        stored = self._stored
        topics = self._topics
        plain = self._plain
        for index, notification in enumerate(notifications):
            if made is not None:
                row = made[index]
                data = datas[index] if datas is not None else None
                if (row is None and plain is not None and data is not None
                        and notification.topic == plain[0]):
                    # Left by the reader (see _Balance): made here as it makes them.
                    row = self._plain_row(batch, notification, data, plain[1])
                if type(row) is tuple:
                    # A plain capture whose row the rebuild's reader made (see CaptureRows).
                    self._on_capture_row(batch, row)
                    continue
                if row is not None:
                    if self._on_clause_delta(batch, notification.id, row):
                        continue
                    # Its list as a change from one this consumer no longer holds: read it
                    # whole.
                    notification = self.read(notification.id, 1)[0]
            if stored is not None:
                # Straight from the stored state to the fields, as Store.decode would give
                # them; topics no handler reads are not decoded at all.
                entry = topics.get(notification.topic) or self._resolve(notification.topic)
                if entry is not None:
                    handler, cls = entry
                    if handler is None:
                        continue
                    if datas is not None and datas[index] is not None:
                        data = datas[index]
                        marked = marks[index] if marks is not None else None
                    else:
                        data = (stored.data(notification) if notification.state is not None
                                else None)
                        marked = None
                    state = stored.state(notification, cls, data, marked)
                    if state is not None:
                        handler(batch, notification.id, state)
                        continue
            if notification.state is None:  # the InflatingReader's: read its bytes again
                notification = self.read(notification.id, 1)[0]
            event = self.decode(notification)
            handler = getattr(self, f"_on_{type(event).__name__}", None)
            if handler is not None:
                handler(batch, notification.id, vars(event))
        batch.flush()

    def _resolve(self, topic: str) -> tuple[Handler | None, type] | None:
        try:
            cls = resolve_topic(topic)
        except Exception:  # left to Store.decode, which says what is wrong
            return None
        entry = (getattr(self, f"_on_{cls.__name__}", None), cls)
        self._topics[topic] = entry
        return entry

    def _slug(self, batch: _Batch, e: State) -> str:
        slug = e.get("slug")
        if slug:
            return str(slug)
        slug = self._slugs.get(e["originator_id"])
        if slug is None:
            rows = batch.tx.rows("SELECT id FROM cw_documents WHERE aggregate_id = ?",
                                 (str(e["originator_id"]),))
            slug = rows[0][0] if rows else str(e["originator_id"])
            self._slugs[e["originator_id"]] = slug
        return slug

    def _event_id(self, e: State) -> str:
        """A stable id for an event: its aggregate and version."""
        return self._event_id_of(e["originator_id"], e["originator_version"])

    def _event_id_of(self, originator: Any, version: int) -> str:
        prefix = self._event_ids.get(originator)
        if prefix is None:
            if len(self._event_ids) > 100_000:
                self._event_ids.clear()
            prefix = self._event_ids[originator] = f"{originator}:"
        return f"{prefix}{version}"

    def _plain_row(self, batch: _Batch, notification: Any, data: bytes,
                   class_version: int) -> tuple[Any, ...] | None:
        """The row of a plain capture the rebuild's reader left as it was stored, made as
        the reader makes it (plain_capture_row); None if it is not one, or its document
        is not known yet: it is then decoded the usual way."""
        slug = self._slugs.get(notification.originator_id)
        if slug is None:
            return None
        return plain_capture_row(
            orjson.loads, data, notification.id,
            lambda: self._event_id_of(notification.originator_id,
                                      notification.originator_version),
            slug, class_version, batch.drops)

    def _section(self, section: Sequence[str]) -> str:
        key = tuple(section)
        text = self._sections.get(key)
        if text is None:
            if len(self._sections) > _SECTIONS_CACHED:
                self._sections.clear()
            text = self._sections[key] = json.dumps(section, ensure_ascii=False)
        return text

    def _on_DocumentRegistered(self, batch: _Batch, seq: int, e: State) -> None:
        tx = batch.tx
        batch.flush_document(e["slug"])
        record_no = int(tx.scalar("SELECT COALESCE(MAX(record_no), 0) FROM cw_documents")) + 1
        tx.execute(
            """INSERT INTO cw_documents (id, record_no, platform, title, url, captures, changes,
               failures, consecutive_failures, status, aggregate_id)
               VALUES (?, ?, ?, ?, ?, 0, 0, 0, 0, 'pending', ?)
               ON CONFLICT (id) DO NOTHING""",
            (e["slug"], record_no, e["platform"], e["title"], e["url"],
             str(e["originator_id"])),
        )
        self._slugs[e["originator_id"]] = e["slug"]

    def _on_DocumentRedescribed(self, batch: _Batch, seq: int, e: State) -> None:
        slug = self._slug(batch, e)
        batch.tx.execute("UPDATE cw_documents SET platform = ?, title = ?, url = ? WHERE id = ?",
                         (e["platform"], e["title"], e["url"], slug))
        batch.tx.execute("UPDATE cw_clause_categories SET platform = ? WHERE document = ?",
                         (e["platform"], slug))

    def _on_DocumentCaptured(self, batch: _Batch, seq: int, e: State) -> None:
        slug = self._slug(batch, e)
        clauses = e["clauses"]
        if clauses is not None:
            # Before the document and capture rows move on: a removed clause was last seen
            # at the previous good capture.
            self._replace_clauses(batch, slug, seq, [c["id"] for c in clauses],
                                  enumerate(clauses), iso(e["captured_at"]), e["sha256"])
        self._on_capture_row(batch, capture_row(seq, self._event_id(e), slug, e,
                                                batch.drops.at(e["sha256"])))

    def _on_clause_delta(self, batch: _Batch, seq: int, delta: ClauseDelta) -> bool:
        """A capture whose clause list the rebuild's reader sent as the clauses that differ
        from the document's previous list; False, having done nothing, if this consumer no
        longer holds the rows that list made."""
        row = delta.row
        slug = row[2]
        present = self._present(batch, slug)
        applied = present.applied
        if applied is None or applied[0] != delta.base:
            return False
        ids = applied[1][:delta.length]
        for position, clause in delta.changed:  # in order; past the old list's end too
            if position < len(ids):
                ids[position] = clause["id"]
            else:
                ids.append(clause["id"])
        # Each clause not sent is the one at its position in the previous list, which
        # made its row: the row needs nothing, as _replace_clauses would find.
        self._replace_clauses(batch, slug, seq, ids, delta.changed, row[3], row[6])
        self._on_capture_row(batch, row)
        return True

    def _on_capture_row(self, batch: _Batch, row: tuple[Any, ...]) -> None:
        """A capture, as its cw_captures row (see capture_row): the row, the document's delta."""
        slug, at, outcome, sha256 = row[2], row[3], row[4], row[6]
        good = outcome != "suspect"
        if self._last_good is not None and outcome in _GOOD_OUTCOMES:
            self._last_good[slug] = sha256
        batch.captures.append(row)
        delta = batch.docs.get(slug)
        if delta is None:
            delta = batch.docs[slug] = _DocDelta()
        if delta.first is None:
            delta.first = at
        if good:
            delta.good = True
            delta.good_at = at
        if outcome in ("baseline", "changed") and at is not None:
            delta.updated = at
        delta.captured = at
        delta.captures += 1
        delta.changes += row[12]
        delta.reset = True
        delta.consecutive = 0
        delta.status = "ok" if good else "suspect"
        delta.error = None if good else row[11]
        delta.sha_set = True
        delta.sha = sha256

    def _present(self, batch: _Batch, slug: str) -> _Present:
        present = batch.present.get(slug)
        if present is None:
            present = batch.present[slug] = _Present((row[0], tuple(row[1:])) for row in
                                                     batch.tx.rows(
                """SELECT id, position, section, text, kind, categories FROM cw_clauses
                   WHERE document = ? AND status = 'present'""", (slug,)))
        return present

    def _replace_clauses(self, batch: _Batch, slug: str, seq: int, ids: list[str],
                         clauses: Iterable[tuple[int, dict[str, Any]]], at: str | None,
                         sha256: str) -> None:
        """Make a document's present clauses those of a clause list: `ids` are the list's
        clause ids in order, `clauses` its (position, clause) pairs (all of them, or those
        that differ from the list `present.applied` names)."""
        tx = batch.tx
        present = self._present(batch, slug)
        present.applied = None  # until the rows are as the list says
        listed = set(ids)
        gone = sorted(present.keys() - listed)
        # Category rows follow the clauses whose categories changed, appeared or went.
        relabel = list(gone)
        labels: list[tuple[str, list[dict[str, Any]]]] = []
        if gone:
            # They read the document's last good capture: send what is held back for it.
            batch.flush_writes()
            batch.flush_document(slug)
            remove = """UPDATE cw_clauses SET status = 'removed', removed_at = ?,
                          last_seen = (SELECT last_verified FROM cw_documents WHERE id = ?),
                          last_sha256 = {} WHERE id = ?"""
            if self._last_good is not None:
                # A rebuild, which replayed every capture before this one.
                last_good = self._last_good.get(slug)
                tx.executemany(remove.format("?"),
                               [(at, slug, last_good, clause_id) for clause_id in gone])
            else:
                tx.executemany(
                    remove.format(f"""(SELECT sha256 FROM cw_captures WHERE document = ?
                                       AND outcome IN {_GOOD_OUTCOMES!r}
                                       ORDER BY seq DESC LIMIT 1)"""),
                    [(at, slug, slug, clause_id) for clause_id in gone])
            for clause_id in gone:
                del present[clause_id]
        updates: list[tuple[Any, ...]] = []
        inserts: list[tuple[Any, ...]] = []
        written: dict[str, tuple[Any, ...]] = {}  # what the rows hold afterwards
        record_no: int | None = None
        for position, clause in clauses:
            clause_id = clause["id"]
            section = self._section(clause["section"])
            categories = _json_or_none(clause.get("categories"))
            row = present.get(clause_id)
            new = (position, section, clause["text"], clause["kind"], categories)
            if row is not None:
                # An edit touches a few clauses of hundreds: rewrite only the rows it moved.
                if row != new:
                    updates.append((*new, clause_id))
                    written[clause_id] = new
                if categories == row[4]:
                    continue
            else:
                if record_no is None:
                    if batch.counted:
                        batch.flush_writes()  # a count for a clause not inserted yet
                    record_no = int(tx.scalar(
                        "SELECT COALESCE(MAX(record_no), 0) FROM cw_clauses"))
                record_no += 1
                inserts.append((clause_id, record_no, slug, position, section, clause["text"],
                                clause["kind"], at, at, sha256, sha256, categories))
                written[clause_id] = new
            relabel.append(clause_id)
            labels.append((clause_id, clause.get("categories") or []))
        if updates:
            tx.executemany("""UPDATE cw_clauses SET position = ?, section = ?, text = ?,
                              kind = ?, categories = ? WHERE id = ?""", updates)
        if inserts and tx.executemany(_INSERT_CLAUSE + " ON CONFLICT (id) DO NOTHING",
                                      inserts) < len(inserts):
            # Some ids were there already (removed, say): bring them back as one insert each
            # would (rows just inserted are left as they are), then read them afresh.
            tx.executemany(
                _INSERT_CLAUSE + """ ON CONFLICT (id) DO UPDATE SET status = 'present',
                   removed_at = NULL, position = excluded.position, text = excluded.text,
                   categories = excluded.categories""", inserts)
            del batch.present[slug]
        else:
            present.update(written)
            if len(listed) == len(ids):
                present.applied = (seq, ids)
        _label(tx, slug, relabel, labels)

    def _on_ClauseChanged(self, batch: _Batch, seq: int, e: State) -> None:
        slug = self._slug(batch, e)
        at = iso(e["captured_at"])
        kind = e["kind"]
        before, after = e["categories_before"], e["categories_after"]
        batch.changes.append(
            (seq, self._event_id(e), slug, e["clause_id"], kind,
             self._section(e["section"]), e["before"], e["after"],
             e["patch"], e["similarity"], at, e["sha256"], _json_or_none(before),
             _json_or_none(after)))
        # A reworded clause that starts or stops falling under a category: that is part of
        # its history too. (Unclassified sides say nothing about categories.)
        if kind == "modified" and before is not None and after is not None:
            row = _category_change(seq, slug, e["clause_id"], at, "capture", None, before,
                                   after)
            if row is not None:
                batch.category_changes.append(row)
        if kind != "added":
            # An addition is the clause's first appearance, not a change to it.
            batch.counted.append((e["clause_id"],))

    def _on_ClausesReclassified(self, batch: _Batch, seq: int, e: State) -> None:
        tx = batch.tx
        batch.flush_writes()
        batch.present.clear()
        slug = self._slug(batch, e)
        at = iso(e["timestamp"])
        for entry in e["clauses"]:
            tx.execute("UPDATE cw_clauses SET categories = ? WHERE id = ?",
                       (_json_or_none(entry["after"]), entry["id"]))
            row = _category_change(seq, slug, entry["id"], at, "reclassify",
                                   e["taxonomy_version"], entry["before"], entry["after"])
            if row is not None:
                tx.execute(_INSERT_CATEGORY_CHANGE, row)
        _label(tx, slug, [entry["id"] for entry in e["clauses"]],
               [(entry["id"], entry["after"] or []) for entry in e["clauses"]])

    def _on_CaptureFailed(self, batch: _Batch, seq: int, e: State) -> None:
        slug = self._slug(batch, e)
        at = iso(e["captured_at"])
        error = f"{e['error_kind']}: {e['message']}"
        batch.captures.append((seq, self._event_id(e), slug, at, "failed", e["http_status"],
                               None, None, None, None, None, error, 0, 0))
        delta = batch.docs.get(slug)
        if delta is None:
            delta = batch.docs[slug] = _DocDelta()
        delta.failures += 1
        delta.consecutive += 1
        delta.captured = at
        delta.status = "failing"
        delta.error = error


class _StoredStates:
    """For `Store.decode`: the fields of stored events without building the events.

    What the store's mapper does, except that the JSON is parsed without a hook for every
    object (a clause list has hundreds) and datetimes stay ISO text. `state` returns None for
    a state it cannot read that way, and the caller decodes it the usual way (which says
    what is wrong with it, if anything is).
    """

    @classmethod
    def of(cls, decode: Decoder) -> _StoredStates | None:
        from daemon.store import Store

        if getattr(decode, "__func__", None) is not Store.decode:
            return None
        mapper = decode.__self__.app.mapper  # type: ignore[attr-defined]
        if mapper.cipher is not None or type(mapper.transcoder) not in (JSONTranscoder,
                                                                        FastJSONTranscoder):
            return None
        return cls(mapper)

    def __init__(self, mapper: Any) -> None:
        self.names = mapper.transcoder.names
        self.decompress = mapper.compressor.decompress if mapper.compressor else bytes

    def data(self, notification: Any) -> bytes | None:
        """The stored state, decompressed (zlib lets other threads run meanwhile)."""
        try:
            return self.decompress(notification.state)  # type: ignore[no-any-return]
        except Exception:
            return None

    def state(self, notification: Any, cls: type, data: bytes | None,
              marked: int | None = None) -> State | None:
        """The event's fields; `marked`, if known, is `data.count(MARK)`."""
        if data is None:
            return None
        try:
            # orjson: the same values as json.loads, 2.5-4 times faster (a clause list in
            # 0.11 ms instead of 0.31). What it refuses (NaN, huge integers) goes the slow way.
            state = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if type(state) is not dict:
            return None
        # Objects the transcoder encoded: {"_type_": name, "_data_": ...}. Only those at the
        # top are decoded here; if the text names more, they are nested: decode it fully.
        if marked is None:
            marked = data.count(MARK)
        if marked:
            names = self.names
            for key, value in state.items():
                if (type(value) is dict and len(value) == 2 and "_type_" in value
                        and "_data_" in value):
                    name, data = value["_type_"], value["_data_"]
                    if type(name) is not str or name not in names:
                        return None
                    marked -= 1
                    if name == "datetime_iso" and type(data) is str:
                        state[key] = data  # iso() reads it as it is
                    else:
                        state[key] = names[name].decode(data)
                    if not marked:
                        break  # a capture's two times come first: its other 18 fields wait
            if marked:
                return None
        originator_id = notification.originator_id
        state["originator_id"] = find_id_convertor(cls, type(originator_id))(originator_id)
        state["originator_version"] = notification.originator_version
        class_version = getattr(cls, "class_version", 1)
        from_version = state.pop("class_version", 1)
        while from_version < class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
            from_version += 1
        return state


_JSON_TEXTS: dict[bytes, str] = {}
_JSON_TEXTS_KEPT = 4_096


def _json_or_none(value: Any) -> str | None:
    """`value` as the views keep JSON (sorted keys, `json.dumps` spacing), None for None.

    Called for every clause of every clause list, whose categories are mostly the same few
    lists: orjson makes the key (a tenth of json.dumps's time), a memo the text.
    """
    if value is None:
        return None
    try:
        key = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # not JSON as orjson sees it (an integer beyond 64 bits, say)
        key = b"null"
    if b"null" in key:  # orjson writes NaN and infinities as null too: not a key then
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = _JSON_TEXTS.get(key)
    if text is None:
        if len(_JSON_TEXTS) >= _JSON_TEXTS_KEPT:
            _JSON_TEXTS.clear()
        text = _JSON_TEXTS[key] = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text


def _label(tx: Transaction, slug: str, clause_ids: Sequence[str],
           labels: Sequence[tuple[str, list[dict[str, Any]]]]) -> None:
    """Replace the category rows of these clauses of a document with `labels`."""
    if not clause_ids:
        return
    ids = list(clause_ids)
    for start in range(0, len(ids), 500):  # one statement per 500, not per clause
        chunk = ids[start:start + 500]
        tx.execute("DELETE FROM cw_clause_categories WHERE clause IN ("
                   + ", ".join("?" * len(chunk)) + ")", chunk)
    rows = [(clause_id, slug, c["id"], c["name"], c["severity"], c["confidence"])
            for clause_id, categories in labels for c in categories]
    if not rows:
        return
    platform = tx.scalar("SELECT platform FROM cw_documents WHERE id = ?", (slug,)) or ""
    tx.executemany(
        """INSERT INTO cw_clause_categories (clause, document, platform, category, name,
           severity, confidence) VALUES (?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (clause, category) DO NOTHING""",
        [(clause, doc, platform, cid, name, severity, confidence)
         for clause, doc, cid, name, severity, confidence in rows])


def _category_change(seq: int, slug: str, clause_id: str, at: str | None, cause: str,
                     taxonomy_version: str | None, before: list[dict[str, Any]] | None,
                     after: list[dict[str, Any]] | None) -> tuple[Any, ...] | None:
    """The cw_category_changes row of a change of the categories a clause falls under, or
    None if the set of ids did not change."""
    old = [c["id"] for c in before or []]
    new = [c["id"] for c in after or []]
    added = [cid for cid in new if cid not in old]
    removed = [cid for cid in old if cid not in new]
    # A first classification is recorded even when it finds nothing: the clause's record
    # then says when it was classified.
    if not added and not removed and before is not None:
        return None
    return (seq, clause_id, slug, at, cause, taxonomy_version, _json_or_none(before),
            _json_or_none(after), json.dumps(added), json.dumps(removed))


def _deferred_order(statement: str) -> int:
    """Where a schema statement comes when a rebuild makes the deferred indexes: in the
    order of REBUILD_DEFERRED_INDEXES, then the others (which change nothing by then)."""
    for order, name in enumerate(REBUILD_DEFERRED_INDEXES):
        if f" {name} ON " in statement:
            return order
    return len(REBUILD_DEFERRED_INDEXES)


def _checkpoint(url: str, done: threading.Event) -> None:
    """Copy a SQLite database's write-ahead log into it as far as nothing needs it (passive
    checkpoints, on a connection of its own), again and again until `done`; errors are
    left to the next checkpoint."""
    try:
        conn = sqlite3.connect(url[len("sqlite:///"):], timeout=5)
        try:
            while True:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                if done.wait(0.05):
                    break
        finally:
            conn.close()
    except sqlite3.Error:
        pass


def _save_position(tx: Transaction, name: str, position: int) -> None:
    tx.execute(
        """INSERT INTO cw_positions (name, position) VALUES (?, ?)
           ON CONFLICT (name) DO UPDATE SET position = excluded.position""",
        (name, position),
    )
