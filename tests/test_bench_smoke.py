"""The performance benchmark (and bench/ab.py), run end to end on a tiny N so that it
cannot rot.

No competitors are installed here (--no-competitors) and PostgreSQL is left out; the real run
is `.venv/bin/python bench/perf.py`. Nothing here asserts a time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_perf_bench_runs_on_a_tiny_n_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "perf.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "perf.py"), "--no-competitors", "--docs", "6",
         "--share", "0.5", "--corpus", str(REPO / "tests" / "data" / "corpus"),
         "--steady-docs", "6", "--steady-seconds", "4", "--steady-interval", "2",
         "--latency-docs", "4", "--latency-changes", "2", "--latency-interval", "2",
         "--latency-spacing", "0.2", "--rebuild-events", "3000", "--rebuild-documents", "10",
         "--rebuild-repeat", "2",
         "--pg-url", "", "--workdir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())

    # Every phase ran once for clausewatch, and the table was printed.
    section = report["passes"][0]
    rows = {row["phase"]: row for row in section["passes"]}
    assert set(rows) == {"baseline", "unchanged", "markup", "changed"}
    assert "Full polling passes, N = 6 documents" in done.stdout
    # Markup that rotates is not a change; the real text changes all are.
    assert rows["markup"]["alerts"] == 0
    assert rows["changed"]["alerts"] == section["changed_docs"] > 0
    assert all(row["errors"] == 0 for row in rows.values())

    assert report["steady"]["polls"] > 0
    assert report["latency"]["served_to_stored"]["n"] == 2
    rebuilt = report["rebuild"]["sqlite"]
    assert rebuilt["events"] >= 3000
    # Rebuilt twice (the second time emptying full views first): every run the whole log.
    assert [run["events"] for run in rebuilt["runs"]] == [rebuilt["events"]] * 2
    assert "runs (median above)" in done.stdout


def test_ab_bench_runs_two_checkouts_on_one_settled_store(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/ab.py settles a store through the passes before the one asked for, then runs
    each checkout's check on a fresh copy of it: every trial sees the same outcomes."""
    import ast
    import re
    import socket

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import pages

    with socket.socket() as probe:  # a free port for its page server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ab.py"), "--checkout", f"one={REPO}",
         "--checkout", f"two={REPO}", "--phase", "changed", "--docs", "6", "--share", "0.5",
         "--trials", "2", "--extract-processes", "0", "--port", str(port),
         "--corpus", str(REPO / "tests" / "data" / "corpus")],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "settling: markup pass" in done.stderr  # the passes before `changed`, in order
    trials = re.findall(r"trial (\d) (one|two): .* MB, (\{.*\})", done.stderr)
    assert sorted((n, name) for n, name, _ in trials) == [
        ("1", "one"), ("1", "two"), ("2", "one"), ("2", "two")]
    changed = sum(pages.is_changed(d, 0.5) for d in range(6))
    # Each trial starts from the settled store: the same real changes, the rest 304s.
    assert changed > 0
    assert all(ast.literal_eval(o) == {"unchanged": 6 - changed, "changed": changed}
               for _, _, o in trials)
    assert re.search(r"^one\s+\d+\.\d\d\s+\d+\.\d\d", done.stdout, re.MULTILINE)
    assert re.search(r"^two\s+\d+\.\d\d\s+\d+\.\d\d", done.stdout, re.MULTILINE)
