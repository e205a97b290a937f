"""Classify every paragraph of the latest version of each corpus document and print the counts.

Usage: .venv/bin/python bench/classify_corpus.py [CORPUS_DIR] [--samples N] [--category ID]

Contains data from Open Terms Archive (opentermsarchive.org), ODC-By 1.0.
"""

from __future__ import annotations

import argparse
import random
import re
import time
from pathlib import Path

from config.taxonomy import load_taxonomy
from domain.classify import CategoryMatch, classify
from domain.normalize import normalize_text

CORPUS = Path("/work/shared/corpus")
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def latest_documents(corpus: Path) -> dict[str, Path]:
    """The last version of every document in the corpus, by document name."""
    found = {}
    for folder in sorted((corpus / "text").iterdir()):
        found[folder.name] = max(folder.glob("*.md"))
    for folder in sorted((corpus / "replay").iterdir()):
        found[folder.name] = max((folder / "versions").glob("*.md"))
    return found


def paragraphs(markdown: str) -> list[str]:
    """Paragraphs split on blank lines, link targets dropped (URLs are not words a reader sees)."""
    return [
        normalize_text(_LINK_TARGET.sub("]", chunk))
        for chunk in _PARAGRAPH_BREAK.split(markdown)
        if chunk.strip()
    ]


def main() -> None:
    """Print a categories × documents table, then sample matches to check by eye."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=CORPUS)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--category", default=None, help="print samples of this category only")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    taxonomy = load_taxonomy()
    documents = latest_documents(args.corpus)
    counts: dict[str, dict[str, int]] = {
        c.id: dict.fromkeys(documents, 0) for c in taxonomy.categories
    }
    found: list[tuple[str, str, CategoryMatch]] = []
    total_paragraphs = 0
    started = time.perf_counter()
    for name, path in documents.items():
        for paragraph in paragraphs(path.read_text(encoding="utf-8")):
            total_paragraphs += 1
            for match in classify(taxonomy, paragraph):
                counts[match.category_id][name] += 1
                found.append((name, paragraph, match))
    elapsed = time.perf_counter() - started

    short = {name: name.replace("-privacy", "").replace("tiktok", "tt")[:10] for name in documents}
    print(f"{'category':28}" + "".join(f"{short[n]:>11}" for n in documents) + f"{'total':>8}")
    for category in taxonomy.categories:
        row = counts[category.id]
        print(
            f"{category.id:28}"
            + "".join(f"{row[n]:>11}" for n in documents)
            + f"{sum(row.values()):>8}"
        )
    print(f"\n{total_paragraphs} paragraphs, {len(found)} matches, {elapsed:.2f}s")

    pool = [item for item in found if args.category in (None, item[2].category_id)]
    rng = random.Random(args.seed)
    for name, paragraph, match in rng.sample(pool, min(args.samples, len(pool))):
        words = "; ".join(
            f"{hit.rule_id}: " + ", ".join(repr(span.text) for span in hit.spans[:4])
            for hit in match.evidence
        )
        first = min(span.start for hit in match.evidence for span in hit.spans)
        excerpt = paragraph[max(0, first - 80) : first + 160]
        print(f"\n[{name}] {match.category_id} {match.confidence:.2f}  {words}\n    …{excerpt}…")


if __name__ == "__main__":
    main()
