"""The read-only HTTP API: health, readiness, metrics, JSON queries, capture bytes and Atom feeds."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from daemon.citation import CSL_TYPE, FORMATS, citation_csl, citation_json, citation_text
from daemon.evidence import EvidenceError
from daemon.feeds import atom_feed, latest_changes
from daemon.openapi import openapi_document
from daemon.projections import iso
from daemon.service import (
    ClauseWatch,
    UnknownCategoryError,
    UnknownClauseError,
    UnknownDocumentError,
)
from domain.clauses import CHANGE_KINDS

log = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[tuple[bool, str]]]

# Paths anyone may call; everything else needs the bearer token when one is configured.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
FEED_LIMIT, MAX_FEED_LIMIT = 50, 500
CLAUSE_STATUSES = ("present", "removed")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_EXTENSIONS = {"text/html": "html", "application/xhtml+xml": "xhtml", "application/pdf": "pdf",
               "text/plain": "txt", "text/markdown": "md", "text/x-markdown": "md"}
# Defence in depth: JSON that is mistakenly rendered as HTML still cannot open a tag.
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                 "\u2028": "\\u2028", "\u2029": "\\u2029"}
_JSON_ESCAPE = re.compile("[<>&\u2028\u2029]")
JSON_TYPE = "application/json"
ATOM_TYPE = "application/atom+xml"


class ApiError(Exception):
    """A request the API refuses; becomes a JSON error response with `status`."""

    def __init__(self, status: int, message: str, *, parameter: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.parameter = parameter
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON error object."""
        body: dict[str, Any] = {"error": self.message}
        if self.parameter is not None:
            body["parameter"] = self.parameter
        return body


def build_api(service: ClauseWatch, *, registry: CollectorRegistry, readiness: Readiness,
              token: str | None = None, public_url: str | None = None,
              on_change_hooks: Sequence[Any] | None = None) -> web.Application:
    """The aiohttp application serving the API; `token` enables bearer authentication.

    `on_change_hooks` is accepted for the runtime's wiring and not used by the read-only API.
    """
    del on_change_hooks
    handlers = _Handlers(service, readiness=readiness,
                         public_url=public_url.rstrip("/") if public_url else None)
    app = web.Application(middlewares=[_errors_middleware, _auth_middleware(token)])
    app.on_response_prepare.append(_security_headers)
    r = app.router
    r.add_get("/healthz", handlers.healthz)
    r.add_get("/readyz", handlers.readyz)
    r.add_get("/metrics", make_aiohttp_handler(registry))
    r.add_get("/api/v1/openapi.json", handlers.openapi)
    r.add_get("/api/v1/documents", handlers.documents)
    # Document ids contain "/": the suffixed routes come before the bare one.
    r.add_get("/api/v1/documents/{id:.+}/clauses", handlers.document_clauses)
    r.add_get("/api/v1/documents/{id:.+}/captures", handlers.document_captures)
    r.add_get("/api/v1/documents/{id:.+}", handlers.document)
    r.add_get("/api/v1/clauses/{clause_id}", handlers.clause)
    r.add_get("/api/v1/clauses/{clause_id}/citation", handlers.citation)
    r.add_get("/api/v1/categories", handlers.categories)
    r.add_get("/api/v1/categories/{category_id}", handlers.category)
    r.add_get("/api/v1/changes", handlers.changes)
    r.add_get("/api/v1/captures/{sha256}", handlers.capture)
    r.add_get("/feeds/changes.atom", handlers.changes_feed)
    r.add_get("/feeds/documents/{id:.+}/changes.atom", handlers.document_feed)
    return app


