"""Each document's head (its state without the clause list), kept so most polls need not load
the aggregate: a 304, the same bytes or new markup around the same text decide on it alone.

The heads are a cache, never the truth. An event recorded from a head carries the head's
version + 1, so the event store refuses it if the head is stale (another replica polled the
document, or a crash came between the save and the head's write); the poll then loads the
aggregate as before. Kept in memory for this process and in `cw_heads` beside the views for
the next one (a `check` run, a restart), written in batches.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson

from daemon.sql import Database

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS cw_heads (
        document TEXT PRIMARY KEY, version BIGINT NOT NULL, head TEXT NOT NULL)""",
)


class Heads:
    """Document heads in memory, with the ones not yet written to `cw_heads`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._heads: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self._loaded = False
        self._lock = threading.Lock()
        db.executescript(SCHEMA)

    def get(self, document_id: str) -> dict[str, Any] | None:
        """The last head known for a document, or None."""
        with self._lock:
            if not self._loaded:
                self._load()
            return self._heads.get(document_id)

    def peek(self, document_id: str) -> dict[str, Any] | None:
        """The head if it is in memory, without reading the table: safe on the event loop."""
        with self._lock:
            return self._heads.get(document_id)

    def put(self, document_id: str, head: dict[str, Any]) -> None:
        """Remember a document's head (written to the table at the next flush)."""
        with self._lock:
            known = self._heads.get(document_id)
            if known is None or known["version"] <= head["version"]:
                self._heads[document_id] = head
                self._dirty.add(document_id)

    def forget(self, document_id: str) -> None:
        """Drop a head found stale: the next poll loads the aggregate."""
        with self._lock:
            self._heads.pop(document_id, None)
            self._dirty.discard(document_id)

    def flush(self) -> int:
        """Write the heads changed since the last flush; returns how many."""
        with self._lock:
            # Heads are replaced, never changed in place: encode them outside the lock, which
            # the event loop takes too (peek).
            dirty = [(document_id, self._heads[document_id])
                     for document_id in sorted(self._dirty) if document_id in self._heads]
            self._dirty.clear()
        rows = [(document_id, head["version"], orjson.dumps(head).decode())
                for document_id, head in dirty]
        if rows:
            with self.db.transaction() as tx:
                # Replicas write heads too: the newest version wins.
                tx.executemany(
                    """INSERT INTO cw_heads (document, version, head) VALUES (?, ?, ?)
                       ON CONFLICT (document) DO UPDATE SET version = excluded.version,
                       head = excluded.head WHERE cw_heads.version < excluded.version""",
                    rows)
        return len(rows)

    def _load(self) -> None:
        # One query for all: a pass over every document reads them all anyway.
        for row in self.db.query("SELECT document, head FROM cw_heads"):
            if row["document"] not in self._heads:
                self._heads[row["document"]] = orjson.loads(row["head"])
        self._loaded = True
