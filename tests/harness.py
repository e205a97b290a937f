"""Real parts shared by the tests and bench/: a page server on 127.0.0.1 and corpus replays.

The page server runs its own event loop in a thread, so synchronous tests (the CLI calls
asyncio.run itself) and async tests use it the same way.
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from config.settings import DocumentSettings, FetchSettings, StoreSettings
from daemon.check import client_session, poll
from daemon.fetcher import Fetcher
from daemon.service import ClauseWatch
from daemon.store import open_store
from domain.classify import Taxonomy

REPO = Path(__file__).resolve().parents[1]
# The trimmed copy the tests use, so that a fresh clone gives the same results everywhere.
TRIMMED_CORPUS = REPO / "tests" / "data" / "corpus"
# The whole corpus, beside the repository when it is there: only bench/ reads it.
FULL_CORPUS = REPO.parent / "shared" / "corpus"
REPLAY_DOCUMENTS = ("buffer-privacy", "github-privacy", "llama-api-aup")
TEXT_DOCUMENTS = ("tiktok-privacy-us", "tiktok-privacy-eea", "google-privacy")
# Fast and impolite on purpose: every request goes to our own server on loopback.
LOOPBACK_FETCH = FetchSettings(per_host_delay=0, retries=0, robots=False, timeout=30,
                               connect_timeout=5)

# A category the shipped taxonomy lacks: tests add it to see a taxonomy edit take effect.
SUPPORT_CATEGORY = """
[[categories]]
id = "support-contact"
name = "Support contact"
description = "How to reach support."
severity = "low"
regulations = []

  [[categories.rules]]
  phrases = ["support team"]
"""


def taxonomy_with_support(directory: Path) -> Path:
    """The shipped taxonomy plus SUPPORT_CATEGORY, written to directory/taxonomy.toml."""
    path = directory / "taxonomy.toml"
    path.write_text((REPO / "config" / "taxonomy.toml").read_text(encoding="utf-8")
                    + SUPPORT_CATEGORY, encoding="utf-8")
    return path


# The page server ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """What the server answers on one path."""

    body: bytes
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    # With an ETag the server answers a matching If-None-Match with 304.
    etag: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SeenRequest:
    """A request the server received."""

    path: str
    headers: Mapping[str, str]
    status: int


class PageServer:
    """An aiohttp server on 127.0.0.1, port 0, whose answers a test sets per path."""

    def __init__(self) -> None:
        self.pages: dict[str, Page] = {}
        self.requests: list[SeenRequest] = []
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def set(self, path: str, body: bytes | str, *, content_type: str = "text/html; "
            "charset=utf-8", status: int = 200, headers: Mapping[str, str] | None = None,
            etag: str | None = None) -> str:
        """Answer `path` with this page from now on; returns its URL."""
        if isinstance(body, str):
            body = body.encode("utf-8")
        with self._lock:
            self.pages[path] = Page(body=body, content_type=content_type, status=status,
                                    headers=dict(headers or {}), etag=etag)
        return self.url(path)

    def url(self, path: str = "/") -> str:
        """The absolute URL of a path on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str) -> list[SeenRequest]:
        """The requests received for one path, oldest first."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        with self._lock:
            page = self.pages.get(request.path)
        if page is None:
            response = web.Response(status=404, text="not found")
        elif page.etag is not None and request.headers.get("If-None-Match") == page.etag:
            response = web.Response(status=304, headers={"ETag": page.etag})
        else:
            headers = dict(page.headers)
            if page.etag is not None:
                headers["ETag"] = page.etag
            response = web.Response(status=page.status, body=page.body, headers=headers)
            response.headers["Content-Type"] = page.content_type
        with self._lock:
            self.requests.append(SeenRequest(path=request.path, headers=dict(request.headers),
                                             status=response.status))
        return response

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    def start(self) -> PageServer:
        """Start serving in a background thread."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="page-server",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        assert self._loop is not None and self._thread is not None
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop) \
                .result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@contextmanager
def page_server() -> Iterator[PageServer]:
    """A running PageServer for the length of a `with` block."""
    server = PageServer().start()
    try:
        yield server
    finally:
        server.stop()


# The corpus -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Version:
    """One capture to serve: its bytes, when it was captured and the verdict to score it by."""

    seq: int
    captured_at: datetime
    body: bytes
    content_type: str
    verdict: str = ""


def declaration(document_dir: Path) -> dict[str, Any]:
    """A replay document's Open Terms Archive declaration."""
    return dict(json.loads((document_dir / "declaration.json").read_text("utf-8")))


