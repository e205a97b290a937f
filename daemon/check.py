"""One capture of each document, now: the `check` command and the daemon's worker step."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from config.settings import DocumentSettings, FetchSettings
from daemon.fetcher import Fetcher, FetchError
from daemon.service import CheckOutcome, ClauseWatch


async def poll(service: ClauseWatch, fetcher: Fetcher, doc: DocumentSettings) -> CheckOutcome:
    """Fetch one document and record what came back; a failure is recorded, never raised."""
    etag, last_modified = await asyncio.to_thread(service.validators, doc.id)
    try:
        result = await fetcher.fetch(doc.url, etag=etag, last_modified=last_modified,
                                     robots=doc.robots)
    except FetchError as exc:
        return await asyncio.to_thread(service.record_failure, doc, exc)
    return await asyncio.to_thread(service.record_fetch, doc, result)


def client_session(settings: FetchSettings) -> aiohttp.ClientSession:
    """The process's one HTTP client session."""
    timeout = aiohttp.ClientTimeout(total=settings.timeout, sock_connect=settings.connect_timeout)
    connector = aiohttp.TCPConnector(limit=settings.concurrency, ttl_dns_cache=300)
    return aiohttp.ClientSession(timeout=timeout, connector=connector,
                                 auto_decompress=True, trust_env=False)


async def check_all(service: ClauseWatch, settings: FetchSettings,
                    documents: Sequence[DocumentSettings]) -> list[CheckOutcome]:
    """Capture every document once, concurrently within the fetch limits."""
    await asyncio.to_thread(service.sync_documents, documents)
    async with client_session(settings) as session:
        fetcher = Fetcher(session, settings)
        return list(await asyncio.gather(*(poll(service, fetcher, d) for d in documents)))
