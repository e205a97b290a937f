"""The notify consumer: turns each captured change into delivery rows, exactly once.

The consumer reads the event log from its tracked position. For each capture that changed
clauses it decides which subscriptions want which of the changes and records that decision
(notices, delivery rows, digest items) together with the new position in one transaction, so
a crash never skips or repeats a decision. Delivery happens later, from those rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from config.settings import SEVERITIES, SubscriptionSettings
from daemon.projections import SCHEMA as VIEW_SCHEMA
from daemon.sql import Database, Transaction
from notifiers.notice import ClauseNotice, DocumentNotice

log = logging.getLogger("clausewatch.outbox")

NAME = "notify"
CAPTURED_TOPIC = "Document.DocumentCaptured"
CHANGED_TOPIC = "Document.ClauseChanged"
REDESCRIBED_TOPIC = "Document.DocumentRedescribed"

SCHEMA = (
    # One row per message: its content is fixed when it is decided, so retries send the same.
    """CREATE TABLE IF NOT EXISTS cw_notices (
        id TEXT PRIMARY KEY, subscription TEXT NOT NULL, kind TEXT NOT NULL,
        source TEXT NOT NULL, seq BIGINT, captured_at DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL, window_start DOUBLE PRECISION,
        window_end DOUBLE PRECISION, documents TEXT NOT NULL)""",
    # One row per notice and channel; `budget_start` is when the retry budget started.
    """CREATE TABLE IF NOT EXISTS cw_deliveries (
        id TEXT PRIMARY KEY, notice TEXT NOT NULL, subscription TEXT NOT NULL,
        channel TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, created_at DOUBLE PRECISION NOT NULL,
        budget_start DOUBLE PRECISION NOT NULL, captured_at DOUBLE PRECISION,
        next_attempt_at DOUBLE PRECISION NOT NULL, last_attempt_at DOUBLE PRECISION,
        delivered_at DOUBLE PRECISION, last_error TEXT, last_status INTEGER,
        lease_owner TEXT, lease_until DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS cw_deliveries_due ON cw_deliveries (status, next_attempt_at)",
    "CREATE INDEX IF NOT EXISTS cw_deliveries_created ON cw_deliveries (created_at)",
    # Changes waiting for a daily or weekly digest; `digest` is the notice that took them.
    """CREATE TABLE IF NOT EXISTS cw_digest_items (
        subscription TEXT NOT NULL, source TEXT NOT NULL, seq BIGINT NOT NULL,
        document TEXT NOT NULL, captured_at DOUBLE PRECISION NOT NULL, body TEXT NOT NULL,
        digest TEXT, PRIMARY KEY (subscription, source))""",
    "CREATE INDEX IF NOT EXISTS cw_digest_items_open ON cw_digest_items (subscription, digest)",
    """CREATE TABLE IF NOT EXISTS cw_digest_state (
        subscription TEXT PRIMARY KEY, last_end DOUBLE PRECISION NOT NULL)""",
    # Channels switched off by a 410 Gone, until their address changes or an operator retries.
    """CREATE TABLE IF NOT EXISTS cw_channel_state (
        channel TEXT PRIMARY KEY, status TEXT NOT NULL, reason TEXT NOT NULL,
        fingerprint TEXT NOT NULL, since DOUBLE PRECISION NOT NULL)""",
)

Reader = Callable[[int, int], Sequence[Any]]
Decoder = Callable[[Any], Any]
# An aggregate id -> the aggregate (for documents the read views have not seen yet).
AggregateLookup = Callable[[Any], Any]


class OutboxError(RuntimeError):
    """The event log is not shaped as the consumer expects; names the event."""


def create_schema(db: Database) -> None:
    """Create the notification tables (and the views' position table) if missing."""
    db.executescript(VIEW_SCHEMA[:1] + SCHEMA)


def notice_id(source: str, subscription_id: str) -> str:
    """The idempotency key of one message: a stable hash of what caused it and for whom."""
    digest = hashlib.sha256(f"{source}\x00{subscription_id}".encode()).hexdigest()
    return f"ntc_{digest[:32]}"


