"""The notifiers package's exception tree; retryable or not is the type."""

from __future__ import annotations


class NotifierError(Exception):
    """Anything the notifiers package raises on purpose."""


class DeliveryError(NotifierError):
    """A notice that a channel could not deliver; names the channel, the notice and the status."""

    hint = ""

    def __init__(
        self, *, channel_id: str, notice_id: str, reason: str, status: int | None = None
    ) -> None:
        self.channel_id = channel_id
        self.notice_id = notice_id
        self.reason = reason
        self.status = status
        message = f"channel {channel_id}: notice {notice_id} not delivered: {reason}"
        if status is not None:
            message += f" (status {status})"
        if self.hint:
            message += f"; {self.hint}"
        super().__init__(message)


class TransientDeliveryError(DeliveryError):
    """The receiver may take the notice later: retry, no sooner than `retry_after` seconds."""

    def __init__(
        self,
        *,
        channel_id: str,
        notice_id: str,
        reason: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        self.hint = (
            f"retry in {retry_after:g}s or later" if retry_after is not None else "retry later"
        )
        super().__init__(channel_id=channel_id, notice_id=notice_id, reason=reason, status=status)


class PermanentDeliveryError(DeliveryError):
    """Retrying the same notice will fail again until someone fixes the channel settings."""

    hint = "retrying will not help: check the channel's settings"


class ChannelGoneError(PermanentDeliveryError):
    """The receiver answered 410 Gone: disable the channel."""

    hint = "the receiver says it is gone for good: disable the channel"
