"""The domain's exception tree."""

from __future__ import annotations


class DomainError(Exception):
    """Something the domain refuses to do."""


class SelectorError(DomainError):
    """A `select` or `remove` declaration that cannot be used."""

    def __init__(self, selector: object, reason: str) -> None:
        self.selector = selector
        self.reason = reason
        super().__init__(f"selector {selector!r}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[object, str]]:
        # Raised in extraction worker processes too: pickled with its own arguments.
        return type(self), (self.selector, self.reason)


class UnsupportedContentError(DomainError):
    """A document whose content type the extractor cannot read."""

    def __init__(self, content_type: str) -> None:
        self.content_type = content_type
        super().__init__(f"cannot extract text from content type {content_type!r}")

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return type(self), (self.content_type,)
