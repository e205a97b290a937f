"""Replicas on one PostgreSQL: poll claims with leases, and single-leader roles by advisory lock.

Polls: `cw_schedule` has one row per document with when it is next due. Each replica's clock
claims due rows with `FOR UPDATE SKIP LOCKED`, setting a lease; a replica that dies leaves a
lease that expires, and another replica claims the row. After a poll the row is released
with its next due time, so each document is polled once per interval by one replica.

Roles (views, outbox, digests): a session-level advisory lock on a dedicated connection.
When the holder dies its connection closes, the lock is released, and the next replica that
tries takes the role within one try interval.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from daemon.sql import Database

log = logging.getLogger("clausewatch.coordination")

SCHEDULE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS cw_schedule (
        document TEXT PRIMARY KEY, interval_seconds DOUBLE PRECISION NOT NULL,
        next_due TIMESTAMPTZ NOT NULL, lease_owner TEXT, lease_until TIMESTAMPTZ,
        last_polled TIMESTAMPTZ, last_owner TEXT, polls BIGINT NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS cw_schedule_due ON cw_schedule (next_due)",
)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for a name."""
    return int.from_bytes(hashlib.sha256(f"clausewatch:{name}".encode()).digest()[:8], "big",
                          signed=True)


class PollClaims:
    """The shared schedule of a PostgreSQL deployment."""

    def __init__(self, db: Database, owner: str, *, lease: float) -> None:
        if db.dialect != "postgres":
            raise ValueError("poll claims need PostgreSQL")
        self.db = db
        self.owner = owner
        self.lease = lease
        db.executescript(SCHEDULE_SCHEMA)

    def sync(self, documents: Iterable[tuple[str, float]], *, now: datetime | None = None,
             spread_first: bool = True) -> None:
        """Add new documents (first poll spread over their interval), re-time changed ones and
        drop those no longer configured."""
        # Here, not at the top: `check` opens the schema without the clock (APScheduler).
        from daemon.scheduler import first_delay

        now = now or datetime.now(UTC)
        wanted = dict(documents)
        with self.db.transaction() as tx:
            current = {r["document"]: r["interval_seconds"] for r in tx.query(
                "SELECT document, interval_seconds FROM cw_schedule")}
            for document, interval in wanted.items():
                if document not in current:
                    delay = first_delay(document, interval) if spread_first else 0.0
                    tx.execute(
                        """INSERT INTO cw_schedule (document, interval_seconds, next_due)
                           VALUES (?, ?, ?) ON CONFLICT (document) DO NOTHING""",
                        (document, interval, now + timedelta(seconds=delay)))
                elif current[document] != interval:
                    tx.execute(
                        """UPDATE cw_schedule SET interval_seconds = ?,
                           next_due = LEAST(next_due, ?) WHERE document = ?""",
                        (interval, now + timedelta(seconds=interval), document))
            for document in set(current) - set(wanted):
                tx.execute("DELETE FROM cw_schedule WHERE document = ?", (document,))

    def claim(self, limit: int) -> list[str]:
        """Claim up to `limit` due documents for this replica."""
        if limit <= 0:
            return []
        with self.db.transaction() as tx:
            rows = tx.query(
                f"""UPDATE cw_schedule SET lease_owner = ?,
                      lease_until = now() + make_interval(secs => ?)
                    WHERE document IN (
                      SELECT document FROM cw_schedule
                      WHERE next_due <= now()
                        AND (lease_until IS NULL OR lease_until < now())
                      ORDER BY next_due, document
                      LIMIT {int(limit)}
                      FOR UPDATE SKIP LOCKED)
                    RETURNING document""",
                (self.owner, self.lease))
        return sorted(r["document"] for r in rows)

    def release(self, document: str) -> None:
        """The poll is done: schedule the next one an interval after this one was due."""
        with self.db.transaction() as tx:
            tx.execute(
                """UPDATE cw_schedule SET
                     next_due = GREATEST(next_due + make_interval(secs => interval_seconds),
                                         now() + make_interval(secs => interval_seconds / 2)),
                     lease_owner = NULL, lease_until = NULL, last_polled = now(),
                     last_owner = ?, polls = polls + 1
                   WHERE document = ? AND lease_owner = ?""",
                (self.owner, document, self.owner))

    def abandon(self, document: str) -> None:
        """Give a claim back without polling (shutdown): due again at once for others."""
        with self.db.transaction() as tx:
            tx.execute("""UPDATE cw_schedule SET lease_owner = NULL, lease_until = NULL
                          WHERE document = ? AND lease_owner = ?""", (document, self.owner))


