"""Extraction in worker processes gives what extraction in the thread gives, and survives a
worker's death."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import DetectionSettings, DocumentSettings, StoreSettings
from daemon.check import check_all
from daemon.extraction import ExtractionPool
from daemon.service import ClauseWatch
from daemon.store import open_store
from domain.document import Document
from domain.errors import SelectorError, UnsupportedContentError
from domain.extract import SameRegion, extract
from harness import LOOPBACK_FETCH, TRIMMED_CORPUS, PageServer, declaration, replay_versions
from test_heads import _Loads  # counts the aggregates a service loads from the store


@pytest.fixture(scope="module")
def pool() -> Iterator[ExtractionPool]:
    workers = ExtractionPool(2)
    yield workers
    workers.close()


def test_workers_extract_real_pages_as_the_thread_does(pool: ExtractionPool) -> None:
    directory = TRIMMED_CORPUS / "replay" / "github-privacy"
    select = declaration(directory)["select"]
    versions = replay_versions(directory)[:4]
    for version in versions:
        assert pool(version.body, version.content_type, select=select) == \
            extract(version.body, version.content_type, select=select)
    first = extract(versions[0].body, select=select)
    assert pool(versions[1].body, select=select, unless_region=first.region) == \
        extract(versions[1].body, select=select, unless_region=first.region)
    assert isinstance(pool(versions[0].body, select=select, unless_region=first.region),
                      SameRegion)


def test_errors_cross_the_process_boundary_whole(pool: ExtractionPool) -> None:
    with pytest.raises(SelectorError) as caught:
        pool(b"<html><body><p>x</p></body></html>", select="p[")
    assert caught.value.selector == "p[" and "invalid CSS selector" in caught.value.reason
    with pytest.raises(UnsupportedContentError) as unsupported:
        pool(b"\x00\x01", "image/png")
    assert unsupported.value.content_type == "image/png"


def test_a_dead_worker_costs_one_extraction_in_the_thread_then_new_workers() -> None:
    pool = ExtractionPool(1)
    try:
        page = b"<html><body><main><p>We keep your data.</p></main></body></html>"
        assert pool(page, select="main").blocks[0].text == "We keep your data."
        [worker] = list(pool._pool._processes.values())  # noqa: SLF001 (the test kills it)
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        # The broken pool is replaced; this page is extracted all the same.
        assert pool(page, select="main").blocks[0].text == "We keep your data."
        assert pool(page, select="main").blocks[0].text == "We keep your data."
        assert list(pool._pool._processes.values())[0].pid != worker.pid  # noqa: SLF001
    finally:
        pool.close()


async def test_a_service_with_extraction_workers_records_the_same_captures(
        tmp_path: Path, page_server: PageServer) -> None:
    from test_service import CLAUSES, page

    doc = DocumentSettings(id="example/privacy", platform="Example", title="Privacy",
                           url=page_server.url("/privacy"), select="main", robots=False)
    store = open_store(StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}"),
                       tmp_path / "data")
    service = ClauseWatch(store, detection=DetectionSettings(extract_processes=1))
    try:
        assert isinstance(service.extract, ExtractionPool)
        page_server.set("/privacy", page(CLAUSES, "1"))
        [first] = await check_all(service, LOOPBACK_FETCH, [doc])
        page_server.set("/privacy", page(CLAUSES[1:], "2"))
        [second] = await check_all(service, LOOPBACK_FETCH, [doc])
        assert (first.outcome, first.clauses) == ("baseline", 5)
        assert (second.outcome, second.kinds) == ("changed", ("removed",))
    finally:
        service.close()


async def test_workers_store_the_bytes_they_read_before_the_event_cites_them(
        tmp_path: Path, page_server: PageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """New bytes are written as evidence by the worker that extracts them: the stored
    capture verifies, its file was written by another process, and the bytes of a page the
    worker cannot read are kept all the same."""
    import hashlib

    from test_service import CLAUSES, page

    doc = DocumentSettings(id="example/privacy", platform="Example", title="Privacy",
                           url=page_server.url("/privacy"), select="main", robots=False)
    store = open_store(StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}"),
                       tmp_path / "data")
    service = ClauseWatch(store, detection=DetectionSettings(extract_processes=1))
    written_by: list[int] = []
    original = os.replace

    def replace(src: object, dst: object) -> None:
        written_by.append(os.getpid())
        original(src, dst)  # type: ignore[arg-type]

    try:
        body = page(CLAUSES, "1").encode()
        page_server.set("/privacy", body)
        [first] = await check_all(service, LOOPBACK_FETCH, [doc])
        assert first.outcome == "baseline"
        assert first.sha256 == hashlib.sha256(body).hexdigest()
        assert service.store.evidence.get(first.sha256) == body
        assert service.store.evidence.verify(first.sha256).status == "ok"
        # Not this process: os.replace here would have been seen.
        with monkeypatch.context() as patched:
            patched.setattr(os, "replace", replace)
            page_server.set("/privacy", page(CLAUSES, "2"))
            [second] = await check_all(service, LOOPBACK_FETCH, [doc])
        assert second.outcome == "unchanged" and written_by == []
        assert service.store.evidence.verify(second.sha256).status == "ok"
        broken = b"\x89PNG\r\n\x1a\n not a policy"
        page_server.set("/privacy", broken, content_type="image/png")
        [third] = await check_all(service, LOOPBACK_FETCH, [doc])
        assert third.outcome == "failed" and "image/png" in (third.reason or "")
        assert service.store.evidence.get(hashlib.sha256(broken).hexdigest()) == broken
    finally:
        service.close()


def test_workers_that_keep_dying_are_given_up_for_the_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    class DeadOnArrival:
        started = 0

        def __init__(self) -> None:
            DeadOnArrival.started += 1

        def submit(self, *args: object, **kwargs: object) -> Future[object]:
            future: Future[object] = Future()
            future.set_exception(BrokenProcessPool("a worker died at start"))
            return future

        def shutdown(self, **kwargs: object) -> None:
            pass

    monkeypatch.setattr(ExtractionPool, "_new_pool", lambda self: DeadOnArrival())
    pool = ExtractionPool(2)
    page = b"<html><body><main><p>We keep your data.</p></main></body></html>"
    for _ in range(10):
        assert pool(page, select="main").blocks[0].text == "We keep your data."
    # One pool at the start and two replacements, then no more forking.
    assert pool.given_up and DeadOnArrival.started == ExtractionPool.MAX_BREAKS
    pool.close()


def test_a_busy_worker_cannot_hang_the_stop() -> None:
    import time

    pool = ExtractionPool(1)
    page = b"<html><body><main><p>x</p></main></body></html>"
    assert pool(page, select="main").blocks  # the worker is up
    [worker] = list(pool._pool._processes.values())  # noqa: SLF001
    pool._pool.submit(time.sleep, 60)  # noqa: SLF001 (a page that hangs the parser)
    time.sleep(0.2)
    started = time.monotonic()
    pool.close(timeout=1.0)
    assert time.monotonic() - started < 5
    assert not worker.is_alive()


def test_workers_align_real_versions_as_the_thread_does(pool: ExtractionPool) -> None:
    """A changed text is aligned in a worker: the same clauses, ids and edits."""
    import functools

    from domain.clauses import Clause, align
    from domain.clauses import clause_id

    directory = TRIMMED_CORPUS / "replay" / "github-privacy"
    select = declaration(directory)["select"]
    versions = [extract(v.body, v.content_type, select=select)
                for v in replay_versions(directory)]
    # Two versions of the page with different texts.
    old, new = next((a, b) for a, b in zip(versions, versions[1:]) if a.text != b.text)
    clauses = [Clause(id=f"cl-{n}", text=b.text, section=b.section, kind=b.kind)
               for n, b in enumerate(old.blocks)]
    new_id = functools.partial(clause_id, "github/privacy", 2)
    here = align(clauses, new.blocks, new_id=new_id, threshold=0.5)
    there = pool.run(align, clauses, new.blocks, new_id=new_id, threshold=0.5)
    assert there == here and here.edits


def test_nothing_is_started_or_loaded_for_pages_not_read() -> None:
    """A run whose pages are all 304s (or the same bytes) reads none: the pool starts no
    process, not even multiprocessing's resource tracker, and the process that records never
    imports the HTML parsers (the workers do, when the first page comes)."""
    import subprocess
    import sys

    code = """
