"""Daily and weekly digests: at each window's end, one notice of the changes waiting for it.

Windows end at the subscription's `time` (and `day`, for weekly ones) in its IANA time zone,
so they follow daylight saving time. A digest takes every change recorded for the
subscription that no earlier digest took and that was captured before the window's end: a
change the outbox records late goes into the next digest instead of being lost.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from config.settings import WEEKDAYS, SubscriptionSettings
from daemon.outbox import decode_documents, encode_documents, epoch, from_epoch, insert_deliveries
from daemon.sql import Database
from notifiers.notice import DocumentNotice

log = logging.getLogger("clausewatch.digest")


def window_end(subscription: SubscriptionSettings, now: datetime) -> datetime:
    """The latest end of a digest window at or before `now`, in UTC."""
    zone = ZoneInfo(subscription.timezone)
    hour, minute = (int(part) for part in subscription.time.split(":"))
    local_day = now.astimezone(zone).date()
    for back in range(9):
        day = local_day - timedelta(days=back)
        if subscription.mode == "weekly" and day.weekday() != WEEKDAYS.index(subscription.day):
            continue
        end = _at(day, hour, minute, zone)
        if end <= now:
            return end
    raise AssertionError("a weekly window ends within every 8 days")


def previous_window_end(subscription: SubscriptionSettings, end: datetime) -> datetime:
    """The window end just before `end`."""
    return window_end(subscription, end - timedelta(seconds=1))


def _at(day: date, hour: int, minute: int, zone: ZoneInfo) -> datetime:
    # In a spring-forward gap the wall time does not exist; fold=0 maps it to just after
    # the gap, so the digest is sent once, an hour "late", rather than skipped.
    return datetime.combine(day, time(hour, minute), zone).astimezone(UTC)


def digest_id(subscription_id: str, end: datetime) -> str:
    """The idempotency key of one digest: the subscription and its window's end."""
    source = f"digest\x00{subscription_id}\x00{end.astimezone(UTC).isoformat()}"
    return f"ntc_{hashlib.sha256(source.encode()).hexdigest()[:32]}"


def group(documents: Sequence[DocumentNotice]) -> tuple[DocumentNotice, ...]:
    """One notice per document, ordered by platform then document, changes in capture order."""
    merged: dict[str, DocumentNotice] = {}
    for doc in documents:
        earlier = merged.get(doc.document_id)
        if earlier is None:
            merged[doc.document_id] = doc
            continue
        # The latest capture names the document and its evidence; the changes add up.
        merged[doc.document_id] = DocumentNotice(
            document_id=doc.document_id, platform=doc.platform, title=doc.title, url=doc.url,
            captured_at=doc.captured_at, sha256=doc.sha256, evidence_url=doc.evidence_url,
            document_link=earlier.document_link or doc.document_link,
            changes=earlier.changes + doc.changes)
    return tuple(sorted(merged.values(), key=lambda d: (d.platform.casefold(),
                                                        d.heading.casefold(), d.document_id)))


class Digests:
    """Builds due digests into notices and delivery rows (sync: call it from a thread)."""

    def __init__(self, db: Database, *, subscriptions: Sequence[SubscriptionSettings],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.db = db
        self.subscriptions = tuple(subscriptions)
        self.clock = clock

    def tick(self, now: datetime | None = None) -> list[str]:
        """Build every digest whose window has ended; returns the notice ids created."""
        now = now or self.clock()
        created = []
        for sub in self.subscriptions:
            if sub.mode in ("daily", "weekly"):
                notice = self._build(sub, now)
                if notice is not None:
                    created.append(notice)
        return created

    def _build(self, sub: SubscriptionSettings, now: datetime) -> str | None:
        end = window_end(sub, now)
        with self.db.transaction() as tx:
            lock = " FOR UPDATE" if tx.db.dialect == "postgres" else ""
            last = tx.scalar(f"SELECT last_end FROM cw_digest_state WHERE subscription = ?{lock}",
                             (sub.id,))
            if last is None:
                # The first window starts now: what is recorded from here on goes into it.
                tx.execute("INSERT INTO cw_digest_state (subscription, last_end) VALUES (?, ?) "
                           "ON CONFLICT (subscription) DO NOTHING", (sub.id, epoch(end)))
                return None
            if epoch(end) <= float(last):
                return None
            start = from_epoch(float(last))
            assert start is not None
            items = tx.query(
                """SELECT source, body FROM cw_digest_items WHERE subscription = ?
                   AND digest IS NULL AND captured_at < ? ORDER BY seq""",
                (sub.id, epoch(end)))
            tx.execute("UPDATE cw_digest_state SET last_end = ? WHERE subscription = ?",
                       (epoch(end), sub.id))
            if not items and not sub.send_empty:
                return None
            documents = group([d for item in items for d in decode_documents(item["body"])])
            notice = digest_id(sub.id, end)
            inserted = tx.execute(
                """INSERT INTO cw_notices (id, subscription, kind, source, created_at,
                   window_start, window_end, documents) VALUES (?, ?, 'digest', ?, ?, ?, ?, ?)
                   ON CONFLICT (id) DO NOTHING""",
                (notice, sub.id, f"digest:{end.isoformat()}", epoch(end), epoch(start),
                 epoch(end), encode_documents(documents)))
            if not inserted:
                return None
            tx.executemany("UPDATE cw_digest_items SET digest = ? WHERE subscription = ? "
                           "AND source = ?", [(notice, sub.id, i["source"]) for i in items])
            insert_deliveries(tx, notice, sub, kind="digest", now=epoch(now),
                              captured_at=None)
        log.info("digest %s for subscription %s: %d changes in %d documents", notice, sub.id,
                 sum(len(d.changes) for d in documents), len(documents))
        return notice
