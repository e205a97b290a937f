"""Plain notice values: what changed, for whom; the only input a channel gets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

ChangeKind = Literal["added", "removed", "modified", "moved"]
NoticeKind = Literal["alert", "digest", "test"]

_CHANGE_KINDS = frozenset({"added", "removed", "modified", "moved"})
_NOTICE_KINDS = frozenset({"alert", "digest", "test"})


def _require_aware(name: str, value: datetime | None) -> None:
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClauseNotice:
    """One clause-level change, with the text before and after."""

    clause_id: str
    kind: ChangeKind
    section: tuple[str, ...]
    before: str | None
    after: str | None
    categories: tuple[str, ...] = ()
    severity: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _CHANGE_KINDS:
            raise ValueError(f"clause {self.clause_id}: unknown change kind {self.kind!r}")
        if self.kind == "added" and self.after is None:
            raise ValueError(f"clause {self.clause_id}: an added clause needs `after` text")
        if self.kind == "removed" and self.before is None:
            raise ValueError(f"clause {self.clause_id}: a removed clause needs `before` text")


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentNotice:
    """The changes found in one capture of one document."""

    document_id: str
    platform: str
    title: str
    url: str
    captured_at: datetime
    sha256: str
    evidence_url: str | None = None
    document_link: str | None = None
    changes: tuple[ClauseNotice, ...] = ()

    def __post_init__(self) -> None:
        _require_aware(f"document {self.document_id}: captured_at", self.captured_at)

    @property
    def heading(self) -> str:
        """The document's name for people, e.g. "TikTok Privacy Policy"."""
        title = " ".join(self.title.split())
        platform = " ".join(self.platform.split())
        if not platform or platform.casefold() in title.casefold():
            return title or platform
        return f"{platform} {title}" if title else platform

    @property
    def link(self) -> str:
        """Where a reader sees the whole change: our API, else the evidence, else the page."""
        return self.document_link or self.evidence_url or self.url


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice:
    """One message for one subscription; `id` is the idempotency key of every delivery."""

    id: str
    subscription_id: str
    kind: NoticeKind
    created_at: datetime
    documents: tuple[DocumentNotice, ...]
    window_start: datetime | None = None
    window_end: datetime | None = None
    unsubscribe_url: str | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a notice needs a non-empty id (it is the idempotency key)")
        if self.kind not in _NOTICE_KINDS:
            raise ValueError(f"notice {self.id}: unknown kind {self.kind!r}")
        _require_aware(f"notice {self.id}: created_at", self.created_at)
        _require_aware(f"notice {self.id}: window_start", self.window_start)
        _require_aware(f"notice {self.id}: window_end", self.window_end)
        if self.kind == "alert" and len(self.documents) != 1:
            raise ValueError(
                f"notice {self.id}: an alert has exactly one document, got {len(self.documents)}"
            )
        if (self.window_start is None) != (self.window_end is None):
            raise ValueError(f"notice {self.id}: give both window_start and window_end, or neither")
        if self.window_start and self.window_end and self.window_start > self.window_end:
            raise ValueError(f"notice {self.id}: window_start is after window_end")

    @property
    def change_count(self) -> int:
        """How many clause changes the notice carries, over all documents."""
        return sum(len(d.changes) for d in self.documents)
