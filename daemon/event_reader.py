"""Reading SQLite's event table directly, for the views: in this process, or in a child
process that also inflates the stored state, one batch ahead, while a rebuild writes.

Only the standard library (and ISA-L's zlib and orjson, where installed) is imported here:
the child process imports this module and daemon/view_rows.py, nothing else of clausewatch.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

from daemon.view_rows import Drops, capture_row


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


@dataclass(frozen=True, slots=True)
class CaptureRows:
    """What the child needs to make the cw_captures rows of plain captures itself (see
    InflatingReader): the two event topics, the capture class's version, and the views'
    database, for the evidence retention dropped (cw_evidence_dropped)."""

    registered_topic: str
    captured_topic: str
    class_version: int
    views_path: Path


class InflatingReader:
    """Reads stored events and inflates their state in a child process, one batch ahead.

    For a rebuild: reading and inflating a million events is ~6 s of a ~30 s replay, and a
    thread doing it in this process fights the writer for the GIL (it was slower than no
    read-ahead at all). The child sends each batch as plain lists through a pipe; `take`
    returns the rows (state None), their inflated states (None where inflating failed), how
    many times each names the JSON transcoder's `"_type_"` (the caller's check for nested
    encoded objects, a scan of every byte) and the size of what was stored, compressed.

    Given `rows` (CaptureRows), the child also makes the cw_captures row of each capture
    that carries no clause list, no object but its two times, and the current class
    version (almost every event of a long log): `take` then gives that row instead of the
    state, and the views only write it. Anything else comes as its state, as before.
    """

    def __init__(self, path: Path, table: str, compressed: bool) -> None:
        self.path = path
        self.table = table
        self.compressed = compressed
        self.rows: CaptureRows | None = None
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
                                 self.compressed, self.rows),
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

    def take(self, start: int, size: int) -> tuple[list[StoredRow], list[bytes | None],
                                                  list[int], int, list[Any] | None]:
        """The rows, their inflated states, marker counts, stored size, and the capture
        rows made in the child (None, or None for an event it left to the views)."""
        if self._pending != (start, size):
            if self._pending is not None:
                self._receive()  # asked for something else: drop it
            self._pending = None
            self.start(start, size)
        self._pending = None
        rowids, originators, versions, topics, datas, marks, stored, made = self._receive()
        rows = self._uuids.rows(rowids, originators, versions, topics, [None] * len(rowids))
        return rows, datas, marks, stored, made

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


def _serve(requests: Any, conn: Any, path: str, table: str, compressed: bool,
           capture_rows: CaptureRows | None = None) -> None:
    """The child process: answer (start, size) with that batch, inflated, until None."""
    try:
        db = _connect(Path(path))
        select = _select(table)
        inflate = zlib_module()
        maker = _CaptureRowMaker(capture_rows) if capture_rows is not None else None
        while (request := requests.recv()) is not None:
            rows = db.execute(select, request).fetchall()
            if not rows:
                conn.send(([], [], [], [], [], [], 0, None))
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
            made = maker.make(rowids, originators, versions, topics, datas, marks) \
                if maker is not None else None
            conn.send((rowids, originators, versions, topics, datas, marks, stored, made))
    except (EOFError, BrokenPipeError):
        return
    except Exception as exc:  # reported to the parent, which raises it
        try:
            conn.send(f"{type(exc).__name__}: {exc}")
        except OSError:
            pass


class _CaptureRowMaker:
    """In the child: cw_captures rows of plain captures (see InflatingReader)."""

    def __init__(self, spec: CaptureRows) -> None:
        try:
            import orjson

            self.loads: Any = orjson.loads
        except ImportError:
            import json

            self.loads = json.loads
        self.spec = spec
        self.slugs: dict[str, str] = {}  # originator id as stored -> slug
        self.uuids: dict[str, str] = {}  # originator id as stored -> as the views write it
        views = _connect(spec.views_path)
        self.drops = Drops(lambda sql, params: views.execute(sql, params).fetchall())

    def make(self, rowids: list[int], originators: list[str], versions: list[int],
             topics: list[str], datas: list[bytes | None], marks: list[int]) -> list[Any]:
        """A row for each plain capture (its state then dropped from `datas`), else None."""
        spec = self.spec
        made: list[Any] = []
        for index, topic in enumerate(topics):
            row = None
            data = datas[index]
            if data is not None:
                if topic == spec.captured_topic and marks[index] == 2:
                    row = self._capture(rowids[index], originators[index], versions[index],
                                        data)
                elif topic == spec.registered_topic:
                    self._registered(originators[index], data)
            if row is not None:
                datas[index] = None
            made.append(row)
        return made

    def _registered(self, originator: str, data: bytes) -> None:
        try:
            state = self.loads(data)
        except ValueError:
            return
        if type(state) is dict and type(state.get("slug")) is str:
            self.slugs[originator] = state["slug"]

    def _capture(self, seq: int, originator: str, version: int,
                 data: bytes) -> tuple[Any, ...] | None:
        slug = self.slugs.get(originator)
        if slug is None:
            return None
        try:
            e = self.loads(data)
        except ValueError:
            return None
        # The two objects the text names must be its two times: nothing else is encoded.
        if (type(e) is not dict or e.get("class_version", 1) != self.spec.class_version
                or e.get("clauses", 0) is not None or not _is_time(e.get("timestamp"))
                or not _is_time(e.get("captured_at"))):
            return None
        e["captured_at"] = e["captured_at"]["_data_"]
        uuid = self.uuids.get(originator)
        if uuid is None:
            uuid = self.uuids[originator] = str(UUID(originator))
        try:
            return capture_row(seq, f"{uuid}:{version}", slug, e,
                               self.drops.at(e["sha256"]))
        except (KeyError, TypeError, ValueError):
            return None  # not shaped as a capture: the views say what is wrong


def _is_time(value: Any) -> bool:
    return (type(value) is dict and len(value) == 2 and value.get("_type_") == "datetime_iso"
            and type(value.get("_data_")) is str)
