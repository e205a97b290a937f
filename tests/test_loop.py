"""daemon.loop.run: the collector set for a pass while it runs, and put back after it."""

from __future__ import annotations

import gc

import pytest

from daemon import loop


def test_a_pass_runs_with_start_up_objects_frozen_and_rarer_young_collections() -> None:
    before = gc.get_threshold()
    seen: dict[str, object] = {}

    async def main() -> str:
        seen["frozen"] = gc.get_freeze_count()
        seen["threshold"] = gc.get_threshold()
        return "done"

    assert loop.run(main()) == "done"
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 0
    assert seen["threshold"] == (max(loop.YOUNG_THRESHOLD, before[0]), *before[1:])
    # Put back: a process that runs passes one after another (the tests) is left as it was.
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_collector_is_put_back_when_the_pass_fails() -> None:
    before = gc.get_threshold()

    async def main() -> None:
        raise RuntimeError("a failed pass")

    with pytest.raises(RuntimeError, match="a failed pass"):
        loop.run(main())
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_garbage_made_during_a_pass_is_still_collected() -> None:
    class Node:
        other: object = None

    async def main() -> int:
        for _ in range(50_000):  # cycles that only the collector can free
            a, b = Node(), Node()
            a.other, b.other = b, a
        return len([o for o in gc.get_objects() if isinstance(o, Node)])

    alive_at_end = loop.run(main())
    # Young collections still run (at 10,000 new objects, not 700): not all 100,000 linger.
    assert alive_at_end < 100_000
    gc.collect()
    assert not [o for o in gc.get_objects() if isinstance(o, Node)]


def test_passes_run_side_by_side_leave_the_collector_as_it_was() -> None:
    import threading

    before = gc.get_threshold()
    inside = threading.Barrier(2)

    async def main() -> None:
        inside.wait(timeout=10)  # both loops are running here at once
        assert gc.get_threshold()[0] >= loop.YOUNG_THRESHOLD

    threads = [threading.Thread(target=loop.run, args=(main(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
