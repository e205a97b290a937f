"""Category projections over several watched platforms: rarity, other platforms' wording,
category changes in a clause's history, reclassification, stable record ids, the API, alerts
and the config and schema checks around them. Real SQLite files and the local PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from harness import taxonomy_with_support
from helpers.notify_kit import ENVIRON, settings, webhook
from prometheus_client import CollectorRegistry

from config.errors import ConfigError
from config.settings import DocumentSettings, StoreSettings, SubscriptionSettings
from config.taxonomy import load_taxonomy
from daemon.api import build_api
from daemon.bootstrap import migrate_store, open_service
from daemon.fetcher import FetchResult
from daemon.metrics import Metrics
from daemon.notifications import Notifications
from daemon.outbox import decode_documents
from daemon.schema import SchemaError
from daemon.service import ClauseWatch, UnknownCategoryError
from daemon.store import open_store

T0 = datetime(2025, 9, 1, 8, 0, tzinfo=UTC)
TAXONOMY = load_taxonomy()

AI_US = ("AI interactions, including prompts, questions, files, and other types of "
         "information that you submit to our AI-powered interfaces, as well as the responses "
         "they generate.")
AI_EEA = ("AI interactions, including prompts and files that you submit to our AI-powered "
          "interfaces, and the responses they generate.")
AI_GOOGLE = "Conversations with AI features, including your prompts and the responses, are stored."
AI_GOOGLE_V2 = ("Conversations with AI features, including your prompts, uploaded files and "
                "the responses, are stored for 18 months.")
NEUTRAL = "You can contact our support team at any time."
IMPROVE = "We use your content to improve our services."
TRAIN = "We use your content to improve our services and to train our AI models."
RETENTION = "We keep your personal data for 24 months after you close your account."
ARBITRATION = ("Any dispute will be resolved by binding arbitration and you waive any class "
               "action.")

DOCS = {
    "tiktok/privacy-us": DocumentSettings(id="tiktok/privacy-us", platform="TikTok",
                                          title="Privacy Policy (US)",
                                          url="https://tiktok.test/privacy-us"),
    "tiktok/privacy-eea": DocumentSettings(id="tiktok/privacy-eea", platform="TikTok",
                                           title="Privacy Policy (EEA)",
                                           url="https://tiktok.test/privacy-eea"),
    "google/privacy": DocumentSettings(id="google/privacy", platform="Google",
                                       title="Privacy Policy", url="https://google.test/p"),
    "acme/terms": DocumentSettings(id="acme/terms", platform="Acme", title="Terms of Service",
                                   url="https://acme.test/terms"),
}


@pytest.fixture
def service(store_settings: StoreSettings, tmp_path: Path) -> Iterator[ClauseWatch]:
    store = open_store(store_settings, tmp_path)
    svc = ClauseWatch(store, taxonomy=TAXONOMY)
    svc.sync_documents(list(DOCS.values()))
    yield svc
    store.close()


def record(service: ClauseWatch, document_id: str, clauses: list[str], day: int) -> None:
    doc = DOCS[document_id]
    service.record_fetch(doc, FetchResult(
        requested_url=doc.url, final_url=doc.url, status=200,
        fetched_at=T0 + timedelta(days=day), body="\n\n".join(clauses).encode(),
        content_type="text/plain"))


def watched(service: ClauseWatch) -> None:
    """Four documents of three platforms; TikTok and Google have AI interaction clauses."""
    record(service, "tiktok/privacy-us", [AI_US, NEUTRAL], 0)
    record(service, "tiktok/privacy-eea", [AI_EEA, NEUTRAL], 0)
    record(service, "google/privacy", [NEUTRAL, AI_GOOGLE, RETENTION], 0)
    record(service, "acme/terms", [ARBITRATION, IMPROVE], 0)


def clause_id(service: ClauseWatch, document_id: str, text: str) -> str:
    return next(c["id"] for c in service.clauses(document_id) if c["text"] == text)


def by_id(categories: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in categories}


def test_rarity_and_other_platforms_over_several_platforms(service: ClauseWatch) -> None:
    watched(service)
    summary = by_id(service.categories())
    ai = summary["ai-interaction-data"]
    assert (ai["rarity"], ai["platforms"], ai["documents"], ai["clauses"]) == (
        "2 of 3 platforms", 2, 3, 3)
    assert summary["arbitration-class-action"]["rarity"] == "1 of 3 platforms"
    assert summary["biometric-data"]["rarity"] == "0 of 3 platforms"
    # Every taxonomy category is listed, in the taxonomy's order.
    assert [c["id"] for c in service.categories()] == [c.id for c in TAXONOMY.categories]

    # The TikTok US clause: its category, how rare it is, and the wording elsewhere. The
    # TikTok EEA clause is the same platform, so not "another platform".
    us = service.clause(clause_id(service, "tiktok/privacy-us", AI_US))
    [category] = us["categories"]
    assert (category["id"], category["name"], category["severity"]) == (
        "ai-interaction-data", "AI interaction data collection", "high")
    assert category["rarity"]["text"] == "2 of 3 platforms"
    assert [(p["platform"], p["document"], p["text"]) for p in category["other_platforms"]] == [
        ("Google", "google/privacy", AI_GOOGLE)]
    assert category["other_platforms"][0]["record_id"].startswith("CW-P-")
    assert us["document_record"]["record_id"] == "CW-D-00001"
    assert (us["changes"], us["first_seen"]) == (0, "2025-09-01T08:00:00Z")

    # Google rewords its clause: the side-by-side shows the newest text.
    record(service, "google/privacy", [NEUTRAL, AI_GOOGLE_V2, RETENTION], 3)
    peers = service.clause(us["id"])["categories"][0]["other_platforms"]
    assert [p["text"] for p in peers] == [AI_GOOGLE_V2]

    # The category's own page: platforms, documents and clause ids.
    detail = service.category("ai-interaction-data")
    assert [(p["platform"], [d["id"] for d in p["documents"]])
            for p in detail["platforms_with_category"]] == [
        ("Google", ["google/privacy"]), ("TikTok", ["tiktok/privacy-eea", "tiktok/privacy-us"])]

    # Google drops its clause: only present clauses count.
    record(service, "google/privacy", [NEUTRAL, RETENTION], 5)
    assert by_id(service.categories())["ai-interaction-data"]["rarity"] == "1 of 3 platforms"
    assert service.clause(us["id"])["categories"][0]["other_platforms"] == []

    with pytest.raises(UnknownCategoryError):
        service.category("no-such-category")


def test_a_change_of_category_is_in_the_clause_history(service: ClauseWatch) -> None:
    watched(service)
    improve = clause_id(service, "acme/terms", IMPROVE)
    assert service.clause(improve)["categories"] == []
    # The clause is reworded and now falls under AI model training.
    record(service, "acme/terms", [ARBITRATION, TRAIN], 2)
    clause = service.clause(improve)
    assert [c["id"] for c in clause["categories"]] == ["ai-model-training"]
    [change] = clause["history"]
    assert (change["kind"], change["categories_before"], change["categories_after"]) == (
        "modified", [], ["ai-model-training"])
    assert [(h["cause"], h["at"], h["added"], h["removed"])
            for h in clause["category_history"]] == [
        ("capture", "2025-09-03T08:00:00Z", ["ai-model-training"], [])]
    # And back: it ceases to fall under it.
    record(service, "acme/terms", [ARBITRATION, IMPROVE], 4)
    history = service.clause(improve)["category_history"]
    assert [(h["added"], h["removed"]) for h in history] == [
        (["ai-model-training"], []), ([], ["ai-model-training"])]
    assert by_id(service.categories())["ai-model-training"]["clauses"] == 0


def test_reclassify_after_a_taxonomy_change_appends_and_keeps_history(
        service: ClauseWatch, tmp_path: Path) -> None:
    watched(service)
    before = service.store.read_notifications(1, 1000)
    # A taxonomy edit: a new category for support contacts.
    service.use_taxonomy(load_taxonomy(taxonomy_with_support(tmp_path)))
    assert service.reclassify() == {"acme/terms": 0, "google/privacy": 1,
                                    "tiktok/privacy-eea": 1, "tiktok/privacy-us": 1}
    after = service.store.read_notifications(1, 1000)
    # History appended, never rewritten: the old events are byte for byte the same.
    assert [n.state for n in after[:len(before)]] == [n.state for n in before]
    assert [n.topic.rsplit(".", 1)[1] for n in after[len(before):]] == [
        "ClausesReclassified"] * 3
    neutral = service.clause(clause_id(service, "google/privacy", NEUTRAL))
    assert [c["id"] for c in neutral["categories"]] == ["support-contact"]
    [entry] = neutral["category_history"]
    assert (entry["cause"], entry["added"], entry["taxonomy_version"]) == (
        "reclassify", ["support-contact"], service.taxonomy_version)
    assert by_id(service.categories())["support-contact"]["rarity"] == "2 of 3 platforms"
    # Nothing left to change: nothing recorded.
    assert set(service.reclassify().values()) == {0}
    assert len(service.store.read_notifications(1, 1000)) == len(after)

    # The old taxonomy back: the category is dropped from those clauses, and stays listed
    # (not in the taxonomy) only while clauses still carry it.
    service.use_taxonomy(TAXONOMY)
    service.reclassify()
    assert "support-contact" not in by_id(service.categories())


def test_record_ids_are_assigned_once_and_survive_a_rebuild(service: ClauseWatch) -> None:
    watched(service)
    record(service, "acme/terms", [ARBITRATION, TRAIN, NEUTRAL], 1)
    # The newest clause (the highest number) is removed: its number is not given again.
    record(service, "acme/terms", [ARBITRATION, TRAIN], 2)

    def numbers() -> tuple[dict[str, str], dict[str, str]]:
        clauses = {}
        for doc in DOCS:
            clauses.update({c["id"]: c["record_id"] for c in service.clauses(doc)})
        return clauses, {d["id"]: d["record_id"] for d in service.documents()}

    def categories() -> list[dict[str, Any]]:
        return service.store.db.query(
            "SELECT * FROM cw_clause_categories ORDER BY clause, category") + \
            service.store.db.query("SELECT * FROM cw_category_changes ORDER BY seq, clause")

    clauses, documents = numbers()
    assert len(set(clauses.values())) == len(clauses) == 10
    assert sorted(documents.values()) == [f"CW-D-{n:05d}" for n in range(1, 5)]
    labels = categories()
    removed = clause_id(service, "acme/terms", NEUTRAL)
    assert clauses[removed] == max(clauses.values())

    service.views.rebuild()
    assert numbers() == (clauses, documents)
    assert categories() == labels

    record(service, "google/privacy", [NEUTRAL, AI_GOOGLE, RETENTION, ARBITRATION], 3)
    new = clause_id(service, "google/privacy", ARBITRATION)
    assert service.clause(new)["record_id"] == f"CW-P-{len(clauses) + 1:06d}"


async def test_categories_and_clause_records_over_http(service: ClauseWatch) -> None:
    watched(service)
    app = build_api(service, registry=CollectorRegistry(), readiness=_ready)
    async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
        response = await client.get("/api/v1/categories")
        assert response.status == 200
        items = by_id((await response.json())["items"])
        assert items["ai-interaction-data"]["rarity"] == "2 of 3 platforms"
        response = await client.get("/api/v1/categories/ai-interaction-data")
        assert (await response.json())["clauses"] == 3
        response = await client.get("/api/v1/categories/nope")
        assert response.status == 404 and "nope" in (await response.json())["error"]
        us = clause_id(service, "tiktok/privacy-us", AI_US)
        body = await (await client.get(f"/api/v1/clauses/{us}")).json()
        assert body["categories"][0]["other_platforms"][0]["text"] == AI_GOOGLE
        assert body["document_record"]["id"] == "tiktok/privacy-us"


async def _ready() -> tuple[bool, str]:
    return True, ""


def test_alerts_carry_the_categories_recorded_in_the_events(tmp_path: Path) -> None:
    # A taxonomy the notifications side never sees: the categories can only come from the
    # events.
    path = tmp_path / "taxonomy.toml"
    path.write_text("""
