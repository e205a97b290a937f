"""The benchmark's pages: real corpus snapshots multiplied to N documents, each one distinct.

A *triple* is three real snapshots of one policy, in capture order: `base`, then `noise`
(the next snapshot: different bytes, same visible text, Open Terms Archive's verdict `none`),
then `change` (the next snapshot whose visible text changed, verdict `change`). Document i of N
serves triple i mod T with a paragraph of its own inserted inside the watched selection, so no
two documents are byte- or text-identical while the extraction work stays that of the real
page.

Contains data from Open Terms Archive (opentermsarchive.org), ODC-By 1.0.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
TRIMMED_CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "corpus"
# Documents whose declarations are plain CSS selectors, so that urlwatch's `css` filter and
# changedetection.io's `include_filters` select exactly what clausewatch selects. (The third
# replay, llama-api-aup, uses a range selector neither competitor can express.)
DOCUMENTS = ("github-privacy", "buffer-privacy")
# Where each document's own paragraph goes: just inside the first selected element.
_MARKERS = {
    "github-privacy": re.compile(rb'id="article-contents"'),
    "buffer-privacy": re.compile(rb'aria-labelledby="privacy-policy"'),
}
VERSIONS = ("base", "noise", "change")


@dataclass(frozen=True, slots=True, kw_only=True)
class Triple:
    """Three consecutive real snapshots of one document: base, markup-only noise, text change."""

    document: str
    seqs: tuple[int, int, int]
    select: str | list[str]
    # Each version split where the document's own paragraph goes: (before, after).
    parts: tuple[tuple[bytes, bytes], ...]

    @property
    def css(self) -> str:
        """The selection as one CSS selector group (for urlwatch and changedetection.io)."""
        return self.select if isinstance(self.select, str) else ", ".join(self.select)

    def body(self, version: int, doc: int) -> bytes:
        """The bytes of `version` (0 base, 1 noise, 2 change) as served for document `doc`."""
        before, after = self.parts[version]
        return before + variant_paragraph(doc) + after


def variant_paragraph(doc: int) -> bytes:
    """The paragraph that makes document `doc` unlike every other."""
    return (f"<p>This reference copy, number {doc:06d}, is watched by the clausewatch "
            f"benchmark as document {doc}.</p>").encode()


def _manifest(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.tsv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _split(document: str, body: bytes) -> tuple[bytes, bytes]:
    found = _MARKERS[document].search(body)
    if found is None:
        raise ValueError(f"{document}: the selection marker is missing from a snapshot")
    end = body.index(b">", found.end()) + 1
    return body[:end], body[end:]


def load_triples(corpus: Path = CORPUS, *, limit: int | None = None) -> list[Triple]:
    """A (base, noise, change) run for every snapshot the corpus calls noise, in a stable order.

    `noise` is a snapshot whose Open Terms Archive verdict is `none` (different bytes, the
    same text), `base` the snapshot before it, `change` the next one whose verdict is
    `change`. Every `none` snapshot is used, so the benchmark's noise is the corpus's: mostly
    markup outside the policy, and a few whitespace re-renderings inside it.
    """
    triples: list[Triple] = []
    for name in DOCUMENTS:
        folder = corpus / "replay" / name
        if not folder.is_dir():
            continue
        declaration = json.loads((folder / "declaration.json").read_text("utf-8"))
        rows = [r for r in _manifest(folder) if (folder / "snapshots" / r["file"]).exists()]
        parts: dict[str, tuple[bytes, bytes]] = {}  # one copy of each snapshot's bytes

        def split(row: dict[str, str]) -> tuple[bytes, bytes]:
            if row["file"] not in parts:
                body = gzip.decompress((folder / "snapshots" / row["file"]).read_bytes())
                parts[row["file"]] = _split(name, body)  # noqa: B023 (used in this loop only)
            return parts[row["file"]]

        for index in range(1, len(rows)):
            first, noise = rows[index - 1], rows[index]
            if noise["verdict"] != "none" or first["verdict"] not in ("none", "change", "first",
                                                                    "linkonly"):
                continue
            change = next((r for r in rows[index + 1:] if r["verdict"] == "change"), None)
            if change is None:
                continue
            seqs = (int(first["seq"]), int(noise["seq"]), int(change["seq"]))
            triples.append(Triple(document=name, seqs=seqs, select=declaration["select"],
                                  parts=(split(first), split(noise), split(change))))
    # Interleave the documents so that any prefix of N mixes them.
    triples.sort(key=lambda t: (t.seqs[1], t.document))
    if not triples:
        raise FileNotFoundError(f"no usable snapshot runs under {corpus / 'replay'}")
    return triples[:limit] if limit else triples


def is_changed(doc: int, share: float) -> bool:
    """Whether document `doc` is among the `share` whose text changes (stable, spread out)."""
    digest = hashlib.sha256(f"bench-doc-{doc}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 10_000 < share * 10_000


def doc_id(doc: int) -> str:
    """The document's id in every tool's config."""
    return f"bench/doc-{doc:06d}"


def doc_path(doc: int) -> str:
    """The document's path on the page server."""
    return f"/d/{doc}"
