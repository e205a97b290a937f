"""Extraction: the visible words of a page, cut into blocks, each under its heading path."""

from __future__ import annotations

from typing import Any

import pytest

from domain.errors import SelectorError, UnsupportedContentError
from domain.extract import Extraction, extract


def html(body: str, head: str = "") -> bytes:
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>".encode()


def texts(extraction: Extraction) -> list[str]:
    return [block.text for block in extraction.blocks]


def blocks(extraction: Extraction) -> list[tuple[str, tuple[str, ...], str]]:
    return [(b.kind, b.section, b.text) for b in extraction.blocks]


# Structure -----------------------------------------------------------------------------


def test_headings_nest_into_section_paths_h1_to_h6() -> None:
    page = html(
        "<h1>Privacy</h1><p>Intro</p>"
        "<h2>Collection</h2><p>We collect</p>"
        "<h3>Cookies</h3><p>Cookie text</p>"
        "<h4>Analytics</h4><h5>Vendors</h5><h6>Google</h6><p>Deepest</p>"
        # A sibling h2 closes h3..h6; a new h1 closes everything.
        "<h2>Rights</h2><p>You may</p>"
        "<h1>Annex</h1><p>Last</p>"
    )
    assert blocks(extract(page)) == [
        ("heading", (), "Privacy"),
        ("paragraph", ("Privacy",), "Intro"),
        ("heading", ("Privacy",), "Collection"),
        ("paragraph", ("Privacy", "Collection"), "We collect"),
        ("heading", ("Privacy", "Collection"), "Cookies"),
        ("paragraph", ("Privacy", "Collection", "Cookies"), "Cookie text"),
        ("heading", ("Privacy", "Collection", "Cookies"), "Analytics"),
        ("heading", ("Privacy", "Collection", "Cookies", "Analytics"), "Vendors"),
        ("heading", ("Privacy", "Collection", "Cookies", "Analytics", "Vendors"), "Google"),
        ("paragraph", ("Privacy", "Collection", "Cookies", "Analytics", "Vendors", "Google"),
         "Deepest"),
        ("heading", ("Privacy",), "Rights"),
        ("paragraph", ("Privacy", "Rights"), "You may"),
        ("heading", (), "Annex"),
        ("paragraph", ("Annex",), "Last"),
    ]


def test_a_skipped_heading_level_still_nests() -> None:
    page = html("<h2>Data</h2><h4>Sharing</h4><p>x</p><h3>Keeping</h3><p>y</p>")
    assert blocks(extract(page))[-1] == ("paragraph", ("Data", "Keeping"), "y")


def test_paragraphs_and_list_items_are_blocks_of_their_own() -> None:
    page = html("<p>One <b>bold</b> line<br>and a break.</p>"
                "<ul><li>Parent item<ul><li>Child item</li></ul></li><li>Second</li></ul>"
                "<ol><li>First step</li></ol>")
    assert blocks(extract(page)) == [
        ("paragraph", (), "One bold line and a break."),
        ("item", (), "Parent item"),
        ("item", (), "Child item"),
        ("item", (), "Second"),
        ("item", (), "First step"),
    ]


def test_table_rows_join_their_cells_with_bars() -> None:
    page = html("<table><thead><tr><th>Cookie</th><th>Purpose</th></tr></thead>"
                "<tbody><tr><td>_ga</td><td>Analytics <a href='/x'>details</a></td></tr>"
                "<tr><td>sid</td><td>Session</td><td>1 year</td></tr></tbody></table>")
    assert blocks(extract(page)) == [
        ("row", (), "Cookie | Purpose"),
        ("row", (), "_ga | Analytics details"),
        ("row", (), "sid | Session | 1 year"),
    ]


def test_definition_lists_give_terms_and_definitions() -> None:
    page = html("<h2>Definitions</h2><dl><dt>Personal data</dt>"
                "<dd>Any information about an identified person.</dd></dl>")
    assert blocks(extract(page))[1:] == [
        ("term", ("Definitions",), "Personal data"),
        ("definition", ("Definitions",), "Any information about an identified person."),
    ]


def test_text_loose_in_a_container_is_a_block_too() -> None:
    assert blocks(extract(html("<div>Loose words<p>Para</p>tail words</div>"))) == [
        ("text", (), "Loose words"), ("paragraph", (), "Para"), ("text", (), "tail words")]


# What is not text ------------------------------------------------------------------------


def test_scripts_styles_templates_and_noscript_are_not_text() -> None:
    page = html(
        "<p>Hello<script>var secret = 'script';</script> there"
        "<style>.x { content: 'style' }</style></p>"
        "<template><p>template text</p></template>"
        "<noscript><p>Please enable JavaScript</p></noscript>"
        "<p>Bye</p>",
        head="<title>Title text</title><script>head()</script>")
    assert texts(extract(page)) == ["Hello there", "Bye"]


