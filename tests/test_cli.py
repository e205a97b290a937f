"""The `clausewatch` commands, run in-process against a real page server and SQLite store."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from harness import PageServer

CLAUSES = [
    "We collect your name and email address when you register.",
    "We use cookies to keep you signed in.",
    "We share personal data with payment processors.",
    "You may delete your account at any time.",
]
DOCUMENT_KEYS = {"id", "platform", "title", "url", "first_tracked", "last_verified",
                 "last_updated", "captures", "changes", "failures", "status", "last_error",
                 "sha256"}
CLAUSE_KEYS = {"id", "document", "section", "text", "first_seen", "last_seen", "changes",
               "months_monitored", "stability", "status"}
CHANGE_KEYS = {"id", "document", "clause", "kind", "section", "before", "after", "captured_at",
               "sha256"}


def page(clauses: list[str], noise: str = "") -> str:
    items = "".join(f"<li>{c}</li>" for c in clauses)
    return (f"<html><body><nav>{noise}</nav><main><h1>Privacy</h1><h2>Your data</h2>"
            f"<ul>{items}</ul></main></body></html>")


def write_config(tmp_path: Path, server: PageServer, extra: str = "") -> Path:
    config = tmp_path / "clausewatch.toml"
    config.write_text(f"""
data_dir = "data"

[store]
url = "sqlite:///data/events.db"

[fetch]
per_host_delay = 0
retries = 0

[[documents]]
id = "example/privacy"
platform = "Example"
title = "Privacy Policy"
url = "{server.url('/privacy')}"
select = "main"

