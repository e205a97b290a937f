"""Crash tests: a delivering process killed with SIGKILL at the worst moments, then restarted.

The process (tests/helpers/notify_proc.py) shares nothing with the test but the store and
the webhook receiver. Each subscription must get each alert, and no receiver may see one
webhook-id with two different bodies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.notify_kit import HANG, HookReceiver, Reply, opened, sqlite_store, sync_wait_for

from config.settings import StoreSettings
from daemon.outbox import notice_id
from daemon.store import Store

TESTS = Path(__file__).resolve().parent
SUBSCRIPTIONS = 4


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    if request.param == "sqlite":
        return sqlite_store(tmp_path)
    return request.getfixturevalue("pg_url").store()


class Daemon:
    """Starts the stand-in process and kills it with SIGKILL."""

    def __init__(self, spec: Path) -> None:
        self.spec = spec
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
        proc = subprocess.Popen([sys.executable, "-m", "helpers.notify_proc", str(self.spec),
                                 *args], cwd=TESTS, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def run(self, *args: str) -> tuple[int, str]:
        proc = self.start(*args)
        out, _ = proc.communicate(timeout=60)
        return proc.returncode, out.decode()

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc)


@pytest.fixture
def receiver() -> Iterator[HookReceiver]:
    with HookReceiver() as r:
        yield r


def test_sigkill_between_capture_and_delivery_and_mid_delivery_loses_nothing(
        tmp_path: Path, store_settings: StoreSettings, receiver: HookReceiver) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"store_url": store_settings.url, "schema": store_settings.schema,
                                "data_dir": str(tmp_path), "receiver": receiver.url,
                                "subscriptions": SUBSCRIPTIONS, "lease": 2.0}))
    daemon = Daemon(spec)
    paths = [f"/hook/s{i}" for i in range(SUBSCRIPTIONS)]
    try:
        code, out = daemon.run("--init")
        assert code == 0, out

        # 1. Three captures are saved, then the process dies before the outbox saw them.
        code, out = daemon.run("--capture", "3", "--crash-after-capture")
        assert code == -signal.SIGKILL, out
        assert "captured 3" in out
        assert receiver.hits == []

        # 2. A new process decides and sends them, but every receiver hangs: killed while
        #    its requests are in flight.
        for path in paths:
            receiver.script(path, then=HANG)
        proc = daemon.start()
        sync_wait_for(lambda: len(receiver.hits) >= 3 * SUBSCRIPTIONS, 30)
        daemon.kill(proc)
        assert receiver.delivered() == []

        # 3. Receivers answer again, except that s0 accepts its next two requests and then
        #    sleeps past the sender's timeout. Two more captures, and another SIGKILL once
        #    some of the alerts have arrived.
        for path in paths:
            receiver.script(path, then=Reply())
        receiver.script(paths[0], Reply(delay=2.0), Reply(delay=2.0))
        proc = daemon.start("--capture", "2")
        sync_wait_for(lambda: len(receiver.delivered()) >= 6, 30)
        daemon.kill(proc)

        # 4. The last restart finishes the work.
        proc = daemon.start()
        expected = _expected_notices(store_settings, tmp_path)
        assert len(expected) == 5 * SUBSCRIPTIONS
        sync_wait_for(lambda: expected <= {(h.path, h.webhook_id)
                                           for h in receiver.delivered()}, 30)
        with opened(store_settings, tmp_path) as store:
            # The store catches up with what the receivers saw (the last 2xx may still be
            # on its way into the table).
            sync_wait_for(lambda: _statuses(store) == [("delivered", 5 * SUBSCRIPTIONS)], 10)
        daemon.kill(proc)
    finally:
        daemon.stop_all()

    # Every subscription got every alert, nothing else arrived, every signature verified.
    assert receiver.invalid == []
    seen = {(h.path, h.webhook_id) for h in receiver.hits}
    assert seen == expected
    # Re-sent after the crashes, never changed: one body per webhook-id.
    bodies: dict[str, set[bytes]] = defaultdict(set)
    for hit in receiver.hits:
        bodies[hit.webhook_id].add(hit.body)
    assert all(len(b) == 1 for b in bodies.values())
    # The crashes did cause re-sends (otherwise this test proved little).
    assert len(receiver.hits) > len(expected)


def _statuses(store: Store) -> list[tuple[str, int]]:
    rows = store.db.query("SELECT status, COUNT(*) AS n FROM cw_deliveries GROUP BY status")
    return [(r["status"], int(r["n"])) for r in rows]


def _expected_notices(store_settings: StoreSettings, tmp: Path) -> set[tuple[str, Any]]:
    with opened(store_settings, tmp) as store:
        rows = store.db.query("SELECT event_id FROM cw_captures WHERE outcome = 'changed'")
    return {(f"/hook/s{i}", notice_id(r["event_id"], f"s{i}")) for r in rows
            for i in range(SUBSCRIPTIONS)}
