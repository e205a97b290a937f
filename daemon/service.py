"""The application service: records captures, answers queries. Synchronous; call via a thread."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from config.settings import DetectionSettings, DocumentSettings
from daemon.fetcher import FetchResult
from daemon.projections import CLAUSE_COLUMNS, Views, iso
from daemon.extraction import (
    ExtractionPool,
    Recorded,
    TaxonomyWanted,
    extract,
    read_page,
    record_page,
)
from daemon.group_commit import GroupCommit
from daemon.heads import Heads
from daemon.store import Store
from domain.classify import SEVERITIES, Taxonomy, clause_classifier, taxonomy_version
from domain.clauses import align
from domain.document import (
    Aligner,
    CaptureFacts,
    CaptureResult,
    Document,
    NeedsClausesError,
    document_uuid,
)
from domain.errors import DomainError
from domain.blocks import BOTH, LEXBOR, Extraction, SameRegion
from domain.suspect import SuspectPolicy

log = logging.getLogger("clausewatch.service")

FAILED = "failed"
_CLAUSES = "cw_clauses c JOIN cw_documents d ON d.id = c.document"
# Captures whose bytes hold the document's good text (a 304 refers to earlier bytes).
_GOOD_CAPTURE = ("outcome IN ('baseline', 'changed', 'unchanged') AND sha256 IS NOT NULL "
                 "AND http_status <> 304")
# How many clauses per other platform "how other platforms handle this" shows by default.
PEERS_PER_PLATFORM = 3


class UnknownCategoryError(KeyError):
    """No category with this id in the taxonomy or the views."""

    def __init__(self, category_id: str) -> None:
        super().__init__(category_id)
        self.category_id = category_id

    def __str__(self) -> str:
        return (f"no category with id {self.category_id!r}; `clausewatch categories` lists "
                "them")


class UnknownClauseError(KeyError):
    """No clause with this id has been recorded."""

    def __init__(self, clause_id: str) -> None:
        super().__init__(clause_id)
        self.clause_id = clause_id

    def __str__(self) -> str:
        return (f"no clause with id {self.clause_id!r}; `clausewatch clauses DOCUMENT_ID` "
                "lists a document's clauses")


class NoTaxonomyError(RuntimeError):
    """Classification was asked of a service built without a taxonomy."""

    def __str__(self) -> str:
        return "this service has no taxonomy: build it with open_service() or pass taxonomy="


class UnknownDocumentError(KeyError):
    """No document with this id is tracked."""

    def __init__(self, document_id: str) -> None:
        super().__init__(document_id)
        self.document_id = document_id

    def __str__(self) -> str:
        return f"no document with id {self.document_id!r} is tracked"


def _validators(outcome: str | None, etag: str | None, last_modified: str | None
                ) -> tuple[str | None, str | None]:
    # Only validators of a good capture: a 304 must never confirm a broken page.
    if outcome == "suspect":
        return None, None
    return etag, last_modified


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

    def __init__(self, store: Store, *, detection: DetectionSettings = DetectionSettings(),
                 taxonomy: Taxonomy | None = None) -> None:
        self.store = store
        self.app = store.app
        self.detection = detection
        self.policy = SuspectPolicy(min_length_ratio=detection.min_length_ratio,
                                    error_page_max_length=detection.error_page_max_length)
        self.views = Views(store.db, read=store.read_stored, decode=store.decode,
                           inflating=store.inflating_reader)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._loaded: dict[str, Document] = {}
        self.heads = Heads(store.db)
        self.commits = GroupCommit(store.app)
        # Where pages are parsed and walked: in the polling thread, or in worker processes.
        self.extraction_pool = (ExtractionPool(detection.extract_processes)
                                if detection.extract_processes else None)
        self.extract: Callable[..., Extraction | SameRegion] = self.extraction_pool or extract
        # New bytes are stored as evidence by whoever extracts them: one handover of the page.
        self.read_page: Callable[..., Extraction | SameRegion] = (
            functools.partial(self.extraction_pool.run, read_page) if self.extraction_pool
            else read_page)
        # Aligning a changed text is the other CPU-bound step: in the same workers.
        self.align: Aligner = (functools.partial(self.extraction_pool.run, align)
                               if self.extraction_pool else align)
        # With replicas, the leader's loop projects in batches instead of every poll.
        self.catch_up_after_save = True
        self.use_taxonomy(taxonomy)

    def use_taxonomy(self, taxonomy: Taxonomy | None) -> None:
        """Classify added and reworded clauses with this taxonomy from now on (None: don't).

        Clauses already recorded keep their categories until `reclassify`.
        """
        self.taxonomy = taxonomy
        self.classify = clause_classifier(taxonomy) if taxonomy is not None else None
        self.taxonomy_version = taxonomy_version(taxonomy) if taxonomy is not None else None

    # Writes ------------------------------------------------------------------------------

    def sync_documents(self, documents: Sequence[DocumentSettings]) -> list[str]:
        """Register new documents and record new titles or URLs; returns the ids registered."""
        # A document the views already hold with this very description needs nothing: reading
        # one table beats loading every aggregate (and its clause list) at each start.
        self.views.catch_up()
        known = {row["id"]: (row["platform"], row["title"], row["url"]) for row in
                 self.store.db.query("SELECT id, platform, title, url FROM cw_documents")}
        registered = []
        for doc in documents:
            if known.get(doc.id) == (doc.platform, doc.title, doc.url):
                continue
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
                self.heads.forget(doc.id)
                continue  # another replica registered it at the same moment
            self._remember(doc.id, aggregate)
        self.views.catch_up()
        return registered

    def known_validators(self, document_id: str) -> tuple[str | None, str | None] | None:
        """`validators` when the document's head is in memory (no I/O: callable on the event
        loop); None when finding them needs the store (call `validators` in a thread)."""
        head = self.heads.peek(document_id)
        if head is None:
            return None
        return _validators(head["last_outcome"], head["etag"], head["last_modified"])

    def validators(self, document_id: str) -> tuple[str | None, str | None]:
        """The ETag and Last-Modified to send with the next conditional GET.

        From the document's head when one is known; otherwise the aggregate loaded here is
        kept for the record_* call that ends the same poll, so a poll loads it at most once.
        """
        head = self.heads.get(document_id)
        if head is not None:
            outcome, etag, last_modified = (head["last_outcome"], head["etag"],
                                            head["last_modified"])
        else:
            try:
                aggregate = self._get(document_id)
            except UnknownDocumentError:
                return None, None
            with self._locks_guard:
                self._loaded[document_id] = aggregate
            outcome, etag, last_modified = (aggregate.last_outcome, aggregate.etag,
                                            aggregate.last_modified)
        return _validators(outcome, etag, last_modified)

    def record_fetch(self, doc: DocumentSettings, result: FetchResult) -> CheckOutcome:
        """Store the evidence, extract, compare with the last good version and save the events."""
        facts: CaptureFacts | None = None
        if not result.not_modified:
            facts = CaptureFacts(
                captured_at=result.fetched_at, requested_url=result.requested_url,
                final_url=result.final_url, http_status=result.status,
                content_type=result.content_type,
                sha256=hashlib.sha256(result.body).hexdigest(), size=len(result.body),
                etag=result.etag, last_modified=result.last_modified,
                redirects=result.redirects)
        # What this poll read of the page, and the region key it was read against.
        extracted: list[_Read] = []

        def decide(aggregate: Document) -> CaptureResult:
            if facts is None:
                return _not_modified(doc, result, aggregate)
            # Same bytes as last time: nothing to extract or compare (the bytes are stored).
            if facts.sha256 == aggregate.last_sha256 and aggregate.last_outcome is not None:
                self.store.evidence.put(result.body, sha256=facts.sha256)
                return aggregate.record_capture(facts, None)
            # New bytes, but the region the last good text came from may be the same.
            last = self._known_region(doc.id, aggregate.text_sha256)
            known = str(last["key"]) if last is not None else None
            walk = _walk(aggregate, last)
            content_type = doc.content_type or result.content_type
            if not extracted:
                # Stored as evidence where they are extracted: before the event cites them.
                extracted.append(_Read(known, self.read_page(
                    self.store.evidence, result.body, facts.sha256, content_type,
                    select=doc.select, remove=doc.remove, unless_region=known, walk=walk)))
            elif isinstance(extracted[0].page, SameRegion) and extracted[0].against != known:
                # Read against another region than the aggregate loaded since knows.
                extracted[0] = _Read(known, self.extract(
                    result.body, content_type, select=doc.select, remove=doc.remove,
                    unless_region=known, walk=walk))
            extraction = extracted[0].page
            if isinstance(extraction, SameRegion):
                return aggregate.record_same_text(facts)
            return aggregate.record_capture(
                facts, extraction, policy=self.policy,
                threshold=self.detection.similarity_threshold, classify=self.classify,
                aligner=self.align)

        with self._lock(doc.id):
            elsewhere = (self._record_in_worker(doc, result, facts) if facts is not None
                         else None)
            if isinstance(elsewhere, tuple):
                recorded, append_seconds = elsewhere
                head, capture = recorded.head, recorded.capture
                region, walk = recorded.region, recorded.walk
            else:
                if elsewhere is not None:  # read by a worker: recorded here
                    extracted.append(elsewhere)
                aggregate, capture, append_seconds = self._record(doc.id, decide)
                head = aggregate.head()
                read = extracted[0].page if extracted else None
                region = read.region if read is not None else None
                # A SameRegion's text is the last one: read from the tree the head says.
                walk = read.walk if isinstance(read, Extraction) else None
            if region and capture.outcome != "suspect":
                # The text this page gave is now the last good text: remember its region
                # (for a SameRegion, its own key: the next page most likely matches it) and
                # which tree it was read from.
                self._remember_head(doc.id, head, region=region, walk=walk)
            else:
                self._remember_head(doc.id, head)
        if self.catch_up_after_save:
            self.views.catch_up()
        return _outcome(doc.id, capture, head["last_sha256"], head["clause_count"],
                        append_seconds)

    def _record_in_worker(self, doc: DocumentSettings, result: FetchResult,
                          facts: CaptureFacts) -> tuple[Recorded, float] | _Read | None:
        """New bytes of a page read by an extraction worker and, if their text changed,
        recorded there (`record_page`) and saved here: returns what was recorded and the
        append's duration, or what the worker read (for this poll to record, as from
        `read_page`), or None when this poll must read and record the page itself (no
        workers, a store another process cannot open, no head in memory, a save due for a
        snapshot, the same bytes as last time, or a head the store proved stale). Call with
        the document's lock held."""
        pool, store = self.extraction_pool, self.store.settings
        if pool is None or store is None or not store.shared or self._loaded_for(doc.id):
            return None
        head = self.heads.get(doc.id)
        if head is None or (head["last_sha256"] == facts.sha256
                            and head["last_outcome"] is not None):
            return None
        aggregate = self._from_head(doc.id, head)
        if aggregate is None:
            return None
        last = self._known_region(doc.id, aggregate.text_sha256)
        known = str(last["key"]) if last is not None else None
        args = (record_page, store, self.store.evidence, head, facts, result.body,
                doc.content_type or result.content_type)
        kwargs: dict[str, Any] = {
            "select": doc.select, "remove": doc.remove,
            "unless_region": known,
            "walk": _walk(aggregate, last), "policy": self.policy,
            "threshold": self.detection.similarity_threshold,
            "taxonomy_version": self.taxonomy_version}
        answer = pool.in_worker(*args, **kwargs)
        if isinstance(answer, TaxonomyWanted):
            answer = pool.in_worker(*args, taxonomy=self.taxonomy, **kwargs)
        if not isinstance(answer, Recorded):
            return _Read(known, answer) if isinstance(answer, Extraction | SameRegion) else None
        started = time.perf_counter()
        try:
            self.commits.save(answer.save)
        except IntegrityError:
            # Another replica appended since the head (or since the worker loaded the
            # aggregate): from the store again, here.
            self.heads.forget(doc.id)
            return None
        return answer, time.perf_counter() - started

    def hand_in_not_modified(self, doc: DocumentSettings, result: FetchResult
                             ) -> HandedIn | None:
        """A 304 recorded without a thread of its own: decided on the document's head in
        memory and handed to the group commit (never blocks: callable on the event loop).

        None when this poll must call `record_fetch` in a thread instead: not a 304, no head
        in memory, a save due for a snapshot (made from the whole aggregate), another poll of
        the document recording, or the views caught up after each save. Its `saved`
        fails with what saving raised: IntegrityError if the head was stale (`record_fetch`
        then finds so again and loads the aggregate).
        """
        if not result.not_modified or self.catch_up_after_save:
            return None
        head = self.heads.peek(doc.id)
        if head is None or self._loaded_for(doc.id):
            return None
        lock = self._lock(doc.id)
        if not lock.acquire(blocking=False):
            return None
        aggregate = self._from_head(doc.id, head)
        if aggregate is None:
            lock.release()
            return None
        try:
            capture = _not_modified(doc, result, aggregate)
        except BaseException:
            lock.release()
            raise
        handed = HandedIn(document_id=doc.id, aggregate=aggregate, capture=capture,
                          saved=self.commits.hand_in(aggregate))

        def settle(saved: Future[None]) -> None:
            # In the group commit's thread, before whoever awaits `saved` hears of it.
            try:
                if not saved.cancelled() and saved.exception() is None:
                    self._remember(doc.id, aggregate)
            finally:
                handed.finished = time.perf_counter()
                lock.release()

        handed.saved.add_done_callback(settle)
        return handed

    def record_failure(self, doc: DocumentSettings, *, kind: str, message: str,
                       url: str | None = None, status: int | None = None,
                       at: datetime | None = None) -> CheckOutcome:
        """Record a capture that could not be made (a fetch error, or a page we cannot read)."""
        def decide(aggregate: Document) -> None:
            aggregate.record_failure(captured_at=at or datetime.now(UTC),
                                     requested_url=url or doc.url, error_kind=kind,
                                     message=message, http_status=status)

        with self._lock(doc.id):
            aggregate, _, _ = self._record(doc.id, decide)
            self._remember(doc.id, aggregate)
        if self.catch_up_after_save:
            self.views.catch_up()
        return CheckOutcome(document_id=doc.id, outcome=FAILED, reason=f"{kind}: {message}")

    def close(self) -> None:
        """Finish the saves handed in, write the heads, stop the extraction workers, close
        the store."""
        try:
            self.commits.close()
            self.flush_heads()
        except Exception:  # the store may be why we are closing: never hide that error
            log.exception("could not write the document heads; the next start reloads them")
        finally:
            if self.extraction_pool is not None:
                self.extraction_pool.close()
            self.store.close()

    def flush_heads(self) -> int:
        """Write the heads of documents polled since the last flush (for the next process)."""
        return self.heads.flush()

    def _record(self, document_id: str, decide: Callable[[Document], Any]
                ) -> tuple[Document, Any, float]:
        """Decide on the document's head if that is enough, on the whole aggregate otherwise;
        save; returns the aggregate, what `decide` returned and the append's duration."""
        aggregate = self._take(document_id)
        try:
            decided = decide(aggregate)
        except NeedsClausesError:
            aggregate = self._get(document_id)
            decided = decide(aggregate)
        started = time.perf_counter()
        try:
            self.commits.save(aggregate)
        except IntegrityError:
            if not aggregate.built_from_head:
                raise
            # The head was stale (another replica, or a crash before its head was written).
            self.heads.forget(document_id)
            aggregate = self._get(document_id)
            decided = decide(aggregate)
            self.commits.save(aggregate)
        append_seconds = time.perf_counter() - started
        return aggregate, decided, append_seconds

    def _known_region(self, document_id: str, text_sha256: str | None
                      ) -> dict[str, Any] | None:
        """What the head says of the page the document's last good text came from (its
        region's key, the tree its text was read from), if it is about that text (its hash
        `text_sha256`)."""
        head = self.heads.get(document_id)
        region = head.get("region") if head is not None else None
        if region and text_sha256 and region.get("text") == text_sha256:
            return dict(region)  # a copy: the head in memory is changed only through put
        return None

    def _remember(self, document_id: str, aggregate: Document, *,
                  region: str | None = None, walk: str | None = None) -> None:
        """Keep the head of a saved aggregate, with the region its good text came from and
        the tree that text was read from (None: as the head said, if about the same text)."""
        self._remember_head(document_id, aggregate.head(), region=region, walk=walk)

    def _remember_head(self, document_id: str, head: dict[str, Any], *,
                       region: str | None = None, walk: str | None = None) -> None:
        """_remember, given the saved aggregate's head (Document.head)."""
        known = self._known_region(document_id, head["text_sha256"])
        if region is None and known is not None:
            region = str(known["key"])
        if walk is None and known is not None:
            walk = known.get("walk")
        if region is not None:
            head["region"] = {"text": head["text_sha256"], "key": region}
            if walk is not None:
                head["region"]["walk"] = walk
        self.heads.put(document_id, head)

    def reclassify(self, *, attempts: int = 3) -> dict[str, int]:
        """Classify every document's current clauses with the taxonomy in use.

        Appends one ClausesReclassified event per document whose clauses' categories differ
        (history is never rewritten); returns, per document, how many clauses changed.
        """
        classify, version = self.classify, self.taxonomy_version
        if classify is None or version is None:
            raise NoTaxonomyError()
        self.views.catch_up()
        result: dict[str, int] = {}
        for row in self.store.db.query("SELECT id FROM cw_documents ORDER BY id"):
            document_id = row["id"]
            for attempt in range(attempts):
                with self._lock(document_id):
                    aggregate = self._get(document_id)
                    changed = aggregate.reclassify(classify, version)
                    if not changed:
                        break
                    try:
                        self.app.save(aggregate)
                        self._remember(document_id, aggregate)
                        break
                    except IntegrityError:
                        # A running daemon captured this document meanwhile: load it again.
                        if attempt == attempts - 1:
                            raise
            result[document_id] = changed
        self.views.catch_up()
        return result

    def _take(self, document_id: str) -> Document:
        """The aggregate validators() loaded for this poll, else one built from the
        document's head, else a fresh load."""
        with self._locks_guard:
            aggregate = self._loaded.pop(document_id, None)
        if aggregate is not None:
            return aggregate
        head = self.heads.get(document_id)
        aggregate = self._from_head(document_id, head) if head is not None else None
        return aggregate if aggregate is not None else self._get(document_id)

    def _loaded_for(self, document_id: str) -> bool:
        """True if validators() loaded the document's aggregate for the poll under way (its
        record_fetch takes that one: `_take`)."""
        with self._locks_guard:
            return document_id in self._loaded

    def _from_head(self, document_id: str, head: dict[str, Any]) -> Document | None:
        """An aggregate built from the document's head, for saving one event past it; None
        when the whole aggregate is needed (no I/O: callable on the event loop)."""
        # Every 50th event is saved from the whole aggregate, which the store snapshots, so
        # loading a document never replays more than 50 events.
        if not (head["version"] + 1) % self.app.SNAPSHOT_EVERY:
            return None
        try:
            return Document.from_head(head)
        except (KeyError, ValueError, TypeError):
            self.heads.forget(document_id)  # written by another release: reload
            return None

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

    def clause(self, clause_id: str, *,
               peers_per_platform: int = PEERS_PER_PLATFORM) -> dict[str, Any]:
        """One clause's record: its history, its categories with their rarity and the same
        categories' clauses at other platforms, and its document's record."""
        db = self.store.db
        rows = db.query(f"SELECT {CLAUSE_COLUMNS}, d.platform AS platform FROM {_CLAUSES} "
                        "WHERE c.id = ?", (clause_id,))
        if not rows:
            raise UnknownClauseError(clause_id)
        record = _clause_row(rows[0])
        platform = rows[0]["platform"]
        record["platform"] = platform
        history = db.query("SELECT * FROM cw_changes WHERE clause = ? ORDER BY seq",
                           (clause_id,))
        record["history"] = [_change_row(r) for r in history]
        record["category_history"] = [_category_change_row(r) for r in db.query(
            "SELECT * FROM cw_category_changes WHERE clause = ? ORDER BY seq", (clause_id,))]
        record["document_record"] = self.document(record["document"])
        watched = self._platforms_watched()
        for category in record["categories"] or []:
            category["rarity"] = self._rarity(category["id"], watched)
            category["other_platforms"] = self._peers(category["id"], platform,
                                                      peers_per_platform)
        return record

    # Categories --------------------------------------------------------------------------

    def categories(self) -> list[dict[str, Any]]:
        """Every category: the taxonomy's, then any only older classifications used."""
        db = self.store.db
        watched = self._platforms_watched()
        counts = {row["category"]: row for row in db.query(
            """SELECT category, MIN(name) AS name, MIN(severity) AS severity,
                      COUNT(DISTINCT platform) AS platforms,
                      COUNT(DISTINCT document) AS documents, COUNT(*) AS clauses
               FROM cw_clause_categories GROUP BY category""")}
        result = []
        known = self.taxonomy.categories if self.taxonomy is not None else ()
        for category in known:
            result.append(self._category_summary(category.id, counts.get(category.id),
                                                 watched))
        for category_id in sorted(set(counts) - {c.id for c in known}):
            result.append(self._category_summary(category_id, counts[category_id], watched))
        return result

    def category(self, category_id: str) -> dict[str, Any]:
        """One category: its rarity and, per platform and document, the clauses under it."""
        db = self.store.db
        rows = db.query(
            """SELECT cc.category, cc.name, cc.severity, cc.confidence, cc.platform,
                      cc.document, d.record_no AS document_no, d.title, c.id, c.record_no,
                      c.text, c.section, c.first_seen, c.changes
               FROM cw_clause_categories cc JOIN cw_clauses c ON c.id = cc.clause
               JOIN cw_documents d ON d.id = cc.document
               WHERE cc.category = ? ORDER BY cc.platform, cc.document, c.position, c.id""",
            (category_id,))
        in_taxonomy = self.taxonomy is not None and any(
            c.id == category_id for c in self.taxonomy.categories)
        if not rows and not in_taxonomy:
            raise UnknownCategoryError(category_id)
        summary_row = None
        if rows:
            summary_row = {"name": rows[0]["name"], "severity": rows[0]["severity"],
                           "platforms": len({r["platform"] for r in rows}),
                           "documents": len({r["document"] for r in rows}),
                           "clauses": len(rows)}
        summary = self._category_summary(category_id, summary_row, self._platforms_watched())
        platforms: dict[str, dict[str, Any]] = {}
        for r in rows:
            platform = platforms.setdefault(r["platform"], {"platform": r["platform"],
                                                            "documents": {}})
            doc = platform["documents"].setdefault(r["document"], {
                "id": r["document"], "record_id": document_record_id(r["document_no"]),
                "title": r["title"], "clauses": []})
            doc["clauses"].append({
                "id": r["id"], "record_id": clause_record_id(r["record_no"]),
                "section": json.loads(r["section"]), "text": r["text"],
                "confidence": r["confidence"], "first_seen": r["first_seen"],
                "changes": r["changes"]})
        summary["platforms_with_category"] = [
            {"platform": p["platform"], "documents": list(p["documents"].values())}
            for p in platforms.values()]
        return summary

    def _category_summary(self, category_id: str, counts: dict[str, Any] | None,
                          watched: int) -> dict[str, Any]:
        defined = None
        if self.taxonomy is not None:
            defined = next((c for c in self.taxonomy.categories if c.id == category_id), None)
        platforms = int(counts["platforms"]) if counts else 0
        return {
            "id": category_id,
            "name": defined.name if defined else (counts or {}).get("name", category_id),
            "severity": defined.severity if defined else (counts or {}).get("severity"),
            "description": defined.description if defined else None,
            "regulations": list(defined.regulations) if defined else [],
            "in_taxonomy": defined is not None,
            "rarity": _rarity_text(platforms, watched),
            "platforms": platforms, "platforms_watched": watched,
            "documents": int(counts["documents"]) if counts else 0,
            "clauses": int(counts["clauses"]) if counts else 0,
        }

    def _platforms_watched(self) -> int:
        return int(self.store.db.scalar("SELECT COUNT(DISTINCT platform) FROM cw_documents")
                   or 0)

    def _rarity(self, category_id: str, watched: int) -> dict[str, Any]:
        row = self.store.db.query(
            """SELECT COUNT(DISTINCT platform) AS platforms, COUNT(DISTINCT document) AS
                      documents, COUNT(*) AS clauses
               FROM cw_clause_categories WHERE category = ?""", (category_id,))[0]
        platforms = int(row["platforms"] or 0)
        return {"text": _rarity_text(platforms, watched), "platforms": platforms,
                "platforms_watched": watched, "documents": int(row["documents"] or 0),
                "clauses": int(row["clauses"] or 0)}

    def _peers(self, category_id: str, platform: str, per_platform: int) -> list[dict[str, Any]]:
        """The category's clauses at other platforms, most confident first, current text."""
        rows = self.store.db.query(
            """SELECT cc.platform, cc.document, cc.confidence, d.title, d.record_no AS
                      document_no, c.id, c.record_no, c.text, c.section, c.first_seen,
                      c.changes
               FROM cw_clause_categories cc JOIN cw_clauses c ON c.id = cc.clause
               JOIN cw_documents d ON d.id = cc.document
               WHERE cc.category = ? AND cc.platform <> ?
               ORDER BY cc.platform, cc.confidence DESC, c.record_no""",
            (category_id, platform))
        peers: list[dict[str, Any]] = []
        shown: dict[str, int] = {}
        for r in rows:
            if shown.get(r["platform"], 0) >= per_platform:
                continue
            shown[r["platform"]] = shown.get(r["platform"], 0) + 1
            peers.append({
                "platform": r["platform"], "document": r["document"],
                "document_title": r["title"],
                "document_record_id": document_record_id(r["document_no"]),
                "clause": r["id"], "record_id": clause_record_id(r["record_no"]),
                "section": json.loads(r["section"]), "text": r["text"],
                "confidence": r["confidence"], "first_seen": r["first_seen"],
                "changes": r["changes"]})
        return peers

    # Citations ---------------------------------------------------------------------------

    def citation_record(self, clause_id: str, *, verify: bool = False,
                        now: datetime | None = None) -> dict[str, Any]:
        """What a citation of the clause needs: the clause, its document, the capture that
        shows its current (or last) wording, and whether that capture's bytes still verify.

        The verification is the last one recorded, made now if there is none or `verify`.
        """
        db = self.store.db
        rows = db.query(f"SELECT {CLAUSE_COLUMNS}, c.last_sha256 FROM {_CLAUSES} "
                        "WHERE c.id = ?", (clause_id,))
        if not rows:
            raise UnknownClauseError(clause_id)
        row = rows[0]
        clause = _clause_row(row)
        document = self.document(clause["document"])
        if clause["status"] == "present":
            captures = db.query(
                f"""SELECT * FROM cw_captures WHERE document = ? AND {_GOOD_CAPTURE}
                    ORDER BY bytes_dropped, seq DESC LIMIT 1""", (clause["document"],))
        else:
            captures = db.query(
                f"""SELECT * FROM cw_captures WHERE document = ? AND sha256 = ?
                    AND {_GOOD_CAPTURE} ORDER BY seq DESC LIMIT 1""",
                (clause["document"], row["last_sha256"]))
        capture = _capture_row(captures[0]) if captures else None
        verification = None
        if capture is not None:
            verification = self.capture_verification(capture["sha256"], recompute=verify,
                                                     now=now)
        return {
            "record_id": clause["record_id"], "clause_id": clause["id"],
            "entity": document["platform"],
            "document": {k: document[k] for k in ("id", "record_id", "title", "url",
                                                  "first_tracked", "last_verified",
                                                  "last_updated")},
            "section": clause["section"], "text": clause["text"], "status": clause["status"],
            "first_seen": clause["first_seen"], "last_seen": clause["last_seen"],
            # When the cited wording itself was first captured (its last rewording).
            "wording_since": db.scalar(
                "SELECT MAX(captured_at) FROM cw_changes WHERE clause = ? AND kind = 'modified'",
                (clause_id,)) or clause["first_seen"],
            "changes": clause["changes"],
            "categories": [{k: c[k] for k in ("id", "name", "severity", "confidence")}
                           for c in clause["categories"] or []],
            "capture": capture, "verification": verification,
        }

    def capture_verification(self, sha256: str, *, recompute: bool = False,
                             now: datetime | None = None) -> dict[str, Any]:
        """Whether a capture's stored bytes still hash to `sha256`: the last recorded check,
        or a new one (recorded) when there is none or `recompute`."""
        db = self.store.db
        if not recompute:
            rows = db.query("SELECT * FROM cw_evidence_checks WHERE sha256 = ?", (sha256,))
            if rows:
                return _verification_row(rows[0], recomputed=False)
        checked_at = iso(now or datetime.now(UTC))
        dropped = db.scalar("SELECT MIN(bytes_dropped) FROM cw_captures WHERE sha256 = ?",
                            (sha256,))
        if dropped:
            status, actual = "dropped", None
        else:
            result = self.store.evidence.verify(sha256)
            status, actual = result.status, result.actual
        db.execute("""INSERT INTO cw_evidence_checks (sha256, status, actual, checked_at)
                      VALUES (?, ?, ?, ?) ON CONFLICT (sha256) DO UPDATE SET
                      status = excluded.status, actual = excluded.actual,
                      checked_at = excluded.checked_at""",
                   (sha256, status, actual, checked_at))
        return _verification_row({"sha256": sha256, "status": status, "actual": actual,
                                  "checked_at": checked_at}, recomputed=True)

    # Export pages ------------------------------------------------------------------------

    def clause_page(self, *, after_record_no: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Clauses of every document in record order, `limit` after a record number."""
        rows = self.store.db.query(
            f"""SELECT {CLAUSE_COLUMNS}, d.platform AS platform FROM {_CLAUSES}
                WHERE c.record_no > ? ORDER BY c.record_no LIMIT {int(limit)}""",
            (after_record_no,))
        return [{**_clause_row(r), "platform": r["platform"], "record_no": r["record_no"]}
                for r in rows]

    def clause_category_rows(self, first_record_no: int,
                             last_record_no: int) -> list[dict[str, Any]]:
        """(clause, category) rows of present clauses numbered in [first, last]."""
        rows = self.store.db.query(
            """SELECT cc.category, cc.name, cc.severity, cc.confidence, cc.platform,
                      cc.document, c.id AS clause, c.record_no
               FROM cw_clause_categories cc JOIN cw_clauses c ON c.id = cc.clause
               WHERE c.record_no BETWEEN ? AND ? ORDER BY c.record_no, cc.category""",
            (first_record_no, last_record_no))
        return [{"category": r["category"], "name": r["name"], "severity": r["severity"],
                 "confidence": r["confidence"], "clause": r["clause"],
                 "record_id": clause_record_id(r["record_no"]), "document": r["document"],
                 "platform": r["platform"]} for r in rows]

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
            self.store.db.execute(
                """INSERT INTO cw_evidence_checks (sha256, status, actual, checked_at)
                   VALUES (?, ?, ?, ?) ON CONFLICT (sha256) DO UPDATE SET
                   status = excluded.status, actual = excluded.actual,
                   checked_at = excluded.checked_at""",
                (row["sha256"], result.status, result.actual, iso(datetime.now(UTC))))
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


def _not_modified(doc: DocumentSettings, result: FetchResult,
                  aggregate: Document) -> CaptureResult:
    if aggregate.last_sha256 is None:
        raise DomainError(f"{doc.id}: a 304 answered a request without validators")
    return aggregate.record_not_modified(captured_at=result.fetched_at,
                                         requested_url=result.requested_url,
                                         final_url=result.final_url)


@dataclass(frozen=True, slots=True)
class _Read:
    """A page as a poll read it (`read_page`), and the region key it was read against."""

    against: str | None
    page: Extraction | SameRegion


@dataclass(slots=True, kw_only=True)
class HandedIn:
    """A 304 handed to the group commit by `hand_in_not_modified`: await `saved`, then
    `outcome()`. The document's lock is held until the save is done either way."""

    document_id: str
    aggregate: Document
    capture: CaptureResult
    saved: Future[None]
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    def outcome(self) -> CheckOutcome:
        """What the capture did, once `saved` is done without error."""
        append_seconds = (self.finished or time.perf_counter()) - self.started
        return _outcome(self.document_id, self.capture, self.aggregate.last_sha256,
                        self.aggregate.clause_count, append_seconds)


def _walk(aggregate: Document, known: dict[str, Any] | None) -> str:
    """Which tree to read a page's text from (domain.blocks.WALKS), given what the head says
    of the last good text (`known`): lexbor's when that text was read from it (or there is
    none yet), both otherwise."""
    if aggregate.text_sha256 is None:
        return LEXBOR
    return LEXBOR if known is not None and known.get("walk") == LEXBOR else BOTH


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


def document_record_id(record_no: int) -> str:
    """The stable, human-readable id of a document's record: CW-D-00033."""
    return f"CW-D-{record_no:05d}"


def clause_record_id(record_no: int) -> str:
    """The stable, human-readable id of a clause's record: CW-P-000305."""
    return f"CW-P-{record_no:06d}"


def _rarity_text(platforms: int, watched: int) -> str:
    return f"{platforms} of {watched} platform{'' if watched == 1 else 's'}"


def max_severity(categories: list[dict[str, Any]] | None) -> str | None:
    """The most severe of a clause's categories, or None."""
    levels = [c["severity"] for c in categories or [] if c.get("severity") in SEVERITIES]
    return max(levels, key=SEVERITIES.index) if levels else None


def _document_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "record_id": document_record_id(row["record_no"]),
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
        "id": row["id"], "record_id": clause_record_id(row["record_no"]),
        "document": row["document"], "section": json.loads(row["section"]),
        "text": row["text"], "kind": row["kind"], "first_seen": row["first_seen"],
        "last_seen": row["last_seen"], "changes": row["changes"], "months_monitored": months,
        "stability": stability(row["changes"], months), "status": row["status"],
        "position": row["position"],
        "categories": json.loads(row["categories"]) if row["categories"] else None,
    }


