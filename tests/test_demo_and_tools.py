"""The README's first command (the demo), import-ota, config check, reload and JSON logs."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from config.settings import parse_settings
from daemon.cli import main
from daemon.logs import JsonFormatter

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "data" / "corpus" / "replay"


@pytest.mark.slow
def test_the_demo_replays_tiktok_and_shows_the_ai_clause(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "demo", "--interval", "0.3",
         "--data-dir", str(tmp_path / "demo")],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    # 11 versions, each served twice: 22 polls, and every noise-only re-serve is silent.
    polls = [line for line in out.splitlines() if line.startswith("poll ")]
    assert len(polls) == 22
    assert all(line.endswith("→ unchanged") for line in polls if "noise-only" in line)
    assert "baseline recorded" in polls[0]
    assert "★ added" in out and "AI interactions, including prompts" in out
    assert "the day the AI-interactions clause appeared" in out
    ai_line = next(line for line in out.splitlines() if "the day the AI" in line)
    assert "2026-01-23" in ai_line  # version 5, as Open Terms Archive recorded it
    assert "changes 0, stable" in out
    assert "Open Terms Archive" in out
    # The store it leaves behind answers the commands it printed.
    config = tmp_path / "demo" / "clausewatch.toml"
    assert main(["verify", "-c", str(config)]) == 0


def test_import_ota_turns_declarations_into_documents(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    declarations = tmp_path / "declarations"
    declarations.mkdir()
    # An Open Terms Archive service file, as the collections write them.
    (declarations / "TikTok.json").write_text(json.dumps({
        "name": "TikTok",
        "terms": {
            "Privacy Policy": {"fetch": "https://www.tiktok.com/legal/privacy-policy-us",
                               "select": ["main"], "remove": [".cookie-banner"]},
            "Terms of Service": {"combine": [
                {"fetch": "https://www.tiktok.com/legal/terms-a", "select": "article"},
                {"fetch": "https://www.tiktok.com/legal/terms-b", "select": "article"}]},
        },
    }))
    # And the corpus's single-document declarations, range selectors included.
    for name in ("llama-api-aup", "buffer-privacy"):
        shutil.copy(CORPUS / name / "declaration.json", declarations / f"{name}.json")
    assert main(["import-ota", str(declarations)]) == 0
    text = capsys.readouterr().out
    settings = parse_settings(tomllib.loads(text), path=tmp_path / "imported.toml")
    by_id = {d.id: d for d in settings.documents}
    assert set(by_id) == {"tiktok/privacy-policy", "tiktok/terms-of-service-1",
                          "tiktok/terms-of-service-2", "llama-api/acceptable-use-policy",
                          "buffer/privacy-policy"}
    assert by_id["tiktok/privacy-policy"].remove == [".cookie-banner"]
    assert by_id["llama-api/acceptable-use-policy"].select == {
        "startAfter": "h1", "endAfter": "#end-of-content"}
    assert len(by_id["buffer/privacy-policy"].select) == 5  # type: ignore[arg-type]


def test_import_ota_names_a_broken_declaration(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "Broken.json").write_text("{ not json")
    assert main(["import-ota", str(tmp_path)]) == 2
    assert "Broken.json" in capsys.readouterr().err


def test_config_check_explains_a_good_config_and_names_the_key_of_a_bad_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "-c", str(REPO / "clausewatch.example.toml")]) == 0
    out = capsys.readouterr().out
    assert "tiktok/privacy-policy-us" in out and "documents: 2" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[documents]]\nid = "a/b"\nplatform = "A"\ntitle = "T"\n'
                   'url = "https://example.org"\ninterval = "often"\n')
    assert main(["config", "check", "-c", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "documents[0] (a/b).interval" in err and "fix:" in err


def test_reload_without_a_running_daemon_says_how_to_start_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "clausewatch.toml"
    config.write_text('[[documents]]\nid = "a/b"\nplatform = "A"\ntitle = "T"\n'
                      'url = "https://example.org"\n')
    assert main(["reload", "-c", str(config)]) == 1
    assert "clausewatch run" in capsys.readouterr().err


def test_json_logs_carry_the_document_and_escape_page_text() -> None:
    record = logging.LogRecord("clausewatch.poll", logging.INFO, __file__, 1,
                               'suspect: "<script>" page', None, None)
    record.document = "acme/policy"
    line = JsonFormatter().format(record)
    parsed = json.loads(line)
    assert parsed["document"] == "acme/policy" and parsed["level"] == "info"
    assert parsed["msg"] == 'suspect: "<script>" page'
    assert "\n" not in line
