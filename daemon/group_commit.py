"""Group commit: the captures of concurrent polls appended in one transaction.

Appending is serial (one SQLite writer; one row lock per document on PostgreSQL) and most of
its cost is the commit itself. A poll hands its aggregate to `GroupCommit.save` and waits; the
first waiting poll becomes the leader and saves everything handed in meanwhile in one
transaction, then the next batch, until none is left. If the store refuses a batch (one
document's head was stale: another replica appended first), each aggregate of it is saved
alone so that only the stale one fails, with its own error.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
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

    def save(self, aggregate: Any) -> None:
        """Save the aggregate's pending events; returns once they are committed, raises what
        saving it alone would raise."""
        done: Future[None] = Future()
        with self._lock:
            self._pending.append((aggregate, done))
            lead = not self._leading
            self._leading = True
        if lead:
            self._lead()
        done.result()

    def _lead(self) -> None:
        while True:
            with self._lock:
                batch = self._pending[:self.max_batch]
                del self._pending[:self.max_batch]
                if not batch:
                    self._leading = False
                    return
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
