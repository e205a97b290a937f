"""The long-running daemon: clock, workers, API, reloads, drain and systemd integration."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from config.errors import ConfigError
from config.settings import DocumentSettings, Settings, load_settings
from daemon import logs, loop
from daemon.check import client_session, poll
from daemon.coordination import Leadership, PollClaims, SharedClock
from daemon.fetcher import Fetcher
from daemon.metrics import Metrics
from daemon.notifications import Notifications, add_routes
from daemon.scheduler import PollQueue, PollScheduler
from daemon.service import CheckOutcome, ClauseWatch
from daemon.sql import Database
from daemon.bootstrap import load_checked_taxonomy, open_service
from daemon.systemd import SystemdNotifier
from daemon.version import installed_version

log = logging.getLogger("clausewatch.daemon")

OutcomeHook = Callable[[DocumentSettings, CheckOutcome], Awaitable[None] | None]
MAINTENANCE_INTERVAL = 1.0
RETENTION_INTERVAL = 3600.0


class CrashedLoopError(RuntimeError):
    """An internal loop died: the process exits non-zero so its supervisor restarts it."""


class Daemon:
    """Owns every long-lived part of one clausewatch process."""

    def __init__(self, settings: Settings, *, environ: Mapping[str, str] | None = None,
                 metrics: Metrics | None = None, on_outcome: OutcomeHook | None = None,
                 spread_first: bool = True, version: str = "0.1.0") -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.metrics = metrics or Metrics()
        self.on_outcome = on_outcome
        self.spread_first = spread_first
        self.version = version
        self.systemd = SystemdNotifier(self.environ)
        self.queue = PollQueue()
        self.scheduler: PollScheduler | SharedClock = PollScheduler(
            self.queue, jitter=settings.scheduler.jitter, spread_first=spread_first)
        self.stop_event = asyncio.Event()
        self.reload_event = asyncio.Event()
        self.ready_event = asyncio.Event()
        self.busy = 0
        self.service: ClauseWatch | None = None
        self.leadership: Leadership | None = None
        self.notifications: Notifications | None = None
        self.shared = False
        self.fetcher: Fetcher | None = None
        self.api_port: int | None = None
        self.replica = settings.replica_id or self.environ.get("CLAUSEWATCH_REPLICA_ID") or \
            f"{os.uname().nodename}-{os.getpid()}"
        self._documents: dict[str, DocumentSettings] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    # Lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking work, drain in-flight polls and exit (SIGTERM, SIGINT)."""
        self.stop_event.set()

    def request_reload(self) -> None:
        """Re-read the config file (SIGHUP)."""
        self.reload_event.set()

    async def run(self) -> int:
        """Run until stopped; 0 after a clean stop, 1 if an internal loop crashed."""
        token = self._api_token()
        logs.tag_replica(self.replica)
        async with AsyncExitStack() as stack:
            self.service = service = await asyncio.to_thread(open_service, self.settings)
            stack.push_async_callback(asyncio.to_thread, service.close)
            await asyncio.to_thread(service.sync_documents, self.settings.documents)
            if self.settings.store.is_postgres:
                await self._join_replicas(stack)
            session = await stack.enter_async_context(client_session(self.settings.fetch))
            self.notifications = await stack.enter_async_context(Notifications(
                service.store, self.settings, self.metrics, self.environ, owner=self.replica))
            self.fetcher = Fetcher(session, self.settings.fetch,
                                   on_retry=lambda what: self.metrics.retries.labels(
                                       what=what).inc())
            self._install_metrics()
            await self._start_api(stack, token)
            self._apply_documents(self.settings)
            self.scheduler.start()
            stack.callback(self.scheduler.shutdown)
            self._install_signals(stack)
            self._write_pidfile(stack)
            self.systemd.ready(f"watching {len(self._documents)} documents")
            self.ready_event.set()
            log.info("clausewatch %s started: %d documents, API on %s:%s", self.version,
                     len(self._documents), self.settings.http.host, self.api_port,
                     extra={"replica": self.replica})
            try:
                await self._serve()
            except CrashedLoopError:
                log.exception("an internal loop crashed; exiting so the supervisor restarts us")
                self.systemd.stopping()
                return 1
            self.systemd.stopping()
        log.info("clausewatch stopped cleanly")
        return 0

    async def _serve(self) -> None:
        tasks: list[asyncio.Task[Any]] = []
        try:
            async with asyncio.TaskGroup() as group:
                workers = [group.create_task(self._worker(n), name=f"worker-{n}")
                           for n in range(self.settings.scheduler.workers)]
                tasks += workers
                tasks.append(group.create_task(self._guard(self._maintenance), name="maint"))
                tasks.append(group.create_task(self._guard(self._reloader), name="reloader"))
                tasks.append(group.create_task(self._guard(self._watchdog), name="watchdog"))
                tasks.append(group.create_task(self._guard(self._notify), name="notify"))
                await self.stop_event.wait()
                log.info("stopping: no new polls; draining %d in flight", self.busy)
                self.scheduler.shutdown()
                dropped = self.queue.drop_waiting()
                if dropped:
                    await asyncio.to_thread(self.scheduler.abandon, dropped)
                    log.info("dropped %d queued polls (they run after the restart, or on "
                             "another replica)", len(dropped))
                try:
                    await asyncio.wait_for(self._idle.wait(),
                                           self.settings.scheduler.drain_timeout)
                except TimeoutError:
                    log.warning("drain timed out after %.0fs; %d polls cut short",
                                self.settings.scheduler.drain_timeout, self.busy)
                for task in tasks:
                    task.cancel()
        except* CrashedLoopError as group_error:
            raise group_error.exceptions[0] from None

    async def _guard(self, loop: Callable[[], Awaitable[None]]) -> None:
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise CrashedLoopError(f"{loop.__name__} crashed: {exc!r}") from exc

    # Work --------------------------------------------------------------------------------

    async def _worker(self, number: int) -> None:
        assert self.service is not None and self.fetcher is not None
        while True:
            document_id, queued_at = await self.queue.take()
            doc = self._documents.get(document_id)
            if doc is None or self.stop_event.is_set():
                self.queue.done(document_id)
                continue
            self.busy += 1
            self._idle.clear()
            self.metrics.workers_busy.set(self.busy)
            self.metrics.scheduler_lag.observe(time.monotonic() - queued_at)
            try:
                outcome = await poll(self.service, self.fetcher, doc, self.metrics)
                if outcome.outcome == "changed" and self.notifications is not None:
                    self.notifications.nudge()
                if self.on_outcome is not None:
                    maybe = self.on_outcome(doc, outcome)
                    if maybe is not None:
                        await maybe
            except Exception:
                # A broken page or store hiccup is one failed poll, never a dead worker.
                log.exception("poll failed unexpectedly", extra={"document": document_id})
                self.metrics.captures.labels(outcome="failed").inc()
            finally:
                if self.shared:
                    try:
                        await asyncio.to_thread(self.scheduler.finished, document_id)
                    except Exception:
                        # The lease expires and another replica (or we) polls it again.
                        log.exception("could not release the claim",
                                      extra={"document": document_id})
                self.busy -= 1
                self.metrics.workers_busy.set(self.busy)
                if self.busy == 0:
                    self._idle.set()
                self.queue.done(document_id)

    async def _maintenance(self) -> None:
        assert self.service is not None
        last_retention = time.monotonic()
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL)
            if await asyncio.to_thread(self._leads, "views"):
                await asyncio.to_thread(self.service.views.catch_up)
            await asyncio.to_thread(self._refresh_gauges)
            await asyncio.to_thread(self.service.flush_heads)
            if time.monotonic() - last_retention > RETENTION_INTERVAL and \
                    await asyncio.to_thread(self._leads, "retention"):
                last_retention = time.monotonic()
                dropped = await asyncio.to_thread(
                    self.service.apply_retention, older_than=self.settings.evidence.retention)
                if dropped:
                    log.info("retention dropped the bytes of %d captures", dropped)

    async def _notify(self) -> None:
        assert self.notifications is not None
        await self.notifications.run(self.stop_event)

    async def _watchdog(self) -> None:
        interval = self.systemd.watchdog_interval
        if interval is None:
            await asyncio.Event().wait()  # no watchdog asked for: idle until cancelled
        while True:
            self.systemd.watchdog()
            await asyncio.sleep(interval)  # type: ignore[arg-type]

    async def _reloader(self) -> None:
        while True:
            await self.reload_event.wait()
            self.reload_event.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Re-read the config; a broken one is refused and the running one kept."""
        self.systemd.reloading()
        try:
            fresh = await asyncio.to_thread(load_settings, self.settings.path)
            taxonomy = await asyncio.to_thread(load_checked_taxonomy, fresh)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            self.systemd.ready("reload refused: config error")
            return False
        assert self.service is not None
        old = self.service.taxonomy_version
        self.service.use_taxonomy(taxonomy)
        if self.service.taxonomy_version != old:
            log.info("taxonomy changed (%s -> %s): run `clausewatch reclassify`",
                     old, self.service.taxonomy_version)
        await asyncio.to_thread(self.service.sync_documents, fresh.documents)
        self.settings = fresh
        if self.notifications is not None:
            self.notifications.reconfigure(fresh)
        added, removed, retimed = self._apply_documents(fresh)
        log.info("config reloaded: %d added, %d removed, %d re-timed", len(added),
                 len(removed), len(retimed))
        self.systemd.ready(f"watching {len(self._documents)} documents")
        return True

    def _apply_documents(self, settings: Settings) -> tuple[list[str], list[str], list[str]]:
        self._documents = {d.id: d for d in settings.documents}
        result = self.scheduler.apply((d.id, settings.interval_of(d))
                                      for d in settings.documents)
        for document_id in result[1]:
            for gauge in (self.metrics.consecutive_failures, self.metrics.last_success,
                          self.metrics.seconds_since_success, self.metrics.document_interval):
                try:
                    gauge.remove(document_id)
                except KeyError:
                    pass
        for d in settings.documents:
            self.metrics.document_interval.labels(document=d.id).set(settings.interval_of(d))
        self.metrics.documents_watched.set(len(self._documents))
        return result

    # Parts -------------------------------------------------------------------------------

    def _api_token(self) -> str | None:
        name = self.settings.http.token_env
        if not name:
            return None
        token = self.environ.get(name)
        if not token:
            raise ConfigError(str(self.settings.path), "http.token_env",
                              f"the environment variable {name} is not set",
                              f"export {name}=… or remove http.token_env")
        return token

    async def _start_api(self, stack: AsyncExitStack, token: str | None) -> None:
        from daemon.api import build_api

        assert self.service is not None
        app = build_api(self.service, registry=self.metrics.registry, readiness=self.readiness,
                        token=token, public_url=self.settings.http.public_url)
        if self.notifications is not None:
            add_routes(app, self.notifications)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, self.settings.http.host, self.settings.http.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.api_port = sockets[0].getsockname()[1] if sockets else self.settings.http.port

    async def _join_replicas(self, stack: AsyncExitStack) -> None:
        """On PostgreSQL, replicas share the schedule and elect leaders for single-leader work."""
        store = self.settings.store
        claims_db = await asyncio.to_thread(Database, store.url, schema=store.schema,
                                            lock_timeout=store.lock_timeout)
        stack.push_async_callback(asyncio.to_thread, claims_db.close)
        claims = await asyncio.to_thread(PollClaims, claims_db, self.replica,
                                         lease=self.settings.scheduler.lease)
        self.scheduler = SharedClock(self.queue, claims, capacity=self._capacity,
                                     spread_first=self.spread_first)
        self.leadership = await asyncio.to_thread(Leadership, store.url, self.replica,
                                                  schema=store.schema)
        stack.push_async_callback(asyncio.to_thread, self.leadership.close)
        self.shared = True
        # The views leader projects in batches every second; workers only append events.
        assert self.service is not None
        self.service.catch_up_after_save = False

    def _capacity(self) -> int:
        # Claim ahead of the workers (a second round queued), so none idles between ticks.
        return 2 * self.settings.scheduler.workers - self.busy - self.queue.depth

    def _leads(self, role: str) -> bool:
        """True if this process should do a single-leader job now (always, without replicas)."""
        if self.leadership is None:
            return True
        try:
            held = self.leadership.try_acquire(role)
        except Exception as exc:
            log.warning("cannot reach PostgreSQL for the %s role: %s", role, exc)
            held = False
        self.metrics.leader.labels(role=role).set(1 if held else 0)
        return held

    async def readiness(self) -> tuple[bool, str]:
        """Ready when the store answers and the scheduler runs."""
        if not self.scheduler.running or self.stop_event.is_set():
            return False, "the scheduler is not running"
        assert self.service is not None
        try:
            await asyncio.wait_for(asyncio.to_thread(self.service.store.db.scalar, "SELECT 1"),
                                   5)
        except Exception as exc:
            return False, f"the store is unreachable: {type(exc).__name__}"
        return True, "ok"

    def _install_signals(self, stack: AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop),
                             (signal.SIGHUP, self.request_reload)):
            try:
                loop.add_signal_handler(sig, handler)
            except (NotImplementedError, RuntimeError):
                continue  # not the main thread (tests drive stop() directly)
            stack.callback(loop.remove_signal_handler, sig)

    def _write_pidfile(self, stack: AsyncExitStack) -> None:
        path = self.settings.data_dir / "clausewatch.pid"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{os.getpid()}\n")
        stack.callback(lambda: path.unlink(missing_ok=True))

    def _install_metrics(self) -> None:
        self.metrics.build_info.info({"version": self.version})
        self.metrics.replica_info.labels(replica=self.replica).set(1)

    def _refresh_gauges(self) -> None:
        assert self.service is not None
        now = datetime.now(UTC)
        for row in self.service.store.db.query(
                "SELECT id, consecutive_failures, last_success FROM cw_documents"):
            if row["id"] not in self._documents:
                continue
            self.metrics.consecutive_failures.labels(document=row["id"]).set(
                row["consecutive_failures"])
            if row["last_success"]:
                at = datetime.fromisoformat(row["last_success"].replace("Z", "+00:00"))
                self.metrics.last_success.labels(document=row["id"]).set(at.timestamp())
                self.metrics.seconds_since_success.labels(document=row["id"]).set(
                    (now - at).total_seconds())
        newest = self.service.store.max_notification_id()
        self.metrics.projection_lag.labels(projection="views").set(
            max(0, newest - self.service.views.position()))
        if self.notifications is not None:
            self.metrics.projection_lag.labels(projection="notify").set(
                max(0, newest - self.notifications.outbox.position()))
        self.metrics.queue_depth.set(self.queue.depth)


def run_daemon(settings: Settings, *, environ: Mapping[str, str] | None = None) -> int:
    """Run the daemon in the main thread until SIGTERM or SIGINT."""
    return loop.run(Daemon(settings, environ=environ, version=installed_version()).run())
