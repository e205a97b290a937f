"""The read views caught up in a process of their own while a `check` pass records.

A pass's process holds the GIL most of the time it records; projecting the captures it
appended into the views (clause rows, change rows) used to come after the last poll, alone on
one core. Here a child process follows the event log as it grows and projects it on the other
core, and the pass only waits for the child's last batch at its end.

The child is one more consumer of the log: each batch and the views' position are written in
one transaction, and a batch is applied only past the position it finds there (see
Views._catch_up), so the parent can always catch up itself from wherever the child stopped. A
child that fails to start, dies or outlives its deadline costs speed, never a view row.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any, Self

from config.settings import StoreSettings

log = logging.getLogger("clausewatch.views")

# How often the child looks for new events while the pass runs.
POLL_SECONDS = 0.1
# Below this many documents a pass is over before a child has started (~0.3 s of imports).
MIN_DOCUMENTS = 50
# How long `finish` waits for the child's last catch-up before the caller does it itself.
FINISH_SECONDS = 600.0


def wanted(store: StoreSettings, documents: int) -> bool:
    """True if a pass over `documents` documents on this store gains from a views process."""
    return documents >= MIN_DOCUMENTS and store.shared


class ViewsProcess:
    """A child process that keeps the views caught up until `finish`."""

    def __init__(self, store: StoreSettings, data_dir: Path, *,
                 poll_seconds: float = POLL_SECONDS, fork_server: bool = False) -> None:
        """`fork_server`: fork the child from the extraction workers' fork server (for a
        pass whose pages workers read: it runs already, or is about to), which has the
        store's modules imported; a spawned interpreter imports them itself, ~0.15 s of CPU
        in the busiest part of a pass."""
        if not store.shared:
            raise ValueError(f"the store {store.url!r} cannot be read from another process")
        self.store = store
        self.data_dir = data_dir
        self.poll_seconds = poll_seconds
        self.fork_server = fork_server
        self._stop: Any = None
        self._process: Any = None
        self._started = False
        self._starting: threading.Thread | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def started(self) -> bool:
        """True once `start` ran, whether or not the child came up."""
        return self._started

    def start(self) -> None:
        """Start following the log, unless asked already. Returns at once: the child is
        started by a thread of its own (a fork server still importing would otherwise hold
        the caller, a pass's event loop, until it is ready: 0.1-0.3 s). A child that cannot
        be started is logged, never raised: the pass catches up itself at its end."""
        if self._started:
            return
        self._started = True
        self._starting = threading.Thread(target=self._start, name="views-start", daemon=True)
        self._starting.start()

    def wait_started(self) -> bool:
        """Wait for `start`'s thread; True if the child was started (and not stopped)."""
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.join()
        return self._process is not None

    def _start(self) -> None:
        # A clean process (spawned, or forked from the fork server), not a fork of one with
        # threads and open databases. The event is made here, not before: it starts
        # multiprocessing's resource tracker (a process of its own), which a pass that never
        # starts the child should not pay for.
        context: Any = multiprocessing.get_context("spawn")
        if self.fork_server:
            from daemon.extraction import fork_server_context

            context = fork_server_context()
        self._stop = context.Event()
        process = context.Process(
            target=_follow, args=(self.store, self.data_dir, self._stop, self.poll_seconds),
            name="clausewatch-views", daemon=True)
        try:
            process.start()
        except OSError as exc:  # no process to spare (EAGAIN, ENOMEM, EMFILE): slower, not broken
            log.warning("could not start the views process (%s: %s); this process catches "
                        "up at the end of the pass", type(exc).__name__, exc)
            return
        self._process = process

    def finish(self, timeout: float = FINISH_SECONDS) -> bool:
        """Ask the child to catch up to the end of the log and stop; True if it did within
        `timeout` seconds (the caller catches up itself otherwise)."""
        self.wait_started()
        process = self._process
        if process is None:
            return False
        self._stop.set()
        process.join(timeout)
        if process.is_alive():
            log.warning("the views process was still catching up after %.0f s: stopped; "
                        "this process catches up instead", timeout)
            self.close()
            return False
        self._process = None
        if process.exitcode != 0:
            log.warning("the views process exited with code %s; this process catches up "
                        "instead", process.exitcode)
            return False
        return True

    def close(self) -> None:
        """Stop the child now if it still runs (what it committed stays committed)."""
        self.wait_started()
        process, self._process = self._process, None
        if process is not None and process.is_alive():
            process.terminate()
            process.join(5.0)


def _follow(store_settings: StoreSettings, data_dir: Path, stop: Any,
            poll_seconds: float) -> None:
    """The child: catch up, wait a little, again; once `stop` is set, a last catch-up."""
    from daemon.projections import Views
    from daemon.store import open_store

    store = open_store(store_settings, data_dir)
    try:
        views = Views(store.db, read=store.read_stored, decode=store.decode)
        while True:
            started = time.monotonic()
            views.catch_up()
            # Stop is looked at after a catch-up, so the last one starts after it was set.
            if stop.wait(max(0.0, poll_seconds - (time.monotonic() - started))):
                views.catch_up()
                return
    finally:
        store.close()
