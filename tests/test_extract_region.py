"""The region key: new bytes whose watched region is unchanged are not walked again.

Sound means: whenever `extract(..., unless_region=key)` answers SameRegion, a full
extraction would have given the blocks of the page the key came from. Shown on every pair
of real snapshots of the corpus, and on the cases where markup outside the selection does
change what the walk reads (a hidden ancestor, a removed element, the order of selections).
"""

from __future__ import annotations

import re
from itertools import combinations

import pytest

from domain.extract import Extraction, SameRegion, _LexborRegion, _loose_markup, extract
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
    same = loose = 0
    for (_, _, a), (_, body_b, b) in combinations(pages, 2):
        assert a.region is not None
        answer = extract(body_b, "text/html", unless_region=a.region, **kw)
        if isinstance(answer, SameRegion):
            same += 1
            assert a.blocks == b.blocks
            # The key to remember from now on: this page's own.
            assert answer.region == b.region
            loose += a.region != b.region
        else:
            assert answer == b
    # Most of these snapshots differ from the last one only outside the policy, and some
    # only in attributes inside it.
    distinct_bytes = len({body for _, body, _ in pages})
    assert distinct_bytes == len(pages) and same > 0 and loose > 0


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
    # An attribute the walk reads (a style may hide) is walked too, and here gives the
    # same text; one it does not read is not walked (see the loose key below).
    styled = page(MAIN.replace("<h1>", "<h1 style='color: red'>"))
    assert not _same(before, styled, select="main")
    assert _full(styled, select="main").blocks == _full(before, select="main").blocks
    assert _same(before, page(MAIN.replace("<h1>", "<h1 class='big'>")), select="main")


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


# The key of a plain CSS selection is computed on lexbor's tree, before any lxml parse.


