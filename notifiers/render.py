"""Pure rendering of notices: subject, plain text, HTML, Slack Block Kit and webhook JSON."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from diff_match_patch import diff_match_patch

from notifiers.notice import ClauseNotice, DocumentNotice, Notice

Op = Literal["equal", "delete", "insert"]

WEBHOOK_VERSION = 1
DIFF_TIMEOUT_SECONDS = 1.0

# Slack's documented limits for messages built from blocks.
SLACK_MAX_BLOCKS = 50
SLACK_MAX_SECTION_TEXT = 3000
SLACK_MAX_HEADER_TEXT = 150
SLACK_MAX_FALLBACK_TEXT = 3000
_SLACK_MAX_URL = 800

_TOKEN = re.compile(r"\w+|\s+|[^\w\s]")
_DMP_OPS: dict[int, Op] = {0: "equal", -1: "delete", 1: "insert"}
_KIND_LABEL = {"added": "Added", "removed": "Removed", "modified": "Changed", "moved": "Moved"}
_WEBHOOK_TYPE = {"alert": "clause.changes", "digest": "digest", "test": "test"}
_SECTION_SEP = " › "


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """A run of text that is kept, deleted or inserted between two versions of a clause."""

    op: Op
    text: str


# --- diffing -------------------------------------------------------------------------------


def diff_segments(
    before: str, after: str, *, timeout: float = DIFF_TIMEOUT_SECONDS
) -> tuple[Segment, ...]:
    """Word-level diff of two texts, cleaned up for people to read."""
    dmp = diff_match_patch()
    dmp.Diff_Timeout = timeout
    vocab: list[str] = []
    codes: dict[str, str] = {}
    try:
        a = _encode_words(before, vocab, codes)
        b = _encode_words(after, vocab, codes)
    except _TooManyWords:
        diffs = dmp.diff_main(before, after, False)
        dmp.diff_cleanupSemantic(diffs)
        return _merge(Segment(op=_DMP_OPS[op], text=text) for op, text in diffs)
    diffs = dmp.diff_main(a, b, False)
    dmp.diff_cleanupSemantic(diffs)
    return _merge(
        Segment(op=_DMP_OPS[op], text="".join(vocab[_code_index(c)] for c in text))
        for op, text in diffs
    )


def change_segments(change: ClauseNotice) -> tuple[Segment, ...]:
    """What to show for one clause change: a diff, or the whole clause added or removed."""
    before, after = change.before, change.after
    if before is not None and after is not None:
        if before == after:
            return (Segment(op="equal", text=after),)
        return diff_segments(before, after)
    if after is not None:
        return (Segment(op="insert", text=after),)
    if before is not None:
        return (Segment(op="delete", text=before),)
    return ()


class _TooManyWords(Exception):
    pass


def _code_char(index: int) -> str:
    # Skip the surrogate block so every code is a valid character.
    point = index + 1
    if point >= 0xD800:
        point += 0x800
    if point > 0x10FFFF:
        raise _TooManyWords
    return chr(point)


def _code_index(char: str) -> int:
    point = ord(char)
    if point >= 0xE000:
        point -= 0x800
    return point - 1


def _encode_words(text: str, vocab: list[str], codes: dict[str, str]) -> str:
    out: list[str] = []
    for token in _TOKEN.findall(text):
        code = codes.get(token)
        if code is None:
            code = _code_char(len(vocab))
            codes[token] = code
            vocab.append(token)
        out.append(code)
    return "".join(out)


def _merge(segments: Any) -> tuple[Segment, ...]:
    merged: list[Segment] = []
    for seg in segments:
        if not seg.text:
            continue
        if merged and merged[-1].op == seg.op:
            merged[-1] = Segment(op=seg.op, text=merged[-1].text + seg.text)
        else:
            merged.append(seg)
    return tuple(merged)


# --- shared wording ------------------------------------------------------------------------


def subject(notice: Notice) -> str:
    """One-line subject, e.g. "TikTok Privacy Policy: 3 clauses changed"."""
    if notice.kind == "test":
        return f"clausewatch test notification for subscription {_one_line(notice.subscription_id)}"
    if notice.kind == "alert":
        doc = notice.documents[0]
        heading = _truncate(_one_line(doc.heading), 150)
        return f"{heading}: {_plural(len(doc.changes), 'clause')} changed"
    period = _period(notice)
    return (
        f"clausewatch {period}digest: {_plural(notice.change_count, 'change')}"
        f" in {_plural(len(notice.documents), 'document')}"
    )


def footer_text(notice: Notice) -> str:
    """Why the reader gets this message and how to stop it."""
    sub = _one_line(notice.subscription_id)
    why = f"You receive this because of subscription {sub} on clausewatch."
    url = safe_url(notice.unsubscribe_url)
    if url:
        return f"{why} To unsubscribe, visit {url}"
    return (
        f"{why} To stop these messages, ask your clausewatch operator to remove subscription {sub}."
    )


def _intro(notice: Notice) -> str:
    if notice.kind == "test":
        return (
            f"This is a test notification for subscription {_one_line(notice.subscription_id)}."
            " If you can read it, the channel works."
        )
    if notice.window_start is not None and notice.window_end is not None:
        return (
            f"Changes captured between {_when(notice.window_start)} and {_when(notice.window_end)}."
        )
    return ""


def _change_title(change: ClauseNotice) -> str:
    label = _KIND_LABEL.get(change.kind, change.kind.capitalize())
    section = _SECTION_SEP.join(_one_line(s) for s in change.section) or "(no section)"
    return f"{label}: {section}"


def _change_tags(change: ClauseNotice) -> str:
    parts = []
    if change.severity:
        parts.append(f"severity {_one_line(change.severity)}")
    if change.categories:
        parts.append("categories " + ", ".join(_one_line(c) for c in change.categories))
    return "; ".join(parts)


def _document_meta(doc: DocumentNotice) -> str:
    return f"Captured {_when(doc.captured_at)} · sha256 {doc.sha256[:12]}"


def _period(notice: Notice) -> str:
    if notice.window_start is None or notice.window_end is None:
        return ""
    days = round((notice.window_end - notice.window_start).total_seconds() / 86400)
    return {1: "daily ", 7: "weekly ", 30: "monthly ", 31: "monthly "}.get(days, "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso_utc(moment: datetime) -> str:
    """ISO-8601 in UTC with a trailing Z, e.g. 2025-01-05T12:00:00Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def safe_url(url: str | None) -> str | None:
    """The URL if it is http(s) and has a host; None for anything a reader should not follow."""
    if not url:
        return None
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        return None
    return url


