"""The OpenAPI 3.1 description of the HTTP API served by daemon/api.py."""

from __future__ import annotations

from typing import Any

_NULLABLE_STRING = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_NULLABLE_SHA256 = {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"}
_SECTION = {"type": "array", "items": {"type": "string"},
            "description": "Headings above the clause, outermost first."}
_CHANGE_KINDS = ["added", "removed", "modified", "moved"]
_SEVERITY = {"enum": ["low", "medium", "high", "critical"]}
_IDS = {"type": ["array", "null"], "items": {"type": "string"},
        "description": "Category ids; null when that side was not classified."}
_RECORD_ID = {"type": "string", "examples": ["CW-P-000305"],
              "description": "Stable record id, assigned once and never reused."}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], description: str) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": properties,
            "required": sorted(properties)}


def _list_of(name: str) -> dict[str, Any]:
    return _object({"items": {"type": "array", "items": _ref(name)}}, f"A list of {name}.")


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {
        "error": {"type": "string", "description": "What was wrong and what to do."},
        "parameter": {"type": "string", "description": "The query or path parameter at fault."},
        "request_id": {"type": "string", "description": "Quote it when reading the logs."}}},
    "Health": _object({"status": {"const": "alive"}}, "The process answers."),
    "Readiness": {"type": "object", "required": ["status"], "properties": {
        "status": {"enum": ["ready", "not ready"]}, "reason": {"type": "string"}}},
    "Document": _object({
        "id": {"type": "string", "examples": ["tiktok/privacy-policy"]},
        "record_id": {"type": "string", "examples": ["CW-D-00001"]},
        "platform": {"type": "string"}, "title": {"type": "string"},
        "url": {"type": "string", "format": "uri"},
        "first_tracked": _NULLABLE_TIME, "last_verified": _NULLABLE_TIME,
        "last_updated": _NULLABLE_TIME, "last_captured": _NULLABLE_TIME,
        "captures": {"type": "integer"}, "changes": {"type": "integer"},
        "failures": {"type": "integer"}, "consecutive_failures": {"type": "integer"},
        "status": {"enum": ["pending", "ok", "suspect", "failing"]},
        "last_error": _NULLABLE_STRING, "sha256": _NULLABLE_SHA256,
    }, "A watched document and its record."),
    "ClauseCategory": {"type": "object", "required": ["id", "name", "severity", "confidence"],
                       "description": "A category the clause falls under, as classified.",
                       "properties": {
        "id": {"type": "string", "examples": ["ai-interaction-data"]},
        "name": {"type": "string", "examples": ["AI interaction data collection"]},
        "severity": _SEVERITY,
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "rules": {"type": "array", "items": {"type": "string"},
                  "description": "The taxonomy rules that fired: how it was classified."},
        "rarity": {"$ref": "#/components/schemas/Rarity"},
        "other_platforms": {"type": "array", "items": {"$ref": "#/components/schemas/Peer"},
                            "description": "The same category's clauses at other platforms "
                                           "(clause records only)."}}},
    "Rarity": _object({
        "text": {"type": "string", "examples": ["1 of 3 platforms"]},
        "platforms": {"type": "integer"}, "platforms_watched": {"type": "integer"},
        "documents": {"type": "integer"}, "clauses": {"type": "integer"},
    }, "How many watched platforms have a clause in the category."),
    "Peer": _object({
        "platform": {"type": "string"}, "document": {"type": "string"},
        "document_title": {"type": "string"}, "document_record_id": {"type": "string"},
        "clause": {"type": "string"}, "record_id": _RECORD_ID, "section": _SECTION,
        "text": {"type": "string"}, "confidence": {"type": "number"},
        "first_seen": _TIME, "changes": {"type": "integer"},
    }, "A clause of another platform in the same category, with its current text."),
    "Clause": _object({
        "id": {"type": "string", "examples": ["cl-9da34e358f62"]},
        "record_id": _RECORD_ID,
        "document": {"type": "string"}, "section": _SECTION,
        "text": {"type": "string", "description": "Page text: untrusted data, never HTML."},
        "kind": {"type": "string", "examples": ["paragraph", "heading", "item"]},
        "first_seen": _TIME, "last_seen": _TIME, "changes": {"type": "integer"},
        "months_monitored": {"type": "integer"},
        "stability": {"enum": ["stable", "volatile"]},
        "status": {"enum": ["present", "removed"]}, "position": {"type": "integer"},
        "categories": {"type": ["array", "null"], "items": {
            "$ref": "#/components/schemas/ClauseCategory"},
            "description": "Null while the clause has never been classified."},
    }, "A clause of a document, with a stable id across versions."),
    "Change": _object({
        "id": {"type": "string", "description": "The event id: aggregate and version."},
        "seq": {"type": "integer", "description": "Position in the event log."},
        "document": {"type": "string"}, "clause": {"type": "string"},
        "kind": {"enum": _CHANGE_KINDS}, "section": _SECTION,
        "before": _NULLABLE_STRING, "after": _NULLABLE_STRING,
        "patch": {"type": "string", "description": "diff-match-patch text of the edit."},
        "similarity": {"type": "number", "minimum": 0, "maximum": 1},
        "captured_at": _TIME, "sha256": _SHA256,
        "categories_before": _IDS, "categories_after": _IDS,
    }, "One clause-level change between two captures."),
    "CategoryChange": _object({
        "seq": {"type": "integer"}, "at": _TIME,
        "cause": {"enum": ["capture", "reclassify"]},
        "taxonomy_version": _NULLABLE_STRING,
        "added": {"type": "array", "items": {"type": "string"}},
        "removed": {"type": "array", "items": {"type": "string"}},
        "before": _IDS, "after": _IDS,
    }, "A clause starting or ceasing to fall under categories."),
    "Category": _object({
        "id": {"type": "string"}, "name": {"type": "string"},
        "severity": {"oneOf": [_SEVERITY, {"type": "null"}]},
        "description": _NULLABLE_STRING,
        "regulations": {"type": "array", "items": {"type": "string"}},
        "in_taxonomy": {"type": "boolean",
                        "description": "False for categories only an older taxonomy used."},
        "rarity": {"type": "string", "examples": ["1 of 3 platforms"]},
        "platforms": {"type": "integer"}, "platforms_watched": {"type": "integer"},
        "documents": {"type": "integer"}, "clauses": {"type": "integer"},
    }, "A taxonomy category and how many watched platforms have it."),
    "Verification": _object({
        "sha256": _SHA256,
        "status": {"enum": ["ok", "mismatch", "missing", "unreadable", "dropped"]},
        "verifies": {"type": "boolean"}, "actual": _NULLABLE_SHA256,
        "checked_at": _TIME,
        "recomputed": {"type": "boolean", "description": "Re-hashed for this answer."},
    }, "Whether the stored snapshot still hashes to its SHA-256."),
    "Capture": _object({
        "id": {"type": "string"}, "document": {"type": "string"}, "captured_at": _TIME,
        "outcome": {"enum": ["baseline", "unchanged", "changed", "suspect", "failed"]},
        "http_status": {"type": ["integer", "null"]}, "sha256": _NULLABLE_SHA256,
        "size": {"type": ["integer", "null"]}, "text_sha256": _NULLABLE_SHA256,
        "final_url": _NULLABLE_STRING, "content_type": _NULLABLE_STRING,
        "reason": _NULLABLE_STRING, "changes": {"type": "integer"},
        "bytes_stored": {"type": "boolean"},
    }, "One capture (fetch) of a document."),
}
SCHEMAS["ClauseWithHistory"] = {"allOf": [_ref("Clause"), {
    "type": "object",
    "required": ["history", "category_history", "platform", "document_record"],
    "properties": {"history": {"type": "array", "items": _ref("Change")},
                   "category_history": {"type": "array", "items": _ref("CategoryChange")},
                   "platform": {"type": "string"},
                   "document_record": _ref("Document")}}]}