def delivery_id(notice: str, channel_id: str) -> str:
    """The id of one notice's delivery to one channel."""
    digest = hashlib.sha256(f"{notice}\x00{channel_id}".encode()).hexdigest()
    return f"dlv_{digest[:24]}"


def epoch(moment: datetime) -> float:
    """Unix seconds of an aware datetime (naive is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def from_epoch(seconds: float | None) -> datetime | None:
    """The aware UTC datetime of Unix seconds."""
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


# Stored notice content ---------------------------------------------------------------------


def encode_documents(documents: Iterable[DocumentNotice]) -> str:
    """Document notices as the JSON kept in cw_notices and cw_digest_items."""
    return json.dumps([_document_dict(d) for d in documents], ensure_ascii=False,
                      separators=(",", ":"), sort_keys=True)


def decode_documents(text: str) -> tuple[DocumentNotice, ...]:
    """The document notices of encode_documents, equal to what was stored."""
    return tuple(_document_from(d) for d in json.loads(text))


def _document_dict(doc: DocumentNotice) -> dict[str, Any]:
    return {
        "document_id": doc.document_id, "platform": doc.platform, "title": doc.title,
        "url": doc.url, "captured_at": doc.captured_at.astimezone(UTC).isoformat(),
        "sha256": doc.sha256, "evidence_url": doc.evidence_url,
        "document_link": doc.document_link,
        "changes": [{"clause_id": c.clause_id, "kind": c.kind, "section": list(c.section),
                     "before": c.before, "after": c.after, "categories": list(c.categories),
                     "severity": c.severity} for c in doc.changes],
    }


def _document_from(data: Mapping[str, Any]) -> DocumentNotice:
    return DocumentNotice(
        document_id=data["document_id"], platform=data["platform"], title=data["title"],
        url=data["url"], captured_at=datetime.fromisoformat(data["captured_at"]),
        sha256=data["sha256"], evidence_url=data["evidence_url"],
        document_link=data["document_link"],
        changes=tuple(ClauseNotice(clause_id=c["clause_id"], kind=c["kind"],
                                   section=tuple(c["section"]), before=c["before"],
                                   after=c["after"], categories=tuple(c["categories"]),
                                   severity=c["severity"]) for c in data["changes"]),
    )


# Filters -----------------------------------------------------------------------------------


def wants_document(subscription: SubscriptionSettings, *, document_id: str,
                   platform: str) -> bool:
    """True when the subscription's platforms and documents lists let this document in."""
    if subscription.documents and document_id not in subscription.documents:
        return False
    if subscription.platforms:
        wanted = {p.casefold() for p in subscription.platforms}
        if platform.casefold() not in wanted:
            return False
    return True


def wants_clause(subscription: SubscriptionSettings, clause: ClauseNotice) -> bool:
    """True when the change passes the kinds, categories and min_severity filters."""
    if subscription.kinds and clause.kind not in subscription.kinds:
        return False
    if subscription.categories and not set(subscription.categories) & set(clause.categories):
        return False
    if subscription.min_severity:
        if clause.severity not in SEVERITIES:
            return False
        if SEVERITIES.index(clause.severity) < SEVERITIES.index(subscription.min_severity):
            return False
    return True


# The consumer ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Document:
    slug: str
    platform: str
    title: str
    url: str


