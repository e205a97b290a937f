"""Rows of the read views made the same way by the views and by the rebuild's reader process.

Only the standard library is imported here: the child process that reads the event log for
a rebuild (daemon/event_reader.py) makes most capture rows with it, one batch ahead of the
views, which then only write them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any


def iso(moment: datetime | str | None) -> str | None:
    """ISO 8601 in UTC with a Z, seconds precision: sortable as text on both databases.

    A str is a datetime's isoformat(), as the event store keeps datetimes.
    """
    if moment is None:
        return None
    if isinstance(moment, str):
        # "2024-01-01T00:20:00+00:00", or with microseconds: UTC already, cut at the second.
        if (len(moment) in (25, 32) and moment.endswith("+00:00") and moment[10] == "T"
                and "1" <= moment[0] <= "9"):
            return moment[:19] + "Z"
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_batch_size(limit: int, count: int, stored: int, budget: int) -> int:
    """How many events the views read next, having read `count` events that stored
    `stored` bytes: about `budget` bytes of stored state, at most `limit` events. (The
    rebuild's reader reads ahead by the same rule.)"""
    return max(1, min(limit, count * budget // max(stored, 1)))


def capture_row(seq: int, event_id: str, slug: str, e: dict[str, Any],
                dropped_at: str | None) -> tuple[Any, ...]:
    """The cw_captures row of a DocumentCaptured event whose fields are `e`; `dropped_at` is
    when retention dropped the bytes of its hash, if it did."""
    at = iso(e["captured_at"])
    return (seq, event_id, slug, at, e["outcome"], e["http_status"], e["sha256"], e["size"],
            e["text_sha256"], e["final_url"], e["content_type"], e["reason"], e["changes"],
            1 if dropped_at is not None and at is not None and dropped_at > at else 0)


# What the JSON transcoder writes for each object it encodes.
MARK = b'"_type_"'


def plain_capture_row(loads: Callable[[bytes], Any], data: bytes, seq: int,
                      event_id: Callable[[], str], slug: str, class_version: int,
                      drops: Drops) -> tuple[Any, ...] | None:
    """The cw_captures row of a DocumentCaptured stored as `data` (JSON), made from the
    plain JSON values (`loads`): only for a capture of this class version that carries no
    clause list and encodes no object but its two times (almost every event of a long
    log); None for any other, which the views decode the usual way."""
    if data.count(MARK) != 2:
        return None
    try:
        e = loads(data)
    except ValueError:
        return None
    if (type(e) is not dict or e.get("class_version", 1) != class_version
            or e.get("clauses", 0) is not None or not _is_time(e.get("timestamp"))
            or not _is_time(e.get("captured_at"))):
        return None
    e["captured_at"] = e["captured_at"]["_data_"]
    try:
        return capture_row(seq, event_id(), slug, e, drops.at(e["sha256"]))
    except (KeyError, TypeError, ValueError):
        return None  # not shaped as a capture: the views say what is wrong


def _is_time(value: Any) -> bool:
    return (type(value) is dict and len(value) == 2 and value.get("_type_") == "datetime_iso"
            and type(value.get("_data_")) is str)


class Drops:
    """When retention dropped the bytes of a hash (cw_evidence_dropped), if it did: the whole
    table read at the first question when it is small, else each hash looked up once.

    `rows(sql, params)` runs a query on the views' database and returns its rows.
    """

    IN_MEMORY = 5_000

    def __init__(self, rows: Callable[[str, tuple[Any, ...]], Sequence[Sequence[Any]]]) -> None:
        self.rows = rows
        self.known: dict[str, str | None] | None = None
        self.complete = False

    def at(self, sha256: Any) -> str | None:
        if type(sha256) is not str:
            return None
        if self.known is None:
            rows = self.rows("SELECT sha256, dropped_at FROM cw_evidence_dropped LIMIT ?",
                             (self.IN_MEMORY + 1,))
            self.complete = len(rows) <= self.IN_MEMORY
            self.known = {row[0]: row[1] for row in rows} if self.complete else {}
        if self.complete or sha256 in self.known:
            return self.known.get(sha256)
        rows = self.rows("SELECT dropped_at FROM cw_evidence_dropped WHERE sha256 = ?",
                         (sha256,))
        found = self.known[sha256] = rows[0][0] if rows else None
        return found