SCHEMAS["CategoryList"] = _list_of("Category")
SCHEMAS["CategoryDetail"] = {"allOf": [_ref("Category"), {
    "type": "object", "required": ["platforms_with_category"],
    "properties": {"platforms_with_category": {"type": "array", "items": {
        "type": "object", "properties": {
            "platform": {"type": "string"},
            "documents": {"type": "array", "items": {"type": "object", "properties": {
                "id": {"type": "string"}, "record_id": {"type": "string"},
                "title": {"type": "string"},
                "clauses": {"type": "array", "items": {"type": "object"}}}}}}}}}}]}
SCHEMAS["Citation"] = _object({
    "record_id": _RECORD_ID, "clause_id": {"type": "string"},
    "entity": {"type": "string", "description": "The platform that published the document."},
    "document": {"type": "object", "description": "id, record_id, title, url, first_tracked, "
                                                  "last_verified, last_updated."},
    "section": _SECTION, "text": {"type": "string"},
    "status": {"enum": ["present", "removed"]},
    "first_seen": _TIME, "last_seen": _TIME, "changes": {"type": "integer"},
    "wording_since": {**_TIME, "description": "When the cited wording was first captured."},
    "categories": {"type": "array", "items": _ref("ClauseCategory")},
    "capture": {"oneOf": [_ref("Capture"), {"type": "null"}],
                "description": "The snapshot cited: the latest good one holding the wording."},
    "verification": {"oneOf": [_ref("Verification"), {"type": "null"}]},
    "cite_as": {"type": "string", "description": "One line to paste into a filing."},
    "verification_text": {"type": "string"},
}, "A citation record of one clause.")
SCHEMAS["Delivery"] = _object({
    "id": {"type": "string"}, "notice": {"type": "string"},
    "subscription": {"type": "string"}, "channel": {"type": "string"},
    "kind": {"enum": ["alert", "digest", "test"]},
    "status": {"enum": ["pending", "delivered", "dead"]},
    "attempts": {"type": "integer"}, "created_at": _NULLABLE_TIME,
    "captured_at": _NULLABLE_TIME, "next_attempt_at": _NULLABLE_TIME,
    "last_attempt_at": _NULLABLE_TIME, "delivered_at": _NULLABLE_TIME,
    "last_error": _NULLABLE_STRING, "last_status": {"type": ["integer", "null"]},
}, "One notice's delivery to one channel.")
SCHEMAS["DeliveryList"] = _object({
    "deliveries": {"type": "array", "items": _ref("Delivery")},
    "dead_letters": {"type": "integer", "description": "Deliveries that gave up."},
}, "Recent deliveries, newest first.")
SCHEMAS["DocumentList"] = _list_of("Document")
SCHEMAS["ClauseList"] = _list_of("Clause")
SCHEMAS["CaptureList"] = _list_of("Capture")
SCHEMAS["ChangePage"] = _object({
    "items": {"type": "array", "items": _ref("Change")},
    "next_cursor": {"type": ["string", "null"],
                    "description": "Pass as `cursor` for the next page; null on the last."},
}, "One page of changes, oldest first.")