# --- plain text ----------------------------------------------------------------------------


def text_diff(segments: tuple[Segment, ...]) -> str:
    """Segments in the [-deleted-]{+inserted+} notation."""
    out = []
    for seg in segments:
        if seg.op == "delete":
            out.append(f"[-{seg.text}-]")
        elif seg.op == "insert":
            out.append(f"{{+{seg.text}+}}")
        else:
            out.append(seg.text)
    return "".join(out)


def render_text(notice: Notice) -> str:
    """The plain-text body of an email."""
    lines = [subject(notice), "=" * min(len(subject(notice)), 72), ""]
    intro = _intro(notice)
    if intro:
        lines += [intro, ""]
    for doc in notice.documents:
        lines += [f"## {_one_line(doc.heading)}", doc.url, _document_meta(doc)]
        if doc.evidence_url:
            lines.append(f"Evidence: {doc.evidence_url}")
        if doc.document_link:
            lines.append(f"Full change: {doc.document_link}")
        lines.append("")
        for change in doc.changes:
            lines.append(f"* {_change_title(change)}")
            tags = _change_tags(change)
            if tags:
                lines.append(f"  ({tags})")
            body = text_diff(change_segments(change))
            lines += ["  " + line for line in body.splitlines() or [""]]
            lines.append("")
    lines += ["-- ", footer_text(notice), ""]
    return "\n".join(lines)


# --- HTML ----------------------------------------------------------------------------------

_DEL_STYLE = "background:#ffe0e0;color:#8a0000;text-decoration:line-through"
_INS_STYLE = "background:#dcffdc;color:#005a00;text-decoration:none"


def html_diff(segments: tuple[Segment, ...]) -> str:
    """Segments as escaped HTML with <del> and <ins>."""
    out = []
    for seg in segments:
        text = html.escape(seg.text).replace("\n", "<br>\n")
        if seg.op == "delete":
            out.append(f'<del style="{_DEL_STYLE}">{text}</del>')
        elif seg.op == "insert":
            out.append(f'<ins style="{_INS_STYLE}">{text}</ins>')
        else:
            out.append(text)
    return "".join(out)