def _manifest(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def replay_versions(document_dir: Path) -> list[Version]:
    """The snapshots of a replay document, oldest first, decompressed."""
    return [
        Version(seq=int(row["seq"]), captured_at=datetime.fromisoformat(row["captured_at"]),
                body=gzip.decompress((document_dir / "snapshots" / row["file"]).read_bytes()),
                content_type="text/html; charset=utf-8", verdict=row["verdict"])
        for row in _manifest(document_dir / "manifest.tsv")
    ]


def text_versions(document_dir: Path) -> list[Version]:
    """The Markdown versions of a text document, oldest first."""
    return [
        Version(seq=int(row["seq"]), captured_at=datetime.fromisoformat(row["recorded_at"]),
                body=(document_dir / f"{int(row['seq']):03d}.md").read_bytes(),
                content_type="text/markdown; charset=utf-8")
        for row in _manifest(document_dir / "manifest.tsv")
    ]


# Replaying --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """What one check did with one version."""

    seq: int
    verdict: str
    outcome: str
    changes: int  # ClauseChanged events this check recorded
    kinds: tuple[str, ...]
    reason: str | None
    clauses: int  # present clauses after the check
    captured_at: str | None


async def replay(server: PageServer, versions: list[Version], doc: DocumentSettings,
                 data_dir: Path, *, store: StoreSettings | None = None,
                 taxonomy: Taxonomy | None = None, service: ClauseWatch | None = None,
                 ) -> tuple[list[Step], ClauseWatch]:
    """Serve each version in turn at the document's URL and run one check after each.

    The fetcher's clock reads the version's capture time, so the views carry the corpus's
    dates. Returns the steps and the (still open) service; close its store when done.
    Pass `service` to replay several documents into one store.
    """
    path = doc.url.removeprefix(server.url(""))
    if service is None:
        opened = open_store(store or StoreSettings(url="memory:"), data_dir)
        service = ClauseWatch(opened, taxonomy=taxonomy)
    await asyncio.to_thread(service.sync_documents, [doc])
    now: list[datetime] = []
    steps: list[Step] = []
    async with client_session(LOOPBACK_FETCH) as session:
        fetcher = Fetcher(session, LOOPBACK_FETCH, clock=lambda: now[-1])
        for version in versions:
            now.append(version.captured_at)
            server.set(path, version.body, content_type=version.content_type)
            seen = await asyncio.to_thread(_last_change_seq, service, doc.id)
            outcome = await poll(service, fetcher, doc)
            new_changes = await asyncio.to_thread(service.changes, document=doc.id,
                                                  after_seq=seen)
            record = await asyncio.to_thread(service.document, doc.id)
            steps.append(Step(seq=version.seq, verdict=version.verdict,
                              outcome=outcome.outcome, changes=len(new_changes),
                              kinds=tuple(c["kind"] for c in new_changes),
                              reason=outcome.reason, clauses=outcome.clauses,
                              captured_at=record["last_captured"]))
    return steps, service


def _last_change_seq(service: ClauseWatch, document_id: str) -> int:
    return int(service.store.db.scalar(
        "SELECT COALESCE(MAX(seq), 0) FROM cw_changes WHERE document = ?", (document_id,)))


def replay_document_settings(name: str, document_dir: Path, server: PageServer,
                             ) -> DocumentSettings:
    """The config of a replay document: its declaration's select/remove, served locally."""
    decl = declaration(document_dir)
    return DocumentSettings(id=name, platform=decl.get("service", name),
                            title=decl.get("terms_type", name), url=server.url(f"/{name}"),
                            select=decl.get("select"), remove=decl.get("remove"), robots=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Score:
    """How a replay did against the corpus verdicts."""

    document: str
    reported: list[int]  # `change` verdicts reported (as a change, or as the baseline)
    misses: list[int]  # `change` verdicts with no change reported
    false_alerts: list[int]  # `none` / `errorpage` verdicts where a change was reported
    silent: list[int]  # `none` / `errorpage` verdicts with no change reported
    linkonly_alerts: list[int]  # `linkonly` verdicts reported (allowed, not required)
    linkonly_silent: list[int]


def score(document: str, steps: list[Step]) -> Score:
    """Score each step by its verdict; `first` and `technical` are not judged."""
    s = Score(document=document, reported=[], misses=[], false_alerts=[], silent=[],
              linkonly_alerts=[], linkonly_silent=[])
    for step in steps:
        alerted = step.changes > 0
        if step.verdict == "change":
            # A baseline is how a change is reported when it is the first good capture.
            ok = step.outcome == "baseline" or (step.outcome == "changed" and alerted)
            (s.reported if ok else s.misses).append(step.seq)
        elif step.verdict in ("none", "errorpage"):
            (s.false_alerts if alerted else s.silent).append(step.seq)
        elif step.verdict == "linkonly":
            (s.linkonly_alerts if alerted else s.linkonly_silent).append(step.seq)
    return s


def score_table(scores: list[Score]) -> str:
    """A plain-text table of false alerts and misses per document."""
    lines = [f"{'document':18} {'change':>6} {'missed':>6} {'silent':>6} {'false':>6} "
             f"{'linkonly alerts':>15}"]
    for s in scores:
        lines.append(f"{s.document:18} {len(s.reported) + len(s.misses):6d} {len(s.misses):6d} "
                     f"{len(s.silent) + len(s.false_alerts):6d} {len(s.false_alerts):6d} "
                     f"{len(s.linkonly_alerts):>7d} of {len(s.linkonly_alerts) + len(s.linkonly_silent):<3d}"
                     + (f"  misses at {s.misses}" if s.misses else "")
                     + (f"  false alerts at {s.false_alerts}" if s.false_alerts else ""))
    return "\n".join(lines)


def text_table(document: str, steps: list[Step]) -> str:
    """Clause counts and change kinds per version of a text document."""
    lines = [f"{document}: version, outcome, clauses, changes by kind"]
    for step in steps:
        kinds: dict[str, int] = {}
        for kind in step.kinds:
            kinds[kind] = kinds.get(kind, 0) + 1
        detail = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "-"
        lines.append(f"  {step.seq:03d}  {step.outcome:9} {step.clauses:4d} clauses  {detail}")
    return "\n".join(lines)