[[documents]]
id = "example/terms"
platform = "Example"
title = "Terms of Service"
url = "{server.url('/terms')}"
{extra}""")
    return config


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Any:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def config(tmp_path: Path, page_server: PageServer) -> Path:
    page_server.set("/privacy", page(CLAUSES, "build 1"))
    page_server.set("/terms", "<html><body><p>Be nice to each other.</p></body></html>")
    return write_config(tmp_path, page_server)


def test_check_prints_a_line_per_document_and_fails_if_any_failed(
        capsys: pytest.CaptureFixture[str], config: Path, page_server: PageServer) -> None:
    code, out, _ = run(capsys, "check", "-c", config)
    assert code == 0
    assert out.splitlines() == ["example/privacy: baseline recorded (6 clauses)",
                                "example/terms: baseline recorded (1 clause)"]
    # robots.txt is asked for (and missing, so everything is allowed).
    assert page_server.hits("/robots.txt")

    page_server.set("/privacy", page(CLAUSES, "build 2"))
    code, out, _ = run(capsys, "check", "-c", config)
    assert (code, out.splitlines()) == (0, ["example/privacy: unchanged",
                                            "example/terms: unchanged"])

    page_server.set("/privacy", page([*CLAUSES[:3], "You may delete your account at any time; "
                                      "we keep backups for 30 days.", "We sell nothing."]))
    page_server.set("/terms", "gone", status=404)
    code, out, _ = run(capsys, "check", "-c", config)
    assert code == 1
    assert out.splitlines() == ["example/privacy: 2 clause changes",
                                "example/terms: failed: permanent: HTTP 404"]

    page_server.set("/privacy", "<html><body><main><h1>Access denied</h1></main></body></html>")
    page_server.set("/terms", "<html><body><p>Be nice to each other.</p></body></html>")
    code, out, _ = run(capsys, "check", "-c", config, "--document", "example/privacy")
    assert code == 0
    assert out.splitlines() == [
        "example/privacy: suspect: looks like an error or bot-wall page"]


def test_documents_clauses_and_changes_as_json(capsys: pytest.CaptureFixture[str],
                                               config: Path, page_server: PageServer) -> None:
    assert run(capsys, "check", "-c", config)[0] == 0
    page_server.set("/privacy", page([CLAUSES[0], CLAUSES[1].replace("signed in", "signed in "
                                      "and to show ads"), *CLAUSES[2:]]))
    assert run(capsys, "check", "-c", config)[0] == 0

    documents = run_json(capsys, "documents", "-c", config)
    assert [d["id"] for d in documents] == ["example/privacy", "example/terms"]
    for row in documents:
        assert DOCUMENT_KEYS <= set(row), DOCUMENT_KEYS - set(row)
    privacy = documents[0]
    assert (privacy["platform"], privacy["title"], privacy["url"]) == (
        "Example", "Privacy Policy", config.read_text().split('url = "')[2].split('"')[0])
    assert (privacy["captures"], privacy["changes"], privacy["failures"]) == (2, 1, 0)
    assert (privacy["status"], privacy["last_error"]) == ("ok", None)
    assert len(privacy["sha256"]) == 64
    assert privacy["first_tracked"] <= privacy["last_updated"] == privacy["last_verified"]

    clauses = run_json(capsys, "clauses", "example/privacy", "-c", config)
    assert len(clauses) == 6
    for row in clauses:
        assert CLAUSE_KEYS <= set(row), CLAUSE_KEYS - set(row)
    ads = next(c for c in clauses if "show ads" in c["text"])
    assert (ads["document"], ads["section"], ads["changes"], ads["status"]) == (
        "example/privacy", ["Privacy", "Your data"], 1, "present")
    assert (ads["months_monitored"], ads["stability"]) == (0, "stable")

    changes = run_json(capsys, "changes", "-c", config)
    assert len(changes) == 1
    [change] = changes
    assert CHANGE_KEYS <= set(change), CHANGE_KEYS - set(change)
    assert (change["document"], change["clause"], change["kind"]) == (
        "example/privacy", ads["id"], "modified")
    assert (change["before"], change["after"]) == (CLAUSES[1], ads["text"])
    assert change["section"] == ["Privacy", "Your data"]
    assert change["sha256"] == privacy["sha256"]
    assert run_json(capsys, "changes", "-c", config, "--kind", "added") == []

    code, _, err = run(capsys, "clauses", "example/nothing", "-c", config)
    assert code == 1 and "'example/nothing'" in err


def test_verify_then_tamper_then_delete(capsys: pytest.CaptureFixture[str], config: Path,
                                        page_server: PageServer, tmp_path: Path) -> None:
    run(capsys, "check", "-c", config)
    page_server.set("/privacy", page(CLAUSES, "build 2"))
    run(capsys, "check", "-c", config)
    code, out, _ = run(capsys, "verify", "-c", config)
    assert code == 0 and out.strip().endswith("3 stored captures checked, 0 problem(s)")

    evidence = sorted((tmp_path / "data" / "evidence").glob("??/??/*.gz"))
    assert len(evidence) == 3
    tampered, deleted = evidence[0], evidence[1]
    tampered.write_bytes(gzip.compress(b"<p>We never collect anything.</p>"))
    code, out, _ = run(capsys, "verify", "-c", config)
    assert code == 1
    assert f"MISMATCH: {tampered.name[:-3]}" in out
    assert out.strip().endswith("1 problem(s)")

    deleted.unlink()
    code, out, _ = run(capsys, "verify", "-c", config)
    assert code == 1
    assert f"MISSING: {deleted.name[:-3]}" in out and f"MISMATCH: {tampered.name[:-3]}" in out
    problems = run(capsys, "verify", "-c", config, "--json")
    assert {(p["sha256"], p["status"]) for p in json.loads(problems[1])} == {
        (tampered.name[:-3], "mismatch"), (deleted.name[:-3], "missing")}


def test_rebuild_and_gc(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    run(capsys, "check", "-c", config)
    before = run_json(capsys, "documents", "-c", config)
    code, out, _ = run(capsys, "rebuild", "-c", config)
    assert (code, out.strip()) == (0, "rebuilt the views from 4 events")
    assert run_json(capsys, "documents", "-c", config) == before
    code, out, _ = run(capsys, "gc", "-c", config)
    assert (code, out.strip()) == (0, "dropped the bytes of 0 capture(s) that changed nothing")


def test_a_missing_config_exits_2_naming_the_file(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    code, out, err = run(capsys, "check", "-c", missing)
    assert code == 2 and out == ""
    assert str(missing) in err and "does not exist" in err


@pytest.mark.parametrize(("extra", "key"), [
    ('\n[[documents]]\nid = "x"\nplatform = "P"\ntitle = "T"\nurl = "ftp://example.com/"\n',
     "documents[2] (x).url"),
    ('\n[fetch2]\nretries = 1\n', "fetch2"),
    ('\n[detection]\nmin_length_ratio = 3\n', "detection.min_length_ratio"),
    ('\n[detection]\nextract_processes = 1.5\n', "detection.extract_processes"),
    ('\n[[documents]]\nid = "example/privacy"\nplatform = "P"\ntitle = "T"\n'
     'url = "https://example.com/"\n', "documents[2] (example/privacy).id"),
    ('select = { startAfter = "h1" }\n', "documents[1] (example/terms).select"),
])
def test_a_broken_config_exits_2_naming_the_file_and_key(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, page_server: PageServer,
        extra: str, key: str) -> None:
    config = write_config(tmp_path, page_server, extra)
    for command in (["check"], ["documents"], ["config", "check"]):
        code, _, err = run(capsys, *command, "-c", config)
        assert code == 2, command
        assert f"{config}: {key}:" in err, err


def test_invalid_toml_names_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[store\nurl = 1\n")
    code, _, err = run(capsys, "documents", "-c", config)
    assert code == 2 and str(config) in err and "invalid TOML" in err


def test_config_check_explains_a_good_config(capsys: pytest.CaptureFixture[str],
                                             config: Path) -> None:
    code, out, _ = run(capsys, "config", "check", "-c", config)
    assert code == 0
    assert f"{config}: OK" in out and "documents: 2" in out and "example/terms" in out


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"clausewatch {version('clausewatch')}\n"


@pytest.mark.parametrize("good", [True, False])
def test_the_console_script_exits_as_main_returns_output_and_exit_handlers_included(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, config: Path, good: bool) -> None:
    # run() leaves the interpreter with os._exit: what main() printed must all be out (a
    # pipe is block-buffered), its code the exit status, and atexit's handlers run.
    import os
    import subprocess
    import sys

    path = config if good else tmp_path / "nowhere.toml"
    expected_code, expected_out, expected_err = run(capsys, "config", "check", "-c", path)
    code = ("import atexit, sys\n"
            "from daemon import cli\n"
            "atexit.register(lambda: print('exit handler ran', file=sys.stderr))\n"
            "sys.argv = ['clausewatch', 'config', 'check', '-c', sys.argv[1]]\n"
            "cli.run()\n"
            "print('not reached')\n")
    # Block-buffered, as a pipe is unless PYTHONUNBUFFERED says otherwise.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=60, check=False, env=env)
    assert done.returncode == expected_code == (0 if good else 2)
    assert done.stdout == expected_out and "not reached" not in done.stdout
    assert done.stderr == expected_err + "exit handler ran\n"


def test_a_check_with_workers_starts_their_fork_server_before_its_own_imports(
        tmp_path: Path, page_server: PageServer) -> None:
    # The fork server's imports are meant to overlap with the pass's own (the service,
    # aiohttp): asked for before those, and the pass reads its pages all the same.
    import subprocess
    import sys

    page_server.set("/privacy", page(CLAUSES, "build 1"))
    page_server.set("/terms", "<html><body><p>Be nice to each other.</p></body></html>")
    config = write_config(tmp_path, page_server, "\n[detection]\nextract_processes = 1\n")
    code = ("import sys\n"
            "import daemon.extraction as extraction\n"
            "started = []\n"
            "start = extraction.start_fork_server\n"
            "def spy():\n"
            "    started.append('daemon.service' in sys.modules)\n"
            "    start()\n"
            "extraction.start_fork_server = spy\n"
            "from daemon import cli\n"
            "code = cli.main(['check', '-c', sys.argv[1]])\n"
            "print('fork server asked for with the service imported:', started, code)\n")
    done = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=tmp_path)
    assert done.stdout.splitlines() == [
        "example/privacy: baseline recorded (6 clauses)",
        "example/terms: baseline recorded (1 clause)",
        "fork server asked for with the service imported: [False] 0"], done.stderr