import sys
import multiprocessing.resource_tracker as tracker
import daemon.check, daemon.service
from daemon.extraction import ExtractionPool
pool = ExtractionPool(2)
pool.close()
parsers = ("domain.extract", "lxml.etree", "selectolax.lexbor")
print([m for m in parsers if m in sys.modules], tracker._resource_tracker._pid)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.split() == ["[]", "None"], done.stderr
    # And a pool that is used starts then: the same page read in a worker as in the thread.
    pool = ExtractionPool(1)
    try:
        page = b"<html><body><main><p>We keep your data.</p></main></body></html>"
        assert pool(page, select="main") == extract(page, select="main")
        assert pool._pool is not None and pool._pool._processes
    finally:
        pool.close()
    assert pool(page, select="main") == extract(page, select="main")  # closed: in the thread


def test_the_console_script_module_leaves_the_event_loop_and_the_store_to_commands() -> None:
    """Every worker and the views process import the console script's module (it is their
    __main__): what it imports at the top, each child pays for at its start."""
    import subprocess
    import sys

    code = """
import sys
import daemon.cli
heavy = ("asyncio", "aiohttp", "eventsourcing", "lxml.etree", "sqlite3")
print([m for m in heavy if m in sys.modules])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.split() == ["[]"], done.stdout + done.stderr


# Pages recorded whole in a worker ----------------------------------------------------------


async def test_real_changes_recorded_in_a_worker_are_those_the_thread_records(
        store_settings: StoreSettings, tmp_path: Path, page_server: PageServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real policy's versions, replayed into a service whose workers record its changed
    pages (loading the aggregate themselves) and into one that records them in the thread:
    the same outcomes, clause edits and categories, and not one aggregate loaded by the
    process that saves them."""
    from harness import replay, replay_document_settings

    from config.taxonomy import load_taxonomy

    directory = TRIMMED_CORPUS / "replay" / "github-privacy"
    versions = replay_versions(directory)
    doc = replay_document_settings("github/privacy", directory, page_server)
    taxonomy = load_taxonomy(None)
    here, in_thread = await replay(page_server, versions, doc, tmp_path / "thread",
                                   taxonomy=taxonomy)
    store = open_store(store_settings, tmp_path / "data")
    service = ClauseWatch(store, detection=DetectionSettings(extract_processes=1),
                          taxonomy=taxonomy)
    try:
        await asyncio.to_thread(service.sync_documents, [doc])
        loads = _Loads(service, monkeypatch)
        there, _ = await replay(page_server, versions, doc, tmp_path / "worker",
                                service=service)
        assert [s.outcome for s in there] == [s.outcome for s in here]
        assert [(s.kinds, s.clauses) for s in there] == [(s.kinds, s.clauses) for s in here]
        assert sum(s.outcome == "changed" for s in there) >= 2
        # Each change as recorded: the same clause, edit and categories on each side.
        fields = ("clause", "kind", "before", "after", "patch", "categories_before",
                  "categories_after")
        assert [{f: c[f] for f in fields} for c in service.changes(document=doc.id)] == \
            [{f: c[f] for f in fields} for c in in_thread.changes(document=doc.id)]
        assert any(c["categories_after"] for c in service.changes(document=doc.id))
        assert loads.count == 0
        # The aggregate in the store is the one the thread's service built.
        assert [c["text"] for c in service.clauses(doc.id)] == \
            [c["text"] for c in in_thread.clauses(doc.id)]
    finally:
        service.close()
        in_thread.store.close()


