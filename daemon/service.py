"""The application service: records captures, answers queries. Synchronous; call via a thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from config.settings import DetectionSettings, DocumentSettings
from daemon.fetcher import FetchResult
from daemon.projections import CLAUSE_COLUMNS, Views, iso
from daemon.store import Store
from domain.document import CaptureFacts, CaptureResult, Document, document_uuid
from domain.errors import DomainError
from domain.extract import extract
from domain.suspect import SuspectPolicy

FAILED = "failed"
_CLAUSES = "cw_clauses c JOIN cw_documents d ON d.id = c.document"


class UnknownDocumentError(KeyError):
    """No document with this id is tracked."""

    def __init__(self, document_id: str) -> None:
        super().__init__(document_id)
        self.document_id = document_id

    def __str__(self) -> str:
        return f"no document with id {self.document_id!r} is tracked"


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckOutcome:
    """What one capture did, for a log line, a metric or the `check` command."""

    document_id: str
    outcome: str  # baseline, unchanged, changed, suspect, failed
    changes: int = 0
    kinds: tuple[str, ...] = ()
    reason: str | None = None
    sha256: str | None = None
    clauses: int = 0
    append_seconds: float | None = None

    def describe(self) -> str:
        """One line for humans."""
        if self.outcome == "changed":
            noun = "clause change" if self.changes == 1 else "clause changes"
            return f"{self.changes} {noun}"
        if self.outcome == "baseline":
            noun = "clause" if self.clauses == 1 else "clauses"
            return f"baseline recorded ({self.clauses} {noun})"
        if self.outcome in ("suspect", FAILED):
            return f"{self.outcome}: {self.reason}"
        return self.outcome


class ClauseWatch:
    """Turns fetch results into events and serves the read side."""

    def __init__(self, store: Store, *, detection: DetectionSettings = DetectionSettings()) -> None:
        self.store = store
        self.app = store.app
        self.detection = detection
        self.policy = SuspectPolicy(min_length_ratio=detection.min_length_ratio,
                                    error_page_max_length=detection.error_page_max_length)
        self.views = Views(store.db, read=store.read_notifications, decode=store.decode)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._loaded: dict[str, Document] = {}
        # With replicas, the leader's loop projects in batches instead of every poll.
        self.catch_up_after_save = True

    # Writes ------------------------------------------------------------------------------

    def sync_documents(self, documents: Sequence[DocumentSettings]) -> list[str]:
        """Register new documents and record new titles or URLs; returns the ids registered."""
        registered = []
        for doc in documents:
            try:
                aggregate = self.app.repository.get(document_uuid(doc.id))
            except AggregateNotFoundError:
                aggregate = Document.register(slug=doc.id, platform=doc.platform,
                                              title=doc.title, url=doc.url)
                registered.append(doc.id)
            else:
                aggregate.redescribe(platform=doc.platform, title=doc.title, url=doc.url)
            try:
                self.app.save(aggregate)
            except IntegrityError:
                pass  # another replica registered it at the same moment
        self.views.catch_up()
        return registered

    def validators(self, document_id: str) -> tuple[str | None, str | None]:
        """The ETag and Last-Modified to send with the next conditional GET.

        The aggregate loaded here is kept for the record_* call that ends the same poll, so a
        poll loads its document once.
        """
        try:
            aggregate = self._get(document_id)
        except UnknownDocumentError:
            return None, None
        with self._locks_guard:
            self._loaded[document_id] = aggregate
        # Only validators of a good capture: a 304 must never confirm a broken page.
        if aggregate.last_outcome == "suspect":
            return None, None
        return aggregate.etag, aggregate.last_modified

    def record_fetch(self, doc: DocumentSettings, result: FetchResult) -> CheckOutcome:
        """Store the evidence, extract, compare with the last good version and save the events."""
        with self._lock(doc.id):
            aggregate = self._take(doc.id)
            if result.not_modified:
                if aggregate.last_sha256 is None:
                    raise DomainError(f"{doc.id}: a 304 answered a request without validators")
                capture = aggregate.record_not_modified(
                    captured_at=result.fetched_at, requested_url=result.requested_url,
                    final_url=result.final_url)
                sha256 = aggregate.last_sha256
            else:
                sha256 = self.store.evidence.put(result.body)
                facts = CaptureFacts(
                    captured_at=result.fetched_at, requested_url=result.requested_url,
                    final_url=result.final_url, http_status=result.status,
                    content_type=result.content_type, sha256=sha256, size=len(result.body),
                    etag=result.etag, last_modified=result.last_modified,
                    redirects=result.redirects)
                # Same bytes as last time: nothing to extract or compare.
                extraction = None
                if sha256 != aggregate.last_sha256 or aggregate.last_outcome is None:
                    extraction = extract(result.body, doc.content_type or result.content_type,
                                         select=doc.select, remove=doc.remove)
                capture = aggregate.record_capture(
                    facts, extraction, policy=self.policy,
                    threshold=self.detection.similarity_threshold)
            started = time.perf_counter()
            self.app.save(aggregate)
            append_seconds = time.perf_counter() - started
        if self.catch_up_after_save:
            self.views.catch_up()
        return _outcome(doc.id, capture, sha256, len(aggregate.clauses), append_seconds)

    def record_failure(self, doc: DocumentSettings, *, kind: str, message: str,
                       url: str | None = None, status: int | None = None,
                       at: datetime | None = None) -> CheckOutcome:
        """Record a capture that could not be made (a fetch error, or a page we cannot read)."""
        with self._lock(doc.id):
            aggregate = self._take(doc.id)
            aggregate.record_failure(captured_at=at or datetime.now(UTC),
                                     requested_url=url or doc.url, error_kind=kind,
                                     message=message, http_status=status)
            self.app.save(aggregate)
        if self.catch_up_after_save:
            self.views.catch_up()
        return CheckOutcome(document_id=doc.id, outcome=FAILED, reason=f"{kind}: {message}")

    def _take(self, document_id: str) -> Document:
        """The aggregate validators() loaded for this poll, or a fresh load."""
        with self._locks_guard:
            aggregate = self._loaded.pop(document_id, None)
        return aggregate if aggregate is not None else self._get(document_id)

    def _get(self, document_id: str) -> Document:
        try:
            aggregate = self.app.repository.get(document_uuid(document_id))
        except AggregateNotFoundError:
            raise UnknownDocumentError(document_id) from None
        assert isinstance(aggregate, Document)
        return aggregate

    def _lock(self, document_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(document_id, threading.Lock())

    # Reads -------------------------------------------------------------------------------

    def documents(self) -> list[dict[str, Any]]:
        """Every tracked document with its record."""
        rows = self.store.db.query("SELECT * FROM cw_documents ORDER BY id")
        return [_document_row(r) for r in rows]

    def document(self, document_id: str) -> dict[str, Any]:
        """One document's record."""
        rows = self.store.db.query("SELECT * FROM cw_documents WHERE id = ?", (document_id,))
        if not rows:
            raise UnknownDocumentError(document_id)
        return _document_row(rows[0])

    def clauses(self, document_id: str, *, include_removed: bool = True) -> list[dict[str, Any]]:
        """The clauses of a document: present ones in document order, then removed ones."""
        self.document(document_id)
        sql = f"SELECT {CLAUSE_COLUMNS} FROM {_CLAUSES} WHERE c.document = ?"
        if not include_removed:
            sql += " AND c.status = 'present'"
        sql += " ORDER BY CASE WHEN c.status = 'present' THEN 0 ELSE 1 END, c.position, c.id"
        return [_clause_row(r) for r in self.store.db.query(sql, (document_id,))]

    def clause(self, clause_id: str) -> dict[str, Any]:
        """One clause with its history of changes."""
        rows = self.store.db.query(f"SELECT {CLAUSE_COLUMNS} FROM {_CLAUSES} WHERE c.id = ?",
                                   (clause_id,))
        if not rows:
            raise KeyError(clause_id)
        record = _clause_row(rows[0])
        history = self.store.db.query("SELECT * FROM cw_changes WHERE clause = ? ORDER BY seq",
                                      (clause_id,))
        record["history"] = [_change_row(r) for r in history]
        return record

    def changes(self, *, document: str | None = None, since: str | None = None,
                kind: str | None = None, after_seq: int = 0,
                limit: int | None = None) -> list[dict[str, Any]]:
        """Clause changes, oldest first, filtered."""
        sql = "SELECT * FROM cw_changes WHERE seq > ?"
        params: list[Any] = [after_seq]
        if document:
            sql += " AND document = ?"
            params.append(document)
        if since:
            sql += " AND captured_at >= ?"
            params.append(since)
        if kind:
            sql += " AND kind = ?"
            params.append(kind)
        sql += " ORDER BY seq"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_change_row(r) for r in self.store.db.query(sql, params)]

    def captures(self, document_id: str, *, limit: int = 100) -> list[dict[str, Any]]:
        """A document's captures, newest first."""
        self.document(document_id)
        rows = self.store.db.query(
            f"SELECT * FROM cw_captures WHERE document = ? ORDER BY seq DESC LIMIT {int(limit)}",
            (document_id,))
        return [_capture_row(r) for r in rows]

    def capture_content_type(self, sha256: str) -> str | None:
        """The content type a capture was served with."""
        return self.store.db.scalar(
            "SELECT content_type FROM cw_captures WHERE sha256 = ? ORDER BY seq LIMIT 1",
            (sha256,))

    # Evidence ----------------------------------------------------------------------------

    def verify(self) -> list[dict[str, Any]]:
        """Re-hash every capture whose bytes should be stored; one row per problem."""
        rows = self.store.db.query(
            """SELECT sha256, MIN(document) AS document, MIN(captured_at) AS captured_at
               FROM cw_captures WHERE sha256 IS NOT NULL AND http_status <> 304
               AND bytes_dropped = 0 GROUP BY sha256 ORDER BY sha256""")
        problems = []
        for row in rows:
            result = self.store.evidence.verify(row["sha256"])
            if result.status != "ok":
                problems.append({"sha256": row["sha256"], "document": row["document"],
                                 "captured_at": row["captured_at"], "status": result.status,
                                 "actual": result.actual})
        return problems

    def verified_count(self) -> int:
        """How many distinct captures `verify` checks."""
        return int(self.store.db.scalar(
            """SELECT COUNT(DISTINCT sha256) FROM cw_captures WHERE sha256 IS NOT NULL
               AND http_status <> 304 AND bytes_dropped = 0""") or 0)

    def apply_retention(self, *, older_than: float, now: datetime | None = None) -> int:
        """Drop the bytes of captures that changed nothing, older than the retention age.

        Kept: each document's first capture, every capture that changed the text, and each
        document's latest capture. Every hash stays in the event log and the views.
        """
        now = now or datetime.now(UTC)
        cutoff = iso(now - timedelta(seconds=older_than))
        keep = {row["sha256"] for row in self.store.db.query(
            """SELECT sha256 FROM cw_captures WHERE outcome IN ('baseline', 'changed')
               UNION SELECT sha256 FROM cw_captures c WHERE seq = (
                 SELECT MAX(seq) FROM cw_captures d WHERE d.document = c.document
                 AND d.sha256 IS NOT NULL AND d.http_status <> 304)
               UNION SELECT sha256 FROM cw_captures c WHERE seq = (
                 SELECT MIN(seq) FROM cw_captures d WHERE d.document = c.document
                 AND d.sha256 IS NOT NULL AND d.http_status <> 304)""")}
        candidates = {row["sha256"] for row in self.store.db.query(
            """SELECT DISTINCT sha256 FROM cw_captures WHERE sha256 IS NOT NULL
               AND bytes_dropped = 0 AND http_status <> 304 AND captured_at < ?""", (cutoff,))}
        dropped = 0
        for sha256 in sorted(candidates - keep):
            # Newer captures with the same bytes keep them.
            newer = self.store.db.scalar(
                "SELECT COUNT(*) FROM cw_captures WHERE sha256 = ? AND captured_at >= ?",
                (sha256, cutoff))
            if newer:
                continue
            # Marked first: a crash in between leaves bytes nobody checks, never a "missing".
            with self.store.db.transaction() as tx:
                tx.execute("UPDATE cw_captures SET bytes_dropped = 1 WHERE sha256 = ?",
                           (sha256,))
                tx.execute("""INSERT INTO cw_evidence_dropped (sha256, dropped_at)
                              VALUES (?, ?) ON CONFLICT (sha256)
                              DO UPDATE SET dropped_at = excluded.dropped_at""",
                           (sha256, iso(now)))
            self.store.evidence.delete(sha256)
            dropped += 1
        return dropped


