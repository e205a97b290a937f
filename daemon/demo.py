"""`clausewatch demo`: the whole daemon against real captures replayed on 127.0.0.1, offline."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TextIO

from aiohttp import web
from markdown_it import MarkdownIt

from config.settings import DocumentSettings, load_settings
from daemon.runtime import Daemon
from daemon.service import CheckOutcome

DOCUMENT_ID = "tiktok/privacy-policy-us"
AI_CLAUSE = "AI interactions, including prompts"
ATTRIBUTION = "Contains data from Open Terms Archive (opentermsarchive.org), ODC-By 1.0"


@dataclass(frozen=True, slots=True)
class Version:
    """One recorded version of the demo document."""

    seq: int
    recorded_at: str
    markdown: str


def load_versions() -> list[Version]:
    """The packaged versions of TikTok's US privacy policy, oldest first."""
    folder = resources.files("daemon") / "demo_data" / "tiktok-privacy-us"
    rows = list(csv.DictReader(folder.joinpath("manifest.tsv").read_text().splitlines(),
                               delimiter="\t"))
    return [Version(seq=int(r["seq"]), recorded_at=r["recorded_at"],
                    markdown=gzip.decompress(folder.joinpath(f"{int(r['seq']):03d}.md.gz")
                                             .read_bytes()).decode("utf-8"))
            for r in rows]


