"""Daily and weekly digests over a week of changes, with a frozen clock moved by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers.notify_kit import (
    ENVIRON,
    Capturer,
    HookReceiver,
    opened,
    payload_changes,
    settings,
    sqlite_store,
    wait_for,
    webhook,
)

from config.settings import SubscriptionSettings
from daemon.digest import group, window_end
from daemon.metrics import Metrics
from daemon.notifications import Notifications
from daemon.outbox import decode_documents, from_epoch

MONDAY = datetime(2025, 3, 24, 0, 0, tzinfo=UTC)  # Europe moves to summer time on Sunday 30th


@dataclass
class FrozenClock:
    """A clock that only moves when told to."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def _sub(sub_id: str, **kwargs: object) -> SubscriptionSettings:
    return SubscriptionSettings(id=sub_id, channels=(sub_id,), **kwargs)  # type: ignore[arg-type]


def test_window_ends_follow_the_local_time_zone() -> None:
    paris = _sub("p", mode="daily", time="09:00", timezone="Europe/Paris")
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC from the last Sunday of March.
    assert window_end(paris, _utc(2025, 3, 29, 12)) == _utc(2025, 3, 29, 8)
    assert window_end(paris, _utc(2025, 3, 30, 12)) == _utc(2025, 3, 30, 7)
    assert window_end(paris, _utc(2025, 3, 30, 6, 59)) == _utc(2025, 3, 29, 8)
    weekly = _sub("w", mode="weekly", day="friday", time="17:30", timezone="America/New_York")
    assert window_end(weekly, _utc(2025, 11, 5)) == _utc(2025, 10, 31, 21, 30)  # EDT
    assert window_end(weekly, _utc(2025, 11, 8)) == _utc(2025, 11, 7, 22, 30)  # EST
    # A wall time inside the spring-forward gap happens once, just after the gap.
    gap = _sub("g", mode="daily", time="02:30", timezone="Europe/Paris")
    assert window_end(gap, _utc(2025, 3, 30, 12)) == _utc(2025, 3, 30, 1, 30)


@pytest.fixture
def receiver() -> Iterator[HookReceiver]:
    with HookReceiver() as r:
        yield r


async def test_a_week_of_changes_becomes_daily_and_weekly_digests(
        tmp_path: Path, receiver: HookReceiver) -> None:
    subs = [
        _sub("paris-daily", mode="daily", time="09:00", timezone="Europe/Paris"),
        _sub("ny-weekly", mode="weekly", day="monday", time="08:00",
             timezone="America/New_York"),
        _sub("globex-daily", mode="daily", time="18:00", platforms=("Globex",)),
        _sub("terms-daily", mode="daily", time="06:00", documents=("acme/terms",),
             send_empty=True),
        _sub("alerts"),  # an immediate subscription alongside: not part of any digest
    ]
    channels = [webhook(s.id, receiver.endpoint(f"/{s.id}")) for s in subs]
    store_settings = sqlite_store(tmp_path)
    clock = FrozenClock(MONDAY)
    with opened(store_settings, tmp_path) as store:
        capturer = Capturer(store)
        capturer.baseline(at=MONDAY - timedelta(days=7))
        n = Notifications(store, settings(tmp_path, store_settings, channels=channels,
                                          subscriptions=subs), Metrics(), ENVIRON, clock=clock)
        made: dict[str, list[datetime]] = {s.id: [] for s in subs}
        # Hour by hour through the week: Acme's privacy policy changes at 10:00 and 20:00
        # UTC every day, Globex's once, on Wednesday at noon.
        while clock.now <= MONDAY + timedelta(days=7, hours=13):
            day = (clock.now - MONDAY).days
            if day < 7 and clock.now.hour in (10, 20):
                capturer.change("acme/privacy", clock.now)
            if day == 2 and clock.now.hour == 12:
                capturer.change("globex/privacy", clock.now)
            n.consume()
            for notice in n.digests.tick():
                row = store.db.query("SELECT subscription, window_end FROM cw_notices "
                                     "WHERE id = ?", (notice,))[0]
                end = from_epoch(row["window_end"])
                assert end is not None
                made[row["subscription"]].append(end)
            clock.now += timedelta(hours=1)

        # Paris: one digest per morning with changes, at 09:00 local time; Monday's first
        # window was empty, so nothing was sent for it.
        assert made["paris-daily"] == [_utc(2025, 3, d, 8) for d in range(25, 30)] + [
            _utc(2025, 3, 30, 7), _utc(2025, 3, 31, 7)]
        # New York: Monday 08:00 EDT, twice.
        assert made["ny-weekly"] == [_utc(2025, 3, 24, 12), _utc(2025, 3, 31, 12)]
        # Only Wednesday had a Globex change.
        assert made["globex-daily"] == [_utc(2025, 3, 26, 18)]
        # send_empty: every morning, although its document never changed.
        assert made["terms-daily"] == [_utc(2025, 3, d, 6) for d in range(24, 32)]
        assert made["alerts"] == []

        def digest(sub: str, end: datetime) -> tuple[datetime | None, list[str], list[int]]:
            row = store.db.query("SELECT window_start, documents FROM cw_notices WHERE "
                                 "subscription = ? AND window_end = ?", (sub, end.timestamp()))
            docs = decode_documents(row[0]["documents"])
            return (from_epoch(row[0]["window_start"]), [d.document_id for d in docs],
                    [len(d.changes) for d in docs])

        # The week's changes, grouped by platform and document: Acme's 13 after Monday
        # 08:00 EDT, then Globex's one.
        assert digest("ny-weekly", _utc(2025, 3, 31, 12)) == (
            _utc(2025, 3, 24, 12), ["acme/privacy", "globex/privacy"], [13, 1])
        # The short night into summer time: a 23-hour window with Saturday's two changes.
        assert digest("paris-daily", _utc(2025, 3, 30, 7)) == (
            _utc(2025, 3, 29, 8), ["acme/privacy"], [2])
        assert digest("terms-daily", _utc(2025, 3, 27, 6))[1:] == ([], [])

        # Everything is delivered through the webhooks once the loops run.
        async with n:
            stop = asyncio.Event()
            task = asyncio.create_task(n.run(stop))
            await wait_for(lambda: len(receiver.delivered()) == 7 + 2 + 1 + 8 + 15, 10)
            stop.set()
            await task
    [_, weekly] = receiver.delivered("/ny-weekly")
    assert weekly.payload["type"].endswith("digest")
    assert weekly.payload["window"] == {"start": "2025-03-24T12:00:00Z",
                                        "end": "2025-03-31T12:00:00Z"}
    assert weekly.payload["summary"] == ("clausewatch weekly digest: 14 changes in 2 "
                                         "documents")
    assert [d["platform"] for d in weekly.payload["documents"]] == ["Acme", "Globex"]
    assert len(payload_changes(weekly)) == 14
    assert all(h.payload["documents"] == [] for h in receiver.delivered("/terms-daily"))
    assert len(receiver.delivered("/alerts")) == 15  # 14 Acme captures and 1 Globex


