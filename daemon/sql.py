"""A small synchronous SQL layer over SQLite and PostgreSQL for the read side and the outbox."""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_PLACEHOLDER = re.compile(r"\?")


class Database:
    """One connection, used under a lock; `?` placeholders work on both dialects."""

    def __init__(self, url: str, *, schema: str | None = None, lock_timeout: float = 5.0) -> None:
        self.url = url
        self.schema = schema
        self.lock = threading.RLock()
        if url.startswith("sqlite:///"):
            self.dialect = "sqlite"
            path = Path(url[len("sqlite:///"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn: Any = sqlite3.connect(str(path), check_same_thread=False,
                                              isolation_level=None, timeout=lock_timeout)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        elif url.startswith(("postgresql://", "postgres://")):
            import psycopg
            from psycopg.rows import dict_row

            self.dialect = "postgres"
            self._conn = psycopg.connect(url, autocommit=True, row_factory=dict_row,
                                         connect_timeout=10)
            self._conn.execute(f"SET lock_timeout = '{int(lock_timeout * 1000)}ms'")
            # Everything here is derived from the event log together with its position, in
            # one transaction: a crash may lose the last commits, never half of one, and they
            # are derived again. So the read side need not wait for each WAL flush.
            self._conn.execute("SET synchronous_commit = off")
            if schema:
                self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                self._conn.execute(f'SET search_path TO "{schema}"')
        else:
            raise ValueError(f"unsupported database URL {url!r}")

    def _sql(self, sql: str) -> str:
        return _PLACEHOLDER.sub("%s", sql) if self.dialect == "postgres" else sql

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Run statements in one transaction; commits on success, rolls back on error."""
        with self.lock:
            if self.dialect == "sqlite":
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield Transaction(self)
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            else:
                with self._conn.transaction():
                    yield Transaction(self)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read-only query as dicts."""
        with self.lock:
            cursor = self._conn.execute(self._sql(sql), tuple(params))
            return [dict(row) for row in cursor.fetchall()]

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first column of the first row, or None."""
        rows = self.query(sql, params)
        return next(iter(rows[0].values())) if rows else None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in its own transaction; returns the affected row count."""
        with self.transaction() as tx:
            return tx.execute(sql, params)

    def executescript(self, statements: Sequence[str]) -> None:
        """Run DDL statements in one transaction."""
        with self.transaction() as tx:
            for statement in statements:
                tx.execute(statement)

    def close(self) -> None:
        """Close the connection."""
        with self.lock:
            self._conn.close()


class Transaction:
    """Statements inside Database.transaction()."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = self.db._conn.execute(self.db._sql(sql), tuple(params))
        return cursor.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run one statement for each row; returns the affected row count, summed."""
        if not rows:
            return 0
        if self.db.dialect == "sqlite":
            return int(self.db._conn.executemany(sql, rows).rowcount)
        with self.db._conn.cursor() as cursor:
            if len(rows) <= 4:  # a pipeline costs more than it saves on a few rows
                count = 0
                for row in rows:
                    cursor.execute(self.db._sql(sql), tuple(row))
                    count += cursor.rowcount
                return count
            cursor.executemany(self.db._sql(sql), rows)
            return int(cursor.rowcount)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        """Rows of a query as tuples (cheaper than `query` for many rows)."""
        if self.db.dialect == "sqlite":
            return self.db._conn.execute(sql, tuple(params)).fetchall()
        from psycopg.rows import tuple_row

        with self.db._conn.cursor(row_factory=tuple_row) as cursor:
            cursor.execute(self.db._sql(sql), tuple(params))
            return cursor.fetchall()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self.db._conn.execute(self.db._sql(sql), tuple(params))
        return [dict(row) for row in cursor.fetchall()]

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self.query(sql, params)
        return next(iter(rows[0].values())) if rows else None