def test_hidden_elements_are_not_text() -> None:
    page = html("<p>Shown</p><div hidden><p>hidden attribute</p></div>"
                "<p style='display: none'>display none</p>"
                "<p style='color:red; visibility:hidden'>visibility hidden</p>"
                "<p>Heading<a aria-hidden='true' href='#h'>#</a></p>"
                # aria-hidden on a container hides it from screen readers, not from eyes.
                "<div aria-hidden='true'><p>Behind a cookie dialog</p></div>")
    assert texts(extract(page)) == ["Shown", "Heading", "Behind a cookie dialog"]


def test_comments_are_not_text_but_the_words_after_them_are() -> None:
    page = html("<p>We do<!-- a note --> not sell<?php echo 1 ?> your data.</p><!-- x -->")
    assert texts(extract(page)) == ["We do not sell your data."]


def test_link_targets_are_not_text() -> None:
    before = html("<p>Read our <a href='https://example.com/cookies?utm=1'>cookie policy</a>.</p>")
    after = html("<p>Read our <a href='https://example.com/v2/cookies#top'>cookie policy</a>.</p>")
    assert texts(extract(before)) == ["Read our cookie policy."]
    assert extract(before).text == extract(after).text


# Selection -------------------------------------------------------------------------------

PAGE = html(
    "<nav><p>Menu</p></nav>"
    "<main><h1>Terms</h1><p>First</p><div class='ad'><p>Advert</p></div><p>Second</p>"
    "<div id='end-of-content'><p>End marker</p></div><p>After the end</p></main>"
    "<footer id='foot'><p>Footer</p></footer>"
)


def test_css_select_keeps_only_the_matched_elements() -> None:
    result = extract(PAGE, select="main")
    assert result.selection_matched
    assert "Menu" not in texts(result) and "Footer" not in texts(result)
    assert texts(result)[:2] == ["Terms", "First"]


@pytest.mark.parametrize("select", [
    {"startAfter": "h1", "endBefore": "#end-of-content"},
    {"start_after": "h1", "end_before": "#end-of-content"},
])
def test_range_selectors_in_camel_case_and_snake_case(select: dict[str, str]) -> None:
    assert texts(extract(PAGE, select=select)) == ["First", "Advert", "Second"]


def test_range_ends_after_and_starts_before() -> None:
    result = extract(PAGE, select={"startBefore": "h1", "endAfter": "#end-of-content"})
    assert texts(result) == ["Terms", "First", "Advert", "Second", "End marker"]


def test_a_list_mixes_css_and_ranges_in_both_spellings() -> None:
    select: Any = ["#foot", {"startAfter": "h1", "end_before": ".ad"},
                   {"start_before": "#end-of-content", "endAfter": "#end-of-content"}]
    assert texts(extract(PAGE, select=select)) == ["First", "End marker", "Footer"]


def test_remove_drops_what_it_matches_inside_the_selection() -> None:
    result = extract(PAGE, select="main", remove=[".ad", {"startBefore": "#end-of-content",
                                                          "endAfter": "main"}])
    assert texts(result) == ["Terms", "First", "Second"]


@pytest.mark.parametrize("select", ["#does-not-exist",
                                    {"startAfter": "#nope", "endBefore": "footer"},
                                    # An end before the start selects nothing either.
                                    {"startAfter": "footer", "endBefore": "h1"}])
def test_a_select_matching_nothing_says_so(select: Any) -> None:
    result = extract(PAGE, select=select)
    assert result.selection_matched is False
    assert result.blocks == ()


def test_a_select_matching_some_parts_is_a_match() -> None:
    result = extract(PAGE, select=["#nope", "footer"])
    assert result.selection_matched and texts(result) == ["Footer"]


@pytest.mark.parametrize("select", ["div[", "", {"startAfter": "h1"},
                                    {"startAfter": "h1", "endBefore": "p", "endAfter": "p"},
                                    {"from": "h1", "endBefore": "p"}, 42])
def test_an_invalid_selector_raises_selector_error(select: Any) -> None:
    with pytest.raises(SelectorError) as caught:
        extract(PAGE, select=select)
    assert repr(select) in str(caught.value)


def test_an_invalid_remove_raises_too() -> None:
    with pytest.raises(SelectorError, match="invalid CSS selector"):
        extract(PAGE, remove="p::")


# Other formats ---------------------------------------------------------------------------


def test_markdown_headings_lists_and_tables() -> None:
    markdown = ("# Privacy\n\nWe *collect* [data](https://example.com/x).\n\n## Sharing\n\n"
                "- with processors\n- with \u201cpartners\u201d\n\n| Who | Why |\n|---|---|\n"
                "| Ads | Revenue |\n\n<script>alert(1)</script>\n")
    result = extract(markdown.encode(), "text/markdown; charset=utf-8")
    assert blocks(result) == [
        ("heading", (), "Privacy"),
        ("paragraph", ("Privacy",), "We collect data."),
        ("heading", ("Privacy",), "Sharing"),
        ("item", ("Privacy", "Sharing"), "with processors"),
        ("item", ("Privacy", "Sharing"), 'with "partners"'),
        ("row", ("Privacy", "Sharing"), "Who | Why"),
        ("row", ("Privacy", "Sharing"), "Ads | Revenue"),
        # Raw HTML in Markdown is shown as text, never run.
        ("paragraph", ("Privacy", "Sharing"), "<script>alert(1)</script>"),
    ]


