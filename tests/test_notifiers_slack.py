"""Slack incoming webhooks against a real aiohttp receiver on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from conftest_notifiers import TIKTOK_AFTER, Receiver, Reply, alert, tiktok_document

from notifiers.errors import ChannelGoneError, PermanentDeliveryError, TransientDeliveryError
from notifiers.notice import ClauseNotice
from notifiers.render import SLACK_MAX_BLOCKS, SLACK_MAX_SECTION_TEXT
from notifiers.slack import SlackChannel

SECRET_PATH = "/services/T0001/B0001/XXXXsecretXXXX"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _channel(session: aiohttp.ClientSession, url: str, timeout: float = 5.0) -> SlackChannel:
    return SlackChannel(
        id="legal-slack", webhook_url=url + SECRET_PATH, session=session, timeout=timeout
    )


async def test_posts_block_kit_json_with_fallback_text(session: aiohttp.ClientSession) -> None:
    async with Receiver() as receiver:
        await _channel(session, receiver.url).send(alert())
    [request] = receiver.received
    assert request.path == SECRET_PATH
    payload = json.loads(request.body)
    assert payload["text"].startswith("TikTok Privacy Policy: 3 clauses changed")
    assert payload["blocks"][0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "TikTok Privacy Policy: 3 clauses changed"},
    }
    assert any("&lt;script&gt;" in b.get("text", {}).get("text", "") for b in payload["blocks"])


async def test_a_20000_char_clause_stays_within_slack_limits(
    session: aiohttp.ClientSession,
) -> None:
    huge = " ".join([TIKTOK_AFTER] * 125)
    assert len(huge) >= 20_000
    change = ClauseNotice(
        clause_id="tiktok-pp/collect/ai-interactions",
        kind="added",
        section=("What Information We Collect", "Information You Provide"),
        before=None,
        after=huge,
    )
    async with Receiver() as receiver:
        await _channel(session, receiver.url).send(alert(document=tiktok_document((change,))))
    payload = json.loads(receiver.received[0].body)
    assert payload["text"]
    assert len(payload["blocks"]) <= SLACK_MAX_BLOCKS
    sections = [b["text"]["text"] for b in payload["blocks"] if b["type"] == "section"]
    assert all(len(t) <= SLACK_MAX_SECTION_TEXT for t in sections)
    clause = sections[-1]
    assert "diff truncated" in clause
    assert "http://127.0.0.1:8080/documents/tiktok-privacy-us/changes/42|read the full change" in (
        clause
    )


async def test_429_is_transient_with_retry_after(session: aiohttp.ClientSession) -> None:
    async with Receiver(Reply(status=429, headers={"Retry-After": "7"})) as receiver:
        with pytest.raises(TransientDeliveryError) as caught:
            await _channel(session, receiver.url).send(alert())
    assert caught.value.retry_after == 7


async def test_500_is_transient(session: aiohttp.ClientSession) -> None:
    async with Receiver(Reply(status=500)) as receiver:
        with pytest.raises(TransientDeliveryError):
            await _channel(session, receiver.url).send(alert())


async def test_404_channel_not_found_is_permanent_and_hides_the_secret_url(
    session: aiohttp.ClientSession,
) -> None:
    async with Receiver(Reply(status=404, body="channel_not_found")) as receiver:
        with pytest.raises(PermanentDeliveryError) as caught:
            await _channel(session, receiver.url).send(alert())
    message = str(caught.value)
    assert "channel_not_found" in message and "legal-slack" in message
    assert "XXXXsecretXXXX" not in message
    assert "XXXXsecretXXXX" not in repr(_channel(session, receiver.url))


async def test_410_archived_channel_is_gone(session: aiohttp.ClientSession) -> None:
    async with Receiver(Reply(status=410, body="channel_is_archived")) as receiver:
        with pytest.raises(ChannelGoneError):
            await _channel(session, receiver.url).send(alert())


async def test_a_hanging_slack_is_transient(session: aiohttp.ClientSession) -> None:
    async with Receiver(Reply(delay=3.0)) as receiver:
        with pytest.raises(TransientDeliveryError):
            await _channel(session, receiver.url, timeout=0.3).send(alert())
