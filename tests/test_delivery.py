"""Delivery under faults, against real receivers: aiosmtpd and aiohttp on 127.0.0.1.

Retry timing comes from a RetryPolicy with tiny delays, never from sleeping for seconds.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiosmtpd.controller import Controller
from helpers.notify_kit import (
    ENVIRON,
    HANG,
    SECRET_ENV,
    Capturer,
    HookReceiver,
    Reply,
    later,
    opened,
    settings,
    sqlite_store,
    wait_for,
    webhook,
)

from config.settings import ChannelSettings, StoreSettings, SubscriptionSettings
from daemon.metrics import Metrics
from daemon.notifications import Notifications, add_routes
from notifiers.retry import RetryPolicy

FAST = RetryPolicy(base=0.02, max_delay=0.1, give_up_after=timedelta(seconds=2),
                   retry_after_cap=None, jitter=random.Random(7))


class Mailbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(envelope.original_content or envelope.content)
        return "250 OK"

    def message_ids(self) -> list[str]:
        with self.lock:
            return [str(message_from_bytes(m)["Message-ID"]) for m in self.messages]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def receiver() -> Iterator[HookReceiver]:
    with HookReceiver() as r:
        yield r


@asynccontextmanager
async def running(notifications: Notifications) -> AsyncIterator[Notifications]:
    """The notification loops in the background, stopped (and drained) at the end."""
    stop = asyncio.Event()
    async with notifications:
        task = asyncio.create_task(notifications.run(stop))
        try:
            yield notifications
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


def _status(n: Notifications, subscription: str) -> dict[str, Any]:
    [row] = [r for r in n.deliveries(100) if r["subscription"] == subscription]
    return row


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_faults_delay_nothing_else_and_every_alert_arrives_once(
        tmp_path: Path, receiver: HookReceiver) -> None:
    smtp_port = _free_port()  # nothing listens here yet: the mail server is down
    mailbox = Mailbox()
    receiver.script("/flaky", Reply(status=503), Reply(status=503), Reply(status=503))
    receiver.script("/busy", Reply(status=429, headers={"Retry-After": "0.5"}))
    receiver.script("/gone", then=Reply(status=410))
    receiver.script("/hang", then=HANG)
    channels = [
        webhook("ok", receiver.endpoint("/ok")),
        webhook("flaky", receiver.endpoint("/flaky")),
        webhook("busy", receiver.endpoint("/busy")),
        webhook("gone", receiver.endpoint("/gone")),
        webhook("hang", receiver.endpoint("/hang"), timeout=0.3),
        ChannelSettings(id="mail", type="email", host="127.0.0.1", port=smtp_port, tls="none",
                        sender="cw@example.org", recipients=("legal@example.org",),
                        timeout=2.0),
    ]
    subs = [SubscriptionSettings(id=c.id, channels=(c.id,)) for c in channels]
    store_settings = sqlite_store(tmp_path)
    metrics = Metrics()
    with opened(store_settings, tmp_path) as store:
        capturer = Capturer(store)
        capturer.baseline()
        n = Notifications(store, settings(tmp_path, store_settings, channels=channels,
                                          subscriptions=subs), metrics, ENVIRON, policy=FAST,
                          lease=5, drain=0.5)
        async with running(n):
            started = time.time()
            await asyncio.to_thread(capturer.change, "acme/privacy", later(1))
            n.nudge()

            # The healthy receiver gets its alert at once, while the hanging one still holds
            # its first request.
            await wait_for(lambda: receiver.delivered("/ok"), 5)
            ok_at = receiver.delivered("/ok")[0].at
            assert ok_at - started < 1.0
            hang_first = receiver.on("/hang")
            assert not hang_first or ok_at < hang_first[0].at + 0.3

            # 503 three times, then 200: four tries of the same webhook-id and body.
            await wait_for(lambda: receiver.delivered("/flaky"), 5)
            flaky = receiver.on("/flaky")
            assert [h.status for h in flaky] == [503, 503, 503, 200]
            assert len({(h.webhook_id, h.body) for h in flaky}) == 1

            # 429 with Retry-After: 0.5 — the retry waits at least that long.
            await wait_for(lambda: receiver.delivered("/busy"), 5)
            busy = receiver.on("/busy")
            assert [h.status for h in busy] == [429, 200]
            assert busy[1].at - busy[0].at >= 0.45

            # 410 Gone: a dead letter at once, and the channel is disabled.
            await wait_for(lambda: _status(n, "gone")["status"] == "dead", 5)
            assert "410" in _status(n, "gone")["last_error"]
            assert len(receiver.on("/gone")) == 1

            # The mail server comes up after a few failed tries; the message arrives once.
            await wait_for(lambda: _status(n, "mail")["attempts"] >= 2, 5)
            controller = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
            controller.start()
            try:
                await wait_for(lambda: _status(n, "mail")["status"] == "delivered", 10)
                notice = _status(n, "mail")["notice"]

                # The hanging receiver times out each time until the budget (2 s) runs out.
                await wait_for(lambda: _status(n, "hang")["status"] == "dead", 10)
                assert "gave up after" in _status(n, "hang")["last_error"]
                n.refresh_gauges()
                assert _sample(metrics, "clausewatch_dead_letters") == 2

                # A second change: the disabled channel is not even tried.
                await asyncio.to_thread(capturer.change, "acme/terms", later(2))
                n.nudge()
                await wait_for(lambda: len(receiver.delivered("/ok")) == 2, 5)
                await wait_for(lambda: len(n.deliveries(100, "dead")) == 4, 10)
                await wait_for(lambda: len(mailbox.messages) == 2, 5)
            finally:
                controller.stop()
            assert len(receiver.on("/gone")) == 1
            gone = [r for r in n.deliveries(100, "dead") if r["channel"] == "gone"]
            assert any("disabled since" in r["last_error"] for r in gone)
            ids = mailbox.message_ids()
            assert f"<{notice}@clausewatch>" in ids and len(set(ids)) == len(ids) == 2

        # Nobody got the same alert twice, and every signature verified.
        assert receiver.invalid == []
        per_id = Counter((h.path, h.webhook_id) for h in receiver.delivered())
        assert set(per_id.values()) == {1}
        assert _sample(metrics, "clausewatch_deliveries_total", channel="flaky",
                       result="retry") == 3
        assert _sample(metrics, "clausewatch_deliveries_total", channel="flaky",
                       result="delivered") == 2
        assert _sample(metrics, "clausewatch_delivery_latency_seconds_count",
                       channel="ok") == 2
        assert _sample(metrics, "clausewatch_retries_total", what="delivery") >= 5
        n.refresh_gauges()
        assert _sample(metrics, "clausewatch_outbox_depth") == 0
        assert _sample(metrics, "clausewatch_dead_letters") == 4


async def test_dead_letters_are_listed_and_retried_through_the_api(
        tmp_path: Path, receiver: HookReceiver) -> None:
    receiver.script("/later", then=Reply(status=410))
    channels = [webhook("later", receiver.endpoint("/later"))]
    subs = [SubscriptionSettings(id="legal", channels=("later",))]
    store_settings = sqlite_store(tmp_path)
    metrics = Metrics()
    with opened(store_settings, tmp_path) as store:
        capturer = Capturer(store)
        capturer.baseline()
        n = Notifications(store, settings(tmp_path, store_settings, channels=channels,
                                          subscriptions=subs), metrics, ENVIRON, policy=FAST,
                          drain=0.5)
        app = web.Application()
        add_routes(app, n)
        async with running(n), TestClient(TestServer(app, host="127.0.0.1")) as client:
            await asyncio.to_thread(capturer.change, "acme/privacy", later(1))
            await asyncio.to_thread(capturer.change, "acme/privacy", later(2))
            n.nudge()
            await wait_for(lambda: len(n.deliveries(10, "dead")) == 2, 5)

            response = await client.get("/api/v1/deliveries", params={"status": "dead"})
            assert response.status == 200
            body = await response.json()
            assert body["dead_letters"] == 2
            assert {d["status"] for d in body["deliveries"]} == {"dead"}
            first = body["deliveries"][0]
            assert first["channel"] == "later" and first["attempts"] <= 1
            assert (await client.get("/api/v1/deliveries?status=lost")).status == 400

            # The receiver is fixed; an operator retries both dead letters.
            receiver.script("/later", then=Reply(status=200))
            for delivery in body["deliveries"]:
                response = await client.post(f"/api/v1/deliveries/{delivery['id']}/retry")
                assert response.status == 202
            await wait_for(lambda: len(n.deliveries(10, "delivered")) == 2, 5)
            again = await client.post(f"/api/v1/deliveries/{first['id']}/retry")
            assert again.status == 409
            assert (await client.post("/api/v1/deliveries/dlv_nope/retry")).status == 404
        per_id = Counter(h.webhook_id for h in receiver.delivered("/later"))
        assert len(per_id) == 2 and set(per_id.values()) == {1}


async def test_one_channel_saturated_by_a_hang_leaves_room_for_others(
        tmp_path: Path, receiver: HookReceiver) -> None:
    receiver.script("/stuck", then=HANG)
    channels = [webhook("stuck", receiver.endpoint("/stuck"), timeout=5),
                webhook("fine", receiver.endpoint("/fine"))]
    subs = [SubscriptionSettings(id=f"s{i}", channels=("stuck", "fine")) for i in range(6)]
    store_settings = sqlite_store(tmp_path)
    with opened(store_settings, tmp_path) as store:
        capturer = Capturer(store)
        capturer.baseline()
        n = Notifications(store, settings(tmp_path, store_settings, channels=channels,
                                          subscriptions=subs), Metrics(), ENVIRON,
                          policy=FAST, concurrency=6, per_channel=2, drain=0.2)
        async with running(n):
            for minute in range(3):
                await asyncio.to_thread(capturer.change, "globex/privacy", later(minute))
            n.nudge()
            # 18 alerts to the healthy channel arrive although six worker slots exist and
            # 18 deliveries to the hanging channel are due at the same time.
            await wait_for(lambda: len(receiver.delivered("/fine")) == 18, 5)
            assert len(receiver.on("/stuck")) == 2


@pytest.mark.postgres
def test_replicas_claim_disjoint_rows_and_take_over_expired_leases(
        tmp_path: Path, pg_url: Any) -> None:
    store_settings: StoreSettings = pg_url.store()
    cfg = settings(tmp_path, store_settings, channels=[webhook("h", "http://127.0.0.1:9/")],
                   subscriptions=[SubscriptionSettings(id=f"s{i}", channels=("h",))
                                  for i in range(10)])
    with opened(store_settings, tmp_path) as a, opened(store_settings, tmp_path) as b:
        capturer = Capturer(a)
        capturer.baseline()
        na = Notifications(a, cfg, Metrics(), ENVIRON, owner="a", lease=0.5, per_channel=10)
        nb = Notifications(b, cfg, Metrics(), ENVIRON, owner="b", lease=0.5, per_channel=10)
        for w in (na.worker, nb.worker):
            w.channels = {"h": object()}  # type: ignore[dict-item]  # claim only, never send
        capturer.change("acme/privacy", later(1))
        na.consume()
        claims: dict[str, list[str]] = {}
        barrier = threading.Barrier(2)

        def claim(name: str, n: Notifications) -> None:
            barrier.wait()
            claims[name] = [c.id for c in n.worker.claim(7)]

        threads = [threading.Thread(target=claim, args=(k, v)) for k, v in
                   (("a", na), ("b", nb))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(claims["a"]) + len(claims["b"]) == 10
        assert not set(claims["a"]) & set(claims["b"])
        # Replica a dies holding its leases; once they run out, b takes its rows.
        assert nb.worker.claim(10) == []
        time.sleep(0.6)
        assert {c.id for c in nb.worker.claim(10)} == set(claims["a"]) | set(claims["b"])


def test_notify_test_command_sends_a_sample_through_each_channel(
        tmp_path: Path, receiver: HookReceiver) -> None:
    import subprocess
    import sys

    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    receiver.script("/broken", then=Reply(status=404))
    config = tmp_path / "clausewatch.toml"
    config.write_text(f"""
