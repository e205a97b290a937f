"""Turn a fetched document into an ordered list of text blocks, each with its heading path."""

from __future__ import annotations

import codecs
import functools
import hashlib
import io
import json
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import lxml.etree as etree
from cssselect import SelectorError as CssSyntaxError
from lxml.cssselect import CSSSelector
from selectolax.lexbor import LexborHTMLParser, SelectolaxError

from domain.blocks import LEXBOR, LXML, WALKS, Block, Extraction, SameRegion
from domain.errors import SelectorError, UnsupportedContentError
from domain.normalize import normalize_text

# A selector as Open Terms Archive declarations write it: CSS, a range, or a list of both.
Selector = str | Mapping[str, str] | Sequence[str | Mapping[str, str]]

# Part of every region key: raise it with any change that could alter the blocks extracted
# from some page, so that no key computed before the change is taken for one computed after.
# (2: the key of plain CSS selections is computed on lexbor's tree, see _LexborRegion.)
EXTRACTOR_VERSION = 2


_SKIPPED_TAGS = frozenset({
    "script", "style", "template", "noscript", "head", "title", "meta", "link", "svg", "math",
    "iframe", "object", "embed", "canvas", "audio", "video", "source", "track", "select",
    "option", "input", "textarea", "button", "map", "area", "base",
})
_BLOCK_KINDS = {
    "h1": "heading", "h2": "heading", "h3": "heading", "h4": "heading", "h5": "heading",
    "h6": "heading", "p": "paragraph", "li": "item", "tr": "row", "dt": "term",
    "dd": "definition", "blockquote": "quote", "pre": "pre", "caption": "caption",
    "figcaption": "caption", "summary": "heading",
}
_BLOCK_TAGS = frozenset(_BLOCK_KINDS) | frozenset({
    "address", "article", "aside", "body", "details", "dialog", "div", "dl", "fieldset",
    "figure", "footer", "form", "header", "hgroup", "hr", "html", "legend", "main", "menu",
    "nav", "ol", "section", "table", "tbody", "thead", "tfoot", "ul", "center",
})
_CELL_TAGS = frozenset({"td", "th"})
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_RANGE_KEYS = {
    "startBefore": "start_before", "startAfter": "start_after",
    "endBefore": "end_before", "endAfter": "end_after",
}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>")


def extract(
    body: bytes,
    content_type: str = "text/html",
    *,
    select: Selector | None = None,
    remove: Selector | None = None,
    unless_region: str | None = None,
    walk: str = LEXBOR,
) -> Extraction | SameRegion:
    """Extract the visible text blocks of a document of any supported content type.

    With `unless_region`, an HTML page whose watched region has that key is not walked:
    SameRegion says its blocks are those of the page the key came from. `walk`: see
    extract_html.
    """
    media_type, params = _parse_content_type(content_type)
    if media_type in {"text/html", "application/xhtml+xml", ""} or _looks_like_html(body):
        if media_type not in {"text/plain", "text/markdown", "application/pdf"}:
            html, codec = _decode(body, params.get("charset"))
            # Bytes read as UTF-8 go to lexbor as they are (it reads bytes as UTF-8): no
            # round trip through a str for the key of the region.
            raw = (body if codec == "utf-8" else body[3:] if codec == "utf-8-sig" else None)
            return extract_html(html, select=select, remove=remove,
                                unless_region=unless_region, walk=walk, _utf8=raw)
    if media_type in {"text/markdown", "text/x-markdown"}:
        return extract_markdown(decode_text(body, params.get("charset")))
    if media_type == "text/plain":
        return extract_plain(decode_text(body, params.get("charset")))
    if media_type == "application/pdf":
        return extract_pdf(body)
    raise UnsupportedContentError(content_type)


def decode_text(body: bytes, charset: str | None = None) -> str:
    """Decode bytes using the declared charset, a <meta> charset, UTF-8, then Windows-1252."""
    return _decode(body, charset)[0]


