"""Reading SQLite's event table directly, for the views: in this process, or in a child
process that also inflates the stored state, one batch ahead, while a rebuild writes.

Only the standard library (and ISA-L's zlib and orjson, where installed) is imported here:
the child process imports this module and daemon/view_rows.py, nothing else of clausewatch.
"""

from __future__ import annotations

import gc
import marshal
import multiprocessing
import sqlite3
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

from daemon.view_rows import MARK, Drops, next_batch_size, plain_capture_row


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


class ClauseDelta(NamedTuple):
    """A capture carrying a clause list, as the child sends it when it has read the
    document's previous list (see InflatingReader): the capture's cw_captures row, the seq
    of that previous list's event, how many clauses the new list has, and the clauses that
    differ from the previous list at the same position (position, clause), in order."""

    row: tuple[Any, ...]
    base: int
    length: int
    changed: list[tuple[int, Any]]


@dataclass(frozen=True, slots=True)
class CaptureRows:
    """What the child needs to make the cw_captures rows of plain captures itself (see
    InflatingReader): the two event topics, the capture class's version, and the views'
    database, for the evidence retention dropped (cw_evidence_dropped). `leave`: the share
    of plain captures it leaves to the views; None, as much as keeps both processes busy
    (see _Balance)."""

    registered_topic: str
    captured_topic: str
    class_version: int
    views_path: Path
    leave: float | None = None


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
    state, and the views only write it (all but a share it leaves to them, as they would
    otherwise wait for it: see _Balance). A capture like it that carries a clause list comes
    as a ClauseDelta where the child holds the document's previous list: a new list is
    mostly the old one (two reworded clauses of hundreds, say), and sending it whole, then
    decoding and comparing each clause to its row, was the larger part of a rebuild's time.
    Anything else comes as its state, as before.
    """

    def __init__(self, path: Path, table: str, compressed: bool) -> None:
        self.path = path
        self.table = table
        self.compressed = compressed
        self.rows: CaptureRows | None = None
        # (limit, budget): where given, the child reads on past each full batch, sizing the
        # next by next_batch_size as the views will ask for it, until told otherwise.
        self.sizing: tuple[int, int] | None = None
        self._balance: _Balance | None = None
        self._uuids = _Uuids()
        self._conn: Any = None
        self._process: Any = None
        # Each request starts a generation; replies to older ones are dropped.
        self._generation = 0
        self._coming: tuple[int, int] | None = None  # the batch the child sends next

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
        if self.rows is not None and self.rows.leave is None:
            self._balance = _Balance()
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
        """Ask for the events from `start` on, unless the child is reading them already;
        they are read and inflated meanwhile (and, given `sizing`, the batches after)."""
        if self._coming != (start, size):
            self._generation += 1
            try:
                self._requests.send((self._generation, start, size, self.sizing))
            except OSError:
                raise self._died() from None
            self._coming = (start, size)

    def take(self, start: int, size: int) -> tuple[list[StoredRow], list[bytes | None],
                                                  list[int], int, list[Any] | None]:
        """The rows, their inflated states, marker counts, stored size, and the capture
        rows made in the child (None, or None for an event it left to the views)."""
        self.start(start, size)
        waited = not self._conn.poll()
        while True:
            generation, *reply = self._receive()
            if generation == self._generation:
                break  # what came before was read for a request since replaced
        if self._balance is not None:
            leave = self._balance.leave
            if self._balance.after(waited) != leave:
                try:
                    self._requests.send(self._balance.leave)
                except OSError:
                    raise self._died() from None
        rowids, originators, versions, topics, datas, marks, stored, made = reply
        self._coming = None
        if self.sizing is not None and len(rowids) == size:
            limit, budget = self.sizing
            self._coming = (rowids[-1] + 1, next_batch_size(limit, len(rowids), stored, budget))
        rows = self._uuids.rows(rowids, originators, versions, topics, [None] * len(rowids))
        if made is not None:
            made = [ClauseDelta(*m) if type(m) is list else m for m in made]
        return rows, datas, marks, stored, made

    def _receive(self) -> tuple[Any, ...]:
        try:
            reply = marshal.loads(self._conn.recv_bytes())
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
    """The child process: answer (start, size) with that batch, inflated, until None.

    Replies are marshalled, not pickled: plain lists, tuples, dicts, text and numbers (a
    ClauseDelta goes as a list); a million events' replies took 1.6 s to write so, 2.9 s
    pickled (reading them back, about the same either way)."""
    # It holds the documents' last clause lists (hundreds of thousands of objects, no
    # reference cycles): the cyclic collector's passes over them doubled its time.
    gc.disable()
    try:
        db = _connect(Path(path))
        select = _select(table)
        inflate = zlib_module()
        maker = _CaptureRowMaker(capture_rows) if capture_rows is not None else None
        request = requests.recv()
        while request is not None:
            if type(request) is float:  # a share of the work to leave (see _Balance)
                if maker is not None:
                    maker.leave = request
                request = requests.recv()
                continue
            generation, start, size, sizing = request
            while True:
                reply = _read(db, select, start, size, compressed, inflate, maker)
                conn.send_bytes(marshal.dumps((generation, *reply)))
                # On to the next batch while the views write this one, unless this was the
                # end or they ask for another.
                if sizing is None or len(reply[0]) < size:
                    request = requests.recv()
                    break
                asked = False
                while not asked and requests.poll():
                    message = requests.recv()
                    if type(message) is float:
                        if maker is not None:
                            maker.leave = message
                    else:
                        request, asked = message, True  # another request, or None: the end
                if asked:
                    break
                start = reply[0][-1] + 1
                size = next_batch_size(sizing[0], len(reply[0]), reply[6], sizing[1])
    except (EOFError, BrokenPipeError):
        return
    except Exception as exc:  # reported to the parent, which raises it
        try:
            conn.send_bytes(marshal.dumps(f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass


class _Balance:
    """The share of plain captures the child leaves to the views, so that neither process
    waits for the other (two cores: a rebuild goes as fast as the busier one allows). The
    views tell by whether each batch had begun to come when they asked for it: if not,
    the child is the slower, so it is left more work; if so, less."""

    STEP = 0.05

    def __init__(self) -> None:
        self.leave = 0.0

    def after(self, waited: bool) -> float:
        """The share for the next batches, given whether the views waited for this one."""
        if waited:
            self.leave = min(1.0, self.leave + self.STEP)
        else:
            self.leave = max(0.0, self.leave - self.STEP)
        return self.leave


def _read(db: sqlite3.Connection, select: str, start: int, size: int, compressed: bool,
          inflate: Any, maker: _CaptureRowMaker | None) -> tuple[Any, ...]:
    """One batch, as the child sends it (see InflatingReader.take)."""
    rows = db.execute(select, (start, size)).fetchall()
    if not rows:
        return [], [], [], [], [], [], 0, None
    rowids, originators, versions, topics, states = (list(c) for c in zip(*rows))
    stored = 0
    datas: list[bytes | None] = []
    for state in states:
        stored += len(state)
        if compressed:
            try:
                state = inflate.decompress(state)
            except inflate.error:
                state = None  # the caller decodes it the usual way, and says why
        datas.append(state)
    made = maker.make(rowids, originators, versions, topics, datas) if maker is not None \
        else None
    # Counted for what is sent as it is (the rest the maker has read for itself).
    marks = [data.count(MARK) if data is not None else 0 for data in datas]
    return rowids, originators, versions, topics, datas, marks, stored, made


class _CaptureRowMaker:
    """In the child: cw_captures rows of plain captures, and clause lists as ClauseDeltas
    (see InflatingReader)."""

    # Clauses of the documents' last lists held to compare the next ones with (each as its
    # stored text, ~0.4 kB); the lists read longest ago are let go first, then sent whole.
    LISTS_KEPT = 250_000

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
        # originator id as stored -> its last clause list (see _ListReading.of)
        self.lists: dict[str, tuple[int, list[bytes], bytes]] = {}
        self.listed = 0  # clauses in self.lists
        self.leave = spec.leave or 0.0  # the share of plain captures left to the views
        self._credit = 0.0
        views = _connect(spec.views_path)
        self.drops = Drops(lambda sql, params: views.execute(sql, params).fetchall())

    def make(self, rowids: list[int], originators: list[str], versions: list[int],
             topics: list[str], datas: list[bytes | None]) -> list[Any]:
        """A row for each plain capture, a ClauseDelta (as a list) for each clause list
        read against the last (their states then dropped from `datas`), else None."""
        spec = self.spec
        made: list[Any] = []
        leave, credit = self.leave, self._credit
        for index, topic in enumerate(topics):
            row = None
            data = datas[index]
            if data is not None:
                if topic == spec.captured_topic:
                    if leave and b'"clauses":[' not in data:
                        credit += leave
                        if credit >= 1.0:
                            credit -= 1.0
                            made.append(None)  # left to the views (see _Balance)
                            continue
                    row = self._capture(rowids[index], originators[index], versions[index],
                                        data)
                elif topic == spec.registered_topic:
                    self._registered(originators[index], data)
            if row is not None:
                datas[index] = None
            made.append(row)
        self._credit = credit
        return made

    def _registered(self, originator: str, data: bytes) -> None:
        try:
            state = self.loads(data)
        except ValueError:
            return
        if type(state) is dict and type(state.get("slug")) is str:
            self.slugs[originator] = state["slug"]

    def _capture(self, seq: int, originator: str, version: int,
                 data: bytes) -> tuple[Any, ...] | list[Any] | None:
        slug = self.slugs.get(originator)
        if slug is None:
            return None
        # A clause list: a raw `"clauses":[` is that key (inside a JSON string, quotes are
        # escaped). Its clauses are matched as stored (_ListReading); the rest is decoded.
        opened = data.find(b'"clauses":[')
        reading = None
        if opened >= 0:
            reading = _ListReading.of(self.loads, data, opened + 11,
                                      self.lists.get(originator))
            if reading is None:
                return None
            if reading.marked:  # a clause decoded names an encoded object
                return None
            data = data[:opened + 10] + b"null" + data[reading.close + 1:]

        def event_id() -> str:
            uuid = self.uuids.get(originator)
            if uuid is None:
                uuid = self.uuids[originator] = str(UUID(originator))
            return f"{uuid}:{version}"

        row = plain_capture_row(self.loads, data, seq, event_id, slug, self.spec.class_version,
                                self.drops)
        if row is None or reading is None:
            return row
        self._hold(originator, (seq, reading.chunks, reading.after))
        if reading.base is None:
            return None  # a first list: sent whole
        return [row, reading.base, len(reading.chunks), reading.changed]  # a ClauseDelta

    def _hold(self, originator: str, held: tuple[int, list[bytes], bytes]) -> None:
        """Hold a document's last clause list, within LISTS_KEPT clauses in all."""
        lists = self.lists
        last = lists.pop(originator, None)
        lists[originator] = held
        self.listed += len(held[1]) - (len(last[1]) if last is not None else 0)
        while self.listed > self.LISTS_KEPT and len(lists) > 1:
            self.listed -= len(lists.pop(next(iter(lists)))[1])