async def test_a_page_a_worker_recorded_on_a_stale_head_is_recorded_again_here(
        tmp_path: Path, page_server: PageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another replica appended since this process's head: a change is recorded by the
    worker on the aggregate it loads (the latest); a suspect page, which the worker decides
    on the stale head, is refused by the store and recorded again from the store here."""
    from test_service import CLAUSES, page

    settings = StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}")
    doc = DocumentSettings(id="example/privacy", platform="Example", title="Privacy",
                           url=page_server.url("/privacy"), select="main", robots=False)
    service = ClauseWatch(open_store(settings, tmp_path / "data"),
                          detection=DetectionSettings(extract_processes=1))
    other = ClauseWatch(open_store(settings, tmp_path / "data"))

    async def replica_polls(clauses: list[str]) -> None:
        # New markup around the same text: one more event, this process not told.
        page_server.set("/privacy", page(clauses, str(len(page_server.hits("/privacy")))))
        [seen] = await check_all(other, LOOPBACK_FETCH, [doc])
        assert seen.outcome == "unchanged"

    try:
        page_server.set("/privacy", page(CLAUSES, "a"))
        [first] = await check_all(service, LOOPBACK_FETCH, [doc])
        await replica_polls(CLAUSES)
        loads = _Loads(service, monkeypatch)
        page_server.set("/privacy", page(CLAUSES[1:], "b"))
        [changed] = await check_all(service, LOOPBACK_FETCH, [doc])
        assert (first.outcome, changed.outcome, changed.kinds) == (
            "baseline", "changed", ("removed",))
        assert loads.count == 0  # the worker loaded the latest aggregate: no refusal
        await replica_polls(CLAUSES[1:])
        page_server.set("/privacy", page(["Oops."], "c"))  # the text all but gone
        [suspect] = await check_all(service, LOOPBACK_FETCH, [doc])
        assert suspect.outcome == "suspect" and loads.count == 1
        record = service.document(doc.id)
        assert (record["captures"], record["changes"]) == (5, 1)
        stored = service.app.repository.get(Document.from_head(service.heads.get(doc.id)).id)
        assert stored.version == service.heads.get(doc.id)["version"]
    finally:
        service.close()
        other.close()


async def test_without_workers_to_run_it_a_page_is_recorded_here(
        tmp_path: Path, page_server: PageServer) -> None:
    """Workers given up (or closed): in_worker runs nothing, and the poll's thread reads
    and records the page itself."""
    from test_service import CLAUSES, page

    doc = DocumentSettings(id="example/privacy", platform="Example", title="Privacy",
                           url=page_server.url("/privacy"), select="main", robots=False)
    service = ClauseWatch(open_store(StoreSettings(url=f"sqlite:///{tmp_path / 'e.db'}"),
                                     tmp_path / "data"),
                          detection=DetectionSettings(extract_processes=1))
    try:
        page_server.set("/privacy", page(CLAUSES, "1"))
        [first] = await check_all(service, LOOPBACK_FETCH, [doc])
        assert service.extraction_pool is not None
        service.extraction_pool.close()
        assert service.extraction_pool.in_worker(len, "abc") is None
        page_server.set("/privacy", page(CLAUSES[:-1], "2"))
        [second] = await check_all(service, LOOPBACK_FETCH, [doc])
        assert (first.outcome, second.outcome, second.kinds) == (
            "baseline", "changed", ("removed",))
    finally:
        service.close()


async def test_a_page_a_worker_read_is_read_once(
        tmp_path: Path, page_server: PageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A redeploy renames classes inside the watched region: the worker reads the page as
    the same region under a new key, and the poll records that without asking a worker to
    read it again (it did, once, for every such page: the new key is not the old one)."""
    from test_heads import CLAUSES, page

    doc = DocumentSettings(id="example/privacy", platform="Example", title="Privacy",
                           url=page_server.url("/privacy"), select="main", robots=False)
    service = ClauseWatch(open_store(StoreSettings(url=f"sqlite:///{tmp_path / 'e.db'}"),
                                     tmp_path / "data"),
                          detection=DetectionSettings(extract_processes=1))
    pool = service.extraction_pool
    assert pool is not None
    sent: list[str] = []
    for name in ("run", "in_worker"):
        original = getattr(pool, name)
        monkeypatch.setattr(pool, name, lambda fn, *a, original=original, **k:
                            sent.append(fn.__name__) or original(fn, *a, **k))
    try:
        body = page(CLAUSES).decode()
        page_server.set("/privacy", body)
        await check_all(service, LOOPBACK_FETCH, [doc])
        first_key = service.heads.get(doc.id)["region"]["key"]
        sent.clear()
        page_server.set("/privacy", body.replace("<p>", "<p class='c-1x'>"))
        [markup] = await check_all(service, LOOPBACK_FETCH, [doc])
        assert markup.outcome == "unchanged"
        assert sent == ["record_page"]
        assert service.heads.get(doc.id)["region"]["key"] != first_key
    finally:
        service.close()


async def test_snapshots_of_changes_recorded_in_workers_are_taken_and_load(
        tmp_path: Path, page_server: PageServer) -> None:
    """Changes recorded (and encoded) by a worker cross multiples of 50 events: the worker
    encodes the snapshot due with them, the saving process stores it, and the aggregate the
    store rebuilds from it is the one the head and the last page describe."""
    from test_heads import CLAUSES, page

    doc = DocumentSettings(id="example/privacy", platform="Example", title="Privacy",
                           url=page_server.url("/privacy"), select="main", robots=False)
    service = ClauseWatch(open_store(StoreSettings(url=f"sqlite:///{tmp_path / 'e.db'}"),
                                     tmp_path / "data"),
                          detection=DetectionSettings(extract_processes=1))
    encoded_snapshots: list[int] = []  # versions of the snapshots workers encoded
    original = service.app._put_encoded_snapshots

    def put(saved: list[object]) -> None:
        encoded_snapshots.extend(s.snapshot.originator_version for s in saved
                                 if getattr(s, "snapshot", None) is not None)
        original(saved)

    service.app._put_encoded_snapshots = put  # type: ignore[method-assign]
    try:
        # Each change swaps two clauses' words: a capture and two edits, three events.
        texts = [list(CLAUSES), [*CLAUSES[:2], CLAUSES[2] + " Really.", CLAUSES[3] + " Truly."]]
        outcomes = []
        for n in range(40):
            page_server.set("/privacy", page(texts[n % 2], noise=str(n)).decode())
            [outcome] = await check_all(service, LOOPBACK_FETCH, [doc])
            outcomes.append(outcome.outcome)
        assert outcomes.count("changed") == 39
        aggregate_id = Document.from_head(service.heads.get(doc.id)).id
        versions = [s.originator_version for s in service.app.snapshots.get(aggregate_id)]
        assert len(versions) >= 2 and all(v % 50 < 3 for v in versions)  # at the crossing
        kept = service.heads.get(doc.id)
        stored = service.app.repository.get(aggregate_id)
        assert stored.head() == {k: v for k, v in kept.items() if k != "region"}
        assert [c["text"] for c in stored.clauses][-4:] == texts[39 % 2]
        assert encoded_snapshots  # not all of them taken by the polling process
    finally:
        service.close()