def _decode(body: bytes, charset: str | None = None) -> tuple[str, str]:
    """decode_text's text, and the codec that read it (Python's name for it)."""
    candidates: list[str] = []
    if charset:
        candidates.append(charset)
    if body.startswith(b"\xef\xbb\xbf"):
        candidates.insert(0, "utf-8-sig")
    meta = _META_CHARSET.search(body[:4096])
    if meta:
        candidates.append(meta.group(1).decode("ascii", "replace"))
    candidates += ["utf-8", "cp1252"]
    for name in candidates:
        try:
            return body.decode(name), codecs.lookup(name).name
        except (LookupError, UnicodeDecodeError):
            continue
    return body.decode("utf-8", errors="replace"), "replace"


def extract_html(html: str, *, select: Selector | None = None,
                 remove: Selector | None = None, unless_region: str | None = None,
                 walk: str = LEXBOR, _utf8: bytes | None = None) -> Extraction | SameRegion:
    """Extract blocks from HTML, keeping only what `select` picks and dropping what `remove` picks.

    `walk`: which tree a plain CSS selection's text is read from (see WALKS); anything else
    (a range, a pseudo-class, the whole page) is read from lxml's tree. The Extraction says
    which tree its blocks came from.
    `_utf8`: the page's bytes, when `html` is exactly their UTF-8 decoding.
    """
    if walk not in WALKS:
        raise ValueError(f"walk must be one of {', '.join(WALKS)}, not {walk!r}")
    html = _XML_DECL.sub("", html, count=1)
    if not html.strip():
        return Extraction(blocks=(), selection_matched=select is None)
    # A plain CSS selection's region is first keyed on lexbor's tree (~4x cheaper than
    # lxml's parse): most new bytes of a policy page end here.
    fast = _LexborRegion.of(html if _utf8 is None else _utf8, select, remove)
    if fast is not None and unless_region is not None:
        strict, _, loose = unless_region.partition(".")
        if fast.strict == strict:
            return SameRegion(unless_region)
        if loose and fast.loose == loose:  # the same but for attributes the walk does not read
            return SameRegion(fast.key)
    blocks: tuple[Block, ...] | None = None
    if fast is not None and walk != LXML:
        try:
            blocks = fast.walk()
        except (SelectolaxError, ValueError, RuntimeError):
            blocks = None  # a tree lexbor built but cannot give back: lxml's reading instead
    if fast is not None and blocks is not None:
        if walk == LEXBOR:
            return Extraction(blocks=blocks, region=fast.key, walk=LEXBOR)
        # BOTH: lxml's blocks unless the two trees give the same (see WALKS).
        legacy = _read_lxml(html, select, remove, None, fast)
        if isinstance(legacy, Extraction) and legacy.blocks == blocks:
            return Extraction(blocks=blocks, region=fast.key, walk=LEXBOR)
        return legacy
    return _read_lxml(html, select, remove, unless_region, fast)


def _read_lxml(html: str, select: Selector | None, remove: Selector | None,
               unless_region: str | None, fast: _LexborRegion | None
               ) -> Extraction | SameRegion:
    """extract_html's reading of lxml's tree (`fast`: the region's key on lexbor's, if any)."""
    try:
        root = _parse_html(html)
    except (etree.ParserError, ValueError):
        return Extraction(blocks=(), selection_matched=select is None,
                          warnings=("the page could not be parsed as HTML",))
    # Marks are keyed by the element proxies themselves: holding them keeps each proxy (and
    # so its identity) alive for the walk. Document order is only needed by range selectors.
    order = _DocumentOrder(root)
    keep = _Marks()
    selection_matched = True
    if select is not None:
        selection_matched = keep.add_all(root, order, select)
    drop = _Marks()
    if remove is not None:
        drop.add_all(root, order, remove)
    region = None
    if fast is not None and selection_matched and fast.agrees(keep.elements):
        region = fast.key
    elif selection_matched and not keep.ranges and not drop.ranges:
        region = _region_key(root, keep.elements if select is not None else [root],
                             drop.elements, select, remove)
        if unless_region is not None and region == unless_region:
            return SameRegion(region)
    # With CSS selections only, a subtree holding no selected element adds no text: the walk
    # skips it instead of visiting every element of the page.
    around = keep.ancestors() if select is not None and not keep.ranges and not drop.ranges \
        else None
    walker = _Walker(keep if select is not None else None, drop, around=around)
    blocks = tuple(walker.walk(root))
    return Extraction(blocks=blocks, selection_matched=selection_matched, region=region,
                      walk=LXML)