def _outcome(document_id: str, capture: CaptureResult, sha256: str | None,
             clauses: int, append_seconds: float) -> CheckOutcome:
    return CheckOutcome(document_id=document_id, outcome=capture.outcome,
                        changes=capture.changes, kinds=capture.kinds, reason=capture.reason,
                        sha256=sha256, clauses=clauses, append_seconds=append_seconds)


def months_between(first: str | None, last: str | None) -> int:
    """Whole months monitored between two ISO timestamps (at least 0)."""
    if not first or not last:
        return 0
    a = datetime.fromisoformat(first.replace("Z", "+00:00"))
    b = datetime.fromisoformat(last.replace("Z", "+00:00"))
    months = (b.year - a.year) * 12 + (b.month - a.month) - (1 if b.day < a.day else 0)
    return max(0, months)


def stability(changes: int, months: int) -> str:
    """Volatile: changed at least twice, and more often than once per six months monitored."""
    return "volatile" if changes >= 2 and changes * 6 > max(months, 1) else "stable"


def _document_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "record_id": f"CW-D-{row['record_no']:05d}",
        "platform": row["platform"], "title": row["title"], "url": row["url"],
        "first_tracked": row["first_tracked"], "last_verified": row["last_verified"],
        "last_updated": row["last_updated"], "last_captured": row["last_captured"],
        "captures": row["captures"], "changes": row["changes"], "failures": row["failures"],
        "consecutive_failures": row["consecutive_failures"], "status": row["status"],
        "last_error": row["last_error"], "sha256": row["sha256"],
    }


