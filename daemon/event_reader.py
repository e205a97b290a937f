"""Reading SQLite's event table directly, for the views: in this process, or in a child
process that also inflates the stored state, one batch ahead, while a rebuild writes.

Only the standard library (and ISA-L's zlib, where installed) is imported here: the child
process imports this module and nothing else of clausewatch.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID


def zlib_module() -> Any:
    """ISA-L's zlib where installed (the same format, inflating in about half of zlib's
    time), the standard library's otherwise."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib
    return isal_zlib


class StoredRow(NamedTuple):
    """A stored event as eventsourcing's Notification has it, read straight from SQLite.

    `state` is None for a row the InflatingReader read: its inflated state comes beside it
    (read the row again for the stored bytes)."""

    id: int
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes | None


def _select(table: str) -> str:
    if not table.isidentifier():
        raise ValueError(f"unexpected event table name {table!r}")
    return ("SELECT rowid, originator_id, originator_version, topic, state "
            f"FROM {table} WHERE rowid >= ? ORDER BY rowid LIMIT ?")


def _connect(path: Path) -> sqlite3.Connection:
    # resolve(): a relative path is relative to the working directory, as the library's own
    # connection takes it (as_uri() wants an absolute one).
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                           check_same_thread=False)


class _Uuids:
    """One UUID per originator id text, kept for the next rows of the same documents."""

    KEPT = 100_000

    def __init__(self) -> None:
        self.known: dict[str, UUID] = {}

    def rows(self, rowids: Sequence[int], originators: Sequence[str],
             versions: Sequence[int], topics: Sequence[str],
             states: Sequence[bytes | None]) -> list[StoredRow]:
        known = self.known
        if len(known) > self.KEPT:
            known.clear()
        out = []
        for rowid, originator, version, topic, state in zip(rowids, originators, versions,
                                                            topics, states):
            uuid = known.get(originator)
            if uuid is None:
                uuid = known[originator] = UUID(originator)
            out.append(StoredRow(rowid, uuid, version, topic, state))
        return out


class SQLiteEventReader:
    """Reads SQLite's `stored_events` (eventsourcing's table) on a read-only connection of its
    own: plain rows, each originator's UUID made once. The library's reader builds a row
    mapping, a Notification and a UUID per event: three times as long for a rebuild's
    million events (1.1 s against 0.36 s per 200,000), most of it holding the GIL."""

    def __init__(self, path: Path, table: str = "stored_events") -> None:
        self.path = path
        self.table = table
        self._select = _select(table)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._uuids = _Uuids()

    def read(self, start: int, limit: int) -> list[StoredRow]:
        with self._lock:
            if self._conn is None:
                self._conn = _connect(self.path)
            rows = self._conn.execute(self._select, (start, limit)).fetchall()
            return self._uuids.rows(*zip(*rows)) if rows else []

    def inflating(self, compressed: bool) -> InflatingReader:
        """A reader of the same table in a child process (see InflatingReader)."""
        return InflatingReader(self.path, self.table, compressed)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class InflatingReader:
    """Reads stored events and inflates their state in a child process, one batch ahead.

    For a rebuild: reading and inflating a million events is ~6 s of a ~30 s replay, and a
    thread doing it in this process fights the writer for the GIL (it was slower than no
    read-ahead at all). The child sends each batch as plain lists through a pipe; `take`
    returns the rows (state None), their inflated states (None where inflating failed), how
    many times each names the JSON transcoder's `"_type_"` (the caller's check for nested
    encoded objects, a scan of every byte) and the size of what was stored, compressed.
    """

    def __init__(self, path: Path, table: str, compressed: bool) -> None:
        self.path = path
        self.table = table
        self.compressed = compressed
        self._uuids = _Uuids()
        self._conn: Any = None
        self._process: Any = None
        self._pending: tuple[int, int] | None = None

    def __enter__(self) -> InflatingReader:
        context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        # Two pipes rather than a socket pair: a pipe can be given a bigger buffer, and a
        # batch is megabytes (64 kB at a time was ~1 s of system time per million events).
        self._conn, replies = context.Pipe(duplex=False)
        requests, self._requests = context.Pipe(duplex=False)
        _widen(self._conn.fileno())
        self._process = context.Process(
            target=_serve, args=(requests, replies, str(self.path), self.table,
                                 self.compressed),
            name="clausewatch-event-reader", daemon=True)
        self._process.start()
        requests.close()
        replies.close()
        return self

    def __exit__(self, *exc: object) -> None:
        # Closing the replies first: a child busy sending a batch nobody will take stops.
        self._conn.close()
        try:
            self._requests.send(None)
        except OSError:
            pass
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._requests.close()

    def start(self, start: int, size: int) -> None:
        """Ask for the events from `start` on; they are read and inflated meanwhile."""
        if self._pending is None:
            try:
                self._requests.send((start, size))
            except OSError:
                raise self._died() from None
            self._pending = (start, size)

    def take(self, start: int,
             size: int) -> tuple[list[StoredRow], list[bytes | None], list[int], int]:
        if self._pending != (start, size):
            if self._pending is not None:
                self._receive()  # asked for something else: drop it
            self._pending = None
            self.start(start, size)
        self._pending = None
        rowids, originators, versions, topics, datas, marks, stored = self._receive()
        rows = self._uuids.rows(rowids, originators, versions, topics, [None] * len(rowids))
        return rows, datas, marks, stored

    def _receive(self) -> tuple[Any, ...]:
        try:
            reply = self._conn.recv()
        except (EOFError, OSError):
            raise self._died() from None
        if isinstance(reply, str):
            raise RuntimeError(f"the event reader process failed: {reply}")
        return reply  # type: ignore[no-any-return]

    def _died(self) -> RuntimeError:
        self._process.join(1)
        return RuntimeError("the event reader process ended unexpectedly (exit code "
                            f"{self._process.exitcode})")


def _widen(fd: int) -> None:
    """Give a pipe the biggest buffer an unprivileged process may (Linux; else as it is)."""
    try:
        import fcntl

        with open("/proc/sys/fs/pipe-max-size") as limit:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, int(limit.read()))
    except (ImportError, AttributeError, OSError, ValueError):
        pass


def _serve(requests: Any, conn: Any, path: str, table: str, compressed: bool) -> None:
    """The child process: answer (start, size) with that batch, inflated, until None."""
    try:
        db = _connect(Path(path))
        select = _select(table)
        inflate = zlib_module()
        while (request := requests.recv()) is not None:
            rows = db.execute(select, request).fetchall()
            if not rows:
                conn.send(([], [], [], [], [], [], 0))
                continue
            rowids, originators, versions, topics, states = (list(c) for c in zip(*rows))
            stored = 0
            datas: list[bytes | None] = []
            marks: list[int] = []
            for state in states:
                stored += len(state)
                if compressed:
                    try:
                        state = inflate.decompress(state)
                    except inflate.error:
                        state = None  # the caller decodes it the usual way, and says why
                datas.append(state)
                marks.append(state.count(b'"_type_"') if state is not None else 0)
            conn.send((rowids, originators, versions, topics, datas, marks, stored))
    except (EOFError, BrokenPipeError):
        return
    except Exception as exc:  # reported to the parent, which raises it
        try:
            conn.send(f"{type(exc).__name__}: {exc}")
        except OSError:
            pass
