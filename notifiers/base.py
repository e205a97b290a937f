"""What every delivery channel looks like to the code that fans notices out."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from notifiers.notice import Notice


@runtime_checkable
class Channel(Protocol):
    """A place notices go; `send` raises TransientDeliveryError or PermanentDeliveryError."""

    @property
    def id(self) -> str:
        """The channel's configured id, named in errors and metrics."""
        ...

    @property
    def type(self) -> str:
        """The channel kind: "email", "slack" or "webhook"."""
        ...

    async def send(self, notice: Notice) -> None:
        """Deliver one notice, or raise a DeliveryError saying whether to retry."""
        ...
