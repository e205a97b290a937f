"""Signed webhooks against a real aiohttp receiver on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest
from conftest_notifiers import TIKTOK_AFTER, Receiver, Reply, alert
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from notifiers.base import Channel
from notifiers.errors import (
    ChannelGoneError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from notifiers.http_delivery import parse_retry_after
from notifiers.webhook import WebhookChannel, sign

SECRET = "whsec_" + base64.b64encode(b"clausewatch-test-signing-key-32b").decode()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _channel(session: aiohttp.ClientSession, url: str, timeout: float = 5.0) -> WebhookChannel:
    return WebhookChannel(
        id="legal-hook",
        url=f"{url}/hooks/clausewatch",
        secret=SECRET,
        session=session,
        timeout=timeout,
    )


async def test_delivers_a_body_the_standard_webhooks_library_verifies(
    session: aiohttp.ClientSession,
) -> None:
    async with Receiver() as receiver:
        channel = _channel(session, receiver.url)
        await channel.send(alert())

    [request] = receiver.received
    assert request.path == "/hooks/clausewatch"
    assert request.headers["webhook-id"] == "ntc_01JH8ZQ4"
    assert request.headers["Content-Type"] == "application/json"
    payload = Webhook(SECRET).verify(request.body, request.headers)
    assert payload["type"] == "clause.changes"
    assert payload["version"] == 1
    assert payload["id"] == "ntc_01JH8ZQ4"
    assert payload["documents"][0]["changes"][0]["after"] == TIKTOK_AFTER


async def test_signature_fails_verification_with_another_secret(
    session: aiohttp.ClientSession,
) -> None:
    async with Receiver() as receiver:
        await _channel(session, receiver.url).send(alert())
    other = "whsec_" + base64.b64encode(b"some-other-secret-of-32-bytes!!!").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(receiver.received[0].body, receiver.received[0].headers)
    # And a tampered body fails with the right secret.
    tampered = receiver.received[0].body.replace(b"legal-team", b"other-team")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, receiver.received[0].headers)


def test_signature_matches_the_reference_implementation() -> None:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    body = json.dumps({"type": "test", "note": "prompts, questions, files"}).encode()
    expected = Webhook(SECRET).sign("msg_1", datetime.fromtimestamp(1736078400, UTC), body.decode())
    assert sign(key, "msg_1", 1736078400, body) == expected


async def test_retries_reuse_the_notice_id_as_webhook_id(session: aiohttp.ClientSession) -> None:
    async with Receiver(Reply(status=503), Reply(status=200)) as receiver:
        channel = _channel(session, receiver.url)
        with pytest.raises(TransientDeliveryError):
            await channel.send(alert())
        await channel.send(alert())
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert ids == ["ntc_01JH8ZQ4", "ntc_01JH8ZQ4"]


async def test_503_is_transient(session: aiohttp.ClientSession) -> None:
    async with Receiver(Reply(status=503, body="maintenance")) as receiver:
        with pytest.raises(TransientDeliveryError) as caught:
            await _channel(session, receiver.url).send(alert())
    assert caught.value.status == 503
    assert caught.value.retry_after is None
    assert "legal-hook" in str(caught.value) and "ntc_01JH8ZQ4" in str(caught.value)
    assert "maintenance" in str(caught.value)


async def test_429_carries_retry_after_seconds(session: aiohttp.ClientSession) -> None:
    async with Receiver(Reply(status=429, headers={"Retry-After": "7"})) as receiver:
        with pytest.raises(TransientDeliveryError) as caught:
            await _channel(session, receiver.url).send(alert())
    assert caught.value.retry_after == 7
    assert caught.value.status == 429


async def test_503_with_an_http_date_retry_after(session: aiohttp.ClientSession) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    async with Receiver(Reply(status=503, headers={"Retry-After": later})) as receiver:
        with pytest.raises(TransientDeliveryError) as caught:
            await _channel(session, receiver.url).send(alert())
    assert caught.value.retry_after is not None
    assert 100 < caught.value.retry_after <= 120


def test_retry_after_parsing() -> None:
    now = datetime(2025, 1, 5, 12, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7
    assert parse_retry_after("Sun, 05 Jan 2025 12:01:30 GMT", now) == 90
    assert parse_retry_after("Sun, 05 Jan 2025 11:00:00 GMT", now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None
    assert parse_retry_after(None, now) is None


async def test_410_means_the_channel_is_gone(session: aiohttp.ClientSession) -> None:
    async with Receiver(Reply(status=410)) as receiver:
        with pytest.raises(ChannelGoneError) as caught:
            await _channel(session, receiver.url).send(alert())
    assert isinstance(caught.value, PermanentDeliveryError)
    assert "disable the channel" in str(caught.value)


async def test_400_is_permanent(session: aiohttp.ClientSession) -> None:
    async with Receiver(Reply(status=400, body="unknown event type")) as receiver:
        with pytest.raises(PermanentDeliveryError) as caught:
            await _channel(session, receiver.url).send(alert())
    assert not isinstance(caught.value, ChannelGoneError)
    assert caught.value.status == 400


async def test_a_redirect_is_permanent_and_names_the_new_url(
    session: aiohttp.ClientSession,
) -> None:
    moved = Reply(status=308, headers={"Location": "https://hooks.example/v2"})
    async with Receiver(moved) as receiver:
        with pytest.raises(PermanentDeliveryError, match="hooks.example/v2"):
            await _channel(session, receiver.url).send(alert())
    assert len(receiver.received) == 1


async def test_a_receiver_slower_than_the_timeout_is_transient(
    session: aiohttp.ClientSession,
) -> None:
    async with Receiver(Reply(delay=3.0)) as receiver:
        with pytest.raises(TransientDeliveryError, match=r"no answer within 0\.3s"):
            await _channel(session, receiver.url, timeout=0.3).send(alert())


async def test_a_receiver_that_is_down_is_transient(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransientDeliveryError, match="ClientConnectorError"):
        await _channel(session, f"http://127.0.0.1:{port}").send(alert())


def test_rejects_a_secret_that_is_not_base64(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        WebhookChannel(id="h", url="http://127.0.0.1/", secret="whsec_not base64!", session=session)


def test_the_secret_stays_out_of_repr_and_the_channel_fits_the_protocol(
    session: aiohttp.ClientSession,
) -> None:
    channel = _channel(session, "http://127.0.0.1:1")
    assert SECRET.removeprefix("whsec_") not in repr(channel)
    assert isinstance(channel, Channel)
    assert channel.type == "webhook"
    assert issubclass(TransientDeliveryError, DeliveryError)
