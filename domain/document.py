"""The Document aggregate: every capture an event, every clause edit a ClauseChanged."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate

from domain.blocks import Extraction
from domain.clauses import ADDED, REMOVED, Alignment, Clause, align, clause_id
from domain.normalize import sha256_hex
from domain.suspect import SuspectPolicy, assess

_NAMESPACE = uuid.UUID("5b0c6f8e-3f4e-4f0e-9a57-63a1c1a0c2de")

# Outcomes of a capture, as recorded in DocumentCaptured.outcome.
BASELINE, UNCHANGED, CHANGED, SUSPECT = "baseline", "unchanged", "changed", "suspect"

# A clause's text -> its categories: [{"id", "name", "severity", "confidence", "rules"}], most
# confident first (domain.classify.clause_classifier builds one from a taxonomy). In events a
# clause's categories are that list, or None for clauses recorded before clauses were
# classified (or by a service without a taxonomy).
ClauseClassifier = Callable[[str], list[dict[str, Any]]]
# `align` itself, or a function that runs it elsewhere with the same arguments.
Aligner = Callable[..., Alignment]


def document_uuid(slug: str) -> uuid.UUID:
    """The aggregate id of a document, derived from its stable slug."""
    return uuid.uuid5(_NAMESPACE, slug)


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureFacts:
    """What was observed when a document was fetched: given to the domain, never looked up."""

    captured_at: datetime
    requested_url: str
    final_url: str
    http_status: int
    content_type: str
    sha256: str
    size: int
    etag: str | None = None
    last_modified: str | None = None
    redirects: tuple[str, ...] = field(default_factory=tuple)


class NeedsClausesError(RuntimeError):
    """A decision needs the clause list, which an aggregate built from its head lacks."""

    def __str__(self) -> str:
        return "this decision needs the whole document: load the aggregate from the store"


# The fields of a Document a poll reads, besides its clauses: see Document.head().
HEAD_FIELDS = ("slug", "platform", "title", "url", "taxonomy_version", "text_sha256",
               "text_length", "last_sha256", "last_outcome", "last_reason", "etag",
               "last_modified", "captures", "failures", "consecutive_failures")
HEAD_LAYOUT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureResult:
    """What a capture decided: its outcome, why it is suspect, and how many clauses changed."""

    outcome: str
    changes: int = 0
    reason: str | None = None
    kinds: tuple[str, ...] = ()


class Document(Aggregate, created_event_name="DocumentRegistered"):  # type: ignore[call-arg]
    """A watched document: its current clauses and the facts of its captures."""

    # v2: each clause dict holds "categories"; the taxonomy version of the last reclassify.
    class_version = 2

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """A snapshot taken before clauses were classified: every clause unclassified."""
        for clause in state.get("clauses") or []:
            clause.setdefault("categories", None)
        state.setdefault("taxonomy_version", None)

    class DocumentRegistered(Aggregate.Created):
        slug: str
        platform: str
        title: str
        url: str

    def __init__(self, slug: str, platform: str, title: str, url: str) -> None:
        self.slug = slug
        self.platform = platform
        self.title = title
        self.url = url
        self.clauses: list[dict[str, Any]] = []
        self.taxonomy_version: str | None = None
        self.text_sha256: str | None = None
        self.text_length = 0
        self.last_sha256: str | None = None
        self.last_outcome: str | None = None
        self.last_reason: str | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.captures = 0
        self.failures = 0
        self.consecutive_failures = 0

    # The head: what most polls need ----------------------------------------------------

    def head(self) -> dict[str, Any]:
        """The document's state without its clause list, at this version (JSON-safe).

        Most polls (a 304, the same bytes, new markup around the same text) decide on these
        facts alone; `from_head` turns them back into an aggregate that can record them.
        """
        head: dict[str, Any] = {name: getattr(self, name) for name in HEAD_FIELDS}
        head.update(layout=HEAD_LAYOUT, version=self.version,
                    created_on=self.created_on.isoformat(),
                    modified_on=self.modified_on.isoformat(), clause_count=self.clause_count)
        return head

    @classmethod
    def from_head(cls, head: dict[str, Any]) -> Document:
        """An aggregate at the head's version that knows everything but its clauses.

        It records what needs no clause list (a 304, the same bytes or text, a suspect page,
        a failure); a decision that needs the clauses raises NeedsClausesError. Its events
        follow the head's version, so the store refuses them if the head was not the latest.
        """
        if head.get("layout") != HEAD_LAYOUT:
            raise ValueError(f"unknown head layout {head.get('layout')!r}")
        document = cls.__new__(cls)
        document.__base_init__(document_uuid(head["slug"]), int(head["version"]),
                               datetime.fromisoformat(head["created_on"]))
        document.modified_on = datetime.fromisoformat(head["modified_on"])
        for name in HEAD_FIELDS:
            setattr(document, name, head[name])
        # Before its first good text a document has no clauses: nothing is missing.
        document.clauses = [] if head["text_sha256"] is None else None  # type: ignore[assignment]
        document._clause_count = int(head["clause_count"])
        document._from_head = True
        return document

    @property
    def built_from_head(self) -> bool:
        """True for an aggregate built by from_head (its version is only as good as the head)."""
        return getattr(self, "_from_head", False)

    @property
    def is_partial(self) -> bool:
        """True for an aggregate built from a head: it has no clause list."""
        return self.clauses is None

    @property
    def clause_count(self) -> int:
        """How many clauses the document has now."""
        if self.clauses is None:
            return self._clause_count
        return len(self.clauses)

    @classmethod
    def register(cls, *, slug: str, platform: str, title: str, url: str) -> Document:
        """Start tracking a document under its stable slug."""
        return cls._create(cls.DocumentRegistered, id=document_uuid(slug), slug=slug,
                           platform=platform, title=title, url=url)

    # Decisions ---------------------------------------------------------------------------

    def redescribe(self, *, platform: str, title: str, url: str) -> bool:
        """Record a new platform, title or URL from the config; False if nothing differs."""
        if (platform, title, url) == (self.platform, self.title, self.url):
            return False
        self.trigger_event(self.DocumentRedescribed, platform=platform, title=title, url=url)
        return True

    def record_capture(
        self,
        facts: CaptureFacts,
        extraction: Extraction | None,
        *,
        policy: SuspectPolicy = SuspectPolicy(),
        threshold: float = 0.5,
        classify: ClauseClassifier | None = None,
        aligner: Aligner = align,
    ) -> CaptureResult:
        """Record a fetched page; `extraction` is None when its bytes equal the last capture's.

        `aligner` is `align` or something that calls it elsewhere (in a worker process): it
        gets picklable arguments only.

        With `classify`, added and reworded clauses get their categories; a clause whose text
        did not change keeps the categories it had (a new taxonomy applies to those through
        `reclassify`, so that a change of category is never mistaken for a change of text).
        """
        if extraction is None:
            if facts.sha256 != self.last_sha256 or self.last_outcome is None:
                raise ValueError("extraction may only be skipped for the last capture's bytes")
            outcome = SUSPECT if self.last_outcome == SUSPECT else UNCHANGED
            self._captured(facts, outcome=outcome, reason=self.last_reason,
                           text_sha256=None, text_length=None, clause_count=self.clause_count)
            return CaptureResult(outcome=outcome, reason=self.last_reason)

        text_sha256 = sha256_hex(extraction.text)
        baseline = self.text_sha256 is None
        reason = assess(extraction, last_good_length=None if baseline else self.text_length,
                        policy=policy)
        if reason is not None:
            self._captured(facts, outcome=SUSPECT, reason=reason, text_sha256=text_sha256,
                           text_length=len(extraction.text), clause_count=len(extraction.blocks))
            return CaptureResult(outcome=SUSPECT, reason=reason)

        if text_sha256 == self.text_sha256:
            self._captured(facts, outcome=UNCHANGED, reason=None, text_sha256=text_sha256,
                           text_length=len(extraction.text), clause_count=self.clause_count)
            return CaptureResult(outcome=UNCHANGED)

        if self.clauses is None:
            raise NeedsClausesError()

        capture_no = self.captures + 1
        old = {} if baseline else {c["id"]: c for c in self.clauses}
        # A baseline has nothing to align with: no need to send it elsewhere.
        alignment = (align if baseline else aligner)(
            [Clause(id=c["id"], text=c["text"], section=tuple(c["section"]), kind=c["kind"])
             for c in old.values()],
            extraction.blocks,
            new_id=functools.partial(clause_id, self.slug, capture_no),
            threshold=threshold,
        )
        clauses = []
        for c in alignment.clauses:
            kept = old.get(c.id)
            if kept is not None and kept["text"] == c.text:
                categories = kept.get("categories")
            else:
                categories = classify(c.text) if classify is not None else None
            clauses.append({"id": c.id, "text": c.text, "section": list(c.section),
                            "kind": c.kind, "categories": categories})
        new = {c["id"]: c for c in clauses}
        if baseline:
            self._captured(facts, outcome=BASELINE, reason=None, text_sha256=text_sha256,
                           text_length=len(extraction.text), clause_count=len(clauses),
                           clauses=clauses)
            return CaptureResult(outcome=BASELINE)

        # The capture first (it carries the new clause list), then one event per clause edit.
        self._captured(facts, outcome=CHANGED, reason=None, text_sha256=text_sha256,
                       text_length=len(extraction.text), clause_count=len(clauses),
                       clauses=clauses, changes=len(alignment.edits))
        for edit in alignment.edits:
            self.trigger_event(
                self.ClauseChanged,
                clause_id=edit.clause_id,
                kind=edit.kind,
                section=list(edit.section),
                before=edit.before,
                after=edit.after,
                patch=edit.patch,
                similarity=edit.similarity,
                position=edit.position,
                captured_at=facts.captured_at,
                sha256=facts.sha256,
                categories_before=None if edit.kind == ADDED
                else old[edit.clause_id].get("categories"),
                categories_after=None if edit.kind == REMOVED
                else new[edit.clause_id]["categories"],
            )
        return CaptureResult(outcome=CHANGED, changes=len(alignment.edits),
                             kinds=tuple(e.kind for e in alignment.edits))

    def record_same_text(self, facts: CaptureFacts) -> CaptureResult:
        """Record new bytes whose text is known to be the last good text, unextracted.

        The caller vouches for it: the watched region of the page is the markup of the
        capture the last good text was extracted from, but for attributes the extraction
        never reads (domain.blocks.SameRegion). The
        event is the one extracting would have recorded: unchanged, the same text hash.
        """
        if self.text_sha256 is None:
            raise ValueError("there is no good text yet to be the same as")
        self._captured(facts, outcome=UNCHANGED, reason=None, text_sha256=self.text_sha256,
                       text_length=self.text_length, clause_count=self.clause_count)
        return CaptureResult(outcome=UNCHANGED)

    def reclassify(self, classify: ClauseClassifier, taxonomy_version: str) -> int:
        """Classify the current clauses again (after a taxonomy change); returns how many changed.

        One ClausesReclassified event lists the clauses whose categories differ, before and
        after: history is appended to, never rewritten. Nothing is recorded if none differ.
        """
        if self.clauses is None:
            raise NeedsClausesError()
        changed = []
        for clause in self.clauses:
            before = clause.get("categories")
            after = classify(clause["text"])
            if after != before:
                changed.append({"id": clause["id"], "before": before, "after": after})
        if changed:
            self.trigger_event(self.ClausesReclassified, taxonomy_version=taxonomy_version,
                               clauses=changed)
        return len(changed)

    def record_not_modified(self, *, captured_at: datetime, requested_url: str,
                            final_url: str) -> CaptureResult:
        """Record a 304 Not Modified: the last capture verified again."""
        if self.last_sha256 is None:
            raise ValueError("a 304 needs an earlier capture to refer to")
        facts = CaptureFacts(captured_at=captured_at, requested_url=requested_url,
                             final_url=final_url, http_status=304, content_type="",
                             sha256=self.last_sha256, size=0, etag=self.etag,
                             last_modified=self.last_modified)
        return self.record_capture(facts, None)

    def record_failure(self, *, captured_at: datetime, requested_url: str, error_kind: str,
                       message: str, http_status: int | None = None) -> None:
        """Record a capture that could not be made."""
        self.trigger_event(self.CaptureFailed, captured_at=captured_at,
                           requested_url=requested_url, error_kind=error_kind,
                           message=message, http_status=http_status)

    def _captured(self, facts: CaptureFacts, *, outcome: str, reason: str | None,
                  text_sha256: str | None, text_length: int | None, clause_count: int,
                  clauses: list[dict[str, Any]] | None = None, changes: int = 0) -> None:
        self.trigger_event(
            self.DocumentCaptured,
            captured_at=facts.captured_at,
            requested_url=facts.requested_url,
            final_url=facts.final_url,
            redirects=list(facts.redirects),
            http_status=facts.http_status,
            etag=facts.etag,
            last_modified=facts.last_modified,
            content_type=facts.content_type,
            sha256=facts.sha256,
            size=facts.size,
            text_sha256=text_sha256,
            text_length=text_length,
            clause_count=clause_count,
            outcome=outcome,
            reason=reason,
            changes=changes,
            clauses=clauses,
        )

    # Events ------------------------------------------------------------------------------

    class DocumentRedescribed(Aggregate.Event):
        platform: str
        title: str
        url: str

        def apply(self, document: Document) -> None:
            document.platform, document.title, document.url = self.platform, self.title, self.url

    class DocumentCaptured(Aggregate.Event):
        """A page was fetched (or verified by a 304) and compared with the last good version.

        `clauses` holds the whole new clause list when the text changed (or at the baseline),
        so the aggregate never needs the page again; it is None otherwise. Each clause is
        {id, text, section, kind, categories}.
        """

        # v2: each clause carries its categories (None: recorded before classification).
        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """Clauses captured before classification existed are unclassified, not empty."""
            for clause in state.get("clauses") or []:
                clause.setdefault("categories", None)

        captured_at: datetime
        requested_url: str
        final_url: str
        redirects: list[str]
        http_status: int
        etag: str | None
        last_modified: str | None
        content_type: str
        sha256: str
        size: int
        text_sha256: str | None
        text_length: int | None
        clause_count: int
        outcome: str
        reason: str | None
        changes: int
        clauses: list[dict[str, Any]] | None

        def apply(self, document: Document) -> None:
            document.captures += 1
            document.consecutive_failures = 0
            document.last_outcome = self.outcome
            document.last_reason = self.reason
            if self.http_status != 304:
                document.last_sha256 = self.sha256
                document.etag = self.etag
                document.last_modified = self.last_modified
            if self.clauses is not None:
                document.clauses = self.clauses
            if self.outcome in (BASELINE, CHANGED, UNCHANGED) and self.text_sha256:
                document.text_sha256 = self.text_sha256
                document.text_length = self.text_length or 0

    class CaptureFailed(Aggregate.Event):
        """A capture could not be made: the error's kind and message."""

        captured_at: datetime
        requested_url: str
        error_kind: str
        message: str
        http_status: int | None

        def apply(self, document: Document) -> None:
            document.failures += 1
            document.consecutive_failures += 1

    class ClauseChanged(Aggregate.Event):
        """One clause was added, removed, modified or moved by the preceding capture.

        `categories_before` / `categories_after` are the clause's categories on each side
        (None where there is no such side, or the clause was not classified).
        """

        # v2: the categories on each side of the change.
        class_version = 2

        clause_id: str
        kind: str
        section: list[str]
        before: str | None
        after: str | None
        patch: str
        similarity: float
        position: int
        captured_at: datetime
        sha256: str
        categories_before: list[dict[str, Any]] | None
        categories_after: list[dict[str, Any]] | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            """A change recorded before classification: no categories on either side."""
            state.setdefault("categories_before", None)
            state.setdefault("categories_after", None)

    class ClausesReclassified(Aggregate.Event):
        """The current clauses were classified again; `clauses` lists those that changed.

        Each entry is {id, before, after}, categories as in DocumentCaptured.clauses.
        """

        taxonomy_version: str
        clauses: list[dict[str, Any]]

        def apply(self, document: Document) -> None:
            after = {entry["id"]: entry["after"] for entry in self.clauses}
            document.clauses = [
                {**clause, "categories": after[clause["id"]]} if clause["id"] in after
                else clause
                for clause in document.clauses
            ]
            document.taxonomy_version = self.taxonomy_version