[[categories]]
id = "widget-terms"
name = "Widget terms"
description = "Widgets."
severity = "critical"

  [[categories.rules]]
  phrases = ["widget*"]
""", encoding="utf-8")
    store_settings = StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}")
    store = open_store(store_settings, tmp_path)
    try:
        service = ClauseWatch(store, taxonomy=load_taxonomy(path))
        service.sync_documents([DOCS["acme/terms"]])
        record(service, "acme/terms", [ARBITRATION, IMPROVE], 0)
        cfg = settings(tmp_path, store_settings,
                       channels=[webhook("hook", "http://127.0.0.1:9/a")],
                       subscriptions=[
                           SubscriptionSettings(id="widgets", channels=("hook",),
                                                categories=("widget-terms",)),
                           SubscriptionSettings(id="critical", channels=("hook",),
                                                min_severity="critical"),
                           SubscriptionSettings(id="disputes", channels=("hook",),
                                                categories=("arbitration-class-action",))])
        notifications = Notifications(store, cfg, Metrics(CollectorRegistry()), ENVIRON)
        record(service, "acme/terms", [ARBITRATION, IMPROVE, "Widgets are licensed, not sold."],
               1)
        notifications.consume()
        rows = store.db.query("SELECT d.subscription, n.documents FROM cw_deliveries d "
                              "JOIN cw_notices n ON n.id = d.notice ORDER BY d.subscription")
        assert [r["subscription"] for r in rows] == ["critical", "widgets"]
        [change] = decode_documents(rows[0]["documents"])[0].changes
        assert (change.kind, change.categories, change.severity) == (
            "added", ("widget-terms",), "critical")
    finally:
        store.close()


def test_a_subscription_naming_an_unknown_category_is_a_config_error(tmp_path: Path) -> None:
    cfg = settings(tmp_path, StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}"),
                   channels=[webhook("hook", "http://127.0.0.1:9/a")],
                   subscriptions=[SubscriptionSettings(id="ai", channels=("hook",),
                                                       categories=("ai-trainig",))])
    with pytest.raises(ConfigError) as raised:
        open_service(cfg)
    assert raised.value.key == "subscriptions[0] (ai).categories"
    assert "ai-trainig" in str(raised.value) and "ai-model-training" in str(raised.value)


def test_a_version_1_store_is_migrated_and_then_classifies(tmp_path: Path) -> None:
    cfg = settings(tmp_path, StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}"))
    service = open_service(cfg)
    service.sync_documents([DOCS["acme/terms"]])
    record(service, "acme/terms", [ARBITRATION], 0)
    # Make it what clausewatch's schema version 1 left behind.
    db = service.store.db
    for table, column in (("cw_clauses", "categories"), ("cw_changes", "categories_before"),
                          ("cw_changes", "categories_after")):
        db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    db.execute("UPDATE cw_schema_version SET version = 1")
    service.store.close()

    with pytest.raises(SchemaError, match="store migrate"):
        open_service(cfg)
    assert migrate_store(cfg) == [2]
    service = open_service(cfg)
    try:
        # The clause captured before keeps its categories (the column came back empty only
        # because this test dropped it); new captures are classified.
        record(service, "acme/terms", [ARBITRATION, TRAIN], 1)
        train = clause_id(service, "acme/terms", TRAIN)
        assert [c["id"] for c in service.clause(train)["categories"]] == ["ai-model-training"]
        assert json.loads(service.store.db.scalar(
            "SELECT categories_after FROM cw_changes WHERE clause = ?", (train,)))[0]["id"] == \
            "ai-model-training"
    finally:
        service.store.close()
