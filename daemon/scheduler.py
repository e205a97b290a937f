"""APScheduler as the clock: each document's job only puts its id on the work queue."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

log = logging.getLogger("clausewatch.scheduler")


class PollQueue:
    """Document ids waiting for a worker; an id queued or in flight is never queued again."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
        self._pending: set[str] = set()

    def offer(self, document_id: str) -> bool:
        """Queue a poll unless one for this document is already queued or running."""
        if document_id in self._pending:
            return False
        self._pending.add(document_id)
        self._queue.put_nowait((document_id, time.monotonic()))
        return True

    async def take(self) -> tuple[str, float]:
        """The next document id and when it was queued (monotonic seconds)."""
        return await self._queue.get()

    def done(self, document_id: str) -> None:
        """The poll of this document has finished (or was dropped)."""
        self._pending.discard(document_id)
        self._queue.task_done()

    def drop_waiting(self) -> list[str]:
        """Forget every poll not yet started (at shutdown); returns their ids."""
        dropped = []
        while not self._queue.empty():
            document_id, _ = self._queue.get_nowait()
            self.done(document_id)
            dropped.append(document_id)
        return dropped

    @property
    def depth(self) -> int:
        """Polls waiting for a worker."""
        return self._queue.qsize()


def first_delay(document_id: str, interval: float) -> float:
    """Where in its first interval a document is first polled: spread by a hash of its id,
    so a restart never fires every document at once, and the same on every restart."""
    digest = hashlib.sha256(document_id.encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return fraction * interval


class PollScheduler:
    """One interval job per document; jobs enqueue, our workers do the work."""

    def __init__(self, queue: PollQueue, *, jitter: float,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 spread_first: bool = True) -> None:
        self.queue = queue
        self.jitter = jitter
        self.clock = clock
        self.spread_first = spread_first
        self.scheduler = AsyncIOScheduler(timezone=UTC, job_defaults={
            "coalesce": True,           # many missed runs fire once
            "max_instances": 1,
            "misfire_grace_time": None,  # a late run still runs, however late
        })
        self.intervals: dict[str, float] = {}

    @property
    def running(self) -> bool:
        """True while the clock runs."""
        return bool(self.scheduler.running)

    def start(self) -> None:
        """Start the clock on the running event loop."""
        self.scheduler.start()

    def shutdown(self) -> None:
        """Stop the clock; jobs only enqueue, so nothing is cut short here."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    async def _enqueue(self, document_id: str) -> None:
        # A coroutine job runs on the event loop (a plain function would run in a thread,
        # where the asyncio queue is not safe to touch).
        if not self.queue.offer(document_id):
            log.info("poll skipped: the previous one is still queued or running",
                     extra={"document": document_id})

    def apply(self, documents: Iterable[tuple[str, float]]) -> tuple[list[str], list[str],
                                                                      list[str]]:
        """Make the jobs match (id, interval) pairs; returns ids added, removed and re-timed."""
        wanted = dict(documents)
        added, removed, retimed = [], [], []
        for document_id in list(self.intervals):
            if document_id not in wanted:
                self.scheduler.remove_job(_job_id(document_id))
                del self.intervals[document_id]
                removed.append(document_id)
        for document_id, interval in wanted.items():
            current = self.intervals.get(document_id)
            if current == interval:
                continue
            delay = first_delay(document_id, interval) if self.spread_first else 0.0
            trigger = IntervalTrigger(seconds=interval, jitter=min(self.jitter, interval / 4)
                                      or None, timezone=UTC)
            next_run = self.clock() + timedelta(seconds=delay)
            if current is None:
                self.scheduler.add_job(self._enqueue, trigger, args=[document_id],
                                       id=_job_id(document_id), next_run_time=next_run,
                                       replace_existing=True)
                added.append(document_id)
            else:
                self.scheduler.modify_job(_job_id(document_id), trigger=trigger,
                                          next_run_time=next_run)
                retimed.append(document_id)
            self.intervals[document_id] = interval
        return added, removed, retimed


    def finished(self, document_id: str) -> None:
        """A poll is done (the shared clock releases its claim here; nothing to do locally)."""

    def abandon(self, document_ids: list[str]) -> None:
        """Queued polls dropped at shutdown (locally they simply run after the restart)."""


def _job_id(document_id: str) -> str:
    return f"poll:{document_id}"