_PARSERS = threading.local()


def _parse_html(html: str) -> Any:
    """lxml.html.document_fromstring's tree, with plain elements: the walk needs none of
    lxml.html's element classes, whose lookup ran in Python for every element visited."""
    parser = getattr(_PARSERS, "html", None)
    if parser is None:  # one parser per thread: lxml parsers are not shared across threads
        parser = _PARSERS.html = etree.HTMLParser()
    root = etree.fromstring(html, parser)
    if root is None:
        raise etree.ParserError("Document is empty")
    return root


def _region_key(root: Any, selected: list[Any], dropped: list[Any], select: Selector | None,
                remove: Selector | None) -> str:
    """SHA-256 of what the walk of a CSS selection reads: the declarations, each selected
    element serialised (without its tail) in document order, and where `remove` matched.

    Outside the selected elements the walk reads only their ancestors' tags (a block's
    kind, a hidden or skipped container) and where `remove` matched, named by absolute
    path, and then so are the selected elements: markup moving around the region changes the
    key (a walk too many, never a missed change).
    """
    digest = hashlib.sha256(json.dumps([EXTRACTOR_VERSION, select, remove],
                                       sort_keys=True, default=str).encode())
    unique = list({id(element): element for element in selected}.values())
    if len(unique) > 1:
        unique.sort(key=_document_index)
    for element in unique:
        digest.update(b"\0")
        digest.update(etree.tostring(element, with_tail=False))
        for ancestor in element.iterancestors():
            attrib = ancestor.attrib
            digest.update(repr((ancestor.tag, "hidden" in attrib, attrib.get("aria-hidden"),
                                attrib.get("style"))).encode())
    if dropped:
        # Where the selection is, too: the same markup elsewhere may lose other parts.
        tree = root.getroottree()
        digest.update(b"\0\0")
        digest.update("\0".join(tree.getpath(e) for e in unique).encode())
        digest.update(b"\0\0")
        digest.update("\0".join(sorted(tree.getpath(e) for e in dropped)).encode())
    return digest.hexdigest()


# CSS that lxml (through cssselect) and lexbor read alike: type, #id, .class, attribute tests
# with a plain or quoted value, the universal selector, combinators and groups; no
# pseudo-classes, functions, escapes or namespace and case flags.
_PLAIN_CSS = re.compile(r"""(?:[\sA-Za-z0-9_#.*>+~,-]|\[\s*[A-Za-z_][\w-]*\s*(?:[~|^$*]?=\s*"""
                        r"""(?:"[^"\\\n]*"|'[^'\\\n]*'|[\w-]+)\s*)?\])+""")


def _plain_css(selector: Selector | None) -> tuple[str, ...] | None:
    """The parts of a selector made only of plain CSS (see _PLAIN_CSS), or None."""
    if selector is None:
        return ()
    parts = [selector] if isinstance(selector, str) else selector
    if not isinstance(parts, Sequence):
        return None  # a range, or a declaration lxml's side says is wrong
    # A range or anything but plain CSS among the parts: not plain.
    plain = tuple(part for part in parts if isinstance(part, str) and _plain_css_part(part))
    return plain if plain and len(plain) == len(parts) else None


@functools.lru_cache(maxsize=1024)
def _plain_css_part(css: str) -> bool:
    return bool(css.strip()) and _PLAIN_CSS.fullmatch(css) is not None