def _html_link(url: str | None, label: str) -> str:
    safe = safe_url(url)
    if safe is None:
        return html.escape(label)
    return f'<a href="{html.escape(safe, quote=True)}">{html.escape(label)}</a>'


def render_html(notice: Notice) -> str:
    """The HTML body of an email; every piece of page text is escaped."""
    esc = html.escape
    title = esc(subject(notice))
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{title}</title></head>",
        '<body style="font-family:sans-serif;line-height:1.45;max-width:46em">',
        f'<h1 style="font-size:1.3em">{title}</h1>',
    ]
    intro = _intro(notice)
    if intro:
        parts.append(f"<p>{esc(intro)}</p>")
    for doc in notice.documents:
        parts.append(
            f'<h2 style="font-size:1.15em">{_html_link(doc.url, _one_line(doc.heading))}</h2>'
        )
        meta = [esc(_document_meta(doc))]
        if doc.evidence_url:
            meta.append(_html_link(doc.evidence_url, "evidence"))
        if doc.document_link:
            meta.append(_html_link(doc.document_link, "full change"))
        parts.append(f'<p style="color:#555;font-size:.9em">{" · ".join(meta)}</p>')
        for change in doc.changes:
            parts.append(f'<h3 style="font-size:1em">{esc(_change_title(change))}</h3>')
            tags = _change_tags(change)
            if tags:
                parts.append(f'<p style="color:#555;font-size:.9em">{esc(tags)}</p>')
            parts.append(
                '<blockquote style="margin:0 0 1em 0;padding-left:1em;border-left:3px solid #ccc">'
                f"{html_diff(change_segments(change))}</blockquote>"
            )
    footer = esc(footer_text(notice))
    unsubscribe = safe_url(notice.unsubscribe_url)
    if unsubscribe:
        footer += " " + _html_link(unsubscribe, "Unsubscribe")
    parts += [f'<hr><p style="color:#777;font-size:.85em">{footer}</p>', "</body></html>", ""]
    return "\n".join(parts)


# --- Slack ---------------------------------------------------------------------------------


