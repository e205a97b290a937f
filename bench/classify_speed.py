"""How long classifying one clause takes, on the clauses the corpus pages really extract to.

Usage: .venv/bin/python bench/classify_speed.py [--corpus DIR] [--repeat N]
                                               [--save-reference FILE] [--check FILE]

Every version of every corpus document (replay snapshots with their declaration's selection,
Markdown text versions) is extracted as the daemon extracts it; each block is a clause. The
clauses are then classified with `clause_classifier`, the function a capture calls per clause:

  distinct  each distinct clause text once, with a fresh classifier (what a clause costs
            when it was never seen: no memo hit possible)
  all       every clause in corpus order with one classifier (identical texts recur across
            versions and documents, as they do across captures and locales: the memo of
            clause_classifier answers most)
  all-nomemo  the same without the memo (memo_size=0; skipped for a classifier without one)

`--save-reference FILE` writes the classification of every distinct clause as JSON
({text: categories}); `--check FILE` compares with such a file and exits 1 on any difference.
Reads the full corpus beside the repository (../shared/corpus) when it is there, else the
trimmed copy in tests/data/corpus. Prints numbers, asserts nothing else.

Contains data from Open Terms Archive (opentermsarchive.org), ODC-By 1.0.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import inspect
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from config.taxonomy import load_taxonomy  # noqa: E402
from domain.classify import clause_classifier  # noqa: E402
from domain.extract import extract  # noqa: E402

FULL_CORPUS = REPO.parent / "shared" / "corpus"
TRIMMED_CORPUS = REPO / "tests" / "data" / "corpus"


def _manifest(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def corpus_clauses(corpus: Path) -> list[str]:
    """The text of every block of every version of every corpus document, in corpus order."""
    texts: list[str] = []
    for folder in sorted((corpus / "replay").iterdir()):
        if not (folder / "manifest.tsv").exists():
            continue
        declaration = json.loads((folder / "declaration.json").read_text("utf-8"))
        for row in _manifest(folder / "manifest.tsv"):
            snapshot = folder / "snapshots" / row["file"]
            if not snapshot.exists():
                continue
            result = extract(gzip.decompress(snapshot.read_bytes()), "text/html; charset=utf-8",
                             select=declaration.get("select"), remove=declaration.get("remove"))
            texts.extend(block.text for block in result.blocks)
    for folder in sorted((corpus / "text").iterdir()):
        if not (folder / "manifest.tsv").exists():
            continue
        for row in _manifest(folder / "manifest.tsv"):
            version = folder / f"{int(row['seq']):03d}.md"
            if version.exists():
                result = extract(version.read_bytes(), "text/markdown; charset=utf-8")
                texts.extend(block.text for block in result.blocks)
    return texts


def cached_corpus_clauses(corpus: Path) -> list[str]:
    """corpus_clauses, kept in the temp directory between runs (extraction is slow)."""
    stamp = hashlib.sha256()
    for path in sorted(corpus.rglob("*")):
        if path.is_file():
            stamp.update(f"{path.relative_to(corpus)}:{path.stat().st_size}\n".encode())
    stamp.update((REPO / "domain" / "extract.py").read_bytes())
    cache = Path(tempfile.gettempdir()) / f"classify_speed_clauses_{stamp.hexdigest()[:16]}.json"
    if cache.exists():
        return list(json.loads(cache.read_text("utf-8")))
    texts = corpus_clauses(corpus)
    cache.write_text(json.dumps(texts), "utf-8")
    return texts


def _time(texts: list[str], repeat: int, memo: bool = True) -> list[float]:
    """Seconds to classify `texts`, once per repeat; a new classifier each repeat."""
    taxonomy = load_taxonomy()
    options = {} if memo else {"memo_size": 0}
    seconds = []
    for _ in range(repeat):
        classify = clause_classifier(taxonomy, **options)
        started = time.perf_counter()
        for text in texts:
            classify(text)
        seconds.append(time.perf_counter() - started)
        del classify
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path,
                        default=FULL_CORPUS if FULL_CORPUS.is_dir() else TRIMMED_CORPUS)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each measure")
    parser.add_argument("--only", choices=("distinct", "all", "all-nomemo"), default=None)
    parser.add_argument("--save-reference", type=Path, default=None)
    parser.add_argument("--check", type=Path, default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    texts = cached_corpus_clauses(args.corpus)
    distinct = list(dict.fromkeys(texts))
    print(f"corpus {args.corpus}: {len(texts)} clauses, {len(distinct)} distinct "
          f"(loaded in {time.perf_counter() - started:.1f}s)")

    # A classifier without a memo (memo_size=0) on every clause, where the classifier has one.
    memo_option = "memo_size" in inspect.signature(clause_classifier).parameters
    measures = [("distinct", distinct, True), ("all", texts, True)]
    if memo_option:
        measures.append(("all-nomemo", texts, False))
    for name, sample, memo in measures:
        if args.only not in (None, name):
            continue
        runs = _time(sample, repeat=args.repeat, memo=memo)
        best, median = min(runs), statistics.median(runs)
        print(f"{name:10} {len(sample):7} clauses  best {best:7.2f}s  median {median:7.2f}s  "
              f"{best / len(sample) * 1e6:8.1f} µs/clause (best)  "
              f"{median / len(sample) * 1e6:8.1f} µs/clause (median)")

    if args.save_reference or args.check:
        classify = clause_classifier(load_taxonomy())
        results = {text: classify(text) for text in distinct}
        if args.save_reference:
            args.save_reference.write_text(json.dumps(results, ensure_ascii=False), "utf-8")
            print(f"reference for {len(results)} distinct clauses written to {args.save_reference}")
        if args.check:
            reference = json.loads(args.check.read_text("utf-8"))
            missing = [text for text in distinct if text not in reference]
            differ = [text for text in distinct if text in reference
                      and json.dumps(reference[text]) != json.dumps(results[text])]
            print(f"check against {args.check}: {len(distinct) - len(missing)} compared, "
                  f"{len(differ)} differ, {len(missing)} not in the reference")
            for text in differ[:5]:
                print(f"  DIFFERS: {text[:100]!r}\n    was {reference[text]}\n"
                      f"    now {results[text]}")
            if differ or missing:
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
