"""Exports for analysts: documents, clauses, changes and categories as JSON Lines and CSV.

Page text is untrusted data: in CSV, a cell that a spreadsheet would read as a formula
(starting with = + - @, a tab or a carriage return) is prefixed with a single quote.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from daemon.service import ClauseWatch, max_severity

TABLES = ("documents", "clauses", "changes", "categories")
FORMATS = ("jsonl", "csv")
PAGE = 1000
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

COLUMNS: dict[str, tuple[str, ...]] = {
    "documents": ("record_id", "id", "platform", "title", "url", "first_tracked",
                  "last_verified", "last_updated", "last_captured", "captures", "changes",
                  "failures", "status", "sha256"),
    "clauses": ("record_id", "id", "document_record_id", "document", "platform", "section",
                "kind", "text", "status", "first_seen", "last_seen", "changes",
                "months_monitored", "stability", "categories", "severity"),
    "changes": ("seq", "id", "document", "clause", "kind", "section", "before", "after",
                "similarity", "captured_at", "sha256", "categories_before",
                "categories_after"),
    "categories": ("category", "name", "severity", "confidence", "rarity", "record_id",
                   "clause", "document", "platform"),
}


def export(service: ClauseWatch, folder: Path, *,
           formats: Sequence[str] = FORMATS) -> dict[str, int]:
    """Write each table as `<folder>/<table>.<format>`; returns the rows written per table.

    Each file is written beside its final name and renamed into place when complete, so a
    reader never sees half an export.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}; use {', '.join(FORMATS)}")
    folder.mkdir(parents=True, exist_ok=True)
    service.views.catch_up()
    sources: dict[str, Callable[[], Iterator[dict[str, Any]]]] = {
        "documents": lambda: iter(service.documents()),
        "clauses": lambda: _clauses(service),
        "changes": lambda: _changes(service),
        "categories": lambda: _categories(service),
    }
    counts: dict[str, int] = {}
    for table in TABLES:
        counts[table] = _write(folder, table, COLUMNS[table], sources[table](), formats)
    return counts


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: lists joined, None empty, formula-like text quoted."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        value = "; ".join(str(v) for v in value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _write(folder: Path, table: str, columns: tuple[str, ...],
           rows: Iterator[dict[str, Any]], formats: Sequence[str]) -> int:
    count = 0
    paths = {fmt: folder / f"{table}.{fmt}" for fmt in formats}
    with ExitStack() as stack:
        files: dict[str, IO[str]] = {
            fmt: stack.enter_context(open(f"{path}.tmp", "w", encoding="utf-8", newline=""))
            for fmt, path in paths.items()}
        writer = None
        if "csv" in files:
            writer = csv.writer(files["csv"])
            writer.writerow(columns)
        for row in rows:
            values = {column: row.get(column) for column in columns}
            if "jsonl" in files:
                files["jsonl"].write(json.dumps(values, ensure_ascii=False) + "\n")
            if writer is not None:
                writer.writerow([_csv_value(column, values[column]) for column in columns])
            count += 1
    for path in paths.values():
        os.replace(f"{path}.tmp", path)
    return count


def _csv_value(column: str, value: Any) -> Any:
    if column == "section" and isinstance(value, list):
        value = " > ".join(value)
    return csv_cell(value)


def _clauses(service: ClauseWatch) -> Iterator[dict[str, Any]]:
    documents = {d["id"]: d["record_id"] for d in service.documents()}
    after = 0
    while page := service.clause_page(after_record_no=after, limit=PAGE):
        for clause in page:
            categories = clause["categories"]
            yield {**clause, "document_record_id": documents.get(clause["document"]),
                   "categories": None if categories is None else [c["id"] for c in categories],
                   "severity": max_severity(categories)}
        after = page[-1]["record_no"]


def _changes(service: ClauseWatch) -> Iterator[dict[str, Any]]:
    after = 0
    while page := service.changes(after_seq=after, limit=PAGE):
        yield from page
        after = page[-1]["seq"]


def _categories(service: ClauseWatch) -> Iterator[dict[str, Any]]:
    rarity = {c["id"]: c["rarity"] for c in service.categories()}
    last = int(service.store.db.scalar("SELECT COALESCE(MAX(record_no), 0) FROM cw_clauses"))
    for first in range(1, last + 1, PAGE):
        for row in service.clause_category_rows(first, first + PAGE - 1):
            yield {**row, "rarity": rarity.get(row["category"])}
