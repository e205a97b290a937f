"""Citation records of a clause, formatted for a filing: plain text, JSON and CSL-JSON.

Pure formatting of the record `ClauseWatch.citation_record` returns; nothing here reads the
store or the clock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

FORMATS = ("text", "json", "csl")
CSL_TYPE = "application/vnd.citationstyles.csl+json"

_STATUS = {
    "ok": "verifies: the stored snapshot still hashes to this SHA-256",
    "mismatch": "DOES NOT VERIFY: the stored snapshot no longer hashes to this SHA-256",
    "missing": "cannot be verified: the stored snapshot is missing",
    "unreadable": "cannot be verified: the stored snapshot cannot be read",
    "dropped": "not verifiable here: the snapshot's bytes were dropped by the retention "
               "policy (its hash stays in the event log)",
}


def verification_text(verification: dict[str, Any] | None) -> str:
    """One sentence on whether the cited snapshot still verifies, and when that was checked."""
    if verification is None:
        return "no snapshot of this document holds the clause's wording"
    text = _STATUS.get(verification["status"], f"status {verification['status']}")
    if verification["status"] == "mismatch" and verification.get("actual"):
        text += f" (its bytes hash to {verification['actual']})"
    when = "checked now" if verification.get("recomputed") else "last checked"
    return f"{text}; {when} {verification['checked_at']}"


def cite_as(record: dict[str, Any]) -> str:
    """The one-line citation to paste into a filing."""
    document = record["document"]
    parts = [f"{record['entity']}, {document['title']}"]
    if record["section"]:
        parts.append(f"§ {' > '.join(record['section'])}")
    line = ", ".join(parts)
    capture = record.get("capture")
    url = (capture or {}).get("final_url") or document["url"]
    details = [f"clausewatch record {record['record_id']}"]
    if capture is not None:
        details.insert(0, f"captured {capture['captured_at']}")
        details.insert(1, f"SHA-256 {capture['sha256']}")
    return f"{line}, {url} ({'; '.join(details)})."


def citation_text(record: dict[str, Any]) -> str:
    """The citation record as plain text, one labelled line per fact."""
    document = record["document"]
    capture = record.get("capture")
    categories = ", ".join(f"{c['name']} ({c['severity']})" for c in record["categories"])
    lines = [
        f"Citation record {record['record_id']}",
        f"Entity:        {record['entity']}",
        f"Document:      {document['title']} ({document['id']}, record {document['record_id']})",
        f"Section:       {' > '.join(record['section']) or '-'}",
        f"Clause:        {record['clause_id']} ({record['status']})",
        f"Text:          \"{record['text']}\"",
        f"Categories:    {categories or 'none recorded'}",
        f"First seen:    {record['first_seen']}",
        f"Wording since: {record['wording_since']}",
        f"Last seen:     {record['last_seen']}",
        f"Changes:       {record['changes']}",
    ]
    if capture is not None:
        lines += [
            f"Captured:      {capture['captured_at']}",
            f"URL:           {capture['final_url'] or document['url']}",
            f"SHA-256:       {capture['sha256']}",
        ]
    else:
        lines.append(f"URL:           {document['url']}")
    lines += [
        f"Verification:  {verification_text(record.get('verification'))}",
        f"Cite as:       {cite_as(record)}",
    ]
    return "\n".join(lines) + "\n"


def citation_json(record: dict[str, Any]) -> dict[str, Any]:
    """The citation record as JSON: the record itself plus the line to cite it by."""
    return {**record, "cite_as": cite_as(record),
            "verification_text": verification_text(record.get("verification"))}


def citation_csl(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The citation as CSL-JSON (a list of one `webpage` item), for reference managers."""
    document = record["document"]
    capture = record.get("capture")
    verification = record.get("verification")
    item: dict[str, Any] = {
        "id": record["record_id"],
        "type": "webpage",
        "title": document["title"],
        "container-title": record["entity"],
        "author": [{"literal": record["entity"]}],
        "publisher": record["entity"],
        "URL": (capture or {}).get("final_url") or document["url"],
        "abstract": record["text"],
        "archive": "clausewatch",
        "archive_location": f"{record['record_id']} (clause {record['clause_id']}; document "
                            f"{document['record_id']})",
        "note": "; ".join(filter(None, [
            f"SHA-256 of the snapshot: {capture['sha256']}" if capture else None,
            f"captured {capture['captured_at']}" if capture else None,
            f"verification: {verification_text(verification)}",
        ])),
        "categories": [c["name"] for c in record["categories"]],
        "custom": {
            "clause_id": record["clause_id"],
            "document_id": document["id"],
            "document_record_id": document["record_id"],
            "sha256": capture["sha256"] if capture else None,
            "captured_at": capture["captured_at"] if capture else None,
            "verification": verification["status"] if verification else None,
            "verified_at": verification["checked_at"] if verification else None,
        },
    }
    if record["section"]:
        item["section"] = " > ".join(record["section"])
    if capture is not None:
        item["accessed"] = _date_parts(capture["captured_at"])
    return [item]


def _date_parts(moment: str) -> dict[str, Any]:
    when = datetime.fromisoformat(moment)
    return {"date-parts": [[when.year, when.month, when.day]], "raw": moment}