def test_plain_text_splits_at_blank_lines() -> None:
    body = "First paragraph\r\nwraps here.\r\n\r\n\r\n   Second\u00a0one.  \n\n \n"
    assert texts(extract(body.encode(), "text/plain")) == ["First paragraph wraps here.",
                                                           "Second one."]


def minimal_pdf(pages: list[list[str]]) -> bytes:
    """A valid PDF written by hand: Helvetica text lines, one content stream per page."""
    objects: dict[int, bytes] = {
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"}
    page_ids = []
    n = 4
    for lines in pages:
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({escaped}) Tj T*")
        stream = "\n".join([*ops, "ET"]).encode("latin-1")
        objects[n] = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                      b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (n + 1))
        objects[n + 1] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream)
        page_ids.append(n)
        n += 2
    objects[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[2] = (b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % i for i in page_ids)
                  + b"] /Count %d >>" % len(page_ids))
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % n
    out += b"".join(b"%010d 00000 n \n" % offsets[i] for i in range(1, n))
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (n, xref)
    return bytes(out)


def test_pdf_text_is_split_into_paragraphs_page_by_page() -> None:
    body = minimal_pdf([
        ["We collect your name and your email", "address when you sign up.",
         "We never sell (or rent) your data."],
        ["Contact: privacy@example.com"],
    ])
    result = extract(body, "application/pdf")
    assert result.warnings == ()
    assert texts(result) == [
        "We collect your name and your email address when you sign up.",
        "We never sell (or rent) your data.",
        "Contact: privacy@example.com",
    ]


def test_a_broken_pdf_gives_a_warning_not_an_exception() -> None:
    result = extract(b"%PDF-1.4\nthis is not a pdf", "application/pdf")
    assert result.blocks == ()
    assert result.warnings and "could not be read" in result.warnings[0]


def test_an_unsupported_content_type_is_refused() -> None:
    with pytest.raises(UnsupportedContentError, match="image/png"):
        extract(b"\x89PNG\r\n", "image/png")


def test_html_served_under_a_vague_type_is_still_html() -> None:
    result = extract(html("<p>Sniffed</p>"), "application/octet-stream")
    assert texts(result) == ["Sniffed"]


# Character sets ----------------------------------------------------------------------------

CP1252_PAGE = "<p>Caf\u00e9 \u201cterms\u201d \u2013 na\u00efve \u20ac5</p>"


def test_windows_1252_declared_in_a_meta_tag() -> None:
    body = html(CP1252_PAGE, head="<meta charset='windows-1252'>").decode().encode("cp1252")
    assert texts(extract(body, "text/html")) == ['Café "terms" \u2013 naïve \u20ac5']


def test_windows_1252_declared_in_the_http_header() -> None:
    body = html(CP1252_PAGE).decode().encode("cp1252")
    assert texts(extract(body, "text/html; charset=windows-1252")) == [
        'Café "terms" \u2013 naïve \u20ac5']


def test_the_header_charset_wins_over_the_meta_tag() -> None:
    body = html("<p>\u00e9t\u00e9</p>", head="<meta charset='utf-8'>").decode().encode("cp1252")
    assert texts(extract(body, "text/html; charset=cp1252")) == ["été"]


def test_undeclared_bytes_fall_back_from_utf8_to_windows_1252() -> None:
    assert texts(extract(html("<p>\u00e9t\u00e9</p>"))) == ["été"]
    assert texts(extract(html("<p>\u00e9t\u00e9</p>").decode().encode("cp1252"))) == ["été"]


def test_a_wrong_charset_in_the_header_does_not_garble_the_text() -> None:
    # The server says UTF-8 but sends Windows-1252 bytes: not valid UTF-8, so the declared
    # charset is dropped for the next candidate instead of producing replacement characters.
    body = html(CP1252_PAGE).decode().encode("cp1252")
    assert texts(extract(body, "text/html; charset=utf-8")) == [
        'Café "terms" \u2013 naïve \u20ac5']
    # And an unknown charset name is skipped, not an error.
    assert texts(extract(html("<p>\u00e9t\u00e9</p>"), "text/html; charset=x-nonsense")) == [
        "été"]


def test_extractions_and_clauses_pickle_to_equal_frozen_values() -> None:
    """They cross to and from the worker processes by pickle, in a compact form of their own."""
    import dataclasses
    import pickle

    from domain.clauses import Clause

    extraction = extract(b"<html><body><h1>Terms</h1><p>We keep \xc3\xa9 data.</p><ul><li>One"
                         b"</li></ul></body></html>", select="body")
    assert len(extraction.blocks) == 3
    clause = Clause(id="c1", text="We keep data.", section=("Terms",), kind="list_item")
    for value in (extraction, extraction.blocks[1], clause):
        copy = pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
        assert copy == value and type(copy) is type(value) and hash(copy) == hash(value)
    copy = pickle.loads(pickle.dumps(extraction))
    assert copy.region == extraction.region is not None
    assert copy.blocks[1].section == ("Terms",) and copy.text == extraction.text
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.blocks[0].text = "changed"  # type: ignore[misc]
