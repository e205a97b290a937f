"""The read side: documents, clauses, changes and captures, derived from the event log.

Each batch of events and the consumer's position are written in one transaction, so a crash
or restart never counts an event twice or skips one; `rebuild` replays the whole log.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from daemon.sql import Database, Transaction
from domain.document import Document

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


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z, seconds precision: sortable as text on both databases."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Views:
    """The projection of the event log into query tables."""

    def __init__(self, db: Database, *, read: Reader, decode: Decoder,
                 batch_size: int = 500) -> None:
        self.db = db
        self.read = read
        self.decode = decode
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._slugs: dict[Any, str] = {}
        db.executescript(SCHEMA)
        db.execute("INSERT INTO cw_positions (name, position) VALUES (?, 0) "
                   "ON CONFLICT (name) DO NOTHING", (NAME,))

    def position(self, name: str = NAME) -> int:
        """The last notification id this consumer has processed."""
        return int(self.db.scalar("SELECT position FROM cw_positions WHERE name = ?", (name,))
                   or 0)

    def catch_up(self) -> int:
        """Process every event not yet seen; returns how many were processed."""
        done = 0
        with self._lock:
            while True:
                position = self.position()
                notifications = self.read(position + 1, self.batch_size)
                if not notifications:
                    return done
                with self.db.transaction() as tx:
                    # Another replica may have moved the position since we read it; on
                    # PostgreSQL the row lock makes a second consumer wait, then skip.
                    lock = " FOR UPDATE" if self.db.dialect == "postgres" else ""
                    current = int(tx.scalar("SELECT position FROM cw_positions WHERE name = ?"
                                            + lock, (NAME,)) or 0)
                    fresh = [n for n in notifications if n.id > current]
                    for notification in fresh:
                        self._apply(tx, notification.id, self.decode(notification))
                    if fresh:
                        _save_position(tx, NAME, fresh[-1].id)
                done += len(fresh)

    def rebuild(self) -> int:
        """Empty the views and replay the whole event log."""
        with self._lock, self.db.transaction() as tx:
            for table in VIEW_TABLES:
                tx.execute(f"DELETE FROM {table}")
            tx.execute("UPDATE cw_positions SET position = 0 WHERE name = ?", (NAME,))
        return self.catch_up()

    # Event handlers --------------------------------------------------------------------

    def _apply(self, tx: Transaction, seq: int, event: Any) -> None:
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(tx, seq, event)

    def _slug(self, tx: Transaction, event: Any) -> str:
        slug = getattr(event, "slug", None)
        if slug:
            return str(slug)
        slug = self._slugs.get(event.originator_id)
        if slug is None:
            rows = tx.query("SELECT id FROM cw_documents WHERE aggregate_id = ?",
                            (str(event.originator_id),))
            slug = rows[0]["id"] if rows else str(event.originator_id)
            self._slugs[event.originator_id] = slug
        return slug

    def _on_DocumentRegistered(self, tx: Transaction, seq: int,
                               event: Document.DocumentRegistered) -> None:
        record_no = int(tx.scalar("SELECT COALESCE(MAX(record_no), 0) FROM cw_documents")) + 1
        tx.execute(
            """INSERT INTO cw_documents (id, record_no, platform, title, url, captures, changes,
               failures, consecutive_failures, status, aggregate_id)
               VALUES (?, ?, ?, ?, ?, 0, 0, 0, 0, 'pending', ?)
               ON CONFLICT (id) DO NOTHING""",
            (event.slug, record_no, event.platform, event.title, event.url,
             str(event.originator_id)),
        )
        self._slugs[event.originator_id] = event.slug

    def _on_DocumentRedescribed(self, tx: Transaction, seq: int,
                                event: Document.DocumentRedescribed) -> None:
        slug = self._slug(tx, event)
        tx.execute("UPDATE cw_documents SET platform = ?, title = ?, url = ? WHERE id = ?",
                   (event.platform, event.title, event.url, slug))
        tx.execute("UPDATE cw_clause_categories SET platform = ? WHERE document = ?",
                   (event.platform, slug))

    def _on_DocumentCaptured(self, tx: Transaction, seq: int,
                             event: Document.DocumentCaptured) -> None:
        slug = self._slug(tx, event)
        at = iso(event.captured_at)
        good = event.outcome != "suspect"
        if event.clauses is not None:
            # Before the document and capture rows move on: a removed clause was last seen
            # at the previous good capture.
            self._replace_clauses(tx, slug, event, at)
        tx.execute(
            """INSERT INTO cw_captures (seq, event_id, document, captured_at, outcome,
               http_status, sha256, size, text_sha256, final_url, content_type, reason, changes,
               bytes_dropped)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                 CASE WHEN EXISTS (SELECT 1 FROM cw_evidence_dropped
                                   WHERE sha256 = ? AND dropped_at > ?) THEN 1 ELSE 0 END)""",
            (seq, _event_id(event), slug, at, event.outcome, event.http_status, event.sha256,
             event.size, event.text_sha256, event.final_url, event.content_type, event.reason,
             event.changes, event.sha256, at),
        )
        updated = at if event.outcome in ("baseline", "changed") else None
        tx.execute(
            """UPDATE cw_documents SET
                 first_tracked = COALESCE(first_tracked, ?),
                 last_verified = CASE WHEN ? THEN ? ELSE last_verified END,
                 last_updated = COALESCE(?, last_updated),
                 last_captured = ?,
                 last_success = CASE WHEN ? THEN ? ELSE last_success END,
                 captures = captures + 1, changes = changes + ?,
                 consecutive_failures = 0,
                 status = ?, last_error = ?,
                 sha256 = ?
               WHERE id = ?""",
            (at, good, at, updated, at, good, at, event.changes,
             "ok" if good else "suspect", None if good else event.reason, event.sha256, slug),
        )

    def _replace_clauses(self, tx: Transaction, slug: str, event: Document.DocumentCaptured,
                         at: str | None) -> None:
        assert event.clauses is not None
        present = {row["id"]: row for row in tx.query(
            """SELECT id, position, section, text, kind, categories FROM cw_clauses
               WHERE document = ? AND status = 'present'""", (slug,))}
        new_ids = [c["id"] for c in event.clauses]
        gone = set(present) - set(new_ids)
        # Category rows follow the clauses whose categories changed, appeared or went.
        relabel = sorted(gone)
        labels: list[tuple[str, list[dict[str, Any]]]] = []
        for clause_id in sorted(gone):
            tx.execute(
                """UPDATE cw_clauses SET status = 'removed', removed_at = ?,
                     last_seen = (SELECT last_verified FROM cw_documents WHERE id = ?),
                     last_sha256 = (SELECT sha256 FROM cw_captures WHERE document = ?
                                    AND outcome IN ('baseline', 'changed', 'unchanged')
                                    ORDER BY seq DESC LIMIT 1)
                   WHERE id = ?""",
                (at, slug, slug, clause_id))
        record_no = int(tx.scalar("SELECT COALESCE(MAX(record_no), 0) FROM cw_clauses"))
        for position, clause in enumerate(event.clauses):
            section = json.dumps(clause["section"], ensure_ascii=False)
            categories = _json_or_none(clause.get("categories"))
            row = present.get(clause["id"])
            if row is not None:
                # An edit touches a few clauses of hundreds: rewrite only the rows it moved.
                if (row["position"], row["section"], row["text"], row["kind"],
                        row["categories"]) != (position, section, clause["text"],
                                               clause["kind"], categories):
                    tx.execute("""UPDATE cw_clauses SET position = ?, section = ?, text = ?,
                                  kind = ?, categories = ? WHERE id = ?""",
                               (position, section, clause["text"], clause["kind"], categories,
                                clause["id"]))
                if categories == row["categories"]:
                    continue
            else:
                record_no += 1
                tx.execute(
                    """INSERT INTO cw_clauses (id, record_no, document, position, section, text,
                       kind, first_seen, last_seen, changes, status, first_sha256, last_sha256,
                       categories)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 'present', ?, ?, ?)
                       ON CONFLICT (id) DO UPDATE SET status = 'present', removed_at = NULL,
                       position = excluded.position, text = excluded.text,
                       categories = excluded.categories""",
                    (clause["id"], record_no, slug, position, section, clause["text"],
                     clause["kind"], at, at, event.sha256, event.sha256, categories),
                )
            relabel.append(clause["id"])
            labels.append((clause["id"], clause.get("categories") or []))
        _label(tx, slug, relabel, labels)

    def _on_ClauseChanged(self, tx: Transaction, seq: int, event: Document.ClauseChanged) -> None:
        slug = self._slug(tx, event)
        at = iso(event.captured_at)
        tx.execute(
            """INSERT INTO cw_changes (seq, event_id, document, clause, kind, section, before,
               after, patch, similarity, captured_at, sha256, categories_before,
               categories_after)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (seq, _event_id(event), slug, event.clause_id, event.kind,
             json.dumps(event.section, ensure_ascii=False), event.before, event.after,
             event.patch, event.similarity, at, event.sha256,
             _json_or_none(event.categories_before), _json_or_none(event.categories_after)),
        )
        # A reworded clause that starts or stops falling under a category: that is part of
        # its history too. (Unclassified sides say nothing about categories.)
        if (event.kind == "modified" and event.categories_before is not None
                and event.categories_after is not None):
            _category_change(tx, seq, slug, event.clause_id, at, "capture", None,
                             event.categories_before, event.categories_after)
        if event.kind != "added":
            # An addition is the clause's first appearance, not a change to it.
            tx.execute("UPDATE cw_clauses SET changes = changes + 1 WHERE id = ?",
                       (event.clause_id,))

    def _on_ClausesReclassified(self, tx: Transaction, seq: int,
                                event: Document.ClausesReclassified) -> None:
        slug = self._slug(tx, event)
        at = iso(event.timestamp)
        for entry in event.clauses:
            tx.execute("UPDATE cw_clauses SET categories = ? WHERE id = ?",
                       (_json_or_none(entry["after"]), entry["id"]))
            _category_change(tx, seq, slug, entry["id"], at, "reclassify",
                             event.taxonomy_version, entry["before"], entry["after"])
        _label(tx, slug, [e["id"] for e in event.clauses],
               [(e["id"], e["after"] or []) for e in event.clauses])

    def _on_CaptureFailed(self, tx: Transaction, seq: int, event: Document.CaptureFailed) -> None:
        slug = self._slug(tx, event)
        at = iso(event.captured_at)
        tx.execute(
            """INSERT INTO cw_captures (seq, event_id, document, captured_at, outcome,
               http_status, reason, changes) VALUES (?, ?, ?, ?, 'failed', ?, ?, 0)""",
            (seq, _event_id(event), slug, at, event.http_status,
             f"{event.error_kind}: {event.message}"),
        )
        tx.execute(
            """UPDATE cw_documents SET failures = failures + 1,
               consecutive_failures = consecutive_failures + 1, last_captured = ?,
               status = 'failing', last_error = ? WHERE id = ?""",
            (at, f"{event.error_kind}: {event.message}", slug),
        )


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _label(tx: Transaction, slug: str, clause_ids: Sequence[str],
           labels: Sequence[tuple[str, list[dict[str, Any]]]]) -> None:
    """Replace the category rows of these clauses of a document with `labels`."""
    if not clause_ids:
        return
    tx.executemany("DELETE FROM cw_clause_categories WHERE clause = ?",
                   [(clause_id,) for clause_id in clause_ids])
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