class _LexborRegion:
    """The region key of a plain CSS selection computed on lexbor's tree of the page.

    What the key covers is what `_region_key` covers on lxml's tree: the declarations, the
    selected elements serialised in document order, the tags and hiding attributes of their
    ancestors, and where `remove` matched (with where the selection is). Equal keys mean the
    same markup was selected from the same place, and so the same blocks, as long as lxml
    selects what lexbor does: `agrees` checks that on the page the key is remembered from
    (the same number of elements, with the same tags and text), and where it does not, the
    region is keyed on lxml's tree as before.

    A region's key is two: `strict`, of the markup as it is, and `loose`, of the markup
    without the attributes the walk never reads (links, class names, ARIA labels, scopes:
    what a site's redeploy rewrites). The loose one is computed only when the strict one
    differs, so a page whose region changed only in such attributes is not walked either.
    """

    __slots__ = ("_ancestors", "_dropped", "_head", "_loose", "_parts", "_selectors", "nodes",
                 "removed", "root", "strict")

    def __init__(self, strict: str, nodes: list[Any], parts: list[str],
                 ancestors: list[list[tuple[Any, ...]]], dropped: bytes, head: bytes,
                 selectors: tuple[str, ...], *, removed: list[Any] | None = None,
                 root: Any = None) -> None:
        self.strict = strict
        self.nodes = nodes  # each holds the tree
        self.removed = removed or []  # what `remove` matched
        self.root = root  # the <html> element, where a walk starts
        self._parts, self._ancestors, self._dropped = parts, ancestors, dropped
        self._head, self._selectors = head, selectors
        self._loose: str | None = None

    def walk(self) -> tuple[Block, ...]:
        """The blocks of the selection, read from lexbor's tree as _Walker reads lxml's."""
        return tuple(_LexborWalker(self.nodes, self.removed).walk(self.root))

    @classmethod
    def of(cls, html: str | bytes, select: Selector | None,
           remove: Selector | None) -> _LexborRegion | None:
        """The key of the region `select` picks from `html` (str, or bytes in UTF-8)."""
        if select is None:
            return None  # a whole page: its key changes with any byte anyway
        selecting, removing = _plain_css(select), _plain_css(remove)
        if not selecting or removing is None:
            return None
        try:
            tree = LexborHTMLParser(html)
            nodes = _lexbor_matches(tree, selecting)
            dropped = _lexbor_matches(tree, removing) if removing else []
        except (SelectolaxError, ValueError, RuntimeError):
            return None
        if not nodes:
            return None
        paths = [_lexbor_path(node) for node in nodes]
        nodes = [nodes[i] for i in sorted(range(len(nodes)), key=paths.__getitem__)]
        head = json.dumps(["lexbor", EXTRACTOR_VERSION, select, remove], sort_keys=True,
                          default=str).encode()
        digest = hashlib.sha256(head)
        parts: list[str] = []
        ancestors: list[list[tuple[Any, ...]]] = []
        for node in nodes:
            markup = node.html or ""
            chain = []
            parent = node.parent
            while parent is not None and not parent.is_document_node:
                attrs = parent.attributes
                chain.append((parent.tag, "hidden" in attrs, attrs.get("aria-hidden"),
                              attrs.get("style")))
                parent = parent.parent
            digest.update(b"\0")
            digest.update(markup.encode())
            digest.update(repr(chain).encode())
            parts.append(markup)
            ancestors.append(chain)
        where = b""
        if dropped:
            # Where the selection and the removed elements are: the same markup at another
            # place may lose other parts (see test_where_the_selection_is_counts...).
            where = repr((sorted(paths), sorted(_lexbor_path(node) for node in dropped))).encode()
            digest.update(b"\0\0")
            digest.update(where)
        return cls(digest.hexdigest(), nodes, parts, ancestors, where, head,
                   selecting + removing, removed=dropped, root=tree.root)

    @property
    def loose(self) -> str:
        """The key of the region without the attributes the walk does not read ("" where
        that cannot be told from lexbor's serialisation)."""
        if self._loose is None:
            self._loose = self._compute_loose()
        return self._loose

    @property
    def key(self) -> str:
        """The region key as stored: strict and loose, joined by a dot."""
        return f"{self.strict}.{self.loose}"

    def _compute_loose(self) -> str:
        digest = hashlib.sha256(b"loose\0" + self._head)
        keep = _LOOSE_KEPT | _named_attributes(self._selectors)
        for markup, chain in zip(self._parts, self._ancestors):
            if _RAW_TEXT_WALKED.search(markup):
                return ""
            digest.update(b"\0")
            digest.update(_loose_markup(markup, keep).encode())
            digest.update(repr([(tag, hidden, aria == "true",
                                 bool(style and _HIDDEN_STYLE.search(style)))
                                for tag, hidden, aria, style in chain]).encode())
        if self._dropped:
            digest.update(b"\0\0")
            digest.update(self._dropped)
        return digest.hexdigest()

    def agrees(self, elements: list[Any]) -> bool:
        """Whether lxml selected the same elements (as far as tags and text tell)."""
        unique = list({id(element): element for element in elements}.values())
        if len(unique) != len(self.nodes):
            return False
        return sorted((element.tag if isinstance(element.tag, str) else "",
                       _squeezed("".join(element.itertext()))) for element in unique) == \
            sorted((node.tag or "", _squeezed(node.text(deep=True))) for node in self.nodes)