class Leadership:
    """Holds named single-leader roles through advisory locks on one dedicated connection."""

    def __init__(self, url: str, owner: str, *, schema: str | None = None) -> None:
        import psycopg

        self.owner = owner
        self._conn: Any = psycopg.connect(url, autocommit=True, connect_timeout=10)
        if schema:
            self._conn.execute(f'SET search_path TO "{schema}"')
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._schema = schema or ""

    def try_acquire(self, role: str) -> bool:
        """Take the role if no other replica holds it; True while this replica holds it."""
        with self._lock:
            if role in self._held:
                self._conn.execute("SELECT 1")  # the connection (and so the lock) is alive
                return True
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)",
                                     (lock_key(f"{self._schema}:{role}"),)).fetchone()
            if row and row[0]:
                self._held.add(role)
                log.info("took the %s role", role, extra={"replica": self.owner})
                return True
            return False

    def holds(self, role: str) -> bool:
        """True if this replica holds the role (as of the last try)."""
        return role in self._held

    def close(self) -> None:
        """Give up every role (closing the connection releases the locks)."""
        with self._lock:
            self._held.clear()
            self._conn.close()


class SharedClock:
    """The clock of a replica: an APScheduler tick claims due polls from the shared schedule.

    Same interface as daemon.scheduler.PollScheduler, so the workers do not know which runs.
    """

    def __init__(self, queue: Any, claims: PollClaims, *, capacity: Any,
                 tick: float = 0.2, spread_first: bool = True) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self.queue = queue
        self.claims = claims
        self.capacity = capacity  # callable: how many more polls this replica can take now
        self.tick = tick
        self.spread_first = spread_first
        self.scheduler = AsyncIOScheduler(timezone=UTC, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self.intervals: dict[str, float] = {}

    @property
    def running(self) -> bool:
        """True while the clock runs."""
        return bool(self.scheduler.running)

    def start(self) -> None:
        """Start claiming on the running event loop."""
        self.scheduler.add_job(self._claim, "interval", seconds=self.tick, id="claim")
        self.scheduler.start()

    def shutdown(self) -> None:
        """Stop claiming."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    async def _claim(self) -> None:
        import asyncio

        wanted = self.capacity()
        if wanted <= 0:
            return
        claimed = await asyncio.to_thread(self.claims.claim, wanted)
        for document_id in claimed:
            if not self.queue.offer(document_id):
                await asyncio.to_thread(self.claims.abandon, document_id)

    def apply(self, documents: Iterable[tuple[str, float]]) -> tuple[list[str], list[str],
                                                                      list[str]]:
        """Make the shared schedule match this replica's config."""
        wanted = dict(documents)
        added = [d for d in wanted if d not in self.intervals]
        removed = [d for d in self.intervals if d not in wanted]
        retimed = [d for d in wanted if d in self.intervals and self.intervals[d] != wanted[d]]
        self.claims.sync(wanted.items(), spread_first=self.spread_first)
        self.intervals = wanted
        return added, removed, retimed

    def finished(self, document_id: str) -> None:
        """Release the claim with the next due time."""
        self.claims.release(document_id)

    def abandon(self, document_ids: list[str]) -> None:
        """Give back claims dropped at shutdown, so another replica polls them now."""
        for document_id in document_ids:
            self.claims.abandon(document_id)