def slack_escape(text: str) -> str:
    """Escape &, < and > as Slack's mrkdwn requires."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_link(url: str | None, label: str) -> str:
    label = slack_escape(_truncate(label.replace("|", "/"), 200))
    safe = safe_url(url)
    if safe is None:
        return label
    # `|` and `>` would end Slack's <url|label> early.
    target = quote(safe, safe=":/?#[]@!$&'()*+,;=%~")
    if len(target) > _SLACK_MAX_URL:
        return label
    return f"<{target}|{label}>"


def _slack_mark(text: str, mark: str) -> str:
    # Slack formatting does not cross lines or tolerate spaces just inside the marks.
    lines = []
    for line in text.split("\n"):
        core = line.strip()
        if not core:
            lines.append(line)
            continue
        start = line.index(core)
        lines.append(f"{line[:start]}{mark}{core}{mark}{line[start + len(core) :]}")
    return "\n".join(lines)


def _slack_piece(seg: Segment) -> str:
    text = slack_escape(seg.text)
    if seg.op == "delete":
        return _slack_mark(text, "~")
    if seg.op == "insert":
        return _slack_mark(text, "*")
    return text


def slack_diff(segments: tuple[Segment, ...], budget: int) -> tuple[str, bool]:
    """Segments as Slack mrkdwn (~deleted~, *inserted*) within `budget` chars; True if cut."""
    out: list[str] = []
    used = 0
    previous: Op = "equal"
    for seg in segments:
        # ~old~*new* side by side would not render as two marks: keep a space between them.
        gap = " " if previous != "equal" and seg.op != "equal" else ""
        previous = seg.op
        piece = gap + _slack_piece(seg)
        if used + len(piece) <= budget:
            out.append(piece)
            used += len(piece)
            continue
        room = budget - used
        n = min(len(seg.text), room)
        while n > 0:
            piece = gap + _slack_piece(Segment(op=seg.op, text=seg.text[:n]))
            if len(piece) <= room:
                out.append(piece)
                break
            n -= max(1, len(piece) - room)
        return "".join(out), True
    return "".join(out), False


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _slack_section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _slack_context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _slack_change_text(doc: DocumentNotice, change: ClauseNotice) -> str:
    head = f"*{slack_escape(_truncate(_change_title(change), 300))}*"
    tags = _change_tags(change)
    if tags:
        head += f" _({slack_escape(_truncate(tags, 300))})_"
    head += "\n"
    more = f"\n… _diff truncated:_ {_slack_link(doc.link, 'read the full change')}"
    body, cut = slack_diff(change_segments(change), SLACK_MAX_SECTION_TEXT - len(head))
    if not cut:
        return head + body
    body, _ = slack_diff(change_segments(change), SLACK_MAX_SECTION_TEXT - len(head) - len(more))
    return head + body + more


def slack_payload(notice: Notice) -> dict[str, Any]:
    """A Slack incoming-webhook message: Block Kit blocks within limits, plus fallback text."""
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _truncate(subject(notice), SLACK_MAX_HEADER_TEXT),
            },
        }
    ]
    intro = _intro(notice)
    if intro:
        blocks.append(_slack_section(slack_escape(_truncate(intro, 2000))))
    footer = _slack_context(slack_escape(_truncate(footer_text(notice), 1500)))
    # Room for the footer and for one "more changes" note.
    room = SLACK_MAX_BLOCKS - len(blocks) - 2
    body: list[dict[str, Any]] = []
    left_out: list[tuple[DocumentNotice, int]] = []
    for i, doc in enumerate(notice.documents):
        pending: list[dict[str, Any]] = [{"type": "divider"}] if i else []
        links = [slack_escape(_document_meta(doc))]
        if doc.evidence_url:
            links.append(_slack_link(doc.evidence_url, "evidence"))
        if doc.document_link:
            links.append(_slack_link(doc.document_link, "full change"))
        heading = f"*{_slack_link(doc.url, _one_line(doc.heading))}*"
        pending.append(_slack_section(heading + "\n" + " · ".join(links)))
        if len(body) + len(pending) + (1 if doc.changes else 0) > room:
            left_out.append((doc, len(doc.changes)))
            continue
        body += pending
        for j, change in enumerate(doc.changes):
            if len(body) >= room:
                left_out.append((doc, len(doc.changes) - j))
                break
            body.append(_slack_section(_slack_change_text(doc, change)))
    blocks += body
    if left_out:
        count = sum(n for _, n in left_out)
        note = f"… and {_plural(count, 'more change')} not shown here:"
        for doc, _ in left_out:
            link = " " + _slack_link(doc.link, _one_line(doc.heading))
            if len(note) + len(link) > SLACK_MAX_SECTION_TEXT - 2:
                note += " …"
                break
            note += link
        blocks.append(_slack_section(note))
    blocks.append(footer)
    return {"text": _slack_fallback(notice), "blocks": blocks, "unfurl_links": False}


def _slack_fallback(notice: Notice) -> str:
    text = slack_escape(_truncate(subject(notice), 500))
    for doc in notice.documents:
        line = (
            f"\n• {_slack_link(doc.link, _one_line(doc.heading))}: "
            f"{_plural(len(doc.changes), 'change')}"
        )
        if len(text) + len(line) > SLACK_MAX_FALLBACK_TEXT - 2:
            return text + "\n…"
        text += line
    return text


# --- webhook JSON --------------------------------------------------------------------------


def webhook_payload(notice: Notice) -> dict[str, Any]:
    """The versioned JSON body of a webhook delivery."""
    window = None
    if notice.window_start is not None and notice.window_end is not None:
        window = {"start": iso_utc(notice.window_start), "end": iso_utc(notice.window_end)}
    return {
        "type": _WEBHOOK_TYPE[notice.kind],
        "version": WEBHOOK_VERSION,
        "id": notice.id,
        "timestamp": iso_utc(notice.created_at),
        "subscription": {"id": notice.subscription_id},
        "summary": subject(notice),
        "window": window,
        "documents": [_webhook_document(doc) for doc in notice.documents],
    }


def _webhook_document(doc: DocumentNotice) -> dict[str, Any]:
    return {
        "id": doc.document_id,
        "platform": doc.platform,
        "title": doc.title,
        "url": doc.url,
        "captured_at": iso_utc(doc.captured_at),
        "sha256": doc.sha256,
        "evidence_url": doc.evidence_url,
        "link": doc.document_link,
        "changes": [
            {
                "clause_id": c.clause_id,
                "kind": c.kind,
                "section": list(c.section),
                "before": c.before,
                "after": c.after,
                "categories": list(c.categories),
                "severity": c.severity,
            }
            for c in doc.changes
        ],
    }
