"""The event loop `check` and the daemon run on: uvloop when installed (a faster loop for
many fetches; a dependency on Linux and macOS), asyncio's own otherwise, with the cyclic
garbage collector set for a process that makes many short-lived objects."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

# New container objects between two young-generation collections (CPython's default: 700).
# A pass makes millions of short-lived ones (events, clause lists, rows) and most die young
# by their reference counts anyway: at 700, a 1,000-page pass with 108 text changes ran ~540
# collections, ~190 ms of its main process's ~2 s of CPU; at 10,000 with the start-up's
# objects frozen, ~100 and ~50 ms (bench/ab.py: changed pass 2.97 -> 2.91 s median of 6).
YOUNG_THRESHOLD = 10_000


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a new loop, as asyncio.run does."""
    with collector_tuned():
        try:
            import uvloop
        except ImportError:
            return asyncio.run(main)
        return uvloop.run(main)  # type: ignore[no-any-return]


_tuning = threading.Lock()
_depth = 0  # loops running in this process (tests run passes in threads): the first tunes
_saved = gc.get_threshold()  # the thresholds the first one found, put back by the last one


@contextmanager
def collector_tuned() -> Iterator[None]:
    """While inside: what exists now (modules, settings, documents' heads) is left out of
    every collection (gc.freeze), and young collections are rarer. Put back on the way out
    of the last loop running."""
    global _depth, _saved
    with _tuning:
        _depth += 1
        if _depth == 1:
            thresholds = gc.get_threshold()
            gc.collect()  # freeze what is alive, not garbage waiting for a collection
            gc.freeze()
            gc.set_threshold(max(YOUNG_THRESHOLD, thresholds[0]), *thresholds[1:])
            _saved = thresholds
    try:
        yield
    finally:
        with _tuning:
            _depth -= 1
            if _depth == 0:
                gc.set_threshold(*_saved)
                gc.unfreeze()