def _category_change(tx: Transaction, seq: int, slug: str, clause_id: str, at: str | None,
                     cause: str, taxonomy_version: str | None,
                     before: list[dict[str, Any]] | None,
                     after: list[dict[str, Any]] | None) -> None:
    """Record a change of the categories a clause falls under, if the set of ids changed."""
    old = [c["id"] for c in before or []]
    new = [c["id"] for c in after or []]
    added = [cid for cid in new if cid not in old]
    removed = [cid for cid in old if cid not in new]
    # A first classification is recorded even when it finds nothing: the clause's record
    # then says when it was classified.
    if not added and not removed and before is not None:
        return
    tx.execute(
        """INSERT INTO cw_category_changes (seq, clause, document, at, cause, taxonomy_version,
           before, after, added, removed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (seq, clause) DO NOTHING""",
        (seq, clause_id, slug, at, cause, taxonomy_version, _json_or_none(before),
         _json_or_none(after), json.dumps(added), json.dumps(removed)))


def _save_position(tx: Transaction, name: str, position: int) -> None:
    tx.execute(
        """INSERT INTO cw_positions (name, position) VALUES (?, ?)
           ON CONFLICT (name) DO UPDATE SET position = excluded.position""",
        (name, position),
    )


def _event_id(event: Any) -> str:
    """A stable id for an event: its aggregate and version."""
    return f"{event.originator_id}:{event.originator_version}"
