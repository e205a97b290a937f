"""Extraction and alignment in worker processes, so that the CPU-bound part of a poll uses
every core.

A poll's thread hands the page (or, for a changed text, both clause lists) to a process of the
pool and waits (without the GIL); the result is the same Extraction, SameRegion or Alignment
as computing it in the thread. A worker that dies (a crash in the HTML parser on some page)
breaks the pool: it is replaced, and that call runs in the calling thread instead, so a bad
page costs one capture's speed, never the daemon.

A page whose text changed is also recorded in the worker that read it (`record_page`): the
worker loads the document's aggregate from the store itself, aligns and classifies the
clauses and builds and encodes the events; the process that saves gets back the stored
events and the document's new head. Loading, aligning and deciding were ~4 ms of that
process's CPU a changed page (where the GIL is shared with the event loop and every other
poll), and the old and new clause lists no longer cross to a worker and back to be aligned.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.util
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from daemon.evidence import EvidenceStore
from domain.blocks import Extraction, SameRegion

if TYPE_CHECKING:
    from config.settings import StoreSettings
    from daemon.store import ClauseWatchApp, EncodedSave
    from domain.classify import ClauseCategories, Taxonomy
    from domain.document import CaptureFacts, CaptureResult, Document
    from domain.suspect import SuspectPolicy

T = TypeVar("T")

log = logging.getLogger("clausewatch.extraction")


def extract(body: bytes, content_type: str = "text/html", **kwargs: Any
            ) -> Extraction | SameRegion:
    """domain.extract.extract, imported at the first page to read: a process whose pages are
    read by the workers (or whose pages did not change) never loads the HTML parsers."""
    from domain.extract import extract as extract_page

    return extract_page(body, content_type, **kwargs)


def read_page(evidence: EvidenceStore, body: bytes, sha256: str,
              content_type: str = "text/html", **kwargs: Any) -> Extraction | SameRegion:
    """Store new bytes of a page as evidence, then extract them (`extract`'s arguments).

    In a worker, the process that records hands over the bytes once for both: compressing
    and writing them (~1 ms a page) leaves its CPU too. The bytes are on disk (fsync'd) when
    this returns, before any event can cite them, and stay there if the page cannot be read.
    """
    evidence.put(body, sha256=sha256)
    return extract(body, content_type, **kwargs)


@dataclass(frozen=True, slots=True)
class Recorded:
    """A page recorded by `record_page`: the capture's events, encoded (to be saved by the
    caller), the document's head after them, what the capture decided, and the region and
    tree its text was read from (None: as the document's head says)."""

    save: EncodedSave
    head: dict[str, Any]
    capture: CaptureResult
    region: str | None
    walk: str | None


class TaxonomyWanted:
    """`record_page`'s answer when this worker has not seen the taxonomy of that version:
    call again with it (once per worker and version; it does not cross with every page)."""


# A worker's event stores and classifiers, opened or built at the first page that needs them.
_event_stores: dict[tuple[str, str | None], ClauseWatchApp] = {}
_classifiers: dict[str, Callable[[str], ClauseCategories]] = {}


def record_page(store: StoreSettings, evidence: EvidenceStore, head: dict[str, Any],
                facts: CaptureFacts, body: bytes, content_type: str, *,
                policy: SuspectPolicy, threshold: float, taxonomy_version: str | None,
                taxonomy: Taxonomy | None = None, **extract_args: Any
                ) -> Recorded | Extraction | SameRegion | TaxonomyWanted:
    """`read_page`, and if the page's text differs from the last good text `head` names,
    record it too: on the aggregate loaded from `store` when the decision needs its clauses
    (a change), on one built from `head` otherwise (a suspect page). Nothing is saved here:
    the events come back encoded for the caller to save, and the store refuses them if
    another process appended first.

    The same text, or no good text yet (a baseline), is returned as `read_page` returns it,
    for the caller to record: it needs no clause list, and an aggregate crossing back with
    its whole clause list costs more than the extraction does.
    """
    from domain.document import Document, NeedsClausesError
    from domain.normalize import sha256_hex

    classify = None
    if taxonomy_version is not None:
        classify = _classifiers.get(taxonomy_version)
        if classify is None:
            if taxonomy is None:
                return TaxonomyWanted()
            from domain.classify import clause_classifier

            classify = _classifiers.setdefault(taxonomy_version, clause_classifier(taxonomy))
    extraction = read_page(evidence, body, facts.sha256, content_type, **extract_args)
    if isinstance(extraction, SameRegion) or head["text_sha256"] is None \
            or sha256_hex(extraction.text) == head["text_sha256"]:
        return extraction

    def decide(document: Document) -> CaptureResult:
        return document.record_capture(facts, extraction, policy=policy, threshold=threshold,
                                       classify=classify)

    app = _event_store(store)
    aggregate = Document.from_head(head)
    try:
        capture = decide(aggregate)
    except NeedsClausesError:
        loaded: Any = app.repository.get(aggregate.id)
        assert isinstance(loaded, Document)
        aggregate = loaded
        capture = decide(aggregate)
    # Encoded here: the whole clause list crosses as compressed bytes, not as objects the
    # caller would unpickle only to encode them.
    return Recorded(app.encode(aggregate), aggregate.head(), capture, extraction.region,
                    extraction.walk)


def _event_store(store: StoreSettings) -> ClauseWatchApp:
    from daemon.store import open_event_store

    key = (store.url, store.schema)
    app = _event_stores.get(key)
    if app is None:
        app = _event_stores[key] = open_event_store(store)
        # Closed when the worker exits (a pool's worker runs multiprocessing's finalizers).
        multiprocessing.util.Finalize(app, app.close, exitpriority=0)
    return app


# What the workers' fork server imports once, for every worker it forks.
_PRELOAD = ["domain.extract", "domain.clauses", "domain.document", "daemon.extraction",
            "daemon.store"]


def fork_server_context() -> multiprocessing.context.ForkServerContext:
    """multiprocessing's forkserver context, with what the workers' fork server imports:
    workers start from a small clean process, not a fork of a threaded one."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def start_fork_server() -> None:
    """Start the workers' fork server now, without waiting for it: for a process about to
    spend a while starting up (imports, opening the store) before its first page, so that
    the server's own imports (~0.2 s of CPU) run beside that instead of in the busiest part
    of the work. Its first worker is forked only when a page needs reading."""
    fork_server_context()
    multiprocessing.forkserver.ensure_running()


class ExtractionPool:
    """`extract` run in `processes` worker processes; call it like domain.extract.extract."""

    # Pools broken in a row (without one extraction done by a worker in between) before the
    # pool is given up: workers that die at start would otherwise be forked again and again.
    MAX_BREAKS = 3

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._lock = threading.Lock()
        self._breaks = 0
        self.given_up = False
        self._closed = False
        # Started at the first page to read: a run whose pages did not change starts no
        # process (not even multiprocessing's resource tracker, which the pool's queues need).
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.processes, mp_context=fork_server_context())

    def __call__(self, body: bytes, content_type: str = "text/html", **kwargs: Any
                 ) -> Extraction | SameRegion:
        return self.run(extract, body, content_type, **kwargs)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) in a worker (fn, its arguments and result must pickle)."""
        pool = self._pool or self._start()
        if pool is None:
            return fn(*args, **kwargs)
        try:
            result = pool.submit(fn, *args, **kwargs).result()
        except BrokenProcessPool:
            self._replace(pool)
            return fn(*args, **kwargs)
        self._breaks = 0
        return result

    def in_worker(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """fn(*args, **kwargs) in a worker; None when no worker ran it (the pool is given up
        or closed, or broke at this call): for work the caller would rather do its own way
        than in this thread."""
        pool = self._pool or self._start()
        if pool is None:
            return None
        try:
            result = pool.submit(fn, *args, **kwargs).result()
        except BrokenProcessPool:
            self._replace(pool)
            return None
        self._breaks = 0
        return result

    def _start(self) -> ProcessPoolExecutor | None:
        with self._lock:
            if self._pool is None and not (self.given_up or self._closed):
                self._pool = self._new_pool()
            return self._pool

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is not broken:
                return  # another thread replaced it already
            broken.shutdown(wait=False, cancel_futures=True)
            self._breaks += 1
            if self._breaks >= self.MAX_BREAKS:
                log.error("extraction workers died %d times in a row; pages are extracted "
                          "in the polling threads from now on (restart to try again)",
                          self._breaks)
                self._pool, self.given_up = None, True
                return
            log.warning("an extraction worker died; starting new ones")
            self._pool = self._new_pool()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers: those still busy after `timeout` seconds are terminated, so a
        page that hangs the parser cannot hang the daemon's stop."""
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is None:
            return
        # The executor keeps its worker processes in a private dict: read it, or stop gently.
        workers = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.warning("extraction worker %s still busy at stop: terminated", worker.pid)
                worker.terminate()
                worker.join(1.0)
