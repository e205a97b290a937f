"""Delivering notices to a Slack incoming webhook as Block Kit messages."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import aiohttp

from notifiers.http_delivery import post_json
from notifiers.notice import Notice
from notifiers.render import slack_payload


@dataclass(frozen=True, slots=True, kw_only=True)
class SlackChannel:
    """A Slack incoming webhook; its URL is a secret and never appears in errors or repr."""

    id: str
    webhook_url: str = field(repr=False)
    session: aiohttp.ClientSession = field(repr=False, compare=False)
    timeout: float = 10.0

    @property
    def type(self) -> str:
        """Always "slack"."""
        return "slack"

    async def send(self, notice: Notice) -> None:
        """POST the notice; raise TransientDeliveryError, PermanentDeliveryError or ChannelGoneError."""
        body = json.dumps(slack_payload(notice), ensure_ascii=False).encode()
        await post_json(
            session=self.session,
            url=self.webhook_url,
            body=body,
            headers={},
            timeout=self.timeout,
            channel_id=self.id,
            notice_id=notice.id,
            secret_path=True,
        )