class _ListReading:
    """A stored clause list read against the document's last one (held as (seq, each
    clause's stored text, what followed the list)): `chunks`, its clauses as stored text;
    `close`, where its `]` is; and, if read against the last list, `base` (that list's
    seq) and `changed`, the decoded clauses that differ from it at the same position.

    Each clause of the last list is matched where the clause at its position starts, and
    only those that differ are decoded. The same bytes are the same JSON value, and a JSON
    value ends where it ends: a clause's text that matches where a clause starts is that
    clause. (Comparing the decoded clauses instead, and decoding them all, took four times
    as long: the child's time is the rebuild's.)
    """

    __slots__ = ("after", "base", "changed", "chunks", "close", "marked")

    def __init__(self, data: bytes, chunks: list[bytes], close: int, base: int | None,
                 changed: list[tuple[int, Any]], marked: bool = False) -> None:
        self.chunks, self.close, self.after = chunks, close, data[close:]
        self.base, self.changed = base, changed
        self.marked = marked  # a decoded clause names an encoded object (see _capture)

    @classmethod
    def of(cls, loads: Any, data: bytes, start: int,
           last: tuple[int, list[bytes], bytes] | None) -> _ListReading | None:
        """The list whose first clause starts at data[start]; None if it cannot be read
        as a list of JSON objects."""
        if last is None or not last[2].startswith(b"]") or not data.endswith(last[2]):
            found = _objects(loads, data, start, None)
            if found is None:
                return None
            return cls(data, [chunk for chunk, _ in found[0]], found[1], None, [])
        seq, base, after = last
        close = len(data) - len(after)  # where the list ends, if it ends as the last did
        chunks: list[bytes] = []
        changed: list[tuple[int, Any]] = []
        marked = False
        pos, known = start, len(base)
        while pos < close:
            index = len(chunks)
            if index < known:
                chunk = base[index]
                end = pos + len(chunk)
                if data.startswith(chunk, pos) and (end == close or data[end] == 44):  # ,
                    chunks.append(chunk)
                    pos = end + 1
                    continue
            found = _objects(loads, data, pos, close, one=True)
            if found is None:
                return None
            (chunk, clause), = found[0]
            chunks.append(chunk)
            changed.append((index, clause))
            marked = marked or MARK in chunk
            pos = found[1] + 1
        if pos != close + 1 and not (pos == start == close):
            return None
        return cls(data, chunks, close, seq, changed, marked)


def _objects(loads: Any, data: bytes, begin: int, end: int | None, *,
             one: bool = False) -> tuple[list[tuple[bytes, Any]], int] | None:
    """The JSON objects in data[begin:end], separated by commas, as (stored text, value),
    and where the last ends (`end`); with end None, those up to the `]` that ends a list,
    and where that is; with `one`, only the first, and where it ends. None if that is not
    what is there."""
    found: list[tuple[bytes, Any]] = []
    size = len(data) if end is None else end
    i = begin
    if end is None and data[i:i + 1] == b"]":
        return found, i
    while True:
        if data[i:i + 1] != b"{":
            return None
        # The object ends at a `}` followed by a comma (or the end): the first such `}`
        # where the text from `i` is a whole JSON value.
        j = data.find(b"}", i, size)
        while True:
            if j < 0:
                return None
            after = j + 1
            last = data[after:after + 1] == b"]" if end is None else after == end
            if last or data[after:after + 1] == b",":
                try:
                    value = loads(data[i:after])
                except ValueError:
                    pass
                else:
                    break
            j = data.find(b"}", after, size)
        found.append((data[i:after], value))
        if last or one:
            return found, after
        i = after + 1