# The attributes the walk reads (see _is_skipped). Those a selector tests are kept
# too, though what `select` and `remove` match is in the key already (the elements, and
# where `remove` matched).
_LOOSE_KEPT = frozenset({"hidden", "aria-hidden", "style"})
# A start tag with attributes as lexbor serialises it: values in double quotes (a quote inside
# is &quot;). A value holding < or > is not matched: that tag is kept whole. A tag without
# attributes is not matched at all (half the tags of a policy): the name is possessive, or
# `<strong>` would match as `<stron` with an attribute `g`.
_START_TAG = re.compile(r'<([A-Za-z][^\s<>/"]*+)((?:[^<>"]|"[^"<>]*")+)>')
_ATTRIBUTE = re.compile(r'\s([^\s="/>]+)(?:="[^"<>]*")?')
# Elements whose content lexbor serialises unescaped while the walk reads it as text: in
# them, stripping "attributes" could merge two texts. (Script, style and the like are
# unescaped too, but the walk skips them.)
_RAW_TEXT_WALKED = re.compile(r"<(?:xmp|noembed|noframes|plaintext)\b", re.IGNORECASE)
_SELECTOR_ATTRIBUTE = re.compile(r"\[\s*([A-Za-z_][\w-]*)")


def _loose_markup(markup: str, keep: frozenset[str]) -> str:
    """`markup` (lexbor's serialisation) with only the attributes named in `keep`."""
    naming = _naming(keep)
    return _START_TAG.sub(lambda match: _kept_attributes(match, keep, naming), markup)


def _kept_attributes(match: re.Match[str], keep: frozenset[str], naming: re.Pattern[str]
                     ) -> str:
    attributes = match.group(2)  # never empty: _START_TAG matches tags with attributes
    if naming.search(attributes) is None:
        # No kept name anywhere in the tag (most tags: a class, an href): nothing to keep,
        # told by one search instead of a pass over each attribute (~40 % of the key's time).
        return f"<{match.group(1)}>"
    kept = "".join(a.group(0) for a in _ATTRIBUTE.finditer(attributes)
                   if a.group(1).lower() in keep)
    return f"<{match.group(1)}{kept}>"


@functools.lru_cache(maxsize=64)
def _naming(keep: frozenset[str]) -> re.Pattern[str]:
    """A search that finds every attribute of `keep` that _ATTRIBUTE would read in a tag
    (and may find more: a kept name inside a quoted value): where it finds none, none is."""
    names = "|".join(re.escape(name) for name in sorted(keep))
    return re.compile(rf'\s(?:{names})(?=[\s="/>]|$)', re.IGNORECASE)


def _named_attributes(parts: tuple[str, ...]) -> frozenset[str]:
    """The attributes plain CSS selectors test: class for `.x`, id for `#x`, [name]."""
    names = {m.group(1).lower() for part in parts for m in _SELECTOR_ATTRIBUTE.finditer(part)}
    text = "".join(_SELECTOR_ATTRIBUTE.sub("", part) for part in parts)
    if "." in text:
        names.add("class")
    if "#" in text:
        names.add("id")
    return frozenset(names)


def _lexbor_matches(tree: Any, parts: tuple[str, ...]) -> list[Any]:
    """Every node any part selects, once each."""
    found: dict[int, Any] = {}
    for part in parts:
        for node in tree.css(part):
            found.setdefault(node.mem_id, node)
    return list(found.values())


def _lexbor_path(node: Any) -> tuple[int, ...]:
    """A node's place: its index among its parent's children, at every level from the top."""
    path: list[int] = []
    parent = node.parent
    while parent is not None:
        index, child, target = 0, parent.child, node.mem_id
        while child is not None and child.mem_id != target:
            index += 1
            child = child.next
        path.append(index)
        node, parent = parent, parent.parent
    return tuple(reversed(path))


def _squeezed(text: str | None) -> str:
    return "".join((text or "").split())