def _json_response(description: str, schema: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref(schema)}}}


def _error(description: str) -> dict[str, Any]:
    return _json_response(description, "Error")


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


def _limit(default: int, maximum: int) -> dict[str, Any]:
    return _query("limit", "How many items at most.",
                  {"type": "integer", "minimum": 1, "maximum": maximum, "default": default})


_DOCUMENT_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
                "description": "The document id. It contains `/`: send it as is "
                               "(`tiktok/privacy-policy`) or with `%2F`."}
_NOT_FOUND = _error("No such document, clause or capture.")
_BAD_REQUEST = _error("A query parameter is invalid; `parameter` names it.")
_UNAUTHORIZED = _error("The bearer token is missing or wrong.")


def _get(summary: str, responses: dict[str, Any], *, parameters: list[Any] | None = None,
         public: bool = False, operation_id: str) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "operationId": operation_id,
                                 "parameters": parameters or [], "responses": responses}
    if public:
        operation["security"] = []
    else:
        responses.setdefault("400", _BAD_REQUEST)
        responses["401"] = _UNAUTHORIZED
    return {"get": operation}


def _post(summary: str, responses: dict[str, Any], *, parameters: list[Any],
          operation_id: str) -> dict[str, Any]:
    operation = _get(summary, responses, parameters=parameters, operation_id=operation_id)
    return {"post": operation["get"]}


