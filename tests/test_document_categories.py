"""Categories in the Document's events: derived on capture, re-derived by reclassify, and
events recorded before categories existed read back upcast."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from eventsourcing.domain import Snapshot
from eventsourcing.persistence import StoredEvent

from config.settings import DocumentSettings, StoreSettings
from config.taxonomy import load_taxonomy
from daemon.fetcher import FetchResult
from daemon.service import ClauseWatch
from daemon.store import ClauseWatchApp, Store, application_env, open_store
from domain.classify import Taxonomy, clause_classifier, taxonomy_version
from domain.document import CaptureFacts, Document, document_uuid
from domain.extract import extract

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
AI = ("AI interactions, including prompts, questions, files, and other types of information "
      "that you submit to our AI-powered interfaces, as well as the responses they generate.")
NEUTRAL = "You can contact our support team at any time."
IMPROVE = "We use your content to improve our services."
TRAIN = "We use your content to improve our services and to train our AI models."
RETENTION = "We keep your personal data for 24 months after you close your account."
TAXONOMY = load_taxonomy()


class Counting:
    """The packaged taxonomy's classifier, remembering which texts it was asked about."""

    def __init__(self, taxonomy: Taxonomy = TAXONOMY) -> None:
        self.classify = clause_classifier(taxonomy)
        self.asked: list[str] = []

    def __call__(self, text: str) -> list[dict[str, Any]]:
        self.asked.append(text)
        return self.classify(text)


def body(clauses: list[str]) -> bytes:
    return "\n\n".join(clauses).encode()


def capture(doc: Document, clauses: list[str], day: int, classify: Any) -> Any:
    raw = body(clauses)
    facts = CaptureFacts(captured_at=T0 + timedelta(days=day), requested_url="https://x.test",
                         final_url="https://x.test", http_status=200, content_type="text/plain",
                         sha256=hashlib.sha256(raw).hexdigest(), size=len(raw))
    return doc.record_capture(facts, extract(raw, "text/plain"), classify=classify)


def new_document() -> Document:
    doc = Document.register(slug="acme/privacy", platform="Acme", title="Privacy",
                            url="https://x.test")
    doc.collect_events()
    return doc


def ids(categories: list[dict[str, Any]] | None) -> list[str] | None:
    return None if categories is None else [c["id"] for c in categories]


# The aggregate ----------------------------------------------------------------------------


def test_categories_are_derived_for_added_and_reworded_clauses_only() -> None:
    doc, classify = new_document(), Counting()
    capture(doc, [AI, NEUTRAL, IMPROVE], 0, classify)
    [captured] = doc.collect_events()
    assert [ids(c["categories"]) for c in captured.clauses] == [["ai-interaction-data"], [], []]
    ai = captured.clauses[0]["categories"][0]
    assert (ai["name"], ai["severity"]) == ("AI interaction data collection", "high")
    assert 0.5 < ai["confidence"] <= 1 and ai["rules"]

    # IMPROVE is reworded into a training clause, RETENTION is added: only those two are
    # classified; the others keep the categories they had.
    classify.asked.clear()
    capture(doc, [AI, NEUTRAL, TRAIN, RETENTION], 1, classify)
    assert sorted(classify.asked) == sorted([TRAIN, RETENTION])
    captured, *changes = doc.collect_events()
    by_kind = {c.kind: c for c in changes}
    modified = by_kind["modified"]
    assert (modified.before, modified.after) == (IMPROVE, TRAIN)
    assert (ids(modified.categories_before), ids(modified.categories_after)) == (
        [], ["ai-model-training"])
    added = by_kind["added"]
    assert (added.categories_before, ids(added.categories_after)) == (None, ["data-retention"])
    assert ids(doc.clauses[2]["categories"]) == ["ai-model-training"]


