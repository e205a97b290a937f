"""Notifications for the runtime: outbox consumer, delivery worker, digests, test sends, API.

    async with Notifications(store, settings, metrics, environ) as notifications:
        await notifications.run(stop_event)     # consume + deliver + digest until stopped

The one aiohttp ClientSession of the channels is passed in or created and closed here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import aiohttp
from aiohttp import web

from config.errors import ConfigError
from config.settings import ChannelSettings, Settings, SubscriptionSettings
from daemon.delivery import DEAD, DELIVERED, PENDING, STATUSES, DeliveryWorker
from daemon.digest import Digests
from daemon.metrics import Metrics
from daemon.outbox import Outbox, epoch, from_epoch
from daemon.store import Store
from notifiers.base import Channel
from notifiers.email import EmailChannel, TlsMode
from notifiers.errors import DeliveryError
from notifiers.notice import ClauseNotice, DocumentNotice, Notice
from notifiers.retry import RetryPolicy
from notifiers.slack import SlackChannel
from notifiers.webhook import WebhookChannel

log = logging.getLogger("clausewatch.notifications")

POLL = 0.2
GAUGE_INTERVAL = 2.0
DIGEST_INTERVAL = 1.0
_SMTP_PORTS = {"none": 25, "starttls": 587, "implicit": 465}


class UnknownDeliveryError(KeyError):
    """No delivery with this id."""

    def __init__(self, delivery_id: str) -> None:
        super().__init__(delivery_id)
        self.delivery_id = delivery_id

    def __str__(self) -> str:
        return f"no delivery with id {self.delivery_id!r}; list them at /api/v1/deliveries"


class UnknownSubscriptionError(KeyError):
    """No subscription with this id is configured."""

    def __init__(self, subscription_id: str, known: list[str]) -> None:
        super().__init__(subscription_id)
        self.subscription_id = subscription_id
        self.known = known

    def __str__(self) -> str:
        return (f"no subscription with id {self.subscription_id!r}; configured: "
                f"{', '.join(self.known) or 'none'}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TestResult:
    """What one channel did with a test notice."""

    channel: str
    ok: bool
    error: str | None = None


# Channels ---------------------------------------------------------------------------------


def build_channel(settings: Settings, channel: ChannelSettings, environ: Mapping[str, str],
                  session: aiohttp.ClientSession) -> Channel:
    """The channel object of one [[channels]] entry, with its secret from the environment."""
    key = f"channels ({channel.id})"

    def secret(name: str | None, what: str) -> str | None:
        if name is None:
            return None
        value = environ.get(name)
        if not value:
            raise ConfigError(str(settings.path), f"{key}.{what}",
                              f"the environment variable {name} is not set",
                              f"export {name}=… before starting clausewatch")
        return value

    try:
        if channel.type == "webhook":
            assert channel.url is not None
            return WebhookChannel(id=channel.id, url=channel.url,
                                  secret=secret(channel.secret_env, "secret_env") or "",
                                  session=session, timeout=channel.timeout)
        if channel.type == "slack":
            url = secret(channel.url_env, "url_env") or channel.url or ""
            return SlackChannel(id=channel.id, webhook_url=url, session=session,
                                timeout=channel.timeout)
        assert channel.host is not None and channel.sender is not None
        password = secret(channel.password_env, "password_env")
        tls: TlsMode = channel.tls  # type: ignore[assignment]  # validated by the config
        return EmailChannel(id=channel.id, host=channel.host,
                            port=channel.port or _SMTP_PORTS[channel.tls], sender=channel.sender,
                            recipients=channel.recipients, tls=tls,
                            username=channel.username if password is not None else None,
                            password=password, timeout=channel.timeout)
    except ValueError as exc:
        raise ConfigError(str(settings.path), key, str(exc), "fix the channel's settings") \
            from None


def fingerprint(channel: ChannelSettings, environ: Mapping[str, str]) -> str:
    """A hash of where a channel sends: a disabled channel whose address changes is retried."""
    where = [channel.type, channel.url or "", environ.get(channel.url_env or "", ""),
             channel.host or "", str(channel.port or ""), ",".join(channel.recipients)]
    return hashlib.sha256("\x00".join(where).encode()).hexdigest()[:16]


def sample_notice(subscription_id: str, now: datetime) -> Notice:
    """A test notice with one made-up change, so every part of a message shows."""
    doc = DocumentNotice(
        document_id="clausewatch-test", platform="clausewatch", title="Test document",
        url="https://example.com/clausewatch-test", captured_at=now, sha256="0" * 64,
        changes=(ClauseNotice(
            clause_id="cl-test", kind="modified", section=("Test section",),
            before="We keep your data for 30 days.",
            after="We keep your data for 90 days."),))
    return Notice(id=f"test_{uuid.uuid4().hex}", subscription_id=subscription_id, kind="test",
                  created_at=now, documents=(doc,))


async def send_test_notices(settings: Settings, subscription_id: str,
                            environ: Mapping[str, str],
                            session: aiohttp.ClientSession | None = None) -> list[TestResult]:
    """Send a sample notice through each channel of a subscription, all at once."""
    subscription = _subscription(settings, subscription_id)
    if session is None:
        async with aiohttp.ClientSession(trust_env=False) as own:
            return await send_test_notices(settings, subscription_id, environ, own)
    by_id = {c.id: c for c in settings.channels}
    notice = sample_notice(subscription.id, datetime.now(UTC))

    async def one(channel_id: str) -> TestResult:
        try:
            channel = build_channel(settings, by_id[channel_id], environ, session)
            async with asyncio.timeout(by_id[channel_id].timeout + 5):
                await channel.send(notice)
        except (DeliveryError, ConfigError) as exc:
            return TestResult(channel=channel_id, ok=False, error=str(exc))
        except TimeoutError:
            return TestResult(channel=channel_id, ok=False, error="no answer in time")
        except Exception as exc:  # noqa: BLE001  # a test reports every failure, per channel
            return TestResult(channel=channel_id, ok=False,
                              error=f"unexpected {type(exc).__name__}: {exc}")
        return TestResult(channel=channel_id, ok=True)

    return list(await asyncio.gather(*(one(c) for c in subscription.channels)))


def _subscription(settings: Settings, subscription_id: str) -> SubscriptionSettings:
    for sub in settings.subscriptions:
        if sub.id == subscription_id:
            return sub
    raise UnknownSubscriptionError(subscription_id, [s.id for s in settings.subscriptions])


# The facade -------------------------------------------------------------------------------


class Notifications:
    """The notification side of one process; an async context manager around its session."""

    def __init__(self, store: Store, settings: Settings, metrics: Metrics,
                 environ: Mapping[str, str] | None = None, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 session: aiohttp.ClientSession | None = None,
                 policy: RetryPolicy | None = None, owner: str | None = None,
                 lease: float | None = None, poll: float = POLL, history: bool = False,
                 concurrency: int = 32, per_channel: int = 4, drain: float = 10.0) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.environ = dict(os.environ if environ is None else environ)
        self.clock = clock
        self.poll = poll
        self.drain = drain
        self._session = session
        self._own_session = session is None
        self.outbox = Outbox(store.db, read=store.read_notifications, decode=store.decode,
                             max_notification_id=store.max_notification_id,
                             subscriptions=settings.subscriptions, clock=clock,
                             aggregate=store.app.repository.get,
                             public_url=settings.http.public_url, history=history)
        self.digests = Digests(store.db, subscriptions=settings.subscriptions, clock=clock)
        self.policy = policy or RetryPolicy(
            base=settings.notify.retry_base, max_delay=settings.notify.retry_max,
            give_up_after=timedelta(seconds=settings.notify.give_up_after),
            jitter=random.Random())
        timeouts = [c.timeout for c in settings.channels] or [10.0]
        self.worker = DeliveryWorker(
            store.db, channels={}, fingerprints={}, timeouts={}, policy=self.policy,
            metrics=metrics, owner=owner or f"{os.uname().nodename}-{os.getpid()}",
            lease=lease if lease is not None else 2 * max(timeouts) + 30, clock=clock,
            concurrency=concurrency, per_channel=per_channel)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Self:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=60, sock_connect=10), trust_env=False)
        self._configure_channels()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _configure_channels(self) -> None:
        assert self._session is not None
        settings = self.settings
        self.worker.configure(
            channels={c.id: build_channel(settings, c, self.environ, self._session)
                      for c in settings.channels},
            fingerprints={c.id: fingerprint(c, self.environ) for c in settings.channels},
            timeouts={c.id: c.timeout for c in settings.channels})

    def reconfigure(self, settings: Settings) -> None:
        """Use a reloaded config: new subscriptions, channels and public URL from now on."""
        self.settings = settings
        self.outbox.subscriptions = settings.subscriptions
        self.outbox.public_url = settings.http.public_url.rstrip("/") \
            if settings.http.public_url else None
        self.outbox.forget_documents()
        self.digests.subscriptions = settings.subscriptions
        if self._session is not None:
            self._configure_channels()

    # The loops ---------------------------------------------------------------------------

    def consume(self) -> int:
        """Record the deliveries of every new event (sync); returns how many events were read."""
        return self.outbox.consume()

    def nudge(self) -> None:
        """Wake the loops now (after a capture); safe from any thread."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume the log, deliver and build digests until `stop` is set."""
        if self._session is None:
            raise RuntimeError("use `async with Notifications(...)` before run()")
        self._loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        deliver_wake = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.worker.run(stop, deliver_wake, poll=self.poll,
                                                  drain=self.drain),
                                  name="notify-deliver")
                group.create_task(self._consume_loop(stop, wake, deliver_wake),
                                  name="notify-outbox")
                group.create_task(self._digest_loop(stop, deliver_wake), name="notify-digest")
                group.create_task(self._gauge_loop(stop), name="notify-gauges")
        finally:
            self._loop = self._wake = None

    async def _consume_loop(self, stop: asyncio.Event, wake: asyncio.Event,
                            deliver_wake: asyncio.Event) -> None:
        while not stop.is_set():
            wake.clear()
            if await asyncio.to_thread(self.outbox.consume):
                deliver_wake.set()
            await _wait_any(wake, stop, self.poll)

    async def _digest_loop(self, stop: asyncio.Event, deliver_wake: asyncio.Event) -> None:
        while not stop.is_set():
            if await asyncio.to_thread(self.digests.tick):
                deliver_wake.set()
            await _wait_any(stop, stop, DIGEST_INTERVAL)

    async def _gauge_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.refresh_gauges)
            await _wait_any(stop, stop, GAUGE_INTERVAL)

    def refresh_gauges(self) -> None:
        """Outbox depth, age of the oldest undelivered item and dead letters, from the table."""
        db = self.store.db
        row = db.query("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM cw_deliveries "
                       "WHERE status = 'pending'")[0]
        self.metrics.outbox_depth.set(row["n"] or 0)
        oldest = row["oldest"]
        self.metrics.outbox_oldest_age.set(
            max(0.0, epoch(self.clock()) - float(oldest)) if oldest is not None else 0.0)
        self.metrics.dead_letters.set(
            db.scalar("SELECT COUNT(*) FROM cw_deliveries WHERE status = 'dead'") or 0)

    # Operations --------------------------------------------------------------------------

    def deliveries(self, limit: int = 100, status: str | None = None) -> list[dict[str, Any]]:
        """Recent deliveries, newest first; `status` is pending, delivered or dead."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        sql = "SELECT * FROM cw_deliveries"
        params: list[Any] = []
        if status:
            sql += " WHERE status = ?"
            params.append(status)
        sql += f" ORDER BY created_at DESC, id LIMIT {int(limit)}"
        return [_delivery_row(r) for r in self.store.db.query(sql, params)]

    def delivery(self, delivery_id: str) -> dict[str, Any]:
        """One delivery."""
        rows = self.store.db.query("SELECT * FROM cw_deliveries WHERE id = ?", (delivery_id,))
        if not rows:
            raise UnknownDeliveryError(delivery_id)
        return _delivery_row(rows[0])

    def retry(self, delivery_id: str) -> dict[str, Any]:
        """Send a dead or pending delivery again now, with a fresh retry budget.

        Retrying a delivery to a channel that a 410 disabled re-enables the channel.
        """
        now = epoch(self.clock())
        with self.store.db.transaction() as tx:
            rows = tx.query("SELECT status, channel FROM cw_deliveries WHERE id = ?",
                            (delivery_id,))
            if not rows:
                raise UnknownDeliveryError(delivery_id)
            if rows[0]["status"] == DELIVERED:
                raise ValueError(f"delivery {delivery_id} was already delivered")
            tx.execute("""UPDATE cw_deliveries SET status = 'pending', next_attempt_at = ?,
                          budget_start = ?, lease_owner = NULL, lease_until = NULL
                          WHERE id = ?""", (now, now, delivery_id))
            tx.execute("DELETE FROM cw_channel_state WHERE channel = ?", (rows[0]["channel"],))
        log.info("delivery %s queued again by an operator", delivery_id)
        self.nudge()
        return self.delivery(delivery_id)

    async def send_test(self, subscription_id: str) -> list[TestResult]:
        """Send a sample notice through each channel of a subscription."""
        assert self._session is not None, "use `async with Notifications(...)` first"
        return await send_test_notices(self.settings, subscription_id, self.environ,
                                       self._session)


async def _wait_any(a: asyncio.Event, b: asyncio.Event, timeout: float) -> None:
    waiters = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _iso(seconds: float | None) -> str | None:
    moment = from_epoch(seconds)
    return None if moment is None else moment.isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def _delivery_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "notice": row["notice"], "subscription": row["subscription"],
        "channel": row["channel"], "kind": row["kind"], "status": row["status"],
        "attempts": row["attempts"], "created_at": _iso(row["created_at"]),
        "captured_at": _iso(row["captured_at"]),
        "next_attempt_at": _iso(row["next_attempt_at"]) if row["status"] == PENDING else None,
        "last_attempt_at": _iso(row["last_attempt_at"]),
        "delivered_at": _iso(row["delivered_at"]), "last_error": row["last_error"],
        "last_status": row["last_status"],
    }


# HTTP API ---------------------------------------------------------------------------------


def add_routes(app: web.Application, notifications: Notifications) -> None:
    """GET /api/v1/deliveries?status=&limit= and POST /api/v1/deliveries/{id}/retry."""

    def error(status: int, message: str, parameter: str | None = None) -> web.Response:
        body: dict[str, Any] = {"error": message}
        if parameter:
            body["parameter"] = parameter
        return web.json_response(body, status=status)

    async def list_deliveries(request: web.Request) -> web.Response:
        status = request.query.get("status") or None
        if status is not None and status not in STATUSES:
            return error(400, f"status must be one of {', '.join(STATUSES)}", "status")
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return error(400, "limit must be a whole number", "limit")
        if not 1 <= limit <= 1000:
            return error(400, "limit must be between 1 and 1000", "limit")
        rows = await asyncio.to_thread(notifications.deliveries, limit, status)
        dead = await asyncio.to_thread(notifications.store.db.scalar,
                                       "SELECT COUNT(*) FROM cw_deliveries WHERE status = ?",
                                       (DEAD,))
        return web.json_response({"deliveries": rows, "dead_letters": int(dead or 0)})

    async def retry(request: web.Request) -> web.Response:
        delivery_id = request.match_info["id"]
        try:
            row = await asyncio.to_thread(notifications.retry, delivery_id)
        except UnknownDeliveryError as exc:
            return error(404, str(exc))
        except ValueError as exc:
            return error(409, str(exc))
        return web.json_response(row, status=202)

    app.router.add_get("/api/v1/deliveries", list_deliveries)
    app.router.add_post("/api/v1/deliveries/{id}/retry", retry)