def _document_index(element: Any) -> int:
    """An element's position in document order (for the few selected elements only)."""
    return int(element.xpath("count(preceding::*) + count(ancestor::*)"))


def extract_markdown(markdown: str) -> Extraction:
    """Render Markdown to HTML and extract it like a page."""
    from markdown_it import MarkdownIt  # imported here: only Markdown documents need it

    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return extract_html(f"<html><body>{html}</body></html>")


def extract_plain(text: str) -> Extraction:
    """Split plain text into paragraphs at blank lines."""
    paragraphs = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    blocks = [Block(text=t, kind="paragraph") for t in map(normalize_text, paragraphs) if t]
    return Extraction(blocks=tuple(blocks))


def extract_pdf(body: bytes) -> Extraction:
    """Extract the text of a PDF page by page, then split it into paragraphs."""
    from pypdf import PdfReader  # imported here: only PDF documents need it
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(body))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        return Extraction(blocks=(), warnings=(f"the PDF could not be read: {exc}",))
    blocks: list[Block] = []
    for page in pages:
        # pypdf ends lines inside a paragraph; a line ending a sentence ends a paragraph.
        paragraph: list[str] = []
        for line in page.splitlines() + [""]:
            stripped = line.strip()
            if stripped:
                paragraph.append(stripped)
            if paragraph and (not stripped or stripped.endswith((".", ":", ";"))):
                text = normalize_text(" ".join(paragraph))
                if text:
                    blocks.append(Block(text=text, kind="paragraph"))
                paragraph = []
    return Extraction(blocks=tuple(blocks))


def _parse_content_type(content_type: str) -> tuple[str, dict[str, str]]:
    media_type, _, rest = (content_type or "").partition(";")
    params: dict[str, str] = {}
    for part in rest.split(";"):
        key, _, value = part.partition("=")
        if key.strip():
            params[key.strip().lower()] = value.strip().strip('"')
    return media_type.strip().lower(), params


