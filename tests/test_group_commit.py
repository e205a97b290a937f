"""Group commit: concurrent polls' captures share transactions; a stale one fails alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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


def test_handed_in_aggregates_are_saved_by_the_group_commits_own_thread(store: Store) -> None:
    docs = _registered(store, 30)
    commits = GroupCommit(store.app)
    try:
        # From one thread that never leads (an event loop's): nothing else would save them.
        futures = [commits.hand_in(_failure(doc)) for doc in docs[:20]]
        # Polls in threads meanwhile join the same batches.
        threads = [threading.Thread(target=commits.save, args=(_failure(doc),))
                   for doc in docs[20:]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
            assert not t.is_alive()
        for future in futures:
            assert future.result(timeout=10) is None
    finally:
        commits.close()
    assert commits.saved == 30
    assert [store.app.repository.get(d.id).version for d in docs] == [2] * 30
    assert all(d.pending_events == [] for d in docs)


def test_a_handed_in_stale_aggregate_gets_its_own_error(store: Store) -> None:
    [doc, other] = _registered(store, 2)
    stale = Document.from_head(doc.head())
    store.app.save(_failure(doc))  # another writer got there first
    commits = GroupCommit(store.app)
    try:
        refused, saved = commits.hand_in(_failure(stale)), commits.hand_in(_failure(other))
        with pytest.raises(IntegrityError):
            refused.result(timeout=10)
        assert saved.result(timeout=10) is None
    finally:
        commits.close()
    assert store.app.repository.get(other.id).version == 2


def test_a_handed_in_aggregate_cancelled_before_its_batch_is_not_saved(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    [first, second] = _registered(store, 2)
    commits = GroupCommit(store.app)
    in_batch, go_on = threading.Event(), threading.Event()
    save_many = store.app.save_many

    def held(documents: list[Document]) -> list[Exception | None]:
        in_batch.set()
        go_on.wait(10)
        return save_many(documents)

    monkeypatch.setattr(store.app, "save_many", held)
    try:
        leading = commits.hand_in(_failure(first))
        assert in_batch.wait(10)  # the leader holds the first batch
        waiting = commits.hand_in(_failure(second))
        assert waiting.cancel()  # its poll was cancelled: not taken yet, so not saved
        go_on.set()
        assert leading.result(timeout=10) is None
    finally:
        go_on.set()
        commits.close()
    assert waiting.cancelled() and commits.saved == 1
    assert store.app.repository.get(first.id).version == 2
    assert store.app.repository.get(second.id).version == 1


def test_a_group_commit_that_cannot_start_its_thread_leads_in_the_callers(
        store: Store) -> None:
    [doc, other] = _registered(store, 2)
    commits = GroupCommit(store.app)
    refusing = ThreadPoolExecutor(max_workers=1)
    refusing.shutdown()  # as at interpreter exit: submit raises RuntimeError
    commits._leader = refusing
    saved = commits.hand_in(_failure(doc))
    assert saved.done() and saved.result() is None  # led here, not left waiting
    commits.save(_failure(other))  # and the next save finds no leader stuck
    assert [store.app.repository.get(d.id).version for d in (doc, other)] == [2, 2]
