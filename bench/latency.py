"""Alert latency: a text change served -> ClauseChanged stored -> signed webhook received.

A daemon watches M documents (baselined first) with a short interval and a webhook channel
pointing at a receiver on 127.0.0.1. One document at a time gets a real text change; the page
server records when the changed page is first sent, the daemon's JSON log when the capture
was stored, the receiver when the webhook arrived. Measured from the moment the changed page
was served, so the poll interval (the wait before the page is fetched) is excluded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import statistics
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import contenders
import daemon_proc
import pages
from aiohttp import web

SECRET_ENV = "CLAUSEWATCH_BENCH_HOOK_SECRET"


class Receiver:
    """An aiohttp server in a thread that records when each document's webhook arrived."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.deliveries = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="webhook-receiver")

    async def _handle(self, request: web.Request) -> web.Response:
        at = time.time()
        body = await request.json()
        self.deliveries += 1
        for document in body.get("documents", []):
            self.received.setdefault(document["id"], at)
        return web.Response(status=204)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    def __enter__(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def _stored_times(log_path: Path) -> dict[str, float]:
    """When each document's changed capture was stored, from the daemon's JSON log."""
    stored: dict[str, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("outcome") == "changed" and "document" in record:
            at = datetime.fromisoformat(record["ts"]).timestamp()
            stored.setdefault(record["document"], at)
    return stored


def _quantiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50_s": None, "p90_s": None, "p99_s": None, "max_s": None,
                "samples_s": []}
    ordered = sorted(values)

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

    return {"n": len(values), "p50_s": round(statistics.median(ordered), 3), "p90_s": q(0.9),
            "p99_s": q(0.99), "max_s": round(ordered[-1], 3),
            "samples_s": [round(v, 3) for v in ordered]}


def run(args: argparse.Namespace, workdir: Path, *, log: Callable[[str], None],
        server: Any) -> dict[str, Any]:
    """The latency section of bench/perf.py (`server` is the running page server)."""
    docs = args.latency_docs
    changes = min(args.latency_changes, docs)
    triples = pages.load_triples(args.corpus)
    workdir.mkdir(parents=True, exist_ok=True)
    tool = contenders.ClauseWatchTool(workdir)
    tool.setup(server.url, docs, triples)
    server.phase("base")
    log(f"latency: baseline pass over {docs} documents")
    tool.run_pass("baseline")
    result: dict[str, Any] = {"docs": docs, "changes": changes,
                              "interval_s": args.latency_interval}
    with Receiver() as receiver:
        port = daemon_proc.free_port()
        config = workdir / "latency.toml"
        hooks = "\n".join([
            "[[channels]]", 'id = "bench-hook"', 'type = "webhook"',
            f'url = "http://127.0.0.1:{receiver.port}/hook"', f'secret_env = "{SECRET_ENV}"',
            "", "[[subscriptions]]", 'id = "bench"', 'channels = ["bench-hook"]',
            'mode = "immediate"', ""])
        config.write_text(contenders.write_config(
            workdir, server.url, docs, triples, interval=args.latency_interval, jitter=0.0,
            listen=f"127.0.0.1:{port}", log_level="info", log_format="json", extra=hooks))
        secret = "whsec_" + base64.b64encode(b"clausewatch-bench-secret-32bytes").decode()
        import os

        os.environ[SECRET_ENV] = secret
        daemon = daemon_proc.DaemonProcess(config=config, port=port,
                                           log_path=workdir / "latency-daemon.log")
        daemon.start()
        try:
            # Every document's first poll falls somewhere in the first interval.
            time.sleep(args.latency_interval + 2)
            order = list(range(docs))
            random.Random(7).shuffle(order)
            chosen = order[:changes]
            log(f"latency: {changes} text changes, one every {args.latency_spacing} s")
            for doc in chosen:
                server.call("POST", f"/_flip?doc={doc}")
                time.sleep(args.latency_spacing)
            deadline = time.monotonic() + 2 * args.latency_interval + 60
            wanted = {pages.doc_id(d) for d in chosen}
            while time.monotonic() < deadline and not wanted <= set(receiver.received):
                time.sleep(0.5)
        finally:
            daemon.stop()
        served = {pages.doc_id(int(k)): v for k, v in server.call("GET", "/_served").items()}
    stored = _stored_times(daemon.log_path)
    to_stored = [stored[d] - served[d] for d in wanted if d in stored and d in served]
    to_webhook = [receiver.received[d] - served[d] for d in wanted
                  if d in receiver.received and d in served]
    result.update({
        "served": len(served), "stored": len(to_stored), "webhooks": len(to_webhook),
        "webhook_deliveries": receiver.deliveries,
        "served_to_stored": _quantiles(to_stored),
        "served_to_webhook": _quantiles(to_webhook),
    })
    if not to_webhook:
        result["note"] = ("no webhook arrived: is delivery wired into the daemon? see "
                          f"{daemon.log_path}")
    log(f"latency: served->stored {result['served_to_stored']}, "
        f"served->webhook {result['served_to_webhook']}")
    return result
