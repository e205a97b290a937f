"""The daemon end to end: a real `clausewatch run` process, real page servers, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from config.settings import load_settings
from daemon.runtime import Daemon

pytestmark = pytest.mark.slow
CLAUSEWATCH = [sys.executable, "-m", "daemon.cli"]
REPO = Path(__file__).resolve().parent.parent


def page(*paragraphs: str) -> str:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return f"<html><body><nav>menu {time.monotonic()}</nav><main>{body}</main></body></html>"


@dataclass
class Behaviour:
    """What one path answers: a body, or a status, after an optional delay."""

    body: str = ""
    status: int = 200
    delay: float = 0.0


@dataclass
class Pages:
    """A real page server on 127.0.0.1 whose answers the test changes as it goes."""

    routes: dict[str, Behaviour] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    finished: Counter[str] = field(default_factory=Counter)
    server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        self.hits[path] += 1
        behaviour = self.routes.get(path, Behaviour(status=404))
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        self.finished[path] += 1
        if behaviour.status != 200:
            return web.Response(status=behaviour.status, text="error")
        return web.Response(text=behaviour.body, content_type="text/html")

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))


@pytest.fixture
async def pages() -> AsyncIterator[Pages]:
    p = Pages()
    app = web.Application()
    app.router.add_get("/{tail:.*}", p.handle)
    p.server = TestServer(app, host="127.0.0.1")
    await p.server.start_server()
    yield p
    await p.server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, port: int, documents: list[tuple[str, str]], *,
                 interval: str = "1s", extra: str = "") -> None:
    lines = [
        f'data_dir = "{path.parent / "data"}"',
        "[scheduler]", f'default_interval = "{interval}"', 'jitter = "0s"', "workers = 3",
        'drain_timeout = "10s"',
        "[fetch]", 'timeout = "2s"', "retries = 0", 'per_host_delay = "0s"', "robots = false",
        "per_host_concurrency = 8",
        "[http]", f'listen = "127.0.0.1:{port}"',
        extra,
    ]
    for doc_id, url in documents:
        lines += ["[[documents]]", f'id = "{doc_id}"', 'platform = "Example"',
                  f'title = "{doc_id}"', f'url = "{url}"', 'select = "main"']
    path.write_text("\n".join(lines) + "\n")


class Running:
    """A `clausewatch run` subprocess and a client for its API."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    async def get(self, path: str) -> tuple[int, object]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.port}{path}") as response:
                if response.content_type == "application/json":
                    return response.status, await response.json()
                return response.status, await response.text()

    async def until(self, predicate: Callable[[], object], timeout: float = 15.0,
                    what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            if self.process.returncode is not None:
                raise AssertionError(f"daemon exited ({self.process.returncode}) waiting for "
                                     f"{what}:\n{self.log.read_text()}")
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log.read_text()[-3000:]}")

    async def ready(self) -> None:
        async def is_ready() -> bool:
            try:
                status, _ = await self.get("/readyz")
            except aiohttp.ClientError:
                return False
            return status == 200

        await self.until(is_ready, what="/readyz")

    async def changes(self, document: str) -> list[dict[str, object]]:
        status, body = await self.get(f"/api/v1/changes?document={document}")
        assert status == 200, body
        assert isinstance(body, dict)
        return list(body["items"])

    async def document(self, document: str) -> dict[str, object]:
        status, body = await self.get(f"/api/v1/documents/{document}")
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), timeout)


async def launch(config: Path, port: int, env: dict[str, str] | None = None) -> Running:
    log = config.parent / "daemon.log"
    handle = log.open("wb")
    process = await asyncio.create_subprocess_exec(
        *CLAUSEWATCH, "run", "-c", str(config), cwd=str(REPO),
        stdout=handle, stderr=handle, env={**os.environ, **(env or {})})
    handle.close()
    running = Running(process, port, log)
    return running


@pytest.fixture
async def daemons() -> AsyncIterator[list[Running]]:
    started: list[Running] = []
    yield started
    for running in started:
        if running.process.returncode is None:
            running.process.kill()
            await running.process.wait()


