"""Rows of the read views made the same way by the views and by the rebuild's reader process.

Only the standard library is imported here: the child process that reads the event log for
a rebuild (daemon/event_reader.py) makes most capture rows with it, one batch ahead of the
views, which then only write them.
"""

from __future__ import annotations

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


def capture_row(seq: int, event_id: str, slug: str, e: dict[str, Any],
                dropped_at: str | None) -> tuple[Any, ...]:
    """The cw_captures row of a DocumentCaptured event whose fields are `e`; `dropped_at` is
    when retention dropped the bytes of its hash, if it did."""
    at = iso(e["captured_at"])
    return (seq, event_id, slug, at, e["outcome"], e["http_status"], e["sha256"], e["size"],
            e["text_sha256"], e["final_url"], e["content_type"], e["reason"], e["changes"],
            1 if dropped_at is not None and at is not None and dropped_at > at else 0)
