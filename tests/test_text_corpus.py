"""TikTok's US privacy policy, 11 real versions served as Markdown: one clause's life story."""

from __future__ import annotations

from pathlib import Path

from config.settings import DocumentSettings
from harness import TRIMMED_CORPUS, PageServer, replay, text_table, text_versions

AI_CLAUSE = ("AI interactions, including prompts, questions, files, and other types of "
             "information that you submit to our AI-powered interfaces, as well as the "
             "responses they generate.")


async def test_the_ai_interactions_clause_appears_at_version_5_and_never_changes(
        page_server: PageServer, tmp_path: Path) -> None:
    versions = text_versions(TRIMMED_CORPUS / "text" / "tiktok-privacy-us")
    assert len(versions) == 11
    doc = DocumentSettings(id="tiktok/privacy-us", platform="TikTok", title="Privacy Policy",
                           url=page_server.url("/legal/privacy-policy-us"), robots=False)
    steps, service = await replay(page_server, versions, doc, tmp_path)
    try:
        print(f"\n{text_table(doc.id, steps)}")
        assert [s.outcome for s in steps][:4] == ["baseline", "unchanged", "unchanged",
                                                  "changed"]
        assert all(s.outcome in ("changed", "unchanged") for s in steps[1:])

        # The clause as the views know it at the end.
        [clause] = [c for c in service.clauses(doc.id) if c["text"] == AI_CLAUSE]
        fifth = steps[4].captured_at
        assert fifth == "2026-01-23T01:21:11Z"  # the 5th version's capture time
        assert clause["first_seen"] == fifth
        assert clause["changes"] == 0 and clause["status"] == "present"
        assert clause["last_seen"] == steps[-1].captured_at == "2026-07-15T13:21:46Z"
        assert (clause["months_monitored"], clause["stability"]) == (5, "stable")
        # No change event ever names it except its own arrival at version 5.
        history = service.clause(clause["id"])["history"]
        assert [(h["kind"], h["captured_at"], h["after"]) for h in history] == [
            ("added", fifth, AI_CLAUSE)]
        # Versions 1-4 did not have it; every version from 5 on kept the same id.
        for step_count, version in enumerate(versions, 1):
            has_it = AI_CLAUSE.encode() in version.body
            assert has_it == (step_count >= 5), version.seq
    finally:
        service.store.close()


async def test_same_words_in_different_markdown_are_unchanged(page_server: PageServer,
                                                              tmp_path: Path) -> None:
    # Versions 2 and 3 differ from 1 only in list markers and link targets.
    versions = text_versions(TRIMMED_CORPUS / "text" / "tiktok-privacy-us")[:3]
    assert versions[0].body != versions[1].body != versions[2].body
    doc = DocumentSettings(id="tiktok/privacy-us", platform="TikTok", title="Privacy Policy",
                           url=page_server.url("/p"), robots=False)
    steps, service = await replay(page_server, versions, doc, tmp_path)
    service.store.close()
    assert [(s.outcome, s.changes) for s in steps] == [("baseline", 0), ("unchanged", 0),
                                                       ("unchanged", 0)]