class _Handlers:
    """Request handlers; every service call runs in a worker thread."""

    def __init__(self, service: ClauseWatch, *, readiness: Readiness,
                 public_url: str | None) -> None:
        self.service = service
        self.readiness = readiness
        self.public_url = public_url
        self._openapi: bytes | None = None

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            ready, reason = await self.readiness()
        except Exception as exc:
            log.warning("readiness check failed: %s", exc, exc_info=True)
            ready, reason = False, f"readiness check failed: {exc}"
        if ready:
            return _json({"status": "ready"})
        return _json({"status": "not ready", "reason": reason}, status=503)

    async def openapi(self, request: web.Request) -> web.Response:
        _params(request, set())
        if self._openapi is None:
            document = openapi_document(version=_version(), public_url=self.public_url)
            self._openapi = _dumps(document).encode()
        return web.Response(body=self._openapi, content_type=JSON_TYPE, charset="utf-8")

    async def documents(self, request: web.Request) -> web.Response:
        _params(request, set())
        return _json({"items": await asyncio.to_thread(self.service.documents)})

    async def document(self, request: web.Request) -> web.Response:
        _params(request, set())
        document_id = request.match_info["id"]
        return _json(await self._call(self.service.document, document_id))

    async def document_clauses(self, request: web.Request) -> web.Response:
        params = _params(request, {"status"})
        status = params.get("status")
        if status is not None and status not in CLAUSE_STATUSES:
            raise ApiError(400, f"status must be one of {', '.join(CLAUSE_STATUSES)}, "
                                f"not {status!r}", parameter="status")
        clauses = await self._call(self.service.clauses, request.match_info["id"],
                                   include_removed=status != "present")
        if status is not None:
            clauses = [c for c in clauses if c["status"] == status]
        return _json({"items": clauses})

    async def document_captures(self, request: web.Request) -> web.Response:
        params = _params(request, {"limit"})
        limit = _int(params, "limit", default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
        captures = await self._call(self.service.captures, request.match_info["id"],
                                    limit=limit)
        return _json({"items": captures})

    async def clause(self, request: web.Request) -> web.Response:
        _params(request, set())
        clause_id = request.match_info["clause_id"]
        try:
            record = await asyncio.to_thread(self.service.clause, clause_id)
        except KeyError:
            raise ApiError(404, f"no clause with id {clause_id!r}") from None
        return _json(record)

    async def citation(self, request: web.Request) -> web.Response:
        params = _params(request, {"format", "verify"})
        fmt = params.get("format", "json")
        if fmt not in FORMATS:
            raise ApiError(400, f"format must be one of {', '.join(FORMATS)}, not {fmt!r}",
                           parameter="format")
        verify = _boolean(params, "verify")
        record = await self._call(self.service.citation_record, request.match_info["clause_id"],
                                  verify=verify)
        if fmt == "text":
            return web.Response(text=citation_text(record), content_type="text/plain",
                                charset="utf-8")
        if fmt == "csl":
            return web.Response(text=_dumps(citation_csl(record)), content_type=CSL_TYPE,
                                charset="utf-8")
        return _json(citation_json(record))

    async def categories(self, request: web.Request) -> web.Response:
        _params(request, set())
        return _json({"items": await asyncio.to_thread(self.service.categories)})

    async def category(self, request: web.Request) -> web.Response:
        _params(request, set())
        return _json(await self._call(self.service.category, request.match_info["category_id"]))

    async def changes(self, request: web.Request) -> web.Response:
        params = _params(request, {"document", "since", "kind", "limit", "cursor"})
        document = _nonempty(params, "document")
        since = _since(params.get("since"))
        kind = params.get("kind")
        if kind is not None and kind not in CHANGE_KINDS:
            raise ApiError(400, f"kind must be one of {', '.join(CHANGE_KINDS)}, not {kind!r}",
                           parameter="kind")
        limit = _int(params, "limit", default=DEFAULT_LIMIT, maximum=MAX_LIMIT)
        after = _int(params, "cursor", default=0, minimum=0, maximum=2**63 - 1)

        def load() -> list[dict[str, Any]]:
            if document is not None:
                self.service.document(document)  # unknown ids answer 404, not an empty page
            # One extra row tells whether another page exists, so the last page is never empty.
            return self.service.changes(document=document, since=since, kind=kind,
                                        after_seq=after, limit=limit + 1)

        rows = await self._call(load)
        items = rows[:limit]
        next_cursor = str(items[-1]["seq"]) if len(rows) > limit else None
        return _json({"items": items, "next_cursor": next_cursor})

    async def capture(self, request: web.Request) -> web.StreamResponse:
        _params(request, set())
        sha256 = request.match_info["sha256"]
        if not _SHA256.match(sha256):
            raise ApiError(400, "a capture is named by its SHA-256: 64 lowercase hex digits",
                           parameter="sha256")
        evidence = self.service.store.evidence
        if not await asyncio.to_thread(evidence.has, sha256):
            raise _capture_missing(sha256)
        etag = f'"{sha256}"'
        headers = {
            "ETag": etag,
            "Cache-Control": "private, max-age=31536000, immutable",
            # Captured pages are untrusted HTML: never render them in our origin.
            "Content-Security-Policy": "sandbox; default-src 'none'",
            "Referrer-Policy": "no-referrer",
        }
        if etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=304, headers=headers)

        def load() -> tuple[bytes, str | None]:
            return evidence.get(sha256), self.service.capture_content_type(sha256)

        try:
            body, content_type = await asyncio.to_thread(load)
        except EvidenceError as exc:
            if not await asyncio.to_thread(evidence.has, sha256):
                raise _capture_missing(sha256) from None
            log.error("capture %s failed verification: %s", sha256, exc)
            raise ApiError(500, f"the stored bytes of capture {sha256} no longer match their "
                                "SHA-256; run `clausewatch verify` and restore the evidence "
                                "directory from a backup") from None
        content_type = _safe_content_type(content_type)
        extension = _EXTENSIONS.get(content_type.split(";")[0].strip().lower(), "bin")
        headers["Content-Type"] = content_type
        headers["Content-Disposition"] = f'attachment; filename="{sha256}.{extension}"'
        return web.Response(body=body, headers=headers)

    async def changes_feed(self, request: web.Request) -> web.Response:
        return await self._feed(request, None)

    async def document_feed(self, request: web.Request) -> web.Response:
        return await self._feed(request, request.match_info["id"])

    async def _feed(self, request: web.Request, document_id: str | None) -> web.Response:
        params = _params(request, {"limit"})
        limit = _int(params, "limit", default=FEED_LIMIT, maximum=MAX_FEED_LIMIT)

        def load() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            documents = ([self.service.document(document_id)] if document_id is not None
                         else self.service.documents())
            return documents, latest_changes(self.service, document=document_id, limit=limit)

        documents, changes = await self._call(load)
        self_url = (f"{self.public_url}{request.rel_url.path_qs}" if self.public_url
                    else str(request.url))
        if document_id is None:
            feed_id, title = "urn:clausewatch:feed:changes", "clausewatch: clause changes"
        else:
            doc = documents[0]
            feed_id = f"urn:clausewatch:feed:document:{document_id}"
            title = f"{doc['platform']} {doc['title']}: clause changes"
        body = atom_feed(changes, {d["id"]: d for d in documents}, feed_id=feed_id,
                         title=title, self_url=self_url, api_url=self.public_url)
        return web.Response(body=body, content_type=ATOM_TYPE, charset="utf-8")

    async def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except (UnknownDocumentError, UnknownClauseError, UnknownCategoryError) as exc:
            raise ApiError(404, str(exc)) from None