def test_a_removed_clause_carries_the_categories_it_had() -> None:
    doc, classify = new_document(), Counting()
    capture(doc, [AI, NEUTRAL, RETENTION], 0, classify)
    capture(doc, [NEUTRAL, RETENTION], 1, classify)
    [_, removed] = doc.collect_events()[1:]
    assert removed.kind == "removed"
    assert (ids(removed.categories_before), removed.categories_after) == (
        ["ai-interaction-data"], None)


def test_reclassify_appends_one_event_with_only_the_clauses_that_changed() -> None:
    doc = new_document()
    # Captured by a service without a taxonomy: unclassified.
    capture(doc, [AI, NEUTRAL, RETENTION], 0, None)
    assert [c["categories"] for c in doc.clauses] == [None, None, None]
    doc.collect_events()

    classify = Counting()
    assert doc.reclassify(classify, taxonomy_version(TAXONOMY)) == 3
    [event] = doc.collect_events()
    assert type(event).__name__ == "ClausesReclassified"
    assert event.taxonomy_version == taxonomy_version(TAXONOMY)
    assert [(e["before"], ids(e["after"])) for e in event.clauses] == [
        (None, ["ai-interaction-data"]), (None, []), (None, ["data-retention"])]

    # The same taxonomy again: nothing differs, nothing is recorded.
    assert doc.reclassify(classify, taxonomy_version(TAXONOMY)) == 0
    assert doc.collect_events() == []

    # A taxonomy without data-retention: one clause changes, and only it is listed.
    smaller = Taxonomy(categories=tuple(c for c in TAXONOMY.categories
                                        if c.id != "data-retention"))
    assert doc.reclassify(clause_classifier(smaller), taxonomy_version(smaller)) == 1
    [event] = doc.collect_events()
    assert [(e["id"], ids(e["before"]), e["after"]) for e in event.clauses] == [
        (doc.clauses[2]["id"], ["data-retention"], [])]
    assert doc.taxonomy_version == taxonomy_version(smaller) != taxonomy_version(TAXONOMY)


def test_the_taxonomy_version_follows_what_the_taxonomy_decides() -> None:
    assert taxonomy_version(load_taxonomy()) == taxonomy_version(TAXONOMY)
    first = TAXONOMY.categories[0]
    reweighted = Taxonomy(categories=(
        type(first)(id=first.id, name=first.name, description=first.description,
                    severity="critical", regulations=first.regulations, rules=first.rules),
        *TAXONOMY.categories[1:]))
    assert taxonomy_version(reweighted) != taxonomy_version(TAXONOMY)


# Events stored before categories existed -----------------------------------------------------


def _as_v1(app: ClauseWatchApp, notification: Any) -> StoredEvent:
    """A stored event as clausewatch stored it before categories (class_version 1)."""
    state = app.mapper.transcoder.decode(app.mapper.compressor.decompress(notification.state))
    assert state.pop("class_version", 1) in (1, 2)
    if notification.topic.endswith("DocumentCaptured"):
        for clause in state["clauses"] or []:
            del clause["categories"]
    if notification.topic.endswith("ClauseChanged"):
        del state["categories_before"], state["categories_after"]
    raw = app.mapper.compressor.compress(app.mapper.transcoder.encode(state))
    return StoredEvent(originator_id=notification.originator_id,
                       originator_version=notification.originator_version,
                       topic=notification.topic, state=raw)


def _record(service: ClauseWatch, doc: DocumentSettings, clauses: list[str], day: int) -> None:
    service.record_fetch(doc, FetchResult(
        requested_url=doc.url, final_url=doc.url, status=200,
        fetched_at=T0 + timedelta(days=day), body=body(clauses), content_type="text/plain"))


