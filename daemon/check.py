"""One capture of one document: fetch, record, count. Used by `check` and by the workers."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Self, TypeVar

import aiohttp
from eventsourcing.persistence import IntegrityError

from config.settings import DocumentSettings, FetchSettings
from daemon.fetcher import Fetcher, FetchError, FetchResult
from daemon.service import CheckOutcome, ClauseWatch
from domain.errors import DomainError

if TYPE_CHECKING:
    from daemon.metrics import Metrics  # prometheus_client: only where metrics are kept
    from daemon.views_process import ViewsProcess

log = logging.getLogger("clausewatch.poll")
T = TypeVar("T")
# Captures whose event carries the clause list.
_WITH_CLAUSES = frozenset({"baseline", "changed"})


async def poll(service: ClauseWatch, fetcher: Fetcher, doc: DocumentSettings,
               metrics: Metrics | None = None, *,
               executor: Executor | None = None,
               handed_in: Callable[[], None] | None = None) -> CheckOutcome:
    """Fetch one document and record what came back; a failure is recorded, never raised.

    The store is called in a thread of `executor` (default: the loop's default executor),
    except for a 304 the document's head in memory is enough for: decided here, saved by
    the group commit's own thread (see _record_fetch). `handed_in`, if given, is called
    when such a 304 has been handed in, before its save is awaited: from then on the poll
    holds no page and no thread, only a place in the group commit's next batch.
    """
    def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
        return _in_thread(executor, fn, *args, **kwargs)

    # From the document's head in memory when it is there: no thread needed for a lookup.
    validators = service.known_validators(doc.id)
    if validators is None:
        validators = await in_thread(service.validators, doc.id)
    etag, last_modified = validators
    try:
        result = await fetcher.fetch(doc.url, etag=etag, last_modified=last_modified,
                                     robots=doc.robots)
    except FetchError as exc:
        if metrics is not None:
            metrics.fetches.labels(result=exc.kind).inc()
            if exc.status is not None:
                metrics.http_responses.labels(code_class=f"{exc.status // 100}xx").inc()
        outcome = await in_thread(service.record_failure, doc, kind=exc.kind,
                                  message=exc.message, url=exc.url, status=exc.status)
    else:
        if metrics is not None:
            _count_fetch(metrics, result)
        try:
            outcome = await _record_fetch(service, doc, result, in_thread, handed_in)
        except DomainError as exc:
            # A page we cannot read (unsupported type, unusable selector): a failed capture.
            outcome = await in_thread(service.record_failure, doc, kind="unreadable",
                                      message=str(exc), url=result.final_url,
                                      status=result.status)
    if metrics is not None:
        metrics.captures.labels(outcome=_outcome_label(outcome.outcome)).inc()
        for kind in outcome.kinds:
            metrics.clause_changes.labels(kind=kind).inc()
        if outcome.append_seconds is not None:
            metrics.append_duration.observe(outcome.append_seconds)
    log.info(outcome.describe(), extra={"document": doc.id, "outcome": outcome.outcome})
    return outcome


async def _record_fetch(service: ClauseWatch, doc: DocumentSettings, result: FetchResult,
                        in_thread: Callable[..., Awaitable[CheckOutcome]],
                        handed_in: Callable[[], None] | None = None) -> CheckOutcome:
    """service.record_fetch, in a thread; but a 304 that the document's head in memory is
    enough for is recorded from here, its save handed to the group commit: most polls of a
    pass are 304s, and a thread hop each cost more than deciding one (~0.1 ms of the GIL)."""
    handed = service.hand_in_not_modified(doc, result)
    if handed is None:
        return await in_thread(service.record_fetch, doc, result)
    if handed_in is not None:
        handed_in()
    try:
        await asyncio.wrap_future(handed.saved)
    except IntegrityError:
        # The head was stale (another replica appended): from the whole aggregate instead.
        return await in_thread(service.record_fetch, doc, result)
    return handed.outcome()


class _Place:
    """A place among a pass's polls in flight, given back once: when the poll ends, or
    earlier (`give_back`) when it holds no page any more."""

    def __init__(self, places: asyncio.Semaphore) -> None:
        self._places = places
        self._held = False

    async def __aenter__(self) -> Self:
        await self._places.acquire()
        self._held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.give_back()

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._places.release()


def _in_thread(executor: Executor | None, fn: Callable[..., T], *args: Any,
               **kwargs: Any) -> Awaitable[T]:
    """asyncio.to_thread, in `executor` (None: the loop's default one)."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, fn, *args, **kwargs)
    loop = asyncio.get_running_loop()
    if executor is None:
        return loop.run_in_executor(None, call)
    # What run_in_executor does, but for its check that `call` is no coroutine function
    # (inspect on a partial: ~10 us, a tenth of a 304's time on the event loop).
    return asyncio.wrap_future(executor.submit(call), loop=loop)


def _count_fetch(metrics: Metrics, result: FetchResult) -> None:
    metrics.fetches.labels(result="not_modified" if result.not_modified else "ok").inc()
    metrics.fetch_duration.observe(result.duration)
    metrics.response_size.observe(len(result.body))
    metrics.http_responses.labels(code_class=f"{result.status // 100}xx").inc()


def _outcome_label(outcome: str) -> str:
    # The metric keeps four bounded values: a baseline is a change from nothing.
    return {"baseline": "changed"}.get(outcome, outcome)


def client_session(settings: FetchSettings) -> aiohttp.ClientSession:
    """The process's one HTTP client session."""
    timeout = aiohttp.ClientTimeout(total=settings.timeout, sock_connect=settings.connect_timeout)
    connector = aiohttp.TCPConnector(limit=settings.concurrency, ttl_dns_cache=300)
    return aiohttp.ClientSession(timeout=timeout, connector=connector,
                                 auto_decompress=True, trust_env=False)


async def check_all(service: ClauseWatch, settings: FetchSettings,
                    documents: Sequence[DocumentSettings], *,
                    views: ViewsProcess | None = None) -> list[CheckOutcome]:
    """Capture every document once, concurrently within the fetch limits.

    With `views`, the views are projected by that process while the pass records, from the
    first capture that brought a clause list (the costly kind to project: for a pass of 304s
    or of new markup around the same text, spawning a process costs more than the catch-up
    it would take over), or from the first capture of any kind when the process is forked
    from the workers' fork server (a fork of what that server imported already: a pass of
    1,000 304s then no longer ends with ~0.1 s of catching up here); otherwise by this one
    after the last poll.
    """
    await asyncio.to_thread(service.sync_documents, documents)
    # Fetching outpaces extraction: without a bound on polls in flight, every fetched page
    # would wait in memory for a thread (10,000 pages of 300 kB is 3 GB). A 304 handed to
    # the group commit holds no page: its place goes to the next poll while its save is
    # awaited. (Held until saved, the places limited a pass of 304s to the group commit's
    # pace, ~9 captures a transaction; given back, batches of dozens: a pass of 1,000 304s
    # took ~17 % less time.)
    in_flight = asyncio.Semaphore(max(1, settings.concurrency))

    async def bounded(doc: DocumentSettings) -> CheckOutcome:
        async with _Place(in_flight) as place:
            outcome = await poll(service, fetcher, doc, executor=pool,
                                 handed_in=place.give_back)
        if views is not None and not views.started and (
                views.fork_server or outcome.outcome in _WITH_CLAUSES):
            views.start()
        return outcome

    # One catch-up of the views at the end, not one per capture.
    per_capture, service.catch_up_after_save = service.catch_up_after_save, False
    # A thread per poll in flight: much of a poll's time in its thread is waiting (the fsync
    # of its evidence, a group commit), not holding the GIL.
    pool = ThreadPoolExecutor(max_workers=max(1, settings.concurrency), thread_name_prefix="poll")
    try:
        async with client_session(settings) as session:
            fetcher = Fetcher(session, settings)
            outcomes = list(await asyncio.gather(*(bounded(d) for d in documents)))
    finally:
        pool.shutdown(wait=False)
        service.catch_up_after_save = per_capture
        await asyncio.to_thread(service.flush_heads)
        if views is not None:
            await asyncio.to_thread(views.finish)
        # Whatever the views process did not project (none of it if it failed), and a
        # check that everything was: one read of an empty tail when it did.
        await asyncio.to_thread(service.views.catch_up)
    return outcomes
