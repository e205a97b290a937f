"""Atom 1.0 feeds of clause changes; page text is untrusted and only ever XML text content."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from daemon.service import ClauseWatch

ATOM = "http://www.w3.org/2005/Atom"
_EPOCH = "1970-01-01T00:00:00Z"
# Characters XML 1.0 cannot carry at all, not even escaped.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def latest_changes(service: ClauseWatch, *, document: str | None = None,
                   limit: int = 50) -> list[dict[str, Any]]:
    """The newest `limit` clause changes (of one document, or all), newest first."""
    sql = "SELECT seq FROM cw_changes"
    params: list[Any] = []
    if document is not None:
        sql += " WHERE document = ?"
        params.append(document)
    sql += " ORDER BY seq DESC LIMIT 1 OFFSET ?"
    params.append(limit - 1)
    oldest = service.store.db.scalar(sql, params)
    after = int(oldest) - 1 if oldest is not None else 0
    rows = service.changes(document=document, after_seq=after)
    # Changes recorded between the two queries would make the list longer than asked.
    return list(reversed(rows[-limit:]))


def atom_feed(changes: Sequence[Mapping[str, Any]], documents: Mapping[str, Mapping[str, Any]],
              *, feed_id: str, title: str, self_url: str, api_url: str | None = None) -> bytes:
    """An Atom document with one entry per change (newest first), as UTF-8 bytes."""
    # Unprefixed names in the Atom namespace, without ElementTree's global prefix registry.
    feed = ET.Element("feed", xmlns=ATOM)
    _text(feed, "id", feed_id)
    _text(feed, "title", title)
    _text(feed, "updated", max((c["captured_at"] for c in changes), default=_EPOCH))
    ET.SubElement(feed, "link", rel="self", type="application/atom+xml", href=self_url)
    author = ET.SubElement(feed, "author")
    _text(author, "name", "clausewatch")
    _text(feed, "generator", "clausewatch")
    for change in changes:
        feed.append(_entry(change, documents.get(change["document"]), api_url))
    return ET.tostring(feed, encoding="utf-8", xml_declaration=True)


def _entry(change: Mapping[str, Any], document: Mapping[str, Any] | None,
           api_url: str | None) -> ET.Element:
    entry = ET.Element("entry")
    name = (f"{document['platform']} {document['title']}" if document
            else str(change["document"]))
    _text(entry, "id", f"urn:clausewatch:change:{change['id']}")
    _text(entry, "title", f"{name}: clause {change['kind']}")
    _text(entry, "updated", change["captured_at"])
    _text(entry, "published", change["captured_at"])
    if document and document.get("url"):
        ET.SubElement(entry, "link", rel="alternate", href=document["url"])
    if api_url:
        href = f"{api_url}/api/v1/clauses/{quote(change['clause'], safe='')}"
        ET.SubElement(entry, "link", rel="related", type="application/json", href=href)
    ET.SubElement(entry, "category", term=change["kind"])
    content = _text(entry, "content", _describe(change))
    content.set("type", "text")
    return entry


def _describe(change: Mapping[str, Any]) -> str:
    lines = []
    if change.get("section"):
        lines += ["Section: " + " › ".join(change["section"]), ""]
    before, after = change.get("before"), change.get("after")
    if before is not None and after is not None:
        lines += ["Before:", before, "", "After:", after]
    elif after is not None:
        lines += ["Added:", after]
    elif before is not None:
        lines += ["Removed:", before]
    return "\n".join(lines)


def _text(parent: ET.Element, name: str, value: str) -> ET.Element:
    element = ET.SubElement(parent, name)
    element.text = _NOT_XML.sub("\ufffd", value)
    return element