def test_v1_events_read_back_upcast_and_reclassify_fills_them_in(tmp_path: Path) -> None:
    doc = DocumentSettings(id="acme/privacy", platform="Acme", title="Privacy",
                           url="https://x.test/privacy")
    # An older clausewatch's log: written here, then rewritten into the v1 shape.
    old = open_store(StoreSettings(url="memory:"), tmp_path / "old")
    writer = ClauseWatch(old, taxonomy=TAXONOMY)
    writer.sync_documents([doc])
    _record(writer, doc, [AI, NEUTRAL, IMPROVE], 0)
    _record(writer, doc, [AI, NEUTRAL, TRAIN], 1)
    notifications = old.read_notifications(1, 100)
    v1 = [_as_v1(old.app, n) for n in notifications]
    old.close()

    store: Store = open_store(StoreSettings(url=f"sqlite:///{tmp_path}/events.db"), tmp_path)
    try:
        store.recorder.insert_events(v1)
        # The stored state really is v1: no class_version, no categories.
        raw = store.read_notifications(1, 100)
        decoded = [store.app.mapper.transcoder.decode(store.app.mapper.compressor.decompress(
            n.state)) for n in raw]
        assert not any("class_version" in state for state in decoded)
        assert not any("categories_before" in state for state in decoded)

        # Read back: every clause unclassified, the change without categories on either side.
        aggregate = store.app.repository.get(document_uuid(doc.id))
        assert [c["categories"] for c in aggregate.clauses] == [None, None, None]
        [change] = [store.decode(n) for n in raw if n.topic.endswith("ClauseChanged")]
        assert (change.categories_before, change.categories_after) == (None, None)
        assert (change.before, change.after) == (IMPROVE, TRAIN)

        service = ClauseWatch(store, taxonomy=TAXONOMY)
        service.views.catch_up()
        clauses = service.clauses(doc.id)
        assert [c["categories"] for c in clauses] == [None, None, None]
        assert service.categories()[0]["clauses"] == 0

        # `reclassify` appends one event; the v1 events stay as they were.
        assert service.reclassify() == {doc.id: 3}
        after = store.read_notifications(1, 100)
        assert [n.state for n in after[:len(raw)]] == [n.state for n in raw]
        assert after[-1].topic.endswith("ClausesReclassified") and len(after) == len(raw) + 1
        train = next(c for c in service.clauses(doc.id) if c["text"] == TRAIN)
        record = service.clause(train["id"])
        assert ids(record["categories"]) == ["ai-model-training"]
        assert [(h["cause"], h["before"], h["added"]) for h in record["category_history"]] == [
            ("reclassify", None, ["ai-model-training"])]
        # The text change is still there, as recorded: no categories then.
        assert [(h["kind"], h["categories_before"], h["categories_after"])
                for h in record["history"]] == [("modified", None, None)]
        assert service.reclassify() == {doc.id: 0}
    finally:
        store.close()


def test_a_v1_snapshot_reads_back_with_unclassified_clauses() -> None:
    app = ClauseWatchApp(env=application_env(StoreSettings(url="memory:")))
    doc = new_document()
    capture(doc, [AI, NEUTRAL], 0, Counting())
    snapshot = Snapshot.take(doc)
    stored = app.mapper.to_stored_event(snapshot)
    event_state = app.mapper.transcoder.decode(app.mapper.compressor.decompress(stored.state))
    state = event_state["state"]  # the aggregate's attributes
    assert state.pop("class_version") == 2
    del state["taxonomy_version"]
    for clause in state["clauses"]:
        del clause["categories"]
    v1 = StoredEvent(originator_id=stored.originator_id,
                     originator_version=stored.originator_version, topic=stored.topic,
                     state=app.mapper.compressor.compress(
                         app.mapper.transcoder.encode(event_state)))
    restored = app.mapper.to_domain_event(v1).mutate(None)
    assert isinstance(restored, Document)
    assert [(c["text"], c["categories"]) for c in restored.clauses] == [(AI, None),
                                                                        (NEUTRAL, None)]
    assert restored.taxonomy_version is None
    # And it goes on working: a reclassify fills the categories in.
    assert restored.reclassify(Counting(), "tx-test") == 2
    app.close()
