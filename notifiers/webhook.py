"""Delivering notices as signed JSON webhooks (Standard Webhooks: webhook-id/-timestamp/-signature)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from notifiers.http_delivery import post_json
from notifiers.notice import Notice
from notifiers.render import webhook_payload

SECRET_PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """The signing key inside a "whsec_<base64>" secret."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "webhook secret is not valid base64 after the whsec_ prefix;"
            ' generate one with: python -c "import base64,os;'
            " print('whsec_'+base64.b64encode(os.urandom(32)).decode())\""
        ) from None
    if len(key) < 16:
        raise ValueError(
            f"webhook secret decodes to {len(key)} bytes; use at least 16 (24-64 is usual)"
        )
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature value: "v1,<base64 HMAC-SHA256 of id.timestamp.body>"."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookChannel:
    """A receiver URL that gets each notice as signed, versioned JSON."""

    id: str
    url: str
    secret: str = field(repr=False)
    session: aiohttp.ClientSession = field(repr=False, compare=False)
    timeout: float = 10.0
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)
    _key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key", decode_secret(self.secret))

    @property
    def type(self) -> str:
        """Always "webhook"."""
        return "webhook"

    def request(self, notice: Notice) -> tuple[bytes, dict[str, str]]:
        """The exact body bytes and signature headers this channel would send."""
        body = json.dumps(webhook_payload(notice), ensure_ascii=False, separators=(",", ":"))
        raw = body.encode()
        timestamp = int(self.clock())
        headers = {
            "webhook-id": notice.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, notice.id, timestamp, raw),
        }
        return raw, headers

    async def send(self, notice: Notice) -> None:
        """POST the notice; raise TransientDeliveryError, PermanentDeliveryError or ChannelGoneError."""
        body, headers = self.request(notice)
        await post_json(
            session=self.session,
            url=self.url,
            body=body,
            headers=headers,
            timeout=self.timeout,
            channel_id=self.id,
            notice_id=notice.id,
        )
