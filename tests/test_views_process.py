"""A `check` pass's views projected by a process of their own: the same rows as projecting them
in the pass's process, started only when a capture brings a clause list, and a child that dies
costs no row."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import LOOPBACK_FETCH, PageServer
from test_projections_rebuild import rows
from test_service import CLAUSES, page

from config.settings import DocumentSettings, StoreSettings
from daemon.check import check_all
from daemon.service import ClauseWatch
from daemon.store import open_store
from daemon.views_process import ViewsProcess, wanted

DOCS = 6


class RecordingViewsProcess(ViewsProcess):
    """The real process, counting the times a pass asked it to start."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        super().start()


@dataclass
class Setup:
    """A service on a SQLite file, its settings and the documents it watches."""

    settings: StoreSettings
    data_dir: Path
    service: ClauseWatch
    docs: list[DocumentSettings]


@pytest.fixture
def on_sqlite(tmp_path: Path, page_server: PageServer) -> Iterator[Setup]:
    settings = StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}")
    service = ClauseWatch(open_store(settings, tmp_path / "data"))
    try:
        yield Setup(settings=settings, data_dir=tmp_path / "data", service=service,
                    docs=documents(page_server))
    finally:
        service.close()


def documents(page_server: PageServer) -> list[DocumentSettings]:
    return [DocumentSettings(id=f"example/doc-{n}", platform="Example", title=f"Doc {n}",
                             url=page_server.url(f"/doc-{n}"), select="main", robots=False)
            for n in range(DOCS)]


def serve(page_server: PageServer, clauses: list[str], noise: str) -> None:
    for n in range(DOCS):
        page_server.set(f"/doc-{n}", page([f"{c} (copy {n})" for c in clauses], noise))


@pytest.mark.parametrize("fork_server", [False, True], ids=["spawned", "fork-server"])
async def test_a_pass_projected_by_the_views_process_gives_the_rows_of_a_rebuild(
        store_settings: StoreSettings, tmp_path: Path, page_server: PageServer,
        fork_server: bool) -> None:
    docs = documents(page_server)
    store = open_store(store_settings, tmp_path / "data")
    service = ClauseWatch(store)
    try:
        passes = [(CLAUSES, "1"), (CLAUSES, "1"), (CLAUSES, "2"),  # baseline, 304, markup
                  ([*CLAUSES[:2], "We sell nothing.", CLAUSES[3]], "3"), (CLAUSES[1:], "4")]
        edits = 0
        for clauses, noise in passes:
            serve(page_server, clauses, noise)
            views = RecordingViewsProcess(store_settings, tmp_path / "data", poll_seconds=0.02,
                                          fork_server=fork_server)
            with views:
                outcomes = await check_all(service, LOOPBACK_FETCH, docs, views=views)
            kinds = {o.outcome for o in outcomes}
            edits += sum(o.changes for o in outcomes)
            # Spawned: started at the first capture with a clause list, and only then.
            # Forked by the fork server: at the first capture.
            assert views.starts == (1 if fork_server or kinds & {"baseline", "changed"}
                                    else 0), kinds
        assert {o.outcome for o in outcomes} == {"changed"}
        projected = rows(service)
        assert edits >= DOCS * 2 and len(projected["cw_changes"]) == edits
        service.views.rebuild()
        assert rows(service) == projected
    finally:
        service.close()