def _atom(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/atom+xml": {"schema": {"type": "string"}}}}


def openapi_document(*, version: str, public_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI document; `public_url` becomes the server URL."""
    paths = {
        "/healthz": _get("Liveness", {"200": _json_response("Alive.", "Health")},
                         public=True, operation_id="healthz"),
        "/readyz": _get("Readiness: the store answers and the daemon is running", {
            "200": _json_response("Ready.", "Readiness"),
            "503": _json_response("Not ready; `reason` says why.", "Readiness")},
            public=True, operation_id="readyz"),
        "/metrics": _get("Prometheus metrics", {"200": {
            "description": "Prometheus text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}}}},
            public=True, operation_id="metrics"),
        "/api/v1/openapi.json": _get("This description", {"200": {
            "description": "OpenAPI 3.1.", "content": {"application/json": {
                "schema": {"type": "object"}}}}}, operation_id="openapi"),
        "/api/v1/documents": _get("Watched documents", {
            "200": _json_response("Every document.", "DocumentList")},
            operation_id="listDocuments"),
        "/api/v1/documents/{id}": _get("One document", {
            "200": _json_response("The document.", "Document"), "404": _NOT_FOUND},
            parameters=[_DOCUMENT_ID], operation_id="getDocument"),
        "/api/v1/documents/{id}/clauses": _get(
            "A document's clauses: present ones in document order, then removed ones", {
                "200": _json_response("The clauses.", "ClauseList"), "404": _NOT_FOUND},
            parameters=[_DOCUMENT_ID, _query("status", "Only clauses with this status.",
                                             {"enum": ["present", "removed"]})],
            operation_id="listClauses"),
        "/api/v1/documents/{id}/captures": _get("A document's captures, newest first", {
            "200": _json_response("The captures.", "CaptureList"), "404": _NOT_FOUND},
            parameters=[_DOCUMENT_ID, _limit(100, 1000)], operation_id="listCaptures"),
        "/api/v1/clauses/{clause_id}": _get("One clause with its history of changes", {
            "200": _json_response("The clause.", "ClauseWithHistory"), "404": _NOT_FOUND},
            parameters=[{"name": "clause_id", "in": "path", "required": True,
                         "schema": {"type": "string"}}], operation_id="getClause"),
        "/api/v1/clauses/{clause_id}/citation": _get(
            "A citation record of one clause: entity, document, stable record id, capture "
            "time, the snapshot's SHA-256, URL and whether the stored snapshot still "
            "verifies", {
                "200": {"description": "The citation record.", "content": {
                    "application/json": {"schema": _ref("Citation")},
                    "text/plain": {"schema": {"type": "string"}},
                    "application/vnd.citationstyles.csl+json": {"schema": {
                        "type": "array", "items": {"type": "object"}}}}},
                "404": _NOT_FOUND},
            parameters=[{"name": "clause_id", "in": "path", "required": True,
                         "schema": {"type": "string"}},
                        _query("format", "json (default), text, or csl (CSL-JSON).",
                               {"enum": ["json", "text", "csl"], "default": "json"}),
                        _query("verify", "Re-hash the stored snapshot now instead of "
                                         "reporting the last check.",
                               {"type": "boolean", "default": False})],
            operation_id="getClauseCitation"),
        "/api/v1/categories": _get("Every category with its rarity across watched platforms", {
            "200": _json_response("The categories.", "CategoryList")},
            operation_id="listCategories"),
        "/api/v1/categories/{category_id}": _get(
            "One category: the platforms, documents and clauses that fall under it", {
                "200": _json_response("The category.", "CategoryDetail"),
                "404": _error("No such category.")},
            parameters=[{"name": "category_id", "in": "path", "required": True,
                         "schema": {"type": "string"}}], operation_id="getCategory"),
        "/api/v1/deliveries": _get("Recent notification deliveries, newest first", {
            "200": _json_response("The deliveries and the dead-letter count.",
                                  "DeliveryList")},
            parameters=[_query("status", "Only deliveries with this status.",
                               {"enum": ["pending", "delivered", "dead"]}),
                        _limit(100, 1000)], operation_id="listDeliveries"),
        "/api/v1/deliveries/{id}/retry": _post(
            "Send a dead or pending delivery again now, with a fresh retry budget", {
                "202": _json_response("Queued again.", "Delivery"),
                "404": _error("No such delivery."),
                "409": _error("The delivery was already delivered.")},
            parameters=[{"name": "id", "in": "path", "required": True,
                         "schema": {"type": "string"}}], operation_id="retryDelivery"),
        "/api/v1/changes": _get("Clause changes, oldest first, one page at a time", {
            "200": _json_response("A page of changes.", "ChangePage"),
            "404": _error("The `document` filter names no tracked document.")},
            parameters=[
                _query("document", "Only this document's changes.", {"type": "string"}),
                _query("since", "Only changes captured at or after this ISO 8601 time "
                                "(UTC when no offset is given).",
                       {"type": "string", "format": "date-time"}),
                _query("kind", "Only changes of this kind.", {"enum": _CHANGE_KINDS}),
                _limit(100, 1000),
                _query("cursor", "`next_cursor` of the previous page.",
                       {"type": "string", "pattern": "^[0-9]+$"}),
            ], operation_id="listChanges"),
        "/api/v1/captures/{sha256}": _get(
            "The bytes of a capture exactly as served, as an attachment", {
                "200": {"description": "The bytes, with the Content-Type the site sent. "
                                       "Untrusted: served with `Content-Security-Policy: "
                                       "sandbox` and `Content-Disposition: attachment`.",
                        "headers": {"ETag": {"schema": {"type": "string"},
                                             "description": "The quoted SHA-256."}},
                        "content": {"*/*": {"schema": {"type": "string",
                                                       "format": "binary"}}}},
                "304": {"description": "The `If-None-Match` ETag matches."},
                "404": _error("Unknown hash, or its bytes were dropped by retention."),
                "500": _error("The stored bytes no longer match their hash.")},
            parameters=[{"name": "sha256", "in": "path", "required": True, "schema": _SHA256}],
            operation_id="getCapture"),
        "/feeds/changes.atom": _get("Atom feed of the newest clause changes", {
            "200": _atom("Atom 1.0, newest first.")},
            parameters=[_limit(50, 500)], operation_id="changesFeed"),
        "/feeds/documents/{id}/changes.atom": _get(
            "Atom feed of one document's newest clause changes", {
                "200": _atom("Atom 1.0, newest first."), "404": _NOT_FOUND},
            parameters=[_DOCUMENT_ID, _limit(50, 500)], operation_id="documentChangesFeed"),
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "clausewatch", "version": version,
                 "description": "Clause-level changes to privacy policies and terms of "
                                "service. Every page text is untrusted data."},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "Needed on /api and /feeds when the daemon has a token."}},
        },
        "security": [{"bearer": []}],
    }
    if public_url:
        document["servers"] = [{"url": public_url}]
    return document