class ReplayServer:
    """Serves each version twice: once, then again with fresh rotating markup (noise only)."""

    def __init__(self, versions: list[Version]) -> None:
        self.versions = versions
        self.renderer = MarkdownIt("commonmark").enable("table")
        self.step = 0
        self.served: list[int] = []

    @property
    def finished(self) -> bool:
        """True once every version has been served twice."""
        return self.step >= 2 * len(self.versions)

    def page(self, version: Version) -> str:
        """The version as a page, wrapped in markup that changes on every request."""
        token = secrets.token_hex(8)
        body = self.renderer.render(version.markdown)
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>TikTok Privacy Policy"
            f"</title><meta name='request-id' content='{token}'>"
            f"<script>window.__csrf='{token}';</script><style>.x{token}{{}}</style></head>"
            f"<body><nav><a href='/?t={token}'>Home</a> · Build {token[:6]}</nav>"
            f"<div class='cookie-banner'>We use cookies ({token[:4]}).</div>"
            f"<main>{body}</main><footer>© TikTok · served {token}</footer></body></html>"
        )

    async def handle(self, request: web.Request) -> web.Response:
        index = min(self.step // 2, len(self.versions) - 1)
        self.step += 1
        self.served.append(index)
        return web.Response(text=self.page(self.versions[index]), content_type="text/html")


def _toml_config(data_dir: Path, url: str, interval: str) -> str:
    return "\n".join([
        "# Written by `clausewatch demo`: the daemon watching a local replay of real captures.",
        f"data_dir = {json.dumps(str(data_dir))}",
        "",
        "[scheduler]",
        f"default_interval = {json.dumps(interval)}",
        'jitter = "0s"',
        "workers = 1",
        'drain_timeout = "5s"',
        "",
        "[fetch]",
        'per_host_delay = "0s"',
        "robots = false",
        "",
        "[http]",
        'listen = "127.0.0.1:0"',
        "",
        "[[documents]]",
        f"id = {json.dumps(DOCUMENT_ID)}",
        'platform = "TikTok"',
        'title = "Privacy Policy (US)"',
        f"url = {json.dumps(url)}",
        'select = "main"',
        'remove = [".cookie-banner"]',
        "",
    ])


async def run_demo(*, out: TextIO = sys.stdout, interval: float = 1.0,
                   data_dir: Path | None = None, keep_running: bool = False) -> int:
    """Replay the versions through a real daemon and narrate what it records."""
    versions = load_versions()
    server = ReplayServer(versions)
    app = web.Application()
    app.router.add_get("/legal/privacy-policy-us", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/legal/privacy-policy-us"

    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="clausewatch-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "clausewatch.toml"
    config.write_text(_toml_config(data_dir, url, f"{interval}s"))
    settings = load_settings(config)

    def say(line: str = "") -> None:
        print(line, file=out, flush=True)

    say("clausewatch demo — TikTok's US privacy policy, 11 real versions (2025-09 → 2026-07),")
    say(f"replayed on {url}; each version is served twice, the second time with")
    say("different markup, tokens and scripts but the same text (that must stay silent).")
    say(f"{ATTRIBUTION}.")
    say()
    seen = 0
    finished = asyncio.Event()
    daemon: Daemon | None = None

    async def narrate(doc: DocumentSettings, outcome: CheckOutcome) -> None:
        nonlocal seen
        assert daemon is not None and daemon.service is not None
        version = versions[server.served[-1]] if server.served else versions[0]
        copy = "noise-only re-serve" if len(server.served) % 2 == 0 else "new version"
        say(f"poll {len(server.served):2}: version {version.seq:2} (recorded by OTA "
            f"{version.recorded_at[:10]}, {copy}) → {outcome.describe()}")
        changes = await asyncio.to_thread(daemon.service.changes, after_seq=seen)
        for change in changes:
            seen = max(seen, change["seq"])
            text = change["after"] if change["after"] is not None else change["before"]
            star = "★ " if AI_CLAUSE in (text or "") else "  "
            section = " > ".join(change["section"][-2:])
            say(f"   {star}{change['kind']:8} [{section}] {_short(text or '', 110)}")
            if star.strip() and change["kind"] == "added":
                say("     ↑ the day the AI-interactions clause appeared: "
                    f"OTA recorded this version on {version.recorded_at[:10]}")
        if server.finished:
            finished.set()

    daemon = Daemon(settings, environ={}, on_outcome=narrate, spread_first=False)
    task = asyncio.create_task(daemon.run())
    try:
        waiter = asyncio.create_task(finished.wait())
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED,
                                     timeout=60 + 4 * interval * len(versions))
        if task in done:
            waiter.cancel()
            return task.result()
        say()
        api = f"http://127.0.0.1:{daemon.api_port}"
        ai = await asyncio.to_thread(_find_clause, daemon, AI_CLAUSE)
        if ai is not None:
            say(f"The AI-interactions clause {ai['id']} ({ai['record_id']}): first seen "
                f"{ai['first_seen']}, changes {ai['changes']}, {ai['stability']}.")
        cli = _command()
        say("Ask the daemon while it runs, or the store afterwards:")
        say(f"  curl {api}/api/v1/changes?document={DOCUMENT_ID}")
        say(f"  curl {api}/api/v1/documents/{DOCUMENT_ID}/clauses")
        say(f"  {cli} documents -c {config}")
        say(f"  {cli} changes -c {config} --document {DOCUMENT_ID} --kind added")
        say(f"  {cli} clauses {DOCUMENT_ID} -c {config} --json")
        say(f"  {cli} verify -c {config}")
        if keep_running:
            say("The daemon keeps running (Ctrl-C to stop).")
            return await task
        daemon.stop()
        return await task
    finally:
        if not task.done():
            daemon.stop()
            await asyncio.wait_for(task, 30)
        await runner.cleanup()


def _command() -> str:
    """How to call clausewatch from here: on PATH, or the script beside this Python."""
    if shutil.which("clausewatch"):
        return "clausewatch"
    beside = Path(sys.executable).parent / "clausewatch"
    if beside.exists():
        return os.path.relpath(beside) if not os.path.relpath(beside).startswith("..") \
            else str(beside)
    return f"{sys.executable} -m daemon.cli"


def _find_clause(daemon: Daemon, needle: str) -> dict[str, object] | None:
    assert daemon.service is not None
    for clause in daemon.service.clauses(DOCUMENT_ID):
        if needle in clause["text"]:
            return clause
    return None


def _short(text: str, width: int) -> str:
    # Terminal output: page text is shown as plain text, control characters removed.
    text = "".join(ch for ch in text if ch.isprintable())
    return text if len(text) <= width else text[: width - 1] + "…"


