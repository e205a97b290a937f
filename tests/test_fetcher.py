"""The fetcher against real aiohttp servers on 127.0.0.1: every failure mode the daemon meets."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections import Counter

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from config.settings import FetchSettings
from daemon.check import client_session
from daemon.fetcher import (
    Fetcher,
    PermanentFetchError,
    RobotsDisallowedError,
    TransientFetchError,
    parse_retry_after,
)

PAGE = b"<html><body><main><p>We collect your email address.</p></main></body></html>"


def settings(**overrides: object) -> FetchSettings:
    base = dict(timeout=2.0, connect_timeout=1.0, retries=3, retry_budget=10.0, backoff=0.0,
                per_host_delay=0.0, max_body=1024 * 1024, robots=True)
    base.update(overrides)
    return FetchSettings(**base)  # type: ignore[arg-type]


class Site:
    """A page server whose routes count their hits."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.hits: Counter[str] = Counter()
        self.headers: dict[str, list[dict[str, str]]] = {}
        self.server: TestServer | None = None

    def route(self, path: str, handler):  # type: ignore[no-untyped-def]
        async def counted(request: web.Request) -> web.StreamResponse:
            self.hits[path] += 1
            self.headers.setdefault(path, []).append(dict(request.headers))
            return await handler(request)

        self.app.router.add_get(path, counted)

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))


@pytest.fixture
async def site():
    s = Site()
    yield s
    if s.server is not None:
        await s.server.close()


async def start(site: Site) -> None:
    site.server = TestServer(site.app, host="127.0.0.1")
    await site.server.start_server()


async def page(_: web.Request) -> web.Response:
    return web.Response(body=PAGE, content_type="text/html")


async def test_conditional_get_gets_304_with_the_etag(site: Site) -> None:
    async def etagged(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304)
        return web.Response(body=PAGE, content_type="text/html", headers={"ETag": '"v1"'})

    site.route("/p", etagged)
    await start(site)
    async with client_session(settings()) as session:
        fetcher = Fetcher(session, settings(robots=False))
        first = await fetcher.fetch(site.url("/p"))
        second = await fetcher.fetch(site.url("/p"), etag=first.etag)
    assert first.status == 200 and first.etag == '"v1"' and first.body == PAGE
    assert second.not_modified and second.body == b""


