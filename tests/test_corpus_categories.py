"""The corpus classified through the daemon's own path (page server, fetcher, service, views):
the TikTok "AI interactions" clause's record, and rarity across the corpus's platforms.

Contains data from Open Terms Archive (opentermsarchive.org), ODC-By 1.0.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from harness import (
    TRIMMED_CORPUS,
    PageServer,
    declaration,
    replay,
    replay_document_settings,
    replay_versions,
    text_versions,
)

from config.settings import DocumentSettings, StoreSettings
from config.taxonomy import load_taxonomy
from daemon.service import ClauseWatch
from daemon.store import open_store

AI_CLAUSE = ("AI interactions, including prompts, questions, files, and other types of "
             "information that you submit to our AI-powered interfaces, as well as the "
             "responses they generate.")
TAXONOMY = load_taxonomy()


async def test_the_tiktok_ai_clause_record(page_server: PageServer, tmp_path: Path) -> None:
    versions = text_versions(TRIMMED_CORPUS / "text" / "tiktok-privacy-us")
    doc = DocumentSettings(id="tiktok/privacy-us", platform="TikTok", title="Privacy Policy",
                           url=page_server.url("/legal/privacy-policy-us"), robots=False)
    steps, service = await replay(page_server, versions, doc, tmp_path, taxonomy=TAXONOMY)
    try:
        [clause] = [c for c in service.clauses(doc.id) if c["text"] == AI_CLAUSE]
        record = service.clause(clause["id"])
        # Its category, and how it was classified.
        [category] = record["categories"]
        assert (category["id"], category["name"], category["severity"]) == (
            "ai-interaction-data", "AI interaction data collection", "high")
        assert category["rules"] == ["ai-interactions-named", "prompts-and-responses"]
        assert category["rarity"]["text"] == "1 of 1 platform"
        # Stable, never changed, first seen at its own first capture (the 5th version).
        assert record["first_seen"] == steps[4].captured_at == "2026-01-23T01:21:11Z"
        assert (record["changes"], record["stability"], record["months_monitored"]) == (
            0, "stable", 5)
        assert record["last_seen"] == steps[-1].captured_at
        assert [(h["kind"], h["categories_after"]) for h in record["history"]] == [
            ("added", ["ai-interaction-data"])]
        assert record["category_history"] == []
        # The document's record.
        document = record["document_record"]
        assert (document["record_id"], document["first_tracked"]) == (
            "CW-D-00001", steps[0].captured_at)
        assert document["last_verified"] == steps[-1].captured_at
        # Its citation cites the latest capture, whose bytes are those of version 11.
        citation = service.citation_record(clause["id"])
        assert citation["capture"]["sha256"] == hashlib.sha256(versions[-1].body).hexdigest()
        assert citation["capture"]["captured_at"] == steps[-1].captured_at
        assert citation["wording_since"] == record["first_seen"]
        assert citation["verification"]["status"] == "ok"
    finally:
        service.store.close()


async def test_rarity_across_the_corpus_platforms(page_server: PageServer,
                                                  tmp_path: Path) -> None:
    # The latest version of each trimmed-corpus document, in one store: five platforms.
    store = open_store(StoreSettings(url=f"sqlite:///{tmp_path / 'events.db'}"), tmp_path)
    service = ClauseWatch(store, taxonomy=TAXONOMY)
    try:
        for name in ("buffer-privacy", "github-privacy", "llama-api-aup"):
            folder = TRIMMED_CORPUS / "replay" / name
            good = [v for v in replay_versions(folder) if v.verdict != "errorpage"]
            doc = replay_document_settings(name, folder, page_server)
            assert doc.platform == declaration(folder)["service"]
            await replay(page_server, good[-1:], doc, tmp_path, service=service)
        for name, platform in (("tiktok-privacy-us", "TikTok"), ("google-privacy", "Google")):
            doc = DocumentSettings(id=name, platform=platform, title="Privacy Policy",
                                   url=page_server.url(f"/{name}"), robots=False)
            latest = text_versions(TRIMMED_CORPUS / "text" / name)[-1:]
            await replay(page_server, latest, doc, tmp_path, service=service)

        categories = {c["id"]: c for c in service.categories()}
        assert {c["platforms_watched"] for c in categories.values()} == {5}
        ai = categories["ai-interaction-data"]
        assert (ai["rarity"], ai["documents"]) == ("2 of 5 platforms", 2)
        # Every document has classified clauses.
        for document in service.documents():
            assert any(c["categories"] for c in service.clauses(document["id"])), document["id"]

        # How other platforms handle it: GitHub's clause, side by side with TikTok's.
        [clause] = [c for c in service.clauses("tiktok-privacy-us") if c["text"] == AI_CLAUSE]
        [category] = service.clause(clause["id"])["categories"]
        assert [(p["platform"], p["document"]) for p in category["other_platforms"]] == [
            ("GitHub", "github-privacy")]
        assert "AI" in category["other_platforms"][0]["text"]
        # And the category's page lists both platforms with their clause ids.
        detail = service.category("ai-interaction-data")
        assert [p["platform"] for p in detail["platforms_with_category"]] == ["GitHub",
                                                                               "TikTok"]
    finally:
        store.close()