[store]
url = "sqlite:///{tmp_path / 'events.db'}"

[[channels]]
id = "hook"
type = "webhook"
url = "{receiver.endpoint('/hook')}"
secret_env = "{SECRET_ENV}"

[[channels]]
id = "mail"
type = "email"
host = "127.0.0.1"
port = {controller.port}
tls = "none"
from = "cw@example.org"
to = ["legal@example.org"]

[[channels]]
id = "broken"
type = "webhook"
url = "{receiver.endpoint('/broken')}"
secret_env = "{SECRET_ENV}"

[[subscriptions]]
id = "legal"
channels = ["hook", "mail"]

[[subscriptions]]
id = "ops"
channels = ["broken"]
""")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "daemon.cli", *args, "-c", str(config)],
                              capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, **ENVIRON})

    try:
        ok = cli("notify", "test", "legal")
        assert ok.returncode == 0, ok.stderr
        assert sorted(ok.stdout.split("\n")[:2]) == ["hook: sent", "mail: sent"]
        [hit] = receiver.delivered("/hook")
        assert hit.payload["type"].endswith("test")
        assert len(mailbox.messages) == 1
        broken = cli("notify", "test", "ops")
        assert broken.returncode == 1
        assert "broken: FAILED" in broken.stdout and "404" in broken.stdout
        unknown = cli("notify", "test", "nobody")
        assert unknown.returncode == 2 and "legal, ops" in unknown.stderr
    finally:
        controller.stop()