class Outbox:
    """The `notify` consumer of the event log (sync: call it from a thread)."""

    def __init__(self, db: Database, *, read: Reader, decode: Decoder,
                 max_notification_id: Callable[[], int],
                 subscriptions: Sequence[SubscriptionSettings],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 aggregate: AggregateLookup | None = None,
                 public_url: str | None = None, history: bool = False,
                 batch_size: int = 200) -> None:
        self.db = db
        self.read = read
        self.decode = decode
        self.subscriptions = tuple(subscriptions)
        self.clock = clock
        self.aggregate = aggregate
        self.public_url = public_url.rstrip("/") if public_url else None
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._documents: dict[str, _Document] = {}
        create_schema(db)
        # The first start begins at the end of the log: a new install does not alert on
        # history. `history=True` starts at the beginning instead.
        start = 0 if history else max_notification_id()
        with db.transaction() as tx:
            tx.execute("INSERT INTO cw_positions (name, position) VALUES (?, ?) "
                       "ON CONFLICT (name) DO NOTHING", (NAME, start))

    def position(self) -> int:
        """The last notification id whose decision is recorded."""
        return int(self.db.scalar("SELECT position FROM cw_positions WHERE name = ?", (NAME,))
                   or 0)

    def consume(self) -> int:
        """Decide the deliveries of every event not yet seen; returns how many were read."""
        done = 0
        with self._lock:
            while True:
                batch = self.read(self.position() + 1, self.batch_size)
                if not batch:
                    return done
                with self.db.transaction() as tx:
                    # Locks the position row on PostgreSQL, so replicas take turns.
                    current = _position_for_update(tx)
                    fresh = [n for n in batch if n.id > current]
                    by_id = {n.id: n for n in fresh}
                    for notification in fresh:
                        if notification.topic.endswith(CAPTURED_TOPIC):
                            self._on_capture(tx, notification, by_id)
                        elif notification.topic.endswith(REDESCRIBED_TOPIC):
                            self._on_redescribed(tx, notification)
                    if fresh:
                        tx.execute("UPDATE cw_positions SET position = ? WHERE name = ?",
                                   (fresh[-1].id, NAME))
                done += len(fresh)

    def _on_capture(self, tx: Transaction, notification: Any, by_id: Mapping[int, Any]) -> None:
        event = self.decode(notification)
        if event.outcome != "changed" or not event.changes:
            return
        changes = self._clause_events(notification, int(event.changes), by_id)
        doc = self._document(tx, notification.originator_id)
        source = f"{notification.originator_id}:{notification.originator_version}"
        captured_at = event.captured_at
        if captured_at.tzinfo is None:
            captured_at = captured_at.replace(tzinfo=UTC)
        clauses = [self._clause_notice(change) for change in changes]
        now = epoch(self.clock())
        for sub in self.subscriptions:
            if not wants_document(sub, document_id=doc.slug, platform=doc.platform):
                continue
            kept = tuple(c for c in clauses if wants_clause(sub, c))
            if not kept:
                continue
            body = encode_documents([self._document_notice(doc, event, captured_at, kept)])
            if sub.mode == "immediate":
                nid = notice_id(source, sub.id)
                tx.execute(
                    """INSERT INTO cw_notices (id, subscription, kind, source, seq, captured_at,
                       created_at, documents) VALUES (?, ?, 'alert', ?, ?, ?, ?, ?)
                       ON CONFLICT (id) DO NOTHING""",
                    (nid, sub.id, source, notification.id, epoch(captured_at),
                     epoch(captured_at), body))
                insert_deliveries(tx, nid, sub, kind="alert", now=now,
                                  captured_at=epoch(captured_at))
            else:
                tx.execute(
                    """INSERT INTO cw_digest_items (subscription, source, seq, document,
                       captured_at, body) VALUES (?, ?, ?, ?, ?, ?)
                       ON CONFLICT (subscription, source) DO NOTHING""",
                    (sub.id, source, notification.id, doc.slug, epoch(captured_at), body))

    def _on_redescribed(self, tx: Transaction, notification: Any) -> None:
        # The views may not have seen the new title yet: take it from the event itself.
        event = self.decode(notification)
        slug = self._document(tx, notification.originator_id).slug
        self._documents[str(notification.originator_id)] = _Document(
            slug=slug, platform=event.platform, title=event.title, url=event.url)

    def _clause_events(self, capture: Any, count: int, by_id: Mapping[int, Any]) -> list[Any]:
        """The ClauseChanged events saved with a capture: the `count` events right after it."""
        wanted = range(capture.id + 1, capture.id + 1 + count)
        found = [by_id.get(i) for i in wanted]
        if any(n is None for n in found) or not all(self._follows(capture, n, k)
                                                    for k, n in enumerate(found, 1)):
            # The batch ended inside the capture's events (or ids have gaps): read them.
            following = self.read(capture.id + 1, count * 2 + 16)
            found = [n for n in following if n.originator_id == capture.originator_id
                     and capture.originator_version < n.originator_version
                     <= capture.originator_version + count]
        if len(found) != count or not all(self._follows(capture, n, k)
                                           for k, n in enumerate(found, 1)):
            raise OutboxError(
                f"event {capture.id} (document {capture.originator_id}, version "
                f"{capture.originator_version}) announces {count} clause changes but the log "
                f"holds {len(found)} right after it; the log is damaged — restore it from a "
                "backup or run `clausewatch rebuild` after checking it")
        return [self.decode(n) for n in found]

    @staticmethod
    def _follows(capture: Any, notification: Any, k: int) -> bool:
        return (notification is not None
                and notification.originator_id == capture.originator_id
                and notification.originator_version == capture.originator_version + k
                and notification.topic.endswith(CHANGED_TOPIC))

    def _document(self, tx: Transaction, aggregate_id: Any) -> _Document:
        key = str(aggregate_id)
        cached = self._documents.get(key)
        if cached is not None:
            return cached
        rows = tx.query("SELECT id, platform, title, url FROM cw_documents "
                        "WHERE aggregate_id = ?", (key,))
        if rows:
            row = rows[0]
            doc = _Document(slug=row["id"], platform=row["platform"], title=row["title"],
                            url=row["url"])
        elif self.aggregate is not None:
            # The read views lag behind (they catch up on their own): ask the aggregate.
            aggregate = self.aggregate(aggregate_id)
            doc = _Document(slug=aggregate.slug, platform=aggregate.platform,
                            title=aggregate.title, url=aggregate.url)
        else:
            raise OutboxError(f"document {key} is not in the read views yet")
        self._documents[key] = doc
        return doc

    def forget_documents(self) -> None:
        """Drop cached titles and URLs (after a config reload redescribed documents)."""
        self._documents.clear()

    def _clause_notice(self, change: Any) -> ClauseNotice:
        # The categories recorded with the change, before and after, so an alert says what
        # the clause's history says. A clause starting or ceasing to fall under a category is
        # alerted under it either way.
        seen: dict[str, None] = {}
        ranks: list[str] = []
        for side in (change.categories_before, change.categories_after):
            for category in side or ():
                seen[category["id"]] = None
                if category.get("severity") in SEVERITIES:
                    ranks.append(category["severity"])
        categories = tuple(seen)
        severity = max(ranks, key=SEVERITIES.index) if ranks else None
        return ClauseNotice(clause_id=change.clause_id, kind=change.kind,
                            section=tuple(change.section), before=change.before,
                            after=change.after, categories=categories, severity=severity)

    def _document_notice(self, doc: _Document, event: Any, captured_at: datetime,
                         changes: tuple[ClauseNotice, ...]) -> DocumentNotice:
        evidence = link = None
        if self.public_url:
            evidence = f"{self.public_url}/api/v1/captures/{event.sha256}"
            since = captured_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            link = (f"{self.public_url}/api/v1/changes?document={quote(doc.slug, safe='')}"
                    f"&since={since}")
        return DocumentNotice(document_id=doc.slug, platform=doc.platform, title=doc.title,
                              url=doc.url, captured_at=captured_at, sha256=event.sha256,
                              evidence_url=evidence, document_link=link, changes=changes)


def insert_deliveries(tx: Transaction, notice: str, subscription: SubscriptionSettings, *,
                      kind: str, now: float, captured_at: float | None) -> None:
    """One pending delivery per channel of the subscription (idempotent)."""
    tx.executemany(
        """INSERT INTO cw_deliveries (id, notice, subscription, channel, kind, status,
           attempts, created_at, budget_start, captured_at, next_attempt_at)
           VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING""",
        [(delivery_id(notice, channel), notice, subscription.id, channel, kind, now, now,
          captured_at, now) for channel in subscription.channels])


def _position_for_update(tx: Transaction) -> int:
    suffix = " FOR UPDATE" if tx.db.dialect == "postgres" else ""
    return int(tx.scalar(f"SELECT position FROM cw_positions WHERE name = ?{suffix}",
                         (NAME,)) or 0)
