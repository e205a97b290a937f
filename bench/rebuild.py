"""Projection rebuild: the read views replayed from a large event log, SQLite and PostgreSQL.

The log is made by the real aggregate from real clause lists (a corpus page's blocks, ~230
clauses): 1,000 documents are registered and captured in rounds, interleaved as polling
interleaves them; one capture in `CHANGE_EVERY` of a document rewords two clauses (a
DocumentCaptured carrying the new clause list and two ClauseChanged), the others are
unchanged captures. Then `clausewatch rebuild -c FILE` runs as a subprocess and is timed.

    .venv/bin/python bench/rebuild.py --events 1000000 [--pg-url URL] [--no-sqlite]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pages
import procstats

REPO = Path(__file__).resolve().parents[1]
CHANGE_EVERY = 50  # a text change once in this many captures of a document
DOCUMENTS = 1_000


def _clause_blocks(corpus: Path) -> list[Any]:
    from domain.extract import extract

    triple = pages.load_triples(corpus)[1]
    return list(extract(triple.body(0, 0), "text/html", select=triple.select).blocks)


def fill(store_settings: Any, data_dir: Path, events: int, corpus: Path,
         log: Callable[[str], None], *, documents: int = DOCUMENTS) -> dict[str, Any]:
    """Write about `events` events through the real aggregate, interleaved across documents
    as polling interleaves them; returns counts."""
    from daemon.store import open_store
    from domain.document import CaptureFacts, Document
    from domain.extract import Extraction

    blocks = _clause_blocks(corpus)
    store = open_store(store_settings, data_dir)
    app = store.app
    started = time.perf_counter()
    docs = [Document.register(slug=f"bench/rebuild-{n:05d}", platform="Bench",
                              title=f"Rebuild {n}", url=f"https://example.org/{n}")
            for n in range(documents)]
    texts = [list(blocks) for _ in docs]
    shas = [uuid.uuid4().hex * 2 for _ in docs]
    written = 0
    at = datetime(2024, 1, 1, tzinfo=UTC)
    rounds = 0
    try:
        while written < events:
            at += timedelta(minutes=10)
            for n, doc in enumerate(docs):
                extraction = None
                # Staggered, so each round changes the text of a few documents, not all.
                if doc.last_outcome is None or (rounds + n) % CHANGE_EVERY == 0:
                    if doc.last_outcome is not None:
                        # Two clauses reworded, as a policy update does.
                        current = texts[n]
                        for k in (rounds * 7 % len(current), rounds * 13 % len(current)):
                            current[k] = replace(current[k],
                                                 text=f"{current[k].text} (revised {rounds})")
                    shas[n] = uuid.uuid4().hex * 2
                    extraction = Extraction(blocks=tuple(texts[n]))
                facts = CaptureFacts(captured_at=at, requested_url=doc.url, final_url=doc.url,
                                     http_status=200, content_type="text/html",
                                     sha256=shas[n], size=250_000)
                doc.record_capture(facts, extraction)
            for k in range(0, len(docs), 200):
                batch = docs[k:k + 200]
                written += sum(len(d.pending_events) for d in batch)
                app.save(*batch)
            rounds += 1
            if rounds % 50 == 0:
                log(f"  {written:,} events written "
                    f"({written / (time.perf_counter() - started):,.0f}/s)")
    finally:
        store.close()
    return {"events": written, "documents": documents, "rounds": rounds,
            "fill_seconds": round(time.perf_counter() - started, 1)}


def _config(path: Path, data_dir: Path, store_url: str | None, schema: str | None) -> Path:
    lines = [f'data_dir = "{data_dir}"']
    if store_url:
        lines += ["[store]", f'url = "{store_url}"'] + ([f'schema = "{schema}"'] if schema else [])
    path.write_text("\n".join(lines) + "\n")
    return path


def rebuild_once(config: Path) -> dict[str, Any]:
    """`clausewatch rebuild` as a subprocess: wall, CPU, peak RSS."""
    done = procstats.run_measured([str(REPO / ".venv" / "bin" / "clausewatch"), "rebuild",
                                   "-c", str(config)], cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"rebuild failed: {done.stderr[-2000:]}")
    count = int(done.stdout.split("from ")[1].split()[0])
    return {"events": count, "wall_s": round(done.wall, 2), "cpu_s": round(done.cpu, 2),
            "peak_rss_mb": round(done.peak_rss_mb, 1),
            "events_per_s": round(count / done.wall) if done.wall else None}


def run_backend(name: str, events: int, workdir: Path, corpus: Path, log: Callable[[str], None],
                *, store_url: str | None = None, documents: int = DOCUMENTS,
                repeat: int = 1) -> dict[str, Any]:
    """Fill a log, then rebuild it `repeat` times: the median run's figures, and every run
    (the first into empty views, the next ones emptying full views first, as a rebuild
    usually does)."""
    from config.settings import StoreSettings

    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    schema = None
    if store_url:
        schema = f"cw_bench_{uuid.uuid4().hex[:8]}"
        settings = StoreSettings(url=store_url, schema=schema)
    else:
        settings = StoreSettings(url=f"sqlite:///{data_dir / 'events.db'}")
    try:
        log(f"rebuild/{name}: writing {events:,} events")
        filled = fill(settings, data_dir, events, corpus, log, documents=documents)
        config = _config(workdir / "clausewatch.toml", data_dir, settings.url, schema)
        runs = []
        for n in range(repeat):
            log(f"rebuild/{name}: rebuilding ({n + 1} of {repeat})")
            result = rebuild_once(config)
            log(f"rebuild/{name}: {result['events']:,} events in {result['wall_s']} s "
                f"= {result['events_per_s']:,} events/s")
            runs.append(result)
        median = sorted(runs, key=lambda run: run["wall_s"])[(len(runs) - 1) // 2]
        return filled | median | ({"runs": runs} if repeat > 1 else {})
    finally:
        if schema:
            _drop_schema(store_url, schema)  # type: ignore[arg-type]


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def run(args: argparse.Namespace, workdir: Path, *, log: Callable[[str], None]) -> dict[str, Any]:
    """The rebuild section of bench/perf.py."""
    result: dict[str, Any] = {"change_every": CHANGE_EVERY}
    documents = getattr(args, "rebuild_documents", DOCUMENTS)
    repeat = max(1, getattr(args, "rebuild_repeat", 1))
    if getattr(args, "sqlite", True):
        result["sqlite"] = run_backend("sqlite", args.rebuild_events, workdir / "sqlite",
                                       args.corpus, log, documents=documents, repeat=repeat)
    if args.pg_url:
        try:
            import psycopg

            psycopg.connect(args.pg_url, connect_timeout=3).close()
        except Exception as exc:  # any reason the server cannot be reached
            result["postgres"] = {"skipped": f"PostgreSQL unreachable: {exc}"}
        else:
            result["postgres"] = run_backend("postgres", args.rebuild_events,
                                             workdir / "postgres", args.corpus, log,
                                             store_url=args.pg_url, documents=documents,
                                             repeat=repeat)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", dest="rebuild_events", type=int, default=1_000_000)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-pg", dest="pg_url", action="store_const", const=None)
    parser.add_argument("--no-sqlite", dest="sqlite", action="store_false")
    parser.add_argument("--documents", dest="rebuild_documents", type=int, default=DOCUMENTS)
    parser.add_argument("--repeat", dest="rebuild_repeat", type=int, default=1,
                        help="rebuild each log this many times; the median run is reported")
    parser.add_argument("--corpus", type=Path, default=pages.CORPUS)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    print(json.dumps(run(args, args.workdir, log=lambda m: print(m, file=sys.stderr)),
                     indent=2))


if __name__ == "__main__":
    main()