async def test_a_change_reaches_the_api_within_one_interval_and_faults_stall_nothing(
        tmp_path: Path, pages: Pages, daemons: list[Running]) -> None:
    pages.routes["/policy"] = Behaviour(body=page("We collect your email.", "We keep logs."))
    pages.routes["/hangs"] = Behaviour(body=page("slow"), delay=30)
    pages.routes["/broken"] = Behaviour(status=500)
    pages.routes["/gone"] = Behaviour(status=404)
    port = free_port()
    config = tmp_path / "clausewatch.toml"
    write_config(config, port, [("acme/policy", pages.url("/policy")),
                                ("acme/hangs", pages.url("/hangs")),
                                ("acme/broken", pages.url("/broken")),
                                ("acme/gone", pages.url("/gone"))])
    daemon = await launch(config, port)
    daemons.append(daemon)
    await daemon.ready()

    # The baseline is recorded, then the text changes on the server.
    await daemon.until(lambda: pages.hits["/policy"] >= 2, what="two polls of the policy")
    pages.routes["/policy"] = Behaviour(
        body=page("We collect your email and phone number.", "We keep logs."))
    changed_at = time.monotonic()

    async def has_change() -> bool:
        return bool(await daemon.changes("acme/policy"))

    await daemon.until(has_change, timeout=10, what="the change in /api/v1/changes")
    took = time.monotonic() - changed_at
    changes = await daemon.changes("acme/policy")
    assert [c["kind"] for c in changes] == ["modified"]
    assert changes[0]["after"] == "We collect your email and phone number."
    assert took < 3.5, f"the change took {took:.1f}s to show with a 1s interval"

    # The hanging, failing and missing pages were recorded as failures meanwhile.
    broken = await daemon.document("acme/broken")
    gone = await daemon.document("acme/gone")
    assert broken["failures"] >= 1 and broken["status"] == "failing"
    assert gone["failures"] >= 1 and "404" in str(gone["last_error"])
    await daemon.until(lambda: pages.finished["/hangs"] == 0 and pages.hits["/hangs"] >= 1,
                       what="the hanging page to be requested")
    policy = await daemon.document("acme/policy")
    assert policy["captures"] >= 3, "the hanging page held up the healthy one"

    # /metrics parses and carries the crawl-health series.
    status, text = await daemon.get("/metrics")
    assert status == 200 and isinstance(text, str)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("clausewatch_fetches", "clausewatch_fetch_duration_seconds",
                 "clausewatch_captures", "clausewatch_clause_changes",
                 "clausewatch_document_consecutive_failures", "clausewatch_queue_depth",
                 "clausewatch_workers_busy", "clausewatch_scheduler_lag_seconds",
                 "clausewatch_store_append_duration_seconds", "clausewatch_build_info",
                 "clausewatch_http_responses", "clausewatch_projection_lag_events"):
        assert name in families, f"{name} missing from /metrics"
    captures = {s.labels["outcome"]: s.value for s in families["clausewatch_captures"].samples
                if s.name == "clausewatch_captures_total"}
    assert captures.get("changed", 0) >= 2  # the baseline and the edit
    assert captures.get("failed", 0) >= 2
    kinds = {s.labels["kind"]: s.value for s in families["clausewatch_clause_changes"].samples
             if s.name == "clausewatch_clause_changes_total"}
    assert kinds == {"modified": 1.0}
    assert await daemon.stop() == 0


async def test_sighup_adds_documents_and_refuses_a_broken_config(
        tmp_path: Path, pages: Pages, daemons: list[Running]) -> None:
    pages.routes["/a"] = Behaviour(body=page("Clause A."))
    pages.routes["/b"] = Behaviour(body=page("Clause B."))
    port = free_port()
    config = tmp_path / "clausewatch.toml"
    write_config(config, port, [("acme/a", pages.url("/a"))])
    daemon = await launch(config, port)
    daemons.append(daemon)
    await daemon.ready()
    await daemon.until(lambda: pages.hits["/a"] >= 1, what="the first poll")
    assert pages.hits["/b"] == 0

    write_config(config, port, [("acme/a", pages.url("/a")), ("acme/b", pages.url("/b"))])
    daemon.process.send_signal(signal.SIGHUP)
    await daemon.until(lambda: pages.hits["/b"] >= 1, what="the added document's first poll")
    assert (await daemon.document("acme/b"))["title"] == "acme/b"

    config.write_text(config.read_text() + "\n[scheduler]\nworkers = 'many'\n")
    daemon.process.send_signal(signal.SIGHUP)
    await daemon.until(lambda: "reload refused" in daemon.log.read_text(),
                       what="the broken config to be refused")
    hits = pages.hits["/a"] + pages.hits["/b"]
    await daemon.until(lambda: pages.hits["/a"] + pages.hits["/b"] >= hits + 2,
                       what="polling to go on with the old config")
    assert daemon.process.returncode is None
    assert await daemon.stop() == 0


