"""Real parts for the notification tests: settings, a capturing store, a scripted webhook receiver.

The receiver is a real aiohttp server on 127.0.0.1 that verifies every Standard Webhooks
signature and records what arrived; the store is a real SQLite file or PostgreSQL schema with
captures recorded through the application service.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from config.settings import (
    ChannelSettings,
    DocumentSettings,
    HttpSettings,
    NotifySettings,
    Settings,
    StoreSettings,
    SubscriptionSettings,
)
from config.taxonomy import load_taxonomy
from daemon.fetcher import FetchResult
from daemon.service import ClauseWatch
from daemon.store import Store, open_store

SECRET = "whsec_" + base64.b64encode(b"clausewatch-notify-test-key-0032").decode()
SECRET_ENV = "CW_TEST_HOOK_SECRET"
ENVIRON = {SECRET_ENV: SECRET}
T0 = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)  # a Monday

DOCUMENTS = (
    DocumentSettings(id="acme/privacy", platform="Acme", title="Privacy Policy",
                     url="https://acme.test/privacy"),
    DocumentSettings(id="acme/terms", platform="Acme", title="Terms of Service",
                     url="https://acme.test/terms"),
    DocumentSettings(id="globex/privacy", platform="Globex", title="Privacy Notice",
                     url="https://globex.test/privacy"),
)


def webhook(channel_id: str, url: str, *, timeout: float = 2.0) -> ChannelSettings:
    """A webhook channel signed with the test secret."""
    return ChannelSettings(id=channel_id, type="webhook", url=url, secret_env=SECRET_ENV,
                           timeout=timeout)


def settings(tmp: Path, store: StoreSettings, *, channels: Sequence[ChannelSettings] = (),
             subscriptions: Sequence[SubscriptionSettings] = (),
             notify: NotifySettings | None = None, public_url: str | None = None) -> Settings:
    """Settings built directly, as the config loader would."""
    return Settings(path=tmp / "clausewatch.toml", data_dir=tmp, store=store,
                    documents=DOCUMENTS, channels=tuple(channels),
                    subscriptions=tuple(subscriptions), notify=notify or NotifySettings(),
                    http=HttpSettings(public_url=public_url))


def sqlite_store(tmp: Path) -> StoreSettings:
    """A SQLite event store in the test's folder."""
    return StoreSettings(url=f"sqlite:///{tmp / 'events.db'}")


def _clause(doc: str, n: int) -> str:
    return (f"Section {n} of {doc}. We collect information of kind {n} when you use the "
            f"service and keep it for {n + 1} months before deleting it.")


class Capturer:
    """Records real captures through the application service, each one changing clauses."""

    def __init__(self, store: Store) -> None:
        # The packaged taxonomy: categories travel in the events to the alerts.
        self.service = ClauseWatch(store, taxonomy=load_taxonomy())
        self.service.sync_documents(DOCUMENTS)
        self.texts: dict[str, list[str]] = {d.id: [_clause(d.id, n) for n in range(8)]
                                            for d in DOCUMENTS}
        self.count = 0

    def baseline(self, at: datetime = T0) -> None:
        """The first capture of every document (no alerts: nothing changed yet)."""
        for doc in DOCUMENTS:
            self._record(doc, at)

    def change(self, document_id: str, at: datetime, *, kind: str = "modified",
               text: str | None = None) -> int:
        """Change one clause of a document and record the capture; returns how many changed."""
        self.count += 1
        clauses = self.texts[document_id]
        if kind == "modified":
            index = self.count % len(clauses)
            clauses[index] = text or clauses[index].replace(
                "before deleting it", f"before deleting it (revision {self.count})")
        elif kind == "added":
            clauses.append(text or f"New clause {self.count}: we may share data with partners.")
        elif kind == "removed":
            clauses.pop(0)
        doc = next(d for d in DOCUMENTS if d.id == document_id)
        return self._record(doc, at)

    def _record(self, doc: DocumentSettings, at: datetime) -> int:
        body = "\n\n".join(self.texts[doc.id]).encode()
        outcome = self.service.record_fetch(doc, FetchResult(
            requested_url=doc.url, final_url=doc.url, status=200, fetched_at=at, body=body,
            content_type="text/plain"))
        return outcome.changes


