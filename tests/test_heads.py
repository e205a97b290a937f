"""Document heads: most polls decide on a document's head instead of loading its aggregate.

The domain half: an aggregate built from a head records a 304, the same bytes, new markup
around the same text, a suspect page and a failure exactly as the whole aggregate does, and
refuses what needs the clause list. The service half: a poll of an unchanged page loads no
aggregate, a stale head falls back to the store, heads outlive the process, and snapshots
are still taken every 50 events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from config.settings import DocumentSettings, StoreSettings
from daemon.check import check_all, client_session, poll
from daemon.fetcher import Fetcher
from daemon.service import ClauseWatch
from daemon.store import open_store
from domain.document import Document, NeedsClausesError
from domain.extract import extract
from harness import LOOPBACK_FETCH, PageServer
from test_document import CLAUSES, ERROR_PAGE, capture, facts, new_document, page

# Fields an event records from the decision (its id and timestamp are the only others).
_SAME = ("originator_version", "outcome", "reason", "sha256", "text_sha256", "text_length",
         "clause_count", "clauses", "changes", "http_status", "etag", "last_modified")


def _settled() -> Document:
    doc = new_document()
    capture(doc, page(noise="a"), etag='"a"')
    capture(doc, page(CLAUSES[:4], noise="b"), at=1, etag='"b"')
    doc.collect_events()
    return doc


def _twins() -> tuple[Document, Document]:
    whole = _settled()
    partial = Document.from_head(json.loads(json.dumps(whole.head())))
    return whole, partial


def _event(doc: Document) -> dict[str, Any]:
    [event] = doc.collect_events()
    return {name: getattr(event, name, None) for name in _SAME} | {"type": type(event).__name__}


@pytest.mark.parametrize("case", ["not_modified", "same_bytes", "markup", "suspect", "failure"])
def test_a_head_decides_what_needs_no_clauses_as_the_whole_aggregate_does(case: str) -> None:
    whole, partial = _twins()
    assert partial.is_partial and not whole.is_partial
    assert (partial.id, partial.version, partial.clause_count) == (
        whole.id, whole.version, whole.clause_count)
    for doc in (whole, partial):
        if case == "not_modified":
            result = doc.record_not_modified(captured_at=facts(b"").captured_at,
                                             requested_url="https://x.test/p",
                                             final_url="https://x.test/p")
        elif case == "same_bytes":
            result = doc.record_capture(facts(page(CLAUSES[:4], noise="b"), at=2), None)
        elif case == "markup":
            body = page(CLAUSES[:4], noise="c")
            result = doc.record_capture(facts(body, at=2), extract(body, select="main"))
        elif case == "suspect":
            result = capture(doc, ERROR_PAGE, at=2)
        else:
            doc.record_failure(captured_at=facts(b"").captured_at, requested_url="x",
                               error_kind="timeout", message="slow")
            result = None
        if doc is whole:
            expected_result, expected_event = result, _event(doc)
    assert result == expected_result
    assert _event(partial) == expected_event
    # The same state after it (modified_on is the moment each event was made).
    assert {**partial.head(), "modified_on": None} == {**whole.head(), "modified_on": None}


def test_a_head_refuses_what_needs_the_clauses() -> None:
    whole, partial = _twins()
    with pytest.raises(NeedsClausesError):
        capture(partial, page(CLAUSES, noise="c"), at=2)  # a clause came back: a change
    assert partial.collect_events() == []
    with pytest.raises(NeedsClausesError):
        partial.reclassify(lambda text: [], "v2")
    assert capture(whole, page(CLAUSES, noise="c"), at=2).outcome == "changed"


def test_a_head_of_an_unknown_layout_is_refused() -> None:
    head = _settled().head() | {"layout": 99}
    with pytest.raises(ValueError, match="layout"):
        Document.from_head(head)


# The service ---------------------------------------------------------------------------------


@pytest.fixture
def service(store_settings: StoreSettings, tmp_path: Path) -> Iterator[ClauseWatch]:
    store = open_store(store_settings, tmp_path / "data")
    yield ClauseWatch(store)
    store.close()


class _Loads:
    """Counts the aggregates the service loads from the store."""

    def __init__(self, service: ClauseWatch, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = service.app.repository.get

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(service.app.repository, "get", counted)


def _doc(server: PageServer) -> DocumentSettings:
    return DocumentSettings(id="example/privacy", platform="Example", title="Privacy Policy",
                            url=server.url("/privacy"), select="main", robots=False)


async def test_unchanged_polls_load_no_aggregate_and_a_change_loads_it(
        service: ClauseWatch, page_server: PageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _doc(page_server)
    page_server.set("/privacy", page(CLAUSES, noise="1").decode(), etag='"1"')
    [baseline] = await check_all(service, LOOPBACK_FETCH, [doc])
    loads = _Loads(service, monkeypatch)
    # A 304, then new markup around the same text: both decided on the head.
    [same] = await check_all(service, LOOPBACK_FETCH, [doc])
    page_server.set("/privacy", page(CLAUSES, noise="2").decode(), etag='"2"')
    [markup] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert [h.status for h in page_server.hits("/privacy")] == [200, 304, 200]
    assert (same.outcome, markup.outcome, loads.count) == ("unchanged", "unchanged", 0)
    assert same.clauses == markup.clauses == baseline.clauses
    # A real change needs the clauses: the aggregate is loaded, the change recorded.
    page_server.set("/privacy", page(CLAUSES[:3], noise="3").decode(), etag='"3"')
    [changed] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert (changed.outcome, changed.kinds, loads.count) == ("changed", ("removed", "removed"), 1)
    assert service.document(doc.id)["captures"] == 4
    assert [c["kind"] for c in service.changes(document=doc.id)] == ["removed", "removed"]


async def test_a_stale_head_falls_back_to_the_store(
        service: ClauseWatch, store_settings: StoreSettings, tmp_path: Path,
        page_server: PageServer) -> None:
    doc = _doc(page_server)
    page_server.set("/privacy", page(CLAUSES).decode(), etag='"1"')
    await check_all(service, LOOPBACK_FETCH, [doc])
    # Another process (a replica) polls the document meanwhile: our head is one behind.
    other_store = open_store(store_settings, tmp_path / "data")
    try:
        other = ClauseWatch(other_store)
        await check_all(other, LOOPBACK_FETCH, [doc])
        behind = service.heads.get(doc.id)
        assert behind is not None and behind["version"] < other.heads.get(doc.id)["version"]
    finally:
        other_store.close()
    # Our next poll is refused on the stale version, reloads and records all the same.
    [again] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert again.outcome == "unchanged"
    assert service.document(doc.id)["captures"] == 3
    aggregate = service.app.repository.get(Document.from_head(behind).id)
    assert aggregate.version == service.heads.get(doc.id)["version"] == behind["version"] + 2


class _Threads(ThreadPoolExecutor):
    """The polls' thread pool, counting what it was given; `refuse`: nothing."""

    def __init__(self, *, refuse: bool = False) -> None:
        super().__init__(max_workers=2)
        self.refuse = refuse
        self.calls: list[str] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(getattr(fn, "args", (fn,))[0].__name__)  # context.run(fn, ...)
        if self.refuse:
            raise AssertionError("a poll asked for a thread")
        return super().submit(fn, *args, **kwargs)