async def test_500_then_200_is_retried_within_the_poll(site: Site) -> None:
    calls = {"n": 0}

    async def flaky(_: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return web.Response(status=500)
        return web.Response(body=PAGE, content_type="text/html")

    site.route("/p", flaky)
    await start(site)
    retries: list[str] = []
    async with client_session(settings()) as session:
        result = await Fetcher(session, settings(robots=False), on_retry=retries.append).fetch(
            site.url("/p"))
    assert result.status == 200 and result.attempts == 2 and retries == ["fetch"]


async def test_429_honours_retry_after(site: Site) -> None:
    calls = {"n": 0}

    async def limited(_: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(body=PAGE, content_type="text/html")

    site.route("/p", limited)
    await start(site)
    async with client_session(settings()) as session:
        started = time.monotonic()
        result = await Fetcher(session, settings(robots=False)).fetch(site.url("/p"))
        waited = time.monotonic() - started
    assert result.status == 200
    assert waited >= 0.95, "the retry came before Retry-After allowed it"


async def test_retry_after_beyond_the_budget_fails_at_once(site: Site) -> None:
    async def limited(_: web.Request) -> web.Response:
        return web.Response(status=503, headers={"Retry-After": "3600"})

    site.route("/p", limited)
    await start(site)
    async with client_session(settings()) as session:
        with pytest.raises(TransientFetchError) as caught:
            await Fetcher(session, settings(robots=False)).fetch(site.url("/p"))
    assert caught.value.status == 503 and caught.value.retry_after == 3600
    assert site.hits["/p"] == 1


async def test_permanent_errors_are_not_retried(site: Site) -> None:
    async def gone(_: web.Request) -> web.Response:
        return web.Response(status=410)

    site.route("/gone", gone)
    await start(site)
    async with client_session(settings()) as session:
        with pytest.raises(PermanentFetchError, match="HTTP 410"):
            await Fetcher(session, settings(robots=False)).fetch(site.url("/gone"))
    assert site.hits["/gone"] == 1


async def test_a_hanging_server_times_out_without_stalling_others(site: Site) -> None:
    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(body=PAGE)

    site.route("/hang", hang)
    site.route("/ok", page)
    await start(site)
    quick = settings(timeout=1.0, retries=0)
    async with client_session(quick) as session:
        fetcher = Fetcher(session, quick)
        started = time.monotonic()
        hanging = asyncio.create_task(fetcher.fetch(site.url("/hang"), robots=False))
        ok = await fetcher.fetch(site.url("/ok"), robots=False)
        ok_after = time.monotonic() - started
        with pytest.raises(TransientFetchError, match="timed out"):
            await hanging
    assert ok.status == 200
    assert ok_after < 0.9, "a healthy page waited for the hanging one"


async def test_connection_reset_is_transient(site: Site) -> None:
    async def reset(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(0.1)
        return web.Response()

    site.route("/reset", reset)
    await start(site)
    async with client_session(settings()) as session:
        with pytest.raises(TransientFetchError, match="connection failed|broken"):
            await Fetcher(session, settings(robots=False, retries=1)).fetch(site.url("/reset"))
    # Our first try and one retry; aiohttp itself may repeat a GET once on a dropped connection.
    assert 2 <= site.hits["/reset"] <= 4


async def test_nothing_listening_is_transient() -> None:
    async with client_session(settings()) as session:
        with pytest.raises(TransientFetchError, match="connection failed"):
            await Fetcher(session, settings(robots=False, retries=0)).fetch(
                "http://127.0.0.1:9/nothing")


async def test_redirects_are_followed_and_recorded(site: Site) -> None:
    async def hop(_: web.Request) -> web.Response:
        raise web.HTTPFound("/final")

    site.route("/start", hop)
    site.route("/final", page)
    await start(site)
    async with client_session(settings()) as session:
        result = await Fetcher(session, settings(robots=False)).fetch(site.url("/start"))
    assert result.final_url.endswith("/final")
    assert [r.rsplit("/", 1)[1] for r in result.redirects] == ["final"]


async def test_a_redirect_loop_is_a_permanent_error(site: Site) -> None:
    async def a(_: web.Request) -> web.Response:
        raise web.HTTPFound("/b")

    async def b(_: web.Request) -> web.Response:
        raise web.HTTPFound("/a")

    site.route("/a", a)
    site.route("/b", b)
    await start(site)
    async with client_session(settings()) as session:
        with pytest.raises(PermanentFetchError, match="redirect"):
            await Fetcher(session, settings(robots=False)).fetch(site.url("/a"))
    assert site.hits["/a"] + site.hits["/b"] <= 6


async def test_a_50_mb_body_is_refused(site: Site) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/html"})
        response.enable_chunked_encoding()  # no Content-Length to refuse it early
        await response.prepare(request)
        chunk = b"x" * (1024 * 1024)
        try:
            for _ in range(50):
                await response.write(chunk)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        return response

    async def declared(_: web.Request) -> web.Response:
        return web.Response(body=b"y" * (50 * 1024 * 1024), content_type="text/html")

    site.route("/huge", huge)
    site.route("/declared", declared)
    await start(site)
    async with client_session(settings()) as session:
        fetcher = Fetcher(session, settings(robots=False))
        with pytest.raises(PermanentFetchError, match="limit"):
            await fetcher.fetch(site.url("/huge"))
        with pytest.raises(PermanentFetchError, match="exceeds"):
            await fetcher.fetch(site.url("/declared"))


async def test_a_gzip_bomb_is_refused_after_decompression(site: Site) -> None:
    bomb = gzip.compress(b"<p>" + b"a" * (64 * 1024 * 1024) + b"</p>", compresslevel=9)
    assert len(bomb) < 1024 * 1024  # small on the wire

    async def serve(_: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Type": "text/html",
                                                "Content-Encoding": "gzip"})

    site.route("/bomb", serve)
    await start(site)
    async with client_session(settings()) as session:
        with pytest.raises(PermanentFetchError, match="after decompression"):
            await Fetcher(session, settings(robots=False)).fetch(site.url("/bomb"))


async def test_robots_txt_is_honoured_unless_the_document_opts_out(site: Site) -> None:
    async def robots(_: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nDisallow: /private\n")

    site.route("/robots.txt", robots)
    site.route("/private/policy", page)
    site.route("/public/policy", page)
    await start(site)
    async with client_session(settings()) as session:
        fetcher = Fetcher(session, settings())
        assert (await fetcher.fetch(site.url("/public/policy"))).status == 200
        with pytest.raises(RobotsDisallowedError):
            await fetcher.fetch(site.url("/private/policy"))
        assert (await fetcher.fetch(site.url("/private/policy"), robots=False)).status == 200
    assert site.hits["/robots.txt"] == 1, "robots.txt is cached per origin"
    assert site.hits["/private/policy"] == 1


async def test_user_agent_is_sent_and_the_host_delay_kept(site: Site) -> None:
    site.route("/p", page)
    await start(site)
    polite = settings(robots=False, per_host_delay=0.3, user_agent="clausewatch-test/1")
    async with client_session(polite) as session:
        fetcher = Fetcher(session, polite)
        started = time.monotonic()
        await asyncio.gather(*(fetcher.fetch(site.url("/p")) for _ in range(3)))
        elapsed = time.monotonic() - started
    assert {h["User-Agent"] for h in site.headers["/p"]} == {"clausewatch-test/1"}
    assert elapsed >= 0.55, "three requests to one host came faster than the minimum delay"


def test_retry_after_parses_seconds_and_dates() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Thu, 01 Jan 2026 12:01:00 GMT", now=now) == 60
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
