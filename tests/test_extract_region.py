"""The region key: new bytes whose watched region is unchanged are not walked again.

Sound means: whenever `extract(..., unless_region=key)` answers SameRegion, a full
extraction would have given the blocks of the page the key came from. Shown on every pair
of real snapshots of the corpus, and on the cases where markup outside the selection does
change what the walk reads (a hidden ancestor, a removed element, the order of selections).
"""

from __future__ import annotations

from itertools import combinations

import pytest

from domain.extract import Extraction, SameRegion, extract
from harness import TRIMMED_CORPUS, declaration, replay_versions


def _full(body: bytes, **kw: object) -> Extraction:
    extraction = extract(body, "text/html", **kw)  # type: ignore[arg-type]
    assert isinstance(extraction, Extraction)
    return extraction


@pytest.mark.parametrize("name", ["buffer-privacy", "github-privacy"])
def test_on_real_snapshots_an_equal_key_means_equal_blocks(name: str) -> None:
    directory = TRIMMED_CORPUS / "replay" / name
    decl = declaration(directory)
    kw = {"select": decl.get("select"), "remove": decl.get("remove")}
    pages = [(v.seq, v.body, _full(v.body, **kw)) for v in replay_versions(directory)]
    same = 0
    for (_, _, a), (_, body_b, b) in combinations(pages, 2):
        assert a.region is not None
        if a.region == b.region:
            same += 1
            assert a.blocks == b.blocks
            assert extract(body_b, "text/html", unless_region=a.region, **kw) == \
                SameRegion(a.region)
        else:
            assert extract(body_b, "text/html", unless_region=a.region, **kw) == b
    # Most of these snapshots differ from the last one only outside the policy.
    distinct_bytes = len({body for _, body, _ in pages})
    assert distinct_bytes == len(pages) and same > 0


def test_llama_range_selectors_have_no_region() -> None:
    directory = TRIMMED_CORPUS / "replay" / "llama-api-aup"
    decl = declaration(directory)
    version = replay_versions(directory)[-1]
    extraction = _full(version.body, select=decl.get("select"), remove=decl.get("remove"))
    assert extraction.blocks and extraction.region is None


def page(main: str, *, around: str = "", body_attrs: str = "", head: str = "") -> bytes:
    return (f"<html><head>{head}</head><body {body_attrs}><div id='wrap'>{around}"
            f"<main>{main}</main></div></body></html>").encode()


MAIN = "<h1>Privacy</h1><p>We collect your email address.</p><p class='promo'>Try Pro!</p>"


def _same(before: bytes, after: bytes, **kw: object) -> bool:
    key = _full(before, **kw).region
    return isinstance(extract(after, "text/html", unless_region=key, **kw), SameRegion)  # type: ignore[arg-type]


def test_markup_outside_the_selection_is_the_same_region() -> None:
    before = page(MAIN, around="<nav>Home</nav>", head="<script>var n='1'</script>")
    after = page(MAIN, around="<nav class='x'>Start</nav>", head="<script>var n='2'</script>")
    assert _same(before, after, select="main")
    assert _full(before, select="main").blocks == _full(after, select="main").blocks


def test_a_change_inside_the_selection_is_walked() -> None:
    before = page(MAIN)
    after = page(MAIN.replace("email address", "email address and phone number"))
    assert not _same(before, after, select="main")
    # Markup-only inside the region (an attribute) is walked too, and gives the same text.
    styled = page(MAIN.replace("<h1>", "<h1 class='big'>"))
    assert not _same(before, styled, select="main")
    assert _full(styled, select="main").blocks == _full(before, select="main").blocks


def test_a_hidden_ancestor_changes_the_region() -> None:
    before = page(MAIN)
    after = page(MAIN).replace(b"<div id='wrap'>", b"<div id='wrap' hidden>")
    assert _full(after, select="main").blocks == ()
    assert not _same(before, after, select="main")


def test_an_ancestor_that_changes_the_block_kind_changes_the_region() -> None:
    before = b"<html><body><div><main>Loose text in main</main></div></body></html>"
    after = b"<html><body><ul><li><main>Loose text in main</main></li></ul></body></html>"
    assert [b.kind for b in _full(before, select="main").blocks] != \
        [b.kind for b in _full(after, select="main").blocks]
    assert not _same(before, after, select="main")


def test_what_remove_matches_outside_the_region_is_part_of_it() -> None:
    # `remove` depends on a class on <body>: the same region, a different text.
    kw = {"select": "main", "remove": "body.eu .promo"}
    before = page(MAIN)
    after = page(MAIN, body_attrs="class='eu'")
    assert _full(before, **kw).blocks != _full(after, **kw).blocks
    assert not _same(before, after, **kw)


def test_the_order_of_selected_elements_is_part_of_the_region() -> None:
    a, b = "<section id='a'><p>First part.</p></section>", "<section id='b'><p>Second.</p></section>"
    kw = {"select": ["#a", "#b"]}
    before = f"<html><body>{a}{b}</body></html>".encode()
    after = f"<html><body>{b}{a}</body></html>".encode()
    assert _full(before, **kw).blocks != _full(after, **kw).blocks
    assert not _same(before, after, **kw)


def test_other_declarations_never_share_a_key() -> None:
    body = page(MAIN)
    assert _full(body, select="main").region != _full(body, select="main",
                                                      remove=".promo").region
    assert _full(body, select="main").region != _full(body).region
