"""The event store (an eventsourcing Application), the read database and the evidence files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.compressor import ZlibCompressor
from eventsourcing.domain import BaseAggregate, DomainEvent
from eventsourcing.persistence import ApplicationRecorder, Mapper, StoredEvent, Transcoder

from config.settings import StoreSettings
from daemon.event_reader import InflatingReader, SQLiteEventReader, zlib_module
from daemon.evidence import EvidenceStore
from daemon.sql import Database
from daemon.transcoder import FastJSONTranscoder
from domain.document import Document

_zlib = zlib_module()


class FastZlibCompressor(ZlibCompressor):
    """zlib's format at level 1 for stored event state, by ISA-L where installed: a 93 kB
    clause list in ~0.2 ms instead of 2.1 ms at the library's default (zlib, level 6), about
    20 % larger; inflating takes about half of zlib's time. Events written at any level, by
    either library, read back alike."""

    def compress(self, data: bytes) -> bytes:
        return _zlib.compress(data, 1)

    def decompress(self, data: bytes) -> bytes:
        return _zlib.decompress(data)


class Encoded(DomainEvent):
    """An event already made a stored event (by an extraction worker's mapper, the same as
    this store's): saved as it is."""

    stored: Any  # the StoredEvent


@dataclass
class EncodedSave:
    """A document's new events, encoded elsewhere, to save like an aggregate's pending
    events (`ClauseWatchApp.save`, the group commit); with the snapshot to store once they
    are saved, if one is due (see ClauseWatchApp.encode)."""

    id: Any
    pending_events: list[Encoded]
    snapshot: StoredEvent | None = None

    def collect_events(self) -> list[Encoded]:
        events, self.pending_events = self.pending_events, []
        return events


class _Mapper(Mapper[Any]):
    """The library's mapper, which passes an Encoded event's stored event through."""

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        if type(domain_event) is Encoded:
            return domain_event.stored  # type: ignore[no-any-return]
        return super().to_stored_event(domain_event)


class _Collected(ProcessingEvent[Any]):
    """The library's ProcessingEvent, without its runtime protocol checks for our own objects.

    `collect_events` asks isinstance(obj, DomainEventProtocol) and then CollectEventsProtocol
    of each object saved: against a typing.Protocol that is ~30 µs a check in Python 3.11,
    more than the rest of recording a 304. Aggregates and events of the library's own classes
    (all of ours) are told apart by class; anything else goes through the library's checks.
    """

    def collect_events(self, *objs: Any, **kwargs: Any) -> None:
        others = []
        for obj in objs:
            if isinstance(obj, BaseAggregate):
                self.events.extend(obj.collect_events())
                self.aggregates[obj.id] = obj
            elif isinstance(obj, EncodedSave):
                self.events.extend(obj.collect_events())
            elif isinstance(obj, DomainEvent):
                self.events.append(obj)
            elif obj is not None:
                others.append(obj)
        super().collect_events(*others, **kwargs)


class StoreError(Exception):
    """The event store or read database cannot be opened or used."""


class ClauseWatchApp(Application[Any]):
    """The event-sourced application: one aggregate per watched document."""

    name = "ClauseWatch"
    is_snapshotting_enabled = True
    SNAPSHOT_EVERY = 50

    def construct_mapper(self) -> Mapper[Any]:
        """The library's mapper, but for events encoded already (Encoded)."""
        return self.factory.mapper(transcoder=self.construct_transcoder(), mapper_class=_Mapper)

    def construct_transcoder(self) -> Transcoder:
        """The library's JSON, written and read by orjson (see daemon/transcoder.py)."""
        transcoder = FastJSONTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """Save, then snapshot each document whose version passed a multiple of 50.

        The library's own interval snapshotting rebuilds the aggregate from the store for
        every multiple it meets, several times for a save of hundreds of clause edits; the
        aggregate in hand already is that state.
        """
        due = self._snapshots_due(objs)
        recordings = self._save_collected(objs, kwargs)
        self._snapshot(due)
        self._put_encoded_snapshots(objs)
        return recordings

    def _save_collected(self, objs: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        # Application.save (eventsourcing 9.5), with the collecting above.
        processing_event = _Collected()
        processing_event.collect_events(*objs, **kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)
        return recordings

    def save_many(self, documents: Sequence[Any]) -> list[Exception | None]:
        """Save several aggregates in one transaction; if the store refuses it, each alone.

        Returns, per aggregate, None once saved or the error saving it alone raised.
        """
        if len(documents) > 1:
            # Their events, not the aggregates: a refused batch leaves each aggregate with
            # its pending events, to be saved alone.
            events = [event for doc in documents for event in doc.pending_events]
            due = self._snapshots_due(documents)
            try:
                self._save_collected(events, {})
            except Exception:
                pass
            else:
                for doc in documents:
                    doc.collect_events()
                self._snapshot(due)
                self._put_encoded_snapshots(documents)
                return [None] * len(documents)
        errors: list[Exception | None] = []
        for doc in documents:
            try:
                self.save(doc)
            except Exception as exc:
                errors.append(exc)
            else:
                errors.append(None)
        return errors

    def encode(self, document: Document) -> EncodedSave:
        """The document's pending events as stored events (collected: no longer pending), and
        the snapshot due once they are saved: for saving in another process."""
        due = self._snapshots_due([document])
        events = document.collect_events()
        snapshot = (self.mapper.to_stored_event(self._snapshot_class.take(document)) if due
                    else None)
        encoded = [Encoded(originator_id=e.originator_id,  # type: ignore[call-arg]
                           originator_version=e.originator_version, timestamp=e.timestamp,
                           stored=self.mapper.to_stored_event(e))
                   for e in events]
        return EncodedSave(id=document.id, pending_events=encoded, snapshot=snapshot)

    def _snapshots_due(self, objs: Sequence[Any]) -> list[Document]:
        return [obj for obj in objs if isinstance(obj, Document) and obj.pending_events
                and not obj.is_partial
                and (obj.version - len(obj.pending_events)) // self.SNAPSHOT_EVERY
                < obj.version // self.SNAPSHOT_EVERY]

    @property
    def _snapshot_class(self) -> Any:
        return getattr(Document, "Snapshot", type(self).snapshot_class)

    def _snapshot(self, due: list[Document]) -> None:
        if due and self.snapshots is not None:
            self.snapshots.put([self._snapshot_class.take(doc) for doc in due])

    def _put_encoded_snapshots(self, objs: Sequence[Any]) -> None:
        snapshots = [obj.snapshot for obj in objs
                     if isinstance(obj, EncodedSave) and obj.snapshot is not None]
        if snapshots and self.snapshots is not None:
            self.snapshots.recorder.insert_events(snapshots)


def application_env(store: StoreSettings) -> dict[str, str]:
    """The eventsourcing environment for a store URL; nothing is read from os.environ."""
    env = {
        # Clause lists are long and repetitive: compress stored event state.
        "COMPRESSOR_TOPIC": "daemon.store:FastZlibCompressor",
    }
    if store.url.startswith("memory:"):
        env["PERSISTENCE_MODULE"] = "eventsourcing.popo"
    elif store.sqlite_path is not None:
        store.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        env.update(PERSISTENCE_MODULE="eventsourcing.sqlite",
                   SQLITE_DBNAME=str(store.sqlite_path),
                   SQLITE_LOCK_TIMEOUT=str(int(store.lock_timeout)))
    elif store.is_postgres:
        url = urlparse(store.url)
        env.update(
            PERSISTENCE_MODULE="eventsourcing.postgres",
            POSTGRES_DBNAME=url.path.lstrip("/") or "postgres",
            POSTGRES_HOST=url.hostname or "127.0.0.1",
            POSTGRES_PORT=str(url.port or 5432),
            POSTGRES_USER=unquote(url.username or "postgres"),
            POSTGRES_PASSWORD=unquote(url.password or ""),
            # The library's default waits forever for a table lock.
            POSTGRES_LOCK_TIMEOUT=str(max(1, int(store.lock_timeout))),
            # Appends without psycopg's pipeline mode, which could hang (see the module).
            APPLICATION_RECORDER_TOPIC="daemon.postgres_recorder:PostgresRecorder",
            POSTGRES_CONNECT_TIMEOUT="10",
            POSTGRES_POOL_SIZE="4",
            POSTGRES_MAX_OVERFLOW="4",
        )
        if store.schema:
            env["POSTGRES_SCHEMA"] = store.schema
    else:
        raise StoreError(f"unsupported store URL {store.url!r}")
    return env


def read_database_url(store: StoreSettings, data_dir: Path) -> str:
    """The read side lives beside the events: views.db next to the SQLite file, or the same
    PostgreSQL database."""
    if store.is_postgres:
        return store.url
    if store.sqlite_path is not None:
        return f"sqlite:///{store.sqlite_path.with_name('views.db')}"
    return f"sqlite:///{data_dir / 'views.db'}"


@dataclass
class Store:
    """Everything persistent, opened together and closed together."""

    app: ClauseWatchApp
    db: Database
    evidence: EvidenceStore
    sqlite_path: Path | None = None
    # What it was opened from: a worker process opens the same event store with it.
    settings: StoreSettings | None = None
    _reader: SQLiteEventReader | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.sqlite_path is not None:
            table = getattr(self.app.recorder, "events_table_name", "stored_events")
            try:
                self._reader = SQLiteEventReader(self.sqlite_path, table)
            except ValueError as exc:  # a table name the reader will not put in its SQL
                raise StoreError(str(exc)) from None

    @property
    def recorder(self) -> ApplicationRecorder:
        """The application recorder (notification log)."""
        recorder = self.app.recorder
        assert isinstance(recorder, ApplicationRecorder)
        return recorder

    def read_notifications(self, start: int, limit: int) -> Sequence[Any]:
        """Up to `limit` stored events from notification id `start` on."""
        return self.recorder.select_notifications(start=start, limit=limit)

    def read_stored(self, start: int, limit: int) -> Sequence[Any]:
        """As read_notifications, for readers of the fields only (no Notification objects
        on SQLite: see SQLiteEventReader)."""
        if self._reader is not None:
            return self._reader.read(start, limit)
        return self.read_notifications(start, limit)

    def inflating_reader(self) -> InflatingReader | None:
        """On SQLite, a reader that reads and inflates stored events in a child process
        (for a rebuild); None where the state is encrypted or compressed otherwise."""
        mapper = self.app.mapper
        if self._reader is None or mapper.cipher is not None:
            return None
        if mapper.compressor is None:
            return self._reader.inflating(compressed=False)
        if isinstance(mapper.compressor, ZlibCompressor):
            return self._reader.inflating(compressed=True)
        return None

    def max_notification_id(self) -> int:
        """The id of the newest stored event, 0 when the log is empty."""
        return int(self.recorder.max_notification_id() or 0)

    def decode(self, notification: Any) -> Any:
        """A stored event as a domain event."""
        return self.app.mapper.to_domain_event(notification)

    def close(self) -> None:
        """Close the application and the read database."""
        if self._reader is not None:
            self._reader.close()
        self.app.close()
        self.db.close()


def open_store(store: StoreSettings, data_dir: Path) -> Store:
    """Open (and create if needed) the event store, read database and evidence store."""
    # The read database first: it creates the PostgreSQL schema, which eventsourcing expects
    # to exist already.
    try:
        db = Database(read_database_url(store, data_dir), schema=store.schema,
                      lock_timeout=store.lock_timeout)
    except Exception as exc:
        raise StoreError(f"cannot open the read database for {_redact(store.url)}: {exc}") \
            from None
    try:
        app = ClauseWatchApp(env=application_env(store))
    except Exception as exc:  # the library raises many kinds; the operator needs one message
        db.close()
        raise StoreError(f"cannot open the event store {_redact(store.url)}: {exc}") from None
    return Store(app=app, db=db, evidence=EvidenceStore(data_dir / "evidence"),
                 sqlite_path=store.sqlite_path, settings=store)


def open_event_store(store: StoreSettings) -> ClauseWatchApp:
    """The event store alone, for reading aggregates from another process (an extraction
    worker) while this one records: it creates no table, and holds one connection."""
    if not store.shared:
        raise StoreError(f"the store {store.url!r} cannot be read from another process")
    env = application_env(store)
    env.update(CREATE_TABLE="n", POSTGRES_POOL_SIZE="1", POSTGRES_MAX_OVERFLOW="0")
    return ClauseWatchApp(env=env)


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url