async def test_sigterm_mid_poll_drains_and_exits_0(
        tmp_path: Path, pages: Pages, daemons: list[Running]) -> None:
    pages.routes["/slow"] = Behaviour(body=page("A slow but fine page."), delay=1.5)
    port = free_port()
    config = tmp_path / "clausewatch.toml"
    write_config(config, port, [("acme/slow", pages.url("/slow"))], interval="1s")
    daemon = await launch(config, port)
    daemons.append(daemon)
    await daemon.ready()
    hits_before = pages.hits["/slow"]
    await daemon.until(lambda: pages.hits["/slow"] > hits_before
                       and pages.finished["/slow"] < pages.hits["/slow"],
                       what="a poll in flight")
    assert await daemon.stop(signal.SIGTERM) == 0
    assert pages.finished["/slow"] == pages.hits["/slow"], "the in-flight poll was cut short"
    log = daemon.log.read_text()
    assert "draining" in log and "stopped cleanly" in log

    # The drained poll's capture is in the store.
    from daemon.service import ClauseWatch
    from daemon.store import open_store

    settings = load_settings(config)
    store = open_store(settings.store, settings.data_dir)
    try:
        record = ClauseWatch(store).document("acme/slow")
    finally:
        store.close()
    assert record["captures"] == pages.finished["/slow"]


async def test_sd_notify_ready_watchdog_reloading_stopping(
        tmp_path: Path, pages: Pages, daemons: list[Running]) -> None:
    pages.routes["/a"] = Behaviour(body=page("Clause A."))
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)
    messages: list[str] = []

    def drain() -> None:
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                return

    port = free_port()
    config = tmp_path / "clausewatch.toml"
    write_config(config, port, [("acme/a", pages.url("/a"))])
    daemon = await launch(config, port, env={"NOTIFY_SOCKET": str(sock_path),
                                             "WATCHDOG_USEC": "400000"})
    daemons.append(daemon)
    try:
        await daemon.until(lambda: (drain(), any("READY=1" in m for m in messages))[1],
                           what="READY=1")
        await daemon.until(lambda: (drain(), sum("WATCHDOG=1" in m for m in messages))[1] >= 3,
                           what="three watchdog pings")
        daemon.process.send_signal(signal.SIGHUP)
        await daemon.until(lambda: (drain(), any("RELOADING=1" in m for m in messages))[1],
                           what="RELOADING=1")
        assert await daemon.stop() == 0
        drain()
    finally:
        sock.close()
    assert any(m.startswith("STOPPING=1") for m in messages)
    ready_index = next(i for i, m in enumerate(messages) if "READY=1" in m)
    stopping_index = next(i for i, m in enumerate(messages) if "STOPPING=1" in m)
    assert ready_index < stopping_index


async def test_a_crashed_internal_loop_exits_non_zero(tmp_path: Path, pages: Pages) -> None:
    pages.routes["/a"] = Behaviour(body=page("Clause A."))
    config = tmp_path / "clausewatch.toml"
    write_config(config, free_port(), [("acme/a", pages.url("/a"))])
    daemon = Daemon(load_settings(config), environ={})

    async def broken_maintenance() -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("the views database went away")

    daemon._maintenance = broken_maintenance  # type: ignore[method-assign]
    code = await asyncio.wait_for(daemon.run(), 20)
    assert code == 1


async def test_a_change_is_delivered_as_a_signed_webhook(
        tmp_path: Path, pages: Pages, daemons: list[Running]) -> None:
    import base64
    import json

    from standardwebhooks.webhooks import Webhook

    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    received: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), dict(request.headers)))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    receiver = TestServer(app, host="127.0.0.1")
    await receiver.start_server()
    try:
        pages.routes["/policy"] = Behaviour(body=page("We collect your email.", "We keep logs."))
        port = free_port()
        config = tmp_path / "clausewatch.toml"
        write_config(config, port, [("acme/policy", pages.url("/policy"))], extra="\n".join([
            "[[channels]]", 'id = "legal-hook"', 'type = "webhook"',
            f'url = "{receiver.make_url("/hook")}"', 'secret_env = "TEST_HOOK_SECRET"',
            "[[subscriptions]]", 'id = "legal-team"', 'channels = ["legal-hook"]',
            'platforms = ["Example"]', 'mode = "immediate"',
        ]))
        daemon = await launch(config, port, env={"TEST_HOOK_SECRET": secret})
        daemons.append(daemon)
        await daemon.ready()
        await daemon.until(lambda: pages.hits["/policy"] >= 2, what="the baseline")
        assert received == [], "a baseline is not an alert"
        pages.routes["/policy"] = Behaviour(
            body=page("We collect your email and <b>phone</b> number.", "We keep logs."))
        await daemon.until(lambda: received, timeout=10, what="the webhook")
        body, headers = received[0]
        payload = Webhook(secret).verify(body, headers)
        assert payload["type"] == "clause.changes"
        change = payload["documents"][0]["changes"][0]
        assert change["kind"] == "modified"
        assert change["after"] == "We collect your email and phone number."
        status, deliveries = await daemon.get("/api/v1/deliveries")
        assert status == 200 and isinstance(deliveries, dict)
        assert any(d["status"] == "delivered" for d in deliveries["deliveries"])
        assert await daemon.stop() == 0
        assert len({h["webhook-id"] for _, h in received}) == len(received) == 1
        assert json.loads(body)["id"] == headers["webhook-id"]
    finally:
        await receiver.close()
