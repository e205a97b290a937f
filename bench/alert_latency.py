"""Alert latency: a clause change captured → the signed webhook received, 100 subscribers.

    python bench/alert_latency.py [--subscribers 100] [--rounds 20] [--store URL --schema S]

Every subscriber has its own webhook channel on one receiver, a process of its own on
127.0.0.1. Each round records one real changed capture through the application service
(event store append, read views, outbox decision) and times, per subscriber, how long the
alert took to arrive: once with the runtime's nudge after the capture, once relying on the
idle poll alone. Prints p50/p90/p99/max; figures, not asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from aiohttp import web

from config.settings import (
    ChannelSettings,
    DocumentSettings,
    Settings,
    StoreSettings,
    SubscriptionSettings,
)
from daemon.fetcher import FetchResult
from daemon.metrics import Metrics
from daemon.notifications import Notifications
from daemon.service import ClauseWatch
from daemon.store import open_store

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
DOC = DocumentSettings(id="acme/privacy", platform="Acme", title="Privacy Policy",
                       url="https://acme.test/privacy")


class Receiver:
    """Records the arrival time of every webhook-id; runs in a process of its own, so the
    sender's figures do not include the receiver's share of one interpreter."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[float]] = {}

    async def hook(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrivals.setdefault(request.headers["webhook-id"], []).append(time.time())
        return web.Response(text="ok")

    async def report(self, request: web.Request) -> web.Response:
        return web.json_response(self.arrivals)

    async def count(self, request: web.Request) -> web.Response:
        return web.Response(text=str(len(self.arrivals)))

    async def serve(self) -> None:
        app = web.Application()
        app.router.add_get("/_arrivals", self.report)
        app.router.add_get("/_count", self.count)
        app.router.add_post("/{tail:.*}", self.hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(f"PORT {runner.addresses[0][1]}", flush=True)
        await asyncio.Event().wait()


class ReceiverProcess:
    """The receiver in a child process, asked over HTTP what arrived."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    async def count(self, session: aiohttp.ClientSession) -> int:
        async with session.get(f"{self.url}/_count") as response:
            return int(await response.text())

    async def arrivals(self, session: aiohttp.ClientSession) -> dict[str, list[float]]:
        async with session.get(f"{self.url}/_arrivals") as response:
            return dict(await response.json())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def clauses(n: int, revision: int) -> bytes:
    text = [f"Section {i}. We collect information of kind {i} and keep it for {i + 1} "
            "months." for i in range(40)]
    text[revision % 40] += f" Amended in revision {revision}."
    return "\n\n".join(text).encode()


async def run(subscribers: int, rounds: int, store: StoreSettings, data_dir: Path) -> None:
    receiver = ReceiverProcess()
    try:
        await _run(receiver, subscribers, rounds, store, data_dir)
    finally:
        receiver.stop()


async def _run(receiver: ReceiverProcess, subscribers: int, rounds: int,
               store_settings: StoreSettings, data_dir: Path) -> None:
    channels = tuple(ChannelSettings(id=f"hook-{i}", type="webhook",
                                     url=f"{receiver.url}/hook/{i}", secret_env="BENCH_SECRET")
                     for i in range(subscribers))
    subs = tuple(SubscriptionSettings(id=f"sub-{i}", channels=(f"hook-{i}",))
                 for i in range(subscribers))
    settings = Settings(path=data_dir / "bench.toml", data_dir=data_dir, store=store_settings,
                        documents=(DOC,), channels=channels, subscriptions=subs)
    store = open_store(store_settings, data_dir)
    service = ClauseWatch(store)
    service.sync_documents([DOC])
    revision = 0

    def capture() -> float:
        nonlocal revision
        revision += 1
        started = time.time()
        service.record_fetch(DOC, FetchResult(
            requested_url=DOC.url, final_url=DOC.url, status=200,
            fetched_at=datetime.fromtimestamp(started, UTC), body=clauses(40, revision),
            content_type="text/plain"))
        return started

    await asyncio.to_thread(capture)  # the baseline
    metrics = Metrics()
    notifications = Notifications(store, settings, metrics, {"BENCH_SECRET": SECRET},
                                  concurrency=64)
    stop = asyncio.Event()
    async with notifications, aiohttp.ClientSession() as probe:
        task = asyncio.create_task(notifications.run(stop))
        for mode in ("nudge", "poll only"):
            latencies: list[float] = []
            for _ in range(rounds):
                known = set(await receiver.arrivals(probe))
                started = await asyncio.to_thread(capture)
                if mode == "nudge":
                    notifications.nudge()
                target = len(known) + subscribers
                while await receiver.count(probe) < target:
                    await asyncio.sleep(0.01)
                latencies += [v[0] - started for k, v in (await receiver.arrivals(probe)).items()
                              if k not in known]
                await asyncio.sleep(0.05)
            ms = [v * 1000 for v in latencies]
            print(f"{mode:9}  {subscribers} subscribers x {rounds} captures = {len(ms)} alerts:"
                  f"  p50 {percentile(ms, 0.5):6.1f} ms  p90 {percentile(ms, 0.9):6.1f} ms"
                  f"  p99 {percentile(ms, 0.99):6.1f} ms  max {max(ms):6.1f} ms"
                  f"  mean {statistics.fmean(ms):6.1f} ms")
        stop.set()
        await task
        arrivals = await receiver.arrivals(probe)
    histogram = metrics.registry.get_sample_value(
        "clausewatch_delivery_latency_seconds_sum", {"channel": "hook-0"})
    duplicates = sum(len(v) - 1 for v in arrivals.values())
    print(f"store {store_settings.url.split('@')[-1]}; duplicate deliveries: {duplicates}; "
          f"hook-0 mean capture-to-recorded latency from the metric: "
          f"{(histogram or 0) / (2 * rounds) * 1000:.1f} ms")
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--store", help="a postgresql:// URL (default: SQLite in a temp dir)")
    parser.add_argument("--schema", help="the PostgreSQL schema to use (created if missing)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(Receiver().serve())
        return
    with tempfile.TemporaryDirectory() as tmp:
        store = StoreSettings(url=args.store or f"sqlite:///{Path(tmp) / 'events.db'}",
                              schema=args.schema)
        asyncio.run(run(args.subscribers, args.rounds, store, Path(tmp)))


if __name__ == "__main__":
    main()
