"""Citation records: cite a real clause, tamper with the stored snapshot, cite again.

Through the `clausewatch` command against a real page server and SQLite store, and through
the HTTP API. Contains data from Open Terms Archive (opentermsarchive.org), ODC-By 1.0.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from harness import TRIMMED_CORPUS, PageServer
from prometheus_client import CollectorRegistry

from config.settings import DocumentSettings, StoreSettings
from config.taxonomy import load_taxonomy
from daemon.api import build_api
from daemon.cli import main
from daemon.evidence import EvidenceStore
from daemon.fetcher import FetchResult
from daemon.service import ClauseWatch
from daemon.store import open_store

AI_CLAUSE = ("AI interactions, including prompts, questions, files, and other types of "
             "information that you submit to our AI-powered interfaces, as well as the "
             "responses they generate.")
TIKTOK_US = (TRIMMED_CORPUS / "text" / "tiktok-privacy-us" / "005.md").read_bytes()
# Every property CSL-JSON allows on an item (citation-style-language/schema, csl-data.json);
# the schema sets additionalProperties to false.
CSL_PROPERTIES = {
    "type", "id", "categories", "language", "journalAbbreviation", "shortTitle", "author",
    "chair", "collection-editor", "compiler", "composer", "container-author", "contributor",
    "curator", "director", "editor", "editorial-director", "executive-producer", "interviewer",
    "illustrator", "organizer", "original-author", "performer", "producer", "recipient",
    "reviewed-author", "translator", "accessed", "available-date", "container", "event-date",
    "issued", "original-date", "submitted", "abstract", "annote", "archive",
    "archive_collection", "archive_location", "archive-place", "authority", "call-number",
    "chapter-number", "citation-number", "citation-label", "collection-number",
    "collection-title", "container-title", "container-title-short", "dimensions", "division",
    "DOI", "edition", "event", "event-place", "first-reference-note-number", "genre", "ISAN",
    "ISBN", "ISCI", "ISMN", "ISRC", "ISSN", "ISWC", "issue", "jurisdiction", "keyword",
    "locator", "medium", "note", "number", "number-of-pages", "number-of-volumes",
    "original-publisher", "original-publisher-place", "original-title", "page", "page-first",
    "part", "part-title", "PMCID", "PMID", "printing", "publisher", "publisher-place",
    "references", "reviewed-title", "scale", "section", "source", "status", "supplement",
    "title", "title-short", "translated-title", "translated-title-short", "URL", "version",
    "volume", "year-suffix", "custom",
}


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(tmp_path: Path, page_server: PageServer) -> Path:
    page_server.set("/legal/privacy-policy-us", TIKTOK_US,
                    content_type="text/markdown; charset=utf-8")
    path = tmp_path / "clausewatch.toml"
    path.write_text(f"""
data_dir = "data"

[fetch]
per_host_delay = 0
retries = 0