def _parent(pid: int) -> int:
    """A process's parent, from /proc."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("fork_server", [False, True], ids=["spawned", "fork-server"])
async def test_the_views_process_projects_what_the_pass_appended(
        on_sqlite: Setup, page_server: PageServer, fork_server: bool) -> None:
    service, store = on_sqlite.service, on_sqlite.service.store
    service.catch_up_after_save = False
    service.sync_documents(on_sqlite.docs)
    serve(page_server, CLAUSES, "1")
    for doc in on_sqlite.docs:
        service.record_fetch(doc, await _fetch(doc))
    # Its next look would be in a minute: what comes after its first catch-up is projected
    # by the last one, which `finish` asks for.
    with ViewsProcess(on_sqlite.settings, on_sqlite.data_dir, poll_seconds=60,
                      fork_server=fork_server) as views:
        views.start()
        assert views.wait_started()
        # Spawned by this process, or forked by the extraction workers' fork server.
        assert (_parent(views._process.pid) == os.getpid()) is not fork_server
        await _until(lambda: service.views.position() == store.max_notification_id())
        serve(page_server, CLAUSES[:3], "2")
        for doc in on_sqlite.docs:
            service.record_fetch(doc, await _fetch(doc))
        assert service.views.position() < store.max_notification_id()
        assert views.finish(timeout=60)
    # Everything, by the child: this process projected none of it.
    assert service.views.position() == store.max_notification_id()
    assert len(rows(service)["cw_changes"]) == DOCS


async def test_a_views_process_that_dies_costs_no_view_row(
        on_sqlite: Setup, page_server: PageServer) -> None:
    service = on_sqlite.service
    serve(page_server, CLAUSES, "1")
    with ViewsProcess(on_sqlite.settings, on_sqlite.data_dir) as views:
        views.start()
        assert views.wait_started()
        os.kill(views._process.pid, signal.SIGKILL)
        views._process.join(10)
        outcomes = await check_all(service, LOOPBACK_FETCH, on_sqlite.docs, views=views)
    assert {o.outcome for o in outcomes} == {"baseline"}
    assert service.views.position() == service.store.max_notification_id()
    projected = rows(service)
    assert len(projected["cw_clauses"]) == DOCS * (len(CLAUSES) + 1)  # and the heading
    service.views.rebuild()
    assert rows(service) == projected


@pytest.mark.parametrize("fork_server", [False, True], ids=["spawned", "fork-server"])
async def test_a_views_process_that_cannot_start_costs_no_capture(
        on_sqlite: Setup, page_server: PageServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, fork_server: bool) -> None:
    import multiprocessing.context

    def no_process(self: object) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    # No process to spare on this machine: starting fails as fork(2) would with EAGAIN.
    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", no_process)
    monkeypatch.setattr(multiprocessing.context.ForkServerProcess, "start", no_process)
    service = on_sqlite.service
    serve(page_server, CLAUSES, "1")
    with ViewsProcess(on_sqlite.settings, on_sqlite.data_dir, fork_server=fork_server) as views:
        outcomes = await check_all(service, LOOPBACK_FETCH, on_sqlite.docs, views=views)
    assert [o.outcome for o in outcomes] == ["baseline"] * DOCS
    assert views.started and "could not start the views process" in caplog.text
    assert service.views.position() == service.store.max_notification_id()
    assert len(rows(service)["cw_documents"]) == DOCS


def test_a_views_process_that_cannot_open_the_store_says_so_and_gives_way(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A directory where the events file should be: the child fails at once.
    (tmp_path / "events.db").mkdir()
    views = ViewsProcess(StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}"),
                         tmp_path / "data")
    views.start()
    assert views.finish(timeout=60) is False
    assert "views process exited with code 1" in caplog.text


def test_only_a_pass_over_many_documents_on_a_shared_store_gets_one(tmp_path: Path) -> None:
    sqlite = StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}")
    assert wanted(sqlite, 1000) and not wanted(sqlite, 3)
    assert wanted(StoreSettings(url="postgresql://127.0.0.1/test"), 1000)
    memory = StoreSettings(url="memory:")
    assert not wanted(memory, 1000)
    with pytest.raises(ValueError, match="cannot be read from another process"):
        ViewsProcess(memory, tmp_path)


def test_a_views_process_never_started_starts_nothing(tmp_path: Path) -> None:
    """A pass of 304s never starts the child: making its ViewsProcess starts no process
    either, not even multiprocessing's resource tracker (its stop event would)."""
    import subprocess
    import sys

    code = f"""
import multiprocessing.resource_tracker as tracker
from pathlib import Path
from config.settings import StoreSettings
from daemon.views_process import ViewsProcess
with ViewsProcess(StoreSettings(url="sqlite:///{tmp_path / 'events.db'}"), Path(".")) as views:
    assert views.finish(timeout=1) is False
print(tracker._resource_tracker._pid)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.split() == ["None"], done.stderr


def test_the_console_script_projects_a_large_check_in_its_views_process(
        tmp_path: Path, page_server: PageServer) -> None:
    """`clausewatch check` as installed, over enough documents to start the child: the child
    comes up from the console script (spawn re-imports it), finishes without a warning, and
    the views answer every change. (The check's own process gets one: see the next test.)"""
    import json
    import subprocess
    import sys

    from daemon.views_process import MIN_DOCUMENTS

    count = MIN_DOCUMENTS
    entries = "".join(f"""
[[documents]]
id = "example/doc-{n}"
platform = "Example"
title = "Doc {n}"
url = "{page_server.url(f'/doc-{n}')}"
select = "main"
""" for n in range(count))
    config = tmp_path / "clausewatch.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n\n[fetch]\nper_host_delay = 0\n'
                      f"retries = 0\nrobots = false\n{entries}")
    script = Path(sys.executable).parent / "clausewatch"

    def clausewatch(*args: str) -> tuple[Any, str]:
        done = subprocess.run([str(script), *args, "-c", str(config), "--json"],
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout), done.stderr

    for clauses, noise in ((CLAUSES, "1"), (CLAUSES[1:], "2")):
        for n in range(count):
            page_server.set(f"/doc-{n}", page([f"{c} (copy {n})" for c in clauses], noise))
        outcomes, said = clausewatch("check")
        # check prints warnings only (no [log] set-up): a child that failed would say so.
        assert "views process" not in said, said
    assert [o["outcome"] for o in outcomes] == ["changed"] * count
    changes, _ = clausewatch("changes")
    assert len(changes) == count and {c["kind"] for c in changes} == {"removed"}
    assert {d["changes"] for d in clausewatch("documents")[0]} == {1}


