"""The HTTP API against a real SQLite store and evidence directory, served on 127.0.0.1."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from helpers.notify_kit import settings
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from config.settings import DocumentSettings, StoreSettings
from daemon.api import build_api
from daemon.feeds import atom_feed
from daemon.fetcher import FetchResult
from daemon.metrics import Metrics
from daemon.notifications import Notifications, add_routes
from daemon.service import ClauseWatch
from daemon.store import open_store

ATOM = "{http://www.w3.org/2005/Atom}"
TOKEN = "s3cret-token"
SCRIPT = "We never sell <script>alert(1)</script> your data."

TIKTOK = DocumentSettings(id="tiktok/privacy-policy", platform="TikTok", title="Privacy Policy",
                          url="http://127.0.0.1/tiktok/privacy")
META = DocumentSettings(id="meta/terms", platform="Meta", title="Terms of Service",
                        url="http://127.0.0.1/meta/terms")

TIKTOK_V1 = (b"<html><body><h1>Privacy</h1><p>We collect your email address.</p>"
             b"<p>We share usage data with advertising partners.</p></body></html>")
# Modifies one clause, removes one and adds one whose text is an (escaped) script tag.
TIKTOK_V2 = (b"<html><body><h1>Privacy</h1><p>We collect your email address and phone number.</p>"
             b"<p>We never sell &lt;script&gt;alert(1)&lt;/script&gt; your data.</p>"
             b"</body></html>")
META_V1 = (b"<html><body><h1>Terms</h1><p>You own the content you post on our services.</p>"
           b"</body></html>")
META_V2 = (b"<html><body><h1>Terms</h1><p>You own the content you post on our services, "
           b"and you grant us a licence to use it.</p><p>Disputes go to arbitration.</p>"
           b"</body></html>")
HTML = "text/html; charset=utf-8"


def capture(service: ClauseWatch, doc: DocumentSettings, body: bytes, at: datetime,
            content_type: str = HTML) -> str:
    outcome = service.record_fetch(doc, FetchResult(
        requested_url=doc.url, final_url=doc.url, status=200, fetched_at=at, body=body,
        content_type=content_type))
    assert outcome.sha256 is not None
    return outcome.sha256


class Readiness:
    """A readiness probe the test can flip."""

    def __init__(self) -> None:
        self.ready, self.reason = True, ""
        self.error: Exception | None = None

    async def __call__(self) -> tuple[bool, str]:
        if self.error is not None:
            raise self.error
        return self.ready, self.reason


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ClauseWatch]:
    store = open_store(StoreSettings(url=f"sqlite:///{tmp_path}/events.db"), tmp_path)
    svc = ClauseWatch(store)
    svc.sync_documents([TIKTOK, META])
    # Five changes in all: three for TikTok on 2 January, two for Meta on 10 February.
    capture(svc, TIKTOK, TIKTOK_V1, datetime(2025, 1, 1, tzinfo=UTC))
    capture(svc, TIKTOK, TIKTOK_V2, datetime(2025, 1, 2, tzinfo=UTC))
    capture(svc, META, META_V1, datetime(2025, 2, 1, tzinfo=UTC))
    capture(svc, META, META_V2, datetime(2025, 2, 10, tzinfo=UTC))
    yield svc
    store.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


Start = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def start(service: ClauseWatch, metrics: Metrics,
                readiness: Readiness) -> AsyncIterator[Start]:
    clients: list[TestClient[Any, Any]] = []

    async def start(*, svc: ClauseWatch | None = None, **options: Any) -> TestClient[Any, Any]:
        app = build_api(svc or service, registry=metrics.registry, readiness=readiness,
                        **options)
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


@pytest.fixture
async def client(start: Start) -> TestClient[Any, Any]:
    return await start()


async def get_json(client: TestClient[Any, Any], path: str, status: int = 200,
                   **kwargs: Any) -> Any:
    response = await client.get(path, **kwargs)
    body = await response.text()
    assert response.status == status, body
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    return json.loads(body)


async def get_feed(client: TestClient[Any, Any], path: str, **kwargs: Any) -> ET.Element:
    response = await client.get(path, **kwargs)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "application/atom+xml; charset=utf-8"
    return ET.fromstring(await response.read())


# Health, readiness, metrics ------------------------------------------------------------------

async def test_healthz_says_alive(client: TestClient[Any, Any]) -> None:
    assert await get_json(client, "/healthz") == {"status": "alive"}


async def test_readyz_follows_the_probe(client: TestClient[Any, Any],
                                        readiness: Readiness) -> None:
    assert await get_json(client, "/readyz") == {"status": "ready"}

    readiness.ready, readiness.reason = False, "event store unreachable"
    assert await get_json(client, "/readyz", 503) == {
        "status": "not ready", "reason": "event store unreachable"}

    # A probe that raises is a "not ready", not a 500.
    readiness.error = RuntimeError("database is locked")
    body = await get_json(client, "/readyz", 503)
    assert body["status"] == "not ready"
    assert "database is locked" in body["reason"]


async def test_metrics_come_from_the_injected_registry(client: TestClient[Any, Any],
                                                       metrics: Metrics) -> None:
    metrics.captures.labels(outcome="changed").inc(3)
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for s in families["clausewatch_captures"].samples}
    assert samples[("clausewatch_captures_total", (("outcome", "changed"),))] == 3.0
    assert "clausewatch_fetch_duration_seconds" in families


# Documents, clauses, captures ------------------------------------------------------------------

async def test_documents_lists_every_document(client: TestClient[Any, Any]) -> None:
    body = await get_json(client, "/api/v1/documents")
    assert [d["id"] for d in body["items"]] == ["meta/terms", "tiktok/privacy-policy"]
    tiktok = body["items"][1]
    assert tiktok["platform"] == "TikTok"
    assert tiktok["changes"] == 3
    assert tiktok["captures"] == 2


@pytest.mark.parametrize("path", ["/api/v1/documents/tiktok/privacy-policy",
                                  "/api/v1/documents/tiktok%2Fprivacy-policy"])
async def test_document_ids_with_a_slash(client: TestClient[Any, Any], path: str) -> None:
    body = await get_json(client, path)
    assert body["id"] == "tiktok/privacy-policy"
    assert body["title"] == "Privacy Policy"
    assert body["last_updated"] == "2025-01-02T00:00:00Z"


async def test_unknown_document_is_a_json_404(client: TestClient[Any, Any]) -> None:
    body = await get_json(client, "/api/v1/documents/tiktok/terms", 404)
    assert "tiktok/terms" in body["error"]
    await get_json(client, "/api/v1/documents/tiktok/terms/clauses", 404)
    await get_json(client, "/api/v1/documents/tiktok/terms/captures", 404)


async def test_clauses_of_a_document_filtered_by_status(client: TestClient[Any, Any]) -> None:
    every = (await get_json(client, "/api/v1/documents/tiktok/privacy-policy/clauses"))["items"]
    assert [c["status"] for c in every] == ["present", "present", "present", "removed"]
    assert every[1]["text"] == "We collect your email address and phone number."

    present = await get_json(client,
                             "/api/v1/documents/tiktok/privacy-policy/clauses?status=present")
    assert [c["id"] for c in present["items"]] == [c["id"] for c in every[:3]]
    removed = await get_json(client,
                             "/api/v1/documents/tiktok/privacy-policy/clauses?status=removed")
    assert [c["text"] for c in removed["items"]] == [
        "We share usage data with advertising partners."]

    error = await get_json(client, "/api/v1/documents/tiktok/privacy-policy/clauses?status=gone",
                           400)
    assert error["parameter"] == "status"


async def test_captures_of_a_document_newest_first(client: TestClient[Any, Any]) -> None:
    body = await get_json(client, "/api/v1/documents/tiktok/privacy-policy/captures")
    assert [c["outcome"] for c in body["items"]] == ["changed", "baseline"]
    assert body["items"][0]["sha256"] == hashlib.sha256(TIKTOK_V2).hexdigest()

    one = await get_json(client, "/api/v1/documents/tiktok/privacy-policy/captures?limit=1")
    assert [c["outcome"] for c in one["items"]] == ["changed"]
    error = await get_json(client, "/api/v1/documents/tiktok/privacy-policy/captures?limit=x",
                           400)
    assert error["parameter"] == "limit"


async def test_clause_with_its_history(client: TestClient[Any, Any]) -> None:
    modified = (await get_json(client, "/api/v1/changes?kind=modified&document=meta/terms"))
    clause_id = modified["items"][0]["clause"]

    body = await get_json(client, f"/api/v1/clauses/{clause_id}")
    assert body["id"] == clause_id
    assert body["document"] == "meta/terms"
    assert body["text"].endswith("and you grant us a licence to use it.")
    assert [h["kind"] for h in body["history"]] == ["modified"]
    assert body["history"][0]["before"] == "You own the content you post on our services."

    error = await get_json(client, "/api/v1/clauses/cl-000000000000", 404)
    assert "cl-000000000000" in error["error"]


# Changes: pagination, filters, validation ------------------------------------------------------

async def test_changes_paginate_with_a_cursor(client: TestClient[Any, Any]) -> None:
    pages, cursor = [], None
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await get_json(client, f"/api/v1/changes?{query}")
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 5, "the cursor never ends"
    assert [len(p) for p in pages] == [2, 2, 1]
    seqs = [c["seq"] for p in pages for c in p]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    everything = await get_json(client, "/api/v1/changes")
    assert [c["seq"] for c in everything["items"]] == seqs
    assert everything["next_cursor"] is None


async def test_changes_filters(client: TestClient[Any, Any]) -> None:
    async def kinds(query: str) -> list[tuple[str, str]]:
        body = await get_json(client, f"/api/v1/changes?{query}")
        return [(c["document"], c["kind"]) for c in body["items"]]

    assert await kinds("document=tiktok/privacy-policy") == [
        ("tiktok/privacy-policy", "modified"), ("tiktok/privacy-policy", "removed"),
        ("tiktok/privacy-policy", "added")]
    assert await kinds("since=2025-02-01T00:00:00Z") == [
        ("meta/terms", "modified"), ("meta/terms", "added")]
    # A date alone, and an offset, are understood (as UTC midnight, and converted to UTC).
    assert len(await kinds("since=2025-01-02")) == 5
    assert len(await kinds("since=2025-01-02T01:00:00%2B01:00")) == 5
    assert len(await kinds("since=2025-01-02T00:00:00.5Z")) == 2
    assert await kinds("kind=added") == [
        ("tiktok/privacy-policy", "added"), ("meta/terms", "added")]
    assert await kinds("kind=added&document=meta/terms&since=2025-01-01") == [
        ("meta/terms", "added")]
    assert await kinds("kind=moved") == []


@pytest.mark.parametrize(("query", "parameter"), [
    ("limit=0", "limit"),
    ("limit=1001", "limit"),
    ("limit=ten", "limit"),
    ("cursor=-1", "cursor"),
    ("cursor=abc", "cursor"),
    ("since=yesterday", "since"),
    ("kind=deleted", "kind"),
    ("document=", "document"),
    ("kind=added&kind=removed", "kind"),
    ("doc=meta/terms", "doc"),
])
async def test_changes_reject_bad_parameters(client: TestClient[Any, Any], query: str,
                                             parameter: str) -> None:
    body = await get_json(client, f"/api/v1/changes?{query}", 400)
    assert body["parameter"] == parameter
    assert parameter in body["error"]


async def test_changes_of_an_unknown_document_are_a_404(client: TestClient[Any, Any]) -> None:
    body = await get_json(client, "/api/v1/changes?document=nobody/privacy", 404)
    assert "nobody/privacy" in body["error"]


async def test_page_text_is_data_in_json(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/v1/changes?kind=added&document=tiktok/privacy-policy")
    raw = await response.text()
    # No tag survives in the bytes, yet the decoded value is the text exactly as published.
    assert "<script>" not in raw and "\\u003cscript\\u003e" in raw
    assert json.loads(raw)["items"][0]["after"] == SCRIPT


# Capture bytes -----------------------------------------------------------------------------

async def test_capture_bytes_round_trip(client: TestClient[Any, Any], service: ClauseWatch,
                                        tmp_path: Path) -> None:
    pdf = b"%PDF-1.4 not really a pdf"
    doc = DocumentSettings(id="acme/privacy", platform="Acme", title="Privacy",
                           url="http://127.0.0.1/acme.pdf", content_type="text/plain")
    service.sync_documents([doc])
    sha = capture(service, doc, pdf, datetime(2025, 3, 1, tzinfo=UTC), "application/pdf")

    response = await client.get(f"/api/v1/captures/{sha}")
    assert response.status == 200
    assert await response.read() == pdf
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.headers["ETag"] == f'"{sha}"'
    assert response.headers["Content-Disposition"] == f'attachment; filename="{sha}.pdf"'

    html_sha = hashlib.sha256(TIKTOK_V2).hexdigest()
    response = await client.get(f"/api/v1/captures/{html_sha}")
    assert await response.read() == TIKTOK_V2
    assert response.headers["Content-Type"] == HTML
    # Untrusted HTML: never sniffed, never rendered in our origin, always downloaded.
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"].startswith("sandbox")
    assert response.headers["Content-Disposition"].startswith("attachment;")

    cached = await client.get(f"/api/v1/captures/{html_sha}",
                              headers={"If-None-Match": f'"{html_sha}"'})
    assert cached.status == 304
    assert await cached.read() == b""


async def test_tampered_capture_is_refused(client: TestClient[Any, Any], tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    sha = hashlib.sha256(TIKTOK_V1).hexdigest()
    path = tmp_path / "evidence" / sha[:2] / sha[2:4] / f"{sha}.gz"
    assert path.exists()
    path.write_bytes(gzip.compress(b"<html><body>We sell everything.</body></html>"))

    with caplog.at_level(logging.ERROR, logger="daemon.api"):
        body = await get_json(client, f"/api/v1/captures/{sha}", 500)
    assert "no longer match" in body["error"]
    assert sha in caplog.text


async def test_missing_and_malformed_captures(client: TestClient[Any, Any],
                                              tmp_path: Path) -> None:
    sha = hashlib.sha256(META_V1).hexdigest()
    (tmp_path / "evidence" / sha[:2] / sha[2:4] / f"{sha}.gz").unlink()
    body = await get_json(client, f"/api/v1/captures/{sha}", 404)
    assert sha in body["error"]

    await get_json(client, f"/api/v1/captures/{'0' * 64}", 404)
    body = await get_json(client, "/api/v1/captures/not-a-hash", 400)
    assert body["parameter"] == "sha256"
    await get_json(client, f"/api/v1/captures/{'A' * 64}", 400)


# Atom feeds ------------------------------------------------------------------------------------

async def test_changes_feed_is_atom(client: TestClient[Any, Any]) -> None:
    feed = await get_feed(client, "/feeds/changes.atom")
    assert feed.tag == f"{ATOM}feed"
    for required in ("id", "title", "updated", "author"):
        assert feed.find(f"{ATOM}{required}") is not None, required
    assert feed.findtext(f"{ATOM}updated") == "2025-02-10T00:00:00Z"

    entries = feed.findall(f"{ATOM}entry")
    assert [e.findtext(f"{ATOM}title") for e in entries] == [
        "Meta Terms of Service: clause added", "Meta Terms of Service: clause modified",
        "TikTok Privacy Policy: clause added", "TikTok Privacy Policy: clause removed",
        "TikTok Privacy Policy: clause modified"]
    changes = (await get_json(client, "/api/v1/changes"))["items"]
    assert [e.findtext(f"{ATOM}id") for e in entries] == [
        f"urn:clausewatch:change:{c['id']}" for c in reversed(changes)]

    modified = entries[4]
    assert modified.findtext(f"{ATOM}updated") == "2025-01-02T00:00:00Z"
    content = modified.find(f"{ATOM}content")
    assert content is not None and content.get("type") == "text"
    assert "Before:\nWe collect your email address.\n" in (content.text or "")
    assert "After:\nWe collect your email address and phone number." in (content.text or "")

    limited = await get_feed(client, "/feeds/changes.atom?limit=2")
    assert len(limited.findall(f"{ATOM}entry")) == 2


async def test_page_text_is_escaped_in_atom(client: TestClient[Any, Any]) -> None:
    response = await client.get("/feeds/changes.atom")
    raw = await response.read()
    assert b"<script>" not in raw and b"&lt;script&gt;" in raw
    feed = ET.fromstring(raw)
    added = feed.findall(f"{ATOM}entry")[2]
    assert SCRIPT in (added.findtext(f"{ATOM}content") or "")


async def test_document_feed(start: Start) -> None:
    client = await start(public_url="https://watch.example.org/")
    feed = await get_feed(client, "/feeds/documents/tiktok/privacy-policy/changes.atom")
    assert feed.findtext(f"{ATOM}title") == "TikTok Privacy Policy: clause changes"
    self_link = feed.find(f"{ATOM}link[@rel='self']")
    assert self_link is not None and self_link.get("href") == (
        "https://watch.example.org/feeds/documents/tiktok/privacy-policy/changes.atom")
    entries = feed.findall(f"{ATOM}entry")
    assert len(entries) == 3
    assert all(e.findtext(f"{ATOM}title", "").startswith("TikTok") for e in entries)
    related = entries[0].find(f"{ATOM}link[@rel='related']")
    assert related is not None
    assert related.get("href", "").startswith("https://watch.example.org/api/v1/clauses/cl-")

    await get_json(client, "/feeds/documents/nobody/privacy/changes.atom", 404)


def test_atom_feed_drops_characters_xml_cannot_carry() -> None:
    change: dict[str, Any] = {"id": "a:1", "document": "x/y", "clause": "cl-1", "kind": "added",
              "section": [], "before": None, "after": "bell\x07 and nul\x00 here",
              "captured_at": "2025-01-01T00:00:00Z"}
    feed = ET.fromstring(atom_feed([change], {}, feed_id="urn:x", title="t",
                                   self_url="http://127.0.0.1/feeds/changes.atom"))
    assert feed.findtext(f"{ATOM}entry/{ATOM}content") == "Added:\nbell\ufffd and nul\ufffd here"


# Authentication --------------------------------------------------------------------------------

async def test_bearer_token_guards_api_and_feeds(start: Start) -> None:
    client = await start(token=TOKEN)
    good = {"Authorization": f"Bearer {TOKEN}"}

    for path in ("/api/v1/documents", "/api/v1/changes", "/feeds/changes.atom",
                 "/api/v1/openapi.json", "/api/v1/nothing-here"):
        response = await client.get(path)
        assert response.status == 401, path
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="clausewatch"'
        assert "Authorization" in (await response.json())["error"]

    wrong = await client.get("/api/v1/documents", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    basic = await client.get("/api/v1/documents", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status == 401

    assert len((await get_json(client, "/api/v1/documents", headers=good))["items"]) == 2
    lower = {"Authorization": f"bearer {TOKEN}"}
    assert (await client.get("/feeds/changes.atom", headers=lower)).status == 200
    # Probes and scrapes need no token.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status == 200, path


async def test_without_a_token_everything_is_open(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/v1/documents",
                                headers={"Authorization": "Bearer anything"})
    assert response.status == 200


# Errors and the OpenAPI description --------------------------------------------------------

async def test_unknown_paths_and_methods_are_json(client: TestClient[Any, Any]) -> None:
    body = await get_json(client, "/api/v2/documents", 404)
    assert "/api/v2/documents" in body["error"]
    response = await client.post("/api/v1/documents")
    assert response.status == 405
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert "GET" in response.headers["Allow"]


async def test_unexpected_errors_are_logged_not_shown(start: Start, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    # A store whose read database has gone away under the service.
    store = open_store(StoreSettings(url=f"sqlite:///{tmp_path}/other/events.db"),
                       tmp_path / "other")
    broken = ClauseWatch(store)
    store.db.close()
    client = await start(svc=broken)
    try:
        with caplog.at_level(logging.ERROR, logger="daemon.api"):
            response = await client.get("/api/v1/documents")
            raw = await response.text()
        assert response.status == 500
        body = json.loads(raw)
        assert body["error"] == "internal server error"
        assert "Traceback" not in raw and "sqlite" not in raw.lower()
        assert body["request_id"] in caplog.text
        assert "Traceback" in caplog.text
    finally:
        store.app.close()


async def test_openapi_describes_every_route(service: ClauseWatch, metrics: Metrics,
                                             readiness: Readiness, tmp_path: Path) -> None:
    # The app as the runtime serves it: the read API plus the deliveries routes.
    app = build_api(service, registry=metrics.registry, readiness=readiness)
    notify_settings = settings(tmp_path, StoreSettings(url=f"sqlite:///{tmp_path}/events.db"))
    add_routes(app, Notifications(service.store, notify_settings, metrics, {}))
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        await _openapi_matches_routes(client)
    finally:
        await client.close()


async def _openapi_matches_routes(client: TestClient[Any, Any]) -> None:
    spec = await get_json(client, "/api/v1/openapi.json")
    assert spec["openapi"].startswith("3.1")
    served = {(resource.canonical, route.method.lower())
              for resource in client.app.router.resources()
              for route in resource if route.method != "HEAD"}
    described = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert served == described
    # Every reference resolves.
    refs = {m for m in json.dumps(spec).split('"') if m.startswith("#/components/schemas/")}
    assert refs and all(r.rsplit("/", 1)[1] in spec["components"]["schemas"] for r in refs)
    changes = spec["paths"]["/api/v1/changes"]["get"]
    assert {p["name"] for p in changes["parameters"]} == {
        "document", "since", "kind", "limit", "cursor"}
    assert spec["paths"]["/healthz"]["get"]["security"] == []
