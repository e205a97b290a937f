"""What extraction returns: blocks of text, or the word that the watched region is unchanged.

Apart from domain/extract.py (and its HTML parsers) so that a process that only records what
the extraction workers found (`check` and the daemon with `extract_processes`) never loads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Which tree the text of a plain CSS selection is read from. Both parsers read the same
# blocks from the real pages of the corpus, but on malformed markup libxml2 (lxml) and lexbor
# (an HTML5 parser) can build different trees, so a document whose text so far came from
# lxml's tree is read from both (BOTH) until they agree, then from lexbor's alone: never a
# change that is only the parser's. Reading lexbor's tree spares lxml's parse, its CSS
# selection and the check that both selected alike (~9 -> ~4 ms a changed benchmark page).
LEXBOR, LXML, BOTH = "lexbor", "lxml", "both"
WALKS = (LEXBOR, LXML, BOTH)


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    """One block of visible text: a paragraph, list item, table row, heading or definition."""

    text: str
    section: tuple[str, ...] = ()
    kind: str = "paragraph"

    def __reduce__(self) -> tuple[Any, ...]:
        return _block, (self.text, self.section, self.kind)


@dataclass(frozen=True, slots=True, kw_only=True)
class Extraction:
    """What extraction found, and whether the `select` declaration matched anything."""

    blocks: tuple[Block, ...]
    selection_matched: bool = True
    warnings: tuple[str, ...] = field(default_factory=tuple)
    # The key of the watched region (see SameRegion); None where there is none to compute
    # (not HTML, a range selector, nothing selected).
    region: str | None = None
    # The tree an HTML page's blocks were read from (LEXBOR or LXML; see WALKS above); None
    # for other content.
    walk: str | None = None

    @property
    def text(self) -> str:
        """All blocks joined, one per line: the document's normalised text."""
        return "\n".join(block.text for block in self.blocks)

    def __reduce__(self) -> tuple[Any, ...]:
        # An extraction crosses to and from the worker processes: its blocks as plain rows
        # pickle ~5x and unpickle ~3x faster than dataclasses do (fields() per object).
        return _extraction, ([(b.text, b.section, b.kind) for b in self.blocks],
                             self.selection_matched, self.warnings, self.region, self.walk)


def _block(text: str, section: tuple[str, ...], kind: str) -> Block:
    block = object.__new__(Block)
    object.__setattr__(block, "text", text)  # frozen: as the dataclass's __init__ sets it
    object.__setattr__(block, "section", section)
    object.__setattr__(block, "kind", kind)
    return block


def _extraction(rows: list[tuple[str, tuple[str, ...], str]], selection_matched: bool,
                warnings: tuple[str, ...], region: str | None,
                walk: str | None = None) -> Extraction:
    return Extraction(blocks=tuple([_block(*row) for row in rows]),
                      selection_matched=selection_matched, warnings=warnings, region=region,
                      walk=walk)


@dataclass(frozen=True, slots=True)
class SameRegion:
    """What `extract(..., unless_region=key)` returns when the page's watched region has that
    key: the same markup (the selected elements, serialised, and what `remove` drops from
    them) as the page the key was computed on, so the same blocks. Most new bytes of a
    policy page are markup outside the policy (scripts, nonces, banners): parsing and
    selecting tell so without walking the text."""

    region: str
