"""Group commit: concurrent polls' captures share transactions; a stale one fails alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from eventsourcing.persistence import IntegrityError

from config.settings import StoreSettings
from daemon.group_commit import GroupCommit
from daemon.store import Store, open_store
from domain.document import CaptureFacts, Document
from test_document import T0

FACTS = CaptureFacts(captured_at=T0, requested_url="https://x.test/p",
                     final_url="https://x.test/p", http_status=200, content_type="text/html",
                     sha256="ab" * 32, size=10)


@pytest.fixture
def store(store_settings: StoreSettings, tmp_path: Path) -> Iterator[Store]:
    store = open_store(store_settings, tmp_path / "data")
    yield store
    store.close()


def _registered(store: Store, n: int) -> list[Document]:
    docs = [Document.register(slug=f"doc/{i}", platform="P", title="T", url=f"https://x/{i}")
            for i in range(n)]
    store.app.save(*docs)
    return docs


def _failure(doc: Document) -> Document:
    doc.record_failure(captured_at=T0, requested_url=doc.url, error_kind="timeout",
                       message="slow")
    return doc


def test_concurrent_saves_share_transactions(store: Store) -> None:
    docs = _registered(store, 40)
    commits = GroupCommit(store.app)
    start = threading.Barrier(len(docs))
    errors: list[BaseException] = []

    def poll(doc: Document) -> None:
        start.wait()
        try:
            commits.save(_failure(doc))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=poll, args=(d,)) for d in docs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert commits.saved == 40 and commits.batches < 40
    for doc in docs:
        assert doc.pending_events == []
        assert store.app.repository.get(doc.id).version == 2


def test_a_stale_aggregate_fails_alone_and_the_rest_of_its_batch_is_saved(store: Store) -> None:
    docs = _registered(store, 3)
    stale = Document.from_head(docs[1].head())
    store.app.save(_failure(docs[1]))  # another writer got there first
    batch = [_failure(docs[0]), _failure(stale), _failure(docs[2])]
    errors = store.app.save_many(batch)
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], IntegrityError)
    assert [store.app.repository.get(d.id).version for d in docs] == [2, 2, 2]
    # Through GroupCommit, the stale one's error reaches its own caller.
    commits = GroupCommit(store.app)
    with pytest.raises(IntegrityError):
        commits.save(_failure(Document.from_head(stale.head() | {"version": 1})))


def test_a_batch_crossing_a_multiple_of_50_is_snapshotted(store: Store) -> None:
    [doc] = _registered(store, 1)
    for _ in range(48):
        _failure(doc)
    store.app.save(doc)  # version 49
    other = Document.register(slug="doc/other", platform="P", title="T", url="https://x/o")
    assert store.app.save_many([_failure(doc), other]) == [None, None]
    assert [s.originator_version for s in store.app.snapshots.get(doc.id)] == [50]
    assert list(store.app.snapshots.get(other.id)) == []
