"""Polite, bounded HTTP fetching: the only place that catches aiohttp's errors."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import aiohttp
from yarl import URL  # aiohttp's own URL type

from config.settings import FetchSettings

if TYPE_CHECKING:
    # Imported when a robots.txt is first read: it brings urllib.request and http.client
    # (~20 ms of every `check` start, most of which never read one).
    import urllib.robotparser


class FetchError(Exception):
    """A fetch that produced no page; `kind` is a short, bounded label."""

    kind = "error"
    transient = False

    def __init__(self, url: str, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        self.url = url
        self.status = status
        self.retry_after = retry_after
        super().__init__(f"{url}: {message}")
        self.message = message


class TransientFetchError(FetchError):
    """Worth retrying: timeouts, resets, 429 and 5xx."""

    kind = "transient"
    transient = True


class PermanentFetchError(FetchError):
    """Not worth retrying within this poll: 404, 410, TLS, DNS, too large, redirect loops."""

    kind = "permanent"


class RobotsDisallowedError(PermanentFetchError):
    """robots.txt forbids fetching this URL for our User-Agent."""

    kind = "robots"


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchResult:
    """A page as served (or a 304), with what the server said about it."""

    requested_url: str
    final_url: str
    status: int
    fetched_at: datetime
    body: bytes = b""
    content_type: str = ""
    etag: str | None = None
    last_modified: str | None = None
    redirects: tuple[str, ...] = field(default_factory=tuple)
    attempts: int = 1
    duration: float = 0.0

    @property
    def not_modified(self) -> bool:
        """True for a 304 answer to a conditional GET."""
        return self.status == 304


_URLS_KEPT = 100_000


class Fetcher:
    """Fetches pages with global and per-host limits, robots.txt, redirects and retries."""

    def __init__(self, session: aiohttp.ClientSession, settings: FetchSettings, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 rng: random.Random | None = None,
                 on_retry: Callable[[str], None] | None = None) -> None:
        self.session = session
        self.settings = settings
        self.clock = clock
        self.rng = rng or random.Random()
        self.on_retry = on_retry
        self._global = asyncio.Semaphore(settings.concurrency)
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._last_request: dict[str, float] = {}
        self._host_locks: dict[str, asyncio.Lock] = {}
        self._robots: dict[str, tuple[float, urllib.robotparser.RobotFileParser | None]] = {}
        # Each address parsed once (yarl's parse was a tenth of the main process's time for a
        # 304) and split once for its host's slot: what a request needs of it.
        self._addresses: dict[str, tuple[URL | str, str]] = {}

    def _address(self, url: str) -> tuple[URL | str, str]:
        """The address as aiohttp takes it (as given if yarl cannot parse it: aiohttp then
        says what is wrong with it, as it always did) and its host, for the politeness."""
        known = self._addresses.get(url)
        if known is None:
            try:
                parsed: URL | str = URL(url)
            except (TypeError, ValueError):
                parsed = url
            if len(self._addresses) >= _URLS_KEPT:
                self._addresses.clear()
            known = self._addresses[url] = (parsed, urlsplit(url).netloc.lower())
        return known

    async def fetch(self, url: str, *, etag: str | None = None,
                    last_modified: str | None = None, robots: bool = True) -> FetchResult:
        """Fetch a page, retrying transient errors within the retry budget."""
        started = time.monotonic()
        if robots and self.settings.robots and not await self._allowed(url):
            raise RobotsDisallowedError(url, "robots.txt disallows this URL for our User-Agent")
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self._fetch_once(url, etag=etag, last_modified=last_modified)
                return _with(result, attempts=attempt, duration=time.monotonic() - started)
            except TransientFetchError as exc:
                elapsed = time.monotonic() - started
                delay = self._backoff(attempt, exc.retry_after)
                if attempt > self.settings.retries or \
                        elapsed + delay > self.settings.retry_budget:
                    raise
                if self.on_retry is not None:
                    self.on_retry("fetch")
                await asyncio.sleep(delay)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        base = self.settings.backoff * (2 ** (attempt - 1))
        delay = self.rng.uniform(0, base) if base > 0 else 0.0
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    async def _fetch_once(self, url: str, *, etag: str | None,
                          last_modified: str | None) -> FetchResult:
        headers = {"User-Agent": self.settings.user_agent,
                   "Accept": "text/html,application/xhtml+xml,text/plain,text/markdown,"
                             "application/pdf;q=0.9,*/*;q=0.5",
                   "Accept-Encoding": "gzip, deflate"}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        redirects: list[str] = []
        current = url
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout,
                                        sock_connect=self.settings.connect_timeout,
                                        sock_read=self.settings.timeout)
        while True:
            address, host = self._address(current)
            async with self._polite(host):
                try:
                    async with self.session.get(address, headers=headers,
                                                timeout=timeout,
                                                allow_redirects=False) as response:
                        if response.status in (301, 302, 303, 307, 308):
                            location = response.headers.get("Location")
                            if not location:
                                raise PermanentFetchError(current, f"HTTP {response.status} "
                                                          "without a Location header",
                                                          status=response.status)
                            target = urljoin(current, location)
                            redirects.append(target)
                            if len(redirects) > self.settings.max_redirects or \
                                    target in redirects[:-1] or target == url:
                                raise PermanentFetchError(
                                    url, f"too many redirects or a redirect loop "
                                         f"({len(redirects)} hops, last {target})",
                                    status=response.status)
                            current = target
                            continue
                        if response.status == 304:
                            return FetchResult(requested_url=url, final_url=current, status=304,
                                               fetched_at=self.clock(), etag=etag,
                                               last_modified=last_modified,
                                               redirects=tuple(redirects))
                        _raise_for_status(current, response)
                        body = await self._read_capped(current, response)
                        return FetchResult(
                            requested_url=url, final_url=current, status=response.status,
                            fetched_at=self.clock(), body=body,
                            content_type=response.headers.get("Content-Type", ""),
                            etag=response.headers.get("ETag"),
                            last_modified=response.headers.get("Last-Modified"),
                            redirects=tuple(redirects),
                        )
                except FetchError:
                    raise
                except TimeoutError:
                    raise TransientFetchError(current, "timed out") from None
                except aiohttp.ClientConnectorCertificateError as exc:
                    raise PermanentFetchError(current, f"TLS certificate error: {exc}") \
                        from None
                except aiohttp.ClientSSLError as exc:
                    raise PermanentFetchError(current, f"TLS error: {exc}") from None
                except aiohttp.ClientConnectorDNSError as exc:
                    raise PermanentFetchError(current, f"DNS lookup failed: {exc}") from None
                except aiohttp.ClientPayloadError as exc:
                    raise TransientFetchError(current, f"broken response body: {exc}") \
                        from None
                except aiohttp.InvalidURL as exc:
                    raise PermanentFetchError(current, f"invalid URL: {exc}") from None
                except (aiohttp.ClientError, ConnectionError, OSError) as exc:
                    raise TransientFetchError(current, f"connection failed: "
                                              f"{type(exc).__name__}: {exc}") from None

    async def _read_capped(self, url: str, response: aiohttp.ClientResponse) -> bytes:
        cap = self.settings.max_body
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise PermanentFetchError(url, f"body of {int(declared)} bytes exceeds the "
                                      f"{cap}-byte limit", status=response.status)
        chunks: list[bytes] = []
        size = 0
        # aiohttp decompresses as it reads: this caps the decompressed size (gzip bombs).
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            if size > cap:
                raise PermanentFetchError(url, f"body exceeds the {cap}-byte limit "
                                          "(after decompression)", status=response.status)
            chunks.append(chunk)
        return b"".join(chunks)

    def _polite(self, host: str) -> _Polite:
        if host not in self._hosts:
            self._hosts[host] = asyncio.Semaphore(self.settings.per_host_concurrency)
            self._host_locks[host] = asyncio.Lock()
        return _Polite(self, host)

    async def _allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        cached = self._robots.get(origin)
        now = time.monotonic()
        if cached is None or cached[0] < now:
            parser = await self._load_robots(origin)
            # A day for an answer; retry a failed download in ten minutes.
            self._robots[origin] = (now + (86400 if parser is not None else 600), parser)
            cached = self._robots[origin]
        parser = cached[1]
        return True if parser is None else parser.can_fetch(self.settings.user_agent, url)

    async def _load_robots(self, origin: str) -> urllib.robotparser.RobotFileParser | None:
        import urllib.robotparser

        parser = urllib.robotparser.RobotFileParser()
        try:
            result = await self._fetch_once(f"{origin}/robots.txt", etag=None, last_modified=None)
        except FetchError as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                parser.parse([])  # no robots.txt: everything is allowed
                return parser
            return None  # unreachable: allowed for now, asked again soon
        parser.parse(result.body.decode("utf-8", "replace").splitlines())
        return parser


class _Polite:
    """Holds the global and per-host slots and keeps the minimum delay between requests."""

    def __init__(self, fetcher: Fetcher, host: str) -> None:
        self.fetcher = fetcher
        self.host = host

    async def __aenter__(self) -> None:
        f = self.fetcher
        await f._global.acquire()
        try:
            await f._hosts[self.host].acquire()
        except BaseException:
            f._global.release()
            raise
        try:
            async with f._host_locks[self.host]:
                wait = f._last_request.get(self.host, -1e9) + f.settings.per_host_delay \
                    - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                f._last_request[self.host] = time.monotonic()
        except BaseException:
            f._hosts[self.host].release()
            f._global.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.fetcher._hosts[self.host].release()
        self.fetcher._global.release()


def _raise_for_status(url: str, response: aiohttp.ClientResponse) -> None:
    status = response.status
    if 200 <= status < 300:
        return
    if status == 429 or status >= 500 or status in (408, 425):
        raise TransientFetchError(url, f"HTTP {status}", status=status,
                                  retry_after=parse_retry_after(
                                      response.headers.get("Retry-After")))
    raise PermanentFetchError(url, f"HTTP {status}", status=status)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def _with(result: FetchResult, *, attempts: int, duration: float) -> FetchResult:
    return FetchResult(
        requested_url=result.requested_url, final_url=result.final_url, status=result.status,
        fetched_at=result.fetched_at, body=result.body, content_type=result.content_type,
        etag=result.etag, last_modified=result.last_modified, redirects=result.redirects,
        attempts=attempts, duration=duration,
    )