def test_the_check_command_gets_a_views_process_for_many_documents(tmp_path: Path) -> None:
    from config.settings import Settings
    from daemon.cli import _views_process
    from daemon.views_process import MIN_DOCUMENTS

    sqlite = Settings(path=tmp_path / "clausewatch.toml", data_dir=tmp_path, documents=(),
                      store=StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}"))
    with _views_process(sqlite, MIN_DOCUMENTS) as views:
        assert isinstance(views, ViewsProcess) and views.store == sqlite.store
        assert views.data_dir == tmp_path and not views.started
    with _views_process(sqlite, 1) as views:
        assert views is None


async def _fetch(doc: DocumentSettings) -> Any:
    from daemon.check import client_session
    from daemon.fetcher import Fetcher

    async with client_session(LOOPBACK_FETCH) as session:
        return await Fetcher(session, LOOPBACK_FETCH).fetch(doc.url, robots=False)


async def _until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_starting_the_views_process_never_holds_the_caller(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork server still importing holds whoever starts a process from it: the pass's event
    loop must not be the one waiting."""
    import multiprocessing.context
    import threading

    entered, release, left = threading.Event(), threading.Event(), threading.Event()

    def slow_start(self: object) -> None:
        entered.set()
        try:
            release.wait(30)
            raise BlockingIOError(11, "Resource temporarily unavailable")
        finally:
            left.set()

    monkeypatch.setattr(multiprocessing.context.ForkServerProcess, "start", slow_start)
    views = ViewsProcess(StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}"),
                         tmp_path / "data", fork_server=True)
    views.start()  # returns while the child's start is still held
    assert not left.is_set() and entered.wait(30) and views.started
    release.set()
    assert views.wait_started() is False and views.finish(timeout=5) is False