@contextmanager
def opened(store_settings: StoreSettings, tmp: Path) -> Iterator[Store]:
    """An open store, closed afterwards."""
    store = open_store(store_settings, tmp)
    try:
        yield store
    finally:
        store.close()


# The receiver ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """One scripted answer: a status, headers, and a delay before answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


HANG = Reply(delay=3600.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Hit:
    """One request as received: verified payload, raw body, webhook-id, time, our answer."""

    path: str
    webhook_id: str
    body: bytes
    payload: dict[str, Any]
    at: float
    status: int


class HookReceiver:
    """A webhook receiver on 127.0.0.1:0, answering per path from a script (default 200).

    Runs in a thread with its own event loop, so it serves while a test blocks or while
    another process posts to it.
    """

    def __init__(self, secret: str = SECRET) -> None:
        self.verifier = Webhook(secret)
        self.scripts: dict[str, list[Reply]] = {}
        self.default: dict[str, Reply] = {}
        self.hits: list[Hit] = []
        self.invalid: list[str] = []
        self.url = ""
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def script(self, path: str, *replies: Reply, then: Reply | None = None) -> str:
        """Answer the next requests on `path` with `replies`, then with `then` (200)."""
        with self._lock:
            self.scripts[path] = list(replies)
            if then is not None:
                self.default[path] = then
        return f"{self.url}{path}"

    def endpoint(self, path: str) -> str:
        """The URL of a path."""
        return f"{self.url}{path}"

    def delivered(self, path: str | None = None) -> list[Hit]:
        """Requests answered 2xx (on one path, or all)."""
        with self._lock:
            return [h for h in self.hits if 200 <= h.status < 300
                    and (path is None or h.path == path)]

    def on(self, path: str) -> list[Hit]:
        """Every request received on a path."""
        with self._lock:
            return [h for h in self.hits if h.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        try:
            payload = self.verifier.verify(body, headers)
        except WebhookVerificationError as exc:
            with self._lock:
                self.invalid.append(f"{request.path}: {exc}")
            return web.Response(status=400, text="bad signature")
        with self._lock:
            queue = self.scripts.get(request.path, [])
            reply = queue.pop(0) if queue else self.default.get(request.path, Reply())
        if reply.delay:
            # Record the request first: the sender saw it leave even if it times out here.
            with self._lock:
                self.hits.append(Hit(path=request.path, webhook_id=headers["webhook-id"],
                                     body=body, payload=payload, at=time.time(), status=0))
            await asyncio.sleep(reply.delay)
            return web.Response(status=reply.status, headers=reply.headers)
        with self._lock:
            self.hits.append(Hit(path=request.path, webhook_id=headers["webhook-id"],
                                 body=body, payload=payload, at=time.time(),
                                 status=reply.status))
        return web.Response(status=reply.status, headers=reply.headers, text="ok")

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        # Requests still hanging are cut off, as a receiver going away would.
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll `predicate` until true; fail with its last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        await asyncio.sleep(interval)


def sync_wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> None:
    """The blocking wait_for, for tests that drive other processes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


def payload_changes(hit: Hit) -> list[dict[str, Any]]:
    """The clause changes of a received webhook payload, over all its documents."""
    return [c for d in hit.payload["documents"] for c in d["changes"]]


def body_json(hit: Hit) -> dict[str, Any]:
    """A received body as JSON."""
    return json.loads(hit.body)


def later(minutes: float) -> datetime:
    """T0 plus some minutes."""
    return T0 + timedelta(minutes=minutes)