def _looks_like_html(body: bytes) -> bool:
    head = body[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


class _DocumentOrder:
    """Every start and end point of every element, numbered in document order on first use."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self._order: dict[tuple[Any, str], int] | None = None

    def __getitem__(self, key: tuple[Any, str]) -> int:
        if self._order is None:
            walk = etree.iterwalk(self.root, events=("start", "end"))
            self._order = {(element, event): n for n, (event, element) in enumerate(walk)}
        return self._order[key]


def _compile(css: str, declaration: object) -> CSSSelector:
    if not isinstance(css, str) or not css.strip():
        raise SelectorError(declaration, "a selector must be a non-empty CSS selector string")
    try:
        return _compiled(css)
    except (CssSyntaxError, etree.XPathError) as exc:
        raise SelectorError(declaration, f"invalid CSS selector {css!r}: {exc}") from None


@functools.lru_cache(maxsize=1024)
def _compiled(css: str) -> CSSSelector:
    # Documents are polled again and again with the same few selectors: translate each once.
    return CSSSelector(css)


def _first(root: Any, css: str, declaration: object) -> Any | None:
    matches = _compile(css, declaration)(root)
    return matches[0] if matches else None


class _Marks:
    """Points where a selection starts (+1) or ends (-1), keyed by (element, event)."""

    def __init__(self) -> None:
        self.deltas: dict[tuple[Any, str], int] = {}
        self.elements: list[Any] = []  # the elements selected whole by a CSS selector
        self.ranges = 0

    def ancestors(self) -> set[Any]:
        """Every element above a selected one: the only places a selection can start."""
        found: set[Any] = set()
        for element in self.elements:
            parent = element.getparent()
            while parent is not None and parent not in found:
                found.add(parent)
                parent = parent.getparent()
        return found

    def add_all(self, root: Any, order: _DocumentOrder, selector: object) -> bool:
        """Add every part of a selector; True if any part matched."""
        parts: Iterable[object]
        if isinstance(selector, (str, Mapping)):
            parts = [selector]
        elif isinstance(selector, Sequence):
            parts = selector
        else:
            raise SelectorError(selector, "expected a CSS string, a range table or a list of them")
        matched = False
        for part in parts:
            if isinstance(part, str):
                for element in _compile(part, part)(root):
                    self.elements.append(element)
                    self._mark(element, "start", +1)
                    self._mark(element, "end", -1)
                    matched = True
            elif isinstance(part, Mapping):
                matched = self._add_range(root, order, part) or matched
            else:
                raise SelectorError(part, "expected a CSS string or a range table")
        return matched

    def _add_range(self, root: Any, order: _DocumentOrder,
                   declaration: Mapping[str, str]) -> bool:
        spec = {_RANGE_KEYS.get(key, key): value for key, value in declaration.items()}
        unknown = set(spec) - set(_RANGE_KEYS.values())
        if unknown:
            raise SelectorError(declaration, f"unknown range key(s) {sorted(unknown)}; use "
                                "startBefore/startAfter and endBefore/endAfter")
        starts = [k for k in ("start_before", "start_after") if k in spec]
        ends = [k for k in ("end_before", "end_after") if k in spec]
        if len(starts) != 1 or len(ends) != 1:
            raise SelectorError(declaration, "a range needs exactly one of startBefore/startAfter"
                                " and one of endBefore/endAfter")
        start_el = _first(root, spec[starts[0]], declaration)
        end_el = _first(root, spec[ends[0]], declaration)
        self.ranges += 1
        if start_el is None or end_el is None:
            return False
        start = (start_el, "start" if starts[0] == "start_before" else "end")
        end = (end_el, "start" if ends[0] == "end_before" else "end")
        if order[end] <= order[start]:
            return False
        self.deltas[start] = self.deltas.get(start, 0) + 1
        self.deltas[end] = self.deltas.get(end, 0) - 1
        return True

    def _mark(self, element: Any, event: str, delta: int) -> None:
        key = (element, event)
        self.deltas[key] = self.deltas.get(key, 0) + delta


class _Walker:
    """Walks the tree once, in document order, and cuts the visible text into blocks."""

    def __init__(self, keep: _Marks | None, drop: _Marks, *,
                 around: set[Any] | None = None) -> None:
        self.keep = keep
        self.drop = drop
        self.around = around
        self.kept = 0 if keep is not None else 1
        self.dropped = 0
        self.buffer: list[str] = []
        self.block_tags: list[str] = []
        self.headings: list[tuple[int, str]] = []
        self.blocks: list[Block] = []
        # The few elements that start or end a selection: every other one has no marks.
        self.marked = {element for element, _ in (keep.deltas if keep else {})} | \
            {element for element, _ in drop.deltas}
        self.skipped: set[Any] = set()  # elements skipped at their start, for their end

    def walk(self, root: Any) -> list[Block]:
        # Comments and processing instructions come as their own events (never as "start"):
        # they are not text, but the text after them is.
        walker = etree.iterwalk(root, events=("start", "end", "comment", "pi"))
        pruned = None
        marked, skipped, around = self.marked, self.skipped, self.around
        for event, element in walker:
            if event in ("comment", "pi"):
                self._text(element.tail)
                continue
            tag = element.tag if isinstance(element.tag, str) else None
            if event == "start":
                if element in marked:
                    self._apply(element, "start")
                if around is not None and self.kept <= 0 and not self.buffer \
                        and element not in around:
                    # Nothing selected in here: no text, no heading, and (with an empty
                    # buffer) nothing to flush. Its marks, if any, cancel out within it.
                    pruned = element
                    walker.skip_subtree()
                    continue
                if tag is None or self._is_skipped(element, tag):
                    # Comments and invisible elements: nothing inside is text, the tail is.
                    skipped.add(element)
                    if element in marked:
                        self._apply(element, "end")
                    self._text(element.tail)
                    walker.skip_subtree()
                    continue
                self._open(tag)
                self._text(element.text)
            else:
                if element is pruned:
                    if element in marked:
                        self._apply(element, "end")
                    pruned = None
                    continue
                if element in skipped:
                    continue
                self._close(tag)  # type: ignore[arg-type]
                if element in marked:
                    self._apply(element, "end")
                self._text(element.tail)
        self._flush()
        return self.blocks

    def _apply(self, element: Any, event: str) -> None:
        key = (element, event)
        if self.keep is not None:
            self.kept += self.keep.deltas.get(key, 0)
        self.dropped += self.drop.deltas.get(key, 0)

    @staticmethod
    def _is_skipped(element: Any, tag: str) -> bool:
        return _is_skipped(tag, element.attrib)

    def _text(self, text: str | None) -> None:
        if text and self.kept > 0 and self.dropped <= 0:
            self.buffer.append(text)

    def _open(self, tag: str) -> None:
        if tag in _BLOCK_TAGS:
            self._flush()
            self.block_tags.append(tag)
        elif tag in _CELL_TAGS:
            if self.buffer and "".join(self.buffer).strip():
                self.buffer.append(" | ")
        elif tag == "br":
            self.buffer.append(" ")

    def _close(self, tag: str) -> None:
        if tag in _BLOCK_TAGS:
            self._flush()
            if self.block_tags:
                self.block_tags.pop()
        elif tag in _CELL_TAGS:
            self.buffer.append(" ")

    def _flush(self) -> None:
        if not self.buffer:
            return
        text = normalize_text("".join(self.buffer)).strip(" |")
        self.buffer = []
        if not text:
            return
        tag = next((t for t in reversed(self.block_tags) if t in _BLOCK_KINDS), "")
        kind = _BLOCK_KINDS.get(tag, "text")
        section = tuple(heading for _, heading in self.headings)
        if kind == "heading":
            level = int(tag[1]) if tag[:1] == "h" and tag[1:].isdigit() else 7
            while self.headings and self.headings[-1][0] >= level:
                self.headings.pop()
            section = tuple(heading for _, heading in self.headings)
            self.headings.append((level, text))
        self.blocks.append(Block(text=text, section=section, kind=kind))


def _is_skipped(tag: str, attributes: Mapping[str, str | None]) -> bool:
    """Whether an element is no text, whichever tree it is in: what both walks skip."""
    if tag in _SKIPPED_TAGS or "hidden" in attributes:
        return True
    # aria-hidden marks decorative inline symbols ("#" permalinks, icons) but also whole
    # containers hidden from screen readers behind an open cookie dialog, which a reader
    # still sees: only inline elements are skipped.
    if attributes.get("aria-hidden") == "true" and tag not in _BLOCK_TAGS:
        return True
    style = attributes.get("style")
    return bool(style and _HIDDEN_STYLE.search(style))


class _LexborWalker(_Walker):
    """_Walker's reading of a CSS selection, on lexbor's tree: text nodes come as nodes of
    their own (lxml's text and tails), comments as nodes with no text."""

    def __init__(self, selected: list[Any], removed: list[Any]) -> None:
        super().__init__(None, _Marks())
        self.kept = 0
        self._selected = {node.mem_id for node in selected}
        self._removed = {node.mem_id for node in removed}
        # The ancestors of selected nodes: elsewhere, with nothing kept, is nothing to read.
        self._around: set[int] = set()
        for node in selected:
            parent = node.parent
            while parent is not None and parent.mem_id not in self._around:
                self._around.add(parent.mem_id)
                parent = parent.parent

    def walk(self, root: Any) -> list[Block]:
        # Depth first without recursion (a page may nest deeper than Python's stack): an
        # element is pushed again, marked, to be closed after its children.
        selected, removed, around = self._selected, self._removed, self._around
        stack: list[tuple[Any, str | None, bool, bool]] = [(root, None, False, False)]
        while stack:
            node, closing, kept, dropped = stack.pop()
            if closing is not None:
                self._close(closing)
                self.kept -= kept
                self.dropped -= dropped
                continue
            tag = node.tag
            if tag == "-text":
                self._text(node.text_content)
                continue
            if tag is None or tag[:1] in ("-", "!"):  # a comment, a doctype
                continue
            mem_id = node.mem_id
            kept, dropped = mem_id in selected, mem_id in removed
            if self.kept + kept <= 0 and not self.buffer and mem_id not in around:
                continue  # nothing selected in here (see _Walker.walk)
            if _is_skipped(tag, node.attributes):
                continue
            self.kept += kept
            self.dropped += dropped
            self._open(tag)
            stack.append((node, tag, kept, dropped))
            children = []
            child = node.child
            while child is not None:
                children.append(child)
                child = child.next
            stack.extend((c, None, False, False) for c in reversed(children))
        self._flush()
        return self.blocks
