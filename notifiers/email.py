"""Delivering notices by SMTP as multipart/alternative mail (plain text and HTML)."""

from __future__ import annotations

import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Literal
from urllib.parse import quote

import aiosmtplib

from notifiers.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from notifiers.notice import Notice
from notifiers.render import render_html, render_text, safe_url, subject

TlsMode = Literal["none", "starttls", "implicit"]
_TLS_MODES = frozenset({"none", "starttls", "implicit"})
_NOT_ATOM = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")


def message_id(notice_id: str) -> str:
    """The Message-ID for a notice: the same on every retry, so receivers can drop duplicates."""
    left = ".".join(p for p in (_NOT_ATOM.sub("-", part) for part in notice_id.split(".")) if p)
    return f"<{left or 'notice'}@clausewatch>"


def list_id(subscription_id: str) -> str:
    """The List-Id header naming the subscription (RFC 2919)."""
    label = _NOT_LABEL.sub("-", subscription_id.lower()).strip("-") or "subscription"
    name = " ".join(subscription_id.split()).replace('"', "'")
    return f'"clausewatch subscription {name}" <{label}.subscriptions.clausewatch>'


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailChannel:
    """An SMTP relay and the addresses that get each notice."""

    id: str
    host: str
    port: int
    sender: str
    recipients: Sequence[str]
    tls: TlsMode = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    validate_certs: bool = True
    cert_bundle: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "recipients", tuple(self.recipients))
        if self.tls not in _TLS_MODES:
            raise ValueError(
                f"email channel {self.id}: tls must be none, starttls or implicit, got {self.tls!r}"
            )
        if not self.recipients:
            raise ValueError(f"email channel {self.id}: give at least one recipient")
        if (self.username is None) != (self.password is None):
            raise ValueError(
                f"email channel {self.id}: give both username and password, or neither"
            )

    @property
    def type(self) -> str:
        """Always "email"."""
        return "email"

    def build_message(self, notice: Notice) -> EmailMessage:
        """The full message for a notice: headers, a text part and an HTML part."""
        msg = EmailMessage()
        msg["Subject"] = subject(notice)
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Date"] = format_datetime(notice.created_at)
        msg["Message-ID"] = message_id(notice.id)
        msg["List-Id"] = list_id(notice.subscription_id)
        msg["List-Unsubscribe"] = self._list_unsubscribe(notice)
        # RFC 3834: keep vacation responders from answering.
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Clausewatch-Notice"] = notice.id
        msg["X-Clausewatch-Subscription"] = notice.subscription_id
        msg.set_content(render_text(notice))
        msg.add_alternative(render_html(notice), subtype="html")
        return msg

    def _list_unsubscribe(self, notice: Notice) -> str:
        mailto = f"<mailto:{self.sender}?subject={quote('unsubscribe ' + notice.subscription_id)}>"
        url = safe_url(notice.unsubscribe_url)
        return f"<{url}>, {mailto}" if url else mailto

    async def send(self, notice: Notice) -> None:
        """Send the notice; raise TransientDeliveryError (retry) or PermanentDeliveryError."""
        message = self.build_message(notice)
        try:
            refused, _ = await aiosmtplib.send(
                message,
                sender=self.sender,
                recipients=list(self.recipients),
                hostname=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                timeout=self.timeout,
                use_tls=self.tls == "implicit",
                start_tls=self.tls == "starttls",
                validate_certs=self.validate_certs,
                cert_bundle=self.cert_bundle,
            )
        except aiosmtplib.SMTPException as exc:
            raise self._smtp_error(notice, exc) from None
        except ssl.SSLError as exc:
            raise PermanentDeliveryError(
                channel_id=self.id, notice_id=notice.id, reason=self._tls_reason(str(exc))
            ) from None
        except OSError as exc:
            raise TransientDeliveryError(
                channel_id=self.id,
                notice_id=notice.id,
                reason=f"cannot reach {self._where}: {exc}",
            ) from None
        if refused:
            codes = {addr: response.code for addr, response in refused.items()}
            listed = ", ".join(f"{addr} ({code})" for addr, code in sorted(codes.items()))
            reason = (
                f"{self._where} accepted {len(self.recipients) - len(refused)} of "
                f"{len(self.recipients)} recipients; refused {listed}"
            )
            error = (
                TransientDeliveryError
                if all(400 <= c < 500 for c in codes.values())
                else (PermanentDeliveryError)
            )
            raise error(channel_id=self.id, notice_id=notice.id, reason=reason)

    def _tls_reason(self, detail: str) -> str:
        return (
            f"TLS with {self._where} failed: {detail}; check tls (none, starttls or implicit"
            " must match the port), validate_certs and cert_bundle"
        )

    @property
    def _where(self) -> str:
        return f"SMTP server {self.host}:{self.port}"

    def _smtp_error(self, notice: Notice, exc: aiosmtplib.SMTPException) -> DeliveryError:
        def transient(reason: str, status: int | None = None) -> DeliveryError:
            return TransientDeliveryError(
                channel_id=self.id, notice_id=notice.id, reason=reason, status=status
            )

        def permanent(reason: str, status: int | None = None) -> DeliveryError:
            return PermanentDeliveryError(
                channel_id=self.id, notice_id=notice.id, reason=reason, status=status
            )

        detail = " ".join(str(exc).split())
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            codes = [r.code for r in exc.recipients]
            refused = ", ".join(f"{r.recipient} ({r.code} {r.message})" for r in exc.recipients)
            reason = f"{self._where} refused every recipient: {refused}"
            if codes and all(400 <= c < 500 for c in codes):
                return transient(reason, codes[0])
            return permanent(reason, max(codes, default=None))
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            code = exc.code
            said = " ".join(exc.message.split())
            if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
                reason = f"{self._where} rejected the login of {self.username!r}: {code} {said}"
            else:
                reason = f"{self._where} answered {code} {said}"
            if 500 <= code < 600:
                return permanent(reason, code)
            return transient(reason, code if code > 0 else None)
        if isinstance(exc, aiosmtplib.SMTPNotSupported):
            return permanent(
                f"{self._where} does not support what the channel asks for: {detail}"
                " (check tls and the login settings)"
            )
        if isinstance(exc.__cause__ or exc.__context__, ssl.SSLError):
            return permanent(self._tls_reason(detail))
        if isinstance(exc, aiosmtplib.SMTPTimeoutError):
            return transient(f"{self._where} did not answer within {self.timeout:g}s: {detail}")
        return transient(f"{self._where}: {detail}")