def test_a_change_recorded_after_its_window_closed_goes_into_the_next_digest(
        tmp_path: Path) -> None:
    subs = [_sub("daily", mode="daily", time="08:00")]
    store_settings = sqlite_store(tmp_path)
    clock = FrozenClock(MONDAY)
    with opened(store_settings, tmp_path) as store:
        capturer = Capturer(store)
        capturer.baseline(at=MONDAY - timedelta(days=1))
        n = Notifications(store, settings(tmp_path, store_settings,
                                          channels=[webhook("daily", "http://127.0.0.1:9/")],
                                          subscriptions=subs), Metrics(), ENVIRON, clock=clock)
        assert n.digests.tick() == []  # the first tick starts the first window
        # Captured a minute before Monday's window closes, but the outbox only sees it
        # after the digest was built (it was down, say).
        capturer.change("acme/terms", _utc(2025, 3, 24, 7, 59))
        clock.now = _utc(2025, 3, 24, 8, 0)
        assert n.digests.tick() == []
        n.consume()
        clock.now = _utc(2025, 3, 25, 8, 0)
        [notice] = n.digests.tick()
        docs = decode_documents(store.db.scalar("SELECT documents FROM cw_notices WHERE id = ?",
                                                (notice,)))
        assert [d.document_id for d in docs] == ["acme/terms"]
        # Building again for the same window changes nothing.
        assert n.digests.tick() == []


def test_grouping_merges_captures_of_one_document_in_order() -> None:
    from notifiers.notice import ClauseNotice, DocumentNotice

    def doc(doc_id: str, platform: str, at: int, clause: str) -> DocumentNotice:
        return DocumentNotice(document_id=doc_id, platform=platform, title=doc_id,
                              url="https://x.test/", captured_at=_utc(2025, 1, at),
                              sha256=str(at) * 64, changes=(ClauseNotice(
                                  clause_id=clause, kind="added", section=(), before=None,
                                  after=clause),))

    grouped = group([doc("z/tos", "Zeta", 1, "a"), doc("a/pp", "alpha", 2, "b"),
                     doc("z/tos", "Zeta", 3, "c")])
    assert [(d.document_id, [c.clause_id for c in d.changes]) for d in grouped] == [
        ("a/pp", ["b"]), ("z/tos", ["a", "c"])]
    assert grouped[1].captured_at == _utc(2025, 1, 3)