async def test_a_304_the_head_is_enough_for_is_recorded_without_a_thread(
        service: ClauseWatch, page_server: PageServer) -> None:
    doc = _doc(page_server)
    page_server.set("/privacy", page(CLAUSES).decode(), etag='"1"')
    [baseline] = await check_all(service, LOOPBACK_FETCH, [doc])
    service.catch_up_after_save = False  # as a pass and the daemon record
    refusing = _Threads(refuse=True)
    try:
        async with client_session(LOOPBACK_FETCH) as session:
            fetcher = Fetcher(session, LOOPBACK_FETCH)
            first = await poll(service, fetcher, doc, executor=refusing)
            second = await poll(service, fetcher, doc, executor=refusing)
    finally:
        refusing.shutdown()
        service.commits.close()
    assert [h.status for h in page_server.hits("/privacy")] == [200, 304, 304]
    assert (first.outcome, second.outcome) == ("unchanged", "unchanged")
    assert first.clauses == second.clauses == baseline.clauses
    assert first.append_seconds is not None and first.append_seconds >= 0
    service.views.catch_up()
    assert service.document(doc.id)["captures"] == 3
    assert service.heads.get(doc.id)["version"] == _stored_version(service, doc) == 4


async def test_a_304_waiting_for_its_save_gives_its_place_to_the_next_poll(
        service: ClauseWatch, page_server: PageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass with room for one poll in flight: while the group commit holds the first
    304's save, the other documents are fetched all the same (and then saved)."""
    docs = [DocumentSettings(id=f"example/policy-{n}", platform="Example", title=f"Policy {n}",
                             url=page_server.url(f"/policy-{n}"), select="main", robots=False)
            for n in range(3)]
    for n, doc in enumerate(docs):
        page_server.set(f"/policy-{n}", page(CLAUSES).decode(), etag=f'"{n}"')
    one_at_a_time = dataclasses.replace(LOOPBACK_FETCH, concurrency=1)
    await check_all(service, one_at_a_time, docs)

    def fetched_again() -> bool:
        return all(len(page_server.hits(f"/policy-{n}")) == 2 for n in range(3))

    seen_while_held: list[bool] = []
    save_many = service.commits.app.save_many

    def held(documents: Any) -> Any:
        # The first batch waits (at most 10 s) for every page to be fetched again.
        if not seen_while_held:
            deadline = time.monotonic() + 10
            while not fetched_again() and time.monotonic() < deadline:
                time.sleep(0.01)
            seen_while_held.append(fetched_again())
        return save_many(documents)

    monkeypatch.setattr(service.commits.app, "save_many", held)
    outcomes = await check_all(service, one_at_a_time, docs)
    assert seen_while_held == [True]
    assert [o.outcome for o in outcomes] == ["unchanged"] * 3
    assert [h.status for n in range(3) for h in page_server.hits(f"/policy-{n}")] == \
        [200, 304] * 3
    assert [service.document(doc.id)["captures"] for doc in docs] == [2, 2, 2]
    assert [_stored_version(service, doc) for doc in docs] == [3, 3, 3]


def _stored_version(service: ClauseWatch, doc: DocumentSettings) -> int:
    """The version of the document's aggregate in the store."""
    head = service.heads.get(doc.id)
    assert head is not None
    return int(service.app.repository.get(Document.from_head(head).id).version)


async def test_a_304_waits_for_a_thread_while_another_poll_records_the_document(
        service: ClauseWatch, page_server: PageServer) -> None:
    doc = _doc(page_server)
    page_server.set("/privacy", page(CLAUSES).decode(), etag='"1"')
    await check_all(service, LOOPBACK_FETCH, [doc])
    service.catch_up_after_save = False
    threads = _Threads()
    lock = service._lock(doc.id)
    lock.acquire()  # another poll of the same document is recording
    try:
        async with client_session(LOOPBACK_FETCH) as session:
            polling = asyncio.ensure_future(
                poll(service, Fetcher(session, LOOPBACK_FETCH), doc, executor=threads))
            while "record_fetch" not in threads.calls:
                await asyncio.sleep(0.01)
            assert not polling.done()  # waiting for the document, in a thread
            lock.release()
            outcome = await polling
    finally:
        if lock.locked():
            lock.release()
        threads.shutdown()
    assert threads.calls == ["record_fetch"] and outcome.outcome == "unchanged"
    assert _stored_version(service, doc) == 3


async def test_heads_outlive_the_process_and_are_checked_against_the_store(
        service: ClauseWatch, store_settings: StoreSettings, tmp_path: Path,
        page_server: PageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _doc(page_server)
    page_server.set("/privacy", page(CLAUSES).decode(), etag='"1"')
    await check_all(service, LOOPBACK_FETCH, [doc])  # check_all writes the heads at its end
    next_store = open_store(store_settings, tmp_path / "data")
    try:
        later = ClauseWatch(next_store)
        loads = _Loads(later, monkeypatch)
        [outcome] = await check_all(later, LOOPBACK_FETCH, [doc])
        assert (outcome.outcome, loads.count) == ("unchanged", 0)
        written = next_store.db.query("SELECT version FROM cw_heads WHERE document = ?",
                                      (doc.id,))
        assert [r["version"] for r in written] == [later.heads.get(doc.id)["version"]]
    finally:
        next_store.close()


async def test_snapshots_are_still_taken_every_50_events(
        service: ClauseWatch, page_server: PageServer) -> None:
    doc = _doc(page_server)
    page_server.set("/privacy", page(CLAUSES).decode(), etag='"1"')
    for _ in range(105):
        await check_all(service, LOOPBACK_FETCH, [doc])
    aggregate_id = Document.from_head(service.heads.get(doc.id)).id
    versions = [s.originator_version for s in service.app.snapshots.get(aggregate_id)]
    assert versions == [50, 100]
    # And the aggregate they rebuild is the one the heads describe.
    kept = service.heads.get(doc.id)
    assert service.app.repository.get(aggregate_id).head() == {
        k: v for k, v in kept.items() if k != "region"}


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the extraction's walks of a page, of either tree (one item each)."""
    import domain.extract

    counted: list[int] = []
    for walker in (domain.extract._Walker, domain.extract._LexborWalker):
        original = walker.walk
        monkeypatch.setattr(walker, "walk", lambda self, root, original=original:
                            counted.append(1) or original(self, root))
    return counted


async def test_new_markup_around_the_same_region_is_not_walked(
        service: ClauseWatch, page_server: PageServer, walks: list[int]) -> None:
    doc = _doc(page_server)
    page_server.set("/privacy", page(CLAUSES, noise="1").decode())
    await check_all(service, LOOPBACK_FETCH, [doc])
    # page() puts its noise in a <script> and a <nav> class: outside <main>.
    page_server.set("/privacy", page(CLAUSES, noise="2").decode())
    [markup] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert (markup.outcome, len(walks)) == ("unchanged", 1)
    latest = service.captures(doc.id)[0]
    first = service.captures(doc.id)[1]
    assert latest["sha256"] != first["sha256"] and latest["text_sha256"] == first["text_sha256"]
    # A change inside the region is walked and recorded.
    page_server.set("/privacy", page(CLAUSES[1:], noise="3").decode())
    [changed] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert (changed.outcome, changed.kinds, len(walks)) == ("changed", ("removed",), 2)


async def test_attributes_inside_the_region_are_not_walked_and_the_new_key_is_kept(
        service: ClauseWatch, page_server: PageServer, walks: list[int]) -> None:
    doc = _doc(page_server)
    body = page(CLAUSES).decode()
    page_server.set("/privacy", body)
    await check_all(service, LOOPBACK_FETCH, [doc])
    first_key = service.heads.get(doc.id)["region"]["key"]
    # A redeploy renames the classes inside <main>: new markup, the same text.
    page_server.set("/privacy", body.replace("<p>", "<p class='c-1x'>"))
    [markup] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert (markup.outcome, len(walks)) == ("unchanged", 1)
    key = service.heads.get(doc.id)["region"]["key"]
    assert key != first_key and key.split(".")[1] == first_key.split(".")[1]
    # The next page with those classes matches the new key as it is.
    page_server.set("/privacy", body.replace("<p>", "<p class='c-1x'>").replace(
        "Home", "Start"))
    [again] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert (again.outcome, len(walks)) == ("unchanged", 1)
    assert service.heads.get(doc.id)["region"]["key"] == key


def test_a_document_without_good_text_needs_no_load_and_a_stale_one_still_reloads(
        service: ClauseWatch, store_settings: StoreSettings, tmp_path: Path) -> None:
    doc = Document.register(slug="new/doc", platform="P", title="T", url="https://x.test/")
    service.app.save(doc)
    head = doc.head()
    fresh = Document.from_head(head)
    assert fresh.clauses == [] and not fresh.is_partial and fresh.built_from_head
    body = page(CLAUSES)
    assert capture(fresh, body).outcome == "baseline"
    # Someone else captured it first: the head is stale, and saving says so.
    other = Document.from_head(head)
    capture(other, body)
    service.app.save(fresh)
    from eventsourcing.persistence import IntegrityError

    with pytest.raises(IntegrityError):
        service.commits.save(other)


# Which tree a document's text is read from (domain.blocks.WALKS), kept in its head.

# Without a doctype (quirks mode) lexbor matches class names without regard to case, as
# browsers do, and cssselect does not: the two trees read different text from this page.
_QUIRKS = ("<html><body><div class='policy'><p>We keep logs.</p><p>{}</p></div>"
           "<div class='POLICY'><p>{}</p></div></body></html>")


async def test_a_document_read_from_lxml_so_far_moves_to_lexbor_once_both_agree(
        service: ClauseWatch, page_server: PageServer, walks: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    doc = DocumentSettings(id="example/privacy", platform="Example", title="Privacy Policy",
                           url=page_server.url("/privacy"), select=".policy", robots=False)
    # Recorded from lxml's tree, as before lexbor's was read.
    with monkeypatch.context() as legacy:
        legacy.setattr("daemon.service._walk", lambda *_: "lxml")
        page_server.set("/privacy", _QUIRKS.format("We delete them a year after you leave.", "Banner 1"))
        [first] = await check_all(service, LOOPBACK_FETCH, [doc])
    head = service.heads.get(doc.id)
    assert first.outcome == "baseline" and head["region"]["walk"] == "lxml"
    del head["region"]["walk"]  # as a head written before there was a choice of tree
    service.heads.put(doc.id, head)
    assert [c["text"] for c in service.clauses(doc.id)] == ["We keep logs.", "We delete them a year after you leave."]
    # A new banner, which only lexbor's tree selects: read from both, lxml's reading stands
    # and nothing changed (lexbor's alone would have added "Banner 2").
    page_server.set("/privacy", _QUIRKS.format("We delete them a year after you leave.", "Banner 2"))
    [banner] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert (banner.outcome, len(walks)) == ("unchanged", 3)  # baseline 1, then both 2
    assert service.heads.get(doc.id)["region"]["walk"] == "lxml"
    # The banner gone, a clause changed: both trees agree, the change is recorded and the
    # document is read from lexbor's tree from now on.
    page_server.set("/privacy", _QUIRKS.replace("<div class='POLICY'><p>{}</p></div>", "")
                    .format("We delete them two years after you leave."))
    [changed] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert (changed.outcome, changed.kinds, len(walks)) == ("changed", ("modified",), 5)
    assert service.heads.get(doc.id)["region"]["walk"] == "lexbor"
    page_server.set("/privacy", _QUIRKS.replace("<div class='POLICY'><p>{}</p></div>", "")
                    .format("We delete them three years after you leave."))
    [again] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert (again.outcome, len(walks)) == ("changed", 6)  # one walk: lexbor's


async def test_a_new_document_is_read_from_lexbors_tree_alone(
        service: ClauseWatch, page_server: PageServer, walks: list[int]) -> None:
    doc = _doc(page_server)
    page_server.set("/privacy", page(CLAUSES, noise="1").decode())
    [first] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert (first.outcome, len(walks)) == ("baseline", 1)
    assert service.heads.get(doc.id)["region"]["walk"] == "lexbor"
    page_server.set("/privacy", page(CLAUSES[1:], noise="2").decode())
    [changed] = await check_all(service, LOOPBACK_FETCH, [doc])
    assert (changed.outcome, len(walks)) == ("changed", 2)
    assert service.heads.get(doc.id)["region"]["walk"] == "lexbor"