# Middlewares and headers --------------------------------------------------------------------

@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is a JSON object; unexpected ones are logged and never show a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _json(exc.body(), status=exc.status, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items()
                   if k.lower() in ("allow", "www-authenticate")}
        return _json({"error": _http_error_message(request, exc)}, status=exc.status,
                     headers=headers)
    except Exception:
        request_id = uuid.uuid4().hex[:16]
        log.exception("unexpected error answering %s %s (request %s)", request.method,
                      request.rel_url.path, request_id)
        return _json({"error": "internal server error", "request_id": request_id}, status=500)


def _auth_middleware(token: str | None) -> Middleware:
    expected = token.encode() if token else None

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None or request.path in OPEN_PATHS:
            return await handler(request)
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise _unauthorized(None)
        presented = credentials.strip().encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(presented, expected):
            raise _unauthorized("invalid_token")
        return await handler(request)

    return auth


def _unauthorized(error: str | None) -> ApiError:
    message = ("this endpoint needs an `Authorization: Bearer <token>` header"
               if error is None else "the bearer token is not valid")
    challenge = 'Bearer realm="clausewatch"' + (f', error="{error}"' if error else "")
    return ApiError(401, message, headers={"WWW-Authenticate": challenge})


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def _http_error_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no such endpoint: {request.rel_url.path}; see /api/v1/openapi.json"
    if exc.status == 405:
        return f"{request.method} is not allowed on {request.rel_url.path}"
    return exc.reason