def _change_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["event_id"], "seq": row["seq"], "document": row["document"],
        "clause": row["clause"], "kind": row["kind"], "section": json.loads(row["section"]),
        "before": row["before"], "after": row["after"], "patch": row["patch"],
        "similarity": row["similarity"], "captured_at": row["captured_at"],
        "sha256": row["sha256"],
        "categories_before": _ids(row["categories_before"]),
        "categories_after": _ids(row["categories_after"]),
    }


def _ids(categories: str | None) -> list[str] | None:
    """The category ids of a stored JSON list (None: not classified)."""
    return None if categories is None else [c["id"] for c in json.loads(categories)]


def _category_change_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": row["seq"], "at": row["at"], "cause": row["cause"],
        "taxonomy_version": row["taxonomy_version"],
        "added": json.loads(row["added"]), "removed": json.loads(row["removed"]),
        "before": _ids(row["before"]), "after": _ids(row["after"]),
    }


def _verification_row(row: dict[str, Any], *, recomputed: bool) -> dict[str, Any]:
    return {"sha256": row["sha256"], "status": row["status"], "verifies": row["status"] == "ok",
            "actual": row["actual"], "checked_at": row["checked_at"], "recomputed": recomputed}


def _capture_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["event_id"], "document": row["document"], "captured_at": row["captured_at"],
        "outcome": row["outcome"], "http_status": row["http_status"], "sha256": row["sha256"],
        "size": row["size"], "text_sha256": row["text_sha256"], "final_url": row["final_url"],
        "content_type": row["content_type"], "reason": row["reason"],
        "changes": row["changes"], "bytes_stored": not row["bytes_dropped"],
    }
