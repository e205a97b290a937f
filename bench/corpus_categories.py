"""The corpus's documents classified through the service: clauses per category and document,
and each category's rarity across the watched platforms.

Usage: .venv/bin/python bench/corpus_categories.py [--tiktok]

Captures the latest (good) version of each document of tests/data/corpus and of the full
corpus's text documents (../shared/corpus/text, when it is there) into one in-memory store,
as `clausewatch check` would, and prints the categories x documents table. `--tiktok` also
replays every version of text/tiktok-privacy-us and prints the "AI interactions" clause's
record. Prints, asserts nothing. Contains data from Open Terms Archive
(opentermsarchive.org), ODC-By 1.0.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from config.settings import DocumentSettings, StoreSettings
from config.taxonomy import load_taxonomy
from daemon.fetcher import FetchResult
from daemon.service import ClauseWatch
from daemon.store import open_store

REPO = Path(__file__).resolve().parents[1]
TRIMMED = REPO / "tests" / "data" / "corpus"
FULL_TEXT = REPO.parent / "shared" / "corpus" / "text"
PLATFORMS = {"tiktok": "TikTok", "google": "Google"}
AI_CLAUSE = "AI interactions, including prompts, questions, files"


def _manifest(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def latest_versions() -> list[tuple[DocumentSettings, bytes, str, datetime, str]]:
    """(settings, body, content type, capture time, version label) per document."""
    found = []
    for folder in sorted((TRIMMED / "replay").iterdir()):
        declaration = json.loads((folder / "declaration.json").read_text("utf-8"))
        row = [r for r in _manifest(folder / "manifest.tsv") if r["verdict"] != "errorpage"][-1]
        body = gzip.decompress((folder / "snapshots" / row["file"]).read_bytes())
        doc = DocumentSettings(id=folder.name, platform=declaration["service"],
                               title=declaration["terms_type"], url=declaration["fetch"],
                               select=declaration.get("select"),
                               remove=declaration.get("remove"))
        found.append((doc, body, "text/html", datetime.fromisoformat(row["captured_at"]),
                      f"snapshot {row['seq']}"))
    for root, label in ((TRIMMED / "text", "trimmed"), (FULL_TEXT, "full")):
        if not root.exists():
            continue
        for folder in sorted(root.iterdir()):
            row = _manifest(folder / "manifest.tsv")[-1]
            name = f"{folder.name} ({label})" if label == "trimmed" else folder.name
            doc = DocumentSettings(id=name, platform=PLATFORMS[folder.name.split("-")[0]],
                                   title="Privacy Policy", url=f"https://corpus.test/{name}")
            found.append((doc, (folder / f"{int(row['seq']):03d}.md").read_bytes(),
                          "text/markdown", datetime.fromisoformat(row["recorded_at"]),
                          f"v{int(row['seq']):03d}"))
    return found


def capture(service: ClauseWatch, doc: DocumentSettings, body: bytes, content_type: str,
            at: datetime) -> str:
    return service.record_fetch(doc, FetchResult(
        requested_url=doc.url, final_url=doc.url, status=200, fetched_at=at, body=body,
        content_type=content_type)).describe()


def table(data_dir: Path) -> None:
    """Print the categories x documents table."""
    service = ClauseWatch(open_store(StoreSettings(url="memory:"), data_dir),
                          taxonomy=load_taxonomy())
    versions = latest_versions()
    service.sync_documents([doc for doc, *_ in versions])
    started = time.perf_counter()
    for doc, body, content_type, at, label in versions:
        outcome = capture(service, doc, body, content_type, at)
        print(f"{doc.id:32} {doc.platform:10} {label:13} {outcome}")
    print(f"captured and classified in {time.perf_counter() - started:.2f}s\n")
    columns = [doc.id for doc, *_ in versions]
    counts: dict[tuple[str, str], int] = {}
    classified = dict.fromkeys(columns, 0)
    totals = dict.fromkeys(columns, 0)
    for document_id in columns:
        for clause in service.clauses(document_id):
            totals[document_id] += 1
            classified[document_id] += bool(clause["categories"])
            for category in clause["categories"] or []:
                key = (category["id"], document_id)
                counts[key] = counts.get(key, 0) + 1
    short = [c.replace("-privacy", "").replace(" (trimmed)", "*")[:9] for c in columns]
    print(f"{'category':26} {'sev':8} {'rarity':>16}" + "".join(f"{s:>10}" for s in short))
    for category in service.categories():
        print(f"{category['id']:26} {category['severity']:8} {category['rarity']:>16}"
              + "".join(f"{counts.get((category['id'], c), 0):>10}" for c in columns))
    print(f"{'clauses classified':26} {'':8} {'':>16}"
          + "".join(f"{classified[c]:>4}/{totals[c]:<5}" for c in columns))
    service.store.close()


def tiktok(data_dir: Path) -> None:
    """Replay every version of text/tiktok-privacy-us and print the AI clause's record."""
    folder = (FULL_TEXT if FULL_TEXT.exists() else TRIMMED / "text") / "tiktok-privacy-us"
    service = ClauseWatch(open_store(StoreSettings(url="memory:"), data_dir),
                          taxonomy=load_taxonomy())
    doc = DocumentSettings(id="tiktok-privacy-us", platform="TikTok", title="Privacy Policy",
                           url="https://www.tiktok.com/legal/page/us/privacy-policy/en")
    service.sync_documents([doc])
    for row in _manifest(folder / "manifest.tsv"):
        body = (folder / f"{int(row['seq']):03d}.md").read_bytes()
        outcome = capture(service, doc, body, "text/markdown",
                          datetime.fromisoformat(row["recorded_at"]))
        print(f"  {int(row['seq']):03d} {row['recorded_at']}  {outcome}")
    [clause] = [c for c in service.clauses(doc.id) if c["text"].startswith(AI_CLAUSE)]
    record = service.clause(clause["id"])
    summary = {k: record[k] for k in ("id", "record_id", "first_seen", "last_seen", "changes",
                                      "months_monitored", "stability", "status")}
    summary["categories"] = [{k: c[k] for k in ("id", "name", "severity", "confidence",
                                                "rules")} | {"rarity": c["rarity"]["text"]}
                             for c in record["categories"]]
    summary["history"] = [(h["kind"], h["captured_at"]) for h in record["history"]]
    summary["category_history"] = record["category_history"]
    summary["document_record"] = {k: record["document_record"][k] for k in (
        "record_id", "first_tracked", "last_verified", "last_updated")}
    print(json.dumps(summary, indent=2))
    service.store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiktok", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table(Path(tmp) / "table")
        if args.tiktok:
            print()
            tiktok(Path(tmp) / "tiktok")


if __name__ == "__main__":
    sys.exit(main())
