"""The notify consumer: which deliveries each captured change causes, decided exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers.notify_kit import ENVIRON, Capturer, later, opened, settings, sqlite_store, webhook

from config.settings import StoreSettings, SubscriptionSettings
from daemon.metrics import Metrics
from daemon.notifications import Notifications
from daemon.outbox import Outbox, decode_documents, notice_id
from daemon.store import Store

ARBITRATION = ("Any dispute will be resolved by binding arbitration and you waive any class "
               "action.")
SALE = "We sell your personal information to data brokers."


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    if request.param == "sqlite":
        return sqlite_store(tmp_path)
    return request.getfixturevalue("pg_url").store()


def _subscriptions() -> list[SubscriptionSettings]:
    return [
        SubscriptionSettings(id="everything", channels=("hook-a", "hook-b")),
        SubscriptionSettings(id="globex", channels=("hook-a",), platforms=("globex",)),
        SubscriptionSettings(id="terms", channels=("hook-a",), documents=("acme/terms",)),
        SubscriptionSettings(id="additions", channels=("hook-b",), kinds=("added",)),
        SubscriptionSettings(id="severe", channels=("hook-b",), min_severity="high"),
        SubscriptionSettings(id="disputes", channels=("hook-a",),
                             categories=("arbitration-class-action",)),
        SubscriptionSettings(id="daily", channels=("hook-a",), mode="daily"),
    ]


def _notifications(store: Store, tmp: Path, store_settings: StoreSettings,
                   **kwargs: Any) -> Notifications:
    cfg = settings(tmp, store_settings, channels=[webhook("hook-a", "http://127.0.0.1:9/a"),
                                                  webhook("hook-b", "http://127.0.0.1:9/b")],
                   subscriptions=_subscriptions(), public_url="https://cw.example.org/")
    return Notifications(store, cfg, Metrics(), ENVIRON, **kwargs)


def _deliveries(store: Store) -> list[dict[str, Any]]:
    return store.db.query("SELECT d.subscription, d.channel, d.notice, d.status, n.documents "
                          "FROM cw_deliveries d JOIN cw_notices n ON n.id = d.notice "
                          "ORDER BY d.subscription, d.channel")


def test_each_change_is_routed_by_the_subscription_filters(
        tmp_path: Path, store_settings: StoreSettings) -> None:
    with opened(store_settings, tmp_path) as store:
        capturer = Capturer(store)
        capturer.baseline()
        notifications = _notifications(store, tmp_path, store_settings)

        # An Acme privacy clause is modified: a data-retention change of medium severity.
        capturer.change("acme/privacy", later(10))
        notifications.consume()
        rows = _deliveries(store)
        assert [(r["subscription"], r["channel"]) for r in rows] == [
            ("everything", "hook-a"), ("everything", "hook-b")]
        [doc] = decode_documents(rows[0]["documents"])
        assert (doc.document_id, doc.platform, doc.title) == ("acme/privacy", "Acme",
                                                              "Privacy Policy")
        [change] = doc.changes
        assert change.kind == "modified" and "revision 1" in (change.after or "")
        assert change.categories == ("data-retention",) and change.severity == "medium"
        assert doc.evidence_url == f"https://cw.example.org/api/v1/captures/{doc.sha256}"
        # The daily subscription collects it for its digest instead.
        assert store.db.scalar("SELECT COUNT(*) FROM cw_digest_items "
                               "WHERE subscription = 'daily'") == 1

        # A Globex clause about arbitration is added: platform, kind, severity and category
        # filters all let it through.
        capturer.change("globex/privacy", later(20), kind="added", text=ARBITRATION)
        notifications.consume()
        new = [r for r in _deliveries(store)
               if decode_documents(r["documents"])[0].document_id == "globex/privacy"]
        assert sorted((r["subscription"], r["channel"]) for r in new) == [
            ("additions", "hook-b"), ("disputes", "hook-a"), ("everything", "hook-a"),
            ("everything", "hook-b"), ("globex", "hook-a"), ("severe", "hook-b")]
        # Two subscriptions never share a notice id (the webhook-id).
        notices = {r["subscription"]: r["notice"] for r in new}
        assert len(set(notices.values())) == len(notices)


def test_a_notice_keeps_only_the_changes_its_subscription_wants(
        tmp_path: Path, store_settings: StoreSettings) -> None:
    with opened(store_settings, tmp_path) as store:
        capturer = Capturer(store)
        capturer.baseline()
        notifications = _notifications(store, tmp_path, store_settings)
        # One capture with two changes: a retention edit and a data sale clause added.
        capturer.texts["acme/terms"][2] += " We keep logs for 24 months."
        capturer.change("acme/terms", later(5), kind="added", text=SALE)
        notifications.consume()
        by_sub = {r["subscription"]: decode_documents(r["documents"])[0]
                  for r in _deliveries(store)}
        assert len(by_sub["everything"].changes) == 2
        assert len(by_sub["terms"].changes) == 2
        assert [c.after for c in by_sub["severe"].changes] == [SALE]
        assert [c.kind for c in by_sub["additions"].changes] == ["added"]
        assert "disputes" not in by_sub


def test_consuming_again_decides_nothing_twice(tmp_path: Path,
                                               store_settings: StoreSettings) -> None:
    with opened(store_settings, tmp_path) as store:
        capturer = Capturer(store)
        capturer.baseline()
        notifications = _notifications(store, tmp_path, store_settings)
        capturer.change("acme/privacy", later(1))
        notifications.consume()
        before = _deliveries(store)
        assert notifications.consume() == 0
        # Even a consumer that lost its position (a replica starting from an old backup)
        # only finds the same rows: ids are derived from the event and the subscription.
        store.db.execute("UPDATE cw_positions SET position = 0 WHERE name = 'notify'")
        assert notifications.consume() > 0
        assert _deliveries(store) == before


def test_a_crash_inside_the_decision_leaves_no_trace(tmp_path: Path,
                                                     store_settings: StoreSettings) -> None:
    with opened(store_settings, tmp_path) as store:
        capturer = Capturer(store)
        capturer.baseline()
        crash = {"on": True}

        def decode(notification: Any) -> Any:
            event = store.decode(notification)
            if crash["on"] and "revision 2" in (getattr(event, "after", None) or ""):
                raise RuntimeError("power cut")
            return event

        notifications = _notifications(store, tmp_path, store_settings)
        notifications.outbox.decode = decode
        notifications.outbox.batch_size = 1
        capturer.change("acme/privacy", later(1))
        capturer.change("acme/terms", later(2))
        start = notifications.outbox.position()
        with pytest.raises(RuntimeError, match="power cut"):
            notifications.consume()
        # The first capture's decision and position were committed together; the second
        # capture's batch rolled back whole.
        committed = notifications.outbox.position()
        assert committed > start
        assert {r["subscription"] for r in _deliveries(store)} == {"everything"}
        assert len(_deliveries(store)) == 2
        crash["on"] = False
        notifications.consume()
        # Now the second capture: "everything" on both channels and "terms" on one.
        assert len(_deliveries(store)) == 5
        assert notifications.consume() == 0


def test_a_first_start_does_not_alert_on_history(tmp_path: Path,
                                                 store_settings: StoreSettings) -> None:
    with opened(store_settings, tmp_path) as store:
        capturer = Capturer(store)
        capturer.baseline()
        capturer.change("acme/privacy", later(1))
        _notifications(store, tmp_path, store_settings).consume()
        assert _deliveries(store) == []
        # Later changes are alerted.
        capturer.change("acme/privacy", later(2))
        _notifications(store, tmp_path, store_settings).consume()
        assert len(_deliveries(store)) == 2


def test_history_mode_replays_the_log_and_ids_are_stable(tmp_path: Path,
                                                        store_settings: StoreSettings) -> None:
    with opened(store_settings, tmp_path) as store:
        capturer = Capturer(store)
        capturer.baseline()
        capturer.change("acme/privacy", later(1))
        notifications = _notifications(store, tmp_path, store_settings, history=True)
        notifications.consume()
        rows = _deliveries(store)
        assert len(rows) == 2
        capture = store.db.query("SELECT event_id FROM cw_captures WHERE outcome = 'changed'")
        assert rows[0]["notice"] == notice_id(capture[0]["event_id"], "everything")


def test_changes_split_across_batches_stay_together(tmp_path: Path,
                                                    store_settings: StoreSettings) -> None:
    with opened(store_settings, tmp_path) as store:
        capturer = Capturer(store)
        capturer.baseline()
        outbox_settings = _notifications(store, tmp_path, store_settings)
        outbox = outbox_settings.outbox
        for n in range(3, 7):  # the change below edits clause 1
            capturer.texts["globex/privacy"][n] += f" Amended {n}."
        assert capturer.change("globex/privacy", later(3)) == 5
        outbox.batch_size = 2  # the capture's five changes cross three batches
        outbox.consume()
        [doc] = decode_documents(_deliveries(store)[0]["documents"])
        assert len(doc.changes) == 5


def test_an_outbox_without_views_asks_the_aggregate(tmp_path: Path,
                                                    store_settings: StoreSettings) -> None:
    with opened(store_settings, tmp_path) as store:
        capturer = Capturer(store)
        capturer.baseline()
        outbox = Outbox(store.db, read=store.read_notifications, decode=store.decode,
                        max_notification_id=store.max_notification_id,
                        subscriptions=_subscriptions()[:1],
                        aggregate=store.app.repository.get)
        store.db.execute("DELETE FROM cw_documents")
        capturer.change("acme/terms", later(1))
        outbox.consume()
        [doc] = decode_documents(_deliveries(store)[0]["documents"])
        assert (doc.document_id, doc.title) == ("acme/terms", "Terms of Service")