def _clause_row(row: dict[str, Any]) -> dict[str, Any]:
    months = months_between(row["first_seen"], row["last_seen"])
    return {
        "id": row["id"], "record_id": f"CW-P-{row['record_no']:06d}",
        "document": row["document"], "section": json.loads(row["section"]),
        "text": row["text"], "kind": row["kind"], "first_seen": row["first_seen"],
        "last_seen": row["last_seen"], "changes": row["changes"], "months_monitored": months,
        "stability": stability(row["changes"], months), "status": row["status"],
        "position": row["position"],
    }


def _change_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["event_id"], "seq": row["seq"], "document": row["document"],
        "clause": row["clause"], "kind": row["kind"], "section": json.loads(row["section"]),
        "before": row["before"], "after": row["after"], "patch": row["patch"],
        "similarity": row["similarity"], "captured_at": row["captured_at"],
        "sha256": row["sha256"],
    }


def _capture_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["event_id"], "document": row["document"], "captured_at": row["captured_at"],
        "outcome": row["outcome"], "http_status": row["http_status"], "sha256": row["sha256"],
        "size": row["size"], "text_sha256": row["text_sha256"], "final_url": row["final_url"],
        "content_type": row["content_type"], "reason": row["reason"],
        "changes": row["changes"], "bytes_stored": not row["bytes_dropped"],
    }