def test_a_plain_selection_is_keyed_without_parsing_with_lxml(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import domain.extract as extract_module

    before = page(MAIN, around="<nav>Home</nav>")
    after = page(MAIN, around="<nav class='x'>Start</nav>")
    key = _full(before, select="main").region
    assert key is not None

    def no_lxml(html: str) -> None:
        raise AssertionError("lxml parsed a page whose region was already known")

    monkeypatch.setattr(extract_module, "_parse_html", no_lxml)
    assert extract(after, "text/html", select="main", unless_region=key) == SameRegion(key)
    # A changed region is walked: on lexbor's tree, without lxml at all...
    changed = extract(page(MAIN.replace("email", "postal")), "text/html", select="main",
                      unless_region=key)
    assert isinstance(changed, Extraction) and changed.walk == "lexbor"
    assert "postal" in changed.text
    with pytest.raises(AssertionError):  # ...or on lxml's, for a document read from it so far
        extract(page(MAIN.replace("email", "postal")), "text/html", select="main",
                unless_region=key, walk="lxml")


def test_selectors_lexbor_may_read_otherwise_are_keyed_on_lxml() -> None:
    import domain.extract as extract_module

    # A pseudo-class: not plain CSS, the region is keyed on lxml's tree, and still sound.
    kw = {"select": "main", "remove": "p:not(.promo)"}
    assert extract_module._LexborRegion.of(page(MAIN).decode(), "main", "p:not(.promo)") is None
    assert _same(page(MAIN, around="<nav>a</nav>"), page(MAIN, around="<nav>b</nav>"), **kw)
    assert not _same(page(MAIN), page(MAIN.replace("Try", "Buy")), **kw)


def test_when_lexbor_selects_otherwise_the_lxml_key_is_used() -> None:
    import domain.extract as extract_module

    # Without a doctype (quirks mode) lexbor matches classes without regard to case, as
    # browsers do; cssselect does not. The two selections differ: lexbor's key is not used.
    body = (b"<html><body><div class='policy'><p>We keep logs.</p></div>"
            b"<div class='POLICY'><p>Banner</p></div></body></html>")
    fast = extract_module._LexborRegion.of(body.decode(), ".policy", None)
    assert fast is not None and len(fast.nodes) == 2
    extraction = _full(body, select=".policy", walk="lxml")
    assert [b.text for b in extraction.blocks] == ["We keep logs."]
    assert extraction.region is not None and extraction.region != fast.key
    changed = body.replace(b"Banner", b"Other banner")
    assert _same(body, changed, select=".policy", walk="lxml")  # lxml's region did not change
    assert not _same(body, body.replace(b"keep", b"sell"), select=".policy", walk="lxml")
    # Read from both trees (a document read from lxml's so far), lxml's reading stands...
    both = _full(body, select=".policy", walk="both")
    assert both.blocks == extraction.blocks and both.walk == "lxml"
    # ...while a document read from lexbor's selects as lexbor (and browsers) do.
    lexbor = _full(body, select=".policy")
    assert [b.text for b in lexbor.blocks] == ["We keep logs.", "Banner"]
    assert lexbor.walk == "lexbor" and lexbor.region == fast.key


@pytest.mark.parametrize("remove", ["div + div p", "div + div p:not(.never)"])
def test_where_the_selection_is_counts_when_remove_depends_on_it(remove: str) -> None:
    # The same markup selected, the same places removed, but the region moved: what is
    # removed is now inside it. (The second selector is keyed on lxml's tree.)
    kw = {"select": ".policy", "remove": remove}
    policy, other = "<div class='policy'><p>Keep</p><p>Ad</p></div>", "<div><p>o</p><p>o</p></div>"
    before = f"<html><body>{policy}{other}</body></html>".encode()
    after = f"<html><body>{other}{policy}</body></html>".encode()
    assert _full(before, **kw).blocks != _full(after, **kw).blocks
    assert not _same(before, after, **kw)


# The loose key: a region whose markup changed only in attributes the walk does not read.


def test_attributes_the_walk_does_not_read_are_not_walked_again() -> None:
    before = page("<h1>Privacy</h1><p><a href='/a' class='x1'>We</a> collect data.</p>"
                  "<table><tr><th>Data</th></tr></table>")
    after = page("<h1 id='privacy'>Privacy</h1><p><a href='/en/a' class='x2' target='_blank'>"
                 "We</a> collect data.</p><table><tr><th scope='col'>Data</th></tr></table>")
    assert _full(before, select="main").region != _full(after, select="main").region
    assert _full(before, select="main").blocks == _full(after, select="main").blocks
    assert _same(before, after, select="main")


@pytest.mark.parametrize("after", [
    # What the walk reads: hiding attributes, tags, text.
    "<p hidden>We collect data.</p>",
    "<p style='display: none'>We collect data.</p>",
    "<p><span aria-hidden='true'>We</span> collect data.</p>",
    "<li>We collect data.</li>",
    "<p>We collect  data.</p>",
    "<p>We collect data.<!-- a comment --></p>",
])
def test_what_the_walk_reads_in_attributes_and_tags_is_walked(after: str) -> None:
    before = page("<p>We collect data.</p>")
    assert not _same(before, page(after), select="main")


def test_attributes_remove_tests_changing_inside_the_region_are_walked() -> None:
    # `remove` tests the class: a new class inside the region may drop a paragraph.
    kw = {"select": "main", "remove": ".ad"}
    before = page("<p class='note'>We collect data.</p><p class='x'>Buy now</p>")
    after = page("<p class='note'>We collect data.</p><p class='ad'>Buy now</p>")
    assert _full(before, **kw).blocks != _full(after, **kw).blocks
    assert not _same(before, after, **kw)
    kw = {"select": "main", "remove": "[data-kind=ad]"}
    before = page("<p>We collect data.</p><p data-kind='text'>Buy now</p>")
    after = page("<p>We collect data.</p><p data-kind='ad'>Buy now</p>")
    assert _full(before, **kw).blocks != _full(after, **kw).blocks
    assert not _same(before, after, **kw)


def test_a_region_with_raw_text_the_walk_reads_has_no_loose_key() -> None:
    # <xmp> keeps its content unescaped: what looks like an attribute there is text.
    before = page("<xmp>a <b c='1'> d</xmp>")
    after = page("<xmp>a <b c='2'> d</xmp>")
    assert not _same(before, after, select="main")


def _reference_loose_markup(markup: str, keep: frozenset[str]) -> str:
    # The plain reading of the loose markup: every start tag, every attribute tested.
    def kept(tag: re.Match[str]) -> str:
        names = [a.group(0) for a in re.finditer(r'\s([^\s="/>]+)(?:="[^"<>]*")?', tag[2])
                 if a.group(1).lower() in keep]
        return f"<{tag[1]}{''.join(names)}>" if tag[2] else tag[0]

    return re.sub(r'<([A-Za-z][^\s<>/"]*)((?:[^<>"]|"[^"<>]*")*)>', kept, markup)


@pytest.mark.parametrize("keep", [
    frozenset({"hidden", "aria-hidden", "style"}),
    frozenset({"hidden", "aria-hidden", "style", "class", "id", "aria-labelledby"}),
])
def test_the_loose_markup_keeps_exactly_the_named_attributes(keep: frozenset[str]) -> None:
    # What the loose key hashes, against the plain reading, on real regions and on tags
    # that trip shortcuts: a kept name in a value, case, no attributes, a value with ">".
    regions = []
    for name in ("buffer-privacy", "github-privacy"):
        directory = TRIMMED_CORPUS / "replay" / name
        for version in replay_versions(directory):
            region = _LexborRegion.of(version.body, declaration(directory)["select"], None)
            assert region is not None
            regions += region._parts
    regions.append('<p title="a style b">x</p><strong>y</strong><br/><P STYLE="c" Hidden>'
                   '<a href="x>y" class="k">z</a><i\tstyle="s" id=u>w</i><b/ hidden></P>')
    assert len(regions) > 5
    for markup in regions:
        assert _loose_markup(markup, keep) == _reference_loose_markup(markup, keep)


# Which tree the text is read from (domain.blocks.WALKS).


@pytest.mark.parametrize("name", ["buffer-privacy", "github-privacy"])
def test_on_real_snapshots_both_trees_read_the_same_blocks(name: str) -> None:
    # What lets a document move from lxml's reading to lexbor's: on every snapshot of the
    # real pages, the same blocks (text, headings, kinds), and the "both" reading says so.
    directory = TRIMMED_CORPUS / "replay" / name
    spec = declaration(directory)
    versions = replay_versions(directory)
    assert versions
    for version in versions:
        lexbor = _full(version.body, select=spec["select"])
        lxml = _full(version.body, select=spec["select"], walk="lxml")
        assert (lexbor.walk, lxml.walk) == ("lexbor", "lxml")
        assert lexbor.blocks == lxml.blocks and lexbor.blocks, version.seq
        assert lexbor.region == lxml.region  # the key of the same selection, either way
        both = _full(version.body, select=spec["select"], walk="both")
        assert (both.blocks, both.walk) == (lexbor.blocks, "lexbor")


@pytest.mark.parametrize("walk", ["lexbor", "lxml"])
def test_both_trees_skip_hidden_parts_remove_what_is_removed_and_keep_headings(
        walk: str) -> None:
    body = (b"<!doctype html><html><body><nav>Menu</nav><main><h1>Privacy</h1>"
            b"<h2>Data</h2><p>We keep <b>logs</b><br>for a year.<!-- note --> Then"
            b" we delete them.</p><p hidden>Hidden</p><div style='display:none'>None</div>"
            b"<ul><li>Name <span aria-hidden='true'>#</span></li><li class='ad'>Ad</li></ul>"
            b"<table><tr><td>A</td><td>B</td></tr></table><script>x()</script>"
            b"<h2>Rights</h2><p>Ask us.</p></main><footer>Foot</footer></body></html>")
    extraction = _full(body, select="main", remove=".ad", walk=walk)
    assert [(b.text, b.section, b.kind) for b in extraction.blocks] == [
        ("Privacy", (), "heading"),
        ("Data", ("Privacy",), "heading"),
        ("We keep logs for a year. Then we delete them.", ("Privacy", "Data"), "paragraph"),
        ("Name", ("Privacy", "Data"), "item"),
        ("A | B", ("Privacy", "Data"), "row"),
        ("Rights", ("Privacy",), "heading"),
        ("Ask us.", ("Privacy", "Rights"), "paragraph"),
    ]


def test_a_page_nested_deeper_than_pythons_stack_is_read_from_lexbors_tree() -> None:
    body = (b"<!doctype html><html><body><main>" + b"<div>" * 3000 + b"<p>Deep</p>"
            + b"</div>" * 3000 + b"</main></body></html>")
    extraction = _full(body, select="main")
    assert extraction.walk == "lexbor" and extraction.text == "Deep"


def test_an_unknown_walk_is_refused() -> None:
    with pytest.raises(ValueError, match="walk must be one of"):
        extract(page(MAIN), "text/html", select="main", walk="html5lib")


def test_a_lexbor_tree_that_cannot_be_walked_is_read_from_lxmls(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import domain.extract as extract_module

    def broken(self: object, root: object) -> None:
        raise RuntimeError("lexbor gave back no node")

    monkeypatch.setattr(extract_module._LexborWalker, "walk", broken)
    extraction = _full(page(MAIN), select="main")
    assert extraction.walk == "lxml" and extraction.blocks
    assert extraction.blocks == _full(page(MAIN), select="main", walk="lxml").blocks
