"""The delivery worker: claims due delivery rows, sends each in its own task, records the result.

Rows are claimed under a lease (with FOR UPDATE SKIP LOCKED on PostgreSQL), so replicas share
the work and a crashed worker's rows are sent again once its lease runs out. A notice is
rebuilt from the stored row on every attempt, so a retry sends the same content under the
same id (webhook-id, Message-ID).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from daemon.metrics import Metrics
from daemon.outbox import decode_documents, epoch, from_epoch
from daemon.sql import Database, Transaction
from notifiers.base import Channel
from notifiers.errors import (
    ChannelGoneError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from notifiers.notice import Notice
from notifiers.retry import RetryPolicy

log = logging.getLogger("clausewatch.delivery")

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
STATUSES = (PENDING, DELIVERED, DEAD)
# Beyond the channel's own timeout: a send that takes this much longer is abandoned.
TIMEOUT_MARGIN = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Claimed:
    """A delivery this worker holds the lease of, with the stored notice it sends."""

    id: str
    notice: str
    subscription: str
    channel: str
    kind: str
    attempts: int
    budget_start: float
    captured_at: float | None
    notice_created_at: float
    window_start: float | None
    window_end: float | None
    documents: str

    def build_notice(self) -> Notice:
        """The notice, rebuilt from stored data only: the same on every attempt."""
        created = from_epoch(self.notice_created_at)
        assert created is not None
        return Notice(id=self.notice, subscription_id=self.subscription,
                      kind=self.kind,  # type: ignore[arg-type]
                      created_at=created, documents=decode_documents(self.documents),
                      window_start=from_epoch(self.window_start),
                      window_end=from_epoch(self.window_end))


class DeliveryWorker:
    """Sends due deliveries with bounded concurrency, each isolated from the others."""

    def __init__(self, db: Database, *, channels: Mapping[str, Channel],
                 fingerprints: Mapping[str, str], timeouts: Mapping[str, float],
                 policy: RetryPolicy, metrics: Metrics, owner: str, lease: float,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 concurrency: int = 32, per_channel: int = 4) -> None:
        self.db = db
        self.channels = dict(channels)
        self.fingerprints = dict(fingerprints)
        self.timeouts = dict(timeouts)
        self.policy = policy
        self.metrics = metrics
        self.owner = owner
        self.lease = lease
        self.clock = clock
        self.concurrency = concurrency
        self.per_channel = per_channel
        self.in_flight: Counter[str] = Counter()
        self._results: asyncio.Queue[_Result] | None = None

    def configure(self, *, channels: Mapping[str, Channel], fingerprints: Mapping[str, str],
                  timeouts: Mapping[str, float]) -> None:
        """Use new channel objects (after a config reload); in-flight sends finish as they are."""
        self.channels = dict(channels)
        self.fingerprints = dict(fingerprints)
        self.timeouts = dict(timeouts)

    def _now(self) -> float:
        return epoch(self.clock())

    # Claiming ----------------------------------------------------------------------------

    def claim(self, limit: int, *, busy: Mapping[str, int] | None = None) -> list[Claimed]:
        """Lease up to `limit` due deliveries, at most `per_channel` in flight per channel
        counting `busy` (sends already running); rows for disabled or unknown channels go dead.
        """
        if limit <= 0:
            return []
        busy = busy or {}
        now = self._now()
        due = ("status = 'pending' AND next_attempt_at <= ? "
               "AND (lease_until IS NULL OR lease_until < ?)")
        taken: list[str] = []
        effects: list[Callable[[], None]] = []
        with self.db.transaction() as tx:
            lock = " FOR UPDATE SKIP LOCKED" if tx.db.dialect == "postgres" else ""
            # Channels with due work, the longest-waiting first; then each channel's oldest
            # rows up to its room, so one busy channel never takes every slot.
            waiting = [r["channel"] for r in tx.query(
                f"SELECT channel, MIN(next_attempt_at) AS first FROM cw_deliveries "
                f"WHERE {due} GROUP BY channel ORDER BY first, channel", (now, now))]
            if not waiting:
                return []
            gone = self._disabled(tx, set(waiting))
            for channel in waiting:
                reason = gone.get(channel)
                if reason is None and channel not in self.channels:
                    reason = (f"channel {channel} is no longer configured; add it back "
                              "to [[channels]] and retry this delivery")
                if reason is not None:
                    for row in tx.query(f"SELECT id FROM cw_deliveries WHERE channel = ? "
                                        f"AND {due}{lock}", (channel, now, now)):
                        self._bury(tx, row["id"], channel, reason, None, effects)
                    continue
                room = min(self.per_channel - busy.get(channel, 0), limit - len(taken))
                if room <= 0:
                    continue
                taken += [r["id"] for r in tx.query(
                    f"SELECT id FROM cw_deliveries WHERE channel = ? AND {due} "
                    f"ORDER BY next_attempt_at, id LIMIT ?{lock}", (channel, now, now, room))]
                if len(taken) >= limit:
                    break
            if not taken:
                _apply(effects)
                return []
            marks = ", ".join("?" for _ in taken)
            tx.execute(f"UPDATE cw_deliveries SET lease_owner = ?, lease_until = ? "
                       f"WHERE id IN ({marks})", [self.owner, now + self.lease, *taken])
            found = tx.query(
                f"""SELECT d.id, d.notice, d.subscription, d.channel, d.kind, d.attempts,
                    d.budget_start, d.captured_at, n.created_at AS notice_created_at,
                    n.window_start, n.window_end, n.documents
                    FROM cw_deliveries d JOIN cw_notices n ON n.id = d.notice
                    WHERE d.id IN ({marks}) ORDER BY d.next_attempt_at, d.id""", taken)
        _apply(effects)
        return [Claimed(**row) for row in found]

    def _disabled(self, tx: Transaction, channels: set[str]) -> dict[str, str]:
        marks = ", ".join("?" for _ in channels)
        rows = tx.query(f"SELECT channel, reason, fingerprint, since FROM cw_channel_state "
                        f"WHERE status = 'gone' AND channel IN ({marks})", sorted(channels))
        result = {}
        for row in rows:
            # A channel whose address changed in the config is a new receiver: try it again.
            if row["fingerprint"] != self.fingerprints.get(row["channel"]):
                continue
            when = from_epoch(row["since"])
            result[row["channel"]] = (
                f"channel {row['channel']} is disabled since "
                f"{when.strftime('%Y-%m-%d %H:%M:%SZ') if when else '?'}: {row['reason']}; "
                "change its address in the config, or retry this delivery to re-enable it")
        return result

    def _bury(self, tx: Transaction, delivery: str, channel: str, reason: str,
              status: int | None, effects: list[Callable[[], None]]) -> None:
        changed = tx.execute(
            """UPDATE cw_deliveries SET status = 'dead', last_error = ?, last_status = ?,
               lease_owner = NULL, lease_until = NULL WHERE id = ? AND status = 'pending'""",
            (reason, status, delivery))
        if changed:
            def count() -> None:
                self.metrics.deliveries.labels(channel=channel, result=DEAD).inc()
                log.warning("delivery %s to channel %s is a dead letter: %s", delivery,
                            channel, reason)
            effects.append(count)

    def release(self) -> int:
        """Give back this worker's leases (on shutdown), so the rows are due again at once."""
        return self.db.execute("UPDATE cw_deliveries SET lease_owner = NULL, lease_until = NULL "
                               "WHERE lease_owner = ? AND status = 'pending'", (self.owner,))

    def next_due_in(self) -> float | None:
        """Seconds until the next pending delivery is due (0 if one is due), None if none."""
        due = self.db.scalar(
            "SELECT MIN(CASE WHEN lease_until IS NOT NULL AND lease_until > next_attempt_at "
            "THEN lease_until ELSE next_attempt_at END) FROM cw_deliveries "
            "WHERE status = 'pending'")
        return None if due is None else max(0.0, float(due) - self._now())

    # Sending -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, wake: asyncio.Event, *, poll: float = 0.2,
                  drain: float = 10.0) -> None:
        """Claim and send until `stop` is set; then let sends finish for up to `drain` s."""
        tasks: set[asyncio.Task[str]] = set()
        results: asyncio.Queue[_Result] = asyncio.Queue()
        try:
            async with asyncio.TaskGroup() as group:
                recorder = group.create_task(self._recorder(results), name="deliver-record")
                self._results = results
                while not stop.is_set():
                    wake.clear()
                    room = self.concurrency - len(tasks)
                    claimed = await asyncio.to_thread(self.claim, room,
                                                      busy=dict(self.in_flight))
                    for item in claimed:
                        self.in_flight[item.channel] += 1
                        task = group.create_task(self.deliver(item, wake),
                                                 name=f"deliver-{item.id}")
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    if claimed and len(claimed) == room:
                        continue  # more may be due: claim again as soon as there is room
                    await _wait(wake, stop, poll)
                if tasks:
                    await asyncio.wait(tasks, timeout=drain)
                    for task in list(tasks):
                        task.cancel()
                # Results already handed over are written before the recorder stops.
                await asyncio.wait_for(results.join(), timeout=max(drain, 1.0))
                recorder.cancel()
        finally:
            self._results = None
            await asyncio.to_thread(self.release)

    async def _recorder(self, results: asyncio.Queue[_Result]) -> None:
        """Write finished attempts in batches: one transaction for all that are waiting."""
        while True:
            batch = [await results.get()]
            while not results.empty():
                batch.append(results.get_nowait())
            try:
                outcomes = await asyncio.to_thread(
                    self.record_many, [(r.item, r.error) for r in batch])
            except Exception:
                # The leases run out and the deliveries are tried again: nothing is lost.
                log.exception("could not record the results of %d deliveries", len(batch))
                outcomes = ["unrecorded"] * len(batch)
            for result, outcome in zip(batch, outcomes, strict=True):
                if not result.future.done():
                    result.future.set_result(outcome)
                results.task_done()

    async def deliver(self, item: Claimed, wake: asyncio.Event | None = None) -> str:
        """Send one claimed delivery and record what happened; never raises an Exception."""
        try:
            error = await self._send(item)
            if self._results is not None:
                future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
                self._results.put_nowait(_Result(item=item, error=error, future=future))
                return await asyncio.shield(future)
            try:
                return await asyncio.to_thread(self.record, item, error)
            except Exception:
                log.exception("could not record the result of delivery %s", item.id)
                return "unrecorded"
        finally:
            self.in_flight[item.channel] -= 1
            if self.in_flight[item.channel] <= 0:
                del self.in_flight[item.channel]
            if wake is not None:
                wake.set()

    async def _send(self, item: Claimed) -> DeliveryError | None:
        channel = self.channels.get(item.channel)
        timeout = self.timeouts.get(item.channel, 10.0) + TIMEOUT_MARGIN
        if channel is None:
            return PermanentDeliveryError(channel_id=item.channel, notice_id=item.notice,
                                          reason="the channel is no longer configured")
        try:
            notice = item.build_notice()
            async with asyncio.timeout(timeout):
                await channel.send(notice)
        except DeliveryError as exc:
            return exc
        except TimeoutError:
            return TransientDeliveryError(channel_id=item.channel, notice_id=item.notice,
                                          reason=f"the send did not finish within {timeout:g}s")
        except Exception as exc:  # a bug in one delivery must not stop the others
            log.exception("delivery %s to channel %s failed unexpectedly", item.id,
                          item.channel)
            return TransientDeliveryError(channel_id=item.channel, notice_id=item.notice,
                                          reason=f"unexpected {type(exc).__name__}: {exc}")
        return None

    # Recording ---------------------------------------------------------------------------

    def record(self, item: Claimed, error: DeliveryError | None) -> str:
        """Store the outcome of one attempt; returns delivered, retry or dead."""
        return self.record_many([(item, error)])[0]

    def record_many(self, attempts: Sequence[tuple[Claimed, DeliveryError | None]]) -> list[str]:
        """Store the outcomes of several attempts in one transaction."""
        now = self._now()
        effects: list[Callable[[], None]] = []
        with self.db.transaction() as tx:
            outcomes = [self._record(tx, item, error, now, effects) for item, error in attempts]
        _apply(effects)
        return outcomes

    def _record(self, tx: Transaction, item: Claimed, error: DeliveryError | None, now: float,
                effects: list[Callable[[], None]]) -> str:
        channel = item.channel
        if error is None:
            done = tx.execute(
                """UPDATE cw_deliveries SET status = 'delivered', delivered_at = ?,
                   attempts = attempts + 1, last_attempt_at = ?, last_error = NULL,
                   last_status = NULL, lease_owner = NULL, lease_until = NULL
                   WHERE id = ? AND status = 'pending'""", (now, now, item.id))
            if done:
                effects.append(lambda: self._count_delivered(item, now))
            return DELIVERED
        attempts = item.attempts + 1
        tx.execute("UPDATE cw_deliveries SET attempts = ?, last_attempt_at = ? "
                   "WHERE id = ? AND status = 'pending'", (attempts, now, item.id))
        if isinstance(error, ChannelGoneError):
            tx.execute(
                """INSERT INTO cw_channel_state (channel, status, reason, fingerprint, since)
                   VALUES (?, 'gone', ?, ?, ?) ON CONFLICT (channel) DO UPDATE SET
                   status = excluded.status, reason = excluded.reason,
                   fingerprint = excluded.fingerprint, since = excluded.since""",
                (channel, error.reason, self.fingerprints.get(channel, ""), now))
            effects.append(lambda: log.error("channel %s disabled: %s", channel, error))
        if not isinstance(error, TransientDeliveryError):
            self._bury(tx, item.id, channel, str(error), error.status, effects)
            return DEAD
        started = from_epoch(item.budget_start)
        assert started is not None
        if self.policy.should_give_up(started, from_epoch(now) or started):
            budget = self.policy.give_up_after.total_seconds()
            self._bury(tx, item.id, channel,
                       f"gave up after {attempts} attempts in {budget:g}s: {error}",
                       error.status, effects)
            return DEAD
        delay = self.policy.next_delay(attempts, error.retry_after)
        tx.execute(
            """UPDATE cw_deliveries SET next_attempt_at = ?, last_error = ?,
               last_status = ?, lease_owner = NULL, lease_until = NULL
               WHERE id = ? AND status = 'pending'""",
            (now + delay, str(error), error.status, item.id))

        def count_retry() -> None:
            self.metrics.deliveries.labels(channel=channel, result="retry").inc()
            self.metrics.retries.labels(what="delivery").inc()
            log.info("delivery %s to channel %s: retry in %.2fs: %s", item.id, channel, delay,
                     error)
        effects.append(count_retry)
        return "retry"

    def _count_delivered(self, item: Claimed, now: float) -> None:
        self.metrics.deliveries.labels(channel=item.channel, result=DELIVERED).inc()
        if item.captured_at is not None and item.kind == "alert":
            self.metrics.delivery_latency.labels(channel=item.channel).observe(
                max(0.0, now - item.captured_at))


@dataclass(frozen=True, slots=True, kw_only=True)
class _Result:
    """A finished attempt waiting for the recorder."""

    item: Claimed
    error: DeliveryError | None
    future: asyncio.Future[str]


def _apply(effects: list[Callable[[], None]]) -> None:
    """Run what a committed transaction promised: metric updates and log lines."""
    for effect in effects:
        effect()


async def _wait(wake: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    """Until woken, stopped, or `timeout` seconds passed."""
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
