"""Email delivery against a real aiosmtpd server on 127.0.0.1: plain, STARTTLS, implicit TLS, AUTH."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from conftest_notifiers import TIKTOK_AFTER, alert, self_signed_cert, weekly_digest

from notifiers.base import Channel
from notifiers.email import EmailChannel, message_id
from notifiers.errors import PermanentDeliveryError, TransientDeliveryError

SENDER = "clausewatch@legal.example"
RECIPIENTS = ("dpo@legal.example", "counsel@legal.example")


class Mailbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self, rcpt_reply: Callable[[str], str | None] | None = None) -> None:
        self.envelopes: list[Envelope] = []
        self.rcpt_reply = rcpt_reply

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_reply(address) if self.rcpt_reply else None
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted"

    def messages(self) -> list[EmailMessage]:
        """The accepted messages, parsed."""
        return [
            email.message_from_bytes(e.original_content or b"", policy=email.policy.default)  # type: ignore[misc]
            for e in self.envelopes
        ]


def _authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (b"clausewatch", b"correct horse")
    return AuthResult(success=ok, handled=False)


async def _serve(
    mailbox: Mailbox, *, ssl_context: ssl.SSLContext | None = None, **smtp: Any
) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(mailbox, hostname="127.0.0.1", loop=loop, **smtp),
        "127.0.0.1",
        0,
        ssl=ssl_context,
    )
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    cert, key = self_signed_cert(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert


@pytest.fixture
async def plain_server() -> AsyncIterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    server, port = await _serve(mailbox)
    async with server:
        yield mailbox, port


def _channel(port: int, **settings: Any) -> EmailChannel:
    defaults: dict[str, Any] = {
        "id": "legal-mail",
        "host": "127.0.0.1",
        "port": port,
        "sender": SENDER,
        "recipients": RECIPIENTS,
        "tls": "none",
        "timeout": 5.0,
    }
    return EmailChannel(**{**defaults, **settings})


async def test_plain_smtp_delivers_multipart_alternative(
    plain_server: tuple[Mailbox, int],
) -> None:
    mailbox, port = plain_server
    await _channel(port).send(alert())

    [envelope] = mailbox.envelopes
    assert envelope.mail_from == SENDER
    assert envelope.rcpt_tos == list(RECIPIENTS)
    [msg] = mailbox.messages()
    assert msg["Subject"] == "TikTok Privacy Policy: 3 clauses changed"
    assert msg["Message-ID"] == "<ntc_01JH8ZQ4@clausewatch>"
    assert msg["From"] == SENDER
    assert msg["To"] == "dpo@legal.example, counsel@legal.example"
    assert msg["Date"] == "Sun, 05 Jan 2025 12:01:00 +0000"
    assert "legal-team" in msg["List-Id"] and "legal-team" in msg["List-Unsubscribe"]
    assert msg["List-Unsubscribe"].strip().startswith("<mailto:clausewatch@legal.example?subject=")
    assert msg.get_content_type() == "multipart/alternative"

    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    text_body, html_body = text.get_content(), html.get_content()
    assert "{+AI interactions, including prompts" in text_body
    assert "[-We do not sell your personal information to advertisers.-]" in text_body
    assert "<del " in html_body and "<ins " in html_body
    assert "<script>" not in html_body
    assert "&lt;script&gt;" in html_body
    assert TIKTOK_AFTER.removesuffix(".") in html_body
    assert "You receive this because of subscription legal-team" in html_body


async def test_a_retry_sends_the_same_message_id(plain_server: tuple[Mailbox, int]) -> None:
    mailbox, port = plain_server
    channel = _channel(port)
    await channel.send(weekly_digest())
    await channel.send(weekly_digest())
    ids = [m["Message-ID"] for m in mailbox.messages()]
    assert ids == ["<dig_2025w02@clausewatch>"] * 2
    assert mailbox.messages()[0]["Subject"] == "clausewatch weekly digest: 5 changes in 2 documents"


def test_message_id_stays_valid_for_odd_notice_ids() -> None:
    assert message_id("sub legal/team@2025<x>") == "<sub-legal/team-2025-x-@clausewatch>"
    assert message_id("a..b") == "<a.b@clausewatch>"


async def test_starttls_with_a_pinned_self_signed_cert(
    tls: tuple[ssl.SSLContext, Path],
) -> None:
    context, cert = tls
    mailbox = Mailbox()
    server, port = await _serve(mailbox, tls_context=context, require_starttls=True)
    async with server:
        await _channel(port, tls="starttls", cert_bundle=str(cert)).send(alert())
    assert len(mailbox.envelopes) == 1
    assert mailbox.messages()[0]["Message-ID"] == "<ntc_01JH8ZQ4@clausewatch>"


async def test_starttls_refuses_an_unknown_cert_unless_told_not_to_check(
    tls: tuple[ssl.SSLContext, Path],
) -> None:
    context, _ = tls
    mailbox = Mailbox()
    server, port = await _serve(mailbox, tls_context=context, require_starttls=True)
    async with server:
        with pytest.raises(PermanentDeliveryError, match="legal-mail"):
            await _channel(port, tls="starttls").send(alert())
        assert mailbox.envelopes == []
        await _channel(port, tls="starttls", validate_certs=False).send(alert())
    assert len(mailbox.envelopes) == 1


async def test_implicit_tls(tls: tuple[ssl.SSLContext, Path]) -> None:
    context, cert = tls
    mailbox = Mailbox()
    server, port = await _serve(mailbox, ssl_context=context)
    async with server:
        await _channel(port, tls="implicit", cert_bundle=str(cert)).send(alert())
    assert len(mailbox.envelopes) == 1


async def test_auth_over_starttls(tls: tuple[ssl.SSLContext, Path]) -> None:
    context, cert = tls
    mailbox = Mailbox()
    server, port = await _serve(
        mailbox, tls_context=context, authenticator=_authenticator, auth_required=True
    )
    async with server:
        await _channel(
            port,
            tls="starttls",
            cert_bundle=str(cert),
            username="clausewatch",
            password="correct horse",
        ).send(alert())
    assert len(mailbox.envelopes) == 1


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_rejected_login_is_permanent_and_keeps_the_password_secret() -> None:
    mailbox = Mailbox()
    server, port = await _serve(
        mailbox, authenticator=_authenticator, auth_required=True, auth_require_tls=False
    )
    channel = _channel(port, username="clausewatch", password="wrong battery")
    async with server:
        with pytest.raises(PermanentDeliveryError) as caught:
            await channel.send(alert())
    assert caught.value.status == 535
    assert "'clausewatch'" in str(caught.value)
    assert "wrong battery" not in str(caught.value) and "wrong battery" not in repr(channel)
    assert mailbox.envelopes == []


async def test_implicit_tls_against_a_plain_port_is_permanent(
    plain_server: tuple[Mailbox, int],
) -> None:
    mailbox, port = plain_server
    with pytest.raises(PermanentDeliveryError, match="must match the port"):
        await _channel(port, tls="implicit", validate_certs=False).send(alert())
    assert mailbox.envelopes == []


async def test_server_down_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransientDeliveryError) as caught:
        await _channel(port).send(alert())
    assert f"127.0.0.1:{port}" in str(caught.value)


async def test_a_server_that_never_greets_is_transient() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(TransientDeliveryError):
            await _channel(port, timeout=0.3).send(alert())


async def test_mailbox_full_4xx_is_transient_and_unknown_user_5xx_permanent() -> None:
    busy = Mailbox(rcpt_reply=lambda address: "452 4.2.2 Mailbox full")
    server, port = await _serve(busy)
    async with server:
        with pytest.raises(TransientDeliveryError) as transient:
            await _channel(port).send(alert())
    assert transient.value.status == 452

    unknown = Mailbox(
        rcpt_reply=lambda a: "550 5.1.1 No such user" if a.startswith("counsel") else None
    )
    server, port = await _serve(unknown)
    async with server:
        with pytest.raises(PermanentDeliveryError, match="counsel@legal.example"):
            await _channel(port).send(alert())
    # The other recipient still got it: the error says so rather than hiding it.
    assert unknown.envelopes[0].rcpt_tos == ["dpo@legal.example"]


def test_channel_settings_are_checked_and_fit_the_protocol() -> None:
    channel = _channel(25)
    assert isinstance(channel, Channel) and channel.type == "email"
    assert channel.recipients == RECIPIENTS
    with pytest.raises(ValueError, match="tls"):
        _channel(25, tls="ssl")
    with pytest.raises(ValueError, match="username and password"):
        _channel(25, username="clausewatch")