# Responses ------------------------------------------------------------------------------------

def _dumps(data: Any) -> str:
    text = json.dumps(data, ensure_ascii=False)
    return _JSON_ESCAPE.sub(lambda m: _JSON_ESCAPES[m.group()], text)


def _json(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) \
        -> web.Response:
    return web.Response(text=_dumps(data), status=status, content_type=JSON_TYPE,
                        charset="utf-8", headers=headers)


def _capture_missing(sha256: str) -> ApiError:
    return ApiError(404, f"the bytes of capture {sha256} are not stored (unknown hash, or "
                         "dropped by the retention policy)")


def _safe_content_type(value: str | None) -> str:
    # The value came from the watched site; only a plain, printable one goes back out.
    if not value or not value.isascii() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "application/octet-stream"
    return value


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",") if part.strip()}


def _version() -> str:
    try:
        return metadata.version("clausewatch")
    except metadata.PackageNotFoundError:
        return "0.0.0"


# Query parameters -----------------------------------------------------------------------------

def _params(request: web.Request, allowed: set[str]) -> dict[str, str]:
    """The query parameters, each given at most once; unknown ones are refused, not ignored."""
    params: dict[str, str] = {}
    for key in request.query:
        if key not in allowed:
            expected = ", ".join(sorted(allowed)) or "none"
            raise ApiError(400, f"unknown query parameter {key!r} (accepted: {expected})",
                           parameter=key)
        values = request.query.getall(key)
        if len(values) > 1:
            raise ApiError(400, f"query parameter {key!r} is given {len(values)} times; "
                                "give it once", parameter=key)
        params[key] = values[0]
    return params


def _nonempty(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is not None and not value.strip():
        raise ApiError(400, f"{name} must not be empty", parameter=name)
    return value


def _int(params: Mapping[str, str], name: str, *, default: int, minimum: int = 1,
         maximum: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit():
        raise ApiError(400, f"{name} must be a whole number from {minimum} to {maximum}, "
                            f"not {raw!r}", parameter=name)
    value = int(raw)
    if not minimum <= value <= maximum:
        raise ApiError(400, f"{name} must be from {minimum} to {maximum}, not {value}",
                       parameter=name)
    return value


def _boolean(params: Mapping[str, str], name: str) -> bool:
    raw = params.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ApiError(400, f"{name} must be true or false, not {raw!r}", parameter=name)


def _since(raw: str | None) -> str | None:
    """An ISO 8601 date or time (UTC if no offset) in the views' text format."""
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise ApiError(400, f"since must be an ISO 8601 date or timestamp such as "
                            f"2025-01-31T00:00:00Z, not {raw!r}", parameter="since") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.microsecond:
        # Stored times have whole seconds; round up so nothing earlier than `since` matches.
        moment = moment.replace(microsecond=0) + timedelta(seconds=1)
    return iso(moment)
