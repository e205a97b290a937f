"""The store's orjson transcoder writes and reads what eventsourcing's JSONTranscoder does."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Transcoding,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)

from config.settings import DocumentSettings, StoreSettings
from daemon.fetcher import FetchResult
from daemon.service import ClauseWatch
from daemon.store import open_store
from daemon.transcoder import FastJSONTranscoder
from domain.document import document_uuid
from harness import TRIMMED_CORPUS, text_versions


def transcoders() -> tuple[JSONTranscoder, FastJSONTranscoder]:
    library, fast = JSONTranscoder(), FastJSONTranscoder()
    for transcoder in (library, fast):
        for transcoding in (UUIDAsHex(), DatetimeAsISO(), DecimalAsStr()):
            transcoder.register(transcoding)
    return library, fast


def test_real_events_and_snapshots_read_and_write_alike(tmp_path: Path) -> None:
    """Every event and snapshot a real document's history stored (clause lists, categories,
    edits with patches and similarities): read alike by both, and what either writes the
    other reads back to the same values."""
    store = open_store(StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}"), tmp_path)
    try:
        assert type(store.app.mapper.transcoder) is FastJSONTranscoder
        service = ClauseWatch(store)
        doc = DocumentSettings(id="tiktok/privacy-us", platform="TikTok", title="Privacy",
                               url="https://example.test/privacy")
        service.sync_documents([doc])
        for version in text_versions(TRIMMED_CORPUS / "text" / "tiktok-privacy-us"):
            service.record_fetch(doc, FetchResult(
                requested_url=doc.url, final_url=doc.url, status=200,
                fetched_at=version.captured_at, body=version.body,
                content_type=version.content_type))
        stored = [n.state for n in store.read_notifications(1, 10_000)]
        assert store.app.snapshots is not None
        snapshots = store.app.snapshots.recorder.select_events(document_uuid(doc.id))
        assert snapshots  # hundreds of clause edits: snapshots every 50 events
        stored += [e.state for e in snapshots]
    finally:
        store.close()
    library, fast = transcoders()
    texts = [zlib.decompress(state) for state in stored]
    assert len(texts) > 11 and any(len(t) > 50_000 for t in texts)
    assert sum(b'"similarity"' in t for t in texts) > 10  # edits, with their floats
    for text in texts:
        value = library.decode(text)
        assert fast.decode(text) == value
        assert library.decode(fast.encode(value)) == value
        assert fast.decode(fast.encode(value)) == value


def test_what_orjson_would_write_otherwise_goes_the_librarys_way() -> None:
    library, fast = transcoders()
    key = UUID("5b0c6f8e-3f4e-4f0e-9a57-63a1c1a0c2de")
    moment = datetime(2026, 1, 23, 8, 30, tzinfo=UTC)
    for value in (
        {"id": key, "at": moment, "nested": [{"id": key}]},   # UUIDs: orjson writes their text
        {"text": f"quoting {key} in a clause"},                # text that looks like one
        {"big": 2**70, "price": Decimal("1.10")},
        {"text": "_type_", "_type_": "a key"},                 # the marker, but as text
        {"a": {"_type_": "datetime_iso", "_data_": moment.isoformat()}, "t": ()},
    ):
        assert library.decode(fast.encode(value)) == library.decode(library.encode(value))
        assert fast.decode(library.encode(value)) == library.decode(library.encode(value))
    assert fast.encode({"id": key}) == library.encode({"id": key})
    assert fast.decode(b'{"x": NaN}')["x"] != fast.decode(b'{"x": NaN}')["x"]  # NaN, read


def test_errors_are_the_librarys() -> None:
    _, fast = transcoders()
    with pytest.raises(TranscodingNotRegisteredError):
        fast.encode({"x": object()})
    with pytest.raises(TranscodingNotRegisteredError):
        fast.decode(b'{"x": {"_type_": "unknown", "_data_": 1}}')
    with pytest.raises(UnicodeDecodeError):
        fast.decode(b'{"x": "\xff"}')


class Colour(Enum):
    RED = "red"


class ColourAsName(Transcoding):
    type = Colour
    name = "colour"

    def encode(self, obj: Colour) -> str:
        return obj.name

    def decode(self, data: str) -> Colour:
        return Colour[data]


def test_a_transcoding_for_a_type_orjson_writes_itself_turns_its_encoding_off() -> None:
    library, fast = transcoders()
    for transcoder in (library, fast):
        transcoder.register(ColourAsName())
    value: dict[str, Any] = {"colour": Colour.RED, "at": datetime(2026, 1, 1, tzinfo=UTC)}
    assert fast.encode(value) == library.encode(value)
    assert fast.decode(fast.encode(value)) == value
