"""Shared pieces for the notifiers tests: corpus-like notices, a recording HTTP receiver, certs."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

from aiohttp import web

from notifiers.notice import ClauseNotice, DocumentNotice, Notice

CAPTURED = datetime(2025, 1, 5, 12, 0, tzinfo=UTC)

TIKTOK_BEFORE = (
    "Information you provide when you use our AI features, such as prompts and the files "
    "you upload."
)
TIKTOK_AFTER = (
    "AI interactions, including prompts, questions, files, and other types of information "
    "that you submit to our AI-powered interfaces, as well as the responses they generate."
)
TIKTOK_SCRIPT = "We may contact you <script>alert('owned')</script> about these features & more."


def tiktok_changes() -> tuple[ClauseNotice, ...]:
    """Three clause changes from a TikTok privacy policy revision."""
    return (
        ClauseNotice(
            clause_id="tiktok-pp/collect/ai-interactions",
            kind="modified",
            section=("What Information We Collect", "Information You Provide"),
            before=TIKTOK_BEFORE,
            after=TIKTOK_AFTER,
            categories=("ai", "data-collection"),
            severity="high",
        ),
        ClauseNotice(
            clause_id="tiktok-pp/use/contact",
            kind="added",
            section=("How We Use Your Information",),
            before=None,
            after=TIKTOK_SCRIPT,
        ),
        ClauseNotice(
            clause_id="tiktok-pp/share/advertisers",
            kind="removed",
            section=("How We Share Your Information", "Advertisers"),
            before="We do not sell your personal information to advertisers.",
            after=None,
            severity="critical",
        ),
    )


def tiktok_document(
    changes: tuple[ClauseNotice, ...] | None = None, *, document_id: str = "tiktok-privacy-us"
) -> DocumentNotice:
    """The TikTok US privacy policy with the given (default: three) changes."""
    return DocumentNotice(
        document_id=document_id,
        platform="TikTok",
        title="Privacy Policy",
        url="https://www.tiktok.com/legal/page/us/privacy-policy/en",
        captured_at=CAPTURED,
        sha256="3f2a" + "0" * 60,
        evidence_url="http://127.0.0.1:8080/evidence/3f2a000000000000",
        document_link=f"http://127.0.0.1:8080/documents/{document_id}/changes/42",
        changes=tiktok_changes() if changes is None else changes,
    )


def alert(
    *, notice_id: str = "ntc_01JH8ZQ4", document: DocumentNotice | None = None, **extra: object
) -> Notice:
    """An alert for the legal-team subscription."""
    return Notice(
        id=notice_id,
        subscription_id="legal-team",
        kind="alert",
        created_at=CAPTURED + timedelta(minutes=1),
        documents=(document or tiktok_document(),),
        **extra,  # type: ignore[arg-type]
    )


def weekly_digest() -> Notice:
    """A weekly digest over two documents and five changes."""
    meta = DocumentNotice(
        document_id="meta-privacy",
        platform="Meta",
        title="Meta Privacy Policy",
        url="https://www.facebook.com/privacy/policy/",
        captured_at=CAPTURED - timedelta(days=2),
        sha256="9c" * 32,
        changes=(
            ClauseNotice(
                clause_id="meta-pp/ai",
                kind="modified",
                section=("How do we use your information?",),
                before="We use information to develop and improve our Products.",
                after="We use information, including your interactions with AI at Meta, to "
                "develop and improve our Products.",
            ),
            ClauseNotice(
                clause_id="meta-pp/retention",
                kind="moved",
                section=("How long do we keep your information?",),
                before="We keep information as long as we need it to provide our Products.",
                after="We keep information as long as we need it to provide our Products.",
            ),
        ),
    )
    return Notice(
        id="dig_2025w02",
        subscription_id="legal-team",
        kind="digest",
        created_at=CAPTURED + timedelta(days=3),
        documents=(tiktok_document(), meta),
        window_start=CAPTURED - timedelta(days=4),
        window_end=CAPTURED + timedelta(days=3),
    )


# --- an HTTP receiver on 127.0.0.1 --------------------------------------------------------


@dataclass
class Reply:
    """What the receiver answers to one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = "ok"
    delay: float = 0.0


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A real aiohttp server on a free port that records requests and answers as scripted."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.received: list[Received] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(
            Received(path=request.path, headers=dict(request.headers), body=await request.read())
        )
        reply = self.replies.pop(0) if self.replies else Reply()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return web.Response(status=reply.status, headers=reply.headers, text=reply.body)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


# --- TLS ----------------------------------------------------------------------------------


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A fresh self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
