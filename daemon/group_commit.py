"""Group commit: the captures of concurrent polls appended in one transaction.

Appending is serial (one SQLite writer; one row lock per document on PostgreSQL) and most of
its cost is the commit itself. A poll hands its aggregate to `GroupCommit.save` and waits; the
first waiting poll becomes the leader and saves everything handed in meanwhile in one
transaction, then the next batch, until none is left. A poll on the event loop hands its
aggregate in with `hand_in` and awaits the future instead: if no save is leading, the group
commit's own thread leads. If the store refuses a batch (one document's head was stale:
another replica appended first), each aggregate of it is saved alone so that only the stale
one fails, with its own error.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from daemon.store import ClauseWatchApp

MAX_BATCH = 64


class GroupCommit:
    """Saves aggregates handed in from many threads, several per transaction."""

    def __init__(self, app: ClauseWatchApp, *, max_batch: int = MAX_BATCH) -> None:
        self.app = app
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: list[tuple[Any, Future[None]]] = []
        self._leading = False
        self.batches = 0  # transactions made, for tests and the benchmark
        self.saved = 0
        self._leader: ThreadPoolExecutor | None = None  # leads for `hand_in`, made at need

    def save(self, aggregate: Any) -> None:
        """Save the aggregate's pending events; returns once they are committed, raises what
        saving it alone would raise."""
        done, lead = self._enqueue(aggregate)
        if lead:
            self._lead()
        done.result()

    def hand_in(self, aggregate: Any) -> Future[None]:
        """Hand in the aggregate's pending events without waiting (callable on the event
        loop): the future is done once they are committed, or holds what saving it alone
        raised. Cancelled before a batch takes it, it is not saved.

        If no save is leading, the group commit's own thread leads, never a thread of the
        caller's pool: all of those may be polls waiting in `save` for this very batch.
        """
        done, lead = self._enqueue(aggregate)
        if lead:
            with self._lock:
                if self._leader is None:
                    self._leader = ThreadPoolExecutor(max_workers=1,
                                                      thread_name_prefix="group-commit")
                leader = self._leader
            try:
                leader.submit(self._lead)
            except RuntimeError:  # no new threads (the interpreter is exiting): lead here
                self._lead()
        return done

    def close(self) -> None:
        """Wait for what was handed in to be saved; stop the group commit's thread."""
        with self._lock:
            leader, self._leader = self._leader, None
        if leader is not None:
            leader.shutdown(wait=True)

    def _enqueue(self, aggregate: Any) -> tuple[Future[None], bool]:
        """Hand the aggregate in; True if no save is leading (the caller must lead)."""
        done: Future[None] = Future()
        with self._lock:
            self._pending.append((aggregate, done))
            lead = not self._leading
            self._leading = True
        return done, lead

    def _lead(self) -> None:
        while True:
            with self._lock:
                batch = self._pending[:self.max_batch]
                del self._pending[:self.max_batch]
                if not batch:
                    self._leading = False
                    return
            # A poll cancelled while its aggregate waited gives it up; once taken, it stays.
            batch = [(aggregate, done) for aggregate, done in batch
                     if done.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                errors = self.app.save_many([aggregate for aggregate, _ in batch])
            except BaseException as exc:  # never leave a follower waiting
                errors = [exc] * len(batch)
            self.batches += 1
            self.saved += len(batch)
            for (_, done), error in zip(batch, errors, strict=True):
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)
