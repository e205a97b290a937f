"""POSTing a JSON body to a receiver and turning its answer into our delivery errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp

from notifiers.errors import (
    ChannelGoneError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)

USER_AGENT = "clausewatch-notifier/0.1"
_TRANSIENT_4XX = frozenset({408, 425, 429})
_SECONDS = re.compile(r"\d{1,10}(\.\d+)?")
_SNIPPET_BYTES = 200


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def shown_url(url: str, *, secret_path: bool) -> str:
    """The URL as it may appear in an error: no query, and no path when the path is a secret."""
    parts = urlsplit(url)
    if secret_path:
        return f"{parts.scheme}://{parts.netloc}/…"
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


async def post_json(
    *,
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout: float,
    channel_id: str,
    notice_id: str,
    secret_path: bool = False,
) -> None:
    """POST `body`; return on 2xx, else raise a DeliveryError that says whether to retry."""
    where = shown_url(url, secret_path=secret_path)
    all_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
    try:
        async with session.post(
            url,
            data=body,
            headers=all_headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as response:
            status = response.status
            if 200 <= status < 300:
                return
            snippet = await response.content.read(_SNIPPET_BYTES)
            retry_after = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
            location = response.headers.get("Location", "")
    except TimeoutError:
        raise TransientDeliveryError(
            channel_id=channel_id,
            notice_id=notice_id,
            reason=f"POST {where} got no answer within {timeout:g}s",
        ) from None
    except aiohttp.ClientError as exc:
        raise TransientDeliveryError(
            channel_id=channel_id,
            notice_id=notice_id,
            reason=f"POST {where} failed: {type(exc).__name__}: {exc}",
        ) from None
    raise status_error(
        status=status,
        where=where,
        snippet=snippet.decode("utf-8", "replace"),
        retry_after=retry_after,
        location=location,
        channel_id=channel_id,
        notice_id=notice_id,
    )


def status_error(
    *,
    status: int,
    where: str,
    snippet: str,
    retry_after: float | None,
    location: str,
    channel_id: str,
    notice_id: str,
) -> DeliveryError:
    """The error for a non-2xx answer: 410 gone, 429/408/5xx transient, the rest permanent."""
    said = " ".join(snippet.split())[:_SNIPPET_BYTES]
    reason = f"POST {where} answered {status}" + (f": {said!r}" if said else "")
    if status == 410:
        return ChannelGoneError(
            channel_id=channel_id, notice_id=notice_id, reason=reason, status=status
        )
    if status >= 500 or status in _TRANSIENT_4XX:
        return TransientDeliveryError(
            channel_id=channel_id,
            notice_id=notice_id,
            reason=reason,
            status=status,
            retry_after=retry_after,
        )
    if 300 <= status < 400:
        reason += f"; it redirects to {location!r}: configure that URL instead"
    return PermanentDeliveryError(
        channel_id=channel_id, notice_id=notice_id, reason=reason, status=status
    )
