"""Figures for the clause engine: extraction and alignment time, event store and view speed,
and the corpus replays (false alerts and misses, clause counts per version).

Usage: .venv/bin/python bench/clause_engine.py [--corpus DIR] [--events N] [--only SECTION ...]

Prints numbers, asserts nothing. Reads the full corpus beside the repository
(../shared/corpus) when it is there, else the trimmed copy in tests/data/corpus.
Contains data from Open Terms Archive (opentermsarchive.org), ODC-By 1.0.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The replay harness is the tests' own, so the bench and the tests score the same way.
sys.path.insert(0, str(REPO / "tests"))

from config.settings import DocumentSettings, StoreSettings  # noqa: E402
from daemon.projections import Views  # noqa: E402
from daemon.store import open_store  # noqa: E402
from domain.clauses import Clause, align  # noqa: E402
from domain.document import CaptureFacts, Document  # noqa: E402
from domain.extract import Block, extract  # noqa: E402
from domain.normalize import sha256_hex  # noqa: E402
from harness import (  # noqa: E402
    FULL_CORPUS,
    REPLAY_DOCUMENTS,
    TEXT_DOCUMENTS,
    TRIMMED_CORPUS,
    Version,
    declaration,
    page_server,
    replay,
    replay_document_settings,
    replay_versions,
    score,
    score_table,
    text_table,
    text_versions,
)

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
SECTIONS = ("engine", "store", "replay", "text")


# Extraction and alignment ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineTimes:
    document: str
    versions: int
    extract_ms: list[float]
    align_ms: list[float]
    blocks: int


def engine_times(name: str, versions: list[Version], select: object = None,
                 remove: object = None) -> EngineTimes:
    """Extract every version; align each changed text with the last one, as a capture would."""
    extract_ms: list[float] = []
    align_ms: list[float] = []
    clauses: list[Clause] = []
    last_text = None
    blocks: tuple[Block, ...] = ()
    for n, version in enumerate(versions):
        started = time.perf_counter()
        result = extract(version.body, version.content_type, select=select,  # type: ignore[arg-type]
                         remove=remove)  # type: ignore[arg-type]
        extract_ms.append((time.perf_counter() - started) * 1000)
        if not result.blocks or result.text == last_text:
            continue
        started = time.perf_counter()
        alignment = align(clauses, result.blocks, new_id=lambda j, n=n: f"{n}-{j}")
        align_ms.append((time.perf_counter() - started) * 1000)
        clauses = list(alignment.clauses)
        last_text = result.text
        blocks = result.blocks
    return EngineTimes(document=name, versions=len(versions), extract_ms=extract_ms,
                       align_ms=align_ms, blocks=len(blocks))


def print_engine(corpus: Path) -> None:
    print("\n## Extraction and alignment per document")
    print(f"{'document':20} {'versions':>8} {'blocks':>6} {'extract ms mean/max':>20} "
          f"{'aligns':>6} {'align ms mean/max':>18} {'total s':>8}")
    rows: list[EngineTimes] = []
    for name in REPLAY_DOCUMENTS:
        directory = corpus / "replay" / name
        if directory.is_dir():
            decl = declaration(directory)
            rows.append(engine_times(name, replay_versions(directory), decl.get("select"),
                                     decl.get("remove")))
    for name in TEXT_DOCUMENTS:
        directory = corpus / "text" / name
        if directory.is_dir():
            rows.append(engine_times(name, text_versions(directory)))
    for r in rows:
        align = r.align_ms or [0.0]
        print(f"{r.document:20} {r.versions:8d} {r.blocks:6d} "
              f"{statistics.mean(r.extract_ms):9.1f} / {max(r.extract_ms):7.1f} "
              f"{len(r.align_ms):6d} {statistics.mean(align):8.1f} / {max(align):7.1f} "
              f"{(sum(r.extract_ms) + sum(r.align_ms)) / 1000:8.2f}")


# Event store and views ----------------------------------------------------------------------


def _page(words: list[str], build: int) -> bytes:
    body = "".join(f"<p>{w}</p>" for w in words)
    return f"<html><body data-build='{build}'><main>{body}</main></body></html>".encode()


def generate_events(settings: StoreSettings, data_dir: Path, events: int) -> None:
    """Record captures until about `events` events are stored; time the appends, then rebuild."""
    store = open_store(settings, data_dir)
    try:
        documents = 20
        per_document = max(1, events // documents)
        base = [f"Clause {i}: we process personal data of category {i} for purpose {i % 7} "
                f"and keep it for {i + 1} months." for i in range(40)]
        appended = 0
        saving = 0.0
        started = time.perf_counter()
        for d in range(documents):
            doc = Document.register(slug=f"bench/{d}", platform="Bench", title=f"Doc {d}",
                                    url=f"https://bench.test/{d}")
            words = list(base)
            body = _page(words, 0)
            extraction = extract(body, select="main")
            at = datetime(2025, 1, 1, tzinfo=UTC)
            captures = 0
            mine = 0
            while mine < per_document:
                facts = CaptureFacts(captured_at=at, requested_url=doc.url, final_url=doc.url,
                                     http_status=200, content_type="text/html",
                                     sha256=sha256_hex(body), size=len(body))
                doc.record_capture(facts, extraction)
                t = time.perf_counter()
                mine += len(store.app.save(doc))
                saving += time.perf_counter() - t
                captures += 1
                at += timedelta(hours=6)
                # Every 25th capture edits one clause; the others are the same bytes again.
                if captures % 25 == 0:
                    k = (captures // 25) % len(words)
                    words[k] = words[k].replace("months", "weeks") if "months" in words[k] \
                        else words[k].replace("weeks", "months")
                    body = _page(words, captures)
                    extraction = extract(body, select="main")
                else:
                    extraction = None
            appended += mine
        total = time.perf_counter() - started
        print(f"  appended {appended} events in {total:.1f} s of recording, {saving:.1f} s of "
              f"it in save: {appended / saving:,.0f} events/s")
        views = Views(store.db, read=store.read_notifications, decode=store.decode)
        started = time.perf_counter()
        processed = views.rebuild()
        took = time.perf_counter() - started
        print(f"  rebuilt the views from {processed} events in {took:.1f} s: "
              f"{processed / took:,.0f} events/s")
    finally:
        store.close()


@contextmanager
def postgres_schema() -> Iterator[str | None]:
    """A throwaway schema on the local PostgreSQL, or None if it cannot be reached."""
    try:
        import psycopg

        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:  # an unreachable server is a figure we cannot print, not a crash
        print(f"  PostgreSQL at {PG_URL} unreachable: {exc}")
        yield None
        return
    schema = f"cw_bench_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


def print_store(events: int) -> None:
    print(f"\n## Event store and views, about {events:,} events (20 documents, one save per "
          "capture, a clause edit every 25 captures)")
    with tempfile.TemporaryDirectory() as tmp:
        print("SQLite (file):")
        generate_events(StoreSettings(url=f"sqlite:///{tmp}/events.db"), Path(tmp), events)
    with postgres_schema() as schema, tempfile.TemporaryDirectory() as tmp:
        if schema is not None:
            print("PostgreSQL (127.0.0.1):")
            generate_events(StoreSettings(url=PG_URL, schema=schema), Path(tmp), events)


# Replays -----------------------------------------------------------------------------------


def print_replay(corpus: Path) -> None:
    print("\n## Replay: snapshots served on 127.0.0.1 in capture order, one check after each")
    scores = []
    for name in REPLAY_DOCUMENTS:
        directory = corpus / "replay" / name
        if not directory.is_dir():
            continue
        with page_server() as server, tempfile.TemporaryDirectory() as tmp:
            doc = replay_document_settings(name, directory, server)
            started = time.perf_counter()
            steps, service = asyncio.run(replay(server, replay_versions(directory), doc,
                                                Path(tmp)))
            service.store.close()
            took = time.perf_counter() - started
        print(f"  {name}: {len(steps)} checks in {took:.1f} s "
              f"({1000 * took / len(steps):.0f} ms per check)")
        scores.append(score(name, steps))
    print(score_table(scores))
    print("(change = `change` verdicts, missed = of those not reported; silent = `none` and "
          "`errorpage` verdicts, false = of those reported as a change)")


def print_text(corpus: Path) -> None:
    print("\n## Text documents: Markdown versions served in order, one check after each")
    for name in TEXT_DOCUMENTS:
        directory = corpus / "text" / name
        if not directory.is_dir():
            continue
        with page_server() as server, tempfile.TemporaryDirectory() as tmp:
            doc = DocumentSettings(id=name, platform=name, title=name,
                                   url=server.url(f"/{name}"), robots=False)
            steps, service = asyncio.run(replay(server, text_versions(directory), doc,
                                                Path(tmp)))
            service.store.close()
        print(text_table(name, steps))


def main() -> None:
    """Print every section asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=None,
                        help=f"corpus folder (default: {FULL_CORPUS} if present, else the "
                             "trimmed test copy)")
    parser.add_argument("--events", type=int, default=20_000,
                        help="events to generate for the store figures (default 20000)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = parser.parse_args()
    corpus = args.corpus or (FULL_CORPUS if FULL_CORPUS.is_dir() else TRIMMED_CORPUS)
    print(f"# clause engine bench — corpus: {corpus}"
          + ("" if corpus != TRIMMED_CORPUS else " (the trimmed test copy)"))
    if "engine" in args.only:
        print_engine(corpus)
    if "store" in args.only:
        print_store(args.events)
    if "replay" in args.only:
        print_replay(corpus)
    if "text" in args.only:
        print_text(corpus)


if __name__ == "__main__":
    main()