[[documents]]
id = "tiktok/privacy-us"
platform = "TikTok"
title = "Privacy Policy"
url = "{page_server.url('/legal/privacy-policy-us')}"
robots = false
""")
    return path


def tamper(evidence: Path, sha256: str, body: bytes) -> None:
    """Replace the stored bytes of a capture, keeping its file name."""
    path = EvidenceStore(evidence).path(sha256)
    assert path.exists()
    path.write_bytes(gzip.compress(body))


def test_cite_tamper_cite_again(capsys: pytest.CaptureFixture[str], config: Path,
                                tmp_path: Path) -> None:
    assert run(capsys, "check", "-c", config)[0] == 0
    code, out, _ = run(capsys, "clauses", "tiktok/privacy-us", "-c", config, "--json")
    [clause] = [c for c in json.loads(out) if c["text"] == AI_CLAUSE]
    sha256 = hashlib.sha256(TIKTOK_US).hexdigest()

    # The citation record, in plain text: every fact a filing needs.
    code, text, _ = run(capsys, "cite", clause["id"], "-c", config)
    assert code == 0, text
    lines = dict(line.split(":", 1) for line in text.splitlines()[1:])
    assert text.splitlines()[0] == f"Citation record {clause['record_id']}"
    assert lines["Entity"].strip() == "TikTok"
    assert lines["Document"].strip() == "Privacy Policy (tiktok/privacy-us, record CW-D-00001)"
    assert lines["Text"].strip() == f'"{AI_CLAUSE}"'
    assert lines["Categories"].strip() == "AI interaction data collection (high)"
    assert lines["SHA-256"].strip() == sha256
    assert lines["URL"].strip().endswith("/legal/privacy-policy-us")
    assert lines["Changes"].strip() == "0"
    assert lines["Verification"].strip().startswith(
        "verifies: the stored snapshot still hashes to this SHA-256; checked now")
    assert f"clausewatch record {clause['record_id']}" in lines["Cite as"]

    # JSON: the same record; the check just made is reported, not repeated.
    code, out, _ = run(capsys, "cite", clause["id"], "-c", config, "--format", "json")
    record = json.loads(out)
    assert (record["record_id"], record["clause_id"], record["entity"]) == (
        clause["record_id"], clause["id"], "TikTok")
    assert record["capture"]["sha256"] == sha256
    assert record["capture"]["captured_at"] == record["first_seen"] == clause["first_seen"]
    assert (record["verification"]["status"], record["verification"]["recomputed"]) == (
        "ok", False)
    assert [c["id"] for c in record["categories"]] == ["ai-interaction-data"]

    # CSL-JSON: one webpage item a reference manager accepts.
    code, out, _ = run(capsys, "cite", clause["id"], "-c", config, "--format", "csl")
    [item] = json.loads(out)
    assert set(item) <= CSL_PROPERTIES, set(item) - CSL_PROPERTIES
    assert (item["id"], item["type"], item["publisher"]) == (
        clause["record_id"], "webpage", "TikTok")
    captured = datetime.fromisoformat(record["capture"]["captured_at"])
    assert item["accessed"]["date-parts"] == [[captured.year, captured.month, captured.day]]
    assert sha256 in item["note"] and "verifies" in item["note"]
    assert item["abstract"] == AI_CLAUSE

    # Someone edits the stored snapshot.
    tampered = TIKTOK_US.replace(b"AI interactions", b"Interactions")
    tamper(tmp_path / "data" / "evidence", sha256, tampered)

    # Without --verify the record says when it was last checked (and that it was fine then).
    code, text, _ = run(capsys, "cite", clause["id"], "-c", config)
    assert code == 0 and "verifies" in text and "last checked" in text
    # Asked to verify, it re-hashes: the snapshot no longer verifies, and the exit code says so.
    code, text, _ = run(capsys, "cite", clause["id"], "-c", config, "--verify")
    assert code == 1
    [verification] = [line for line in text.splitlines() if line.startswith("Verification:")]
    assert "DOES NOT VERIFY" in verification
    assert hashlib.sha256(tampered).hexdigest() in verification
    # The failed check is now the last one recorded.
    code, out, _ = run(capsys, "cite", clause["id"], "-c", config, "--format", "json")
    assert code == 1
    assert json.loads(out)["verification"]["status"] == "mismatch"
    code, out, _ = run(capsys, "cite", clause["id"], "-c", config, "--format", "csl")
    assert "DOES NOT VERIFY" in json.loads(out)[0]["note"]


def test_citing_an_unknown_clause_fails(capsys: pytest.CaptureFixture[str],
                                        config: Path) -> None:
    code, _, err = run(capsys, "cite", "cl-000000000000", "-c", config)
    assert code == 1 and "no clause with id 'cl-000000000000'" in err


async def test_citation_over_http(tmp_path: Path) -> None:
    doc = DocumentSettings(id="tiktok/privacy-us", platform="TikTok", title="Privacy Policy",
                           url="https://www.tiktok.com/legal/privacy-policy-us")
    store = open_store(StoreSettings(url=f"sqlite:///{tmp_path}/events.db"), tmp_path)
    service = ClauseWatch(store, taxonomy=load_taxonomy())
    try:
        service.sync_documents([doc])
        outcome = service.record_fetch(doc, FetchResult(
            requested_url=doc.url, final_url=doc.url, status=200, body=TIKTOK_US,
            fetched_at=datetime(2026, 1, 23, 1, 21, 11, tzinfo=UTC),
            content_type="text/markdown"))
        assert outcome.sha256 is not None
        [clause] = [c for c in service.clauses(doc.id) if c["text"] == AI_CLAUSE]
        app = build_api(service, registry=CollectorRegistry(), readiness=_ready)
        async with TestClient(TestServer(app, host="127.0.0.1", port=0)) as client:
            base = f"/api/v1/clauses/{clause['id']}/citation"
            response = await client.get(base)
            assert response.headers["Content-Type"] == "application/json; charset=utf-8"
            body: dict[str, Any] = await response.json()
            assert body["verification"]["status"] == "ok"
            assert body["cite_as"].startswith("TikTok, Privacy Policy, § Information We Collect")
            response = await client.get(base, params={"format": "text"})
            assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert f"Citation record {clause['record_id']}" in await response.text()
            response = await client.get(base, params={"format": "csl"})
            assert response.headers["Content-Type"] == \
                "application/vnd.citationstyles.csl+json; charset=utf-8"
            assert json.loads(await response.text())[0]["id"] == clause["record_id"]

            tamper(tmp_path / "evidence", outcome.sha256, b"<html>replaced</html>")
            response = await client.get(base, params={"verify": "true"})
            verification = (await response.json())["verification"]
            assert (verification["status"], verification["verifies"]) == ("mismatch", False)
            assert verification["actual"] == hashlib.sha256(b"<html>replaced</html>").hexdigest()

            response = await client.get(base, params={"format": "pdf"})
            assert response.status == 400 and (await response.json())["parameter"] == "format"
            response = await client.get(base, params={"verify": "maybe"})
            assert response.status == 400
            response = await client.get("/api/v1/clauses/cl-unknown/citation")
            assert response.status == 404
    finally:
        store.close()


async def _ready() -> tuple[bool, str]:
    return True, ""
